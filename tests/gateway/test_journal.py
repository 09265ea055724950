"""gateway.journal: group commit, per-call atomicity, history by trigger, schema upgrade."""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import sqlite3
from pathlib import Path

import pytest

from gateway.journal import (
    SCHEMA_VERSION,
    STATES,
    TERMINAL,
    UNFILED,
    Call,
    FlowRow,
    Journal,
    JournalDB,
    JournalUnavailable,
    StateConflict,
)
from tests.lifecycle import path_to


def flow_id(i: int) -> str:
    return f"20261123T120000Z-{i:06x}"


def test_concurrent_calls_each_get_their_answer_and_a_conflict_fails_alone(tmp_path: Path) -> None:
    async def main() -> list[object]:
        journal = Journal(tmp_path / "j.sqlite")
        await journal.open()
        try:
            inserted = await asyncio.gather(
                *(
                    journal.call(Call(JournalDB.insert, flow_id(i), "c", f"f{i}.xml", f"/s/{i}"))
                    for i in range(300)
                )
            )
            assert all(row is not None for row in inserted)
            return await asyncio.gather(
                *(
                    journal.call(
                        Call(JournalDB.transition, flow_id(i), "queued", expect=("claimed",))
                    )
                    for i in range(299)
                ),
                # A conflict fails alone: the flows around it still move.
                journal.call(
                    Call(JournalDB.transition, flow_id(299), "sent", expect=("delivered",))
                ),
                return_exceptions=True,
            )
        finally:
            await journal.close()

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[-1], StateConflict)
    assert "is claimed, expected ['delivered']" in str(outcomes[-1])
    db = JournalDB(tmp_path / "j.sqlite")
    assert db.counts() == {"queued": 299, "claimed": 1}
    assert [t["to_state"] for t in db.transitions(flow_id(3))] == ["claimed", "queued"]
    db.close()


def half_done(db: JournalDB) -> None:
    db.transition(flow_id(1), "queued")
    raise RuntimeError("failed midway")


def test_a_call_that_fails_after_writing_is_undone_and_the_others_kept(tmp_path: Path) -> None:
    async def main() -> tuple[object, object, object]:
        journal = Journal(tmp_path / "j.sqlite")
        await journal.open()
        try:
            await journal.call(Call(JournalDB.insert, flow_id(1), "c", "a.xml", "/s/a"))
            return await asyncio.gather(
                journal.call(Call(JournalDB.insert, flow_id(2), "c", "b.xml", "/s/b")),
                journal.call(Call(half_done)),
                journal.call(Call(JournalDB.insert, flow_id(3), "c", "c.xml", "/s/c")),
                return_exceptions=True,
            )
        finally:
            await journal.close()

    second, failed, third = asyncio.run(main())
    assert isinstance(failed, RuntimeError)
    assert second is not None and third is not None
    db = JournalDB(tmp_path / "j.sqlite")
    first = db.get(flow_id(1))
    assert first is not None and first.state == "claimed"  # the half-done write was undone
    assert db.get(flow_id(2)) is not None and db.get(flow_id(3)) is not None
    assert [t["to_state"] for t in db.transitions(flow_id(1))] == ["claimed"]
    db.close()


def test_every_state_change_is_recorded_with_its_detail(tmp_path: Path) -> None:
    db = JournalDB(tmp_path / "j.sqlite")
    db.insert(flow_id(1), "c", "a.xml", "/s/a")
    db.transition(flow_id(1), "error", reason="lost")
    db.transition(flow_id(1), "claimed", expect=("error",), detail="raccord retry --force")
    history = db.transitions(flow_id(1))
    assert [(t["from_state"], t["to_state"], t["detail"]) for t in history] == [
        (None, "claimed", None),
        ("claimed", "error", None),
        ("error", "claimed", "raccord retry --force"),
    ]
    with pytest.raises(StateConflict, match="not in the journal"):
        db.transition(flow_id(9), "queued")
    db.close()


V1_SCHEMA = """
CREATE TABLE flows (
    flow_id TEXT PRIMARY KEY, connection TEXT NOT NULL, original_name TEXT NOT NULL,
    spool_path TEXT NOT NULL, state TEXT NOT NULL, size INTEGER, sha256 TEXT, format TEXT,
    interface_code TEXT, invoice_number TEXT, issue_date TEXT, supplier_id TEXT, buyer_id TEXT,
    remote_name TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    unknown_outcome INTEGER NOT NULL DEFAULT 0, forced INTEGER NOT NULL DEFAULT 0,
    reason TEXT, message TEXT, duplicate_of TEXT, final_path TEXT, receipt TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE transitions (
    id INTEGER PRIMARY KEY, flow_id TEXT NOT NULL, from_state TEXT, to_state TEXT NOT NULL,
    at TEXT NOT NULL, detail TEXT
);
INSERT INTO flows (flow_id, connection, original_name, spool_path, state, created_at, updated_at)
VALUES ('20261101T080000Z-00000a', 'c', 'old.xml', '/s/old', 'sending', '2026-11-01', '2026-11-01');
INSERT INTO transitions (flow_id, from_state, to_state, at)
VALUES ('20261101T080000Z-00000a', NULL, 'claimed', '2026-11-01');
PRAGMA user_version=1;
"""


