"""The return-flow pipeline: store durably, parse, correlate, decide, file.

One entry point, :func:`receive`, for every way a return arrives (the SFTP poller, the AS2
receiver, ``raccord import``)::

    file ─▶ inbox/<connection>/<return_id>--<name> (written, fsynced) ─▶ journal (returns)
         ─▶ parse (flows.returns) ─▶ correlate ─▶ decide (flows.decision, the flow's mode)
         ─▶ journal (statuses, invoices) ─▶ sent/…/<name>.status.json, rejected/<connection>/

* Correlation: by the raccord flow ids the return names (IdFlx, IdFlux, any text), else each
  invoice status by (supplier, invoice number) among the connection's sent flows.
* The same bytes received twice on a connection are journaled once and applied once.
* A return that matches no flow is kept in the inbox and journaled ``unmatched`` (listed by
  ``raccord flows --returns``); one that cannot be read is ``unreadable``; one read but with no
  status raccord understands is ``unrecognised`` (never ``applied``). Nothing is dropped.
* Each invoice's current status comes from its whole status history (:mod:`flows.statuses`):
  ordered by the statuses' own timestamps, a final status never replaced; a contradiction is
  kept in the history and logged as ``return.anomaly``.
* Applying is idempotent: the journal is written first (state ``applying``), then the files,
  then ``applied``; a return found ``received`` or ``applying`` at start is applied again.
* A rejected invoice of a lot is copied out of the lot. ``resubmit_collateral`` packs the
  innocent invoices of a rejected lot (collateral under Complète, or not named by a flow-level
  failure under either mode) into a new lot, once (never for a lot that is itself a
  resubmission); the daemon sends it like any claimed flow.

Synchronous on purpose (its own journal connection): the daemon runs it in a worker thread,
the CLI directly.
"""

from __future__ import annotations

import errno
import json
from collections import defaultdict
from collections.abc import Container
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows import naming, statuses
from flows.analysis import digest
from flows.decision import InvoiceRef, Verdict, decide, normalise
from flows.returns import InvoiceStatus, Kind, ReturnFlow, parse
from flows.statuses import Entry, is_final, is_rejected, lifecycle
from gateway import logs
from gateway.config import Config
from gateway.folders import (
    Layout,
    copy,
    free_name,
    fsync_dir,
    move,
    parse_spool_name,
    spool_name,
    write_bytes,
    write_json,
)
from gateway.journal import JournalDB, JournalTarget
from gateway.returns.resubmission import lot_members, resubmit_collateral

log = logs.get()

_ids = naming.FlowIds()
REJECTION = ".rejection.json"


@dataclass(frozen=True)
class Outcome:
    return_id: str
    state: str  # applied | unmatched | unreadable | unrecognised | duplicate
    flows: tuple[str, ...]
    rejected: int
    collateral: int
    message: str
    resubmitted: tuple[str, ...] = ()  # new lots carrying collateral invoices again
    anomalies: tuple[str, ...] = ()  # statuses contradicting a final one, kept out


