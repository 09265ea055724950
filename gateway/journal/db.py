""":class:`JournalDB`: the journal's synchronous access, one connection to SQLite or
PostgreSQL."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.journal import pgschema
from gateway.journal.connection import SQLITE, Connection, open_sqlite
from gateway.journal.deposits import DepositQueries
from gateway.journal.duties import DutyQueries
from gateway.journal.flows import FlowQueries
from gateway.journal.invoices import InvoiceQueries
from gateway.journal.leases import LeaseQueries
from gateway.journal.listing import ListingQueries
from gateway.journal.returns import ReturnQueries
from gateway.journal.schema import add_counters, migrate
from gateway.journal.target import JournalTarget, PostgresTarget


class JournalDB(
    FlowQueries,
    InvoiceQueries,
    ReturnQueries,
    DepositQueries,
    ListingQueries,
    DutyQueries,
    LeaseQueries,
):
    """Synchronous access; one instance per thread.

    ``target`` is the SQLite file, or the PostgreSQL database (see
    :mod:`gateway.journal.target`); the queries are the same on both. Opening migrates the
    schema; the queries come from one class per table or group of tables (see
    :mod:`gateway.journal`). The journal process runs its calls on one of these, and the CLI
    commands use one directly.

    Raises (opening):
        JournalUnreachable: the PostgreSQL server cannot be reached or refuses this node.
        RuntimeError: the journal's schema is newer than this raccord knows.
    """

    def __init__(self, target: JournalTarget, *, node: str | None = None) -> None:
        # The node recorded with each move; a command run by hand records its host.
        self.node = node or socket.gethostname()
        self.target = target
        if isinstance(target, PostgresTarget):
            from gateway.journal.postgres import POSTGRES, PostgresConnection, refused

            self._db: Connection = PostgresConnection(target)
            self.dialect = POSTGRES
            try:
                pgschema.migrate(self._db)
            except POSTGRES.errors as exc:  # e.g. the role may not create tables
                self._db.close()
                raise refused(target, exc) from None
            except BaseException:
                self._db.close()
                raise
        else:
            sqlite = open_sqlite(Path(target))
            self._db = sqlite
            self.dialect = SQLITE
            migrate(sqlite)
            add_counters(sqlite)

    @property
    def postgres(self) -> bool:
        """Whether this journal is PostgreSQL's (shared by several nodes)."""
        return isinstance(self.target, PostgresTarget)

    def close(self) -> None:
        self._db.close()

    @property
    def changes(self) -> int:
        """Rows written by this connection so far (to tell whether a failed call wrote)."""
        return self._db.total_changes

    @property
    def aborted(self) -> bool:
        """A statement failed in the open transaction and the database (PostgreSQL) refuses
        every other until it is rolled back."""
        return bool(getattr(self._db, "aborted", False))

    def ping(self) -> None:
        """A query that touches the database (the health check)."""
        self._db.execute("SELECT COUNT(*) FROM flows WHERE state = 'queued'").fetchone()
