"""The dispatcher: takes each claimed flow through analysis, routing, sending and filing.

For one flow (see the state diagram in :mod:`gateway.journal`)::

    claim ─▶ analyse (flows/) ─▶ route (connection + mode) ─▶ duplicate check ─▶ queued
          ─▶ send (protocols/, retries with backoff) ─▶ delivered ─▶ sent/  (with receipt)
    any refusal or permanent failure                   ─▶ failing   ─▶ error/ (with error.json)

A partner that acknowledges later (asynchronous AS2 MDN) leaves the flow ``awaiting_receipt``
with no task running: :meth:`Dispatcher.settle` finishes it when the acknowledgement arrives,
:meth:`Dispatcher.expire_receipts` files it in ``error/`` when the wait is over.

On a connection that packs lots (``lot.max_invoices`` > 1) a routed invoice is validated (under
Complète it must carry what Chorus Pro checks first, so that it cannot sink its lot), then waits
``batched`` in the :class:`~gateway.flow.lots.Assembler`; a full lot is packed into one archive
in the spool and becomes a flow of its own, which takes the path above.

Every decision is journaled *before* the file moves, so a crash between the two is finished by
:meth:`Dispatcher.reconcile` at the next start. A flow's task never lets an exception escape:
an unexpected error files the flow in ``error/`` with reason ``internal_error`` and the daemon
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from flows import lots, naming
from flows.analysis import Analysis, digest
from flows.validation import Status, Validation
from gateway import logs
from gateway.batching import Batcher
from gateway.config import Checking, Config, Connection, Lot, Mode
from gateway.flow.analyser import Analyser, AnalysisCrashed, AnalysisTimedOut, NotARegularFile
from gateway.flow.filer import Filer
from gateway.flow.lots import Assembler, journal_lot, remove_members, write_lot
from gateway.flow.validator import (
    CHECKED_FORMATS,
    ValidationCrashed,
    ValidationTimeout,
    Validator,
    ValidatorUnavailable,
)
from gateway.folders import (
    Layout,
    Placement,
    display_name,
    move,
    parse_spool_name,
    spool_name,
)
from gateway.journal import (
    OPEN,
    TERMINAL,
    WAITING,
    Call,
    FlowRow,
    Journal,
    JournalDB,
    JournalUnavailable,
)
from gateway.ops import certificates
from gateway.ops.alerts import Alerter
from gateway.ops.metrics import Metrics
from protocols.base import AsyncReceipts, Outbound, Prepares, Receipt, Sender
from protocols.errors import ForeignAnswer, TransferError

log = logs.get()

#: Seconds an acknowledgement that overtook its send waits for that send to be journaled.
SETTLE_PATIENCE = 5.0

#: Seconds between two "a file is coming" notices to a connection's sender (Prepares).
PREPARE_EVERY = 1.0

#: Times a flow is resumed from the journal after the journal process died with its call;
#: then it is filed in error/ (reason internal_error).
JOURNAL_LOST_RESUMES = 3

Now = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claim:
    """A dropped file to claim: moved from ``source`` (its outbox) to ``spool``."""

    connection: str
    name: str  # as ops named it (displayable)
    source: Path
    spool: Path


def rename_all(moves: list[tuple[Path, Path]]) -> list[Exception | None]:
    """Rename each (source, target); None or the error, per move (on a worker thread).

    FileNotFoundError means the source is gone (claimed meanwhile, or removed); a target
    folder that is missing is another error, so that it is reported rather than taken for
    "already claimed" at every scan.
    """
    outcomes: list[Exception | None] = []
    for source, target in moves:
        try:
            os.rename(source, target)
            outcomes.append(None)
        except FileNotFoundError as exc:
            if not os.path.lexists(source):
                outcomes.append(exc)
            else:  # a plain OSError (no errno): not mistaken for a vanished source
                outcomes.append(OSError(f"cannot move {source} to {target}: {exc.strerror}"))
        except OSError as exc:
            outcomes.append(exc)
    return outcomes


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


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


def route(conn: Connection, analysis: Analysis, today: date) -> Refusal | None:
    """Why ``conn`` may not carry this document today, or None if it may."""
    code = analysis.interface_code
    assert code is not None
    return route_code(conn, code, analysis.format.label, today)


def route_code(conn: Connection, code: str, what: str, today: date) -> Refusal | None:
    """Why ``conn`` may not carry a flow of interface ``code`` (``what``: its format) today."""
    mode = conn.interfaces.get(code, Mode.NONE)
    if mode is Mode.NONE:
        return Refusal(
            "not_connected",
            f"interface code {code} ({what}) is not connected on "
            f'{conn.name}; add {code} = "complete" or "partial" to its [connection.interfaces]',
        )
    unusable = conn.unusable_reason(today)
    if unusable is not None:
        return Refusal(*unusable)
    return None


class Dispatcher:
    """Owns the flows of one running gateway."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        senders: dict[str, Sender],
        *,
        now: Now = utc_now,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        max_in_flight: int = 512,
        metrics: Metrics | None = None,
        alerts: Alerter | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.alerts = alerts or Alerter(None)
        self.layout = Layout(config.gateway.data_dir)
        self.journal = journal
        self.senders = senders
        #: What each connection's transfers depend on: one out of its validity blocks it.
        self.certificates = certificates.by_connection(config)
        self._now = now
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        # Flows past their claim (analysed, routed, sent, filed) at once. A flow holds its
        # place ~0.2 s in a burst (its batches' round trips), so this bounds the throughput
        # (Little's law): 256 -> 512 measured +6 % on 1,000 x 10 KB over SFTP; 1,024 no more.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flow_tasks: dict[str, asyncio.Task[None]] = {}  # the running task of each flow
        self._healing: dict[str, int] = {}  # flow -> local faults met in a row (disk full...)
        self._filer = Filer()
        self._renames: Batcher[tuple[Path, Path], None] = Batcher(rename_all)
        self._analyser = Analyser(config.gateway.analysis_timeout)
        self._validator = Validator(
            workers=config.gateway.validation_workers or None,
            timeout=config.gateway.analysis_timeout,
        )
        self._flow_ids = naming.FlowIds()
        self._lots = Assembler(self._lot_limits, self._on_lot)
        self._using: dict[int, int] = {}  # id(sender) -> sends and settles under way
        self._prepared: dict[str, float] = {}  # connection -> when its sender was last told
        self._released = asyncio.Condition()
        self.stopping = asyncio.Event()

    async def open(self) -> None:
        """Start the analysis and filing workers (else they start with the first file), and
        the validation workers if a connection validates: they compile the rule sets as they
        start (seconds), which had better not hold up the first files."""
        await asyncio.gather(self._analyser.open(), self._filer.open(), self._open_validator())

    async def _open_validator(self) -> None:
        if all(conn.validation is Checking.OFF for conn in self.config.connections):
            return
        try:
            await self._validator.open()
        except ValidatorUnavailable as exc:
            log.error("validation.unavailable", error=str(exc))

    async def close(self) -> None:
        """End the workers (after :meth:`drain`; a later file would start them again)."""
        await asyncio.gather(self._analyser.close(), self._filer.close(), self._validator.close())

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
        removed = {c.name for c in self.config.connections} - {c.name for c in config.connections}
        self.config = config
        self.senders = senders
        self.certificates = in_use
        self._validator.timeout = config.gateway.analysis_timeout
        self._analyser.timeout = config.gateway.analysis_timeout
        for name in removed:
            self._lots.flush_connection(name)

    async def retire(self, sender: Sender) -> None:
        """Close ``sender`` (replaced or removed by a reload) once no transfer uses it."""
        async with self._released:
            await self._released.wait_for(lambda: not self._using.get(id(sender)))
        await sender.__aexit__(None, None, None)

    @contextlib.asynccontextmanager
    async def _use(self, sender: Sender) -> AsyncIterator[Sender]:
        key = id(sender)
        self._using[key] = self._using.get(key, 0) + 1
        try:
            yield sender
        finally:
            self._using[key] -= 1
            if not self._using[key]:
                del self._using[key]
                async with self._released:
                    self._released.notify_all()

    def _configured(self, name: str) -> Connection | None:
        return next((c for c in self.config.connections if c.name == name), None)

    # -- intake ---------------------------------------------------------------------------

    async def claim(self, connection: str, path: Path) -> str | None:
        """Start the flow of ``path`` (in ``outbox/<connection>/``); return its identifier.

        The flow's first step claims the file: an atomic rename into the spool, made on a
        worker thread (with the renames of the other files of the burst): on the event loop,
        a rename waited ~0.13 ms for the file system under load. A file claimed meanwhile by
        an earlier event or scan, or removed by ops, ends its flow there. The claimed file
        is journaled next; should the daemon die in between, reconciliation finds the spool
        file and journals it then.
        """
        if self.stopping.is_set():
            return None
        return self._claim_as(connection, path, display_name(path.name))

    def _claim_as(self, connection: str, path: Path, name: str) -> str:
        flow_id = self._flow_ids.new(self._now())
        target = self.layout.spool(connection) / spool_name(flow_id, name)
        self.start(flow_id, claimed=Claim(connection, name, path, target))
        return flow_id

    async def _take(self, flow_id: str, claim: Claim) -> bool:
        """Rename the claimed file into the spool; False if it is not there (any more)."""
        try:
            await self._renames.submit((claim.source, claim.spool))
        except FileNotFoundError:
            return False  # claimed by an earlier event or scan, or removed by ops
        except OSError as exc:
            # It stays in the outbox; the next scan offers it again.
            reason, action = local_fault(exc) or (
                "claim_failed",
                "check the permissions of the outbox and spool folders; the next scan tries again",
            )
            log.error(
                "intake.claim_failed",
                connection=claim.connection,
                file=claim.name,
                reason=reason,
                error=str(exc),
                action=action,
            )
            return False
        log.info("flow.claimed", connection=claim.connection, flow_id=flow_id, file=claim.name)
        self.metrics.received.labels(claim.connection).inc()
        self._prepare_sender(claim.connection)
        return True

    def _prepare_sender(self, connection: str) -> None:
        """A file is coming: a sender that connects on first use may connect while the file is
        analysed (measured: the first of 1,000 files waited ~150 ms for the SSH login after its
        routing). At most once a second per connection."""
        now = time.monotonic()
        if now - self._prepared.get(connection, -PREPARE_EVERY) < PREPARE_EVERY:
            return
        self._prepared[connection] = now
        sender = self.senders.get(connection)
        if isinstance(sender, Prepares):
            sender.prepare()

    def start(self, flow_id: str, *, claimed: Claim | None = None, lost: int = 0) -> None:
        """Run the flow in the background, once (a no-op if it is already running).

        ``claimed``: a file to claim first; the flow is not journaled yet. ``lost``: how many
        times the journal's answer was lost for this flow (it is resumed from the journal).
        """
        if flow_id in self._active:
            return
        self._active.add(flow_id)
        task = asyncio.create_task(self._run_flow(flow_id, claimed, lost), name=f"flow-{flow_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._flow_tasks[flow_id] = task
        task.add_done_callback(functools.partial(self._forget_task, flow_id))

    def _forget_task(self, flow_id: str, task: asyncio.Task[None]) -> None:
        if self._flow_tasks.get(flow_id) is task:  # not a later run of the same flow
            del self._flow_tasks[flow_id]

    async def drain(self, grace: float) -> None:
        """Stop starting work; wait up to ``grace`` seconds, then cancel what still runs.

        A cancelled send may have delivered all, some or none of its file: its row stays in
        ``sending`` and the next start resends it under the same remote name.
        """
        self.stopping.set()
        self._lots.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    @property
    def busy(self) -> int:
        return len(self._active)

    # -- one flow -------------------------------------------------------------------------

    async def _run_flow(self, flow_id: str, claimed: Claim | None, lost: int = 0) -> None:
        resume = False
        try:
            if claimed is not None and not lost:
                if not await self._take(flow_id, claimed):
                    return
                row = await self._journal_claim(flow_id, claimed)
                if row is None:
                    # The identifier is already in the journal: only possible if the clock was
                    # set back across a restart. The file takes a new identity.
                    log.error("flow.id_taken", flow_id=flow_id, file=claimed.name)
                    self._claim_as(claimed.connection, claimed.spool, claimed.name)
                    return
            else:
                row = await self.journal.call(Call(JournalDB.get, flow_id))
                if row is None and claimed is not None:  # resumed: the claim was not journaled
                    row = await self._journal_claim(flow_id, claimed)
            async with self._in_flight:
                if row is None:
                    return
                with structlog.contextvars.bound_contextvars(
                    connection=row.connection, flow_id=flow_id, file=row.original_name
                ):
                    await self._advance(row)
        except asyncio.CancelledError:
            raise
        except JournalUnavailable as exc:
            if lost < JOURNAL_LOST_RESUMES:
                # Whether the call was applied is unknown; the journal (a new process) knows:
                # the flow goes on from what it says, as it would after a restart (a send
                # whose outcome is unknown is checked with the partner first).
                log.warning("flow.journal_lost", flow_id=flow_id, error=str(exc), action="resumed")
                resume = True
            else:
                log.exception("flow.internal_error", flow_id=flow_id)
                await self._fail_safely(flow_id, f"internal error: {exc!r}; please report it")
        except Exception as exc:
            fault = local_fault(exc)
            if fault is None:
                log.exception("flow.internal_error", flow_id=flow_id)
                await self._fail_safely(flow_id, f"internal error: {exc!r}; please report it")
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
        if resume:
            self.start(flow_id, claimed=claimed, lost=lost + 1)
        elif flow_id in self._healing and not self.stopping.is_set():
            self._heal_later(flow_id, claimed, max(lost, 1) if claimed is not None else lost)

    def _heal_later(self, flow_id: str, claimed: Claim | None, lost: int) -> None:
        """Resume the flow from the journal once a local fault may have healed (space freed):
        it goes on from its journaled state, as after a restart."""

        async def later() -> None:
            await self._wait(_heal_delay(self._healing.get(flow_id, 1)))
            if not self.stopping.is_set():  # else the next start resumes it
                # ``lost`` >= 1: a claimed file is in the spool already, not taken again.
                self.start(flow_id, claimed=claimed, lost=lost)

        task = asyncio.create_task(later(), name=f"heal-{flow_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _journal_claim(self, flow_id: str, claimed: Claim) -> FlowRow | None:
        return await self.journal.call(
            Call(JournalDB.insert, flow_id, claimed.connection, claimed.name, str(claimed.spool))
        )

    async def _advance(self, row: FlowRow) -> None:
        if row.state in ("claimed", "batched", "queued", "sending") and (
            self._configured(row.connection) is None
        ):
            row = await self._refuse(row, *_unknown_connection(row.connection))
        attempt = None
        if row.state == "claimed":
            row, attempt = await self._prepare(row)
        if row.state == "batched":
            self._lots.add(row)
            return
        if row.state in ("queued", "sending"):
            row = await self._deliver(row, attempt)
        if row.state == "delivered":
            await self._file_sent(row)
        elif row.state == "failing":
            await self._file_error(row)

    async def _prepare(self, row: FlowRow) -> tuple[FlowRow, Attempt | None]:
        """Analyse and route a claimed flow: to ``queued``, or to ``failing`` with a reason.

        A queued flow that can be sent at once (the usual case) goes on to ``sending`` in the
        same journal call, and its first :class:`Attempt` is returned with it (one call fewer
        per flow: the daemon's event loop is what bounds a burst of small files)."""
        conn = self.config.connection(row.connection)  # _advance checked it is configured
        if row.packaging is not None:
            return await self._prepare_lot(row, conn), None
        limit = self.config.gateway.max_file_size
        try:
            size, analysis = await self._analyser.analyse(Path(row.spool_path), limit)
        except AnalysisCrashed as exc:
            return await self._refuse(row, "analysis_crashed", str(exc)), None
        except AnalysisTimedOut as exc:
            return await self._refuse(row, "analysis_timeout", str(exc)), None
        except NotARegularFile as exc:
            return await self._refuse(row, "not_a_regular_file", str(exc)), None
        except PermissionError as exc:
            return await self._refuse(row, "unreadable", _unreadable(row, exc)), None
        if analysis is None:
            too_large = f"{size} bytes is over max_file_size ({limit} bytes)"
            return await self._refuse(row, "too_large", too_large, size=size), None
        facts: dict[str, Any] = {
            "size": analysis.size,
            "sha256": analysis.sha256,
            "format": analysis.format.value,
            "interface_code": analysis.interface_code,
            "invoice_number": analysis.invoice_number,
            "issue_date": analysis.issue_date,
            "supplier_id": analysis.supplier_id,
            "buyer_id": analysis.buyer_id,
        }
        if not analysis.ok:
            assert analysis.problem is not None
            message = analysis.message or analysis.problem.value
            return await self._refuse(row, analysis.problem.value, message, **facts), None
        refusal = route(conn, analysis, self._now().date())
        if refusal is not None:
            return await self._refuse(row, refusal.reason, refusal.message, **facts), None
        refusal = await self._validate(row, conn, analysis, facts)
        if refusal is not None:
            return await self._refuse(row, refusal.reason, refusal.message, **facts), None
        if conn.lot.max_invoices > 1:
            return await self._batch(row, conn, analysis, facts), None
        remote = row.remote_name or naming.remote_name(
            conn.remote_name,
            naming.NameParts(
                interface=analysis.interface_code or "",
                partner_code=conn.partner_code,
                flow_id=row.flow_id,
                original_name=row.original_name,
                created=datetime.fromisoformat(row.created_at),
                structure=conn.structure,
            ),
        )
        mode = conn.interfaces[analysis.interface_code or ""].value
        attempt = self._attempt(row)
        if not isinstance(attempt, Attempt):  # sent later, or refused, by _deliver
            attempt = None
        sending = attempt.values if attempt is not None else None
        invoice = (row.original_name, analysis.invoice_number, analysis.supplier_id, row.flow_id)
        queued, earlier = await self.journal.call(
            Call(
                JournalDB.queue_unless_duplicate,
                row.flow_id,
                (analysis.sha256, analysis.supplier_id, analysis.invoice_number),
                invoice=invoice,
                check=not row.forced,
                sending=sending,
                remote_name=remote,
                mode=mode,
                **facts,
            )
        )
        if earlier is not None or queued is None:
            assert earlier is not None
            duplicate = _duplicate_message(row, earlier, analysis)
            return await self._refuse(row, "duplicate", duplicate, **facts), None
        log.info(
            "flow.routed",
            interface_code=analysis.interface_code,
            remote_name=remote,
            invoice_number=analysis.invoice_number,
            format=analysis.format.value,
        )
        return queued, attempt

    async def _validate(
        self, row: FlowRow, conn: Connection, analysis: Analysis, facts: dict[str, Any]
    ) -> Refusal | None:
        """Check the invoice against the connection's rule sets (``validation``): record the
        outcome in ``facts`` (journaled with the flow: receipt, ``.error.json``, ``raccord
        flows``); a Refusal when it must not be sent.

        Under ``block`` an invalid invoice is refused; under ``warn`` it is sent, except into a
        lot under Complète, where one invalid invoice would sink every invoice of the lot.
        """
        facts["validation"] = None  # a retried flow keeps no outcome of an earlier check
        if conn.validation is Checking.OFF or analysis.format not in CHECKED_FORMATS:
            return None
        try:
            checked = await self._validator.validate(Path(row.spool_path), conn.validation_rules)
        except ValidationTimeout as exc:
            return Refusal("analysis_timeout", str(exc))
        except ValidationCrashed as exc:
            return Refusal("analysis_crashed", str(exc))
        except ValidatorUnavailable as exc:
            checked = Validation(Status.NOT_CHECKED, note=str(exc))
        facts["validation"] = json.dumps(checked.to_dict(), ensure_ascii=False)
        if checked.status is Status.NOT_CHECKED:
            log.warning("flow.not_validated", note=checked.note)
            if conn.validation is Checking.BLOCK:
                return Refusal(
                    "analysis_crashed",
                    f"the invoice could not be validated ({checked.note}); under validation = "
                    f'"block" on {conn.name} it was not sent. Check it, then raccord retry',
                )
            return None
        if not checked.invalid:
            return None
        for rule in dict.fromkeys(finding.rule for finding in checked.errors):
            self.metrics.invalid.labels(conn.name, rule).inc()
        first = checked.errors[0]
        log.warning(
            "flow.invalid", rule=first.rule, errors=len(checked.errors), action=conn.validation
        )
        code = analysis.interface_code or ""
        in_complete_lot = conn.lot.max_invoices > 1 and conn.interfaces[code] is Mode.COMPLETE
        if conn.validation is Checking.BLOCK:
            return Refusal("invalid_invoice", checked.sentence())
        if in_complete_lot:
            return Refusal(
                "invalid_invoice",
                f"{checked.sentence()} (under Complète, {code} on {conn.name}, one invalid "
                "invoice rejects its whole lot, so it was not packed)",
            )
        return None

    async def _batch(
        self, row: FlowRow, conn: Connection, analysis: Analysis, facts: dict[str, Any]
    ) -> FlowRow:
        """Validate a routed invoice for a lot and leave it ``batched`` (or refuse it)."""
        code = analysis.interface_code or ""
        mode = conn.interfaces[code]
        if mode is Mode.COMPLETE:
            missing = lots.missing_for_complete(analysis)
            if missing:
                return await self._refuse(
                    row,
                    "unfit_for_lot",
                    f"no {', '.join(missing)} found in this {analysis.format.label}; under "
                    f"Complète ({code} on {conn.name}) one faulty invoice rejects its whole lot, "
                    "so it was not packed. Correct the invoice and drop it again",
                    **facts,
                )
        if analysis.size + lots.MEMBER_OVERHEAD > conn.lot.max_bytes:
            return await self._refuse(
                row,
                "too_large",
                f"{analysis.size} bytes does not fit in a lot of at most {conn.lot.max_bytes} "
                f"bytes (lot.max_bytes of {conn.name})",
                **facts,
            )
        batched, earlier = await self.journal.call(
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
            return await self._refuse(
                row, "duplicate", _duplicate_message(row, earlier, analysis), **facts
            )
        log.info(
            "flow.batched",
            interface_code=code,
            invoice_number=analysis.invoice_number,
            format=analysis.format.value,
        )
        return batched

    def _lot_limits(self, connection: str) -> Lot:
        conn = self._configured(connection)  # None: removed by a reload; _pack refuses them
        return conn.lot if conn is not None else Lot(max_invoices=1)

    def _on_lot(self, rows: list[FlowRow]) -> None:
        if self.stopping.is_set():
            return  # they stay batched and are packed at the next start
        task = asyncio.create_task(self._pack(rows), name=f"lot-{rows[0].flow_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pack(self, rows: list[FlowRow]) -> None:
        """Pack waiting invoices into a lot: archive (durable), journal, member files removed;
        then the lot runs as a flow."""
        first = rows[0]
        connection, code = first.connection, first.interface_code or ""
        conn = self._configured(connection)
        if conn is None:  # removed by a reload while its invoices waited
            for row in rows:
                try:
                    await self._file_error(
                        await self._refuse(row, *_unknown_connection(connection))
                    )
                except Exception:  # it stays batched; the next start files it
                    log.exception("lot.pack_failed", connection=connection, flow_id=row.flow_id)
            return
        try:
            packaging = conn.lot.packaging
            lot_id = self._flow_ids.new(self._now())
            name = lots.lot_name(lot_id, packaging)
            target = self.layout.spool(connection) / spool_name(lot_id, name)
            names = lots.member_names([row.original_name for row in rows])
            members = [(n, Path(row.spool_path)) for n, row in zip(names, rows, strict=True)]
            await asyncio.to_thread(write_lot, members, target, packaging)
            invoices = [
                (n, row.invoice_number, row.supplier_id, row.flow_id)
                for n, row in zip(names, rows, strict=True)
            ]
            try:
                await self.journal.call(
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
                if not isinstance(exc, JournalUnavailable) or not await self.journal.knows(lot_id):
                    await asyncio.to_thread(functools.partial(target.unlink, missing_ok=True))
                    raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("lot.pack_failed", connection=connection, interface_code=code)
            for row in rows:
                await self._fail_safely(row.flow_id, f"could not be packed in a lot: {exc!r}")
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
        self.start(lot_id)

    async def _prepare_lot(self, row: FlowRow, conn: Connection) -> FlowRow:
        """Route a packed lot (its invoices were analysed one by one): ``queued`` or refused."""
        code = row.interface_code or ""
        refusal = route_code(conn, code, "lot", self._now().date())
        if refusal is not None:
            return await self._refuse(row, refusal.reason, refusal.message)
        sha256, size, _ = await asyncio.to_thread(digest, Path(row.spool_path))
        remote = row.remote_name or naming.remote_name(
            conn.remote_name,
            naming.NameParts(
                interface=code,
                partner_code=conn.partner_code,
                flow_id=row.flow_id,
                original_name=row.original_name,
                created=datetime.fromisoformat(row.created_at),
                structure=conn.structure,
            ),
        )
        queued = await self._transition(
            row,
            "queued",
            expect=("claimed",),
            size=size,
            sha256=sha256,
            format="lot",
            remote_name=remote,
            mode=conn.interfaces[code].value,
        )
        log.info("flow.routed", interface_code=code, remote_name=remote, format="lot")
        return queued

    def _attempt(self, row: FlowRow) -> Attempt | Refusal | None:
        """The next attempt at sending ``row``; a refusal if it cannot be sent; None if the
        gateway is stopping (the flow stays queued for the next start)."""
        if self.stopping.is_set():
            return None
        # Looked up at each attempt: a reload may have changed or removed the connection.
        conn, sender = self._configured(row.connection), self.senders.get(row.connection)
        if conn is None or sender is None:
            return Refusal(*_unknown_connection(row.connection))
        now = self._now()
        unusable = conn.unusable_reason(now.date()) or certificates.blocking(
            self.certificates.get(row.connection, []), now
        )
        if unusable is not None:
            return Refusal(*unusable)
        # An acknowledgement may overtake the send: findable by its key before it starts.
        # (The capability first: a protocol isinstance() costs ~10 us, at every attempt.)
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

    async def _deliver(self, row: FlowRow, attempt: Attempt | None = None) -> FlowRow:
        """Send a queued flow, retrying as configured. ``attempt``: the first attempt, its
        ``sending`` transition already journaled (see :meth:`_prepare`)."""
        while True:
            if attempt is None:
                next_attempt = self._attempt(row)
                if next_attempt is None:
                    return row
                if isinstance(next_attempt, Refusal):
                    return await self._refuse(row, next_attempt.reason, next_attempt.message)
                attempt = next_attempt
                row = await self._transition(
                    row, "sending", expect=("queued", "sending"), **attempt.values
                )
            conn, sender, resend = attempt.conn, attempt.sender, attempt.resend
            unknown_before = attempt.unknown_before
            attempt = None  # a retry starts another
            retry = self.config.gateway.retry
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
                async with self._use(sender):
                    receipt = await sender.send(outbound)
            except TransferError as exc:
                # An attempt proven to have given the partner nothing adds no uncertainty.
                known = {"unknown_outcome": int(unknown_before)} if exc.nothing_sent else {}
                if exc.retryable and row.attempts < retry.max_attempts:
                    delay = backoff(row.attempts, retry.initial, retry.maximum, self._rng)
                    row = await self._transition(
                        row,
                        "queued",
                        expect=("sending",),
                        reason=exc.reason,
                        message=str(exc),
                        **known,
                    )
                    self.metrics.retried.labels(row.connection, exc.reason).inc()
                    self.alerts.transfer_failed(row.connection, exc.reason, str(exc))
                    log.warning(
                        "flow.retry",
                        reason=exc.reason,
                        error=str(exc),
                        attempt=row.attempts,
                        retry_in=round(delay, 3),
                    )
                    await self._wait(delay)
                    continue
                message = str(exc)
                self.alerts.transfer_failed(row.connection, exc.reason, message)
                if exc.retryable:
                    message += f" (gave up after {row.attempts} attempts)"
                return await self._refuse(row, exc.reason, message, expect=("sending",), **known)
            self.metrics.transferred(row.connection, time.monotonic() - started, outbound.size)
            self.alerts.transfer_succeeded(row.connection)
            if receipt.awaiting:
                return await self._await_receipt(row, conn, receipt)
            return await self._delivered(row, conn, receipt)

    async def _wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the gateway is stopping."""
        waiters = {
            asyncio.ensure_future(self.stopping.wait()),
            asyncio.ensure_future(self._sleep(delay)),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def _receipt_document(self, row: FlowRow, conn: Connection, receipt: Receipt) -> dict[str, Any]:
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
            "sent_at": earlier.get("sent_at") or self._now().isoformat(timespec="milliseconds"),
            "validation": json.loads(row.validation) if row.validation else None,
        }

    async def _delivered(
        self,
        row: FlowRow,
        conn: Connection,
        receipt: Receipt,
        *,
        expect: tuple[str, ...] = ("sending",),
    ) -> FlowRow:
        document = self._receipt_document(row, conn, receipt)
        if row.state in WAITING:
            document["acknowledged_at"] = self._now().isoformat(timespec="milliseconds")
        if row.packaging is not None:
            document["invoices"] = await self._lot_invoices(row)
        folder = self.layout.sent(conn.name, self._now().date())
        return await self.journal.call(
            Call(
                JournalDB.file_to,
                row.flow_id,
                "delivered",
                folder,
                row.original_name,
                expect=expect,
                receipt=json.dumps(document, default=str),
                reason=None,
                message=None,
            )
        )

    async def _await_receipt(self, row: FlowRow, conn: Connection, receipt: Receipt) -> FlowRow:
        """The partner took the flow and acknowledges later: journal what the acknowledgement
        will be judged against, and until when it is awaited."""
        document = self._receipt_document(row, conn, receipt)
        due = self._now() + timedelta(seconds=receipt.wait)
        row = await self._transition(
            row,
            "awaiting_receipt",
            expect=("sending",),
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
        row = await self.journal.call(Call(JournalDB.awaiting, receipt_key))
        sending = self._flow_tasks.get(row.flow_id) if row and row.state == "sending" else None
        if sending is not None:
            # The acknowledgement overtook the send it answers (the partner posted its MDN
            # before we read its HTTP answer): let that send finish and be journaled.
            await asyncio.wait({sending}, timeout=SETTLE_PATIENCE)
            row = await self.journal.call(Call(JournalDB.awaiting, receipt_key))
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
        if row.flow_id in self._active:
            return "busy"
        self._active.add(row.flow_id)
        try:
            with structlog.contextvars.bound_contextvars(
                connection=row.connection, flow_id=row.flow_id, file=row.original_name
            ):
                try:
                    return await self._settle(row, answer)
                except Exception:
                    # The flow goes on waiting (and expires if this keeps happening).
                    log.exception("flow.receipt_failed", receipt_key=receipt_key)
                    return "error"
        finally:
            self._active.discard(row.flow_id)

    async def _settle(self, row: FlowRow, answer: bytes) -> str:
        conn = self.config.connection(row.connection)
        sender = self.senders[row.connection]
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
            async with self._use(sender):
                receipt = await sender.settle(pending, answer)
        except ForeignAnswer as exc:
            log.error("flow.receipt_foreign", error=str(exc), action="ignored; still waiting")
            return "foreign"
        except TransferError as exc:
            row = await self._refuse(row, exc.reason, str(exc), expect=WAITING)
            await self._file_error(row)
            return "failed"
        row = await self._delivered(row, conn, receipt, expect=WAITING)
        await self._file_sent(row)
        return "sent"

    async def expire_receipts(self) -> int:
        """File in ``error/`` the flows whose acknowledgement did not come in time."""
        now = self._now().isoformat(timespec="milliseconds")
        rows = await self.journal.call(Call(JournalDB.receipts_due, now))
        expired = 0
        for row in rows:
            if row.flow_id in self._active:
                continue
            self._active.add(row.flow_id)
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
                        failing = await self._refuse(
                            row, "receipt_timeout", message, expect=WAITING
                        )
                        await self._file_error(failing)
                        expired += 1
                    except Exception:  # the others, and the daemon, go on
                        log.exception("flow.expire_failed", receipt_key=row.receipt_key)
            finally:
                self._active.discard(row.flow_id)
        return expired

    async def _file_sent(self, row: FlowRow) -> None:
        assert row.final_path and row.receipt
        target = Path(row.final_path)
        receipt = json.loads(row.receipt) | _filed_as(row.original_name, target)
        await self._filer.place(Placement(Path(row.spool_path), target, ".receipt.json", receipt))
        await self._transition(row, "sent", expect=("delivered",), unknown_outcome=0)
        self.metrics.sent.labels(row.connection).inc()
        log.info(
            "flow.sent",
            remote_name=row.remote_name,
            path=str(target),
            attempts=row.attempts,
            already_delivered=receipt.get("already_delivered", False),
        )

    async def _refuse(
        self,
        row: FlowRow,
        reason: str,
        message: str,
        *,
        expect: tuple[str, ...] | None = None,
        **facts: Any,
    ) -> FlowRow:
        folder = self.layout.error(row.connection)
        return await self.journal.call(
            Call(
                JournalDB.file_to,
                row.flow_id,
                "failing",
                folder,
                row.original_name,
                expect=expect,
                reason=reason,
                message=message,
                **facts,
            )
        )

    async def _file_error(self, row: FlowRow) -> None:
        assert row.final_path
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
            "failed_at": self._now().isoformat(timespec="milliseconds"),
            "retry": f"raccord retry {row.flow_id}",
        }
        if row.validation:
            document["validation"] = json.loads(row.validation)
        document |= _filed_as(row.original_name, target)
        if row.packaging is not None:
            document["invoices"] = await self._lot_invoices(row)
        await self._filer.place(Placement(Path(row.spool_path), target, ".error.json", document))
        await self._transition(row, "error", expect=("failing",))
        self.metrics.failed.labels(row.connection, row.reason or "unknown").inc()
        log.error("flow.failed", reason=row.reason, error=row.message, path=str(target))
        self.alerts.flow_failed(
            row.connection,
            row.flow_id,
            row.original_name,
            row.reason or "unknown",
            row.message or "",
            str(target),
        )

    async def _lot_invoices(self, row: FlowRow) -> list[dict[str, Any]]:
        invoices = await self.journal.call(Call(JournalDB.invoices, row.flow_id))
        return [
            {
                "file": i["file"],
                "invoice_number": i["invoice_number"],
                "supplier_id": i["supplier_id"],
                "dropped_as": i["source_flow"],
            }
            for i in invoices
        ]

    async def _fail_safely(self, flow_id: str, message: str) -> None:
        try:
            row = await self.journal.call(Call(JournalDB.get, flow_id))
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
                row = await self._refuse(row, "internal_error", message)
            await self._file_error(row)
        except Exception:
            log.exception("flow.unfiled", flow_id=flow_id)

    async def _transition(
        self, row: FlowRow, state: str, *, expect: tuple[str, ...] | None = None, **values: Any
    ) -> FlowRow:
        return await self.journal.call(
            Call(JournalDB.transition, row.flow_id, state, expect=expect, **values)
        )

    # -- restart --------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Make journal and spool agree after a stop or a crash; restart unfinished flows.

        Spool files unknown to the journal (claimed just before a crash) are journaled; rows
        still open are resumed; those awaiting an acknowledgement go on waiting. Returns the
        number of flows resumed.
        """
        known = {
            row.spool_path: row
            for row in await self.journal.call(Call(JournalDB.in_states, OPEN + WAITING))
        }
        spooled = await asyncio.to_thread(self._spooled)
        for connection, path in spooled:
            parsed = parse_spool_name(path.name)
            if parsed is None or str(path) in known:
                continue
            flow_id, original = parsed
            if lots.is_lot_name(flow_id, original) and not await self.journal.knows(flow_id):
                # Packed, but the journal never recorded the lot: its invoices are still
                # batched and will be packed again.
                await asyncio.to_thread(functools.partial(path.unlink, missing_ok=True))
                log.warning("lot.unfinished_removed", connection=connection, path=str(path))
                continue
            recovered = await self.journal.call(
                functools.partial(
                    _recover, flow_id=flow_id, connection=connection, name=original, spool=path
                )
            )
            if recovered:
                log.warning(recovered, connection=connection, flow_id=flow_id, file=original)
                self.start(flow_id)
        present = {str(path) for _, path in spooled}
        for row in known.values():
            if row.spool_path not in present and row.state not in ("delivered", "failing"):
                await self._transition(
                    row,
                    "error",
                    reason="lost",
                    message=f"spool file {row.spool_path} is missing; it was removed by hand",
                    final_path=None,
                )
                log.error("flow.lost", flow_id=row.flow_id, path=row.spool_path)
                continue
            if row.state in WAITING:
                continue  # settled by the partner's acknowledgement, or expired
            if row.state == "sending":
                log.warning(
                    "flow.unknown_outcome", flow_id=row.flow_id, remote_name=row.remote_name
                )
            self.start(row.flow_id)
        return sum(1 for row in known.values() if row.state not in WAITING)

    def _spooled(self) -> list[tuple[str, Path]]:
        """(connection, path) of every file in the spool folders, also those of connections no
        longer configured (their flows are filed in error/ as ``unknown_connection``)."""
        found = []
        for connection in self.layout.spooled_connections():
            folder = self.layout.spool(connection)
            found += [(connection, folder / entry) for entry in sorted(os.listdir(folder))]
        return found

    async def pick_up_requeued(self) -> int:
        """Start flows put back by ``raccord retry`` (state claimed, not running here)."""
        claimed = await self.journal.call(Call(JournalDB.spools_in, "claimed"))
        started = 0
        for flow_id, spool_path in claimed:
            if flow_id in self._active:
                continue
            # lexists: the entry itself (a link put back is refused by analysis, not skipped).
            if await asyncio.to_thread(os.path.lexists, spool_path):
                self.start(flow_id)
                started += 1
        return started


def _filed_as(original: str, target: Path) -> dict[str, str]:
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


#: Seconds before a flow stopped by a local fault is tried again: doubled each time, at most.
HEAL_FIRST, HEAL_MAX = 2.0, 60.0


def _heal_delay(faults: int) -> float:
    return min(HEAL_MAX, HEAL_FIRST * 2.0 ** min(faults - 1, 10))


def local_fault(exc: BaseException) -> tuple[str, str] | None:
    """``(reason, what to do)`` when ``exc`` is a fault of data_dir's own file system that
    ops can heal (and raccord then gets over by itself: the flow is tried again), else None."""
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc).lower() if isinstance(exc, sqlite3.OperationalError) else ""
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text:
        return (
            "local_disk_full",
            "data_dir's file system is full: free space there; raccord tries again by itself",
        )
    if code == errno.EROFS or "readonly" in text or "read-only" in text:
        return (
            "local_read_only",
            "data_dir's file system is read-only: remount it read-write; raccord tries again "
            "by itself",
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            "local_permission_denied",
            f"raccord may not write {getattr(exc, 'filename', None) or 'in data_dir'}: give "
            "raccord's user write permission on data_dir; raccord tries again by itself",
        )
    return None


def _unreadable(row: FlowRow, exc: OSError) -> str:
    return (
        f"raccord may not read {row.original_name} ({exc.strerror}): it was dropped with "
        "permissions that leave the daemon's user out (an umask of 077?). Give the file read "
        "permission for raccord's group (chmod g+r), then raccord retry"
    )


def _unknown_connection(name: str) -> tuple[str, str]:
    return (
        "unknown_connection",
        f"connection {name} is no longer configured; configure it again and raccord retry "
        "this flow, or drop the file in another connection's outbox",
    )


def _recover(db: JournalDB, *, flow_id: str, connection: str, name: str, spool: Path) -> str:
    """Journal a spool file the journal does not account for; return the log event, or "".

    Either it was claimed just before a crash (no row yet), or ``raccord retry`` moved it back
    from error/ and was stopped before recording that (row still in ``error``, its file in
    error/ gone): both resume as ``claimed``.
    """
    if db.insert(flow_id, connection, name, str(spool)):
        return "flow.recovered"
    row = db.get(flow_id)
    if row is not None and row.state == "packed":  # its lot was journaled; the copy is spare
        spool.unlink(missing_ok=True)
        return ""
    if row is not None and row.state == "error" and not _in_error_folder(row):
        _back_to_claimed(db, row, "retry finished after restart", forced=bool(row.forced))
        return "flow.retry_recovered"
    return ""


#: Reasons that belong to the file itself: retried unchanged, it fails the same way.
FILE_REASONS = frozenset(
    {
        "empty",
        "malformed_xml",
        "unknown_format",
        "no_interface_code",
        "not_a_regular_file",
        "invalid_invoice",
    }
)


class CannotSucceed(LookupError):
    """``raccord retry`` of a flow that would fail again the same way (exit 1, saying why)."""


def _would_succeed(row: FlowRow, source: Path, *, force: bool) -> None:
    """Refuse a retry whose outcome is known: a duplicate without ``force``, or a file whose
    own content was the problem and has not changed since (the operator may fix a file in
    ``error/`` in place and retry it: its new content is analysed afresh).

    Raises:
        CannotSucceed: saying why and what to do instead.
    """
    name = f"flow {row.flow_id} ({row.original_name})"
    if row.reason == "duplicate" and not force:
        raise CannotSucceed(
            f"{name} is a duplicate"
            + (f" of flow {row.duplicate_of}" if row.duplicate_of else "")
            + "; retrying would refuse it again: use raccord retry --force to send it anyway"
        )
    if row.reason in FILE_REASONS:
        unchanged = row.sha256 is None or not source.is_file() or digest(source)[0] == row.sha256
        if unchanged:
            raise CannotSucceed(
                f"{name} is in error for {row.reason}, which is the file's own content: "
                "retried unchanged it would fail again; fix the file (in error/ or drop a "
                f"corrected one in outbox/{row.connection}/)"
            )


def _in_error_folder(row: FlowRow) -> bool:
    return row.final_path is not None and Path(row.final_path).exists()


def _back_to_claimed(db: JournalDB, row: FlowRow, detail: str, *, forced: bool) -> None:
    """Queue a flow in error again: analysed and routed afresh, same remote name."""
    db.transition(
        row.flow_id,
        "claimed",
        expect=("error",),
        detail=detail,
        forced=int(forced),
        reason=None,
        message=None,
        final_path=None,
        attempts=0,
        # An earlier attempt may have reached the partner: the resend must check first.
        unknown_outcome=1 if row.attempts else 0,
    )


def _duplicate_message(row: FlowRow, earlier: FlowRow, analysis: Analysis) -> str:
    what = (
        "the same bytes"
        if earlier.sha256 == analysis.sha256
        else f"invoice {analysis.invoice_number} of supplier {analysis.supplier_id}"
    )
    return (
        f"{what} already in flow {earlier.flow_id} ({earlier.original_name}, {earlier.state}); "
        f"not sent twice. If it must be sent again: raccord retry --force {row.flow_id}"
    )


def requeue(db: JournalDB, flow_id: str, *, force: bool) -> str:
    """Put a flow in ``error`` back into the queue (``raccord retry``); return what was done.

    The file returns from ``error/`` to its spool path; the flow is analysed and routed again
    (so a fixed configuration applies), keeps its remote name (so a resend after an unknown
    outcome is recognised), and with ``force`` skips the duplicate check.

    Raises:
        LookupError: unknown flow, or not in ``error``, or its file is no longer in error/.
    """
    row = db.get(flow_id)
    if row is None:
        raise LookupError(f"no flow {flow_id} in the journal")
    if row.state != "error":
        raise LookupError(f"flow {flow_id} is {row.state}; only flows in error can be retried")
    if not _in_error_folder(row):
        raise LookupError(f"flow {flow_id}: its file {row.final_path} is no longer in error/")
    source, spool = Path(row.final_path or ""), Path(row.spool_path)
    _would_succeed(row, source, force=force)
    # Move first: a crash before the journal write leaves the file in the spool with its row
    # in error, which reconcile finishes (_recover); the other order could report it lost.
    move(source, spool)
    source.with_name(source.name + ".error.json").unlink(missing_ok=True)
    detail = "raccord retry" + (" --force" if force else "")
    _back_to_claimed(db, row, detail, forced=force or bool(row.forced))
    return f"{flow_id} ({row.original_name}) queued again" + (" (forced)" if force else "")
