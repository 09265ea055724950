"""The journal: SQLite (WAL), or PostgreSQL shared by several nodes; the single source of
truth about every flow.

One row per flow, one state at a time, every transition recorded with its time in
``transitions``. The states and the moves allowed between them are the table in
:mod:`flows.lifecycle`; :meth:`JournalDB.transition` refuses any other move. A dropped file is
one flow; on a connection that packs lots, it waits as ``batched`` until its lot is packed, then
becomes ``packed`` (``lot_id`` names the lot). The lot is a flow of its own (``packaging`` set)
that takes the sending path; the invoices it carries are rows of ``invoices``.

``awaiting_receipt``: the partner took the flow and will acknowledge it later (an asynchronous
AS2 MDN, found by ``receipt_key``); the file stays in the spool until the acknowledgement
decides, or ``receipt_due`` passes (``error/``, reason ``receipt_timeout``).

``delivered`` and ``failing`` mean "decided, file not yet filed": after a crash the file is
filed where the decision says. ``sending`` after a crash means the outcome is unknown: the flow
is queued again with ``unknown_outcome`` set, and resent under the same remote name.

The daemon's calls run in the journal's own process (see :class:`Journal`), so
``await journal.call(...)`` never blocks the event loop, and the SQLite work does not compete
with it for the GIL; the calls are group-committed (see :mod:`gateway.journal.worker`). The
common calls are single statements (``UPDATE … RETURNING``) and the history is written by
triggers. The synchronous :class:`JournalDB` is also used directly by CLI commands.

The modules, in reading order:

* :mod:`~gateway.journal.rows` — :class:`FlowRow`, the columns of ``flows``, :class:`StateConflict`,
  :class:`LeaseLost`;
* :mod:`~gateway.journal.target` — where the journal lives: the SQLite file or the PostgreSQL
  database;
* :mod:`~gateway.journal.connection` — what the queries need of a connection, and the SQL that
  differs between the two databases; :mod:`~gateway.journal.postgres`, psycopg made to look
  like ``sqlite3``;
* :mod:`~gateway.journal.schema` — the tables, the migration of an older journal, the counters'
  triggers; :mod:`~gateway.journal.pgschema`, the same tables on PostgreSQL;
* :mod:`~gateway.journal.base` — what every group of queries shares (connection, transaction);
* :mod:`~gateway.journal.flows`, :mod:`~gateway.journal.invoices`,
  :mod:`~gateway.journal.returns`, :mod:`~gateway.journal.deposits` — one class of queries per
  table or group of tables;
* :mod:`~gateway.journal.listing` — the listings and counts that read across tables;
* :mod:`~gateway.journal.db` — :class:`JournalDB`, which combines those classes over one
  connection;
* :mod:`~gateway.journal.worker` — the journal process: :class:`Journal`, :class:`Call`,
  :func:`serve`, the batching; :mod:`~gateway.journal.bulk`, on PostgreSQL a batch's
  same-shaped moves in one statement.

Why mixin classes rather than functions taking the connection: every query stays a method of
:class:`JournalDB`, so the callers' ``Call(JournalDB.get, flow_id)`` and ``db.get(flow_id)``
read as before, mypy checks them against one class, and a method still pickles by reference
(as ``gateway.journal.flows.FlowQueries.get``) to reach the journal process. Each class holds
the queries of one table, so a newcomer looking for the deposits reads ``deposits.py`` alone.
"""

from __future__ import annotations

from flows.lifecycle import OPEN as OPEN  # re-exported: the daemon's modules read them here
from flows.lifecycle import TERMINAL as TERMINAL
from flows.lifecycle import UNFILED as UNFILED
from flows.lifecycle import WAITING as WAITING
from gateway.journal.db import JournalDB as JournalDB
from gateway.journal.errors import JournalUnavailable as JournalUnavailable
from gateway.journal.errors import JournalUnreachable as JournalUnreachable
from gateway.journal.flows import ACTIVE_FOR_DUPLICATES as ACTIVE_FOR_DUPLICATES
from gateway.journal.rows import STATES as STATES
from gateway.journal.rows import FlowRow as FlowRow
from gateway.journal.rows import LeaseLost as LeaseLost
from gateway.journal.rows import StateConflict as StateConflict
from gateway.journal.schema import SCHEMA_VERSION as SCHEMA_VERSION
from gateway.journal.target import JournalTarget as JournalTarget
from gateway.journal.target import PostgresTarget as PostgresTarget
from gateway.journal.target import describe as describe
from gateway.journal.target import journal_target as journal_target
from gateway.journal.worker import Call as Call
from gateway.journal.worker import Journal as Journal
from gateway.journal.worker import JournalCall as JournalCall
from gateway.journal.worker import run_batch as run_batch
from gateway.journal.worker import serve as serve

__all__ = [
    "ACTIVE_FOR_DUPLICATES",
    "OPEN",
    "SCHEMA_VERSION",
    "STATES",
    "TERMINAL",
    "UNFILED",
    "WAITING",
    "Call",
    "FlowRow",
    "Journal",
    "JournalCall",
    "JournalDB",
    "JournalTarget",
    "JournalUnavailable",
    "JournalUnreachable",
    "LeaseLost",
    "PostgresTarget",
    "StateConflict",
    "describe",
    "journal_target",
    "run_batch",
    "serve",
]
