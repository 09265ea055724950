"""What the journal's queries need of a database connection, met by ``sqlite3`` as it is and
by :class:`~gateway.journal.postgres.PostgresConnection` for a shared PostgreSQL journal.

The query classes write one SQL, in SQLite's spelling (``?`` and ``:name`` parameters) and
restricted to what both databases understand (``INSERT … ON CONFLICT DO NOTHING`` rather than
``INSERT OR IGNORE``, ``RETURNING``, no ``rowid``); the PostgreSQL adapter translates the
parameters. Where the dialects must differ (``FOR UPDATE SKIP LOCKED`` exists only on
PostgreSQL, where several nodes compete for rows), :class:`Dialect` gives the fragment.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class Row(Protocol):
    """A row addressable by column name and by position, like ``sqlite3.Row``."""

    def keys(self) -> list[str]: ...
    def __getitem__(self, key: int | str, /) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class Cursor(Protocol):
    """What the queries read of a statement's outcome."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


Params = Sequence[Any] | Mapping[str, Any]


class Connection(Protocol):
    """The part of ``sqlite3.Connection`` the journal uses; autocommit, transactions opened
    with ``BEGIN IMMEDIATE`` and closed with ``COMMIT``/``ROLLBACK`` by the journal itself."""

    @property
    def in_transaction(self) -> bool: ...
    @property
    def total_changes(self) -> int: ...
    def execute(self, sql: str, parameters: Params = (), /) -> Any: ...
    def executemany(self, sql: str, parameters: Iterable[Params], /) -> Any: ...
    def executescript(self, sql: str, /) -> Any: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Dialect:
    """The SQL fragments that differ between the journal's two databases."""

    name: str
    #: Appended to a ``SELECT`` that claims rows other nodes may be claiming at the same time:
    #: ``" FOR UPDATE SKIP LOCKED"`` on PostgreSQL (a row another node holds locked is skipped,
    #: not waited for); empty on SQLite, whose writers are serialised anyway.
    skip_locked: str
    #: Errors of the database itself (a failed commit, a damaged file, a lost server).
    errors: tuple[type[Exception], ...]
    #: Put before a column to keep the planner from searching its index for that term (a
    #: listing that walks the date order and checks each row): SQLite's unary ``+``; nothing
    #: on PostgreSQL, which has no such hint (and no unary ``+`` on text).
    unindexed: str = ""
    #: A transaction the database ended to settle a conflict with another one (PostgreSQL's
    #: deadlock and serialization failures): nothing of it was applied, and running it again
    #: succeeds once the other has finished. None on SQLite, whose writers take turns.
    conflicts: tuple[type[Exception], ...] = ()


SQLITE = Dialect("sqlite", "", (sqlite3.Error,), unindexed="+")


def open_sqlite(path: Path) -> sqlite3.Connection:
    """The SQLite journal at ``path`` (created with its folder), tuned as the journal runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode survives a process crash (kill -9) with every commit; a power cut
    # may lose the last commits, which reconciliation tolerates: a flow that falls back to
    # "sending" is resent under the same remote name and recognised as already delivered.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db
