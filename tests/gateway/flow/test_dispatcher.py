"""The gateway on the memory sender: every dropped file ends in sent/ or error/, once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from gateway.flow import dispatcher as dispatcher_module
from gateway.folders import Layout
from gateway.journal import Call, Journal, JournalDB
from protocols.errors import AuthenticationError, ConnectError, TransferTimeout
from protocols.testing import memory
from tests.conftest import sample
from tests.gateway.flow.conftest import invoice
from tests.gateway.harness import (
    answer_lost_after,
    deliver,
    drop,
    filed,
    memory_config,
    rows,
    running,
    sidecar,
    until,
)


def test_dropped_invoice_is_sent_with_receipt(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)

    deliver(config, {"facture 1.xml": invoice("F-1")})
    (row,) = rows(config)
    assert row.state == "sent" and row.attempts == 1
    assert row.remote_name == f"FSO1100A_VFE056_{row.flow_id}.xml"
    assert memory.bucket(bucket).files == {row.remote_name: invoice("F-1")}
    assert row.final_path is not None
    final = Path(row.final_path)
    assert final.name == "facture 1.xml" and final.read_bytes() == invoice("F-1")
    today = datetime.now(UTC).date().isoformat()
    assert final.parent == tmp_path / "data" / "sent" / "qualif-mem" / today
    receipt = sidecar(row, ".receipt.json")
    assert receipt["remote_name"] == row.remote_name
    assert receipt["flow_id"] == row.flow_id
    assert receipt["invoice_number"] == "F-1"
    assert receipt["protocol"] == "memory"
    assert len(receipt["sha256"]) == 64
    assert not list((tmp_path / "data" / "outbox" / "qualif-mem").iterdir())
    assert not list((tmp_path / "data" / "spool" / "qualif-mem").iterdir())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b"<Invoice xmlns='urn:oasis:names:specification:ubl:schema:xsd:Invoice-2'><a></b>",
            "malformed_xml",
        ),
        (b"<Order xmlns='urn:x'/>", "unknown_format"),
        (b"", "empty"),
        (sample("cii-invoice.xml"), "not_connected"),
        (b"<CPPStatut/>", "no_interface_code"),
    ],
)
def test_refused_files_go_to_error_with_reason(
    tmp_path: Path, bucket: str, data: bytes, reason: str
) -> None:
    config = memory_config(tmp_path, bucket)

    deliver(config, {"doc.xml": data})
    (row,) = rows(config)
    assert (row.state, row.reason) == ("error", reason)
    error = sidecar(row, ".error.json")
    assert error["reason"] == reason and error["message"]
    assert error["retry"] == f"raccord retry {row.flow_id}"
    assert Path(row.final_path or "").read_bytes() == data
    assert memory.bucket(bucket).sends == 0


def test_not_connected_message_says_what_to_add(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)

    deliver(config, {"cii.xml": sample("cii-invoice.xml")})
    (row,) = rows(config)
    assert 'add FSO1106A = "complete" or "partial"' in (row.message or "")


def test_too_large_file_is_refused_unread(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket, gateway_extra='max_file_size = "1KB"')

    deliver(config, {"big.xml": invoice("F-big") + b" " * 2000})
    (row,) = rows(config)
    assert (row.state, row.reason) == ("error", "too_large")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"state": "disabled"}, "connection_inactive"),
        ({"valid_to": "2020-01-01"}, "outside_validity"),
    ],
)
def test_unusable_connection_refuses(
    tmp_path: Path, bucket: str, overrides: dict[str, str], reason: str
) -> None:
    config = memory_config(tmp_path, bucket, **overrides)

    deliver(config, {"f.xml": invoice("F-2")})
    (row,) = rows(config)
    assert (row.state, row.reason) == ("error", reason)


def test_same_bytes_or_same_invoice_are_never_sent_twice(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)

    async def main() -> None:
        async with running(config):
            drop(config, "a.xml", invoice("F-3"))
            await until(filed(config, 1))
            drop(config, "a-again.xml", invoice("F-3"))
            drop(config, "a-reformatted.xml", invoice("F-3").replace(b"\n", b"\r\n"))
            await until(filed(config, 3))

    asyncio.run(main())
    by_name = {row.original_name: row for row in rows(config)}
    first = by_name["a.xml"]
    assert first.state == "sent"
    for name in ("a-again.xml", "a-reformatted.xml"):
        assert (by_name[name].state, by_name[name].reason) == ("error", "duplicate")
        assert first.flow_id in (by_name[name].message or "")
    assert "the same bytes" in (by_name["a-again.xml"].message or "")
    assert "invoice F-3 of supplier" in (by_name["a-reformatted.xml"].message or "")
    assert len(memory.bucket(bucket).files) == 1


def test_simultaneous_copies_are_sent_once(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)

    async def main() -> None:
        async with running(config):
            for i in range(5):
                drop(config, f"copy{i}.xml", invoice("F-4"))
            await until(filed(config, 5))

    asyncio.run(main())
    states = sorted(row.state for row in rows(config))
    assert states == ["error"] * 4 + ["sent"]
    assert len(memory.bucket(bucket).files) == 1


def test_a_file_offered_several_times_at_once_is_one_flow(tmp_path: Path, bucket: str) -> None:
    """An inotify event and a scan offer the same file in the same instant: the claims race on
    a worker thread, one wins, the others end without a trace in the journal."""
    config = memory_config(tmp_path, bucket)
    outbox = Layout(config.gateway.data_dir).outbox("qualif-mem")

    async def main() -> None:
        async with running(config) as gateway:
            dispatcher = gateway.dispatcher
            assert dispatcher is not None
            outbox.mkdir(parents=True, exist_ok=True)
            path = outbox / ".f.xml.part"  # not a candidate: the watcher leaves it to us
            path.write_bytes(invoice("F-4"))
            with capture_logs() as logs:
                ids = [await dispatcher.claim("qualif-mem", path) for _ in range(3)]
                assert len(set(ids)) == 3
                await until(filed(config, 1))
                await until(lambda: dispatcher.busy == 0, what="the other claims ended")
            assert [e["event"] for e in logs if e["log_level"] in ("error", "warning")] == []
            assert len([e for e in logs if e["event"] == "flow.claimed"]) == 1

    asyncio.run(main())
    (row,) = rows(config)
    assert row.state == "sent"
    assert memory.bucket(bucket).sends == 1


@pytest.mark.parametrize("spool_is", ["a file", "missing"])
def test_a_claim_the_file_system_refuses_leaves_the_file_in_the_outbox(
    tmp_path: Path, bucket: str, spool_is: str
) -> None:
    """Every rename into the spool fails: reported (not taken for a file claimed meanwhile),
    the file stays in the outbox and is claimed once the spool is back."""
    config = memory_config(tmp_path, bucket)
    layout = Layout(config.gateway.data_dir)

    async def main() -> None:
        async with running(config):
            spool = layout.spool("qualif-mem")
            spool.rmdir()
            if spool_is == "a file":
                spool.write_bytes(b"")
            with capture_logs() as logs:
                dropped = drop(config, "f.xml", invoice("F-4b"))
                await until(lambda: any(e["event"] == "intake.claim_failed" for e in logs))
            assert dropped.exists()
            assert rows(config) == []
            spool.unlink(missing_ok=True)
            spool.mkdir()  # repaired: the next scan claims it
            await until(filed(config, 1))

    asyncio.run(main())
    (row,) = rows(config)
    assert row.state == "sent" and row.original_name == "f.xml"


@pytest.mark.parametrize(
    "lost",
    [JournalDB.insert, JournalDB.queue_unless_duplicate, JournalDB.transition, JournalDB.file_to],
    ids=["claim", "routed-and-sending", "sent", "delivered"],
)
def test_a_journal_answer_lost_after_its_commit_resumes_the_flow(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch, lost: Any
) -> None:
    """The journal process died between a commit and its answer (once): the flow goes on from
    what the journal says, is sent once and filed in sent/, not put in error/."""
    config = memory_config(tmp_path, bucket)
    journal = answer_lost_after(lost, times=1)
    monkeypatch.setattr("gateway.daemon.Journal", journal)
    with capture_logs() as logs:
        (row,) = deliver(config, {"f.xml": invoice("F-90")})
    assert journal.lost == 1  # type: ignore[attr-defined]
    assert row.state == "sent", row
    assert memory.bucket(bucket).sends == 1
    assert [e["event"] for e in logs if e["event"] == "flow.journal_lost"] == ["flow.journal_lost"]
    assert not [e for e in logs if e["log_level"] == "error"]
    assert not list(Layout(config.gateway.data_dir).error("qualif-mem").iterdir())


def test_a_sent_flow_takes_four_journal_calls_and_records_every_transition(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Routing and the first attempt's ``sending`` go in one call; the history keeps both."""
    config = memory_config(tmp_path, bucket)
    calls: list[str] = []

    class Counting(Journal):
        async def call(self, method: Callable[[JournalDB], Any]) -> Any:
            if isinstance(method, Call):
                calls.append(method.function.__name__)
            return await super().call(method)

    monkeypatch.setattr("gateway.daemon.Journal", Counting)
    (row,) = deliver(config, {"f.xml": invoice("F-95")})
    assert row.state == "sent" and row.attempts == 1
    flow_calls = [
        name
        for name in calls
        if name in {"insert", "queue_unless_duplicate", "transition", "file_to"}
    ]
    assert flow_calls == ["insert", "queue_unless_duplicate", "file_to", "transition"]
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    history = [t["to_state"] for t in db.transitions(row.flow_id)]
    db.close()
    assert history == ["claimed", "queued", "sending", "delivered", "sent"]


