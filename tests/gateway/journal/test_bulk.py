"""gateway.journal.bulk: a batch's same-shaped moves in one statement each, on PostgreSQL.

The promise: a batch run with its moves coalesced answers every call and leaves the journal
exactly as the same calls run one at a time, in order, would (rows, invoices, history,
counts): the refused moves refused with the same error, a duplicate found as a duplicate, a
flow another node holds left alone. Hypothesis draws the batches (flows in every state, held
by this node, another or none, several calls on one flow, invoices sharing bytes or numbers,
filings sharing a name) and each runs on two fresh databases, one each way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.journal import Call, FlowRow, JournalDB, PostgresTarget, run_batch
from gateway.journal.leases import lease_end
from tests.postgres import PostgresServer

LATER = lease_end(3600)
FLOWS = [f"20261207T080000Z-{i:06x}" for i in range(10)]
STARTS = ["absent", "claimed", "claimed", "claimed", "queued", "sending", "delivered", "error"]

JournalCall = Callable[[JournalDB], Any]


def start(db: JournalDB, flow_id: str, state: str, holder: str | None) -> None:
    """Bring ``flow_id`` to ``state``, its lease held by ``holder`` (or nobody)."""
    if state == "absent":
        return
    db.insert(flow_id, "c", f"{flow_id}.xml", f"/spool/{flow_id}")
    path = {
        "claimed": [],
        "queued": ["queued"],
        "sending": ["queued", "sending"],
        "delivered": ["queued", "sending", "delivered"],
        "error": ["failing", "error"],
    }[state]
    for step in path:
        db.transition(flow_id, step)
    if state in ("queued", "sending", "delivered"):  # what a new flow may duplicate
        db._db.execute(
            "UPDATE flows SET sha256='s1', supplier_id='SUP', invoice_number='N1' WHERE flow_id=?",
            (flow_id,),
        )
    if state == "delivered":  # a path a filing may not take
        db._db.execute(
            "UPDATE flows SET final_path='/nonexistent/sent/x.xml' WHERE flow_id=?", (flow_id,)
        )
    if holder is not None:
        db._db.execute(
            "UPDATE flows SET node=?, lease_until=? WHERE flow_id=?", (holder, LATER, flow_id)
        )


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[tuple[str, str, str | None]], list[JournalCall]]:
    """Flows in drawn states and leases, then a batch: a few moves of one shape each made for
    several flows (what coalescing groups), plus a few drawn calls that entangle them."""
    starts = [
        (flow, draw(st.sampled_from(STARTS)), draw(st.sampled_from([None, None, "a", "b"])))
        for flow in FLOWS
    ]

    def insert(flow: str, _: int) -> JournalCall:
        return Call(JournalDB.insert, flow, "c", f"{flow}.xml", f"/spool/{flow}")

    def queue(flow: str, shape: int) -> JournalCall:
        sha = draw(st.sampled_from(["s1", f"s-{flow}", f"s-{flow}"]))
        number = draw(st.sampled_from(["N1", f"N-{flow}", None]))
        return Call(
            JournalDB.queue_unless_duplicate,
            flow,
            (sha, "SUP" if number else None, number),
            check=True,
            invoice=(f"{flow}.xml", number, "SUP", flow),
            sending={"attempts": 1, "unknown_outcome": 1} if shape % 2 else None,
            sha256=sha,
            supplier_id="SUP",
            invoice_number=number,
        )

    def file_to(flow: str, shape: int) -> JournalCall:
        name = draw(st.sampled_from(["x.xml", f"{flow}.xml", f"{flow}.xml"]))
        current = ["sending", "queued"][shape % 2]
        return Call(
            JournalDB.file_to,
            flow,
            "delivered",
            Path("/nonexistent/sent"),
            name,
            current=current,
            receipt="{}",
        )

    def move(flow: str, shape: int) -> JournalCall:
        to, current, detail = [("sent", "delivered", None), ("failing", "sending", "d")][shape % 2]
        return Call(JournalDB.transition, flow, to, current=current, detail=detail)

    makers = [insert, queue, file_to, move]
    calls: list[JournalCall] = []
    for _ in range(draw(st.integers(1, 3))):
        maker = draw(st.sampled_from(makers))
        shape = draw(st.integers(0, 1))
        chosen = draw(st.lists(st.sampled_from(FLOWS), min_size=2, max_size=8, unique=True))
        calls += [maker(flow, shape) for flow in chosen]
    for _ in range(draw(st.integers(0, 3))):
        calls.append(
            draw(st.sampled_from(makers))(draw(st.sampled_from(FLOWS)), draw(st.integers(0, 1)))
        )
    return starts, draw(st.permutations(calls))


def outcome(value: Any) -> Any:
    """A call's answer without its times."""
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value))
    if isinstance(value, FlowRow):
        return {k: v for k, v in value.to_dict().items() if k not in ("created_at", "updated_at")}
    if isinstance(value, tuple):
        return tuple(outcome(v) for v in value)
    return value


