"""``raccord flows`` (flows, invoices, return flows) and ``raccord purge``: the journal read and
pruned."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from gateway.cli import invoice_listing, output
from gateway.cli import listing as flowlist
from gateway.cli.common import OK, UsageError, load_config, open_journal, output_format
from gateway.journal import JournalDB

RETURN_COLUMNS = [
    "return_id",
    "state",
    "connection",
    "file",
    "kind",
    "flow_ids",
    "message",
    "received_at",
]


def cmd_flows(args: argparse.Namespace) -> int:
    """``raccord flows``: the journal's flows, invoices (``--status``/``--invoice``) or returns."""
    config = load_config(args)
    fmt = output_format(args)
    now = datetime.now(UTC)
    since = None if args.since is None else flowlist.parse_when("--since", args.since, now)
    until = None if args.until is None else flowlist.parse_when("--until", args.until, now)
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit}: expected 0 (all) or a positive number")
    db = open_journal(config)
    try:
        if args.connection:
            flowlist.check_connection(args.connection, [c.name for c in config.connections], db)
        if args.returns:
            found = db.returns(state=args.return_state, connection=args.connection)
            output.render(found, RETURN_COLUMNS, fmt)
            return OK
        if (args.status or args.invoice) and not args.flow:
            output.render(_invoices(db, args, since, until), invoice_listing.COLUMNS, fmt)
            return OK
        if args.flow and fmt == "table":
            row = db.get(args.flow)
            if row is None:
                raise UsageError(f"--flow {args.flow}: no such flow in the journal")
            flowlist.write_flow(db, row, sys.stdout)
            return OK
        _list_flows(args, db, fmt, since, until, nodes=config.journal.url is not None)
    finally:
        db.close()
    return OK


def _list_flows(
    args: argparse.Namespace,
    db: JournalDB,
    fmt: str,
    since: str | None,
    until: str | None,
    *,
    nodes: bool,
) -> None:
    """The flows matching the filters: streamed as JSON or CSV, the latest in a table (with
    the node column when ``nodes``: several nodes share the journal)."""
    implicit = args.limit is None and fmt == "table"
    limit = flowlist.TABLE_LIMIT if implicit else (args.limit or 0)
    filters: dict[str, Any] = {
        "connection": args.connection,
        "state": args.state,
        "since": since,
        "until": until,
        "invoice": args.invoice,
        "flow": args.flow,
        "status": args.status,
    }
    if fmt == "table":
        rows = db.each_row(**filters, limit=limit + 1 if limit else None, newest_first=True)
        flowlist.write_table(db, rows, limit, sys.stdout, implicit=implicit, nodes=nodes)
        return
    # Oldest first, as exports always were; with --limit, the latest N (still oldest first).
    if limit:
        latest = list(db.each_row(**filters, limit=limit, newest_first=True))
        records = flowlist.records(db, reversed(latest))
    else:
        records = flowlist.records(db, db.each_row(**filters))
    if args.flow:  # one flow asked for: its invoices and status history too
        records = (_with_history(db, record) for record in records)
    output.render(records, flowlist.FLOW_COLUMNS, fmt)


def _with_history(db: JournalDB, record: dict[str, Any]) -> dict[str, Any]:
    flow_id = record["flow_id"]
    row = db.get(flow_id)
    assert row is not None
    record["invoices"] = db.invoices(flow_id) if row.packaging else db.carried(flow_id)[-1:]
    record["statuses"] = db.statuses(flow_id)
    record["transitions"] = db.transitions(flow_id)  # each with the node that made it
    return record


def _invoices(
    db: JournalDB, args: argparse.Namespace, since: str | None, until: str | None
) -> list[dict[str, Any]]:
    """``--status``/``--invoice``: the invoices themselves (see gateway.cli.invoice_listing)."""
    return invoice_listing.records(
        db,
        invoice=args.invoice,
        status=args.status,
        connection=args.connection,
        state=args.state,
        since=since,
        until=until,
        table=output_format(args) != "json",
    )


# -- purge --------------------------------------------------------------------------------------


def cmd_purge(args: argparse.Namespace) -> int:
    """``raccord purge``: forget flows and returns filed before ``--before``."""

    from gateway.ops import retention

    config = load_config(args)
    now = datetime.now(UTC)
    cutoff = datetime.fromisoformat(flowlist.parse_when("--before", args.before, now))
    refusal = retention.too_recent(cutoff, now)
    if refusal:
        raise UsageError(f"--before {args.before}: {refusal}")
    db = open_journal(config)
    try:
        purged = retention.purge(db, cutoff, with_files=args.files)
    finally:
        db.close()
    print(
        f"purged {purged.flows} flow(s) and {purged.returns} return(s) filed before "
        f"{cutoff:%Y-%m-%d %H:%M} UTC" + (f"; {purged.files} file(s) deleted" if args.files else "")
    )
    return OK
