"""Lotting: invoices routed to a connection that packs lots wait ``batched``, then leave
together as one archive, a flow of its own.

An invoice is checked before it waits (under Complète it must carry what Chorus Pro checks
first, so that it cannot sink its lot), then handed to the
:class:`~gateway.flow.lots.Assembler`, which calls back with each full lot. Packing writes the
archive (durable), journals the lot, then removes the members' spool copies; the lot is then
started like any claimed flow. See :mod:`gateway.flow.lots` for why this order survives a
crash.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from flows import lots
from flows.analysis import Analysis
from gateway import logs
from gateway.config import Connection, Lot, Mode
from gateway.flow.context import Context
from gateway.flow.filing import Filing
from gateway.flow.lots import Assembler, journal_lot, remove_members, write_lot
from gateway.flow.recovery import local_fault
from gateway.flow.refusals import duplicate_message, unknown_connection
from gateway.folders import spool_name
from gateway.journal import Call, FlowRow, JournalDB, JournalUnavailable

log = logs.get()


class Lotting:
    """Batches invoices, packs full lots and starts them."""

    def __init__(
        self,
        ctx: Context,
        filing: Filing,
        *,
        new_id: Callable[[], str],
        start: Callable[[str], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
    ) -> None:
        self._ctx = ctx
        self._filing = filing
        self._new_id = new_id  # a flow identifier for each lot
        self._start = start  # runs a packed lot as a flow
        self._spawn = spawn  # runs a packing in the background (awaited by drain)
        self.assembler = Assembler(self._limits, self._on_lot)

    async def batch(
        self, row: FlowRow, conn: Connection, analysis: Analysis, facts: dict[str, Any]
    ) -> FlowRow:
        """Validate a routed invoice for a lot and leave it ``batched`` (or refuse it)."""
        refuse = self._filing.refuse
        code = analysis.interface_code or ""
        mode = conn.interfaces[code]
        if mode is Mode.COMPLETE:
            missing = lots.missing_for_complete(analysis)
            if missing:
                return await refuse(
                    row,
                    "unfit_for_lot",
                    f"no {', '.join(missing)} found in this {analysis.format.label}; under "
                    f"Complète ({code} on {conn.name}) one faulty invoice rejects its whole lot, "
                    "so it was not packed. Correct the invoice and drop it again",
                    **facts,
                )
        if analysis.size + lots.MEMBER_OVERHEAD > conn.lot.max_bytes:
            return await refuse(
                row,
                "too_large",
                f"{analysis.size} bytes does not fit in a lot of at most {conn.lot.max_bytes} "
                f"bytes (lot.max_bytes of {conn.name})",
                **facts,
            )
        batched, earlier = await self._ctx.journal.call(
            Call(
                JournalDB.queue_unless_duplicate,
                row.flow_id,
                (analysis.sha256, analysis.supplier_id, analysis.invoice_number),
                check=not row.forced,
                to_state="batched",
                mode=mode.value,
                **facts,
            )
        )
        if batched is None:
            assert earlier is not None
            return await refuse(
                row, "duplicate", duplicate_message(row, earlier, analysis), **facts
            )
        log.info(
            "flow.batched",
            interface_code=code,
            invoice_number=analysis.invoice_number,
            format=analysis.format.value,
        )
        return batched

    def _limits(self, connection: str) -> Lot:
        conn = self._ctx.configured(connection)  # None: removed by a reload; _pack refuses them
        return conn.lot if conn is not None else Lot(max_invoices=1)

    async def _taken_elsewhere(self, rows: list[FlowRow]) -> bool:
        """Whether some of these invoices left ``batched`` while this lot was being packed
        (on a shared journal, another node's start put them in its own lot: the journal let
        that lot take them, and refused this one). If so, the invoices still waiting go back
        to wait for a lot here, instead of being filed in error."""
        try:
            states = await self._ctx.journal.call(
                Call(JournalDB.states_of, [row.flow_id for row in rows])
            )
        except Exception:  # cannot tell: filed as a failed packing, as before
            return False
        if all(states.get(row.flow_id) == "batched" for row in rows):
            return False
        waiting = [row for row in rows if states.get(row.flow_id) == "batched"]
        log.warning(
            "lot.members_taken",
            connection=rows[0].connection,
            taken=[row.flow_id for row in rows if states.get(row.flow_id) != "batched"],
            waiting=len(waiting),
            action="none: the other invoices wait for the next lot",
        )
        for row in waiting:
            self.assembler.add(row)
        return True

    def _on_lot(self, rows: list[FlowRow]) -> None:
        if self._ctx.stopping.is_set():
            return  # they stay batched and are packed at the next start
        self._spawn(self._pack(rows), f"lot-{rows[0].flow_id}")

    async def _pack(self, rows: list[FlowRow]) -> None:
        """Pack waiting invoices into a lot: archive (durable), journal, member files removed;
        then the lot runs as a flow."""
        ctx = self._ctx
        first = rows[0]
        connection, code = first.connection, first.interface_code or ""
        conn = ctx.configured(connection)
        if conn is None:  # removed by a reload while its invoices waited
            for row in rows:
                try:
                    await self._filing.file_error(
                        await self._filing.refuse(row, *unknown_connection(connection))
                    )
                except Exception:  # it stays batched; the next start files it
                    log.exception("lot.pack_failed", connection=connection, flow_id=row.flow_id)
            return
        try:
            packaging = conn.lot.packaging
            lot_id = self._new_id()
            name = lots.lot_name(lot_id, packaging)
            target = ctx.layout.spool(connection) / spool_name(lot_id, name)
            names = lots.member_names([row.original_name for row in rows])
            members = [(n, Path(row.spool_path)) for n, row in zip(names, rows, strict=True)]
            await asyncio.to_thread(write_lot, members, target, packaging)
            invoices = [
                (n, row.invoice_number, row.supplier_id, row.flow_id)
                for n, row in zip(names, rows, strict=True)
            ]
            try:
                await ctx.journal.call(
                    Call(
                        journal_lot,
                        lot_id=lot_id,
                        connection=connection,
                        name=name,
                        spool=target,
                        packaging=packaging,
                        interface_code=code,
                        invoices=invoices,
                        members=[row.flow_id for row in rows],
                    )
                )
            except Exception as exc:
                # Refused, so nothing was written; or the journal process died with the call,
                # and the journal says. (Not on cancellation, or when it cannot say: the archive
                # stays, and reconciliation keeps it if the lot was journaled, removes it if not.)
                if not isinstance(exc, JournalUnavailable) or not await ctx.journal.knows(lot_id):
                    await asyncio.to_thread(functools.partial(target.unlink, missing_ok=True))
                    raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if await self._taken_elsewhere(rows):
                return
            fault = local_fault(exc)  # named, without a traceback: ops can fix it
            failed = log.error if fault else log.exception
            failed("lot.pack_failed", connection=connection, interface_code=code, error=str(exc))
            for row in rows:
                await self._filing.fail_safely(
                    row.flow_id, f"could not be packed in a lot: {exc!r}", exc
                )
            return
        # Journaled: the invoices travel in the lot now, whatever happens to their spool copies
        # (a copy left behind is removed at the next start).
        try:
            await asyncio.to_thread(remove_members, [Path(row.spool_path) for row in rows])
        except OSError as exc:
            log.warning("lot.cleanup_failed", connection=connection, flow_id=lot_id, error=str(exc))
        log.info(
            "lot.packed",
            connection=connection,
            flow_id=lot_id,
            file=name,
            interface_code=code,
            invoices=len(rows),
            members=[row.flow_id for row in rows],
        )
        self._start(lot_id)
