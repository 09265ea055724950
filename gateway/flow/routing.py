"""Routing: a claimed flow is analysed, checked and given its remote name and mode, then
journaled ``queued`` (``batched`` on a connection that packs lots), or refused.

An invoice is analysed (in a killable worker), routed (is its interface code connected here,
is the connection usable today?), validated against the connection's rule sets if asked, and
checked for duplicates in the same journal call that queues it. A packed lot was analysed
invoice by invoice: it is only routed.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

from flows import naming
from flows.analysis import Analysis, digest
from flows.validation import Status, Validation
from gateway import logs
from gateway.config import Checking, Connection, Mode
from gateway.flow.analyser import Analyser, AnalysisCrashed, AnalysisTimedOut, NotARegularFile
from gateway.flow.context import Context
from gateway.flow.delivery import Attempt, Delivery
from gateway.flow.filing import Filing
from gateway.flow.lotting import Lotting
from gateway.flow.refusals import Refusal, duplicate_message, unreadable
from gateway.flow.validator import (
    CHECKED_FORMATS,
    ValidationCrashed,
    ValidationTimeout,
    Validator,
    ValidatorUnavailable,
)
from gateway.journal import Call, FlowRow, JournalDB

log = logs.get()


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


def remote_name_for(row: FlowRow, conn: Connection, code: str) -> str:
    """The name ``row`` is sent under: the one it was given before (a retried flow keeps it,
    so that a resend is recognised), else built from ``conn``'s ``remote_name`` pattern."""
    return row.remote_name or naming.remote_name(
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


class Router:
    """Takes claimed flows to ``queued`` (or ``batched``), or refuses them."""

    def __init__(
        self,
        ctx: Context,
        filing: Filing,
        delivery: Delivery,
        lotting: Lotting,
        analyser: Analyser,
        validator: Validator,
    ) -> None:
        self._ctx = ctx
        self._filing = filing
        self._delivery = delivery
        self._lotting = lotting
        self.analyser = analyser
        self.validator = validator

    async def route_claimed(self, row: FlowRow) -> tuple[FlowRow, Attempt | None]:
        """Analyse and route a claimed flow: to ``queued``, or to ``failing`` with a reason.

        A queued flow that can be sent at once (the usual case) goes on to ``sending`` in the
        same journal call, and its first :class:`Attempt` is returned with it (one call fewer
        per flow: the daemon's event loop is what bounds a burst of small files)."""
        ctx, refuse = self._ctx, self._filing.refuse
        conn = ctx.config.connection(row.connection)  # the dispatcher checked it is configured
        if row.packaging is not None:
            return await self.route_lot(row, conn), None
        limit = ctx.config.gateway.max_file_size
        try:
            size, analysis = await self.analyser.analyse(Path(row.spool_path), limit)
        except AnalysisCrashed as exc:
            return await refuse(row, "analysis_crashed", str(exc)), None
        except AnalysisTimedOut as exc:
            return await refuse(row, "analysis_timeout", str(exc)), None
        except NotARegularFile as exc:
            return await refuse(row, "not_a_regular_file", str(exc)), None
        except PermissionError as exc:
            return await refuse(row, "unreadable", unreadable(row, exc)), None
        if analysis is None:
            too_large = f"{size} bytes is over max_file_size ({limit} bytes)"
            return await refuse(row, "too_large", too_large, size=size), None
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
            return await refuse(row, analysis.problem.value, message, **facts), None
        refusal = route(conn, analysis, ctx.now().date())
        if refusal is None:
            refusal = await self._validate(row, conn, analysis, facts)
        if refusal is not None:
            return await refuse(row, refusal.reason, refusal.message, **facts), None
        if conn.lot.max_invoices > 1:
            return await self._lotting.batch(row, conn, analysis, facts), None
        code = analysis.interface_code or ""
        remote = remote_name_for(row, conn, code)
        attempt = self._delivery.next_attempt(row)
        if not isinstance(attempt, Attempt):  # sent later, or refused, by Delivery.deliver
            attempt = None
        invoice = (row.original_name, analysis.invoice_number, analysis.supplier_id, row.flow_id)
        queued, earlier = await ctx.journal.call(
            Call(
                JournalDB.queue_unless_duplicate,
                row.flow_id,
                (analysis.sha256, analysis.supplier_id, analysis.invoice_number),
                invoice=invoice,
                check=not row.forced,
                sending=attempt.values if attempt is not None else None,
                remote_name=remote,
                mode=conn.interfaces[code].value,
                **facts,
            )
        )
        if earlier is not None or queued is None:
            assert earlier is not None
            duplicate = duplicate_message(row, earlier, analysis)
            return await refuse(row, "duplicate", duplicate, **facts), None
        log.info(
            "flow.routed",
            interface_code=analysis.interface_code,
            remote_name=remote,
            invoice_number=analysis.invoice_number,
            format=analysis.format.value,
        )
        return queued, attempt

    async def route_lot(self, row: FlowRow, conn: Connection) -> FlowRow:
        """Route a packed lot (its invoices were analysed one by one): ``queued`` or refused."""
        code = row.interface_code or ""
        refusal = route_code(conn, code, "lot", self._ctx.now().date())
        if refusal is not None:
            return await self._filing.refuse(row, refusal.reason, refusal.message)
        sha256, size, _ = await asyncio.to_thread(digest, Path(row.spool_path))
        remote = remote_name_for(row, conn, code)
        queued = await self._ctx.transition(
            row,
            "queued",
            size=size,
            sha256=sha256,
            format="lot",
            remote_name=remote,
            mode=conn.interfaces[code].value,
        )
        log.info("flow.routed", interface_code=code, remote_name=remote, format="lot")
        return queued

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
            checked = await self.validator.validate(Path(row.spool_path), conn.validation_rules)
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
            self._ctx.metrics.invalid.labels(conn.name, rule).inc()
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
