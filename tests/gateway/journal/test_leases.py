"""Flow leases on one journal shared by several nodes: each flow is held by one node at a time,
an expired lease passes to another node, a renewed one does not, none is lost.

Each test runs on both databases (the ``target`` and ``fresh`` fixtures); the last ones run
nodes at once from threads on PostgreSQL, where leasing takes row locks (FOR UPDATE SKIP
LOCKED) rather than SQLite's one writer at a time."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.journal import JournalDB, JournalTarget, LeaseLost, PostgresTarget
from gateway.journal.leases import WORKABLE, lease_end

LATER = lease_end(3600)  # a lease still running when the test ends
PAST = lease_end(-60)  # a lease already expired


def flow_id(i: int) -> str:
    return f"20261207T080000Z-{i:06x}"


@contextmanager
def nodes(target: JournalTarget, *names: str) -> Iterator[list[JournalDB]]:
    """One JournalDB (one connection) per node name, all on the journal ``target``."""
    dbs = [JournalDB(target, node=name) for name in names]
    try:
        yield dbs
    finally:
        for db in dbs:
            db.close()


def backlog(db: JournalDB, count: int) -> list[str]:
    """``count`` claimed flows nobody holds, oldest first."""
    ids = [flow_id(i) for i in range(count)]
    for i, fid in enumerate(ids):
        db.insert(fid, "c", f"f{i}.xml", f"/spool/{fid}", created_at=f"2026-12-07T08:00:{i:02}")
    return ids


def test_two_nodes_never_get_the_same_flow_and_take_the_oldest_first(target: JournalTarget) -> None:
    """Each flow goes to exactly one of two nodes leasing from one journal, oldest first."""
    with nodes(target, "a", "b") as (a, b):
        ids = backlog(a, 10)
        first = [row.flow_id for row in a.lease(6, LATER)]
        second = [row.flow_id for row in b.lease(10, LATER)]
        assert first == ids[:6]
        assert second == ids[6:]
        assert b.lease(10, LATER) == [] and a.lease(10, LATER) == []
        holders = {fid: row.node for fid in ids if (row := a.get(fid)) is not None}
        assert holders == {fid: ("a" if fid in first else "b") for fid in ids}


def test_an_expired_lease_passes_to_another_node_a_running_one_does_not(
    target: JournalTarget,
) -> None:
    """A node that stopped renewing loses its flows to the next node that leases."""
    with nodes(target, "a", "b") as (a, b):
        ids = backlog(a, 4)
        assert [r.flow_id for r in a.lease(3, PAST)] == ids[:3]
        assert a.renew(ids[2:3], LATER) == ids[2:3]  # a renews one, then dies
        taken = [r.flow_id for r in b.lease(10, LATER)]
        assert taken == [ids[0], ids[1], ids[3]]
        assert a.renew(ids[:3], LATER) == [ids[2]]  # a learns it lost the first two


def test_renewing_keeps_a_flow_and_only_its_holder_renews(target: JournalTarget) -> None:
    """Renewed in time, a lease stays; another node can neither take nor renew it."""
    with nodes(target, "a", "b") as (a, b):
        ids = backlog(a, 3)
        a.lease(3, lease_end(0.5))
        assert sorted(a.renew(ids, LATER)) == ids
        assert b.renew(ids, LATER) == []
        assert b.lease(3, LATER) == []
        assert b.take(ids[0], LATER) is None
        row = a.take(ids[0], LATER)  # its own: a lot it packed, a flow it resumes
        assert row is not None and row.node == "a"


def test_released_flows_are_free_at_once_and_a_restart_takes_its_own_back(
    target: JournalTarget,
) -> None:
    """A flow released (a clean stop) goes to the next node; a node restarting under its name
    releases its dead incarnation's leases, so its flows are resumed without waiting."""
    with nodes(target, "a", "b") as (a, b):
        ids = backlog(a, 4)
        a.lease(4, LATER)
        assert a.release(ids[:1]) == 1
        assert [r.flow_id for r in b.lease(4, LATER)] == ids[:1]
        assert b.release(ids[1:]) == 0  # not its leases
    with nodes(target, "a", "b") as (a_again, b):
        assert a_again.release_all() == 3
        assert [r.flow_id for r in a_again.lease(10, LATER)] == ids[1:]


