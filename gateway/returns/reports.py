"""Integration reports from an API partner (PISTE): asked about each deposit until final.

For every connection whose sender reports on deposits
(:class:`~protocols.base.IntegrationReports`)::

    sent flow ─▶ deposits (journal; first question report_interval after the deposit)
      ─▶ report() ─▶ not final: asked again after a doubling wait (≤ report_max_interval),
                     until report_deadline after the deposit (then ``report.expired``)
                 └▶ final: the report stored in inbox/ and applied like any return flow
                           (Complète/Partielle), ``report.final``; a report that asks for
                           the flow again (PISTE's IN_INCIDENTE) sends it once more, as a
                           new flow (``report.resent``)

A report stored but not yet marked done (a crash in between) is asked for and stored again;
the same bytes are applied once. Each connection's rounds are a duty (:mod:`gateway.duties`):
with several nodes sharing a journal, one node at a time asks.
"""

from __future__ import annotations

import asyncio
import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from flows import naming
from gateway import folders, logs
from gateway.config import Config
from gateway.duties import Duties
from gateway.flow.lots import journal_lot
from gateway.folders import Layout, spool_name
from gateway.journal import (
    Call,
    FlowRow,
    Journal,
    JournalDB,
    JournalUnavailable,
)
from gateway.ops.alerts import Alerter
from gateway.returns import pipeline as returns
from gateway.returns import polling
from protocols.base import IntegrationReports, InvoiceLifecycle, Sender
from protocols.errors import TransferError

log = logs.get()

#: How often each connection's due deposits are looked for, at most.
TICK = 1.0

_ids = naming.FlowIds()
#: The alert each unsettled-deposit event raises.
_ALERTS = {
    "report.expired": "report_expired",
    "report.incident": "report_incident",
    "report.resend_failed": "report_incident",
}


def report_duty(connection: str) -> str:
    """The name of the duty of asking ``connection``'s partner for reports and life-cycles."""
    return f"reports:{connection}"


def reporters(senders: dict[str, Sender]) -> dict[str, IntegrationReports]:
    """The connections whose partner reports on each deposit, with their sender."""
    return {
        name: cast(IntegrationReports, sender)
        for name, sender in senders.items()
        if sender.capabilities.integration_reports
    }


