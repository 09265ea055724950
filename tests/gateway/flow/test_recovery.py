"""Recovery: after a crash or a stop, at start, every flow is finished from what the journal says
(never lost, never sent twice), and raccord retry puts failed flows back."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from flows import naming
from gateway.flow.dispatcher import requeue
from gateway.folders import Layout, spool_name
from gateway.journal import JournalDB
from protocols.base import outcome_marker
from protocols.errors import ConnectError
from protocols.testing import memory
from tests.gateway.flow.conftest import invoice
from tests.gateway.harness import (
    deliver,
    drop,
    filed,
    memory_config,
    rows,
    running,
    sidecar,
    until,
)


def test_retry_command_sends_a_failed_flow_again(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket, attempts=1)
    memory.fail_next(bucket, ConnectError("down"))
    layout = Layout(config.gateway.data_dir)

    async def main() -> None:
        async with running(config):
            drop(config, "f.xml", invoice("F-8"))
            await until(filed(config, 1))
            (row,) = rows(config)
            assert row.state == "error"
            db = JournalDB(layout.journal)
            try:
                requeue(db, row.flow_id, force=False)
            finally:
                db.close()
            await until(lambda: rows(config)[0].state == "sent", what="retried flow sent")

    asyncio.run(main())
    (row,) = rows(config)
    # The retried flow keeps its remote name: a resend after an unknown outcome is recognisable.
    assert list(memory.bucket(bucket).files) == [row.remote_name]
    assert not list(layout.error("qualif-mem").iterdir())


def test_forced_retry_sends_a_duplicate(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)
    layout = Layout(config.gateway.data_dir)

    async def main() -> None:
        async with running(config):
            drop(config, "a.xml", invoice("F-9"))
            await until(filed(config, 1))
            drop(config, "b.xml", invoice("F-9"))
            await until(filed(config, 2))
            dup = next(r for r in rows(config) if r.reason == "duplicate")
            db = JournalDB(layout.journal)
            try:
                with pytest.raises(LookupError, match="only flows in error"):
                    requeue(
                        db,
                        next(r.flow_id for r in rows(config) if r.state == "sent"),
                        force=True,
                    )
                requeue(db, dup.flow_id, force=True)
            finally:
                db.close()
            await until(lambda: all(r.state == "sent" for r in rows(config)), what="both sent")

    asyncio.run(main())
    assert len(memory.bucket(bucket).files) == 2


def test_files_dropped_while_stopped_are_sent_at_start(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)
    for i in range(3):
        drop(config, f"f{i}.xml", invoice(f"F-1{i}"))

    async def main() -> None:
        async with running(config):
            await until(filed(config, 3))

    asyncio.run(main())
    assert [r.state for r in rows(config)] == ["sent"] * 3


def test_restart_recovers_claims_and_unknown_outcomes(tmp_path: Path, bucket: str) -> None:
    """A crash can leave a spool file without a row, or a row in "sending" or "delivered"."""
    config = memory_config(tmp_path, bucket)
    layout = Layout(config.gateway.data_dir)
    layout.create(["qualif-mem"])
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)

    # 1. claimed by rename, crash before the journal row.
    orphan = layout.spool("qualif-mem") / spool_name("20261123T120000Z-000001", "orphan.xml")
    orphan.write_bytes(invoice("F-30"))
    db = JournalDB(layout.journal)
    # 2. in "sending" when the daemon died, and the partner had in fact received it.
    sending = layout.spool("qualif-mem") / spool_name("20261123T120000Z-000002", "sending.xml")
    sending.write_bytes(invoice("F-31"))
    db.insert("20261123T120000Z-000002", "qualif-mem", "sending.xml", str(sending))
    db.transition(
        "20261123T120000Z-000002", "queued", remote_name="R-31.xml", size=len(invoice("F-31"))
    )
    db.transition("20261123T120000Z-000002", "sending", attempts=1, unknown_outcome=1)
    memory.bucket(bucket).files["R-31.xml"] = invoice("F-31")
    # 3. delivered and journaled, crash before the file moved to sent/.
    delivered = layout.spool("qualif-mem") / spool_name("20261123T120000Z-000003", "done.xml")
    delivered.write_bytes(invoice("F-32"))
    db.insert("20261123T120000Z-000003", "qualif-mem", "done.xml", str(delivered))
    target = layout.sent("qualif-mem", now.date()) / "done.xml"
    db.transition("20261123T120000Z-000003", "queued")
    db.transition("20261123T120000Z-000003", "sending", attempts=1)
    db.transition(
        "20261123T120000Z-000003",
        "delivered",
        final_path=str(target),
        receipt='{"remote_name": "R-32.xml"}',
        remote_name="R-32.xml",
    )
    db.close()
    # 4. outcome markers a sender kept beside spool files: one of a flow still in the spool
    # (removed when it is filed), one of a flow filed before the crash (removed at start).
    outcome_marker(delivered, "20261123T120000Z-000003").write_text("{}")
    outcome_marker(delivered, "20261123T120000Z-000009").write_text("{}")

    async def main() -> None:
        async with running(config):
            await until(filed(config, 3))

    asyncio.run(main())
    by_name = {row.original_name: row for row in rows(config)}
    assert all(row.state == "sent" for row in by_name.values())
    assert sidecar(by_name["sending.xml"], ".receipt.json")["already_delivered"] is True
    assert target.read_bytes() == invoice("F-32")
    assert memory.bucket(bucket).sends == 2  # orphan + the resend check; not the delivered one
    assert set(memory.bucket(bucket).files) == {"R-31.xml", by_name["orphan.xml"].remote_name}
    assert not os.listdir(layout.spool("qualif-mem"))


def test_flow_delivered_but_not_filed_is_never_put_in_error(tmp_path: Path, bucket: str) -> None:
    """Filing in sent/ fails (here a file stands where the day's folder goes; say, a full disk):
    the flow stays delivered, then is filed at the next start."""
    config = memory_config(tmp_path, bucket)
    layout = Layout(config.gateway.data_dir)
    day = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    blocker = layout.sent("qualif-mem", day.date())
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"")

    async def first() -> None:
        async with running(config, now=lambda: day) as gateway:
            drop(config, "f.xml", invoice("F-60"))
            await until(lambda: [r.state for r in rows(config)] == ["delivered"])
            dispatcher = gateway.dispatcher
            assert dispatcher is not None
            await until(lambda: dispatcher.busy == 0, what="flow task finished")

    asyncio.run(first())
    (row,) = rows(config)
    assert row.state == "delivered"
    assert not list(layout.error("qualif-mem").iterdir())
    assert Path(row.spool_path).exists()

    blocker.unlink()

    async def restart() -> None:  # nothing new: reconciliation files it
        async with running(config, now=lambda: day):
            await until(filed(config, 1))

    asyncio.run(restart())
    (row,) = rows(config)
    assert row.state == "sent"
    assert Path(row.final_path or "").read_bytes() == invoice("F-60")
    assert memory.bucket(bucket).sends == 1


def test_retry_interrupted_by_a_crash_is_finished_at_start(tmp_path: Path, bucket: str) -> None:
    """raccord retry moved the file back to the spool, then died before journaling it."""
    config = memory_config(tmp_path, bucket, attempts=1)
    memory.fail_next(bucket, ConnectError("down"))
    (row,) = deliver(config, {"f.xml": invoice("F-70")})
    assert row.state == "error"
    from gateway.folders import move

    move(Path(row.final_path or ""), Path(row.spool_path))  # the first half of requeue
    (row,) = deliver(config, {})
    assert row.state == "sent"
    assert list(memory.bucket(bucket).files) == [row.remote_name]


def test_identifier_already_in_the_journal_gives_the_file_a_new_one(
    tmp_path: Path, bucket: str
) -> None:
    """A clock set back across a restart could reissue a flow id: the file is not lost."""
    config = memory_config(tmp_path, bucket)
    when = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    taken = naming.FlowIds(start=7).new(when)
    layout = Layout(config.gateway.data_dir)
    layout.journal.parent.mkdir(parents=True)
    db = JournalDB(layout.journal)
    db.insert(taken, "qualif-mem", "earlier.xml", "/nowhere/earlier.xml")
    db.transition(taken, "error", reason="lost", message="for the test")
    db.close()

    async def main() -> None:
        async with running(config, now=lambda: when) as gateway:
            assert gateway.dispatcher is not None
            gateway.dispatcher._flow_ids = naming.FlowIds(start=7)
            drop(config, "f.xml", invoice("F-80"))
            await until(filed(config, 2), what="the dropped file filed")

    with capture_logs() as logs:
        asyncio.run(main())
    earlier, new = sorted(rows(config), key=lambda r: r.original_name)
    assert (earlier.flow_id, earlier.state, earlier.original_name) == (
        taken,
        "error",
        "earlier.xml",
    )
    assert new.flow_id != taken and new.state == "sent" and new.original_name == "f.xml"
    assert Path(new.final_path or "").read_bytes() == invoice("F-80")
    assert [e["flow_id"] for e in logs if e["event"] == "flow.id_taken"] == [taken]
