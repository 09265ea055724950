"""Copying a SQLite journal into an empty PostgreSQL one (``raccord migrate-journal``).

Every table of the SQLite file is copied as it is, in batches, inside one PostgreSQL
transaction, then read back from both sides and compared row for row (a count and a digest
of the rows in key order per table) before the commit: a copy that differs is rolled back and
leaves the target as it was. The triggers of the target's tables are off during the copy
(the history and the counts come from the source, already written) and on again at the
commit; identity columns continue after the highest id copied.

The tables are discovered from the SQLite file, not listed here: a table a later schema adds
is copied without this module knowing it (the target, opened by the same raccord, has it).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.journal.connection import Connection
from gateway.journal.db import JournalDB
from gateway.journal.postgres import PostgresConnection
from gateway.journal.target import PostgresTarget

#: Rows per round trip.
BATCH = 2000


class CopyRefused(RuntimeError):
    """The copy cannot start (the target already holds a journal, a table is missing)."""


class CopyMismatch(RuntimeError):
    """The copy read back differs from the source; it was rolled back."""


@dataclass(frozen=True)
class TableCopy:
    """A table copied: its rows, and the digest both sides agreed on."""

    table: str
    rows: int
    digest: str


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]  # the copied columns (``rowid`` first when SQLite's is kept)
    order: tuple[str, ...]  # the key the rows are read back in
    sqlite_columns: tuple[str, ...]  # how the SQLite side selects ``columns``


def copy_journal(
    source: Path, target: PostgresTarget, progress: Callable[[str, int], None] = lambda *_: None
) -> list[TableCopy]:
    """Copy the SQLite journal ``source`` into the empty PostgreSQL journal ``target``.

    ``progress(table, rows)`` is told of each batch. Returns what was copied and checked.

    Raises:
        CopyRefused: ``target`` already holds rows, or lacks a table the source has.
        CopyMismatch: what was written differs from the source (nothing is kept).
        JournalUnreachable: the target cannot be reached or prepared.
    """
    # Opening each brings its schema up to date: both are this raccord's version.
    JournalDB(source).close()
    lite = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    pg = JournalDB(target)
    try:
        tables = _tables(lite, pg._db)
        _refuse_unless_empty(pg._db, tables, target)
        copied: list[TableCopy] = []
        with pg.transaction():
            for table in tables:
                pg._db.execute(f"ALTER TABLE {table.name} DISABLE TRIGGER USER")
            for table in tables:
                _copy_rows(lite, pg._db, table, progress)
            _continue_identities(pg._db)
            assert isinstance(pg._db, PostgresConnection)
            for table in tables:
                copied.append(_check(lite, pg._db, table))
            for table in tables:
                pg._db.execute(f"ALTER TABLE {table.name} ENABLE TRIGGER USER")
        return copied
    finally:
        lite.close()
        pg.close()


def _tables(lite: sqlite3.Connection, pg: Connection) -> list[_Table]:
    names = [
        row[0]
        for row in lite.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY name"
        )
    ]
    found: dict[str, set[str]] = {}
    for table, column in pg.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema()"
    ).fetchall():
        found.setdefault(table, set()).add(column)
    tables = []
    for name in names:
        info = lite.execute(f"PRAGMA table_info({name})").fetchall()
        columns = tuple(row[1] for row in info)
        key = tuple(row[1] for row in sorted(info, key=lambda row: row[5]) if row[5])
        if name not in found:
            raise CopyRefused(f"the target has no table {name}: is it the same raccord version?")
        missing = [column for column in columns if column not in found[name]]
        if missing:
            raise CopyRefused(f"the target's table {name} has no column {', '.join(missing)}")
        if key:
            tables.append(_Table(name, columns, key, columns))
        elif "rowid" in found[name]:  # the order rows were written in is kept (statuses)
            tables.append(_Table(name, ("rowid", *columns), ("rowid",), ("rowid", *columns)))
        else:
            raise CopyRefused(f"the table {name} has no key to check its copy by")
    return tables


def _refuse_unless_empty(pg: Connection, tables: list[_Table], target: PostgresTarget) -> None:
    for table in tables:
        if pg.execute(f"SELECT 1 FROM {table.name} LIMIT 1").fetchone() is not None:  # noqa: S608
            flows = pg.execute("SELECT COUNT(*) FROM flows").fetchone()[0]
            raise CopyRefused(
                f"the journal database {target.where} already holds a journal ({flows} flows,"
                f" rows in {table.name}): migrate-journal copies into an empty one only"
            )


def _copy_rows(
    lite: sqlite3.Connection, pg: Connection, table: _Table, progress: Callable[[str, int], None]
) -> None:
    names = ", ".join(table.columns)
    marks = ", ".join("?" for _ in table.columns)
    insert = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"  # noqa: S608 - schema names
    cursor = lite.execute(
        f"SELECT {', '.join(table.sqlite_columns)} FROM {table.name}"  # noqa: S608 - schema names
    )
    done = 0
    while rows := cursor.fetchmany(BATCH):
        pg.executemany(insert, rows)
        done += len(rows)
        progress(table.name, done)


def _continue_identities(pg: Connection) -> None:
    """The next id of each identity column follows the highest one copied."""
    for table, column in pg.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall():
        pg.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"  # noqa: S608 - catalog names
            f" COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
        )


def _check(lite: sqlite3.Connection, pg: PostgresConnection, table: _Table) -> TableCopy:
    order = ", ".join(table.order)
    source = _digest(
        lite.execute(
            f"SELECT {', '.join(table.sqlite_columns)} FROM {table.name} ORDER BY {order}"  # noqa: S608
        )
    )
    copy = _digest(
        pg.stream(
            f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {order}"  # noqa: S608
        )
    )
    if source != copy:
        raise CopyMismatch(
            f"the copy of {table.name} differs from the source ({copy[0]} rows read back for"
            f" {source[0]}, or different values): nothing was kept; run migrate-journal again,"
            " and report it if it repeats"
        )
    return TableCopy(table.name, source[0], source[1])


def _digest(rows: Iterator[Any]) -> tuple[int, str]:
    digest = hashlib.sha256()
    count = 0
    for row in rows:
        digest.update(json.dumps(list(row), ensure_ascii=False).encode())
        digest.update(b"\n")
        count += 1
    return count, digest.hexdigest()
