""":class:`JournalDB`: the journal's synchronous access, one SQLite connection."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

from gateway.journal.deposits import DepositQueries
from gateway.journal.flows import FlowQueries
from gateway.journal.invoices import InvoiceQueries
from gateway.journal.leases import LeaseQueries
from gateway.journal.listing import ListingQueries
from gateway.journal.returns import ReturnQueries
from gateway.journal.schema import add_counters, migrate


class JournalDB(
    FlowQueries, InvoiceQueries, ReturnQueries, DepositQueries, ListingQueries, LeaseQueries
):
    """Synchronous access; one instance per thread.

    Opening migrates the schema; the queries come from one class per table or group of tables
    (see :mod:`gateway.journal`). The journal process runs its calls on one of these, and the
    CLI commands use one directly.
    """

    def __init__(self, path: Path, *, node: str | None = None) -> None:
        # The node recorded with each move; a command run by hand records its host.
        self.node = node or socket.gethostname()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9) with every commit; a power cut
        # may lose the last commits, which reconciliation tolerates: a flow that falls back to
        # "sending" is resent under the same remote name and recognised as already delivered.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        migrate(self._db)
        add_counters(self._db)

    def close(self) -> None:
        self._db.close()

    @property
    def changes(self) -> int:
        """Rows written by this connection so far (to tell whether a failed call wrote)."""
        return self._db.total_changes

    def ping(self) -> None:
        """A query that touches the database file (the health check)."""
        self._db.execute("SELECT COUNT(*) FROM flows WHERE state = 'queued'").fetchone()
