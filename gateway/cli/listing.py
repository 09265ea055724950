"""``raccord flows``: its filters read as the operator means them, its rows streamed.

Dates are ISO 8601 (``2026-12-07``, ``2026-12-07T08:00``, with or without an offset; without
one, UTC) or a duration back from now (``90m``, ``1h``, ``7d``, ``2w``); anything else is a
usage error naming the flag. JSON and CSV are written row by row, so that an export of a million
flows holds a page of rows, not the journal; the table shows the latest :data:`TABLE_LIMIT`
flows unless ``--limit`` says otherwise, and says so when it cuts.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from gateway.cli import output
from gateway.journal import FlowRow, JournalDB
from gateway.journal.connection import Row
from protocols.settings import nearest

#: Flows a table shows when no --limit is given: what a terminal can usefully show.
TABLE_LIMIT = 200
#: Rows whose invoices are read in one query when streaming.
PAGE = 500

_RELATIVE = re.compile(r"^\s*(\d+)\s*(s|m|min|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

FLOW_COLUMNS = [
    "flow_id",
    "state",
    "connection",
    "original_name",
    "lot_id",
    "interface_code",
    "invoice_number",
    "remote_name",
    "attempts",
    "reason",
    "message",
    "checked",
    "return_status",
    "updated_at",
    "node",
]
#: The table's columns: ``node`` (which node last moved the flow) only when several nodes
#: share the journal; alone, it would repeat the host name on every line.
TABLE_COLUMNS = [column for column in FLOW_COLUMNS if column != "node"]


class FilterError(ValueError):
    """A ``flows`` filter that cannot be understood; one sentence naming the flag (exit 2)."""


def parse_when(flag: str, value: str, now: datetime) -> str:
    """``value`` as the journal writes times (ISO 8601 UTC, milliseconds), for comparison.

    Raises:
        FilterError: neither an ISO 8601 date or time nor a duration such as ``7d``.
    """
    relative = _RELATIVE.match(value)
    if relative:
        try:
            moment = now - timedelta(seconds=int(relative.group(1)) * _UNITS[relative.group(2)])
        except OverflowError:
            raise FilterError(f"{flag} {value!r}: further back than any date") from None
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise FilterError(
                f"{flag} {value!r}: expected an ISO 8601 date or time (2026-12-07, "
                "2026-12-07T08:30, 2026-12-07T08:30+01:00) or a duration back from now "
                "(30m, 1h, 7d, 2w)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC).isoformat(timespec="milliseconds")
    except OverflowError:  # 0001-01-01T00:00+14:00 is before the first UTC instant
        raise FilterError(f"{flag} {value!r}: outside the dates a journal can hold") from None


def check_connection(name: str, configured: Sequence[str], db: JournalDB) -> None:
    """A connection asked for is configured, or has flows in the journal.

    Raises:
        FilterError: neither, with the nearest configured name.
    """
    if name in configured or db.has_connection(name):
        return
    hint = nearest(name, configured)
    raise FilterError(
        f"--connection {name}: no such connection"
        + (f"; did you mean {hint}?" if hint else f" (configured: {', '.join(configured)})")
    )


def return_status(invoices: list[dict[str, Any]]) -> str | None:
    """One line for the flow's invoices, as the return flows left them."""
    if not invoices:
        return None
    if len(invoices) == 1:
        invoice = invoices[0]
        if invoice["rejected"]:
            return "rejected (collateral)" if invoice["collateral"] else "rejected"
        if invoice["status_code"]:
            return f"{invoice['status_code']} {invoice['status_label'] or ''}".strip()
        return None
    rejected = sum(1 for i in invoices if i["rejected"])
    collateral = sum(1 for i in invoices if i["collateral"])
    if rejected:
        return f"{rejected}/{len(invoices)} rejected ({collateral} collateral)"
    codes = Counter(i["status_code"] for i in invoices if i["status_code"])
    return ", ".join(f"{n}× {code}" for code, n in sorted(codes.items())) or None


def checked(validation: dict[str, Any] | None) -> str | None:
    """One cell for a flow's validation: ``valid``, ``invalid BR-10 (+2)``, ``not_checked``."""
    if not validation:
        return None
    status = str(validation["status"])
    errors = validation.get("errors") or []
    if not errors:
        return status
    more = f" (+{len(errors) - 1})" if len(errors) > 1 else ""
    return f"{status} {errors[0]['rule']}{more}"


def records(db: JournalDB, rows: Iterable[Row]) -> Iterator[dict[str, Any]]:
    """Each flow as listed (:meth:`FlowRow.to_dict`'s keys), with its return status: a page of
    rows in memory at a time."""
    iterator = iter(rows)
    while page := list(itertools.islice(iterator, PAGE)):
        invoices = db.invoices_of(page)
        for row in page:
            data = dict(row)
            data["receipt"] = json.loads(data["receipt"]) if data["receipt"] else None
            data["validation"] = json.loads(data["validation"]) if data["validation"] else None
            data["checked"] = checked(data["validation"])
            data["return_status"] = return_status(invoices[data["flow_id"]])
            yield data


def write_table(
    db: JournalDB,
    rows: Iterator[Row],
    limit: int,
    stream: TextIO,
    *,
    implicit: bool,
    nodes: bool = False,
) -> None:
    """The latest ``limit`` rows (``rows`` newest first, one more than ``limit`` asked), oldest
    first, and a line saying when more matched; ``nodes``: with the node column."""
    page = list(itertools.islice(rows, limit + 1)) if limit else list(rows)
    cut = bool(limit) and len(page) > limit
    shown = list(reversed(page[:limit] if limit else page))
    columns = FLOW_COLUMNS if nodes else TABLE_COLUMNS
    output.render(list(records(db, shown)), columns, "table", stream)
    if cut:
        how = "--limit N" if implicit else "a larger --limit"
        stream.write(
            f"(the latest {limit} shown; more flows match: {how}, --limit 0 for all, or "
            "narrow with --since / --state / --connection)\n"
        )


def write_flow(db: JournalDB, row: FlowRow, stream: TextIO) -> None:
    """One flow in table form: its fields, its invoices, and its history (state transitions,
    each with the node that made it, and the statuses return flows gave it)."""
    data = row.to_dict()
    invoices = db.invoices(row.flow_id) if row.packaging else db.carried(row.flow_id)[-1:]
    data["checked"] = checked(data["validation"])
    data["return_status"] = return_status(invoices)
    width = max(len(key) for key in data)
    for key, value in data.items():
        if value not in (None, "", {}):
            stream.write(f"{key.ljust(width)}  {value}\n")
    stream.write("\nINVOICES\n")
    output.render(
        invoices,
        ["position", "invoice_number", "supplier_id", "status_code", "status_label", "rejected"],
        "table",
        stream,
    )
    history: list[dict[str, Any]] = [
        {
            "at": t["at"],
            "what": f"{t['from_state'] or '—'} → {t['to_state']}",
            "detail": t["detail"],
            "node": t["node"],
        }
        for t in db.transitions(row.flow_id)
    ]
    history += [
        {
            "at": s["at"] or "",
            "what": f"status {s['code']} {s['label'] or ''}".strip()
            + ("" if s["position"] is None else f" (invoice {s['position']})"),
            "detail": f"return {s['return_file']}",
        }
        for s in db.statuses(row.flow_id)
    ]
    history.sort(key=lambda item: str(item["at"]))
    stream.write("\nHISTORY\n")
    output.render(history, ["at", "what", "node", "detail"], "table", stream)
