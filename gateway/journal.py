"""The journal: SQLite (WAL), the single source of truth about every flow.

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
with it for the GIL. Calls made while a batch runs are *group-committed*: every pending call
goes in the next batch, which runs in one transaction and commits once. A call that fails
without writing (a state conflict) fails alone; one that fails after writing makes the batch
roll back and run again one call per transaction, so each call applies entirely or not at all.
The common calls are single statements (``UPDATE … RETURNING``) and the history is written by
triggers. The synchronous :class:`JournalDB` is also used directly by CLI commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import pickle
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from flows.lifecycle import OPEN as OPEN  # re-exported: the daemon's modules read them here
from flows.lifecycle import TERMINAL as TERMINAL
from flows.lifecycle import TRANSITIONS, FlowState, predecessors
from flows.lifecycle import UNFILED as UNFILED
from flows.lifecycle import WAITING as WAITING
from gateway.batching import Batcher, WorkerDied, WorkerProcess, answer_batches
from gateway.folders import free_name

SCHEMA_VERSION = 9
STATES = tuple(FlowState)
ACTIVE_FOR_DUPLICATES = (
    "batched",
    "packed",
    "queued",
    "sending",
    "awaiting_receipt",
    "delivered",
    "sent",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
    flow_id         TEXT PRIMARY KEY,
    connection      TEXT NOT NULL,
    original_name   TEXT NOT NULL,
    spool_path      TEXT NOT NULL,
    state           TEXT NOT NULL,
    size            INTEGER,
    sha256          TEXT,
    format          TEXT,
    interface_code  TEXT,
    invoice_number  TEXT,
    issue_date      TEXT,
    supplier_id     TEXT,
    buyer_id        TEXT,
    remote_name     TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    unknown_outcome INTEGER NOT NULL DEFAULT 0,
    forced          INTEGER NOT NULL DEFAULT 0,
    reason          TEXT,
    message         TEXT,
    duplicate_of    TEXT,
    final_path      TEXT,
    receipt         TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    detail          TEXT,
    mode            TEXT,
    lot_id          TEXT,
    packaging       TEXT,
    resubmit_of     TEXT,
    receipt_key     TEXT,
    receipt_due     TEXT,
    validation      TEXT
);
CREATE INDEX IF NOT EXISTS flows_state ON flows(state);
CREATE INDEX IF NOT EXISTS flows_sha256 ON flows(sha256);
CREATE INDEX IF NOT EXISTS flows_invoice ON flows(supplier_id, invoice_number);
CREATE INDEX IF NOT EXISTS flows_final_path ON flows(final_path);
CREATE INDEX IF NOT EXISTS flows_lot ON flows(lot_id);
CREATE INDEX IF NOT EXISTS flows_resubmit ON flows(resubmit_of);
CREATE INDEX IF NOT EXISTS flows_receipt_key ON flows(receipt_key);
-- The filters of the web console's flows table, each with the table's order (date).
CREATE INDEX IF NOT EXISTS flows_created ON flows(created_at);
CREATE INDEX IF NOT EXISTS flows_connection_created ON flows(connection, created_at);
CREATE INDEX IF NOT EXISTS flows_state_created ON flows(state, created_at);
CREATE INDEX IF NOT EXISTS flows_name ON flows(original_name);
CREATE INDEX IF NOT EXISTS flows_number ON flows(invoice_number);
CREATE TABLE IF NOT EXISTS transitions (
    id          INTEGER PRIMARY KEY,
    flow_id     TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    at          TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS transitions_flow ON transitions(flow_id);
-- The invoices a flow carries (one, or the members of a lot), with their latest return status.
CREATE TABLE IF NOT EXISTS invoices (
    flow_id         TEXT NOT NULL,
    position        INTEGER NOT NULL,
    file            TEXT NOT NULL,
    invoice_number  TEXT,
    supplier_id     TEXT,
    status_code     TEXT,
    status_label    TEXT,
    status_at       TEXT,
    rejected        INTEGER NOT NULL DEFAULT 0,
    collateral      INTEGER NOT NULL DEFAULT 0,
    final           INTEGER NOT NULL DEFAULT 0,
    reasons         TEXT,
    rejected_path   TEXT,
    source_flow     TEXT,
    -- the flow failed before integration (93/94/95) and its error does not name this invoice
    flow_not_received INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (flow_id, position)
);
CREATE INDEX IF NOT EXISTS invoices_number ON invoices(invoice_number, supplier_id);
CREATE INDEX IF NOT EXISTS invoices_source ON invoices(source_flow);
CREATE INDEX IF NOT EXISTS invoices_status ON invoices(status_code);
CREATE INDEX IF NOT EXISTS invoices_rejected ON invoices(status_at) WHERE rejected = 1;
CREATE INDEX IF NOT EXISTS invoices_collateral ON invoices(flow_id) WHERE collateral = 1;
-- Return flows received (integration reports, FEN1200A/FEN1201A, others).
CREATE TABLE IF NOT EXISTS returns (
    return_id       TEXT PRIMARY KEY,
    connection      TEXT NOT NULL,
    file            TEXT NOT NULL,
    inbox_path      TEXT NOT NULL,
    sha256          TEXT NOT NULL,
    kind            TEXT,
    state           TEXT NOT NULL,
    flow_ids        TEXT,
    message         TEXT,
    received_at     TEXT NOT NULL,
    applied_at      TEXT,
    UNIQUE (connection, sha256)
);
CREATE INDEX IF NOT EXISTS returns_state ON returns(state);
-- Every status a return gave a flow or one of its invoices (position NULL: the flow itself).
CREATE TABLE IF NOT EXISTS statuses (
    return_id       TEXT NOT NULL,
    flow_id         TEXT NOT NULL,
    position        INTEGER NOT NULL DEFAULT -1,
    code            TEXT NOT NULL,
    label           TEXT,
    at              TEXT,
    detail          TEXT,
    UNIQUE (return_id, flow_id, position, code)
);
CREATE INDEX IF NOT EXISTS statuses_flow ON statuses(flow_id);
-- Files fetched from a partner's download folder, so that none is processed twice.
CREATE TABLE IF NOT EXISTS downloads (
    connection      TEXT NOT NULL,
    remote_name     TEXT NOT NULL,
    size            INTEGER NOT NULL,
    mtime           INTEGER NOT NULL,
    return_id       TEXT,
    outcome         TEXT NOT NULL,
    at              TEXT NOT NULL,
    PRIMARY KEY (connection, remote_name, size, mtime)
);
-- AS2 messages partners pushed to us, by their Message-ID, so that none is stored twice.
CREATE TABLE IF NOT EXISTS as2_messages (
    as2_from        TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    connection      TEXT NOT NULL,
    return_id       TEXT,
    at              TEXT NOT NULL,
    PRIMARY KEY (as2_from, message_id)
);
-- Deposits an API partner reports on when asked (PISTE): asked until the report is final.
CREATE TABLE IF NOT EXISTS deposits (
    flow_id         TEXT PRIMARY KEY,
    connection      TEXT NOT NULL,
    receipt         TEXT NOT NULL,
    sent_at         TEXT NOT NULL,
    next_at         TEXT NOT NULL,
    polls           INTEGER NOT NULL DEFAULT 0,
    state           TEXT,
    outcome         TEXT,
    return_id       TEXT,
    at              TEXT NOT NULL,
    -- after integration, the invoices' life-cycle (when the connection follows it)
    lifecycle_next  TEXT,
    lifecycle_state TEXT,
    lifecycle_outcome TEXT
);
CREATE INDEX IF NOT EXISTS deposits_due ON deposits(connection, outcome, next_at);
CREATE TRIGGER IF NOT EXISTS flows_claimed AFTER INSERT ON flows BEGIN
    INSERT INTO transitions (flow_id, from_state, to_state, at, detail)
    VALUES (NEW.flow_id, NULL, NEW.state, NEW.updated_at, NEW.detail);
END;
CREATE TRIGGER IF NOT EXISTS flows_transition AFTER UPDATE OF state ON flows BEGIN
    INSERT INTO transitions (flow_id, from_state, to_state, at, detail)
    VALUES (NEW.flow_id, OLD.state, NEW.state, NEW.updated_at, NEW.detail);
END;
"""


