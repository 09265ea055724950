"""Return flows fetched by the gateway's poller (memory partner): stored, applied, removed
remotely; fetched again after a failure; never applied twice."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from gateway.folders import Layout
from gateway.journal import Journal, JournalDB
from gateway.polling import Poller, sources
from protocols import memory
from protocols.errors import RemotePermissionDenied, TransferTimeout
from tests.gateway.harness import deliver, memory_config, running, until
from tests.gateway.test_returns import cpp_statut, invoice

_buckets = itertools.count()
CONN = "qualif-mem"


def setup(tmp_path: Path, **overrides: str):  # type: ignore[no-untyped-def]
    bucket = f"poll-{next(_buckets)}"
    memory.BUCKETS.pop(bucket, None)
    config = memory_config(tmp_path, bucket, delay='0s"\npoll_interval = "50ms', **overrides)
    (row,) = deliver(config, {"facture.xml": invoice("F-100")})
    return config, bucket, row


def journal(config):  # type: ignore[no-untyped-def]
    return JournalDB(Layout(config.gateway.data_dir).journal)


def test_a_return_waiting_at_the_partner_is_fetched_applied_and_removed(tmp_path: Path) -> None:
    config, bucket, row = setup(tmp_path)
    offered = memory.bucket(bucket).returns
    data = cpp_statut(invoices=(("F-100", "05"),))
    offered["FEN1200A_1.xml"] = offered["FEN1200A_1-again.xml"] = data  # the same bytes twice

    async def main() -> None:
        async with running(config):
            await until(lambda: not offered, what="returns fetched")

    asyncio.run(main())
    db = journal(config)
    (ret,) = db.returns()
    assert ret["state"] == "applied" and ret["file"] == "FEN1200A_1.xml"
    assert db.invoices(row.flow_id)[0]["rejected"] == 1
    for name in ("FEN1200A_1.xml", "FEN1200A_1-again.xml"):
        assert db.download(CONN, name, len(data), 0)["outcome"] == "done"  # type: ignore[index]
    db.close()
    layout = Layout(config.gateway.data_dir)
    assert [p.name.split("--")[1] for p in layout.inbox(CONN).iterdir()] == ["FEN1200A_1.xml"]
    assert len(list(layout.rejected(CONN).glob("*.rejection.json"))) == 1


def test_a_failed_download_is_fetched_again_at_the_next_poll(
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    config, bucket, row = setup(tmp_path)
    offered = memory.bucket(bucket).returns
    offered["statut.xml"] = cpp_statut(flow_ref=row.remote_name or "", flow_code="90")
    memory.fail_next(bucket, TransferTimeout("connection lost mid-download"))

    async def main() -> None:
        async with running(config):
            await until(lambda: not offered, what="return fetched")

    asyncio.run(main())
    assert "returns.poll_failed" in capsys.readouterr().out
    db = journal(config)
    assert [r["state"] for r in db.returns()] == ["applied"]
    assert [s["code"] for s in db.statuses(row.flow_id)] == ["90"]
    db.close()
    assert not list(Layout(config.gateway.data_dir).inbox(CONN).glob(".*"))  # no temp left


def test_a_return_over_the_size_limit_is_left_and_reported_once(
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    config, bucket, _ = setup(tmp_path, gateway_extra='max_file_size = "5KB"')
    offered = memory.bucket(bucket).returns
    offered["huge.xml"] = b"<CPPStatut>" + b" " * 6000 + b"</CPPStatut>"

    def refused() -> bool:
        db = journal(config)
        try:
            return db.download(CONN, "huge.xml", len(offered["huge.xml"]), 0) is not None
        finally:
            db.close()

    async def main() -> None:
        async with running(config):
            await until(refused, what="the oversized return remembered")
            later = memory.bucket(bucket).listings + 2
            await until(lambda: memory.bucket(bucket).listings >= later, what="two more polls")

    asyncio.run(main())
    assert "huge.xml" in offered
    assert capsys.readouterr().out.count("return.too_large") == 1
    db = journal(config)
    assert db.returns() == []
    assert db.download(CONN, "huge.xml", len(offered["huge.xml"]), 0)["outcome"] == "refused"  # type: ignore[index]
    db.close()


def test_a_file_that_fails_alone_does_not_hold_the_others_back(tmp_path: Path) -> None:
    config, bucket, row = setup(tmp_path)
    offered = memory.bucket(bucket).returns
    offered["first.xml"] = cpp_statut(flow_ref=row.remote_name or "", flow_code="90")
    offered["second.xml"] = cpp_statut(invoices=(("F-100", "01"),))
    memory.fail_next(bucket, RemotePermissionDenied("first.xml: permission denied"))

    async def main() -> tuple[int, int]:
        journal_ = Journal(Layout(config.gateway.data_dir).journal)
        await journal_.open()
        try:
            sender = memory.MemorySender(config.connections[0].settings)
            poller = Poller(config, journal_, sources({CONN: sender}))
            return await poller.poll(CONN, sender), await poller.poll(CONN, sender)
        finally:
            await journal_.close()

    assert asyncio.run(main()) == (1, 1)  # second.xml in the first round, first.xml next
    assert offered == {}
