"""What every group of the journal's queries shares: the connection, the write transaction,
the clock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

from gateway.journal.connection import Connection, Dialect


def timestamp() -> str:
    """The time written in the journal's rows (ISO 8601 UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def transaction(db: Connection) -> Iterator[None]:
    """A write transaction; inside one already open, part of it (the outer one decides)."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")  # PostgreSQL's adapter reads it as BEGIN
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Queries:
    """The base of each group of queries that :class:`~gateway.journal.db.JournalDB` combines:
    they all run on its one connection, SQLite's or PostgreSQL's (see
    :mod:`gateway.journal.connection`): write portable SQL with ``?`` parameters."""

    _db: Connection
    #: The node these queries record as the one that moved a flow (``[gateway] node_name``).
    node: str
    #: The SQL fragments that differ between the two databases.
    dialect: Dialect

    @property
    def skip_locked(self) -> str:
        """Append to a ``SELECT`` of rows that several nodes may claim at once: ``" FOR UPDATE
        SKIP LOCKED"`` on PostgreSQL (a row locked by another node's transaction is passed
        over, not waited for), ``""`` on SQLite (one writer at a time)."""
        return self.dialect.skip_locked

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction; inside one already open, part of it (the outer one decides)."""
        return transaction(self._db)