def test_a_journal_of_schema_1_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    old = sqlite3.connect(path)
    old.executescript(V1_SCHEMA)
    old.close()

    db = JournalDB(path)
    row = db.transition("20261101T080000Z-00000a", "queued", expect=("sending",), detail="resume")
    assert row.detail == "resume" and row.original_name == "old.xml"
    assert [t["to_state"] for t in db.transitions(row.flow_id)] == ["claimed", "queued"]
    assert db._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    JournalDB(path).close()  # opening again is a no-op


V3_INVOICES = """
CREATE TABLE invoices (
    flow_id TEXT NOT NULL, position INTEGER NOT NULL, file TEXT NOT NULL, invoice_number TEXT,
    supplier_id TEXT, status_code TEXT, status_label TEXT, status_at TEXT,
    rejected INTEGER NOT NULL DEFAULT 0, collateral INTEGER NOT NULL DEFAULT 0,
    final INTEGER NOT NULL DEFAULT 0, reasons TEXT, rejected_path TEXT,
    PRIMARY KEY (flow_id, position)
);
INSERT INTO invoices (flow_id, position, file, invoice_number, supplier_id, rejected)
VALUES ('20261101T080000Z-00000a', 0, 'old.xml', 'F-1', 'S', 1);
PRAGMA user_version=3;
"""


def test_a_journal_of_schema_3_learns_lots_and_keeps_rejected_invoices_resendable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    old = sqlite3.connect(path)
    old.executescript(V1_SCHEMA.replace("PRAGMA user_version=1;", "") + V3_INVOICES)
    old.execute("UPDATE flows SET state='sent', sha256='aa', supplier_id='S', invoice_number='F-1'")
    old.commit()
    old.close()
    db = JournalDB(path)
    (invoice,) = db.invoices("20261101T080000Z-00000a")
    assert invoice["source_flow"] == "20261101T080000Z-00000a"  # a flow was its own source
    assert db.get("20261101T080000Z-00000a").lot_id is None  # type: ignore[union-attr]
    # The partner rejected F-1: sending it again (corrected) is not a duplicate.
    assert db.find_duplicate("20261123T080000Z-00000b", "bb", "S", "F-1") is None
    assert db.find_duplicate("20261123T080000Z-00000b", "aa", None, None) is None
    db.set_invoice_status("20261101T080000Z-00000a", 0, rejected=0)
    assert db.find_duplicate("20261123T080000Z-00000b", "bb", "S", "F-1") is not None
    db.close()


def test_a_journal_from_a_newer_raccord_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(RuntimeError, match="newer than this raccord knows"):
        JournalDB(path)


def _exit_process(_: JournalDB) -> None:
    import os

    os._exit(9)


def test_a_call_that_cannot_travel_fails_alone_at_its_caller(tmp_path: Path) -> None:
    async def main() -> object:
        journal = Journal(tmp_path / "j.sqlite")
        await journal.open()
        try:
            with pytest.raises(TypeError, match="cannot be sent"):
                await journal.call(lambda db: db.get(flow_id(1)))
            # the journal goes on serving the calls that can travel
            return await journal.call(Call(JournalDB.insert, flow_id(1), "c", "a.xml", "/s/a"))
        finally:
            await journal.close()

    row = asyncio.run(main())
    assert row is not None


def test_the_journal_process_dying_fails_its_batch_and_the_next_call_gets_a_new_one(
    tmp_path: Path,
) -> None:
    async def main() -> tuple[tuple[object, object], FlowRow | None]:
        journal = Journal(tmp_path / "j.sqlite")
        await journal.open()
        try:
            await journal.call(Call(JournalDB.insert, flow_id(1), "c", "a.xml", "/s/a"))
            died = await asyncio.gather(
                journal.call(Call(_exit_process)),
                journal.call(Call(JournalDB.insert, flow_id(2), "c", "b.xml", "/s/b")),
                return_exceptions=True,
            )
            after = await journal.call(Call(JournalDB.get, flow_id(1)))
            return died, after
        finally:
            await journal.close()

    died, after = asyncio.run(main())
    assert all(isinstance(outcome, JournalUnavailable) for outcome in died), died
    assert "whether it was applied is unknown" in str(died[0])
    assert after is not None and after.flow_id == flow_id(1)  # a new process, the same journal
    db = JournalDB(tmp_path / "j.sqlite")
    assert db.get(flow_id(2)) is None  # its batch never committed
    db.close()


