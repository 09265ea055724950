"""Filing: a decided flow's file goes to ``sent/`` (with its receipt) or ``error/`` (with its
``error.json``), and the journal says so.

:meth:`Filing.refuse` is the decision (journaled ``failing``, the folder chosen); the
``file_*`` methods carry it out. Deciding first means a crash in between is finished at the
next start, where the decision says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.flow.context import Context
from gateway.flow.filer import Filer
from gateway.flow.recovery import HEALS, local_fault
from gateway.folders import Placement
from gateway.journal import TERMINAL, Call, FlowRow, JournalDB

log = logs.get()


class Filing:
    """Refuses flows and files them in ``sent/`` or ``error/``, off the event loop."""

    def __init__(self, ctx: Context, filer: Filer) -> None:
        self._ctx = ctx
        self.filer = filer

    async def refuse(self, row: FlowRow, reason: str, message: str, **facts: Any) -> FlowRow:
        """Journal the flow ``failing`` for ``reason``, to be filed in its ``error/``, if it
        is still in the state ``row`` holds (compare-and-set, as :meth:`Context.transition
        <gateway.flow.context.Context.transition>`)."""
        folder = self._ctx.layout.error(row.connection)
        return await self._ctx.journal.call(
            Call(
                JournalDB.file_to,
                row.flow_id,
                "failing",
                folder,
                row.original_name,
                current=row.state,
                reason=reason,
                message=message,
                **facts,
            )
        )

    async def file_sent(self, row: FlowRow) -> None:
        """File a ``delivered`` flow in ``sent/`` with its ``.receipt.json``."""
        assert row.final_path and row.receipt
        target = Path(row.final_path)
        receipt = json.loads(row.receipt) | filed_as(row.original_name, target)
        await self.filer.place(Placement(Path(row.spool_path), target, ".receipt.json", receipt))
        await self._ctx.transition(row, "sent", unknown_outcome=0)
        self._ctx.metrics.sent.labels(row.connection).inc()
        log.info(
            "flow.sent",
            remote_name=row.remote_name,
            path=str(target),
            attempts=row.attempts,
            already_delivered=receipt.get("already_delivered", False),
        )

    async def file_error(self, row: FlowRow) -> None:
        """File a ``failing`` flow in ``error/`` with its ``.error.json``, and alert."""
        assert row.final_path
        ctx = self._ctx
        target = Path(row.final_path)
        document: dict[str, Any] = {
            "flow_id": row.flow_id,
            "connection": row.connection,
            "file": row.original_name,
            "reason": row.reason,
            "message": row.message,
            "attempts": row.attempts,
            "remote_name": row.remote_name,
            "unknown_outcome": bool(row.unknown_outcome),
            "claimed_at": row.created_at,
            "failed_at": ctx.now().isoformat(timespec="milliseconds"),
            "retry": f"raccord retry {row.flow_id}",
        }
        if row.validation:
            document["validation"] = json.loads(row.validation)
        document |= filed_as(row.original_name, target)
        if row.packaging is not None:
            document["invoices"] = await self.lot_invoices(row)
        await self.filer.place(Placement(Path(row.spool_path), target, ".error.json", document))
        await ctx.transition(row, "error")
        ctx.metrics.failed.labels(row.connection, row.reason or "unknown").inc()
        log.error("flow.failed", reason=row.reason, error=row.message, path=str(target))
        ctx.alerts.flow_failed(
            row.connection,
            row.flow_id,
            row.original_name,
            row.reason or "unknown",
            row.message or "",
            str(target),
        )

    async def lot_invoices(self, row: FlowRow) -> list[dict[str, Any]]:
        """The invoices a lot carries, as its receipt and ``error.json`` list them."""
        invoices = await self._ctx.journal.call(Call(JournalDB.invoices, row.flow_id))
        return [
            {
                "file": i["file"],
                "invoice_number": i["invoice_number"],
                "supplier_id": i["supplier_id"],
                "dropped_as": i["source_flow"],
            }
            for i in invoices
        ]

    async def fail_safely(
        self, flow_id: str, message: str, cause: BaseException | None = None
    ) -> None:
        """File a flow in ``error/`` after an unexpected error (``internal_error``), unless
        it is filed already or the partner has it; never raises.

        A ``cause`` that is a fault of data_dir's own file system (full, read-only, not
        writable: :func:`~gateway.flow.recovery.local_fault`) is filed under its own reason
        with what to do, since that is what the operator must fix, not a bug to report."""
        try:
            row = await self._ctx.journal.call(Call(JournalDB.get, flow_id))
            if row is None or row.state in TERMINAL:
                return  # filed already, or packed: its bytes travel in its lot
            if row.state == "delivered":
                # The partner has it: filing it in error/ would invite a second send. It stays
                # in the spool, journaled as delivered, and is filed in sent/ at the next start.
                log.error(
                    "flow.unfiled",
                    flow_id=flow_id,
                    error=message,
                    action="delivered but not filed; fix the cause and restart raccord",
                )
                return
            if row.state != "failing":
                row = await self.refuse(row, *failure(flow_id, message, cause))
            await self.file_error(row)
        except Exception:
            log.exception("flow.unfiled", flow_id=flow_id)


def failure(flow_id: str, message: str, cause: BaseException | None) -> tuple[str, str]:
    """The reason and message a flow that met ``cause`` is filed in ``error/`` with."""
    fault = local_fault(cause) if cause is not None else None
    if fault is None:
        return "internal_error", message
    reason, action = fault
    # In error/ the flow no longer heals by itself: the operator retries it once fixed.
    fix = action.removesuffix(HEALS)
    return reason, f"{message}; {fix}, then raccord retry {flow_id}"


def filed_as(original: str, target: Path) -> dict[str, str]:
    """What a report says when the file is filed under another name than it was dropped as."""
    if target.name == original:
        return {}
    return {
        "filed_as": target.name,
        "filed_as_because": (
            "the name as dropped is too long for the file system with its report beside it "
            "(shortened, ~ marks the cut), or was taken in this folder (the flow id added)"
        ),
    }