def test_a_journal_that_keeps_losing_answers_ends_the_flow_in_error(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed a few times, then filed in error/ with internal_error rather than looping.
    (The routing's answer is lost with the flow in ``sending``; each resume's transition to
    ``sending`` again is lost too, so the flow is never sent.)"""
    config = memory_config(tmp_path, bucket)
    journal = answer_lost_after(JournalDB.queue_unless_duplicate, JournalDB.transition)
    monkeypatch.setattr("gateway.daemon.Journal", journal)
    with capture_logs() as logs:
        (row,) = deliver(config, {"f.xml": invoice("F-91")})
    assert (row.state, row.reason) == ("error", "internal_error")
    assert memory.bucket(bucket).sends == 0
    resumed = [e for e in logs if e["event"] == "flow.journal_lost"]
    assert len(resumed) == dispatcher_module.JOURNAL_LOST_RESUMES


def test_retryable_errors_are_retried_then_sent(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)
    memory.fail_next(bucket, ConnectError("down"), TransferTimeout("slow"))

    async def main() -> None:
        with capture_logs(processors=[merge_contextvars]) as logs:
            async with running(config):
                drop(config, "f.xml", invoice("F-5"))
                await until(filed(config, 1))
        retries = [e for e in logs if e["event"] == "flow.retry"]
        assert [e["reason"] for e in retries] == ["unreachable", "timeout"]
        assert all(e["flow_id"] and e["connection"] == "qualif-mem" for e in retries)

    asyncio.run(main())
    (row,) = rows(config)
    assert (row.state, row.attempts) == ("sent", 3)
    assert sidecar(row, ".receipt.json")["attempts"] == 3


def test_permanent_error_goes_to_error_at_once(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)
    memory.fail_next(bucket, AuthenticationError("key refused"))

    deliver(config, {"f.xml": invoice("F-6")})
    (row,) = rows(config)
    assert (row.state, row.reason, row.attempts) == ("error", "auth_failed", 1)
    assert sidecar(row, ".error.json")["message"] == "key refused"


def test_retries_stop_at_the_limit(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket, attempts=3)
    memory.fail_next(bucket, *(ConnectError("down") for _ in range(5)))

    deliver(config, {"f.xml": invoice("F-7")})
    (row,) = rows(config)
    assert (row.state, row.reason, row.attempts) == ("error", "unreachable", 3)
    assert "gave up after 3 attempts" in (row.message or "")


def test_partial_and_hidden_names_are_never_picked_up(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)
    outbox = Layout(config.gateway.data_dir).outbox("qualif-mem")
    outbox.mkdir(parents=True)
    ignored = [".hidden.xml", "f.xml.tmp", "f.xml.part", "f.xml.filepart", "F.XML.PART"]

    async def main() -> None:
        for name in ignored:
            (outbox / name).write_bytes(invoice(f"I-{name}"))
        async with running(config) as gateway:
            (outbox / "f.xml.part").rename(outbox / "f.xml")
            await until(filed(config, 1))
            watcher = gateway.watcher
            assert watcher is not None
            scans = watcher.scans
            await until(lambda: watcher.scans > scans, what="a rescan of the outbox")
            assert len(rows(config)) == 1

    asyncio.run(main())
    assert sorted(p.name for p in outbox.iterdir()) == sorted(set(ignored) - {"f.xml.part"})


def test_file_written_in_place_is_claimed_only_once_complete(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)
    outbox = Layout(config.gateway.data_dir).outbox("qualif-mem")
    outbox.mkdir(parents=True)
    data = invoice("F-10")

    async def main() -> None:
        async with running(config):
            with (outbox / "slow.xml").open("wb") as out:
                for i in range(0, len(data), 200):
                    out.write(data[i : i + 200])
                    out.flush()
                    await asyncio.sleep(0.05)
                assert rows(config) == []
            await until(filed(config, 1))

    asyncio.run(main())
    (row,) = rows(config)
    assert row.state == "sent"
    assert memory.bucket(bucket).files[row.remote_name or ""] == data


def test_the_sender_is_told_a_file_is_coming_once_a_second_before_its_send(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that an SFTP login overlaps the analysis (protocols.base.Prepares)."""
    config = memory_config(tmp_path, bucket)

    async def main() -> None:
        async with running(config):
            for i in range(5):
                drop(config, f"burst-{i}.xml", invoice(f"P-{i}"))
            await until(filed(config, 5))
            monkeypatch.setattr(dispatcher_module, "PREPARE_EVERY", 0.0)
            drop(config, "later.xml", invoice("P-9"))
            await until(filed(config, 6))

    asyncio.run(main())
    calls = memory.bucket(bucket).calls
    # The burst told it once, before any send; the later file (no pause required) once more.
    assert calls[0] == "prepare" and calls.count("send") == 6
    assert calls.count("prepare") == 2 and calls[-2:] == ["prepare", "send"]


def test_unexpected_sender_crash_files_the_flow_and_keeps_running(
    tmp_path: Path, bucket: str
) -> None:
    config = memory_config(tmp_path, bucket)

    memory.fail_next(bucket, RuntimeError("bug in a plugin"))  # type: ignore[arg-type]

    async def main() -> None:
        async with running(config):
            drop(config, "a.xml", invoice("F-20"))
            await until(filed(config, 1))
            drop(config, "b.xml", invoice("F-21"))
            await until(filed(config, 2))

    asyncio.run(main())
    by_name = {row.original_name: row for row in rows(config)}
    assert (by_name["a.xml"].state, by_name["a.xml"].reason) == ("error", "internal_error")
    assert by_name["b.xml"].state == "sent"


def test_flow_context_is_bound_in_logs(tmp_path: Path, bucket: str) -> None:
    config = memory_config(tmp_path, bucket)

    async def main() -> None:
        with capture_logs(processors=[merge_contextvars]) as logs:
            async with running(config):
                drop(config, "ctx.xml", invoice("F-40"))
                await until(filed(config, 1))
        sent = [e for e in logs if e["event"] == "flow.sent"]
        assert len(sent) == 1
        assert sent[0]["file"] == "ctx.xml" and sent[0]["connection"] == "qualif-mem"
        assert sent[0]["flow_id"] == rows(config)[0].flow_id

    asyncio.run(main())


def test_same_name_in_flight_twice_never_overwrites_in_sent(tmp_path: Path, bucket: str) -> None:
    """Two different files dropped under one name, both in flight: both kept in sent/."""
    config = memory_config(tmp_path, bucket)

    def sending() -> int:
        return len([r for r in rows(config) if r.state == "sending"])

    async def main() -> None:
        gate = memory.hold(bucket)
        async with running(config):
            drop(config, "same.xml", invoice("F-50"))
            await until(lambda: sending() == 1, what="first in flight")
            drop(config, "same.xml", invoice("F-51"))
            await until(lambda: sending() == 2, what="both in flight")
            gate.set()  # both deliveries complete together and are filed at the same time
            await until(filed(config, 2))

    asyncio.run(main())
    assert [r.state for r in rows(config)] == ["sent", "sent"]
    filed_bytes = sorted(Path(r.final_path or "").read_bytes() for r in rows(config))
    assert filed_bytes == sorted([invoice("F-50"), invoice("F-51")])


def test_a_burst_in_one_second_gets_distinct_flows(tmp_path: Path, bucket: str) -> None:
    """300 files claimed within the same (frozen) second: 300 flows, 300 sends."""
    config = memory_config(tmp_path, bucket)
    when = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)

    async def main() -> None:
        async with running(config, now=lambda: when):
            for i in range(300):
                drop(config, f"f{i:03}.xml", invoice(f"B-{i}"))
            await until(filed(config, 300), timeout=60, what="300 flows filed")

    asyncio.run(main())
    filed_rows = rows(config)
    assert len({r.flow_id for r in filed_rows}) == 300
    assert {r.state for r in filed_rows} == {"sent"}
    assert memory.bucket(bucket).sends == 300
    assert not list(Layout(config.gateway.data_dir).spool("qualif-mem").iterdir())
