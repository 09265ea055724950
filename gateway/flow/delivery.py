"""Delivery: sending a queued flow over its connection's sender, retrying with backoff.

Each attempt looks its connection and sender up afresh (a reload may have changed or removed
them) and is journaled ``sending`` before it starts, with ``unknown_outcome`` set: should the
daemon die during the send, the next start knows the partner may have the file, and the resend
checks first. A retryable failure goes back to ``queued`` and waits (full-jitter exponential
backoff); a permanent one, or the last attempt, refuses the flow.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.config import Connection
from gateway.flow.context import Context
from gateway.flow.filing import Filing
from gateway.flow.receipts import Receipts
from gateway.flow.refusals import Refusal, unknown_connection
from gateway.flow.senders import SenderPool
from gateway.journal import FlowRow
from gateway.ops import certificates
from protocols.base import AsyncReceipts, Outbound, Sender
from protocols.errors import TransferError

log = logs.get()


@dataclass(frozen=True)
class Attempt:
    """A send about to start: where it goes, and what its ``sending`` transition records."""

    conn: Connection
    sender: Sender
    resend: bool  # the partner may have the file already (an earlier attempt, or unknown)
    values: dict[str, Any]
    unknown_before: bool = False  # an earlier attempt's outcome was unknown


def backoff(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [d/2, d], d = initial·2^(attempt-1)."""
    delay = min(maximum, initial * (2 ** max(0, attempt - 1)))
    return rng.uniform(delay / 2, delay)


class Delivery:
    """Sends flows, one attempt after the other, and journals what the partner answered."""

    def __init__(
        self,
        ctx: Context,
        pool: SenderPool,
        receipts: Receipts,
        filing: Filing,
        rng: random.Random,
    ) -> None:
        self._ctx = ctx
        self._pool = pool
        self._receipts = receipts
        self._filing = filing
        self._rng = rng

    def next_attempt(self, row: FlowRow) -> Attempt | Refusal | None:
        """The next attempt at sending ``row``; a refusal if it cannot be sent; None if the
        gateway is stopping (the flow stays queued for the next start)."""
        ctx = self._ctx
        if ctx.stopping.is_set():
            return None
        # Looked up at each attempt: a reload may have changed or removed the connection.
        conn, sender = ctx.configured(row.connection), ctx.senders.get(row.connection)
        if conn is None or sender is None:
            return Refusal(*unknown_connection(row.connection))
        now = ctx.now()
        unusable = conn.unusable_reason(now.date()) or certificates.blocking(
            ctx.certificates.get(row.connection, []), now
        )
        if unusable is not None:
            return Refusal(*unusable)
        # An acknowledgement may overtake the send: findable by its key before it starts.
        # (The capability first: it is cheaper than a protocol isinstance() at every attempt.)
        key = (
            sender.receipt_key(row.flow_id)
            if sender.capabilities.async_receipts and isinstance(sender, AsyncReceipts)
            else None
        )
        values = {"attempts": row.attempts + 1, "unknown_outcome": 1, "receipt_key": key}
        return Attempt(
            conn,
            sender,
            bool(row.unknown_outcome) or row.attempts > 0,
            values,
            bool(row.unknown_outcome),
        )

    async def deliver(self, row: FlowRow, attempt: Attempt | None = None) -> FlowRow:
        """Send a queued flow, retrying as configured. ``attempt``: the first attempt, its
        ``sending`` transition already journaled (see :meth:`Router.route_claimed
        <gateway.flow.routing.Router.route_claimed>`)."""
        ctx = self._ctx
        while True:
            if attempt is None:
                next_attempt = self.next_attempt(row)
                if next_attempt is None:
                    return row
                if isinstance(next_attempt, Refusal):
                    return await self._filing.refuse(row, next_attempt.reason, next_attempt.message)
                attempt = next_attempt
                row = await ctx.transition(row, "sending", **attempt.values)
            conn, sender, resend = attempt.conn, attempt.sender, attempt.resend
            unknown_before = attempt.unknown_before
            attempt = None  # a retry starts another
            retry = ctx.config.gateway.retry
            outbound = Outbound(
                flow_id=row.flow_id,
                path=Path(row.spool_path),
                remote_name=row.remote_name or "",
                interface_code=row.interface_code or "",
                size=row.size or 0,
                sha256=row.sha256 or "",
                resend=resend,
            )
            log.info("flow.sending", attempt=row.attempts, resend=resend, protocol=conn.protocol)
            started = time.monotonic()
            try:
                async with self._pool.use(sender):
                    receipt = await sender.send(outbound)
            except TransferError as exc:
                # An attempt proven to have given the partner nothing adds no uncertainty.
                known = {"unknown_outcome": int(unknown_before)} if exc.nothing_sent else {}
                if exc.retryable and row.attempts < retry.max_attempts:
                    delay = backoff(row.attempts, retry.initial, retry.maximum, self._rng)
                    row = await ctx.transition(
                        row,
                        "queued",
                        reason=exc.reason,
                        message=str(exc),
                        **known,
                    )
                    ctx.metrics.retried.labels(row.connection, exc.reason).inc()
                    ctx.alerts.transfer_failed(row.connection, exc.reason, str(exc))
                    log.warning(
                        "flow.retry",
                        reason=exc.reason,
                        error=str(exc),
                        attempt=row.attempts,
                        retry_in=round(delay, 3),
                    )
                    await ctx.pause(delay)
                    continue
                message = str(exc)
                ctx.alerts.transfer_failed(row.connection, exc.reason, message)
                if exc.retryable:
                    message += f" (gave up after {row.attempts} attempts)"
                return await self._filing.refuse(row, exc.reason, message, **known)
            ctx.metrics.transferred(row.connection, time.monotonic() - started, outbound.size)
            ctx.alerts.transfer_succeeded(row.connection)
            if receipt.awaiting:
                return await self._receipts.await_receipt(row, conn, receipt)
            return await self._receipts.delivered(row, conn, receipt)