#: Flows by (connection, state) and statuses by (connection, code), kept by triggers for the
#: metrics (see JournalDB._counted). Statements separated by a blank line.
_COUNTERS = """
CREATE TABLE flow_counts (
    connection TEXT NOT NULL,
    state      TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (connection, state)
) WITHOUT ROWID;

CREATE TABLE status_counts (
    connection TEXT NOT NULL,
    code       TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (connection, code)
) WITHOUT ROWID;

CREATE TRIGGER flows_counted AFTER INSERT ON flows BEGIN
    INSERT INTO flow_counts (connection, state, n) VALUES (NEW.connection, NEW.state, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER flows_recounted AFTER UPDATE OF state, connection ON flows
WHEN OLD.state IS NOT NEW.state OR OLD.connection IS NOT NEW.connection BEGIN
    UPDATE flow_counts SET n = n - 1 WHERE connection = OLD.connection AND state = OLD.state;
    INSERT INTO flow_counts (connection, state, n) VALUES (NEW.connection, NEW.state, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER flows_uncounted AFTER DELETE ON flows BEGIN
    UPDATE flow_counts SET n = n - 1 WHERE connection = OLD.connection AND state = OLD.state;
END;

CREATE TRIGGER statuses_counted AFTER INSERT ON statuses BEGIN
    INSERT INTO status_counts (connection, code, n)
    SELECT connection, NEW.code, 1 FROM flows WHERE flow_id = NEW.flow_id
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER statuses_uncounted AFTER DELETE ON statuses BEGIN
    UPDATE status_counts SET n = n - 1 WHERE code = OLD.code
    AND connection = (SELECT connection FROM flows WHERE flow_id = OLD.flow_id);
END
"""


@dataclass(frozen=True)
class FlowRow:
    flow_id: str
    connection: str
    original_name: str
    spool_path: str
    state: str
    size: int | None
    sha256: str | None
    format: str | None
    interface_code: str | None
    invoice_number: str | None
    issue_date: str | None
    supplier_id: str | None
    buyer_id: str | None
    remote_name: str | None
    attempts: int
    unknown_outcome: int
    forced: int
    reason: str | None
    message: str | None
    duplicate_of: str | None
    final_path: str | None
    receipt: str | None
    created_at: str
    updated_at: str
    detail: str | None  # what the last transition said (e.g. "raccord retry --force")
    mode: str | None  # complete | partial, for the flow's interface code when it was queued
    lot_id: str | None = None  # a packed invoice: the lot that carries it
    packaging: str | None = None  # a lot: tar.gz | zip
    resubmit_of: str | None = None  # a lot resubmitting the collateral invoices of that flow
    receipt_key: str | None = None  # what a late acknowledgement refers to (set when sending)
    receipt_due: str | None = None  # awaiting_receipt: when waiting ends (ISO 8601 UTC)
    validation: str | None = None  # the validation object (JSON) when the invoice was checked

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["receipt"] = json.loads(self.receipt) if self.receipt else None
        data["validation"] = json.loads(self.validation) if self.validation else None
        return data

    @classmethod
    def of(cls, row: sqlite3.Row) -> FlowRow:
        """A row of ``flows`` (its columns are the fields: the schema is migrated at open).

        Raises:
            RuntimeError: the table has columns this version does not know (a journal written
                by another program, or edited by hand).
        """
        values = dict(zip(row.keys(), row, strict=True))
        if values.keys() != _COLUMN_SET:
            raise RuntimeError(f"the journal's flows columns {tuple(values)} are not {_COLUMNS}")
        return cls(**values)