def test_only_workable_flows_are_leased(target: JournalTarget) -> None:
    """Flows waiting for their lot or an acknowledgement, and filed ones, are not leased."""
    with nodes(target, "a") as (a,):
        ids = backlog(a, 3)
        a.transition(ids[0], "batched")
        a.transition(ids[1], "failing")
        assert {r.flow_id for r in a.lease(10, LATER)} == {ids[1], ids[2]}
        assert "batched" not in WORKABLE and "awaiting_receipt" not in WORKABLE
        assert a.workable() == 2


def test_the_skip_locked_suffix_ends_the_inner_select(tmp_path: Path) -> None:
    """The suffix a database that has it sets (PostgreSQL: FOR UPDATE SKIP LOCKED) goes at
    the end of the inner SELECT, after its LIMIT."""
    statements: list[str] = []

    class Marked(JournalDB):
        skip_locked = " /* skip locked */"

    db = Marked(tmp_path / "j.sqlite", node="a")
    try:
        backlog(db, 2)
        cast(sqlite3.Connection, db._db).set_trace_callback(statements.append)
        assert len(db.lease(1, LATER)) == 1
    finally:
        db.close()
    (sql,) = [s for s in statements if s.startswith("UPDATE flows SET node")]
    assert "LIMIT 1 /* skip locked */)" in sql
    plain = JournalDB(tmp_path / "j.sqlite", node="b")
    assert plain.skip_locked == ""  # SQLite: one writer at a time, nothing to skip
    plain.close()


# -- interleavings ---------------------------------------------------------------------------

NODES = ("a", "b", "c")
operation = st.one_of(
    st.tuples(st.just("lease"), st.sampled_from(NODES), st.integers(0, 6)),
    st.tuples(st.just("renew"), st.sampled_from(NODES), st.just(0)),
    st.tuples(st.just("expire"), st.sampled_from(NODES), st.just(0)),
    st.tuples(st.just("release"), st.sampled_from(NODES), st.integers(0, 11)),
    st.tuples(st.just("finish"), st.sampled_from(NODES), st.integers(0, 11)),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(operation, max_size=30))
def test_any_interleaving_holds_each_flow_by_one_node_and_loses_none(
    fresh: Callable[[], JournalTarget], steps: list[tuple[str, str, int]]
) -> None:
    """Whatever 2-3 nodes lease, renew, let expire, release and finish, in any order: a lease
    never hands out a flow another node validly holds, takes exactly the oldest free ones,
    and at the end every unfinished flow can still be leased."""
    with nodes(fresh(), *NODES) as dbs:
        db = dict(zip(NODES, dbs, strict=True))
        ids = backlog(dbs[0], 12)
        # The model: each flow's holder and whether the lease runs, or None (free).
        owner: dict[str, tuple[str, bool] | None] = dict.fromkeys(ids)
        finished: set[str] = set()
        for action, node, n in steps:
            mine = [f for f in ids if (o := owner[f]) is not None and o[0] == node]
            if action == "lease":
                free = [f for f in ids if f not in finished and not (owner[f] or ("", False))[1]]
                got = [row.flow_id for row in db[node].lease(n, LATER)]
                assert got == free[:n]
                for f in got:
                    owner[f] = (node, True)
            elif action == "renew":
                assert sorted(db[node].renew(mine, LATER)) == sorted(mine)
                for f in mine:
                    owner[f] = (node, True)
            elif action == "expire":  # the node stops renewing: its leases run out
                db[node].renew(mine, PAST)
                for f in mine:
                    owner[f] = (node, False)
            elif action == "release":
                db[node].release([ids[n]])
                if ids[n] in mine:
                    owner[ids[n]] = None
            elif ids[n] in mine and ids[n] not in finished and owner[ids[n]] == (node, True):
                db[node].transition(ids[n], "failing")  # decided by its holder
                db[node].transition(ids[n], "error")
                finished.add(ids[n])
        for node in NODES:
            db[node].renew([f for f in ids if (owner[f] or ("",))[0] == node], PAST)
        rest = [row.flow_id for row in db["a"].lease(100, LATER)]
        assert rest == [f for f in ids if f not in finished]


