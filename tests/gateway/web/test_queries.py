"""The console's reads: each filter finds what `raccord flows` would (a lot and the dropped
files it carries, by invoice number; rejected and collateral told apart), and each is answered
from an index — never by reading every row of a journal that may hold millions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.journal import JournalDB, JournalTarget, PostgresTarget
from gateway.journal.connection import Connection
from gateway.web import queries
from gateway.web.app import _day
from gateway.web.queries import Filters
from tests.lifecycle import path_to, walk


def fill(target: JournalTarget) -> None:
    """Two dropped files packed in a lot that came back rejected under Complète (one guilty,
    one collateral), one file sent alone, one in error."""
    db = JournalDB(target)
    for flow_id, name, number in (("A", "a.xml", "N-1"), ("B", "b.xml", "N-REJ-2")):
        db.insert(flow_id, "qualif", name, f"/spool/{name}", invoice_number=number)
        walk(db, flow_id, "packed", lot_id="LOT")
    db.insert("LOT", "qualif", "lot.tar.gz", "/spool/lot", packaging="tar.gz")
    walk(db, "LOT", "sent")
    db.add_invoices("LOT", [("a.xml", "N-1", None, "A"), ("b.xml", "N-REJ-2", None, "B")])
    db.set_invoice_status("LOT", 0, status_code="05", rejected=1, collateral=1, status_at="t")
    db.set_invoice_status("LOT", 1, status_code="05", rejected=1, status_at="t")
    db.insert("C", "other", "c.xml", "/spool/c.xml", invoice_number="N-3")
    walk(db, "C", "sent")
    db.add_invoices("C", [("c.xml", "N-3", None, "C")])
    db.set_invoice_status("C", 0, status_code="01", status_label="déposée", status_at="t")
    db.insert("D", "other", "d.xml", "/spool/d.xml")
    walk(db, "D", "error", reason="duplicate")
    db.close()


@pytest.fixture
def journal(target: JournalTarget) -> Iterator[Connection]:
    """The journal of :func:`fill`, read as the console reads it, on each database in turn."""
    fill(target)
    reader = queries.open_read_only(target)
    yield reader
    reader.close()


@pytest.fixture
def sqlite_journal(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """The journal of :func:`fill` on SQLite, whose query plans the index tests read."""
    path = tmp_path / "journal.sqlite"
    fill(path)
    reader = queries.open_read_only(path)
    assert isinstance(reader, sqlite3.Connection)
    yield reader
    reader.close()


def ids(db: Connection, **filters: str) -> set[str]:
    return {row["flow_id"] for row in queries.flows(db, Filters(**filters))}  # type: ignore[arg-type]


def test_each_filter_finds_what_it_names(journal: Connection) -> None:
    assert ids(journal) == {"A", "B", "LOT", "C", "D"}
    assert ids(journal, connection="other") == {"C", "D"}
    assert ids(journal, state="error") == {"D"}
    assert ids(journal, text="N-REJ-2") == {"B", "LOT"}  # the dropped file and its lot
    assert ids(journal, text="c.") == {"C"}  # the start of a file name
    assert ids(journal, text="LOT") == {"LOT"}
    assert ids(journal, status="rejected") == {"A", "B", "LOT"}
    assert ids(journal, status="collateral") == {"A", "LOT"}
    assert ids(journal, status="01") == {"C"}
    assert ids(journal, since="2999-01-01") == set()
    assert ids(journal, until="2999-01-01") == {"A", "B", "LOT", "C", "D"}


def test_a_lot_row_says_how_many_were_rejected_and_collateral(
    journal: Connection,
) -> None:
    (lot,) = queries.flows(journal, Filters(text="LOT"))
    assert lot["status"] == {
        "code": "05",
        "label": "",
        "rejected": 2,
        "collateral": 1,
        "count": 2,
    }
    (rejected,) = [r for r in queries.rejected(journal, None, None, None) if not r["collateral"]]
    assert rejected["invoice_number"] == "N-REJ-2" and rejected["connection"] == "qualif"


def test_a_flow_page_has_its_story_and_invoices(journal: Connection) -> None:
    flow = queries.flow(journal, "LOT")
    assert flow is not None
    assert [step["to_state"] for step in flow["transitions"]] == ["claimed", *path_to("sent")]
    assert [m["flow_id"] for m in flow["members"]] == ["A", "B"]
    assert [(i["rejected"], i["collateral"]) for i in flow["invoices"]] == [(1, 1), (1, 0)]
    assert queries.flow(journal, "nope") is None


def test_the_listing_and_the_story_name_the_node_of_each_move(target: JournalTarget) -> None:
    """With several nodes on one journal, the console shows which node did what: the node
    that last moved each listed flow, and the node of each step of a flow's story."""
    for node, state in (("node-a", None), ("node-b", "queued")):
        db = JournalDB(target, node=node)
        if state is None:
            db.insert("F", "qualif", "f.xml", "/spool/f.xml")
        else:
            db.transition("F", state)
        db.close()
    reader = queries.open_read_only(target)
    try:
        (row,) = queries.flows(reader, Filters())
        flow = queries.flow(reader, "F")
    finally:
        reader.close()
    assert row["node"] == "node-b"
    assert flow is not None
    assert [(s["to_state"], s["node"]) for s in flow["transitions"]] == [
        ("claimed", "node-a"),
        ("queued", "node-b"),
    ]


def test_the_overview_counts_states_and_draws_30_days_and_48_hours(
    journal: Connection,
) -> None:
    data = queries.overview(journal, datetime.now(UTC))
    assert data["counts"]["sent"] == 2 and data["counts"]["error"] == 1
    assert len(data["days"]) == 30 and len(data["hours"]) == 48
    assert data["days"][-1]["sent"] == 1 and data["days"][-1]["failed"] == 1  # the lot not counted


