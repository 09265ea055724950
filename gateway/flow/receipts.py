"""Receipts: what a flow the partner took is filed with, and the acknowledgements that come
later (asynchronous AS2 MDN).

A synchronous partner answers within the send: the flow is journaled ``delivered`` with its
receipt. One that acknowledges later leaves the flow ``awaiting_receipt`` with no task running;
:meth:`Receipts.settle` decides it when the acknowledgement arrives, :meth:`Receipts.expire`
when the wait is over. Both journal the decision (``delivered`` or ``failing``), then hand the
flow back to the dispatcher's steps, which file it as its state says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog

from gateway import logs
from gateway.config import Connection
from gateway.flow.context import Context, Running
from gateway.flow.filing import Filing
from gateway.flow.recovery import local_fault
from gateway.flow.senders import SenderPool
from gateway.flow.window import Window
from gateway.journal import WAITING, Call, FlowRow, JournalDB
from protocols.base import AsyncReceipts, Receipt
from protocols.errors import ForeignAnswer, TransferError

log = logs.get()

#: Seconds an acknowledgement that overtook its send waits for that send to be journaled.
SETTLE_PATIENCE = 5.0
#: Acknowledgements kept, at most, until a fault of data_dir lets them be journaled.
UNRECORDED = 1000


class Receipts:
    """Journals what the partner answered: at once, or later."""

    def __init__(
        self,
        ctx: Context,
        pool: SenderPool,
        filing: Filing,
        running: Running,
        window: Window,
        advance: Callable[[FlowRow], Awaitable[None]],
    ) -> None:
        self._ctx = ctx
        self._window = window  # the leases this node holds for its flows' tasks
        self._pool = pool
        self._filing = filing
        self._running = running
        self._advance = advance  # files a decided flow, as its state says
        # receipt key → answer: acknowledgements a fault of data_dir (disk full…) kept from
        # being journaled, judged again at each expiry round (the partner may not post again)
        self._unrecorded: OrderedDict[str, bytes] = OrderedDict()

    def document(self, row: FlowRow, conn: Connection, receipt: Receipt) -> dict[str, Any]:
        """The ``.receipt.json`` of a flow the partner took (``sent_at``: when it took it)."""
        earlier = json.loads(row.receipt) if row.receipt else {}
        return {
            "flow_id": row.flow_id,
            "connection": conn.name,
            "file": row.original_name,
            "remote_name": receipt.remote_name,
            "protocol": receipt.protocol,
            "partner_answer": dict(receipt.details),
            "already_delivered": receipt.already_delivered,
            "interface_code": row.interface_code,
            "invoice_number": row.invoice_number,
            "sha256": row.sha256,
            "size": row.size,
            "attempts": row.attempts,
            "claimed_at": row.created_at,
            "sent_at": earlier.get("sent_at") or self._ctx.now().isoformat(timespec="milliseconds"),
            "validation": json.loads(row.validation) if row.validation else None,
        }

    async def delivered(self, row: FlowRow, conn: Connection, receipt: Receipt) -> FlowRow:
        """Journal the flow ``delivered`` (from the ``sending`` or ``awaiting_receipt`` that
        ``row`` holds: compare-and-set), its receipt and its place in ``sent/`` decided."""
        ctx = self._ctx
        document = self.document(row, conn, receipt)
        if row.state in WAITING:
            document["acknowledged_at"] = ctx.now().isoformat(timespec="milliseconds")
        if row.packaging is not None:
            document["invoices"] = await self._filing.lot_invoices(row)
        folder = ctx.layout.sent(conn.name, ctx.now().date())
        return await ctx.journal.call(
            Call(
                JournalDB.file_to,
                row.flow_id,
                "delivered",
                folder,
                row.original_name,
                current=row.state,
                receipt=json.dumps(document, default=str),
                reason=None,
                message=None,
            )
        )

    async def await_receipt(self, row: FlowRow, conn: Connection, receipt: Receipt) -> FlowRow:
        """The partner took the flow and acknowledges later: journal what the acknowledgement
        will be judged against, and until when it is awaited."""
        document = self.document(row, conn, receipt)
        due = self._ctx.now() + timedelta(seconds=receipt.wait)
        row = await self._ctx.transition(
            row,
            "awaiting_receipt",
            receipt=json.dumps(document, default=str),
            receipt_due=due.isoformat(timespec="milliseconds"),
            unknown_outcome=0,
        )
        log.info(
            "flow.awaiting_receipt",
            remote_name=row.remote_name,
            receipt_key=row.receipt_key,
            due=row.receipt_due,
        )
        return row

    async def settle(self, receipt_key: str, answer: bytes) -> str:
        """Hand a partner's late acknowledgement to the flow awaiting it; return what became
        of the flow: ``sent``, ``failed``, ``settled`` (it was decided before: a repeated or
        late acknowledgement, logged and otherwise ignored), ``unknown`` (no flow refers to
        this key), ``foreign`` (not from the flow's partner: ignored, the flow still waits),
        ``busy`` (the flow is being worked on: the partner should send again) or ``error``
        (an unexpected failure, logged; the flow still waits).

        The decision is journaled before this returns, so the partner may be told "received".
        """
        journal, running = self._ctx.journal, self._running
        row = await journal.call(Call(JournalDB.awaiting, receipt_key))
        sending = running.flow_tasks.get(row.flow_id) if row and row.state == "sending" else None
        if sending is not None:
            # The acknowledgement overtook the send it answers (the partner posted its MDN
            # before we read its HTTP answer): let that send finish and be journaled.
            await asyncio.wait({sending}, timeout=SETTLE_PATIENCE)
            row = await journal.call(Call(JournalDB.awaiting, receipt_key))
        if row is None:
            log.warning("flow.receipt_unknown", receipt_key=receipt_key)
            return "unknown"
        if row.state not in WAITING:
            log.warning(
                "flow.receipt_late",
                connection=row.connection,
                flow_id=row.flow_id,
                file=row.original_name,
                receipt_key=receipt_key,
                state=row.state,
            )
            return "busy" if row.state == "sending" else "settled"
        if row.flow_id in running.active:
            return "busy"
        # Under the flow's lease, as any other work on it: on a shared journal another node's
        # window could otherwise take the flow once delivered and file it at the same time.
        # A flow healing here keeps its lease in the window (to be tried again): that lease
        # is used, and left to the window; another is taken, and given back after.
        kept = row.flow_id in self._window.leased
        until = self._window.until()
        if not kept and not await journal.call(Call(JournalDB.take, row.flow_id, until)):
            return "busy"  # another node is working on it (expiring its wait): send again
        running.active.add(row.flow_id)
        try:
            with structlog.contextvars.bound_contextvars(
                connection=row.connection, flow_id=row.flow_id, file=row.original_name
            ):
                decided: FlowRow | None = None
                try:
                    outcome, decided = await self._judge(row, answer)
                    if decided is not None:
                        await self._advance(decided)
                    return outcome
                except Exception as exc:
                    fault = local_fault(exc)
                    if fault is None:
                        # The flow goes on waiting (and expires if this keeps happening).
                        log.exception("flow.receipt_failed", receipt_key=receipt_key)
                        return "error"
                    if decided is None:  # it came, not journaled: judged again once healed
                        self._unrecorded[receipt_key] = answer
                        if len(self._unrecorded) > UNRECORDED:
                            self._unrecorded.popitem(last=False)
                    log.error(
                        "flow.local_fault",
                        reason=fault[0],
                        error=str(exc),
                        action=fault[1],
                        receipt_key=receipt_key,
                    )
                    return "error"
        finally:
            running.active.discard(row.flow_id)
            if not kept:
                with contextlib.suppress(Exception):  # else it runs out by itself
                    await journal.call(Call(JournalDB.release, [row.flow_id]))

    async def _judge(self, row: FlowRow, answer: bytes) -> tuple[str, FlowRow | None]:
        """Judge the partner's late ``answer`` for the waiting ``row``: ``("sent", row
        delivered)``, ``("failed", row failing)``, or ``("foreign", None)``."""
        conn = self._ctx.config.connection(row.connection)
        sender = self._ctx.senders[row.connection]
        assert row.receipt is not None
        stored = json.loads(row.receipt)
        pending = Receipt(
            stored["protocol"],
            stored["remote_name"],
            stored["partner_answer"],
            awaiting=True,
        )
        if not isinstance(sender, AsyncReceipts):
            raise TypeError(f"the {conn.protocol} sender cannot take late acknowledgements")
        try:
            async with self._pool.use(sender):
                receipt = await sender.settle(pending, answer)
        except ForeignAnswer as exc:
            log.error("flow.receipt_foreign", error=str(exc), action="ignored; still waiting")
            return "foreign", None
        except TransferError as exc:
            return "failed", await self._filing.refuse(row, exc.reason, str(exc))
        return "sent", await self.delivered(row, conn, receipt)

    async def expire(self) -> int:
        """File in ``error/`` the flows whose acknowledgement did not come in time; first,
        journal the acknowledgements that came but could not be journaled then."""
        for key, answer in list(self._unrecorded.items()):
            del self._unrecorded[key]
            try:
                outcome = await self.settle(key, answer)
            except BaseException:  # the journal failed before judging it: the next round
                self._unrecorded[key] = answer
                raise
            if outcome == "busy":  # kept again if the fault lasts
                self._unrecorded[key] = answer
        now = self._ctx.now().isoformat(timespec="milliseconds")
        rows = await self._ctx.journal.call(Call(JournalDB.receipts_due, now))
        expired = 0
        for row in rows:
            if row.flow_id in self._running.active or row.receipt_key in self._unrecorded:
                continue
            self._running.active.add(row.flow_id)
            try:
                with structlog.contextvars.bound_contextvars(
                    connection=row.connection, flow_id=row.flow_id, file=row.original_name
                ):
                    message = (
                        f"the partner took this flow but did not acknowledge it (receipt "
                        f"{row.receipt_key}) by {row.receipt_due}; it may have it: ask the "
                        f"partner, or raccord retry {row.flow_id} (the resend carries the same "
                        "identity, so a partner that has it answers that it is a duplicate)"
                    )
                    try:
                        await self._advance(
                            await self._filing.refuse(row, "receipt_timeout", message)
                        )
                        expired += 1
                    except Exception:  # the others, and the daemon, go on
                        log.exception("flow.expire_failed", receipt_key=row.receipt_key)
            finally:
                self._running.active.discard(row.flow_id)
        return expired