_COLUMNS = tuple(f.name for f in fields(FlowRow))
_COLUMN_SET = frozenset(_COLUMNS)


@functools.lru_cache(maxsize=256)
def _update_sql(columns: tuple[str, ...], expected: int | None) -> str:
    """The statement of :meth:`JournalDB.transition` that sets ``columns`` (remembered: the
    calls are few shapes, made thousands of times)."""
    unknown = set(columns) - _COLUMN_SET
    assert not unknown, unknown
    where = "flow_id=?"
    if expected is not None:
        where += f" AND state IN ({','.join('?' * expected)})"
    # Column names come from FlowRow's fields (asserted above), values are parameters.
    assignments = "".join(f", {name}=?" for name in columns)
    return (
        f"UPDATE flows SET state=?, updated_at=?, detail=?{assignments} WHERE {where}"  # noqa: S608
        " RETURNING *"
    )


class StateConflict(RuntimeError):
    """A transition was asked from a state the flow is no longer in."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JournalDB:
    """Synchronous access; one instance per thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9) with every commit; a power cut
        # may lose the last commits, which reconciliation tolerates: a flow that falls back to
        # "sending" is resent under the same remote name and recognised as already delivered.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._counted()

    def _migrate(self) -> None:
        """Create the schema, or bring an older journal up to date (idempotent)."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"journal schema {version} is newer than this raccord knows ({SCHEMA_VERSION}); "
                "run the newer raccord, or restore the journal from before the upgrade"
            )
        if version == SCHEMA_VERSION:
            return
        for table, wanted in (
            ("flows", _COLUMNS),
            ("invoices", ("source_flow", "flow_not_received")),
        ):
            columns = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if columns:  # an existing journal: add the (nullable) columns later schemas brought
                for name in wanted:
                    if name not in columns:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} TEXT")
        self._db.executescript(_SCHEMA)
        if version and version < 4:  # one dropped file, one flow: it is its own source
            self._db.execute("UPDATE invoices SET source_flow=flow_id WHERE source_flow IS NULL")
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _counted(self) -> None:
        """The listing index and the counts the metrics read (idempotent, outside the schema
        version: a journal of any version gets them at its first open, filled once).

        ``/metrics`` is scraped every few seconds: a GROUP BY over a million flows at each
        scrape cost more than the scrape interval allows, so the counts are kept by triggers
        as flows are recorded, change state or are purged."""
        self._db.execute("CREATE INDEX IF NOT EXISTS flows_created ON flows(created_at)")
        if self._has_counters():
            return
        with self.transaction():
            if self._has_counters():  # another process (the daemon, a command) was first
                return
            for statement in _COUNTERS.split(";\n\n"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(
                "INSERT INTO flow_counts (connection, state, n)"
                " SELECT connection, state, COUNT(*) FROM flows GROUP BY connection, state"
            )
            self._db.execute(
                "INSERT INTO status_counts (connection, code, n)"
                " SELECT f.connection, s.code, COUNT(*) FROM statuses s"
                " JOIN flows f ON f.flow_id = s.flow_id GROUP BY f.connection, s.code"
            )

    def _has_counters(self) -> bool:
        found = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='flow_counts'"
        ).fetchone()
        return found is not None

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction; inside one already open, part of it (the outer one decides)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def changes(self) -> int:
        """Rows written by this connection so far (to tell whether a failed call wrote)."""
        return self._db.total_changes

    def insert(
        self, /, flow_id: str, connection: str, original_name: str, spool_path: str, **values: Any
    ) -> FlowRow | None:
        """Record a newly claimed flow (with more columns in ``values``: a lot's packaging,
        interface code…); return it, or None if it was already recorded."""
        unknown = values.keys() - _COLUMN_SET
        assert not unknown, unknown
        now = _now()
        names = "".join(f", {name}" for name in values)
        marks = ", ?" * len(values)
        row = self._db.execute(
            "INSERT OR IGNORE INTO flows (flow_id, connection, original_name, spool_path,"  # noqa: S608 - names from FlowRow
            f" state, created_at, updated_at{names}) VALUES (?, ?, ?, ?, 'claimed', ?, ?{marks})"
            " RETURNING *",
            (flow_id, connection, original_name, spool_path, now, now, *values.values()),
        ).fetchone()
        return FlowRow.of(row) if row else None

    def transition(
        self,
        /,
        flow_id: str,
        to_state: str,
        *,
        expect: Iterable[str] | None = None,
        detail: str | None = None,
        **values: Any,
    ) -> FlowRow:
        """Move a flow to ``to_state``, setting ``values`` in the same statement; return it.

        ``expect`` narrows the states the flow may come from; by default, every state from
        which :data:`flows.lifecycle.TRANSITIONS` allows the move.

        Raises:
            StateConflict: the flow is unknown, or in none of the expected states (nothing is
                written then).
        """
        state = FlowState(to_state)
        if expect is None:
            expected: tuple[str, ...] = predecessors(state)
        else:
            expected = tuple(expect)
            # A call site may narrow the table, never widen it.
            assert all(state in TRANSITIONS[FlowState(e)] for e in expected), (expected, state)
        sql = _update_sql(tuple(values), len(expected))
        params = (to_state, _now(), detail, *values.values(), flow_id, *expected)
        row = self._db.execute(sql, params).fetchone()
        if row is None:
            current = self._db.execute(
                "SELECT state FROM flows WHERE flow_id=?", (flow_id,)
            ).fetchone()
            if current is None:
                raise StateConflict(f"flow {flow_id} is not in the journal")
            raise StateConflict(
                f"flow {flow_id} is {current['state']}, expected {sorted(expected)}"
            )
        return FlowRow.of(row)

    def file_to(
        self,
        /,
        flow_id: str,
        to_state: str,
        folder: Path,
        name: str,
        *,
        expect: Iterable[str] | None = None,
        **values: Any,
    ) -> FlowRow:
        """Decide where a flow's file goes (``final_path``) and move it to ``to_state``.

        The name is ``folder/name`` unless a file is there or another flow already holds that
        path (then the flow id is inserted before the extension). Choosing and recording run
        back to back on the journal's single thread, so two flows filed at the same instant
        under one name can never be given the same path (a rename would overwrite one).
        """

        def taken(path: Path) -> bool:
            if os.path.lexists(path):  # a link there is taken too, even a dangling one
                return True
            held = self._db.execute(
                "SELECT 1 FROM flows WHERE final_path=? AND flow_id<>? LIMIT 1",
                (str(path), flow_id),
            ).fetchone()
            return held is not None

        with self.transaction():
            target = free_name(folder, name, flow_id, taken)
            return self.transition(
                flow_id, to_state, expect=expect, final_path=str(target), **values
            )

    def get(self, flow_id: str) -> FlowRow | None:
        row = self._db.execute("SELECT * FROM flows WHERE flow_id=?", (flow_id,)).fetchone()
        return FlowRow.of(row) if row else None

    def awaiting(self, receipt_key: str) -> FlowRow | None:
        """The latest flow whose acknowledgement refers to ``receipt_key``, in any state."""
        row = self._db.execute(
            "SELECT * FROM flows WHERE receipt_key=? ORDER BY updated_at DESC LIMIT 1",
            (receipt_key,),
        ).fetchone()
        return FlowRow.of(row) if row else None

    def receipts_due(self, now: str) -> list[FlowRow]:
        """Flows still awaiting an acknowledgement whose wait ended at or before ``now``."""
        rows = self._db.execute(
            "SELECT * FROM flows WHERE state='awaiting_receipt' AND receipt_due<=?"
            " ORDER BY receipt_due",
            (now,),
        ).fetchall()
        return [FlowRow.of(row) for row in rows]

    def find_duplicate(
        self, flow_id: str, sha256: str, supplier_id: str | None, invoice_number: str | None
    ) -> FlowRow | None:
        """An earlier live or sent flow with the same bytes, or the same supplier and invoice.

        An invoice the partner rejected, and that no later flow carries again, is not a
        duplicate: it may be corrected and sent again under its number.
        """
        states = ",".join("?" * len(ACTIVE_FOR_DUPLICATES))
        row = self._db.execute(
            f"SELECT * FROM flows f WHERE flow_id<>? AND state IN ({states}) AND (sha256=?"  # noqa: S608 - placeholders only
            " OR (? IS NOT NULL AND ? IS NOT NULL AND supplier_id=? AND invoice_number=?))"
            " AND NOT (EXISTS (SELECT 1 FROM invoices i WHERE i.source_flow=f.flow_id"
            " AND i.rejected=1) AND NOT EXISTS (SELECT 1 FROM invoices i"
            " WHERE i.source_flow=f.flow_id AND i.rejected=0))"
            " ORDER BY created_at LIMIT 1",
            (
                flow_id,
                *ACTIVE_FOR_DUPLICATES,
                sha256,
                supplier_id,
                invoice_number,
                supplier_id,
                invoice_number,
            ),
        ).fetchone()
        return FlowRow.of(row) if row else None

    def queue_unless_duplicate(
        self,
        /,
        flow_id: str,
        identity: tuple[str, str | None, str | None],
        *,
        check: bool,
        to_state: str = "queued",
        invoice: tuple[str, str | None, str | None, str] | None = None,
        sending: Mapping[str, Any] | None = None,
        **values: Any,
    ) -> tuple[FlowRow | None, FlowRow | None]:
        """Queue a claimed flow (or put it in ``batched`` for a lot) unless an earlier flow
        makes it a duplicate; with ``sending`` (the values of that transition), a queued flow
        goes on to ``sending`` at once (both transitions recorded).

        Returns ``(queued row, None)``, or ``(None, earlier flow)`` for a duplicate.

        Check and transition run back to back on the journal's single thread, so two copies
        dropped at the same instant cannot both pass the check.
        ``identity`` is (sha256, supplier identifier, invoice number); ``invoice``, the invoice
        the flow carries, recorded with it (see :meth:`add_invoices`).
        """
        with self.transaction():
            if check:
                earlier = self.find_duplicate(flow_id, *identity)
                if earlier is not None:
                    return None, earlier
            queued = self.transition(flow_id, to_state, expect=("claimed",), **values)
            if invoice is not None:
                self.add_invoices(flow_id, [invoice])
            if sending is not None:
                queued = self.transition(flow_id, "sending", expect=(to_state,), **sending)
            return queued, None

    # -- invoices and returns ------------------------------------------------------------------

    def add_invoices(
        self, flow_id: str, invoices: Iterable[tuple[str, str | None, str | None, str]]
    ) -> None:
        """Record the invoices a flow carries, in order: (file, invoice number, supplier id,
        source flow: the flow of the dropped file, i.e. the flow itself unless it is a lot)."""
        self._db.executemany(
            "INSERT OR IGNORE INTO invoices (flow_id, position, file, invoice_number, supplier_id,"
            " source_flow) VALUES (?, ?, ?, ?, ?, ?)",
            [(flow_id, i, *invoice) for i, invoice in enumerate(invoices)],
        )

    def invoices(self, flow_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM invoices WHERE flow_id=? ORDER BY position", (flow_id,)
        ).fetchall()
        return [dict(row) for row in rows]

    def carried(self, flow_id: str) -> list[dict[str, Any]]:
        """A dropped file's invoice as the flows that carried it know it (its own flow, or the
        lots it was packed in, a resubmission last)."""
        rows = self._db.execute(
            "SELECT i.* FROM invoices i JOIN flows f USING (flow_id) WHERE i.source_flow=?"
            " ORDER BY f.created_at",
            (flow_id,),
        ).fetchall()
        return [dict(row) for row in rows]

    def flows_of_invoice(
        self, connection: str, invoice_number: str, supplier_id: str | None
    ) -> list[str]:
        """Sent flows of ``connection`` carrying that invoice, latest first."""
        rows = self._db.execute(
            "SELECT i.flow_id FROM invoices i JOIN flows f USING (flow_id)"
            " WHERE f.connection=? AND f.state='sent' AND i.invoice_number=?"
            " AND (? IS NULL OR i.supplier_id IS NULL OR i.supplier_id=?)"
            " ORDER BY f.created_at DESC",
            (connection, invoice_number, supplier_id, supplier_id),
        ).fetchall()
        return [row["flow_id"] for row in rows]

    def record_return(
        self,
        return_id: str,
        connection: str,
        file: str,
        inbox_path: str,
        sha256: str,
    ) -> tuple[dict[str, Any], bool]:
        """Journal a received return flow; ``(row, True)`` if new, ``(earlier row, False)`` if
        the same bytes already came on this connection."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO returns (return_id, connection, file, inbox_path, sha256,"
            " state, received_at) VALUES (?, ?, ?, ?, ?, 'received', ?)",
            (return_id, connection, file, inbox_path, sha256, _now()),
        )
        row = self._db.execute(
            "SELECT * FROM returns WHERE connection=? AND sha256=?", (connection, sha256)
        ).fetchone()
        return dict(row), bool(cursor.rowcount)

    def get_return(self, return_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM returns WHERE return_id=?", (return_id,)).fetchone()
        return dict(row) if row else None

    def return_by_sha256(self, connection: str, sha256: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT * FROM returns WHERE connection=? AND sha256=?", (connection, sha256)
        ).fetchone()
        return dict(row) if row else None

    def update_return(self, return_id: str, **values: Any) -> None:
        allowed = {"kind", "state", "flow_ids", "message", "applied_at"}
        assert set(values) <= allowed, set(values) - allowed
        assignments = ", ".join(f"{name}=?" for name in values)
        self._db.execute(
            f"UPDATE returns SET {assignments} WHERE return_id=?",  # noqa: S608 - fixed names
            (*values.values(), return_id),
        )

    def returns(
        self, *, state: str | None = None, connection: str | None = None
    ) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM returns WHERE (? IS NULL OR state=?) AND (? IS NULL OR connection=?)"
            " ORDER BY received_at",
            (state, state, connection, connection),
        ).fetchall()
        return [dict(row) for row in rows]

    def record_status(
        self,
        return_id: str,
        flow_id: str,
        position: int | None,
        code: str,
        label: str | None,
        at: str | None,
        detail: str | None,
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO statuses (return_id, flow_id, position, code, label, at, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (return_id, flow_id, -1 if position is None else position, code, label, at, detail),
        )

    def set_invoice_status(self, flow_id: str, position: int, **values: Any) -> None:
        allowed = {
            "status_code",
            "status_label",
            "status_at",
            "rejected",
            "collateral",
            "final",
            "reasons",
            "rejected_path",
            "flow_not_received",
        }
        assert set(values) <= allowed, set(values) - allowed
        assignments = ", ".join(f"{name}=?" for name in values)
        self._db.execute(
            f"UPDATE invoices SET {assignments} WHERE flow_id=? AND position=?",  # noqa: S608
            (*values.values(), flow_id, position),
        )

    def download(self, connection: str, name: str, size: int, mtime: int) -> dict[str, Any] | None:
        """What became of that remote file (same name, size and time), if it was seen."""
        row = self._db.execute(
            "SELECT * FROM downloads WHERE connection=? AND remote_name=? AND size=? AND mtime=?",
            (connection, name, size, mtime),
        ).fetchone()
        return dict(row) if row else None

    def record_download(
        self,
        connection: str,
        name: str,
        size: int,
        mtime: int,
        *,
        outcome: str,
        return_id: str | None = None,
    ) -> None:
        """Remember a remote file: ``stored`` (in the inbox, not yet removed remotely),
        ``done``, or ``refused`` (never fetched; the log said why)."""
        self._db.execute(
            "INSERT INTO downloads (connection, remote_name, size, mtime, return_id, outcome, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET outcome=excluded.outcome,"
            " return_id=coalesce(excluded.return_id, return_id), at=excluded.at",
            (connection, name, size, mtime, return_id, outcome, _now()),
        )

    def adopt_deposits(self, connection: str, protocol: str, first_after: float) -> int:
        """Start asking about the flows sent on ``connection`` over ``protocol`` that are not
        followed yet: first ``first_after`` seconds after they were sent. A flow sent over
        another protocol, or found already delivered, is recorded as ``not_followed`` so that
        it is looked at once. Returns how many are asked about now."""
        rows = self._db.execute(
            "SELECT flow_id, remote_name, receipt FROM flows f WHERE connection=? AND"
            " state='sent' AND receipt IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM deposits d WHERE d.flow_id=f.flow_id)",
            (connection,),
        ).fetchall()
        adopted = 0
        for row in rows:
            document = json.loads(row["receipt"])
            followed = document.get("protocol") == protocol and not document.get(
                "already_delivered"
            )
            details = {**document.get("partner_answer", {}), "remote_name": row["remote_name"]}
            sent_at = str(document.get("sent_at") or _now())
            first = datetime.fromisoformat(sent_at) + timedelta(seconds=first_after)
            self._db.execute(
                "INSERT OR IGNORE INTO deposits (flow_id, connection, receipt, sent_at, next_at,"
                " outcome, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    row["flow_id"],
                    connection,
                    json.dumps(details),
                    sent_at,
                    first.isoformat(timespec="milliseconds"),
                    None if followed else "not_followed",
                    _now(),
                ),
            )
            adopted += followed
        return adopted

    def deposits_due(self, connection: str, now: str) -> list[dict[str, Any]]:
        """The deposits on ``connection`` still asked about whose time has come."""
        rows = self._db.execute(
            "SELECT * FROM deposits WHERE connection=? AND outcome IS NULL AND next_at<=?"
            " ORDER BY next_at",
            (connection, now),
        ).fetchall()
        return [dict(row) for row in rows]

    def lifecycles_due(self, connection: str, now: str) -> list[dict[str, Any]]:
        """The integrated deposits on ``connection`` whose invoices are followed and due."""
        rows = self._db.execute(
            "SELECT * FROM deposits WHERE connection=? AND lifecycle_next IS NOT NULL AND"
            " lifecycle_outcome IS NULL AND lifecycle_next<=? ORDER BY lifecycle_next",
            (connection, now),
        ).fetchall()
        return [dict(row) for row in rows]

    def deposit(self, flow_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM deposits WHERE flow_id=?", (flow_id,)).fetchone()
        return dict(row) if row else None

    def update_deposit(self, /, flow_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{name}=?" for name in values)
        self._db.execute(
            f"UPDATE deposits SET {assignments}, at=? WHERE flow_id=?",  # noqa: S608 - our names
            (*values.values(), _now(), flow_id),
        )

    def as2_message(self, as2_from: str, message_id: str) -> dict[str, Any] | None:
        """The AS2 message ``as2_from`` sent us with that Message-ID, if it was stored."""
        row = self._db.execute(
            "SELECT * FROM as2_messages WHERE as2_from=? AND message_id=?",
            (as2_from, message_id),
        ).fetchone()
        return dict(row) if row else None

    def record_as2_message(
        self, as2_from: str, message_id: str, connection: str, return_id: str | None
    ) -> bool:
        """Remember a stored inbound AS2 message; False if it was already known."""
        cursor = self._db.execute(
            "INSERT INTO as2_messages (as2_from, message_id, connection, return_id, at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (as2_from, message_id, connection, return_id, _now()),
        )
        return cursor.rowcount == 1

    def resubmission_of(self, flow_id: str) -> str | None:
        """The flow that resubmitted ``flow_id``'s collateral invoices, if any."""
        row = self._db.execute(
            "SELECT flow_id FROM flows WHERE resubmit_of=? LIMIT 1", (flow_id,)
        ).fetchone()
        return row["flow_id"] if row else None

    def rejected_path_held(self, path: str) -> bool:
        """Whether a rejected invoice is already filed (or being filed) at ``path``."""
        row = self._db.execute("SELECT 1 FROM invoices WHERE rejected_path=? LIMIT 1", (path,))
        return row.fetchone() is not None

    def statuses(self, flow_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT s.*, r.file AS return_file FROM statuses s JOIN returns r USING (return_id)"
            " WHERE s.flow_id=? ORDER BY r.received_at, s.rowid",
            (flow_id,),
        ).fetchall()
        return [
            {**dict(row), "position": None if row["position"] < 0 else row["position"]}
            for row in rows
        ]

    def in_states(self, states: Sequence[str]) -> list[FlowRow]:
        marks = ",".join("?" * len(states))
        rows = self._db.execute(
            f"SELECT * FROM flows WHERE state IN ({marks}) ORDER BY created_at",  # noqa: S608
            tuple(states),
        ).fetchall()
        return [FlowRow.of(row) for row in rows]

    def spools_in(self, state: str) -> list[tuple[str, str]]:
        """(flow_id, spool_path) of the flows in ``state``, oldest first: for a poll that may
        find thousands during a burst, a fraction of the cost of whole rows."""
        rows = self._db.execute(
            "SELECT flow_id, spool_path FROM flows WHERE state=? ORDER BY created_at", (state,)
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def search(
        self,
        *,
        connection: str | None = None,
        state: str | None = None,
        since: str | None = None,
        until: str | None = None,
        invoice: str | None = None,
        flow: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[FlowRow]:
        """Flows matching every filter given, oldest first; ``invoice`` also finds the lots and
        dropped files carrying that invoice; ``status`` is an invoice status code (``05``),
        ``rejected`` or ``collateral``."""
        return list(
            self.each(
                connection=connection,
                state=state,
                since=since,
                until=until,
                invoice=invoice,
                flow=flow,
                status=status,
                limit=limit,
            )
        )

    def each(
        self,
        *,
        connection: str | None = None,
        state: str | None = None,
        since: str | None = None,
        until: str | None = None,
        invoice: str | None = None,
        flow: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> Iterator[FlowRow]:
        """:meth:`search`, one row at a time (a listing of a million flows holds one row);
        ``newest_first`` with ``limit``: the latest ``limit`` flows."""
        for row in self.each_row(
            connection=connection,
            state=state,
            since=since,
            until=until,
            invoice=invoice,
            flow=flow,
            status=status,
            limit=limit,
            newest_first=newest_first,
        ):
            yield FlowRow.of(row)

    def each_row(
        self,
        *,
        connection: str | None = None,
        state: str | None = None,
        since: str | None = None,
        until: str | None = None,
        invoice: str | None = None,
        flow: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> Iterator[sqlite3.Row]:
        """:meth:`each` as the database's rows (the listings: a FlowRow per row of a
        million-flow export costs more than the export itself)."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("connection", "=", connection),
            ("state", "=", state),
            ("created_at", ">=", since),
            ("created_at", "<", until),
            ("flow_id", "=", flow),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        if invoice is not None:  # the flow's own invoice, or one of the invoices it carries
            clauses.append(
                "(invoice_number = ? OR flow_id IN"
                " (SELECT flow_id FROM invoices WHERE invoice_number = ?))"
            )
            params += [invoice, invoice]
        if status is not None:
            clauses.append(
                "flow_id IN (SELECT flow_id FROM invoices WHERE status_code = ?"
                " OR (? = 'rejected' AND rejected = 1) OR (? = 'collateral' AND collateral = 1))"
            )
            params += [status, status, status]
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        order = "DESC" if newest_first else ""
        sql = f"SELECT * FROM flows{where} ORDER BY created_at {order}"  # noqa: S608 - fixed
        if limit:
            sql += f" LIMIT {int(limit)}"
        # Not ``yield from``: closing this generator (a reader that stopped) would close the
        # cursor, which fails once the journal itself is closed.
        for row in self._db.execute(sql, params):  # noqa: UP028 - see above
            yield row

    def has_connection(self, connection: str) -> bool:
        """Whether any flow of ``connection`` is in the journal (one removed from the
        configuration still lists)."""
        row = self._db.execute(
            "SELECT 1 FROM flow_counts WHERE connection=? AND n > 0 LIMIT 1", (connection,)
        ).fetchone()
        return row is not None

    def invoices_of(self, rows: Sequence[sqlite3.Row]) -> dict[str, list[dict[str, Any]]]:
        """For a page of listed flows: a lot's invoices, or a dropped file's own invoice where
        it travelled last (as :meth:`invoices` and ``carried(...)[-1:]``), in two queries."""
        lots = [row["flow_id"] for row in rows if row["packaging"]]
        dropped = [row["flow_id"] for row in rows if not row["packaging"]]
        found: dict[str, list[dict[str, Any]]] = {row["flow_id"]: [] for row in rows}
        if lots:
            marks = ",".join("?" * len(lots))
            for item in self._db.execute(
                f"SELECT * FROM invoices WHERE flow_id IN ({marks})"  # noqa: S608 - marks
                " ORDER BY flow_id, position",
                lots,
            ):
                found[item["flow_id"]].append(dict(item))
        if dropped:
            marks = ",".join("?" * len(dropped))
            sql = (
                "SELECT i.* FROM invoices i JOIN flows f USING (flow_id)"  # noqa: S608 - marks
                f" WHERE i.source_flow IN ({marks}) ORDER BY f.created_at"
            )
            for item in self._db.execute(sql, dropped):
                found[item["source_flow"]][:] = [dict(item)]  # the latest carrier wins
        return found

    def transitions(self, flow_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT from_state, to_state, at, detail FROM transitions WHERE flow_id=? ORDER BY id",
            (flow_id,),
        ).fetchall()
        return [dict(row) for row in rows]

    def counts(self) -> Mapping[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM flows GROUP BY state").fetchall()
        return {row["state"]: row["n"] for row in rows}

    def metrics(self) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """Flows by (connection, state), and return statuses by (connection, code)."""
        flows = self._db.execute(
            "SELECT connection, state, n FROM flow_counts WHERE n > 0"
        ).fetchall()
        statuses = self._db.execute(
            "SELECT connection, code, n FROM status_counts WHERE n > 0"
        ).fetchall()
        return (
            {(row[0], row[1]): row[2] for row in flows},
            {(row[0], row[1]): row[2] for row in statuses},
        )

    def invoice_rows(
        self,
        *,
        invoice: str | None = None,
        status: str | None = None,
        connection: str | None = None,
        state: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:
        """Invoices (one row per flow carrying each) with their flow's connection, state,
        packaging and resubmit_of. ``status``: a current status code (``05``), ``rejected``,
        ``collateral`` or ``not_received``."""
        rows = self._db.execute(
            "SELECT i.*, f.connection, f.state, f.packaging, f.resubmit_of, f.created_at"
            " FROM invoices i JOIN flows f USING (flow_id)"
            " WHERE (? IS NULL OR i.invoice_number = ?)"
            " AND (? IS NULL OR i.status_code = ? OR (? = 'rejected' AND i.rejected = 1)"
            " OR (? = 'collateral' AND i.collateral = 1)"
            " OR (? = 'not_received' AND i.flow_not_received = 1))"
            " AND (? IS NULL OR f.connection = ?) AND (? IS NULL OR f.state = ?)"
            " AND (? IS NULL OR f.created_at >= ?) AND (? IS NULL OR f.created_at < ?)"
            " ORDER BY f.created_at, i.position",
            (
                *(invoice, invoice),
                *[status] * 5,
                *(connection, connection, state, state),
                *(since, since, until, until),
            ),
        ).fetchall()
        return [dict(row) for row in rows]

    def overdue(self, connection: str, sent_before: str) -> list[FlowRow]:
        """Flows of ``connection`` sent before ``sent_before`` that no return has spoken of yet
        (neither the flow nor any invoice it carries has a status), oldest first."""
        rows = self._db.execute(
            "SELECT * FROM flows f WHERE connection=? AND state='sent' AND updated_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM statuses s WHERE s.flow_id=f.flow_id)"
            " ORDER BY updated_at",
            (connection, sent_before),
        ).fetchall()
        return [FlowRow.of(row) for row in rows]

    def invoice_metrics(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """Invoices by (connection, current status code; ``rejected`` for a rejection without
        a code of its own, ``none`` before any), and returns by (connection, state)."""
        invoices = self._db.execute(
            "SELECT f.connection, CASE WHEN i.status_code IS NOT NULL THEN i.status_code"
            " WHEN i.rejected = 1 THEN 'rejected' ELSE 'none' END AS code, COUNT(*) AS n"
            " FROM invoices i JOIN flows f ON f.flow_id = i.flow_id GROUP BY 1, 2"
        ).fetchall()
        states = self._db.execute(
            "SELECT connection, state, COUNT(*) AS n FROM returns GROUP BY connection, state"
        ).fetchall()
        return (
            {(row[0], row[1]): row[2] for row in invoices},
            {(row[0], row[1]): row[2] for row in states},
        )

    def queue_depth(self) -> int:
        """Flows not yet filed (the same count as the raccord_queue_depth metric, summed)."""
        marks = ", ".join("?" for _ in UNFILED)
        row = self._db.execute(
            f"SELECT COUNT(*) FROM flows WHERE state IN ({marks})",  # noqa: S608 - placeholders
            UNFILED,
        ).fetchone()
        return int(row[0])

    def ping(self) -> None:
        """A query that touches the database file (the health check)."""
        self._db.execute("SELECT COUNT(*) FROM flows WHERE state = 'queued'").fetchone()


T = TypeVar("T")

JournalCall = Callable[[JournalDB], Any]


P = ParamSpec("P")


class Call(Generic[T]):
    """A journal call that can travel to the journal process: ``function(db, *args, **kwargs)``.

    ``function`` is a :class:`JournalDB` method or a module-level function taking the database
    first, the arguments plain values; mypy checks them against ``function``'s signature.
    Example: ``await journal.call(Call(JournalDB.get, flow_id))``.
    """

    __slots__ = ("args", "function", "kwargs")

    def __init__(
        self, function: Callable[Concatenate[JournalDB, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> None:
        self.function: Callable[..., T] = function
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] = kwargs

    def __call__(self, db: JournalDB) -> T:
        return self.function(db, *self.args, **self.kwargs)


class JournalUnavailable(RuntimeError):
    """The journal process could not be reached; whether the calls were applied is unknown."""


class Journal:
    """Async façade: the calls run in the journal's own process, group-committed.

    The process has its own interpreter: the SQLite work (each step of which releases and
    re-takes the GIL) no longer competes with the event loop. Measured with 3,000 x 10 KB
    files over SFTP to a local sshd: the journal thread spent 0.25 ms per call under load,
    most of it waiting for the GIL the busy event loop held. Calls are pickled by the caller
    (a call that cannot travel fails there, alone) and sent in batches: one round trip per
    batch. The process ends when the journal is closed, or when the daemon dies (it finishes
    the batch under way, whose commit is then found by the next start like any other). If it
    dies, the batch under way fails with :class:`JournalUnavailable` and the next batch
    starts a new one.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._worker = WorkerProcess("raccord-journal", serve, path)
        self._open = False
        self._batcher: Batcher[bytes, Any] = Batcher(self._run_batch, executor=self._executor)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._worker.start)
        self._open = True

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self._batcher.idle()
            await asyncio.get_running_loop().run_in_executor(self._executor, self._worker.stop)
        self._executor.shutdown(wait=True)

    async def call(self, method: Callable[[JournalDB], T]) -> T:
        """Run ``method(db)`` in the journal process, atomically (in its own savepoint).

        ``method`` is a :class:`Call`, or anything else that pickles.

        Raises:
            TypeError: ``method`` cannot be sent to the journal process (a programming error).
            JournalUnavailable: the journal process died while running the batch.
        """
        if not self._open:
            raise RuntimeError("journal is not open")
        try:
            sent = pickle.dumps(method, pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(f"journal call {method!r} cannot be sent: {exc}") from None
        result: T = await self._batcher.submit(sent)
        return result

    async def knows(self, flow_id: str) -> bool:
        """Whether ``flow_id`` is in the journal: after a :class:`JournalUnavailable`, whether
        the call that recorded it was applied."""
        return await self.call(Call(JournalDB.get, flow_id)) is not None

    def _run_batch(self, calls: list[bytes]) -> list[Any]:
        """Send a batch to the journal process and wait for its outcomes (journal thread)."""
        try:
            answers = self._worker.run(calls)
        except WorkerDied as exc:
            return [
                JournalUnavailable(
                    f"{exc} during this call; whether it was applied is unknown: the next "
                    "start reconciles the journal"
                )
            ] * len(calls)
        except Exception as exc:  # it could not be started again (e.g. the disk is gone)
            return [exc] * len(calls)
        return [_unpickled(answer) for answer in answers]


def _unpickled(answer: bytes) -> Any:
    try:
        return pickle.loads(answer)  # noqa: S301 - from our own journal process
    except Exception as exc:
        return JournalUnavailable(f"unreadable answer from the journal process: {exc!r}")


def serve(path: Path, pipe: Any) -> None:
    """The journal process: open ``path``, then run the batches that come through ``pipe``."""
    try:
        db = JournalDB(path)
        # Statement journals in memory: each UPDATE with its history trigger, inside a batch's
        # transaction, saved the pages it changes to a temporary file first (measured: 36
        # writes and 80 KB per flow, 5 and 16 KB with this; the process's CPU -5 %). Only
        # here: the CLI's listings may sort more than memory should hold.
        db._db.execute("PRAGMA temp_store=MEMORY")
    except Exception as exc:
        pipe.send(exc)
        return
    try:
        answer_batches(
            pipe,
            lambda calls: [
                _pickled(outcome) for outcome in run_batch(db, [_loaded(c) for c in calls])
            ],
        )
    finally:
        db.close()


def _loaded(call: bytes) -> JournalCall:
    try:
        method: JournalCall = pickle.loads(call)  # noqa: S301 - from the daemon that started us
    except Exception as exc:
        return _Failing(exc)
    return method


class _Failing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __call__(self, db: JournalDB) -> Any:
        raise self.exc


def _pickled(outcome: Any) -> bytes:
    try:
        return pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return pickle.dumps(TypeError(f"journal answer {outcome!r} cannot be sent back: {exc}"))


def run_batch(db: JournalDB, calls: list[JournalCall]) -> list[Any]:
    """Run a batch in one transaction; see the module docstring."""
    outcomes: list[Any] = []
    try:
        with db.transaction():
            for method in calls:
                before = db.changes
                try:
                    outcomes.append(method(db))
                except Exception as exc:
                    if db.changes != before:
                        raise _Dirty from exc
                    outcomes.append(exc)
    except _Dirty:
        return [_run_alone(db, method) for method in calls]
    except sqlite3.Error as exc:  # the commit itself failed (disk full, I/O): none applied
        return [exc] * len(calls)
    return outcomes


def _run_alone(db: JournalDB, method: JournalCall) -> Any:
    try:
        with db.transaction():
            return method(db)
    except Exception as exc:
        return exc


class _Dirty(Exception):
    """A call failed after writing: its batch must be undone and run again call by call."""
