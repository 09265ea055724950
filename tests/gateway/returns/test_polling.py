"""Return flows fetched by the gateway's poller (memory partner): stored, applied, removed
remotely; fetched again after a failure; never applied twice."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.folders import Layout
from gateway.journal import FlowRow, Journal, JournalDB
from gateway.ops.alerts import Alert, Alerter
from gateway.returns import pipeline as returns
from gateway.returns.polling import OVERDUE_DUTY, Poller, sources
from gateway.sandbox.pesit_partner import Account, PesitResponder
from protocols.base import RemoteFile
from protocols.errors import ConnectError, RemotePermissionDenied, TransferTimeout
from protocols.pesit.sender import PesitSender, PesitSettings
from protocols.testing import memory
from tests.gateway.harness import deliver, memory_config, running, until
from tests.gateway.returns.test_returns import cpp_statut, invoice

_buckets = itertools.count()
CONN = "qualif-mem"


def setup(tmp_path: Path, **overrides: str) -> tuple[Config, str, FlowRow]:
    bucket = f"poll-{next(_buckets)}"
    memory.BUCKETS.pop(bucket, None)
    config = memory_config(tmp_path, bucket, delay='0s"\npoll_interval = "50ms', **overrides)
    (row,) = deliver(config, {"facture.xml": invoice("F-100")})
    return config, bucket, row


def journal(config: Config) -> JournalDB:
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
    capsys: pytest.CaptureFixture[str],
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
    capsys: pytest.CaptureFixture[str],
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


# -- a partner that hands files out one by one (ReturnQueue): the real PeSIT test responder --


def _pesit(tmp_path: Path, responder: PesitResponder) -> PesitSender:
    settings = PesitSettings(
        host="127.0.0.1",
        port=responder.port,
        requester="VFE056",
        server="CHORUSPRO",
        return_files=("FEN1200A",),
        sync_interval=4,
        timeout=2.0,
        connect_timeout=2.0,
    )
    return PesitSender(settings)


async def _rounds(config: Config, source: PesitSender, count: int) -> list[int]:
    journal_ = Journal(Layout(config.gateway.data_dir).journal)
    await journal_.open()
    try:
        poller = Poller(config, journal_, sources({CONN: source}))
        return [await poller.poll(CONN, source) for _ in range(count)]
    finally:
        await journal_.close()


def test_a_queue_is_drained_and_each_file_acknowledged_once_stored(tmp_path: Path) -> None:
    config, _, row = setup(tmp_path)
    first = cpp_statut(invoices=(("F-100", "05"),))
    second = cpp_statut(flow_ref=row.remote_name or "", flow_code="90")

    async def main() -> tuple[list[int], list[str]]:
        async with PesitResponder(tmp_path / "partner", {"VFE056": Account()}) as responder:
            (responder.returns / "FEN1200A_1.xml").write_bytes(first)
            (responder.returns / "FEN1200A_2.xml").write_bytes(second)
            async with _pesit(tmp_path, responder) as source:
                counts = await _rounds(config, source, 2)
            assert responder.violations == []
            return counts, sorted(p.name for p in responder.returns.iterdir())

    counts, left = asyncio.run(main())
    assert counts == [2, 0] and left == []
    db = journal(config)
    assert sorted(r["file"] for r in db.returns()) == ["FEN1200A_1.xml", "FEN1200A_2.xml"]
    assert db.invoices(row.flow_id)[0]["rejected"] == 1
    assert sorted(s["code"] for s in db.statuses(row.flow_id)) == ["05", "90"]
    for name, data in (("FEN1200A_1.xml", first), ("FEN1200A_2.xml", second)):
        (seen,) = db._db.execute(
            "SELECT outcome FROM downloads WHERE remote_name=? AND size=?", (name, len(data))
        ).fetchall()
        assert seen[0] == "done"
    db.close()
    assert not list(Layout(config.gateway.data_dir).inbox(CONN).glob(".*"))  # no temp left


def test_a_queue_file_not_stored_stays_with_the_partner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _, _ = setup(tmp_path)
    data = cpp_statut(invoices=(("F-100", "05"),))
    real = returns.receive_download
    failures = iter([OSError(28, "No space left on device")])

    def full_disk(*args: Any, **kwargs: Any) -> returns.Outcome:
        for exc in failures:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(returns, "receive_download", full_disk)

    async def main() -> bool:
        async with PesitResponder(tmp_path / "partner", {"VFE056": Account()}) as responder:
            path = responder.returns / "FEN1200A_1.xml"
            path.write_bytes(data)
            async with _pesit(tmp_path, responder) as source:
                with pytest.raises(OSError, match="No space"):
                    await _rounds(config, source, 1)
                kept = path.exists()
                assert await _rounds(config, source, 1) == [1]
            assert responder.violations == []
            return kept and not path.exists()

    assert asyncio.run(main())
    db = journal(config)
    assert [r["state"] for r in db.returns()] == ["applied"]
    db.close()


def test_a_lost_acknowledgement_hands_the_file_out_again_and_it_is_applied_once(
    tmp_path: Path,
) -> None:
    config, _, row = setup(tmp_path)
    data = cpp_statut(invoices=(("F-100", "05"),))

    async def main() -> list[int]:
        async with PesitResponder(tmp_path / "partner", {"VFE056": Account()}) as responder:
            (responder.returns / "FEN1200A_1.xml").write_bytes(data)
            async with _pesit(tmp_path, responder) as source:
                acknowledge = source.acknowledge_return
                lost = iter([True])

                async def flaky(remote: RemoteFile) -> str:
                    if next(lost, False):  # the connection drops before TRANS.END goes out
                        await source.release_return(remote)
                        raise ConnectError("connection lost")
                    return await acknowledge(remote)

                source.acknowledge_return = flaky  # type: ignore[method-assign]
                counts = []
                with pytest.raises(ConnectError):
                    await _rounds(config, source, 1)
                counts += await _rounds(config, source, 1)
            assert not (responder.returns / "FEN1200A_1.xml").exists()
            return counts

    assert asyncio.run(main()) == [1]  # stored again (the same bytes)
    db = journal(config)
    (ret,) = db.returns()  # … but one return, applied once
    assert ret["state"] == "applied"
    assert db.invoices(row.flow_id)[0]["rejected"] == 1
    db.close()


def test_a_queue_file_over_the_limit_is_reported_once_and_left(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _, _ = setup(tmp_path, gateway_extra='max_file_size = "5KB"')

    async def main() -> list[int]:
        async with PesitResponder(tmp_path / "partner", {"VFE056": Account()}) as responder:
            path = responder.returns / "FEN1200A_huge.xml"
            path.write_bytes(b"<CPPStatut>" + b" " * 6000 + b"</CPPStatut>")
            async with _pesit(tmp_path, responder) as source:
                counts = await _rounds(config, source, 3)
            assert path.exists()
            return counts

    assert asyncio.run(main()) == [0, 0, 0]
    out = capsys.readouterr().out
    assert out.count("return.too_large") == 1 and "FEN1200A_huge.xml" in out


def test_at_start_a_queues_interrupted_read_is_kept_and_other_downloads_removed(
    tmp_path: Path,
) -> None:
    config, _, _ = setup(tmp_path)
    inbox = Layout(config.gateway.data_dir).inbox(CONN)
    for name in (".pull.download", ".other.xml.download"):
        (inbox / name).write_bytes(b"partial")

    async def main() -> None:
        journal_ = Journal(Layout(config.gateway.data_dir).journal)
        await journal_.open()
        try:
            source = PesitSender(
                PesitSettings(
                    host="127.0.0.1", port=9, requester="R", server="S", return_files=("FEN1200A",)
                )
            )
            poller = Poller(config, journal_, sources({CONN: source}))
            poller._clean()
        finally:
            await journal_.close()

    asyncio.run(main())
    assert sorted(p.name for p in inbox.glob(".*")) == [".pull.download"]


# -- returns that never come: return_deadline -------------------------------------------------


class Recorder(Alerter):
    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[Alert] = []

    def alert(self, alert: Alert) -> None:
        self.sent.append(alert)


async def overdue(poller: Poller, now: datetime) -> dict[str, list[str]]:
    """One overdue check, as the poller's loop makes it: under the duty."""
    async with poller.duties.duty(OVERDUE_DUTY) as duty:
        return await poller.check_overdue(now, held=await duty.held())


