"""Complète vs Partielle: what a return flow means for each invoice of the flow it answers.

* **complete** — the flow fails as a whole: if the flow failed (status 93/94/95) or any of its
  invoices is rejected (04/05, or named in a flow-level error), every invoice is rejected. Those
  that were not at fault themselves, while another invoice was, are ``collateral``.
* **partial** — only the invoices at fault are rejected; the others go on (flow status 96,
  "reçu – intégration partielle"). A flow that failed without naming any invoice is rejected
  whole: there is nothing partial about it.

An invoice is *at fault* when an invoice-level status rejects it, or when a flow-level error
detail mentions its number (CPP Statut gives no structured link; the text match is reported).
Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flows.returns import INVOICE_FINAL, InvoiceStatus, ReturnFlow


@dataclass(frozen=True)
class InvoiceRef:
    """An invoice of one of our flows (one per flow, or the members of a lot)."""

    position: int
    invoice_number: str | None
    supplier_id: str | None


@dataclass(frozen=True)
class Verdict:
    position: int
    status_code: str | None  # the invoice's own latest status in this return, if any
    status_label: str | None
    flow_code: str | None  # the flow's latest status in this return, if any
    rejected: bool
    collateral: bool
    final: bool
    reasons: tuple[str, ...]


def _own_statuses(invoice: InvoiceRef, ret: ReturnFlow) -> list[InvoiceStatus]:
    if invoice.invoice_number is None:
        return []
    return [
        s
        for s in ret.invoice_statuses
        if s.invoice_number == invoice.invoice_number
        and (
            s.supplier_id is None
            or invoice.supplier_id is None
            or s.supplier_id == invoice.supplier_id
        )
    ]


def _named_in_errors(invoice: InvoiceRef, ret: ReturnFlow) -> list[str]:
    number = invoice.invoice_number
    if not number:
        return []
    return [
        f"flow status {status.code}: {error.text()}"
        for status in ret.flow_statuses
        for error in status.errors
        if number in error.text()
    ]


def decide(mode: str, invoices: Sequence[InvoiceRef], ret: ReturnFlow) -> list[Verdict]:
    """One verdict per invoice of the flow, under ``mode`` ("complete" or "partial")."""
    flow = ret.flow_statuses[-1] if ret.flow_statuses else None
    failed_flow = next((s for s in ret.flow_statuses if s.failed), None)
    faults: dict[int, list[str]] = {}
    own_latest: dict[int, InvoiceStatus | None] = {}
    for invoice in invoices:
        own = _own_statuses(invoice, ret)
        own_latest[invoice.position] = own[-1] if own else None
        reasons = [
            f"invoice status {s.code} ({s.label or 'unknown code'})"
            + (f": {s.comment}" if s.comment else "")
            for s in own
            if s.rejected
        ] + _named_in_errors(invoice, ret)
        if reasons:
            faults[invoice.position] = reasons
    flow_reason = None
    if failed_flow is not None:
        details = "; ".join(e.text() for e in failed_flow.errors)
        flow_reason = f"flow status {failed_flow.code} ({failed_flow.label or 'unknown code'})" + (
            f": {details}" if details else ""
        )
    sinks_all = mode == "complete" and (bool(faults) or failed_flow is not None)
    verdicts = []
    for invoice in invoices:
        own_status = own_latest[invoice.position]
        reasons = list(faults.get(invoice.position, []))
        rejected = bool(reasons)
        collateral = False
        if not rejected and (sinks_all or (failed_flow is not None and not faults)):
            rejected = True
            collateral = mode == "complete" and bool(faults)
            if collateral:
                others = ", ".join(str(i.invoice_number) for i in invoices if i.position in faults)
                reasons.append(f"collateral: the complete-mode flow was rejected for {others}")
            elif flow_reason:
                reasons.append(flow_reason)
        elif rejected and flow_reason and flow_reason not in reasons:
            reasons.append(flow_reason)
        code = own_status.code if own_status else None
        verdicts.append(
            Verdict(
                position=invoice.position,
                status_code=code,
                status_label=own_status.label if own_status else None,
                flow_code=flow.code if flow else None,
                rejected=rejected,
                collateral=collateral,
                final=rejected or (code in INVOICE_FINAL),
                reasons=tuple(reasons),
            )
        )
    return verdicts
