"""Acknowledgements that come later (an asynchronous MDN): a flow waits for its receipt, across
restarts, and is filed by it; a wait that ends, or cannot be processed, never stops the gateway."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.cli import commands as cli
from gateway.flow.dispatcher import Dispatcher
from gateway.folders import Layout
from gateway.journal import FlowRow, Journal, JournalDB, JournalUnavailable
from gateway.journal.leases import lease_end
from protocols.testing import memory
from tests.gateway.flow.conftest import invoice
from tests.gateway.harness import (
    drop,
    filed,
    memory_config,
    rows,
    running,
    sidecar,
    until,
)


def _awaiting(config_rows: list[FlowRow]) -> bool:
    return bool(config_rows) and all(r.state == "awaiting_receipt" for r in config_rows)


def test_late_acknowledgement_files_the_flow_in_sent(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "1h"')
    layout = Layout(config.gateway.data_dir)

    async def main() -> None:
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            drop(config, "late.xml", invoice("F-60"))
            await until(lambda: _awaiting(rows(config)), what="flow awaiting its receipt")
            (row,) = rows(config)
            # Taken by the partner, not yet acknowledged: the file waits in the spool.
            assert Path(row.spool_path).read_bytes() == invoice("F-60")
            assert not list(layout.sent("qualif-mem", datetime.now(UTC).date()).glob("*"))
            assert row.receipt_key == f"memory:{row.flow_id}"
            due = datetime.fromisoformat(row.receipt_due or "")
            assert 3500 < (due - datetime.now(UTC)).total_seconds() <= 3600
            assert await gateway.dispatcher.settle(row.receipt_key, b"ok") == "sent"
            # A second copy of the acknowledgement changes nothing.
            assert await gateway.dispatcher.settle(row.receipt_key, b"ok") == "settled"
            assert await gateway.dispatcher.settle("memory:nobody", b"ok") == "unknown"

    asyncio.run(main())
    (row,) = rows(config)
    assert row.state == "sent" and memory.bucket(bucket).sends == 1
    receipt = sidecar(row, ".receipt.json")
    assert receipt["partner_answer"] == {"bucket": bucket, "acknowledged": "ok"}
    assert receipt["sent_at"] < receipt["acknowledged_at"]
    assert Path(row.final_path or "").read_bytes() == invoice("F-60")


def test_refusing_acknowledgement_files_the_flow_in_error(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "1h"')

    async def main() -> None:
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            drop(config, "no.xml", invoice("F-61"))
            await until(lambda: _awaiting(rows(config)), what="flow awaiting its receipt")
            key = rows(config)[0].receipt_key or ""
            assert await gateway.dispatcher.settle(key, b"unknown buyer") == "failed"

    asyncio.run(main())
    (row,) = rows(config)
    assert (row.state, row.reason) == ("error", "refused")
    assert "unknown buyer" in sidecar(row, ".error.json")["message"]


def test_unacknowledged_flow_goes_to_error_and_retry_is_recognised(
    tmp_path: Path, bucket: str
) -> None:
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "300ms"')

    async def main() -> None:
        async with running(config):
            drop(config, "mute.xml", invoice("F-62"))
            await until(filed(config, 1), what="wait over")
            (row,) = rows(config)
            assert (row.state, row.reason) == ("error", "receipt_timeout")
            error = sidecar(row, ".error.json")
            assert f"raccord retry {row.flow_id}" in error["message"]
            # As the message says, with the daemon running.
            assert cli.main(["retry", "--config", str(config.path), row.flow_id]) == 0
            await until(lambda: rows(config)[0].state == "sent", what="resent, recognised")

    asyncio.run(main())
    (row,) = rows(config)
    assert sidecar(row, ".receipt.json")["already_delivered"] is True
    assert len(memory.bucket(bucket).files) == 1


def test_flow_awaiting_its_receipt_waits_across_a_restart(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "1h"')

    async def first() -> None:
        async with running(config):
            drop(config, "r.xml", invoice("F-63"))
            await until(lambda: _awaiting(rows(config)), what="flow awaiting its receipt")

    async def second() -> None:
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            (row,) = rows(config)
            # Reconciled (before ready) and left waiting: no task resends it.
            assert row.state == "awaiting_receipt" and gateway.dispatcher.busy == 0
            assert await gateway.dispatcher.settle(row.receipt_key or "", b"ok") == "sent"

    asyncio.run(first())
    asyncio.run(second())
    (row,) = rows(config)
    assert row.state == "sent" and memory.bucket(bucket).sends == 1


def test_an_acknowledgement_that_cannot_be_processed_leaves_the_flow_waiting(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "1h"')

    async def broken(self: memory.MemorySender, pending: object, answer: bytes) -> None:
        raise KeyError("a bug")

    async def main() -> None:
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            drop(config, "bug.xml", invoice("F-64"))
            await until(lambda: _awaiting(rows(config)), what="flow awaiting its receipt")
            key = rows(config)[0].receipt_key or ""
            with monkeypatch.context() as patch:
                patch.setattr(memory.MemorySender, "settle", broken)
                assert await gateway.dispatcher.settle(key, b"ok") == "error"
            assert _awaiting(rows(config))
            assert await gateway.dispatcher.settle(key, b"ok") == "sent"

    asyncio.run(main())
    assert rows(config)[0].state == "sent"


def test_a_failure_while_expiring_a_wait_does_not_stop_the_gateway(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "200ms"')
    original = Dispatcher._file_error
    failures = [OSError(28, "No space left on device")]

    async def file_error(self: Dispatcher, row: FlowRow) -> None:
        if failures:
            raise failures.pop()
        await original(self, row)

    monkeypatch.setattr(Dispatcher, "_file_error", file_error)

    async def main() -> None:
        with capture_logs() as logs:
            async with running(config):
                drop(config, "a.xml", invoice("F-65"))
                await until(lambda: not failures, what="the expiry to fail once")
                drop(config, "b.xml", invoice("F-66"))
                await until(
                    lambda: any(
                        r.reason == "receipt_timeout" and r.state == "error"
                        for r in rows(config)
                        if r.original_name == "b.xml"
                    ),
                    what="the next flow expired and filed",
                )
        assert any(e["event"] == "flow.expire_failed" for e in logs)

    asyncio.run(main())
    # Decided but not filed: the next start files it.
    assert {r.original_name: r.state for r in rows(config)}["a.xml"] == "failing"

    async def restart() -> None:
        async with running(config):
            await until(filed(config, 2), what="a.xml filed at the next start")

    asyncio.run(restart())
    assert all(r.state == "error" for r in rows(config))


def test_a_failing_housekeeping_round_does_not_stop_the_gateway(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = memory_config(tmp_path, bucket)
    original = Dispatcher.pick_up_requeued
    failures = [sqlite3.OperationalError("database or disk is full")]

    async def pick_up(self: Dispatcher) -> int:
        if failures:
            raise failures.pop()
        return await original(self)

    monkeypatch.setattr(Dispatcher, "pick_up_requeued", pick_up)

    async def main() -> None:
        with capture_logs() as logs:
            async with running(config):
                await until(lambda: not failures, what="one failed round")
                drop(config, "after.xml", invoice("F-67"))
                await until(filed(config, 1), what="the next file sent")
        assert any(e["event"] == "gateway.housekeeping_failed" for e in logs)

    asyncio.run(main())
    assert rows(config)[0].state == "sent"


def test_an_acknowledgement_that_overtakes_its_send_waits_for_it(
    tmp_path: Path, bucket: str
) -> None:
    """The partner may post its MDN before we have read its HTTP answer."""
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "1h"')

    async def main() -> None:
        gate = memory.hold(bucket)
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            drop(config, "fast.xml", invoice("F-68"))
            await until(lambda: memory.bucket(bucket).sends == 1, what="the send under way")
            (row,) = rows(config)
            assert row.state == "sending"
            early = asyncio.create_task(gateway.dispatcher.settle(f"memory:{row.flow_id}", b"ok"))
            await asyncio.sleep(0)
            assert not early.done()  # it waits for the send, rather than refusing
            gate.set()
            assert await early == "sent"

    asyncio.run(main())
    assert rows(config)[0].state == "sent"


@pytest.mark.parametrize("retry_fails_once", [False, True])
def test_an_acknowledgement_a_full_disk_kept_from_the_journal_is_recorded_once_it_heals(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch, retry_fails_once: bool
) -> None:
    """The partner's acknowledgement came, but the journal's disk was full: the flow is not
    left to expire as unacknowledged; the fault is logged by name (no traceback) and the
    acknowledgement is journaled by the next housekeeping round, without the partner posting
    it again. Also when that round's first try fails too (the journal gone a moment): the
    acknowledgement is kept for the round after, not dropped."""
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "1h"')
    real_call = Journal.call
    full = {"left": 1}
    gone = {"left": 1 if retry_fails_once else 0}

    async def call(self: Journal, method: Any) -> Any:
        function = getattr(method, "function", None)
        if function is JournalDB.file_to and full["left"]:
            full["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        if function is JournalDB.take and not full["left"] and gone["left"]:
            gone["left"] -= 1
            raise JournalUnavailable("the journal process died during this call")
        return await real_call(self, method)

    async def main() -> str:
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            drop(config, "full.xml", invoice("F-full-ack"))
            await until(lambda: _awaiting(rows(config)), what="flow awaiting its receipt")
            key = rows(config)[0].receipt_key or ""
            monkeypatch.setattr(Journal, "call", call)
            outcome = await gateway.dispatcher.settle(key, b"ok")
            assert _awaiting(rows(config))
            await until(filed(config, 1), what="the acknowledgement journaled once healed")
            return outcome

    with capture_logs() as events:
        assert asyncio.run(main()) == "error"  # the partner is told to post it again
    (row,) = rows(config)
    assert row.state == "sent" and sidecar(row, ".receipt.json")["acknowledged_at"]
    (fault,) = [e for e in events if e["event"] == "flow.local_fault"]
    assert fault["reason"] == "local_disk_full" and "free space" in fault["action"]
    assert not [e for e in events if e["event"] in ("flow.receipt_failed", "flow.failed")]


def test_a_late_acknowledgement_is_settled_under_the_flows_lease(
    tmp_path: Path, bucket: str
) -> None:
    """On a shared journal another node may be working on the waiting flow (it holds its
    lease): the acknowledgement is answered "busy" (the partner sends it again) and the flow
    is left alone; once the lease is free it is settled, and the lease given back."""
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "1h"')
    journal = Layout(config.gateway.data_dir).journal

    async def main() -> None:
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            drop(config, "late.xml", invoice("F-61"))
            await until(lambda: _awaiting(rows(config)), what="flow awaiting its receipt")
            (row,) = rows(config)
            other = JournalDB(journal, node="other-node")
            try:
                # another node holds the flow's lease (as when its window took it over)
                other._db.execute(
                    "UPDATE flows SET node=?, lease_until=? WHERE flow_id=?",
                    (other.node, lease_end(3600), row.flow_id),
                )
                assert await gateway.dispatcher.settle(row.receipt_key or "", b"ok") == "busy"
                assert [r.state for r in rows(config)] == ["awaiting_receipt"]
                other.release([row.flow_id])
            finally:
                other.close()
            assert await gateway.dispatcher.settle(row.receipt_key or "", b"ok") == "sent"

    asyncio.run(main())
    (row,) = rows(config)
    assert row.state == "sent" and row.lease_until is None and memory.bucket(bucket).sends == 1


def test_a_late_acknowledgement_of_a_flow_healing_here_leaves_its_lease_to_the_window(
    tmp_path: Path, bucket: str
) -> None:
    """A flow stopped here by a local fault keeps its lease in the window, to be tried again.
    An acknowledgement settled meanwhile works under that lease and leaves it: giving it back
    made the window's next beat find it gone and report the flow lost to another node."""
    config = memory_config(tmp_path, bucket, memory_extra='receipt_wait = "1h"')
    journal = Layout(config.gateway.data_dir).journal

    async def main() -> list[MutableMapping[str, Any]]:
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            window = gateway.dispatcher.window
            drop(config, "healing.xml", invoice("F-heal"))
            await until(lambda: _awaiting(rows(config)), what="flow awaiting its receipt")
            (row,) = rows(config)
            here = JournalDB(journal, node=config.gateway.node_name)
            try:  # as a flow healing here holds it: leased, and kept by the window
                assert here.take(row.flow_id, window.until()) is not None
            finally:
                here.close()
            window.hold([row.flow_id])
            with capture_logs() as logs:
                assert await gateway.dispatcher.settle(row.receipt_key or "", b"ok") == "sent"
                await window.renew()
            return logs

    logs = asyncio.run(main())
    assert [e for e in logs if e["event"] == "flow.lease_lost"] == []
    (row,) = rows(config)
    assert row.state == "sent" and memory.bucket(bucket).sends == 1