def test_a_flow_with_no_return_after_return_deadline_is_overdue_once(tmp_path: Path) -> None:
    """A lot sent over SFTP, AS2 or PeSIT whose return never comes used to go unnoticed."""
    config, _, row = setup(tmp_path)
    assert config.connections[0].return_deadline == 3 * 86400  # the default, "3d"
    recorder = Recorder()
    sent_at = datetime.fromisoformat(row.updated_at)

    async def check(*offsets: timedelta) -> list[dict[str, list[str]]]:
        journal_ = Journal(Layout(config.gateway.data_dir).journal)
        await journal_.open()
        try:
            poller = Poller(config, journal_, {}, recorder)
            return [await overdue(poller, sent_at + offset) for offset in offsets]
        finally:
            await journal_.close()

    early, late, again = asyncio.run(
        check(timedelta(days=2, hours=23), timedelta(days=3, seconds=1), timedelta(days=4))
    )
    assert (early, late, again) == ({}, {CONN: [row.flow_id]}, {})
    (alert,) = recorder.sent
    assert alert.kind == "return_overdue" and alert.connection == CONN
    assert "facture.xml" in alert.summary and alert.details["flows"] == [row.flow_id]

    # Once a return speaks of the flow, it is no longer overdue (a new gateway run included).
    db = journal(config)
    path = tmp_path / "status.xml"
    path.write_bytes(cpp_statut(flow_ref=row.remote_name or "", flow_code="90"))
    returns.receive(db, Layout(config.gateway.data_dir), CONN, path)
    db.close()
    assert asyncio.run(check(timedelta(days=5))) == [{}]


