"""gateway.journal on SQLite alone: the upgrade of older journals, query plans, disk writes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.journal import (
    SCHEMA_VERSION,
    STATES,
    TERMINAL,
    UNFILED,
    Call,
    Journal,
    JournalDB,
)
from tests.lifecycle import path_to


def flow_id(i: int) -> str:
    return f"20261123T120000Z-{i:06x}"


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
    """Promise: an old SQLite journal is upgraded in place at open, its flows and history kept
    and movable."""
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
    """Promise: the schema 3 upgrade gives each invoice its source flow, and an invoice the
    partner rejected may be sent again without being a duplicate."""
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
    """Promise: an older raccord never writes a SQLite journal a newer one migrated."""
    path = tmp_path / "j.sqlite"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(RuntimeError, match="newer than this raccord knows"):
        JournalDB(path)


def test_the_queue_depth_counts_unfiled_flows_from_the_state_index(tmp_path: Path) -> None:
    """Polled every 2 s by the daemon: it must not read a row per flow ever journaled."""
    db = JournalDB(tmp_path / "j.sqlite")
    for i, state in enumerate(STATES):
        db.insert(flow_id(i), "qualif", f"{state}.xml", f"/spool/{state}.xml")
        for step in path_to(state):
            db.transition(flow_id(i), step)
    statements: list[str] = []
    raw = db._db
    assert isinstance(raw, sqlite3.Connection)
    raw.set_trace_callback(statements.append)  # the query as run, its values inlined
    assert db.queue_depth() == len(STATES) - len(TERMINAL) == len(UNFILED)
    raw.set_trace_callback(None)
    plan = db._db.execute(f"EXPLAIN QUERY PLAN {statements[-1]}").fetchall()
    assert [step[3] for step in plan] == ["SEARCH flows USING COVERING INDEX flows_state (state=?)"]
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


def test_a_journal_from_before_the_metrics_counts_gets_them_filled_at_its_first_open(
    tmp_path: Path,
) -> None:
    """Promise: an older journal's /metrics counts are those of its flows from the first open
    (filled once, then kept by the triggers)."""
    path = tmp_path / "journal.sqlite"
    db = JournalDB(path)
    for index in range(4):
        db.insert(f"f{index}", "a" if index % 2 else "b", "x.xml", "/spool/x")
    db.transition("f1", "queued")
    db._db.executescript(
        "DROP TABLE flow_counts; DROP TABLE status_counts;"
        " DROP TRIGGER flows_counted; DROP TRIGGER flows_recounted; DROP TRIGGER flows_uncounted;"
        " DROP TRIGGER statuses_counted; DROP TRIGGER statuses_uncounted;"
    )
    db.close()
    db = JournalDB(path)  # an older journal: filled once
    try:
        assert db.metrics()[0] == {("b", "claimed"): 2, ("a", "claimed"): 1, ("a", "queued"): 1}
    finally:
        db.close()