@pytest.mark.parametrize(
    "filters",
    [
        Filters(),
        Filters(connection="other"),
        Filters(state="error"),
        Filters(since="2026-01-01", until="2026-01-02"),
        Filters(text="N-3"),
        Filters(status="05"),
        Filters(status="rejected"),
        Filters(status="collateral"),
    ],
)
def test_every_filter_is_answered_from_an_index(
    sqlite_journal: sqlite3.Connection, filters: Filters
) -> None:
    statements: list[str] = []
    sqlite_journal.set_trace_callback(statements.append)
    queries.flows(sqlite_journal, filters)
    sqlite_journal.set_trace_callback(None)
    (listing,) = [s for s in statements if s.startswith("SELECT flow_id, connection")]
    plan = [row[3] for row in sqlite_journal.execute(f"EXPLAIN QUERY PLAN {listing}")]
    whole_table = [step for step in plan if step.startswith("SCAN") and "INDEX" not in step]
    assert not whole_table, plan
    # Sorted after the search only when the matches are few (a text, a rare status).
    sorted_after = any("TEMP B-TREE FOR ORDER BY" in step for step in plan)
    assert not sorted_after or filters.status or filters.text, plan


def test_a_prefix_many_names_share_walks_the_date_order(
    sqlite_journal: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "invoice-" on a million flows: sorting every match would take seconds."""
    monkeypatch.setattr(queries, "_FEW", 1)  # every match counts as "many"
    statements: list[str] = []
    sqlite_journal.set_trace_callback(statements.append)
    assert {r["flow_id"] for r in queries.flows(sqlite_journal, Filters(text="a"))} == {"A"}
    assert {r["flow_id"] for r in queries.flows(sqlite_journal, Filters(status="05"))} == {
        "A",
        "B",
        "LOT",
    }
    sqlite_journal.set_trace_callback(None)
    for listing in [s for s in statements if s.startswith("SELECT flow_id, connection")]:
        plan = [row[3] for row in sqlite_journal.execute(f"EXPLAIN QUERY PLAN {listing}")]
        assert not any("TEMP B-TREE FOR ORDER BY" in step for step in plan), plan
        # each flow's check reads its own invoices, not every invoice with that status
        assert not any("invoices_status" in step for step in plan), plan


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=st.none() | st.text(max_size=40),
    status=st.none() | st.text(max_size=12),
    connection=st.none() | st.text(max_size=12),
    page=st.integers(min_value=-5, max_value=10**6),
)
def test_any_filter_from_a_url_is_answered_never_a_crash(
    journal: Connection,
    text: str | None,
    status: str | None,
    connection: str | None,
    page: int,
) -> None:
    """What a browser sends is untrusted: quotes, %, NUL, surrogates' neighbours, huge pages."""
    filters = Filters(connection=connection, status=status, text=text)
    found = queries.flows(journal, filters, page)
    assert len(found) <= queries.PAGE + 1


@given(st.text(max_size=40))
def test_a_date_filter_is_a_date_or_nothing(value: str) -> None:
    day = _day(value)
    assert day is None or day[:4].isdigit()


def test_the_console_cannot_write_to_the_journal(journal: Connection) -> None:
    """The console only reads: its connection refuses a write on either database (on a shared
    PostgreSQL journal, a read-only session), so no page can ever alter a flow."""
    with pytest.raises(Exception, match=r"read-only|readonly"):
        journal.execute("UPDATE flows SET state = 'queued' WHERE flow_id = 'D'")
    assert queries.state_of(journal, "D") == "error"


def test_read_only_keeps_the_urls_own_options() -> None:
    """An operator's own session options (e.g. a search_path) survive the console's."""
    from psycopg.conninfo import conninfo_to_dict

    url = "postgresql://raccord@db:5432/journal?options=-c%20search_path%3Draccord"
    options = conninfo_to_dict(queries.read_only_target(PostgresTarget(url)).url)["options"]
    assert options == "-c search_path=raccord -c default_transaction_read_only=on"


def test_each_row_shows_its_latest_carriers_status_on_any_page_size(
    target: JournalTarget,
) -> None:
    """A dropped file resubmitted in a second lot shows that lot's status, not the first's;
    a CSV-sized page (more flows than one query reads) gets every row's status."""
    db = JournalDB(target)
    db.insert("A", "qualif", "a.xml", "/spool/a.xml", invoice_number="N-1")
    walk(db, "A", "packed", lot_id="LOT1")
    for lot, code in (("LOT1", "05"), ("LOT2", "01")):
        db.insert(lot, "qualif", f"{lot}.tar.gz", f"/spool/{lot}", packaging="tar.gz")
        walk(db, lot, "sent")
        db.add_invoices(lot, [("a.xml", "N-1", None, "A")])
        db.set_invoice_status(lot, 0, status_code=code, status_at="t")
    with db.transaction():
        for index in range(queries._CHUNK + 20):
            flow_id = f"F{index:04d}"
            db.insert(flow_id, "other", f"{flow_id}.xml", f"/spool/{flow_id}")
            db.add_invoices(flow_id, [(f"{flow_id}.xml", flow_id, None, flow_id)])
            db.set_invoice_status(flow_id, 0, status_code="01", status_at="t")
    db.close()
    reader = queries.open_read_only(target)
    try:
        (row,) = queries.flows(reader, Filters(text="a.xml"))
        rows = queries.flows(reader, Filters(connection="other"), 0, 10_000)
    finally:
        reader.close()
    assert row["status"] is not None and row["status"]["code"] == "01"
    assert len(rows) == queries._CHUNK + 20
    assert all(r["status"] is not None and r["status"]["code"] == "01" for r in rows)
