"""Complète vs Partielle: what a return flow means for each invoice of the flow it answers.

* A **flow-level failure** (status 93 erreur réception, 94 erreur réception destinataire final,
  95 erreur de transmission; PISTE ``IN_REJETE``) means the flow was not received or not
  transmitted: no invoice of it was integrated, whatever the mode. Every invoice fails with the
  flow's reason; those the error does not name are marked ``flow_not_received`` (and, under
  Complète when the error names some invoice, ``collateral`` too).
* **complete** — the flow fails as a whole: if any of its invoices is rejected (04/05, or named
  in a flow-level error), every invoice is rejected. Those that were not at fault themselves are
  ``collateral``.
* **partial** — for integration outcomes (96 "reçu – intégration partielle", invoice-level
  statuses) only the invoices at fault are rejected; the others go on.

An invoice is *at fault* when an invoice-level status rejects it, or when a flow-level error
detail names its number as a whole token (see :func:`names`; CPP Statut gives no structured
link, so the text is searched — never by substring: FA-1 is not FA-12).
Pure functions: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from flows.returns import INVOICE_FINAL, InvoiceStatus, ReturnFlow

#: Characters that can be part of an invoice number: letters and digits of any script, and the
#: separators numbering schemes use. A number is named only where neither neighbour is one of
#: these — except a full stop that ends a sentence ("… FA-1.") rather than a number ("FA-1.5").
_BEFORE = r"(?<![\w\-/.])"
_AFTER = r"(?![\w\-/]|\.[\w\-/.])"


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
    #: The flow failed before integration (93/94/95) and the error does not name this invoice:
    #: it was never looked at, so it can be sent again (``resubmit_collateral``).
    flow_not_received: bool = False


def normalise(number: str) -> str:
    """An invoice number as compared: Unicode NFC, surrounding white space removed.

    Chorus Pro echoes the number as it was deposited (``IdFacture``, ``numeroDP``); what can
    differ on the way is only its Unicode composition and padding (fixed-width fields, line
    breaks in error texts). Case is kept: no source says Chorus Pro folds it, and folding could
    name an invoice that was not at fault.
    """
    return unicodedata.normalize("NFC", number).strip()


def names(text: str, number: str) -> bool:
    """Whether ``text`` names invoice ``number`` as a whole token (never as a substring)."""
    wanted = normalise(number)
    if not wanted:
        return False
    pattern = _BEFORE + re.escape(wanted) + _AFTER
    return re.search(pattern, unicodedata.normalize("NFC", text)) is not None


def _own_statuses(invoice: InvoiceRef, ret: ReturnFlow) -> list[InvoiceStatus]:
    if invoice.invoice_number is None:
        return []
    number = normalise(invoice.invoice_number)
    return [
        s
        for s in ret.invoice_statuses
        if s.invoice_number is not None
        and normalise(s.invoice_number) == number
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
        if names(error.text(), number)
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
    # Complète sinks the whole flow for one invoice at fault; a failed flow sinks it in any mode.
    sinks_all = failed_flow is not None or (mode == "complete" and bool(faults))
    at_fault = ", ".join(str(i.invoice_number) for i in invoices if i.position in faults)
    verdicts = []
    for invoice in invoices:
        own_status = own_latest[invoice.position]
        reasons = list(faults.get(invoice.position, []))
        guilty = bool(reasons)
        rejected = guilty or sinks_all
        collateral = rejected and not guilty and mode == "complete" and bool(faults)
        if collateral:
            reasons.append(f"collateral: the complete-mode flow was rejected for {at_fault}")
        if flow_reason and flow_reason not in reasons:
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
                flow_not_received=failed_flow is not None and not guilty,
            )
        )
    return verdicts
