"""gateway.journal on PostgreSQL alone: the adapter, the schema and its migration by one node,
a server that is unreachable or goes away."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.journal import (
    SCHEMA_VERSION,
    JournalDB,
    JournalUnavailable,
    JournalUnreachable,
    PostgresTarget,
)
from gateway.journal.postgres import PostgresConnection, translate
from protocols.settings import Secret
from tests.postgres import PostgresServer, cut_connections


def test_parameters_become_psycopgs_outside_literals_and_percent_signs_are_doubled() -> None:
    """Promise: SQL written for SQLite means the same on PostgreSQL: a ``?`` or ``%`` inside a
    literal, a quoted name or a comment is text, not a parameter."""
    assert translate("SELECT * FROM t WHERE a=? AND b LIKE '50%?'") == (
        "SELECT * FROM t WHERE a=%s AND b LIKE '50%%?'"
    )
    assert translate("SELECT 'it''s ?', \"we?ird\" -- why?\nFROM t WHERE x=?") == (
        "SELECT 'it''s ?', \"we?ird\" -- why?\nFROM t WHERE x=%s"
    )
    assert translate("SELECT a % 2 FROM t") == "SELECT a %% 2 FROM t"
    assert translate("WHERE a < :cutoff AND b::text = :b_1", named=True) == (
        "WHERE a < %(cutoff)s AND b::text = %(b_1)s"
    )
    assert translate("BEGIN IMMEDIATE") == "BEGIN"
    assert translate("SELECT 1 FROM flows m INDEXED BY flows_lot WHERE m.x=?") == (
        "SELECT 1 FROM flows m WHERE m.x=%s"
    )
    assert translate("WHERE (? IS NULL OR a=?) AND ? is not null") == (
        "WHERE (%s::text IS NULL OR a=%s) AND %s::text is not null"
    )


def test_the_two_schemas_have_the_same_tables_and_columns(
    postgres_url: str, tmp_path: Path
) -> None:
    """Promise: the SQLite and PostgreSQL journals cannot drift apart: a column added to one
    schema and not the other fails here (migrate-journal copies table by table)."""
    lite = JournalDB(tmp_path / "journal.sqlite")
    pg = JournalDB(PostgresTarget(postgres_url))
    try:
        tables = [
            row[0]
            for row in lite._db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
            )
        ]
        sqlite_columns = {
            table: [row["name"] for row in lite._db.execute(f"PRAGMA table_info({table})")]
            for table in tables
        }
        rows = pg._db.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema='public' ORDER BY table_name, ordinal_position"
        ).fetchall()
        pg_columns: dict[str, list[str]] = {}
        for table, column in rows:
            if table in ("schema_version", "count_deltas") or (table, column) == (
                "statuses",
                "rowid",
            ):
                # SQLite: PRAGMA user_version, the rowid every table has, and counts its
                # triggers update in place (see gateway/journal/pgschema.py)
                continue
            pg_columns.setdefault(table, []).append(column)
        assert pg_columns == sqlite_columns
    finally:
        lite.close()
        pg.close()


def test_nodes_starting_together_on_an_empty_database_create_the_schema_once(
    postgres_url: str,
) -> None:
    """Promise: several nodes may start at the same instant: one creates the schema, the
    others wait for it and find it current; none fails."""
    nodes = 6
    barrier = threading.Barrier(nodes)
    errors: list[BaseException] = []

    def start(name: str) -> None:
        barrier.wait(timeout=30)
        try:
            JournalDB(PostgresTarget(postgres_url), node=name).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(f"node-{i}",)) for i in range(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with psycopg.connect(postgres_url) as check:
        assert check.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_a_database_migrated_by_a_newer_raccord_is_refused(postgres_url: str) -> None:
    """Promise: an older raccord never writes a journal it does not understand."""
    JournalDB(PostgresTarget(postgres_url)).close()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match=f"journal schema {SCHEMA_VERSION + 1} is newer"):
        JournalDB(PostgresTarget(postgres_url))


def test_an_unreachable_server_is_one_sentence_naming_it_and_never_the_password() -> None:
    """Promise: a database that cannot be reached says where and what to check, and the
    password (in the URL or the secret) never shows."""
    with socketless_port() as port:
        target = PostgresTarget(
            f"postgresql://raccord:in-url-pw@127.0.0.1:{port}/raccord?connect_timeout=2",
            Secret("hunter2", "[journal] password"),
        )
        with pytest.raises(JournalUnreachable) as caught:
            JournalDB(target)
    message = str(caught.value)
    assert f"raccord@127.0.0.1:{port}/raccord cannot be reached" in message
    assert "pg_hba.conf" in message and "\n" not in message
    assert "hunter2" not in message and "in-url-pw" not in message
    assert "in-url-pw" not in repr(target) and "hunter2" not in repr(target)


def test_a_role_without_the_right_to_create_tables_is_told_what_it_needs(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Promise: a database set up without the rights raccord needs fails with one sentence
    saying which right, not a traceback."""
    database = postgres_url.rsplit("/", 1)[1]
    postgres_server.psql(
        database,
        "CREATE ROLE weak LOGIN PASSWORD 'weak-pw'; REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
    )
    url = postgres_url.replace("postgres@", "weak@")
    with pytest.raises(JournalUnreachable, match="must own the database, or have CREATE") as caught:
        JournalDB(PostgresTarget(url, Secret("weak-pw", "[journal] password")))
    assert "weak-pw" not in str(caught.value)


