"""``raccord import`` and ``raccord retry``: work handed back to the gateway by hand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway import logs
from gateway.cli.common import NOT_RIGHT, OK, UsageError, load_config, open_journal
from gateway.folders import Layout
from gateway.journal import JournalDB, journal_target


def cmd_import(args: argparse.Namespace) -> int:
    """``raccord import``: return flows received by other means, applied as if polled."""

    from gateway.returns import pipeline as returns

    config = load_config(args)
    names = [c.name for c in config.connections]
    connection = args.connection or (names[0] if len(names) == 1 else None)
    if connection is None:
        raise UsageError(f"several connections: say which with --connection ({', '.join(names)})")
    if connection not in names:
        raise UsageError(f"no connection named {connection} in the configuration")
    layout = Layout(config.gateway.data_dir)
    layout.create([connection])
    logs.configure("stderr")
    db = JournalDB(journal_target(config, layout))
    status = OK
    try:
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                print(f"raccord: {path}: no such file", file=sys.stderr)
                status = NOT_RIGHT
                continue
            refusal = _no_return_flow(path, connection)
            if refusal:
                print(f"raccord: {path}: {refusal}; nothing imported", file=sys.stderr)
                status = NOT_RIGHT
                continue
            outcome = returns.receive(
                db, layout, connection, path, resubmit=returns.resubmitting(config)
            )
            detail = f" — {outcome.message}" if outcome.message else ""
            if outcome.resubmitted:
                detail += f" — collateral invoices resubmitted as {', '.join(outcome.resubmitted)}"
            flows = ", ".join(outcome.flows) or "no flow"
            print(
                f"{path.name}: {outcome.state} ({flows}; {outcome.rejected} rejected, "
                f"{outcome.collateral} collateral){detail}"
            )
    finally:
        db.close()
    return status


def _no_return_flow(path: Path, connection: str) -> str | None:
    """Why ``path`` is no return flow (an invoice, or no document at all), or None."""
    from flows.analysis import analyze
    from flows.returns import Kind, parse

    analysis = analyze(path)
    if analysis.interface_code:
        return (
            f"this is an invoice ({analysis.format.value}, {analysis.interface_code}), not a "
            f"return flow: to send it, drop it in outbox/{connection}/"
        )
    parsed = parse(path)
    if parsed.kind is Kind.UNREADABLE:
        why = "; ".join(parsed.unrecognised) or "unreadable"
        return f"not a return flow ({why})"
    return None


# -- retry --------------------------------------------------------------------------------------


def cmd_retry(args: argparse.Namespace) -> int:
    """``raccord retry``: failed flows put back in the queue (the daemon picks them up)."""

    from gateway.flow.dispatcher import CannotSucceed, requeue

    config = load_config(args)
    if not args.flows and not args.failed:
        raise UsageError("name the flows to retry, or use --failed for every flow in error")
    db = open_journal(config)
    status = OK
    try:
        flow_ids = list(args.flows) or [row.flow_id for row in db.in_states(("error",))]
        for flow_id in flow_ids:
            try:
                print(requeue(db, flow_id, force=args.force))
            except CannotSucceed as exc:
                print(f"raccord: {exc.args[0]}", file=sys.stderr)
                # --failed takes back what may now succeed; the rest is said, not an error.
                status = status if not args.flows else NOT_RIGHT
            except LookupError as exc:
                print(f"raccord: {exc.args[0]}", file=sys.stderr)
                status = NOT_RIGHT
    finally:
        db.close()
    return status
