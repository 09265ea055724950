"""gateway.journal: the queries, their history triggers and counts, on both databases."""

from __future__ import annotations

import dataclasses
import pickle
import types

import pytest

from gateway.journal import (
    JournalDB,
    JournalTarget,
    StateConflict,
)


def flow_id(i: int) -> str:
    return f"20261123T120000Z-{i:06x}"


def test_every_state_change_is_recorded_with_its_detail(target: JournalTarget) -> None:
    """Promise: every move of a flow is in its history, in order, with what the move said; a
    move of an unknown flow is refused."""
    db = JournalDB(target)
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


def test_rows_travel_between_processes_unchanged(target: JournalTarget) -> None:
    """A FlowRow that travels to or from the journal process arrives equal and still frozen."""
    db = JournalDB(target)
    db.insert(flow_id(1), "qualif", "f.xml", "/spool/f.xml")
    row = db.transition(flow_id(1), "queued", attempts=2, remote_name="R.xml")
    again = pickle.loads(pickle.dumps(row, pickle.HIGHEST_PROTOCOL))  # noqa: S301 - our own
    assert again == row and repr(again) == repr(row)
    assert dataclasses.asdict(again)["remote_name"] == "R.xml" and again.attempts == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        again.state = "sent"
    db.close()


def test_a_flows_table_with_foreign_columns_is_refused_clearly(target: JournalTarget) -> None:
    """Promise: a journal whose flows table has columns this raccord does not know is refused
    with the columns named, not misread."""
    db = JournalDB(target)
    db.insert(flow_id(2), "qualif", "f.xml", "/spool/f.xml")
    db._db.execute("ALTER TABLE flows ADD COLUMN surprise TEXT")
    db.close()
    db = JournalDB(target)
    with pytest.raises(RuntimeError, match="surprise"):
        db.get(flow_id(2))
    db.close()


def test_spools_in_names_the_flows_of_one_state_oldest_first(target: JournalTarget) -> None:
    """Promise: the flows of a state are resumed oldest first (the order they were claimed in)."""
    db = JournalDB(target)
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


def test_a_move_the_lifecycle_table_does_not_allow_is_refused_and_writes_nothing(
    target: JournalTarget,
) -> None:
    """The journal checks every transition against flows.lifecycle: a claimed flow cannot be
    marked sent (it was never delivered), and the refused move leaves no trace."""
    db = JournalDB(target)
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
    db.close()


def test_the_metrics_counts_follow_every_insert_transition_and_purge(target: JournalTarget) -> None:
    """The counts /metrics reads (kept by triggers, not a GROUP BY at each scrape) are those of
    the flows themselves, through inserts, moves and deletions."""
    db = JournalDB(target)
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
    db._db.execute("DELETE FROM statuses WHERE flow_id='f1'")  # as the purge does
    db._db.execute("DELETE FROM flows WHERE flow_id IN ('f1', 'f2')")
    assert db.metrics() == truth()
    assert ("a", "sending") not in db.metrics()[0] and db.metrics()[1] == {}
    db.close()


def test_the_purge_reads_and_deletes_the_same_on_both_databases(target: JournalTarget) -> None:
    """Promise: the retention purge (SQL of its own, with SQLite's index hints and named
    parameters, run on the journal's connection) forgets old filed flows on either database,
    and their counts with them."""
    from gateway.ops.retention import START, purge_batch

    db = JournalDB(target)
    try:
        for i in range(5):
            db.insert(flow_id(i), "c", "a.xml", "/s/a")
            db.transition(flow_id(i), "failing")
            db.transition(flow_id(i), "error")
        db.insert(flow_id(9), "c", "new.xml", "/s/new")
        db._db.execute(
            "UPDATE flows SET created_at='2020-01-01', updated_at='2020-01-01' WHERE flow_id<>?",
            (flow_id(9),),
        )
        batch = purge_batch(db, "2021-01-01", START, False)
        assert batch.flows == 5 and db.counts() == {"claimed": 1}
        assert db.metrics()[0] == {("c", "claimed"): 1} and db.transitions(flow_id(0)) == []
    finally:
        db.close()


def test_a_listing_streams_while_other_queries_run_between_its_rows(target: JournalTarget) -> None:
    """Promise: a listing reads the flows a batch at a time (a million flows never held at
    once) and the reader may query the journal between rows (the CLI reads each page's
    invoices), on both databases."""
    db = JournalDB(target)
    try:
        with db.transaction():
            for i in range(2500):
                db.insert(flow_id(i), "c", f"f{i}.xml", f"/s/{i}")
        seen = []
        for row in db.each():
            seen.append(row.flow_id)
            if len(seen) % 1000 == 1:  # another statement while the listing is open
                assert db.get(row.flow_id) == row
                db.transition(row.flow_id, "queued")
        assert sorted(seen) == sorted(flow_id(i) for i in range(2500))
        assert db.counts() == {"claimed": 2497, "queued": 3}
        listing = db.each()
        next(listing)
        assert isinstance(listing, types.GeneratorType)
        listing.close()  # a reader that stopped early
        assert db.queue_depth() == 2500
    finally:
        db.close()
