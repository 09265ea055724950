"""The duties table's queries, with several nodes (one JournalDB each, as several daemons
would have) over one journal, SQLite then PostgreSQL: one holder at a time, whatever the order
of events; on PostgreSQL also when the nodes ask at the same instant from threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.journal import JournalDB, JournalTarget, PostgresTarget

LEASE = timedelta(seconds=30)
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


def nodes(target: JournalTarget, *names: str) -> list[JournalDB]:
    return [JournalDB(target, node=name) for name in names]


@pytest.fixture
def pair(target: JournalTarget) -> Iterator[list[JournalDB]]:
    dbs = nodes(target, "node-a", "node-b")
    yield dbs
    for db in dbs:
        db.close()


def take(db: JournalDB, at: datetime, name: str = "returns:sftp") -> bool:
    return db.take_duty(name, iso(at), iso(at + LEASE))


def test_one_node_holds_a_duty_and_the_other_is_refused(pair: list[JournalDB]) -> None:
    """Two nodes asking at once: exactly one gets the duty, and it keeps it by renewing."""
    a, b = pair
    assert take(a, T0) and not take(b, T0)
    assert take(a, T0 + timedelta(seconds=10)) and not take(b, T0 + timedelta(seconds=35))
    assert a.duties() == [
        {"name": "returns:sftp", "node": "node-a", "until": iso(T0 + timedelta(seconds=40))}
    ]


def test_a_duty_whose_holder_stopped_renewing_moves_after_its_lease(
    pair: list[JournalDB],
) -> None:
    """A dead node's duty is taken over once its lease has run out, not before; the old
    holder, come back, no longer holds it."""
    a, b = pair
    assert take(a, T0)
    assert not take(b, T0 + LEASE)  # the lease's last instant is still the holder's
    assert take(b, T0 + LEASE + timedelta(milliseconds=1))
    assert not take(a, T0 + LEASE + timedelta(seconds=1))


def test_a_released_duty_is_taken_over_at_once_and_keeps_its_mark(
    pair: list[JournalDB],
) -> None:
    """A clean stop hands the duty over at once, with the progress recorded under it; a node
    that does not hold a duty cannot release it or overwrite its mark."""
    a, b = pair
    assert take(a, T0) and a.set_duty_mark("returns:sftp", "up to 08:00")
    assert not b.release_duty("returns:sftp") and not b.set_duty_mark("returns:sftp", "x")
    assert a.release_duty("returns:sftp")
    assert take(b, T0 + timedelta(seconds=1))
    assert b.duty_mark("returns:sftp") == "up to 08:00"
    assert not a.set_duty_mark("returns:sftp", "stale")


def test_a_node_restarted_under_its_name_takes_its_duties_back_at_once(
    target: JournalTarget,
) -> None:
    """A restart (a new connection, the same node name) does not wait for its own lease to
    run out."""
    (before,) = nodes(target, "solo")
    assert take(before, T0)
    before.close()
    (after,) = nodes(target, "solo")
    assert take(after, T0 + timedelta(seconds=1))
    after.close()


def test_duties_are_independent(pair: list[JournalDB]) -> None:
    """Each duty has its own holder: two nodes share the work."""
    a, b = pair
    assert take(a, T0, "returns:one") and take(b, T0, "returns:two")
    assert not take(b, T0, "returns:one") and not take(a, T0, "returns:two")


# An event: (node index, what, seconds the clock moves forward first).
EVENTS = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["take", "take", "release"]),
        st.sampled_from([0, 0.001, 5, 10, 29.999, 30, 30.001, 45]),
    ),
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=EVENTS)
def test_whatever_the_interleaving_never_two_holders(
    fresh: Callable[[], JournalTarget], events: list[tuple[int, str, float]]
) -> None:
    """Takes, renewals, expiries and releases by three nodes in any order: at no instant do
    two nodes each believe they hold the duty (a node believes it from a take that succeeded
    until that lease's end), and a free duty is always taken by the first node that asks."""
    dbs = nodes(fresh(), "a", "b", "c")
    believed: list[datetime | None] = [None, None, None]
    now = T0
    try:
        for index, what, forward in events:
            now += timedelta(seconds=forward)
            db = dbs[index]
            if what == "release":
                was = believed[index] is not None and now < believed[index]  # type: ignore[operator]
                released = db.release_duty("d")
                assert released or not was
                believed[index] = None
                continue
            others_hold = any(
                until is not None and now <= until
                for other, until in enumerate(believed)
                if other != index
            )
            took = take(db, now, "d")
            assert took != others_hold
            believed[index] = now + LEASE if took else None
            holders = [i for i, until in enumerate(believed) if until is not None and now < until]
            assert len(holders) <= 1
    finally:
        for db in dbs:
            db.close()


def test_nodes_asking_at_the_same_instant_on_postgresql_get_one_holder(postgres_url: str) -> None:
    """Three nodes (three connections) taking the same duties at once from threads, round
    after round as each lease runs out: each round, each duty goes to exactly one node."""
    dbs = nodes(PostgresTarget(postgres_url), "a", "b", "c")
    duties = [f"returns:c{i}" for i in range(4)]
    try:
        with ThreadPoolExecutor(len(dbs)) as pool:
            for turn in range(20):
                at = T0 + turn * (LEASE + timedelta(milliseconds=1))  # the last lease ran out
                start = threading.Barrier(len(dbs))

                def ask(
                    db: JournalDB, at: datetime = at, start: threading.Barrier = start
                ) -> list[str]:
                    start.wait(timeout=10)
                    return [name for name in duties if take(db, at, name)]

                won = list(pool.map(ask, dbs, timeout=60))
                assert sorted(name for names in won for name in names) == duties, (turn, won)
                holders = {d["name"]: d["node"] for d in dbs[0].duties()}
                for db, names in zip(dbs, won, strict=True):
                    assert all(holders[name] == db.node for name in names)
    finally:
        for db in dbs:
            db.close()
