"""Lots on the gateway side: gathering batched invoices, packing them durably, resubmitting.

The :class:`Assembler` keeps, per (connection, interface code), the invoices waiting for a lot
(journaled as ``batched``, still in the spool) and hands a full lot to the dispatcher when it
reaches ``max_invoices``, when the next invoice would take it over ``max_bytes``, or
``max_wait`` after its first invoice arrived. It only holds references: everything it holds is
in the journal, so a restart rebuilds it.

:func:`write_lot` and :func:`journal_lot` are the two steps of packing, in this order, so that a
crash leaves something reconciliation understands: an archive in the spool that the journal
does not know is an unfinished packing (removed; its invoices are still ``batched``), and an
invoice ``packed`` whose spool file is still there has it removed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flows import lots
from gateway.config import Lot
from gateway.folders import fsync_dir
from gateway.journal import FlowRow, JournalDB

Key = tuple[str, str]  # (connection, interface code)


@dataclass
class _Pending:
    rows: list[FlowRow] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class Assembler:
    """Gathers batched invoices into lots; ``on_lot(rows)`` receives each full lot."""

    def __init__(
        self, limits: Callable[[str], Lot], on_lot: Callable[[list[FlowRow]], None]
    ) -> None:
        self._limits = limits
        self._on_lot = on_lot
        self._pending: dict[Key, _Pending] = {}
        self._held: set[str] = set()
        self._closed = False

    def add(self, row: FlowRow) -> None:
        """Take one batched invoice (a no-op if it is already waiting)."""
        if self._closed or row.flow_id in self._held:
            return
        assert row.interface_code is not None
        key = (row.connection, row.interface_code)
        limits = self._limits(row.connection)
        size = (row.size or 0) + lots.MEMBER_OVERHEAD
        pending = self._pending.get(key)
        if pending is not None and pending.size + size > limits.max_bytes:
            self.flush(key)
            pending = None
        if pending is None:
            pending = self._pending[key] = _Pending()
            loop = asyncio.get_running_loop()
            pending.timer = loop.call_later(limits.max_wait, self.flush, key)
        pending.rows.append(row)
        pending.size += size
        self._held.add(row.flow_id)
        if len(pending.rows) >= limits.max_invoices:
            self.flush(key)

    def flush(self, key: Key) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        for row in pending.rows:
            self._held.discard(row.flow_id)
        if pending.rows and not self._closed:
            self._on_lot(pending.rows)

    def flush_connection(self, connection: str) -> None:
        """Hand over every lot gathering for ``connection`` now (it was removed by a reload)."""
        for key in [key for key in self._pending if key[0] == connection]:
            self.flush(key)

    def close(self) -> None:
        """Stop: waiting invoices stay ``batched`` in the journal for the next start."""
        self._closed = True
        for pending in self._pending.values():
            if pending.timer is not None:
                pending.timer.cancel()
        self._pending.clear()
        self._held.clear()


def write_lot(members: Sequence[tuple[str, lots.Content]], target: Path, packaging: str) -> None:
    """Pack ``members`` into ``target`` (in the spool) and make it durable."""
    try:
        lots.pack(members, target, packaging)
        fsync_dir(target.parent)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def journal_lot(
    db: JournalDB,
    *,
    lot_id: str,
    connection: str,
    name: str,
    spool: Path,
    packaging: str,
    interface_code: str,
    invoices: Sequence[tuple[str, str | None, str | None, str]],
    members: Sequence[str] = (),
    resubmit_of: str | None = None,
    detail: str | None = None,
) -> FlowRow:
    """Record a packed lot (state ``claimed``), its invoices, and mark ``members`` (batched
    flows) ``packed`` in it — all or nothing (call it inside a transaction)."""
    with db.transaction():
        row = db.insert(
            lot_id,
            connection,
            name,
            str(spool),
            packaging=packaging,
            interface_code=interface_code,
            resubmit_of=resubmit_of,
            detail=detail,
        )
        if row is None:
            raise RuntimeError(f"flow id {lot_id} is already in the journal")
        for flow_id in members:
            db.transition(flow_id, "packed", lot_id=lot_id)  # the table: from batched only
        db.add_invoices(lot_id, invoices)
    return row


def remove_members(paths: Sequence[Path]) -> None:
    """Remove packed invoices' spool files (their bytes are in the lot now)."""
    folders = set()
    for path in paths:
        try:
            os.unlink(path)
            folders.add(path.parent)
        except FileNotFoundError:
            pass
    for folder in folders:
        fsync_dir(folder)