def test_a_journal_newer_than_this_raccord_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    JournalDB(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.close()

    async def main() -> None:
        journal = Journal(path)
        try:
            await journal.open()
        finally:
            await journal.close()

    with pytest.raises(RuntimeError, match="newer than this raccord knows"):
        asyncio.run(main())


def test_rows_travel_between_processes_unchanged(tmp_path: Path) -> None:
    """A FlowRow that travels to or from the journal process arrives equal and still frozen."""
    db = JournalDB(tmp_path / "journal.sqlite")
    db.insert(flow_id(1), "qualif", "f.xml", "/spool/f.xml")
    row = db.transition(flow_id(1), "queued", attempts=2, remote_name="R.xml")
    again = pickle.loads(pickle.dumps(row, pickle.HIGHEST_PROTOCOL))  # noqa: S301 - our own
    assert again == row and repr(again) == repr(row)
    assert dataclasses.asdict(again)["remote_name"] == "R.xml" and again.attempts == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.state = "sent"
    db.close()


def test_a_flows_table_with_foreign_columns_is_refused_clearly(tmp_path: Path) -> None:
    db = JournalDB(tmp_path / "journal.sqlite")
    db.insert(flow_id(2), "qualif", "f.xml", "/spool/f.xml")
    raw = sqlite3.connect(tmp_path / "journal.sqlite")
    raw.execute("ALTER TABLE flows ADD COLUMN surprise TEXT")
    raw.commit()
    raw.close()
    db.close()
    db = JournalDB(tmp_path / "journal.sqlite")
    with pytest.raises(RuntimeError, match="surprise"):
        db.get(flow_id(2))
    db.close()


def test_the_queue_depth_counts_unfiled_flows_from_the_state_index(tmp_path: Path) -> None:
    """Polled every 2 s by the daemon: it must not read a row per flow ever journaled."""
    db = JournalDB(tmp_path / "j.sqlite")
    for i, state in enumerate(STATES):
        db.insert(flow_id(i), "qualif", f"{state}.xml", f"/spool/{state}.xml")
        for step in path_to(state):
            db.transition(flow_id(i), step)
    statements: list[str] = []
    db._db.set_trace_callback(statements.append)  # the query as run, its values inlined
    assert db.queue_depth() == len(STATES) - len(TERMINAL) == len(UNFILED)
    db._db.set_trace_callback(None)
    plan = db._db.execute(f"EXPLAIN QUERY PLAN {statements[-1]}").fetchall()
    assert [step[3] for step in plan] == ["SEARCH flows USING COVERING INDEX flows_state (state=?)"]
    db.close()


def test_spools_in_names_the_flows_of_one_state_oldest_first(tmp_path: Path) -> None:
    db = JournalDB(tmp_path / "j.sqlite")
    for i, claimed_at in (
        (1, "2026-11-23T12:00:02"),
        (2, "2026-11-23T12:00:03"),
        (3, "2026-11-23T12:00:01"),
    ):
        db.insert(flow_id(i), "qualif", f"f{i}.xml", f"/spool/f{i}.xml")
        # claimed at that time (a claimed flow cannot move to claimed: set the column itself)
        db._db.execute("UPDATE flows SET created_at=? WHERE flow_id=?", (claimed_at, flow_id(i)))
    db.transition(flow_id(2), "queued")
    assert db.spools_in("claimed") == [(flow_id(3), "/spool/f3.xml"), (flow_id(1), "/spool/f1.xml")]
    db.close()


def test_the_journal_process_does_not_write_statement_journals_to_disk(tmp_path: Path) -> None:
    """Each UPDATE with its history trigger, inside a batch's transaction, first saves the
    pages it changes (a statement journal): to a temporary file, that was 18 writes a flow for
    these calls (36 in the daemon's load test), all of them wasted."""

    async def main() -> int:
        journal = Journal(tmp_path / "j.sqlite")
        await journal.open()
        try:
            pid = journal._worker.pid
            assert pid is not None

            def writes() -> int:
                for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                    if line.startswith("syscw:"):
                        return int(line.split()[1])
                raise AssertionError("no syscw")

            before = writes()
            ids = [flow_id(i) for i in range(300)]
            await asyncio.gather(
                *(journal.call(Call(JournalDB.insert, f, "c", "f.xml", f"/s/{f}")) for f in ids)
            )
            steps = (
                lambda f: Call(
                    JournalDB.queue_unless_duplicate,
                    f,
                    (f"sha-{f}", "SUP", f"N-{f}"),
                    check=True,
                    invoice=("f.xml", f"N-{f}", "SUP", f),
                    sending={"attempts": 1, "unknown_outcome": 1},
                    sha256=f"sha-{f}",
                    supplier_id="SUP",
                    invoice_number=f"N-{f}",
                ),
                lambda f: Call(
                    JournalDB.file_to, f, "delivered", tmp_path / "sent", f"{f}.xml", receipt="{}"
                ),
                lambda f: Call(JournalDB.transition, f, "sent", expect=("delivered",)),
            )
            for step in steps:
                await asyncio.gather(*(journal.call(step(f)) for f in ids))
            return writes() - before
        finally:
            await journal.close()

    assert asyncio.run(main()) < 300 * 3  # 1.5 a flow here; 18 with the temporary file


def test_a_move_the_lifecycle_table_does_not_allow_is_refused_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """The journal checks every transition against flows.lifecycle: a claimed flow cannot be
    marked sent (it was never delivered), and the refused move leaves no trace."""
    db = JournalDB(tmp_path / "j.sqlite")
    db.insert(flow_id(1), "c", "f.xml", "/s/1")
    with pytest.raises(StateConflict, match="is claimed"):
        db.transition(flow_id(1), "sent")
    row = db.get(flow_id(1))
    assert row is not None and row.state == "claimed"
    assert [t["to_state"] for t in db.transitions(flow_id(1))] == ["claimed"]
    # The retry edge exists: error -> claimed is allowed by the table.
    db.transition(flow_id(1), "failing")
    db.transition(flow_id(1), "error")
    assert db.transition(flow_id(1), "claimed").state == "claimed"


def test_the_metrics_counts_follow_every_insert_transition_and_old_journal(tmp_path: Path) -> None:
    """The counts /metrics reads (kept by triggers, not a GROUP BY at each scrape) are those of
    the flows themselves, and a journal from before them gets them filled at its first open."""
    path = tmp_path / "journal.sqlite"
    db = JournalDB(path)
    for index in range(6):
        db.insert(f"f{index}", "a" if index % 2 else "b", "x.xml", "/spool/x")
    db.transition("f0", "queued")
    db.transition("f1", "queued")
    db.transition("f1", "sending")
    db._db.execute(
        "INSERT INTO returns (return_id, connection, file, inbox_path, sha256, state, received_at)"
        " VALUES ('r', 'a', 'r.xml', '/inbox/r.xml', 'h', 'applied', 'now')"
    )
    db._db.execute("INSERT INTO statuses (return_id, flow_id, code) VALUES ('r', 'f1', '05')")

    def truth() -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        flows = db._db.execute(
            "SELECT connection, state, COUNT(*) FROM flows GROUP BY connection, state"
        ).fetchall()
        statuses = db._db.execute(
            "SELECT f.connection, s.code, COUNT(*) FROM statuses s JOIN flows f USING (flow_id)"
            " GROUP BY f.connection, s.code"
        ).fetchall()
        return ({(r[0], r[1]): r[2] for r in flows}, {(r[0], r[1]): r[2] for r in statuses})

    assert db.metrics() == truth()
    assert db.metrics()[0][("a", "sending")] == 1
    db._db.executescript(
        "DROP TABLE flow_counts; DROP TABLE status_counts;"
        " DROP TRIGGER flows_counted; DROP TRIGGER flows_recounted; DROP TRIGGER flows_uncounted;"
        " DROP TRIGGER statuses_counted; DROP TRIGGER statuses_uncounted;"
    )
    db.close()
    db = JournalDB(path)  # an older journal: filled once
    try:
        assert db.metrics() == truth()
    finally:
        db.close()


def test_every_move_records_the_node_that_made_it(tmp_path: Path) -> None:
    """Promise: with several nodes, the history says which node did what (also after an
    upgrade from a journal whose history triggers did not know the node)."""
    path = tmp_path / "j.sqlite"
    old = sqlite3.connect(path)
    old.executescript(V1_SCHEMA)
    old.close()
    db = JournalDB(path, node="node-a")
    db.transition("20261101T080000Z-00000a", "queued", expect=("sending",))
    db.close()
    db = JournalDB(path, node="node-b")
    db.insert("20261101T080001Z-00000b", "c", "new.xml", "/s/new")
    row = db.transition("20261101T080000Z-00000a", "sending")
    assert row.node == "node-b"
    nodes = [t["node"] for t in db.transitions("20261101T080000Z-00000a")]
    assert nodes == [None, "node-a", "node-b"]  # the first move predates the node column
    assert [t["node"] for t in db.transitions("20261101T080001Z-00000b")] == ["node-b"]
    db.close()
