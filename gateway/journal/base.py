"""What every group of the journal's queries shares: the connection, the write transaction,
the clock."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime


def timestamp() -> str:
    """The time written in the journal's rows (ISO 8601 UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """A write transaction; inside one already open, part of it (the outer one decides)."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Queries:
    """The base of each group of queries that :class:`~gateway.journal.db.JournalDB` combines:
    they all run on its one connection."""

    _db: sqlite3.Connection
    #: The node these queries record as the one that moved a flow (``[gateway] node_name``).
    node: str

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """A write transaction; inside one already open, part of it (the outer one decides)."""
        return transaction(self._db)
