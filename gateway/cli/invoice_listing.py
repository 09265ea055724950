"""``raccord flows --status …`` and ``--invoice …``: the invoices themselves, not their flows.

An operator asks "which of *my* invoices were collateral?", "where is FA-12?": the answer is the
dropped files, each with its own current status (derived from its whole status history, see
:mod:`flows.statuses`), the lot that carried it and the lot that resubmitted it — one row per
invoice per flow that carried it (a dropped file resubmitted in a second lot has two rows).
With ``--invoice``, each row also carries the invoice's status history (JSON: ``history``;
table and CSV: one indented line per status under the invoice's row).
"""

from __future__ import annotations

from typing import Any

from flows.statuses import is_rejected
from gateway.journal import JournalDB

COLUMNS = [
    "invoice_number",
    "file",
    "flow_id",
    "lot_id",
    "resubmitted_in",
    "connection",
    "status",
    "at",
    "detail",
]


def current_status(invoice: dict[str, Any]) -> str | None:
    """One invoice's current status in words, as its whole history leaves it."""
    code = invoice["status_code"]
    own = f"{code} {invoice['status_label'] or ''}".strip() if code else None
    if not invoice["rejected"] or (own and is_rejected(code)):
        return own
    if invoice["collateral"]:
        return "rejected (collateral)"
    if invoice["flow_not_received"]:
        return "rejected (flow not received)"
    return "rejected"


def records(
    db: JournalDB,
    *,
    invoice: str | None,
    status: str | None,
    connection: str | None,
    state: str | None,
    since: str | None,
    until: str | None,
    table: bool,
) -> list[dict[str, Any]]:
    """The invoices matching every filter given, oldest flow first; ``table``: history rows
    follow each invoice (``--invoice`` only), else history is a list in each record."""
    found = db.invoice_rows(
        invoice=invoice.strip() if invoice else None,
        status=status,
        connection=connection,
        state=state,
        since=since,
        until=until,
    )
    listed: list[dict[str, Any]] = []
    for row in found:
        lot = row["flow_id"] if row["packaging"] else None
        again = (
            db.resubmission_of(row["flow_id"])
            if lot and (row["collateral"] or row["flow_not_received"])
            else None
        )
        record = {
            "invoice_number": row["invoice_number"],
            "file": row["file"],
            "flow_id": row["source_flow"] or row["flow_id"],
            "lot_id": lot,
            "resubmit_of": row["resubmit_of"],
            "resubmitted_in": again,
            "connection": row["connection"],
            "state": row["state"],
            "status": current_status(row),
            "status_code": row["status_code"],
            "status_label": row["status_label"],
            "rejected": bool(row["rejected"]),
            "collateral": bool(row["collateral"]),
            "flow_not_received": bool(row["flow_not_received"]),
            "final": bool(row["final"]),
            "at": row["status_at"],
            "detail": f"resubmission of {row['resubmit_of']}" if row["resubmit_of"] else None,
        }
        history = []
        if invoice is not None:
            history = [
                s for s in db.statuses(row["flow_id"]) if s["position"] in (None, row["position"])
            ]
        if not table:
            if invoice is not None:
                record["history"] = history
            listed.append(record)
            continue
        listed.append(record)
        for entry in history:
            scope = "flow" if entry["position"] is None else "invoice"
            listed.append(
                {
                    "file": f"  ↳ {scope} status",
                    "flow_id": row["flow_id"],
                    "status": f"{entry['code']} {entry['label'] or ''}".strip(),
                    "at": entry["at"],
                    "detail": "; ".join(
                        part for part in (entry["detail"], entry["return_file"]) if part
                    ),
                }
            )
    return listed