def test_a_lost_server_connection_fails_the_call_and_the_next_call_reconnects(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Promise: a PostgreSQL restart or a network cut does not end the journal: the call under
    way fails as JournalUnavailable (applied or not is unknown), the next one works."""
    db = JournalDB(PostgresTarget(postgres_url))
    try:
        db.insert("f1", "c", "a.xml", "/s/a")
        cut_connections(postgres_server, postgres_url)
        with pytest.raises(JournalUnavailable, match="was lost"):
            db.get("f1")
        row = db.get("f1")
        assert row is not None and row.state == "claimed"
    finally:
        db.close()


def test_a_transaction_cut_by_a_lost_server_is_never_continued_on_a_new_connection(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Promise: the statements after a lost connection inside a transaction fail too (they
    must not commit on their own, half a transaction); the next transaction works."""
    db = JournalDB(PostgresTarget(postgres_url))

    def two_moves_cut_between() -> None:
        with db.transaction():
            db.transition("f1", "queued")
            cut_connections(postgres_server, postgres_url)
            db.transition("f1", "sending", expect=("queued",))

    try:
        db.insert("f1", "c", "a.xml", "/s/a")
        with pytest.raises(JournalUnavailable):
            two_moves_cut_between()
        row = db.get("f1")
        assert row is not None and row.state == "claimed"  # neither move was applied
    finally:
        db.close()


def test_rows_answer_by_name_and_position_as_sqlites_do(postgres_url: str) -> None:
    """Promise: a query written against sqlite3.Row reads a PostgreSQL row the same way."""
    db = JournalDB(PostgresTarget(postgres_url))
    lite = sqlite3.connect(":memory:")
    lite.row_factory = sqlite3.Row
    try:
        sql = "SELECT 1 AS a, 'x' AS b, NULL AS c"
        for row in (db._db.execute(sql).fetchone(), lite.execute(sql).fetchone()):
            assert (row["a"], row[1], row["c"], len(row)) == (1, "x", None, 3)
            assert list(row.keys()) == ["a", "b", "c"] and dict(row) == {
                "a": 1,
                "b": "x",
                "c": None,
            }
        assert db.skip_locked == " FOR UPDATE SKIP LOCKED"
    finally:
        db.close()
        lite.close()


class socketless_port:
    """A loopback port nothing listens on, for as long as the ``with`` lasts."""

    def __enter__(self) -> int:
        import socket

        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port: int = self._socket.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._socket.close()


def test_the_sqlite_journal_says_skip_locked_is_nothing(tmp_path: Path) -> None:
    """Promise: a query written for several nodes (``… FOR UPDATE SKIP LOCKED``) runs as is
    on the single node's SQLite journal."""
    db = JournalDB(tmp_path / "journal.sqlite")
    try:
        assert db.skip_locked == ""
        db._db.execute(f"SELECT * FROM flows WHERE state='queued' LIMIT 1{db.skip_locked}")  # noqa: S608
    finally:
        db.close()


def test_a_server_still_gone_fails_each_call_until_it_is_back(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Promise: while the journal's server stays away, each call fails as JournalUnavailable
    (the daemon's journal process lives on), and the first call after its return works."""
    db = JournalDB(PostgresTarget(postgres_url))
    try:
        db.insert("f1", "c", "a.xml", "/s/a")
        adapter = db._db
        assert isinstance(adapter, PostgresConnection)
        with socketless_port() as port:  # the server "moves away": nothing answers there
            adapter._target = PostgresTarget(f"postgresql://postgres@127.0.0.1:{port}/x")
            cut_connections(postgres_server, postgres_url)
            with pytest.raises(JournalUnavailable, match="was lost"):
                db.get("f1")  # the call that finds the connection gone
            for _ in range(2):  # the next ones try to connect again, and fail alike
                with pytest.raises(JournalUnavailable, match=f"127.0.0.1:{port}/x cannot be"):
                    db.get("f1")
        adapter._target = PostgresTarget(postgres_url)  # it is back
        row = db.get("f1")
        assert row is not None and row.state == "claimed"
    finally:
        db.close()


def test_two_nodes_moving_flows_at_once_both_succeed_and_the_counts_stay_true(
    postgres_url: str,
) -> None:
    """Promise: two nodes writing the shared journal at the same time each see every one of
    their calls applied (their batches touch the same count rows, in different orders), and
    the counts /metrics reads are still those of the flows."""
    from gateway.journal import Call, run_batch

    errors: list[object] = []
    barrier = threading.Barrier(2)

    def node(name: str) -> None:
        db = JournalDB(PostgresTarget(postgres_url), node=name)
        try:
            ids = [f"{name}-{i:04d}" for i in range(200)]
            barrier.wait(timeout=30)
            # One node moves its flows forward, the other back and forth: their batches update
            # the same (connection, state) count rows in opposite orders.
            steps = ["queued", "sending", "failing", "error"]
            if name == "node-b":
                steps = ["failing", "error", "claimed", "queued"]
            outcomes = run_batch(db, [Call(JournalDB.insert, f, "c", "a.xml", "/s") for f in ids])
            for state in steps:
                outcomes += run_batch(db, [Call(JournalDB.transition, f, state) for f in ids])
            errors.extend(o for o in outcomes if isinstance(o, BaseException))
        finally:
            db.close()

    threads = [threading.Thread(target=node, args=(n,)) for n in ("node-a", "node-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    db = JournalDB(PostgresTarget(postgres_url))
    try:
        assert db.counts() == {"error": 200, "queued": 200}
        assert db.metrics()[0] == {("c", "error"): 200, ("c", "queued"): 200}
    finally:
        db.close()


def _recording(
    url: str, ids: list[str], connections: list[str]
) -> tuple[threading.Thread, list[Any]]:
    """A node's batch recording flow ``ids[i]`` on ``connections[i]``, in a thread (started),
    and the list its outcomes go to."""
    from gateway.journal import Call, run_batch

    outcomes: list[Any] = []

    def batch() -> None:
        db = JournalDB(PostgresTarget(url), node="node-a")
        try:
            calls: list[Callable[[JournalDB], Any]] = [
                Call(JournalDB.insert, f, c, "a.xml", "/s")
                for f, c in zip(ids, connections, strict=True)
            ]
            outcomes.extend(run_batch(db, calls))
        finally:
            db.close()

    thread = threading.Thread(target=batch)
    thread.start()
    return thread, outcomes


def _waiting_for_a_lock(admin: psycopg.Connection[Any], application: str = "raccord") -> None:
    """Wait (bounded) until a session of ``application`` waits for a row lock."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
            " AND wait_event_type = 'Lock'",
            (application,),
        ).fetchone()
        if found:
            return
        time.sleep(0.02)
    raise AssertionError("no journal session came to wait for the lock")


@pytest.mark.parametrize("journal", ["new", "from schema 11"])
def test_every_commit_takes_the_count_rows_in_one_order(postgres_url: str, journal: str) -> None:
    """Promise: nodes committing at the same moment never deadlock on the count rows their
    commits update (PostgreSQL would end one of them after a second): every commit takes
    those rows in one order, the sorted one, also in a journal created by raccord at schema
    11 (whose commits took them in no set order). A commit recording flows on twelve
    connections (in no particular order) finds the last count row held by another session:
    it then holds every row before it, and none after."""
    if journal == "from schema 11":
        JournalDB(PostgresTarget(postgres_url)).close()
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            definition = admin.execute(
                "SELECT pg_get_functiondef('raccord_deltas_applied'::regproc)"
            ).fetchone()
            assert definition is not None
            admin.execute(definition[0].replace("ORDER BY kind, connection, key", ""))
            admin.execute("UPDATE schema_version SET version = 11")
    connections = [f"c{i:02d}" for i in range(12)]
    order = [5, 11, 2, 7, 0, 9, 3, 10, 1, 6, 4, 8]
    first, recorded = _recording(postgres_url, [f"seed-{c}" for c in connections], connections)
    first.join(timeout=60)
    assert recorded and not [o for o in recorded if isinstance(o, BaseException)]
    with (
        psycopg.connect(postgres_url, autocommit=True) as admin,
        psycopg.connect(postgres_url) as holder,
        psycopg.connect(postgres_url) as probe,
    ):
        holder.execute(
            "SELECT n FROM flow_counts WHERE connection = %s AND state = 'claimed' FOR UPDATE",
            (connections[-1],),
        )
        batch, outcomes = _recording(
            postgres_url, [f"f-{i}" for i in order], [connections[i] for i in order]
        )
        try:
            _waiting_for_a_lock(admin)
            held = []
            for connection in connections:
                try:
                    probe.execute(
                        "SELECT n FROM flow_counts WHERE connection = %s AND state = 'claimed'"
                        " FOR UPDATE NOWAIT",
                        (connection,),
                    )
                except psycopg.errors.LockNotAvailable:
                    held.append(connection)
                probe.rollback()
        finally:
            holder.rollback()
            batch.join(timeout=60)
    assert held == connections, "the waiting commit holds every count row before the last"
    assert outcomes and not [o for o in outcomes if isinstance(o, BaseException)]


def test_a_batch_postgresql_ends_in_a_deadlock_runs_again_and_is_applied(
    postgres_url: str,
) -> None:
    """Promise: when PostgreSQL ends a node's batch to break a deadlock with another session,
    nothing of it was applied and the journal runs it again: each call is applied once, none
    fails. The batch's commit waits for a count row another session holds, and that session
    then waits for a flow the batch moved: the server ends the batch (its wait began first)."""
    from gateway.journal import Call, run_batch

    seed, _ = _recording(postgres_url, ["seed"], ["c"])
    seed.join(timeout=60)
    db = JournalDB(PostgresTarget(postgres_url), node="node-a")
    try:
        assert run_batch(db, [Call(JournalDB.insert, "moved", "c", "a.xml", "/s")])[0]
        assert run_batch(db, [Call(JournalDB.transition, "seed", "queued")])[0]  # the count row
        db._db.execute("SET deadlock_timeout = '200ms'")
        with (
            psycopg.connect(postgres_url, autocommit=True) as admin,
            psycopg.connect(postgres_url) as other,
        ):
            other.execute("SET deadlock_timeout = '20s'")
            other.execute(
                "SELECT n FROM flow_counts WHERE connection = 'c' AND state = 'queued' FOR UPDATE"
            )
            outcomes: list[object] = []
            batch = threading.Thread(
                target=lambda: outcomes.extend(
                    run_batch(db, [Call(JournalDB.transition, "moved", "queued")])
                )
            )
            batch.start()
            _waiting_for_a_lock(admin)
            other.execute("UPDATE flows SET detail = 'other' WHERE flow_id = 'moved'")
            other.rollback()
            batch.join(timeout=60)
        assert len(outcomes) == 1 and not isinstance(outcomes[0], BaseException), outcomes
        row = db.get("moved")
        assert row is not None and row.state == "queued"
        assert db.metrics()[0][("c", "queued")] == 2
        history = db._db.execute(
            "SELECT to_state FROM transitions WHERE flow_id = 'moved' ORDER BY id"
        ).fetchall()
        assert [r[0] for r in history] == ["claimed", "queued"]
    finally:
        db.close()


def test_a_listing_cut_by_a_lost_server_fails_as_the_journal_unavailable(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """Promise: a server lost in the middle of a long listing (the rows fetched a thousand at a
    time) fails it as JournalUnavailable, one sentence, as any call; the next one works."""
    connection = PostgresConnection(PostgresTarget(postgres_url))
    try:
        rows = connection.stream("SELECT n FROM generate_series(1, 100000) AS n", (), size=10)
        assert next(rows)[0] == 1
        cut_connections(postgres_server, postgres_url)
        with pytest.raises(JournalUnavailable, match="was lost"):
            for _ in rows:
                pass
        assert connection.execute("SELECT 1").fetchone()[0] == 1
    finally:
        connection.close()