def journal(db: JournalDB) -> dict[str, Any]:
    """Everything a call may have written, without times."""
    query = db._db.execute
    return {
        "flows": sorted(repr(outcome(FlowRow.of(r))) for r in query("SELECT * FROM flows")),
        "invoices": sorted(tuple(r) for r in query("SELECT * FROM invoices")),
        "history": [
            tuple(r)
            for r in query(
                "SELECT flow_id, from_state, to_state, detail, node FROM transitions"
                " ORDER BY flow_id, id"
            )
        ],
        "counts": db.metrics()[0],
    }


@pytest.fixture
def databases(postgres_server: PostgresServer) -> Callable[[], tuple[JournalDB, JournalDB]]:
    """A maker of two fresh journals (one per Hypothesis example; the example closes them)."""

    def make() -> tuple[JournalDB, JournalDB]:
        return (
            JournalDB(PostgresTarget(postgres_server.create_database()), node="a"),
            JournalDB(PostgresTarget(postgres_server.create_database()), node="a"),
        )

    return make


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=batches())
def test_a_coalesced_batch_answers_and_writes_as_its_calls_one_at_a_time(
    databases: Callable[[], tuple[JournalDB, JournalDB]],
    batch: tuple[list[tuple[str, str, str | None]], list[JournalCall]],
) -> None:
    starts, calls = batch
    coalesced, reference = databases()
    try:
        for db in (coalesced, reference):
            for flow, state, holder in starts:
                start(db, flow, state, holder)
        together = run_batch(coalesced, calls)
        alone = [run_batch(reference, [call])[0] for call in calls]
        assert [outcome(o) for o in together] == [outcome(o) for o in alone]
        assert journal(coalesced) == journal(reference)
    finally:
        coalesced.close()
        reference.close()


def test_a_batch_of_one_move_for_many_flows_is_one_statement(postgres_url: str) -> None:
    """Promise (why the module exists): twenty flows moved alike in one batch cost one
    statement on PostgreSQL, not twenty, and each call gets its own flow's row."""
    db = JournalDB(PostgresTarget(postgres_url), node="a")
    try:
        flows = [f"20261207T090000Z-{i:06x}" for i in range(20)]
        for flow in flows:
            start(db, flow, "delivered", None)
        executed: list[str] = []
        execute = db._db.execute

        def counted(sql: str, parameters: Any = (), /) -> Any:
            executed.append(sql)
            return execute(sql, parameters)

        db._db.execute = counted  # type: ignore[method-assign]
        outcomes = run_batch(
            db, [Call(JournalDB.transition, f, "sent", current="delivered") for f in flows]
        )
        moves = [sql for sql in executed if sql.startswith("UPDATE flows")]
        assert len(moves) == 1, moves
        assert [(o.flow_id, o.state) for o in outcomes] == [(f, "sent") for f in flows]
    finally:
        db.close()