class Reporter:
    def __init__(
        self,
        config: Config,
        journal: Journal,
        sources: dict[str, IntegrationReports],
        alerts: Alerter | None = None,
        duties: Duties | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.sources = sources
        self.alerts = alerts or Alerter(None)
        self.duties = duties or Duties(journal, lease=config.journal.lease_timeout)
        self.layout = Layout(config.gateway.data_dir)
        #: the connections that also follow each invoice after integration
        self._lifecycle = {
            name: source
            for name, source in sources.items()
            if isinstance(source, InvoiceLifecycle)
            and getattr(getattr(source, "capabilities", None), "invoice_lifecycle", False)
        }

    async def run(self, stopping: asyncio.Event) -> None:
        await asyncio.to_thread(self._clean)
        async with asyncio.TaskGroup() as group:
            for connection, source in self.sources.items():
                group.create_task(self._loop(connection, source, stopping))

    def _clean(self) -> None:
        """Remove reports a stop or crash left half-stored (they are asked for again)."""
        for connection in self.sources:
            for temp in self.layout.inbox(connection).glob(".*.report"):
                temp.unlink(missing_ok=True)

    async def _loop(
        self, connection: str, source: IntegrationReports, stopping: asyncio.Event
    ) -> None:
        async with self.duties.duty(report_duty(connection)) as duty:
            while not stopping.is_set():
                if await duty.held():
                    async with duty.heartbeat():
                        await self._rounds(connection, source, stopping)
                await duty.pause(stopping, _tick(source))

    async def _rounds(
        self, connection: str, source: IntegrationReports, stopping: asyncio.Event
    ) -> None:
        """The deposits' reports, then the integrated invoices' life-cycles."""
        try:
            await self.round(connection, source, stopping)
            follower = self._lifecycle.get(connection)
            if follower is not None:
                await self.lifecycles(connection, follower)
        except Exception:  # a bug must not stop the other connections or the gateway
            log.exception("report.round_failed", connection=connection)

    async def round(
        self, connection: str, source: IntegrationReports, stopping: asyncio.Event | None = None
    ) -> int:
        """Ask about every due deposit of ``connection``; returns how many final reports were
        applied."""
        protocol = self.config.connection(connection).protocol
        await self.journal.call(
            Call(JournalDB.adopt_deposits, connection, protocol, source.report_interval)
        )
        now = datetime.now(UTC)
        due = await self.journal.call(
            Call(JournalDB.deposits_due, connection, now.isoformat(timespec="milliseconds"))
        )
        applied = 0
        for deposit in due:
            if stopping is not None and stopping.is_set():
                break
            try:
                applied += await self._ask(connection, source, deposit)
            except TransferError as exc:
                polls = int(deposit["polls"]) + 1
                wait = _wait(source, polls)
                log.warning(
                    "report.poll_failed",
                    connection=connection,
                    flow_id=deposit["flow_id"],
                    reason=exc.reason,
                    error=str(exc),
                    retry_in=wait,
                )
                await self._not_final(connection, source, deposit, polls, deposit["state"])
                if exc.retryable:
                    break  # the partner is unwell: the others wait for the next round too
        return applied

    async def _not_final(
        self,
        connection: str,
        source: IntegrationReports,
        deposit: dict[str, Any],
        polls: int,
        state: str | None,
    ) -> None:
        """No final report yet (or no answer): ask again after a doubling wait, or give up on
        a deposit asked about for longer than ``report_deadline``."""
        flow_id = str(deposit["flow_id"])
        sent_at = datetime.fromisoformat(str(deposit["sent_at"]))
        if datetime.now(UTC) - sent_at <= timedelta(seconds=source.report_deadline):
            await self._later(flow_id, polls, _wait(source, polls), state)
            return
        await self.journal.call(
            Call(JournalDB.update_deposit, flow_id, polls=polls, state=state, outcome="expired")
        )
        self._unsettled(
            "report.expired",
            connection,
            flow_id,
            state,
            "no final state within report_deadline: look the deposit up in Chorus Pro "
            "(suivi des flux); its invoices' outcome is not known",
        )

    def _unsettled(
        self, event: str, connection: str, flow_id: str, state: str | None, action: str
    ) -> None:
        """Log ``event`` and alert: a deposit whose outcome a person must now find out."""
        log.error(event, connection=connection, flow_id=flow_id, state=state, action=action)
        self.alerts.deposit_unsettled(
            connection, flow_id, _ALERTS[event], f"deposit of flow {flow_id} ({state}): {action}"
        )

    async def _ask(
        self, connection: str, source: IntegrationReports, deposit: dict[str, Any]
    ) -> int:
        flow_id = str(deposit["flow_id"])
        receipt = json.loads(deposit["receipt"])
        report = await source.report(receipt)
        polls = int(deposit["polls"]) + 1
        if report.state != deposit["state"]:
            log.info(
                "report.state",
                connection=connection,
                flow_id=flow_id,
                state=report.state,
                final=report.final,
            )
        if not report.final:
            await self._not_final(connection, source, deposit, polls, report.state)
            return 0
        outcome = await self._store(connection, report.document, report.name)
        await self.journal.call(
            Call(
                JournalDB.update_deposit,
                flow_id,
                polls=polls,
                state=report.state,
                outcome="reported",
                return_id=outcome.return_id,
            )
        )
        log.info(
            "report.final",
            connection=connection,
            flow_id=flow_id,
            state=report.state,
            rejected=outcome.rejected,
            return_id=outcome.return_id,
        )
        self.alerts.returned(connection, report.name, outcome)
        if report.resend:
            await self._resend(connection, flow_id, report.state)
        elif (follower := self._lifecycle.get(connection)) is not None:
            await self._follow(flow_id, follower)
        return 1

    async def _follow(self, flow_id: str, source: InvoiceLifecycle) -> None:
        """Follow the invoices of an integrated deposit (those not all rejected)."""
        invoices = await self.journal.call(Call(JournalDB.invoices, flow_id))
        if not any(not i["rejected"] for i in invoices):
            return
        at = datetime.now(UTC) + timedelta(seconds=source.lifecycle_interval)
        await self.journal.call(
            Call(
                JournalDB.update_deposit,
                flow_id,
                lifecycle_next=at.isoformat(timespec="milliseconds"),
            )
        )

    async def lifecycles(self, connection: str, source: InvoiceLifecycle) -> int:
        """Ask about the invoices of every due integrated deposit; apply what changed.
        Returns how many documents were applied."""
        now = datetime.now(UTC)
        due = await self.journal.call(
            Call(JournalDB.lifecycles_due, connection, now.isoformat(timespec="milliseconds"))
        )
        applied = 0
        for deposit in due:
            flow_id = str(deposit["flow_id"])
            try:
                report = await source.lifecycle(json.loads(deposit["receipt"]))
            except TransferError as exc:
                log.warning(
                    "lifecycle.poll_failed",
                    connection=connection,
                    flow_id=flow_id,
                    reason=exc.reason,
                    error=str(exc),
                )
                if exc.retryable:
                    break
                continue
            values: dict[str, Any] = {"lifecycle_state": report.state}
            if report.state != deposit["lifecycle_state"]:
                outcome = await self._store(connection, report.document, report.name)
                applied += 1
                log.info(
                    "lifecycle.changed",
                    connection=connection,
                    flow_id=flow_id,
                    statuses=report.state,
                    return_id=outcome.return_id,
                )
                self.alerts.returned(connection, report.name, outcome)
            sent_at = datetime.fromisoformat(str(deposit["sent_at"]))
            if report.final:
                values["lifecycle_outcome"] = "final"
            elif now - sent_at > timedelta(seconds=source.lifecycle_deadline):
                values["lifecycle_outcome"] = "expired"
                log.info("lifecycle.stopped", connection=connection, flow_id=flow_id)
            else:
                next_at = now + timedelta(seconds=source.lifecycle_interval)
                values["lifecycle_next"] = next_at.isoformat(timespec="milliseconds")
            await self.journal.call(Call(JournalDB.update_deposit, flow_id, **values))
        return applied

    async def _store(self, connection: str, document: bytes, name: str) -> returns.Outcome:
        temp = self.layout.inbox(connection) / f".{naming.safe(name)}.report"
        try:
            # durable before it is moved into the inbox (the folder is synced by the move)
            await asyncio.to_thread(
                functools.partial(folders.write_bytes, temp, document, sync_dir=False)
            )
            return await polling.store(self.config, self.layout, connection, temp, name)
        finally:
            await asyncio.to_thread(functools.partial(temp.unlink, missing_ok=True))

    async def _later(self, flow_id: str, polls: int, wait: float, state: str | None) -> None:
        at = (datetime.now(UTC) + timedelta(seconds=wait)).isoformat(timespec="milliseconds")
        await self.journal.call(
            Call(JournalDB.update_deposit, flow_id, polls=polls, next_at=at, state=state)
        )

    async def _resend(self, connection: str, flow_id: str, state: str) -> None:
        """Send the flow again once, as a new flow carrying a copy of what was sent."""
        flow = await self.journal.call(Call(resendable, flow_id))
        if flow is None:
            self._unsettled(
                "report.incident",
                connection,
                flow_id,
                state,
                "Chorus Pro could not process this flow, and raccord already sent it again "
                "once: ask the AIFE support, then drop the file again if they say so",
            )
            return
        new_id = _ids.new(datetime.now(UTC))
        target = self.layout.spool(connection) / spool_name(new_id, flow.original_name)
        try:
            # the copy is made durable, off the journal thread, before the journal knows it
            await asyncio.to_thread(folders.copy, Path(flow.final_path or ""), target)
            await self.journal.call(
                Call(journal_resend, flow, new_id, target, f"deposit {state}: sent again")
            )
        except Exception as exc:
            # The journal process may have died with the call (JournalUnavailable): then the
            # journal says whether the new flow was recorded, and needs its copy if so.
            if not (isinstance(exc, JournalUnavailable) and await self.journal.knows(new_id)):
                await asyncio.to_thread(functools.partial(target.unlink, missing_ok=True))
                self._unsettled(
                    "report.resend_failed",
                    connection,
                    flow_id,
                    state,
                    f"the flow could not be sent again ({exc}): drop its file again by hand",
                )
                return
        log.warning(
            "report.resent",
            connection=connection,
            flow_id=new_id,
            resubmit_of=flow_id,
            state=state,
            action=f"Chorus Pro asks for the whole flow again ({state}): sent once more as "
            f"{new_id}",
        )


def _tick(source: IntegrationReports) -> float:
    """The pause between rounds: TICK, shorter for a short report_interval (never 0)."""
    return max(0.05, min(TICK, source.report_interval))


def _wait(source: IntegrationReports, polls: int) -> float:
    """The pause before the next question: doubling from report_interval, capped."""
    return float(min(source.report_interval * 2 ** max(0, polls - 1), source.report_max_interval))


def resendable(db: JournalDB, flow_id: str) -> FlowRow | None:
    """The sent flow ``flow_id`` if it may be sent again: once, so not when it is itself a
    resend or was already sent again."""
    flow = db.get(flow_id)
    if flow is None or flow.resubmit_of is not None or db.resubmission_of(flow_id) is not None:
        return None
    return flow


def journal_resend(db: JournalDB, flow: FlowRow, new_id: str, spool: Path, detail: str) -> None:
    """Journal ``spool`` (a copy of ``flow``'s sent file) as a new flow, ``claimed`` for the
    daemon to send; the duplicate check is skipped: it is meant to go again."""
    if flow.packaging is not None:
        invoices = [
            (i["file"], i["invoice_number"], i["supplier_id"], i["source_flow"])
            for i in db.invoices(flow.flow_id)
        ]
        journal_lot(
            db,
            lot_id=new_id,
            connection=flow.connection,
            name=flow.original_name,
            spool=spool,
            packaging=flow.packaging,
            interface_code=flow.interface_code or "",
            invoices=invoices,
            resubmit_of=flow.flow_id,
            detail=detail,
        )
    elif (
        db.insert(
            new_id,
            flow.connection,
            flow.original_name,
            str(spool),
            forced=1,
            resubmit_of=flow.flow_id,
            detail=detail,
        )
        is None
    ):
        raise RuntimeError(f"flow id {new_id} is already in the journal")
