"""The dispatcher: takes each claimed flow through analysis, routing, sending and filing.

For one flow (see the state diagram in :mod:`flows.lifecycle`)::

    claim ─▶ analyse (flows/) ─▶ route (connection + mode) ─▶ duplicate check ─▶ queued
          ─▶ send (protocols/, retries with backoff) ─▶ delivered ─▶ sent/  (with receipt)
    any refusal or permanent failure                   ─▶ failing   ─▶ error/ (with error.json)

The dispatcher supervises: it claims files, runs one task per flow in flight (at most its
:mod:`~gateway.flow.window`, each flow under a lease; the others wait in the journal), and
advances each flow by looking its state up in :attr:`Dispatcher.steps`, a table from
:class:`FlowState` to the coroutine that moves it on, until the flow waits or is done. The
work of each step is done by a collaborator, all sharing one :class:`Context`:

* :mod:`~gateway.flow.routing` — analysis, validation, routing, remote name (``claimed``);
* :mod:`~gateway.flow.lotting` — invoices waiting ``batched`` for their lot, and packing;
* :mod:`~gateway.flow.delivery` — attempts and retries over the connection's sender;
* :mod:`~gateway.flow.receipts` — what the partner answered, at once or later (``settle``);
* :mod:`~gateway.flow.filing` — refusals, and filing in ``sent/`` or ``error/``;
* :mod:`~gateway.flow.recovery` — reconciliation at start, resuming a flow taken from the
  journal (also a dead node's), ``raccord retry``, local faults.

A partner that acknowledges later (asynchronous AS2 MDN) leaves the flow ``awaiting_receipt``
with no task running: :meth:`Dispatcher.settle` finishes it when the acknowledgement arrives,
:meth:`Dispatcher.expire_receipts` files it in ``error/`` when the wait is over.

Every decision is journaled *before* the file moves, so a crash between the two is finished by
:meth:`Dispatcher.reconcile` at the next start. A flow's task never lets an exception escape:
an unexpected error files the flow in ``error/`` with reason ``internal_error`` and the daemon
goes on; a fault of data_dir's own file system (disk full...) is tried again once it may have
healed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from flows import naming
from flows.lifecycle import FlowState
from gateway import logs
from gateway.config import Checking, Config
from gateway.flow.analyser import Analyser
from gateway.flow.claims import Claim, Claimer, rename_all
from gateway.flow.context import Context, Now, Running, Sleep, utc_now
from gateway.flow.delivery import Attempt, Delivery, backoff
from gateway.flow.filer import Filer
from gateway.flow.filing import Filing
from gateway.flow.lotting import Lotting
from gateway.flow.receipts import SETTLE_PATIENCE, Receipts
from gateway.flow.recovery import (
    FILE_REASONS,
    CannotSucceed,
    Recovery,
    local_fault,
    orphan_age,
    requeue,
)
from gateway.flow.refusals import Refusal, unknown_connection
from gateway.flow.routing import Router, route, route_code
from gateway.flow.senders import SenderPool
from gateway.flow.validator import Validator, ValidatorUnavailable
from gateway.flow.window import LEASE_LOST, Window
from gateway.folders import Layout, display_name, spool_name
from gateway.journal import Call, FlowRow, Journal, JournalDB, JournalUnavailable, LeaseLost
from gateway.ops import certificates
from gateway.ops.alerts import Alerter
from gateway.ops.metrics import Metrics
from protocols.base import Prepares, Sender

__all__ = [
    "FILE_REASONS",
    "JOURNAL_LOST_RESUMES",
    "PREPARE_EVERY",
    "SETTLE_PATIENCE",
    "Attempt",
    "CannotSucceed",
    "Claim",
    "Dispatcher",
    "Now",
    "Refusal",
    "Sleep",
    "backoff",
    "local_fault",
    "rename_all",
    "requeue",
    "route",
    "route_code",
    "utc_now",
]

log = logs.get()

#: Flows in flight at once on a node, by default (the others wait in the journal): measured,
#: see docs/performance.md; SFTP's 32 uploads per connection and the batches of the analysis
#: and journal workers need a few hundred flows in flight to be kept busy.
WINDOW = 512

#: Seconds between two "a file is coming" notices to a connection's sender (Prepares).
PREPARE_EVERY = 1.0

#: Times a flow is resumed from the journal after the journal process died with its call;
#: then it is filed in error/ (reason internal_error).
JOURNAL_LOST_RESUMES = 3

#: Seconds before a flow stopped by a local fault is tried again: doubled each time, at most.
HEAL_FIRST, HEAL_MAX = 2.0, 60.0

#: The states a flow leaves only through its connection: refused at once if a reload removed it.
NEEDS_CONNECTION = frozenset(
    {FlowState.CLAIMED, FlowState.BATCHED, FlowState.QUEUED, FlowState.SENDING}
)

#: One step of a flow: the row it leaves, or None when the flow stops here for now.
Step = Callable[[FlowRow], Awaitable[FlowRow | None]]


def _heal_delay(faults: int) -> float:
    return min(HEAL_MAX, HEAL_FIRST * 2.0 ** min(faults - 1, 10))


class Dispatcher:
    """Owns the flows of one running gateway: starts a task per flow and advances it, step by
    step, through the table :attr:`steps` (one coroutine per :class:`FlowState`)."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        senders: dict[str, Sender],
        *,
        now: Now = utc_now,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        max_in_flight: int | None = None,
        metrics: Metrics | None = None,
        alerts: Alerter | None = None,
    ) -> None:
        self.ctx = Context(
            config=config,
            journal=journal,
            senders=senders,
            certificates=certificates.by_connection(config),
            metrics=metrics or Metrics(),
            alerts=alerts or Alerter(None),
            layout=Layout(config.gateway.data_dir),
            now=now,
            sleep=sleep,
        )
        self.running = Running()
        self._active = self.running.active  # flows being worked on here
        # The flows in flight here, at most max_in_flight (the others wait in the journal).
        # A flow holds its place for its batches' round trips, so this also bounds the
        # throughput (Little's law); docs/performance.md has the figures behind the default.
        self.window = Window(
            self.ctx,
            self.running,
            size=max_in_flight or WINDOW,
            lease_timeout=config.journal.lease_timeout,
        )
        self._healing: dict[str, int] = {}  # flow -> local faults met in a row (disk full...)
        self._flow_ids = naming.FlowIds()
        self.claimer = Claimer(
            self.ctx,
            self.window,
            self.running,
            new_id=self._new_flow_id,
            prepare=self._prepare_sender,
            start=self.start,
            claim_as=self._claim_as,
        )
        self._prepared: dict[str, float] = {}  # connection -> when its sender was last told
        self.pool = SenderPool()
        self.filing = Filing(self.ctx, Filer())
        self.receipts = Receipts(
            self.ctx, self.pool, self.filing, self.running, self.window, self._advance
        )
        self.delivery = Delivery(
            self.ctx,
            self.pool,
            self.receipts,
            self.filing,
            rng or random.Random(),  # noqa: S311 - jitter, not cryptography
        )
        self.lotting = Lotting(
            self.ctx,
            self.filing,
            new_id=self._new_flow_id,
            start=self._start_lot,
            spawn=self.running.spawn,
        )
        self.router = Router(
            self.ctx,
            self.filing,
            self.delivery,
            self.lotting,
            Analyser(config.gateway.analysis_timeout),
            Validator(
                workers=config.gateway.validation_workers or None,
                timeout=config.gateway.analysis_timeout,
            ),
        )
        self.recovery = Recovery(
            self.ctx, start=self.start, orphan_age=orphan_age(config), window=self.window
        )
        #: What moves a flow on from each state; a state missing here waits (for its lot, its
        #: acknowledgement) or is final.
        self.steps: dict[FlowState, Step] = {
            FlowState.CLAIMED: self._route,
            FlowState.BATCHED: self._wait_for_lot,
            FlowState.QUEUED: self._send,
            FlowState.SENDING: self._send,
            FlowState.DELIVERED: self._file_sent,
            FlowState.FAILING: self._file_error,
        }

    @property
    def config(self) -> Config:
        return self.ctx.config

    @property
    def journal(self) -> Journal:
        return self.ctx.journal

    @property
    def stopping(self) -> asyncio.Event:
        return self.ctx.stopping

    @property
    def busy(self) -> int:
        return len(self._active)

    async def open(self) -> None:
        """Start the analysis and filing workers (else they start with the first file), and
        the validation workers if a connection validates: they compile the rule sets as they
        start (seconds), which had better not hold up the first files."""
        await asyncio.gather(
            self.router.analyser.open(), self.filing.filer.open(), self._open_validator()
        )

    async def _open_validator(self) -> None:
        if all(conn.validation is Checking.OFF for conn in self.config.connections):
            return
        try:
            await self.router.validator.open()
        except ValidatorUnavailable as exc:
            log.error("validation.unavailable", error=str(exc))

    async def close(self) -> None:
        """End the workers (after :meth:`drain`; a later file would start them again)."""
        await asyncio.gather(
            self.router.analyser.close(), self.filing.filer.close(), self.router.validator.close()
        )

    # -- reload ---------------------------------------------------------------------------

    def reconfigure(
        self,
        config: Config,
        senders: dict[str, Sender],
        in_use: dict[str, list[certificates.InUse]],
    ) -> None:
        """Take a reloaded configuration: from now on every attempt looks its connection and
        sender up here. A transfer under way finishes on the sender it started with (see
        :meth:`retire`); its next attempt, if any, uses the new one; a flow whose connection
        was removed goes to ``error/`` with reason ``unknown_connection`` at its next step
        (invoices waiting for a lot on it at once). ``in_use`` is
        :func:`gateway.ops.certificates.by_connection` of ``config``, read off the event loop."""
        ctx = self.ctx
        removed = {c.name for c in ctx.config.connections} - {c.name for c in config.connections}
        ctx.config, ctx.senders, ctx.certificates = config, senders, in_use
        self.router.validator.timeout = config.gateway.analysis_timeout
        self.router.analyser.timeout = config.gateway.analysis_timeout
        for name in removed:
            self.lotting.assembler.flush_connection(name)

    async def retire(self, sender: Sender) -> None:
        """Close ``sender`` (replaced or removed by a reload) once no transfer uses it."""
        await self.pool.retire(sender)

    # -- intake ---------------------------------------------------------------------------

    async def claim(self, connection: str, path: Path) -> str | None:
        """Start the flow of ``path`` (in ``outbox/<connection>/``); return its identifier.

        The flow's first step claims the file: an atomic rename into the spool, made on a
        worker thread (with the renames of the other files of the burst), since a rename on
        the event loop waits for the file system under load. A file claimed meanwhile by an
        earlier event or scan, or removed by ops, ends its flow there. The claimed file is
        journaled next; should the daemon die in between, reconciliation finds the spool file
        and journals it then. When the window is full (or older flows wait in the journal)
        the file is only claimed and journaled, to wait its turn; at most a window's worth of
        such claims run at once, and this waits for one of them to end (intake slows down).
        """
        if self.stopping.is_set():
            return None
        name = display_name(path.name)
        if self.window.direct():
            return self._claim_as(connection, path, name)
        # The window is full, or older flows wait: journal this one to wait its turn.
        return await self.claimer.claim_to_wait(connection, path, name)

    def _new_flow_id(self) -> str:
        return self._flow_ids.new(self.ctx.now())

    def _claim_as(self, connection: str, path: Path, name: str) -> str:
        flow_id = self._new_flow_id()
        target = self.ctx.layout.spool(connection) / spool_name(flow_id, name)
        self.start(flow_id, claimed=Claim(connection, name, path, target))
        return flow_id

    def _prepare_sender(self, connection: str) -> None:
        """A file is coming: a sender that connects on first use (:class:`Prepares`) may
        connect while the file is analysed, rather than make the first file of a burst wait
        for its login after routing. At most once every :data:`PREPARE_EVERY` seconds per
        connection."""
        now = time.monotonic()
        if now - self._prepared.get(connection, -PREPARE_EVERY) < PREPARE_EVERY:
            return
        self._prepared[connection] = now
        sender = self.ctx.senders.get(connection)
        if isinstance(sender, Prepares):
            sender.prepare()

    # -- supervision ----------------------------------------------------------------------

    def start(
        self,
        flow_id: str,
        *,
        claimed: Claim | None = None,
        lost: int = 0,
        leased: FlowRow | None = None,
    ) -> bool:
        """Run the flow in the background, once, in a place of the window; False if it is
        being worked on here already (nothing is done then).

        ``claimed``: a file to claim first; the flow is not journaled yet. ``lost``: how many
        times the journal's answer was lost for this flow (it is resumed from the journal).
        ``leased``: its row, leased by the window already; else the flow's first step leases
        it (and stops there if another node holds it).
        """
        if flow_id in self._active:
            return False
        self._active.add(flow_id)
        self.window.enter(flow_id)
        self.running.run_flow(flow_id, self._run_flow(flow_id, claimed, lost, leased=leased))
        return True

    def _start_lot(self, lot_id: str) -> None:
        """A lot just packed starts at once, ahead of the backlog (it takes its lease)."""
        self.start(lot_id)

    async def drain(self, grace: float) -> None:
        """Stop starting work; wait up to ``grace`` seconds, then cancel what still runs.

        A cancelled send may have delivered all, some or none of its file: its row stays in
        ``sending`` and the next start resends it under the same remote name.
        """
        self.stopping.set()
        self.window.wake()
        self.lotting.assembler.close()
        if self.running.tasks:
            _, pending = await asyncio.wait(set(self.running.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await self.window.release_all()

    async def _run_flow(
        self,
        flow_id: str,
        claimed: Claim | None,
        lost: int = 0,
        *,
        leased: FlowRow | None = None,
    ) -> None:
        resume = False
        try:
            if claimed is not None and not lost:
                if not await self.claimer.take(flow_id, claimed):
                    return
                row = await self.claimer.journal(flow_id, claimed)
                if row is None:
                    # The identifier is already in the journal: only possible if the clock was
                    # set back across a restart. The file takes a new identity.
                    log.error("flow.id_taken", flow_id=flow_id, file=claimed.name)
                    self._claim_as(claimed.connection, claimed.spool, claimed.name)
                    return
            elif leased is not None:
                row = leased
            else:
                row = await self.journal.call(Call(JournalDB.take, flow_id, self.window.until()))
                if row is None and claimed is not None:  # resumed: the claim was not journaled
                    row = await self.claimer.journal(flow_id, claimed)
            if row is None:
                return  # another node holds it (or it is gone)
            self.window.hold([flow_id])
            with structlog.contextvars.bound_contextvars(
                connection=row.connection, flow_id=flow_id, file=row.original_name
            ):
                await self._advance(row)
        except asyncio.CancelledError:
            raise
        except LeaseLost as exc:  # this node was paused: the flow is another node's now
            log.error("flow.lease_lost", flow_id=flow_id, error=str(exc), action=LEASE_LOST)
        except JournalUnavailable as exc:
            if lost < JOURNAL_LOST_RESUMES:
                # Whether the call was applied is unknown; the journal (a new process) knows:
                # the flow goes on from what it says, as it would after a restart (a send
                # whose outcome is unknown is checked with the partner first).
                log.warning("flow.journal_lost", flow_id=flow_id, error=str(exc), action="resumed")
                resume = True
            else:
                log.exception("flow.internal_error", flow_id=flow_id)
                await self.filing.fail_safely(flow_id, f"internal error: {exc!r}; please report it")
        except Exception as exc:
            fault = local_fault(exc)
            if fault is None:
                log.exception("flow.internal_error", flow_id=flow_id)
                await self.filing.fail_safely(flow_id, f"internal error: {exc!r}; please report it")
            else:
                heal = self._healing.get(flow_id, 0) + 1
                self._healing[flow_id] = heal
                log.error(
                    "flow.local_fault",
                    flow_id=flow_id,
                    reason=fault[0],
                    error=str(exc),
                    action=fault[1],
                    retry_in=_heal_delay(heal),
                )
        else:
            self._healing.pop(flow_id, None)
        finally:
            self._active.discard(flow_id)
            self.window.leave(flow_id, keep_lease=resume or flow_id in self._healing)
        if resume:
            self.start(flow_id, claimed=claimed, lost=lost + 1)
        elif flow_id in self._healing and not self.stopping.is_set():
            self._heal_later(flow_id, claimed, max(lost, 1) if claimed is not None else lost)

    def _heal_later(self, flow_id: str, claimed: Claim | None, lost: int) -> None:
        """Resume the flow from the journal once a local fault may have healed (space freed):
        it goes on from its journaled state, as after a restart."""

        async def later() -> None:
            await self.ctx.pause(_heal_delay(self._healing.get(flow_id, 1)))
            if not self.stopping.is_set():  # else the next start resumes it
                # ``lost`` >= 1: a claimed file is in the spool already, not taken again.
                self.start(flow_id, claimed=claimed, lost=lost)

        self.running.spawn(later(), f"heal-{flow_id}")

    # -- the steps ------------------------------------------------------------------------

    async def _advance(self, row: FlowRow) -> None:
        """Take the flow through the steps its states call for, until it waits or is done."""
        if row.state in NEEDS_CONNECTION and self.ctx.configured(row.connection) is None:
            row = await self.filing.refuse(row, *unknown_connection(row.connection))
        current: FlowRow | None = row
        while current is not None:
            step = self.steps.get(FlowState(current.state))
            if step is None:
                return  # waiting for its acknowledgement, or finished
            current = await step(current)

    async def _route(self, row: FlowRow) -> FlowRow | None:
        row, attempt = await self.router.route_claimed(row)
        if attempt is None:
            return row
        return await self._send(row, attempt)

    async def _wait_for_lot(self, row: FlowRow) -> None:
        self.lotting.assembler.add(row)

    async def _send(self, row: FlowRow, attempt: Attempt | None = None) -> FlowRow | None:
        row = await self.delivery.deliver(row, attempt)
        if row.state in (FlowState.QUEUED, FlowState.SENDING):
            return None  # the gateway is stopping: sent at the next start
        return row

    async def _file_sent(self, row: FlowRow) -> None:
        await self.filing.file_sent(row)

    async def _file_error(self, row: FlowRow) -> None:
        await self.filing.file_error(row)

    # -- acknowledgements -----------------------------------------------------------------

    async def settle(self, receipt_key: str, answer: bytes) -> str:
        """Hand a partner's late acknowledgement to the flow awaiting it; return what became
        of the flow (see :meth:`Receipts.settle <gateway.flow.receipts.Receipts.settle>`).
        The decision is journaled before this returns, so the partner may be told "received".
        """
        return await self.receipts.settle(receipt_key, answer)

    async def expire_receipts(self) -> int:
        """File in ``error/`` the flows whose acknowledgement did not come in time."""
        return await self.receipts.expire()

    # -- restart --------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Make journal and spool agree after a stop or a crash, then start the window: the
        unfinished flows are taken from the journal as places free up (see
        :meth:`Recovery.reconcile <gateway.flow.recovery.Recovery.reconcile>`). Returns the
        number of flows to resume."""
        resumed = await self.recovery.reconcile()
        self.running.spawn(self.window.feed(self.recovery.resume), "window-feed")
        self.running.spawn(self.window.beat(), "window-beat")
        if self.recovery.orphan_age > 0:
            self.running.spawn(self.recovery.sweep_orphans(), "orphans")
        return resumed

    async def pick_up_requeued(self) -> int:
        """Start flows put back by ``raccord retry`` (state claimed, unleased), and any whose
        lease expired (a node that died), as far as the window has room."""
        self.window.waiting()
        return await self.window.fill()
