"""The journal: SQLite (WAL), the single source of truth about every flow.

One row per flow (today one dropped file is one flow), one state at a time, every transition
recorded with its time in ``transitions``::

    claimed ──▶ queued ──▶ sending ──▶ delivered ──▶ sent        (file in sent/)
       │          │  ▲        │
       │          │  └────────┘ retryable failure (attempts < max)
       ▼          ▼           ▼
    failing ◀─────┴───────────┘ ──▶ error                        (file in error/)

``delivered`` and ``failing`` mean "decided, file not yet filed": after a crash the file is
filed where the decision says. ``sending`` after a crash means the outcome is unknown: the flow
is queued again with ``unknown_outcome`` set, and resent under the same remote name.

All calls run on one dedicated thread (SQLite connections are not shared between threads), so
``await journal.x(...)`` never blocks the event loop. The synchronous :class:`JournalDB` is also
used directly by short-lived CLI commands.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.folders import free_name

SCHEMA_VERSION = 1
STATES = ("claimed", "queued", "sending", "delivered", "failing", "sent", "error")
TERMINAL = frozenset({"sent", "error"})
ACTIVE_FOR_DUPLICATES = ("queued", "sending", "delivered", "sent")

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
    updated_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flows_state ON flows(state);
CREATE INDEX IF NOT EXISTS flows_sha256 ON flows(sha256);
CREATE INDEX IF NOT EXISTS flows_invoice ON flows(supplier_id, invoice_number);
CREATE INDEX IF NOT EXISTS flows_final_path ON flows(final_path);
CREATE TABLE IF NOT EXISTS transitions (
    id          INTEGER PRIMARY KEY,
    flow_id     TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    at          TEXT NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS transitions_flow ON transitions(flow_id);
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

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["receipt"] = json.loads(self.receipt) if self.receipt else None
        return data


_COLUMNS = tuple(f.name for f in fields(FlowRow))


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
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def insert(self, flow_id: str, connection: str, original_name: str, spool_path: str) -> bool:
        """Record a newly claimed flow; False if it was already recorded."""
        now = _now()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO flows (flow_id, connection, original_name, spool_path,"
                " state, created_at, updated_at) VALUES (?, ?, ?, ?, 'claimed', ?, ?)",
                (flow_id, connection, original_name, spool_path, now, now),
            )
            if cursor.rowcount:
                self._record(flow_id, None, "claimed", now, None)
        return bool(cursor.rowcount)

    def transition(
        self,
        flow_id: str,
        to_state: str,
        *,
        expect: Iterable[str] | None = None,
        detail: str | None = None,
        **values: Any,
    ) -> FlowRow:
        """Move a flow to ``to_state``, setting ``values`` in the same transaction; return it.

        Raises:
            StateConflict: ``expect`` is given and the flow is in none of those states.
        """
        assert to_state in STATES, to_state
        unknown = set(values) - set(_COLUMNS)
        assert not unknown, unknown
        now = _now()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT state FROM flows WHERE flow_id=?", (flow_id,)).fetchone()
            if row is None:
                raise StateConflict(f"flow {flow_id} is not in the journal")
            if expect is not None and row["state"] not in set(expect):
                raise StateConflict(f"flow {flow_id} is {row['state']}, expected {sorted(expect)}")
            assignments = ", ".join(f"{name}=?" for name in values)
            # Column names come from FlowRow's fields (asserted above), values are parameters.
            sql = "UPDATE flows SET state=?, updated_at=?" + (f", {assignments}" if values else "")  # noqa: S608
            self._db.execute(sql + " WHERE flow_id=?", (to_state, now, *values.values(), flow_id))
            self._record(flow_id, row["state"], to_state, now, detail)
        fresh = self.get(flow_id)
        assert fresh is not None
        return fresh

    def file_to(
        self,
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
            if path.exists():
                return True
            held = self._db.execute(
                "SELECT 1 FROM flows WHERE final_path=? AND flow_id<>? LIMIT 1",
                (str(path), flow_id),
            ).fetchone()
            return held is not None

        target = free_name(folder, name, flow_id, taken)
        return self.transition(flow_id, to_state, expect=expect, final_path=str(target), **values)

    def _record(
        self, flow_id: str, from_state: str | None, to_state: str, at: str, detail: str | None
    ) -> None:
        self._db.execute(
            "INSERT INTO transitions (flow_id, from_state, to_state, at, detail)"
            " VALUES (?, ?, ?, ?, ?)",
            (flow_id, from_state, to_state, at, detail),
        )

    def get(self, flow_id: str) -> FlowRow | None:
        row = self._db.execute("SELECT * FROM flows WHERE flow_id=?", (flow_id,)).fetchone()
        return FlowRow(**dict(row)) if row else None

    def find_duplicate(
        self, flow_id: str, sha256: str, supplier_id: str | None, invoice_number: str | None
    ) -> FlowRow | None:
        """An earlier live or sent flow with the same bytes, or the same supplier and invoice."""
        states = ",".join("?" * len(ACTIVE_FOR_DUPLICATES))
        row = self._db.execute(
            f"SELECT * FROM flows WHERE flow_id<>? AND state IN ({states}) AND (sha256=?"  # noqa: S608 - placeholders only
            " OR (? IS NOT NULL AND ? IS NOT NULL AND supplier_id=? AND invoice_number=?))"
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
        return FlowRow(**dict(row)) if row else None

    def queue_unless_duplicate(
        self,
        flow_id: str,
        identity: tuple[str, str | None, str | None],
        *,
        check: bool,
        **values: Any,
    ) -> tuple[FlowRow | None, FlowRow | None]:
        """Queue a claimed flow unless an earlier flow makes it a duplicate.

        Returns ``(queued row, None)``, or ``(None, earlier flow)`` for a duplicate.

        Check and transition run back to back on the journal's single thread, so two copies
        dropped at the same instant cannot both pass the check.
        ``identity`` is (sha256, supplier identifier, invoice number).
        """
        if check:
            earlier = self.find_duplicate(flow_id, *identity)
            if earlier is not None:
                return None, earlier
        return self.transition(flow_id, "queued", expect=("claimed",), **values), None

    def in_states(self, states: Sequence[str]) -> list[FlowRow]:
        marks = ",".join("?" * len(states))
        rows = self._db.execute(
            f"SELECT * FROM flows WHERE state IN ({marks}) ORDER BY created_at",  # noqa: S608
            tuple(states),
        ).fetchall()
        return [FlowRow(**dict(row)) for row in rows]

    def search(
        self,
        *,
        connection: str | None = None,
        state: str | None = None,
        since: str | None = None,
        until: str | None = None,
        invoice: str | None = None,
        flow: str | None = None,
        limit: int | None = None,
    ) -> list[FlowRow]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("connection", "=", connection),
            ("state", "=", state),
            ("created_at", ">=", since),
            ("created_at", "<", until),
            ("invoice_number", "=", invoice),
            ("flow_id", "=", flow),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = f"SELECT * FROM flows{where} ORDER BY created_at"  # noqa: S608 - fixed columns
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [FlowRow(**dict(row)) for row in self._db.execute(sql, params).fetchall()]

    def transitions(self, flow_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT from_state, to_state, at, detail FROM transitions WHERE flow_id=? ORDER BY id",
            (flow_id,),
        ).fetchall()
        return [dict(row) for row in rows]

    def counts(self) -> Mapping[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM flows GROUP BY state").fetchall()
        return {row["state"]: row["n"] for row in rows}


T = TypeVar("T")


class Journal:
    """Async façade: every call runs on the journal's own thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._db: JournalDB | None = None

    async def open(self) -> None:
        self._db = await self._run(lambda: JournalDB(self._path))

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await self._run(db.close)
        self._executor.shutdown(wait=True)

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def call(self, method: Callable[[JournalDB], T]) -> T:
        """Run ``method(db)`` on the journal thread.

        Example: ``row = await journal.call(lambda db: db.get(flow_id))``.
        """
        db = self._db
        if db is None:
            raise RuntimeError("journal is not open")
        return await self._run(lambda: method(db))
