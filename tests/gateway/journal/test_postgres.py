"""gateway.journal on PostgreSQL alone: the adapter, the schema and its migration by one node,
a server that is unreachable or goes away."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

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
            if table == "schema_version" or (table, column) == ("statuses", "rowid"):
                continue  # SQLite: PRAGMA user_version, and the rowid every table has
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
