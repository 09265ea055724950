"""What ``raccord demo`` prints once its invoices have settled: each file's fate, each lot's
return, the AS2 flows; and whether all went as the demo expects (its exit status).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from gateway.journal import FlowRow, JournalDB
from gateway.sandbox.chorus import UPLOAD_DIR
from gateway.sandbox.demo_setup import AS2_CONNECTION, AS2_PARTNER, CONNECTION, INVALID


def _rows(journal: Path) -> list[FlowRow]:
    if not journal.exists():
        return []
    db = JournalDB(journal)
    try:
        return db.search()
    finally:
        db.close()


def summary(journal: Path, folder: Path, expected: int, expected_as2: int) -> int:
    rows = _rows(journal)
    db = JournalDB(journal)
    try:
        lots = [row for row in rows if row.packaging is not None]
        invoices = {row.flow_id: db.invoices(row.flow_id) for row in lots}
        over_as2 = [row for row in rows if row.connection == AS2_CONNECTION]
        as2_invoices = {row.flow_id: db.invoices(row.flow_id) for row in over_as2}
    finally:
        db.close()
    files = [row for row in rows if row.packaging is None and row.connection == CONNECTION]
    print()
    print(f"{'FILE':28} {'STATE':7} {'CODE':9} LOT / REASON")
    for row in files:
        detail = row.lot_id if row.state == "packed" else f"{row.reason}: {row.message}"
        print(f"{row.original_name:28} {row.state:7} {row.interface_code or '-':9} {detail}")
    print()
    print(f"{'LOT':24} {'CODE':9} {'MODE':9} RETURN (CPP Statut, applied)")
    for lot in lots:
        items = invoices[lot.flow_id]
        rejected = [i for i in items if i["rejected"]]
        collateral = [i for i in rejected if i["collateral"]]
        integrated = [i for i in items if not i["rejected"] and i["status_code"] == "01"]
        plural = "s" if len(items) != 1 else ""
        outcome = (
            f"{len(items)} invoice{plural}: {len(integrated)} deposited, {len(rejected)} rejected"
        )
        if collateral:
            outcome += f" ({len(collateral)} only because of another invoice)"
        if lot.resubmit_of:
            outcome += f" — resubmission of {lot.resubmit_of}"
        print(f"{lot.flow_id:24} {lot.interface_code or '-':9} {lot.mode or '-':9} {outcome}")
    print(f"  remote names: {', '.join(lot.remote_name or '?' for lot in lots)}")
    uploaded = sorted(p.name for p in (folder / "partner" / UPLOAD_DIR).iterdir())
    rejected_dir = folder / "data" / "rejected" / CONNECTION
    copies = sorted(p.name for p in rejected_dir.iterdir() if not p.name.endswith(".json"))
    print()
    print(f"On the partner side: {len(uploaded)} lot(s) in {folder / 'partner' / UPLOAD_DIR}")
    print(f"Rejected invoices, with .rejection.json: {', '.join(copies)} in {rejected_dir}")
    as2_ok = _as2_summary(over_as2, as2_invoices)
    complete = [lot for lot in lots if lot.mode == "complete" and not lot.resubmit_of]
    partial = [lot for lot in lots if lot.interface_code == "FSO1106A"]
    resubmitted = [lot for lot in lots if lot.resubmit_of]
    held = [row for row in files if row.reason == "invalid_invoice"]
    for row in held:
        checked = json.loads(row.validation or "{}")
        print()
        print(f"Held back by validation (EN 16931): {row.original_name}, in error/{CONNECTION}/")
        for error in checked.get("errors", []):
            print(f"  {error['rule']}  {error['message']}  {error['location']}")
    failed = sorted(row.original_name for row in files if row.state == "error")
    ok = (
        len(files) == expected
        and failed == sorted(["not-an-invoice.txt", INVALID])
        and [row.original_name for row in held] == [INVALID]
        and "BR-10" in (held[0].message or "")
        and len(complete) == 1
        and all(i["rejected"] for i in invoices[complete[0].flow_id])
        and len(partial) == 1
        and sum(i["rejected"] for i in invoices[partial[0].flow_id]) == 1
        and len(resubmitted) == 1
        and all(i["status_code"] == "01" for i in invoices[resubmitted[0].flow_id])
        and len(uploaded) == len(lots)
        and len(over_as2) == expected_as2
        and as2_ok
    )
    print()
    if ok:
        print(
            "Demo complete: the same fault sank the whole UBL lot under Complète (its innocent "
            "invoices were resubmitted and integrated) and only the faulty CII invoice under "
            "Partielle; the file that is no invoice was set aside in error/, and so was the "
            "invoice that breaks EN 16931 rule BR-10 (validation = block); over AS2, each "
            "invoice's signed MDN was verified (MIC included) and its status came back over AS2. "
            f"Try: raccord flows --config {folder / 'raccord.toml'}"
        )
        return 0
    print(
        f"Demo FAILED: {len(files)}/{expected} files journaled, {len(lots)} lots, "
        f"{len(uploaded)} on the partner side, {len(over_as2)}/{expected_as2} AS2 flows; "
        f"see {folder / 'raccord.log'}",
        file=sys.stderr,
    )
    return 1


def _as2_summary(rows: list[FlowRow], invoices: dict[str, list[dict[str, Any]]]) -> bool:
    """Print the AS2 flows (Message-ID, MDN, return status); whether each went as it should:
    sent with a positive MDN confirming our MIC, and integrated (status 01)."""
    print()
    print(f"AS2 ({AS2_CONNECTION} -> {AS2_PARTNER}: sha256 + AES-256, synchronous signed MDN)")
    print(f"{'FILE':22} {'STATE':7} {'MESSAGE-ID':40} {'MDN':10} RETURN")
    ok = True
    for row in rows:
        answer = json.loads(row.receipt or "{}").get("partner_answer", {})
        disposition = str(answer.get("mdn_disposition", "-")).rsplit(";", 1)[-1].strip()
        statuses = [str(i["status_code"]) for i in invoices[row.flow_id]]
        message_id = str(answer.get("message_id", "-"))
        print(
            f"{row.original_name:22} {row.state:7} {message_id:40} {disposition:10} "
            f"{', '.join(s for s in statuses if s != 'None') or '-'}"
        )
        ok = ok and (
            row.state == "sent"
            and disposition == "processed"
            and answer.get("mdn_mic") == answer.get("mic")
            and statuses == ["01"]
        )
    return ok