def test_return_deadline_zero_turns_the_check_off(tmp_path: Path) -> None:
    config, _, _ = setup(tmp_path, connection_extra='return_deadline = "0s"')
    assert config.connections[0].return_deadline == 0

    async def check() -> dict[str, list[str]]:
        journal_ = Journal(Layout(config.gateway.data_dir).journal)
        await journal_.open()
        try:
            poller = Poller(config, journal_, {}, Recorder())
            return await overdue(poller, datetime.now(UTC) + timedelta(days=365))
        finally:
            await journal_.close()

    assert asyncio.run(check()) == {}


def test_an_overdue_flow_is_alerted_once_across_restarts_and_nodes(tmp_path: Path) -> None:
    """With several nodes (or a restart), the overdue check must not alert a flow again: how
    far it went is kept in the journal with its duty, whichever node runs it next."""
    config, _, row = setup(tmp_path)
    sent_at = datetime.fromisoformat(row.updated_at)
    recorder = Recorder()

    async def check(node: str, offset: timedelta) -> dict[str, list[str]]:
        journal_ = Journal(Layout(config.gateway.data_dir).journal, node=node)
        await journal_.open()
        try:
            return await overdue(Poller(config, journal_, {}, recorder), sent_at + offset)
        finally:
            await journal_.close()

    assert asyncio.run(check("node-a", timedelta(days=3, seconds=1))) == {CONN: [row.flow_id]}
    assert asyncio.run(check("node-b", timedelta(days=3, seconds=2))) == {}
    assert asyncio.run(check("node-a", timedelta(days=4))) == {}
    assert len(recorder.sent) == 1