def _take(source: Path, target: Path) -> None:
    """Move a downloaded file into the inbox (copy then remove across file systems)."""
    try:
        move(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        copy(source, target)
        source.unlink()
        fsync_dir(source.parent)


def _new_return_id(db: JournalDB, layout: Layout, connection: str, name: str) -> str:
    """A return id no journaled return and no inbox file has (never overwrite a stored one:
    the CLI and the daemon each count from their own random start)."""
    while True:
        return_id = _ids.new(datetime.now(UTC))
        target = layout.inbox(connection) / spool_name(return_id, name)
        if db.get_return(return_id) is None and not target.exists():
            return return_id


def receive(
    db: JournalDB,
    layout: Layout,
    connection: str,
    source: Path,
    *,
    move: bool = False,
    name: str | None = None,
    resubmit: Container[str] = (),
) -> Outcome:
    """Store a return flow for ``connection`` in its inbox, journal it and apply it.

    ``move`` takes the file away from ``source`` (a download); otherwise it is copied (an
    import by hand leaves the operator's file alone). ``name`` is the file's name at the
    partner when ``source`` is a temporary download. ``resubmit``: the connections whose
    policy is ``resubmit_collateral``.
    """
    sha256 = digest(source)[0]
    original = name or source.name
    name = naming.safe(original) or "return"
    earlier = db.return_by_sha256(connection, sha256)
    if earlier is not None:
        if move:
            source.unlink(missing_ok=True)
        message = f"same bytes as return {earlier['return_id']} ({earlier['file']}): applied once"
        log.warning(
            "return.duplicate",
            connection=connection,
            file=original,
            earlier=earlier["return_id"],
        )
        return Outcome(earlier["return_id"], "duplicate", (), 0, 0, message)
    return_id = _new_return_id(db, layout, connection, name)
    target = layout.inbox(connection) / spool_name(return_id, name)
    if move:
        _take(source, target)
    else:
        copy(source, target)
    with db.transaction():
        row, new = db.record_return(return_id, connection, original, str(target), sha256)
    if not new:  # received meanwhile by another path (poller and import racing): keep one
        target.unlink(missing_ok=True)
        message = f"same bytes as return {row['return_id']}: applied once"
        return Outcome(row["return_id"], "duplicate", (), 0, 0, message)
    log.info("return.received", connection=connection, file=original, return_id=return_id)
    return apply(db, layout, return_id, resubmit=resubmit)


def receive_download(
    layout: Layout,
    connection: str,
    source: Path,
    *,
    name: str,
    resubmit: Container[str] = (),
    journal: JournalTarget | None = None,
    node: str | None = None,
) -> Outcome:
    """:func:`receive` of a file just downloaded or pushed (moved into the inbox), for worker
    threads: on a journal connection of their own, recording ``node`` (the daemon's
    ``node_name``) with each move it makes."""
    db = JournalDB(layout.journal if journal is None else journal, node=node)
    try:
        return receive(db, layout, connection, source, move=True, name=name, resubmit=resubmit)
    finally:
        db.close()


def apply(
    db: JournalDB, layout: Layout, return_id: str, *, resubmit: Container[str] = ()
) -> Outcome:
    """Parse, correlate, decide and file one journaled return (idempotent)."""
    row = db.get_return(return_id)
    if row is None:
        raise LookupError(f"no return {return_id} in the journal")
    connection = row["connection"]
    ret = parse(Path(row["inbox_path"]))
    notes = list(ret.unrecognised)
    if ret.kind is Kind.UNREADABLE:
        return _finish(db, row, ret, "unreadable", {}, notes, 0, 0)
    if not ret.flow_statuses and not ret.invoice_statuses:
        # Nothing raccord could read as a status: never "applied" while nothing was.
        return _finish(db, row, ret, "unrecognised", {}, notes, 0, 0)
    targets = _correlate(db, connection, ret, notes)
    if not targets:
        return _finish(db, row, ret, "unmatched", {}, notes, 0, 0)
    verdicts: dict[str, list[Verdict]] = {}
    anomalies: list[str] = []
    with db.transaction():
        db.update_return(return_id, kind=ret.kind.value, state="applying")
        for flow_id, part in targets.items():
            flow = db.get(flow_id)
            assert flow is not None
            invoices = db.invoices(flow_id)
            refs = [
                InvoiceRef(i["position"], i["invoice_number"], i["supplier_id"]) for i in invoices
            ]
            verdicts[flow_id] = decide(flow.mode or "complete", refs, part)
            anomalies += _journal_statuses(
                db, return_id, flow_id, part, verdicts[flow_id], invoices
            )
    for anomaly in anomalies:
        log.warning(
            "return.anomaly",
            connection=connection,
            file=row["file"],
            return_id=return_id,
            anomaly=anomaly,
            action="a status contradicts a final one: it is kept in the history, not applied; "
            "check the invoice in Chorus Pro",
        )
    rejected = collateral = 0
    resubmitted = []
    for flow_id, flow_verdicts in verdicts.items():
        newly = _file_outputs(db, layout, flow_id, flow_verdicts)
        rejected += newly[0]
        collateral += newly[1]
        if connection in resubmit and (again := resubmit_collateral(db, layout, flow_id, _ids)):
            resubmitted.append(again)
    outcome = _finish(db, row, ret, "applied", verdicts, notes, rejected, collateral)
    return replace(outcome, resubmitted=tuple(resubmitted), anomalies=tuple(anomalies))


def _correlate(
    db: JournalDB, connection: str, ret: ReturnFlow, notes: list[str]
) -> dict[str, ReturnFlow]:
    """The flows this return speaks of, each with the part of the return about it."""
    named = [
        fid
        for fid in ret.flow_ids
        if (flow := db.get(fid)) is not None and flow.connection == connection
    ]
    for fid in ret.flow_ids:
        if fid not in named:
            notes.append(f"flow id {fid} is not a flow of {connection}")
    by_flow: dict[str, list[InvoiceStatus]] = defaultdict(list)
    for status in ret.invoice_statuses:
        flow_id = _flow_of_invoice(db, connection, status, named)
        if flow_id is None:
            notes.append(
                f"invoice {status.invoice_number} (supplier {status.supplier_id}) matches no "
                f"flow of {connection}"
            )
            continue
        by_flow[flow_id].append(status)
    targets: dict[str, ReturnFlow] = {}
    for flow_id in dict.fromkeys([*named, *by_flow]):
        targets[flow_id] = replace(
            ret,
            flow_statuses=ret.flow_statuses if flow_id in named else (),
            invoice_statuses=tuple(by_flow.get(flow_id, ())),
        )
    return targets


def _flow_of_invoice(
    db: JournalDB, connection: str, status: InvoiceStatus, named: list[str]
) -> str | None:
    if status.invoice_number is None:
        return None
    number = normalise(status.invoice_number)
    for flow_id in named:
        for invoice in db.invoices(flow_id):
            if normalise(invoice["invoice_number"] or "") == number:
                return flow_id
    found = db.flows_of_invoice(connection, number, status.supplier_id)
    return found[0] if found else None


def _journal_statuses(
    db: JournalDB,
    return_id: str,
    flow_id: str,
    part: ReturnFlow,
    verdicts: list[Verdict],
    invoices: list[dict[str, Any]],
) -> list[str]:
    """Journal the statuses ``part`` gives ``flow_id`` and each invoice's current status, as
    its whole history says (:mod:`flows.statuses`); return the anomalies found."""
    for flow_status in part.flow_statuses:
        detail = "; ".join(e.text() for e in flow_status.errors) or None
        db.record_status(
            return_id,
            flow_id,
            None,
            flow_status.code,
            flow_status.label,
            flow_status.timestamp,
            detail,
        )
    numbers = {normalise(i["invoice_number"] or ""): i["position"] for i in invoices}
    numbers.pop("", None)  # an invoice without a number is never matched by number
    for status in part.invoice_statuses:
        position = numbers.get(normalise(status.invoice_number or ""))
        if position is not None:
            db.record_status(
                return_id,
                flow_id,
                position,
                status.code,
                status.label,
                status.timestamp,
                status.comment,
            )
    histories: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in db.statuses(flow_id):
        if row["position"] is not None:
            histories[row["position"]].append(row)
    current = {i["position"]: i for i in invoices}
    anomalies: list[str] = []
    for verdict in verdicts:
        before = current[verdict.position]
        history = histories[verdict.position]
        # This return's statuses come after every earlier one, even on a second application
        # after a crash (they are journaled by then).
        earlier = [Entry(r["code"], r["at"]) for r in history if r["return_id"] != return_id]
        now = [Entry(r["code"], r["at"]) for r in history if r["return_id"] == return_id]
        was, became = lifecycle(earlier), lifecycle(earlier + now)
        found = [a.text() for a in became.anomalies[len(was.anomalies) :]]
        values: dict[str, Any] = {}
        code = became.current.code if became.current else None
        settled = bool(before["final"]) and not before["rejected"]  # paid: never rejected now
        if verdict.rejected and settled:
            found.append(
                f"rejection not applied: the invoice is already final with status "
                f"{before['status_code']} ({'; '.join(verdict.reasons)})"
            )
        elif before["rejected"] and code is not None and is_final(code) and not is_rejected(code):
            found.append(f"status {code} not applied: the invoice was rejected before")
            code = None
        if code is not None and code != before["status_code"]:
            label = statuses.info(code)
            values.update(
                status_code=code,
                status_label=label.label if label else _label_in(history, code),
            )
        if verdict.rejected and not before["rejected"] and not settled:
            values.update(
                rejected=1,
                collateral=int(verdict.collateral),
                flow_not_received=int(verdict.flow_not_received),
                reasons=json.dumps(verdict.reasons, ensure_ascii=False),
            )
        if (became.final or values.get("rejected")) and not before["final"]:
            values["final"] = 1
        if values:
            values["status_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
            db.set_invoice_status(flow_id, verdict.position, **values)
        anomalies += [
            f"invoice {before['invoice_number']} of flow {flow_id}: {text}" for text in found
        ]
    return anomalies


def _label_in(history: list[dict[str, Any]], code: str) -> str | None:
    """The label a return gave a code raccord's table does not know (e.g. an API word)."""
    return next((r["label"] for r in reversed(history) if r["code"] == code), None)


def _file_outputs(
    db: JournalDB, layout: Layout, flow_id: str, verdicts: list[Verdict]
) -> tuple[int, int]:
    """``status.json`` beside the sent file; rejected invoices copied to ``rejected/``.
    Returns (invoices rejected now, of which collateral)."""
    flow = db.get(flow_id)
    assert flow is not None
    invoices = db.invoices(flow_id)
    history = db.statuses(flow_id)
    if flow.final_path:
        write_json(
            Path(flow.final_path + ".status.json"),
            {
                "flow_id": flow_id,
                "connection": flow.connection,
                "file": flow.original_name,
                "remote_name": flow.remote_name,
                "mode": flow.mode,
                "invoices": [_invoice_view(i) for i in invoices],
                "history": history,
            },
        )
    rejected = collateral = 0
    sent_file = Path(flow.final_path) if flow.final_path else None
    members: dict[str, bytes] | None = None  # a lot's invoices, read once
    for invoice in invoices:
        done = invoice["rejected_path"] and Path(invoice["rejected_path"] + REJECTION).exists()
        if not invoice["rejected"] or done:
            continue
        # The path is journaled before anything is written: a crash in between makes the next
        # attempt write the same path again, never a second copy under another name.
        target = Path(invoice["rejected_path"] or "")
        if not invoice["rejected_path"]:
            with db.transaction():
                target = free_name(
                    layout.rejected(flow.connection),
                    invoice["file"],
                    flow_id,
                    lambda path: path.exists() or db.rejected_path_held(str(path)),
                )
                db.set_invoice_status(flow_id, invoice["position"], rejected_path=str(target))
        document = {
            "flow_id": flow_id,
            "connection": flow.connection,
            "file": invoice["file"],
            "invoice_number": invoice["invoice_number"],
            "supplier_id": invoice["supplier_id"],
            "status_code": invoice["status_code"],
            "status_label": invoice["status_label"],
            "collateral": bool(invoice["collateral"]),
            "flow_not_received": bool(invoice["flow_not_received"]),
            "reasons": json.loads(invoice["reasons"] or "[]"),
            "statuses": [s for s in history if s["position"] in (None, invoice["position"])],
            "remote_name": flow.remote_name,
        }
        if sent_file is not None and sent_file.exists():
            if flow.packaging is None:
                copy(sent_file, target)
            else:
                if members is None:
                    members = lot_members(flow.connection, flow_id, sent_file)
                if invoice["file"] in members:
                    write_bytes(target, members[invoice["file"]])
        write_json(target.with_name(target.name + REJECTION), document)
        rejected += 1
        collateral += int(bool(invoice["collateral"]))
        log.warning(
            "invoice.rejected",
            connection=flow.connection,
            flow_id=flow_id,
            file=invoice["file"],
            invoice_number=invoice["invoice_number"],
            collateral=bool(invoice["collateral"]),
            reasons=document["reasons"],
            path=str(target),
        )
    return rejected, collateral


def _invoice_view(invoice: dict[str, Any]) -> dict[str, Any]:
    return {
        "position": invoice["position"],
        "file": invoice["file"],
        "invoice_number": invoice["invoice_number"],
        "supplier_id": invoice["supplier_id"],
        "status_code": invoice["status_code"],
        "status_label": invoice["status_label"],
        "rejected": bool(invoice["rejected"]),
        "collateral": bool(invoice["collateral"]),
        "flow_not_received": bool(invoice["flow_not_received"]),
        "final": bool(invoice["final"]),
        "reasons": json.loads(invoice["reasons"] or "[]"),
    }


def _finish(
    db: JournalDB,
    row: dict[str, Any],
    ret: ReturnFlow,
    state: str,
    verdicts: dict[str, list[Verdict]],
    notes: list[str],
    rejected: int,
    collateral: int,
) -> Outcome:
    message = "; ".join(notes) or None
    flows = tuple(verdicts)
    with db.transaction():
        db.update_return(
            row["return_id"],
            kind=ret.kind.value,
            state=state,
            flow_ids=",".join(flows) or None,
            message=message,
            applied_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        )
    fields = {
        "connection": row["connection"],
        "file": row["file"],
        "return_id": row["return_id"],
        "kind": ret.kind.value,
        "flows": list(flows),
        "rejected": rejected,
        "collateral": collateral,
        "unrecognised": notes,
    }
    if state == "applied":
        log.info("return.applied", **fields)
    else:
        log.warning(f"return.{state}", **fields, path=row["inbox_path"])
    return Outcome(row["return_id"], state, flows, rejected, collateral, message or "")


def resubmitting(config: Config) -> frozenset[str]:
    """The connections whose policy is ``resubmit_collateral``."""
    return frozenset(conn.name for conn in config.connections if conn.resubmit_collateral)


def pending(db: JournalDB) -> list[str]:
    """Returns journaled but not finished (a stop or crash while applying)."""
    return [r["return_id"] for r in db.returns() if r["state"] in ("received", "applying")]


def recover(db: JournalDB, layout: Layout, connections: list[str]) -> list[str]:
    """Journal the returns stored in an inbox just before a crash, before they were journaled
    (their source may be gone: a download already removed, a push already answered). A copy of
    bytes already journaled is removed. Returns the return ids journaled now, to be applied."""
    recovered = []
    for connection in connections:
        inbox = layout.inbox(connection)
        if not inbox.is_dir():
            continue
        for path in sorted(inbox.iterdir()):
            parsed = parse_spool_name(path.name)
            if parsed is None or not path.is_file() or db.get_return(parsed[0]) is not None:
                continue
            return_id, name = parsed
            with db.transaction():
                _, new = db.record_return(return_id, connection, name, str(path), digest(path)[0])
            if new:
                recovered.append(return_id)
                log.warning("return.recovered", connection=connection, file=name, path=str(path))
            else:
                path.unlink()
                fsync_dir(inbox)
    return recovered