def test_lease_needs_returning(tmp_path: Path) -> None:
    """The SQLite under raccord has RETURNING (3.35), which the lease statement needs."""
    assert sqlite3.sqlite_version_info >= (3, 35)


# -- nodes at once, on PostgreSQL ------------------------------------------------------------


def test_postgresql_leases_with_for_update_skip_locked(postgres_url: str) -> None:
    """On PostgreSQL the lease statement's suffix is FOR UPDATE SKIP LOCKED, and it is in
    effect: a flow another transaction has locked is skipped at once, not waited for."""
    with nodes(PostgresTarget(postgres_url), "a", "b") as (a, b):
        assert a.skip_locked == " FOR UPDATE SKIP LOCKED"
        ids = backlog(a, 3)
        with psycopg.connect(postgres_url) as other:  # a transaction holding the oldest row
            other.execute("SELECT flow_id FROM flows WHERE flow_id = %s FOR UPDATE", (ids[0],))
            with ThreadPoolExecutor(1) as pool:
                leased = pool.submit(b.lease, 2, LATER).result(timeout=10)
        assert [row.flow_id for row in leased] == ids[1:]
        assert [row.flow_id for row in a.lease(5, LATER)] == ids[:1]  # free once unlocked


@pytest.mark.parametrize("rounds", [1, 3])
def test_nodes_leasing_at_once_on_postgresql_never_share_a_flow(
    postgres_url: str, rounds: int
) -> None:
    """Three nodes (three connections) leasing concurrently from threads, in batches of
    random sizes, their leases expiring between rounds: within a round no flow is handed to
    two nodes, and every flow is handed out."""
    target = PostgresTarget(postgres_url)
    with nodes(target, *NODES) as dbs:
        ids = set(backlog(dbs[0], 240))
        for turn in range(rounds):
            start = threading.Barrier(len(dbs))
            until = LATER if turn == rounds - 1 else lease_end(1.5)

            def drain(
                db: JournalDB, until: str = until, start: threading.Barrier = start
            ) -> list[str]:
                sizes = random.Random(db.node).choices(range(1, 12), k=1000)  # noqa: S311
                got: list[str] = []
                start.wait(timeout=10)
                for size in sizes:
                    rows = db.lease(size, until)
                    if not rows:
                        return got
                    got += [row.flow_id for row in rows]
                return got

            with ThreadPoolExecutor(len(dbs)) as pool:
                shares = list(pool.map(drain, dbs, timeout=60))
            taken = [flow for share in shares for flow in share]
            assert len(taken) == len(set(taken)), "a flow leased by two nodes at once"
            assert set(taken) == ids
            holders = {row.flow_id: row.node for row in dbs[0].search(limit=1000)}
            for node, share in zip(NODES, shares, strict=True):
                assert {holders[flow] for flow in share} == {node}
            if turn < rounds - 1:
                wait_for_expiry(dbs[0], until)


def wait_for_expiry(db: JournalDB, until: str) -> None:
    """Wait (with a deadline) until the leases given ``until`` have run out."""
    deadline = time.monotonic() + 10
    while lease_end(0) <= until:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_leasing_reads_the_backlog_in_order_from_its_index_without_sorting(
    tmp_path: Path,
) -> None:
    """Taking the next flows costs the same with 5 or 100,000 waiting: the statement is
    served by the partial index flows_workable, in order, with no sort of the backlog."""
    statements: list[str] = []
    with nodes(tmp_path / "j.sqlite", "a") as (a,):
        backlog(a, 5)
        raw = cast(sqlite3.Connection, a._db)
        raw.set_trace_callback(statements.append)
        a.lease(2, LATER)
        raw.set_trace_callback(None)
        (sql,) = [s for s in statements if s.startswith("UPDATE flows SET node")]
        plan = " | ".join(row[3] for row in a._db.execute("EXPLAIN QUERY PLAN " + sql))
    assert "USING INDEX flows_workable" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_every_state_is_workable_or_not_and_the_index_says_the_same() -> None:
    """A state added to the lifecycle is either leased or not, knowingly; the index's
    condition is word for word the query's (else the index is not used)."""
    from flows.lifecycle import FlowState
    from gateway.journal import leases, schema

    assert set(WORKABLE) | set(leases.NOT_WORKABLE) == {state.value for state in FlowState}
    assert not set(WORKABLE) & set(leases.NOT_WORKABLE)
    index = schema.SCHEMA.split("flows_workable ON flows(created_at, flow_id)")[1]
    assert " ".join(index.split()).startswith(f"WHERE {leases._WORKABLE_SQL};")


