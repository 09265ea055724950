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

    def queued_by_hand(flow: str, _: int) -> JournalCall:
        """A move no group stands for (``expect``), into a state that makes a later
        queueing of the same invoice a duplicate, and to a path a later filing may want."""
        return Call(
            JournalDB.transition,
            flow,
            "queued",
            expect=("claimed",),
            sha256="s1",
            supplier_id="SUP",
            invoice_number="N1",
            final_path="/nonexistent/sent/x.xml",
        )

    makers = [insert, queue, file_to, move]
    calls: list[JournalCall] = []
    for _ in range(draw(st.integers(1, 3))):
        maker = draw(st.sampled_from(makers))
        shape = draw(st.integers(0, 1))
        chosen = draw(st.lists(st.sampled_from(FLOWS), min_size=2, max_size=8, unique=True))
        calls += [maker(flow, shape) for flow in chosen]
    extras = [*makers, queued_by_hand]
    for _ in range(draw(st.integers(0, 3))):
        calls.append(
            draw(st.sampled_from(extras))(draw(st.sampled_from(FLOWS)), draw(st.integers(0, 1)))
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


#: Each kind of call a group stands for: the state its flows start in, the call, and the
#: statements a group of them costs.
KINDS: dict[str, tuple[str, Callable[[str], JournalCall], int]] = {
    "insert": ("absent", lambda f: Call(JournalDB.insert, f, "c", "a.xml", "/s"), 1),
    "transition": (
        "delivered",
        lambda f: Call(JournalDB.transition, f, "sent", current="delivered"),
        1,
    ),
    "file_to": (
        "sending",
        lambda f: Call(
            JournalDB.file_to, f, "delivered", Path("/nonexistent"), f"{f}.xml", current="sending"
        ),
        1,
    ),
    "queue_unless_duplicate": (
        "claimed",
        lambda f: Call(
            JournalDB.queue_unless_duplicate,
            f,
            (f"sha-{f}", None, None),
            check=True,
            invoice=(f"{f}.xml", None, None, f),
            sending={"attempts": 1},
        ),
        3,  # the move, the invoices, the move on to sending
    ),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_batch_of_one_move_for_many_flows_costs_a_group_s_statements(
    postgres_url: str, kind: str
) -> None:
    """Promise (why the module exists): twenty flows moved alike in one batch cost one group's
    statements on PostgreSQL, not twenty times a move's, and each call gets its own answer."""
    state, make, statements = KINDS[kind]
    db = JournalDB(PostgresTarget(postgres_url), node="a")
    try:
        flows = [f"20261207T090000Z-{i:06x}" for i in range(20)]
        for flow in flows:
            start(db, flow, state, None)
        executed: list[str] = []
        execute = db._db.execute

        def counted(sql: str, parameters: Any = (), /) -> Any:
            executed.append(sql)
            return execute(sql, parameters)

        db._db.execute = counted  # type: ignore[method-assign]
        outcomes = run_batch(db, [make(flow) for flow in flows])
        work = [sql for sql in executed if sql.split()[0] not in ("BEGIN", "COMMIT")]
        assert len(work) == statements, work
        rows = [o[0] if isinstance(o, tuple) else o for o in outcomes]
        assert [row.flow_id for row in rows] == flows
    finally:
        db.close()


def test_a_call_left_alone_keeps_its_place_before_the_groups_after_it(
    databases: Callable[[], tuple[JournalDB, JournalDB]],
) -> None:
    """Promise: a call no group stands for still runs before the calls that came after it. A
    flow queued by hand with an invoice's number, then two queueings, one of the same
    invoice: as one at a time, the second copy is found a duplicate and only one is sent."""
    y, z1, z2 = FLOWS[:3]

    def queueing(flow: str, number: str) -> JournalCall:
        return Call(
            JournalDB.queue_unless_duplicate,
            flow,
            (f"sha-{flow}", "SUP", number),
            check=True,
            invoice=(f"{flow}.xml", number, "SUP", flow),
            sending=None,
            sha256=f"sha-{flow}",
            supplier_id="SUP",
            invoice_number=number,
        )

    calls: list[JournalCall] = [
        Call(
            JournalDB.transition,
            y,
            "queued",
            expect=("claimed",),
            sha256="sha-y",
            supplier_id="SUP",
            invoice_number="N1",
        ),
        queueing(z1, "N1"),
        queueing(z2, "N2"),
    ]
    coalesced, reference = databases()
    try:
        for db in (coalesced, reference):
            for flow in (y, z1, z2):
                start(db, flow, "claimed", None)
        together = run_batch(coalesced, calls)
        alone = [run_batch(reference, [call])[0] for call in calls]
        assert [outcome(o) for o in together] == [outcome(o) for o in alone]
        queued, earlier = together[1]
        assert queued is None and earlier is not None and earlier.flow_id == y
        assert journal(coalesced) == journal(reference)
    finally:
        coalesced.close()
        reference.close()
