"""gateway.journal.worker: the journal process and its group commit, on both databases."""

from __future__ import annotations

import asyncio

import pytest

from gateway.journal import (
    SCHEMA_VERSION,
    Call,
    FlowRow,
    Journal,
    JournalDB,
    JournalTarget,
    JournalUnavailable,
    PostgresTarget,
    StateConflict,
)
from tests.gateway.journal.conftest import set_version
from tests.postgres import PostgresServer, cut_connections


def flow_id(i: int) -> str:
    return f"20261123T120000Z-{i:06x}"


def test_concurrent_calls_each_get_their_answer_and_a_conflict_fails_alone(
    target: JournalTarget,
) -> None:
    """Promise: hundreds of calls grouped in batches each get their own answer, and a move
    refused for its state fails alone: the flows around it still move."""

    async def main() -> list[object]:
        journal = Journal(target)
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
    db = JournalDB(target)
    assert db.counts() == {"queued": 299, "claimed": 1}
    assert [t["to_state"] for t in db.transitions(flow_id(3))] == ["claimed", "queued"]
    db.close()


def half_done(db: JournalDB) -> None:
    db.transition(flow_id(1), "queued")
    raise RuntimeError("failed midway")


def test_a_call_that_fails_after_writing_is_undone_and_the_others_kept(
    target: JournalTarget,
) -> None:
    """Promise: a call applies entirely or not at all: one that fails after writing is undone,
    the calls grouped with it are kept."""

    async def main() -> tuple[object, object, object]:
        journal = Journal(target)
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
    db = JournalDB(target)
    first = db.get(flow_id(1))
    assert first is not None and first.state == "claimed"  # the half-done write was undone
    assert db.get(flow_id(2)) is not None and db.get(flow_id(3)) is not None
    assert [t["to_state"] for t in db.transitions(flow_id(1))] == ["claimed"]
    db.close()


def _exit_process(_: JournalDB) -> None:
    import os

    os._exit(9)


def test_a_call_that_cannot_travel_fails_alone_at_its_caller(target: JournalTarget) -> None:
    """Promise: a call that cannot be sent to the journal process fails at its caller, alone;
    the journal goes on."""

    async def main() -> object:
        journal = Journal(target)
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
    target: JournalTarget,
) -> None:
    """Promise: the daemon survives its journal process dying: the batch under way fails as
    JournalUnavailable (never committed), the next call gets a new process on the same journal."""

    async def main() -> tuple[tuple[object, object], FlowRow | None]:
        journal = Journal(target)
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
    db = JournalDB(target)
    assert db.get(flow_id(2)) is None  # its batch never committed
    db.close()


def test_a_journal_newer_than_this_raccord_is_refused_at_open(target: JournalTarget) -> None:
    """A journal a newer raccord migrated is not written by an older one (it would not know
    the newer columns' meaning): the journal process refuses to start, saying why."""
    set_version(target, SCHEMA_VERSION + 1)

    async def main() -> None:
        journal = Journal(target)
        try:
            await journal.open()
        finally:
            await journal.close()

    with pytest.raises(RuntimeError, match="newer than this raccord knows"):
        asyncio.run(main())


def _bad_statement(db: JournalDB) -> None:
    db._db.execute("SELECT no_such_column FROM flows")


def test_a_call_whose_statement_fails_fails_alone_and_the_batch_is_kept(
    target: JournalTarget,
) -> None:
    """Promise: a call whose SQL fails (on PostgreSQL, that spoils the whole transaction) fails
    alone: the calls grouped with it are applied."""

    async def main() -> tuple[object, ...]:
        journal = Journal(target)
        await journal.open()
        try:
            return await asyncio.gather(
                journal.call(Call(JournalDB.insert, flow_id(1), "c", "a.xml", "/s/a")),
                journal.call(Call(_bad_statement)),
                journal.call(Call(JournalDB.insert, flow_id(2), "c", "b.xml", "/s/b")),
                return_exceptions=True,
            )
        finally:
            await journal.close()

    first, failed, second = asyncio.run(main())
    assert isinstance(failed, Exception) and "no_such_column" in str(failed)
    assert isinstance(first, FlowRow) and isinstance(second, FlowRow)
    db = JournalDB(target)
    assert db.get(flow_id(1)) is not None and db.get(flow_id(2)) is not None
    db.close()


def test_the_journal_process_survives_a_lost_database_server_connection(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Promise: the daemon survives the journal's server going away a moment: the calls under
    way fail as JournalUnavailable (as when the journal process dies), the next ones work."""
    target = PostgresTarget(postgres_url)

    async def main() -> tuple[object, FlowRow | None]:
        journal = Journal(target)
        await journal.open()
        try:
            await journal.call(Call(JournalDB.insert, flow_id(1), "c", "a.xml", "/s/a"))
            cut_connections(postgres_server, postgres_url)
            lost = await asyncio.gather(
                journal.call(Call(JournalDB.get, flow_id(1))), return_exceptions=True
            )
            return lost[0], await journal.call(Call(JournalDB.get, flow_id(1)))
        finally:
            await journal.close()

    lost, after = asyncio.run(main())
    assert isinstance(lost, JournalUnavailable), lost
    assert after is not None and after.state == "claimed"


def test_a_call_postgresql_ends_in_a_conflict_when_run_alone_is_tried_again(
    postgres_url: str,
) -> None:
    """Promise: a call run alone (its batch undone by another call) that PostgreSQL ends for
    a conflict with another transaction (a deadlock) is tried again, as the batch was, rather
    than handing the database's error to its caller: nothing of it had been applied."""
    import psycopg

    from gateway.journal import run_batch

    db = JournalDB(PostgresTarget(postgres_url), node="a")
    tries = {"left": 1}

    def conflicting(db: JournalDB) -> str:
        if tries["left"]:
            tries["left"] -= 1
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return db.insert("kept", "c", "k.xml", "/s").flow_id  # type: ignore[union-attr]

    def dirty(db: JournalDB) -> None:
        db.insert("undone", "c", "u.xml", "/s")
        raise RuntimeError("fails after writing: the batch runs again call by call")

    try:
        outcomes = run_batch(db, [dirty, conflicting])
        assert isinstance(outcomes[0], RuntimeError)
        assert outcomes[1] == "kept"
        assert db.get("kept") is not None and db.get("undone") is None
    finally:
        db.close()