def test_a_flow_retried_by_hand_is_free_for_any_node_at_once(target: JournalTarget) -> None:
    """A flow filed in error while its node still held its lease (released at the next
    heartbeat), then put back by ``raccord retry`` or the console (another node name): any
    node may lease it at once, not only after the old lease runs out."""
    from gateway.flow.recovery import _back_to_claimed

    with nodes(target, "node-a", "console", "node-b") as (a, console, b):
        (fid,) = backlog(a, 1)
        assert [row.flow_id for row in a.lease(1, LATER)] == [fid]
        a.transition(fid, "failing")
        a.transition(fid, "error")
        row = console.get(fid)
        assert row is not None and row.lease_until == LATER  # not yet released by node-a
        _back_to_claimed(console, row, "raccord retry", forced=False)
        assert [row.flow_id for row in b.lease(1, LATER)] == [fid]


def test_a_node_that_lost_a_flows_lease_cannot_move_it_and_the_holder_can(
    target: JournalTarget, tmp_path: Path
) -> None:
    """Promise: a node paused longer than lease_timeout, whose flow another node took over,
    cannot record a step of that flow once it wakes (any kind of move: it is refused with
    LeaseLost naming the holder, and nothing is written), while the holder's moves go on; a
    flow no lease covers (in error) may be moved by any node, as ``raccord retry`` does."""
    with nodes(target, "a", "b") as (a, b):
        a.insert(flow_id(1), "c", "x.xml", "/s")
        assert a.take(flow_id(1), LATER) is not None
        a.transition(flow_id(1), "queued", current="claimed")
        assert a.renew([flow_id(1)], PAST) == [flow_id(1)]  # a is silent: its lease runs out
        assert [row.flow_id for row in b.lease(10, LATER)] == [flow_id(1)]
        with pytest.raises(LeaseLost, match="node b"):
            a.transition(flow_id(1), "sending", current="queued", attempts=1)
        b.transition(flow_id(1), "sending", current="queued", attempts=1)
        with pytest.raises(LeaseLost, match="node b"):
            a.file_to(flow_id(1), "delivered", tmp_path, "x.xml", current="sending")
        with pytest.raises(LeaseLost, match="node b"):
            a.transition(flow_id(1), "failing", current="sending", reason="internal_error")
        row = a.get(flow_id(1))
        assert row is not None and (row.state, row.node, row.attempts) == ("sending", "b", 1)
        assert [t["node"] for t in a.transitions(flow_id(1))] == ["a", "a", "b"]
        b.transition(flow_id(1), "error", current="sending", reason="internal_error")
        retried = a.transition(flow_id(1), "claimed", current="error", lease_until=None)
        assert (retried.state, retried.node) == ("claimed", "a")


def test_a_duplicate_check_refused_by_the_lease_says_so(target: JournalTarget) -> None:
    """Promise: the queueing move (with its duplicate check folded in) is fenced too: a node
    that lost the flow's lease is told so, not that the flow is a duplicate or misplaced."""
    with nodes(target, "a", "b") as (a, b):
        a.insert(flow_id(2), "c", "x.xml", "/s")
        assert b.take(flow_id(2), LATER) is not None
        with pytest.raises(LeaseLost, match="node b"):
            a.queue_unless_duplicate(flow_id(2), ("sha", "SUP", "N-2"), check=True)
        row = a.get(flow_id(2))
        assert row is not None and row.state == "claimed"
