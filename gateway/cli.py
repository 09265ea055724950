"""The ``raccord`` command (CONTRACT.md, "Commands").

Exit status: 0 success; 1 the thing checked is not right (invalid file, failed connection);
2 usage or configuration error. Operator mistakes are one sentence on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from flows import codes
from flows.analysis import Analysis, analyze
from gateway import config as config_module
from gateway import invoice_listing, logs, output
from gateway.config import Config, ConfigError, Connection, Mode, State
from gateway.folders import Layout
from gateway.journal import STATES, JournalDB
from protocols import registry
from protocols.errors import TransferError
from protocols.settings import nearest

OK, NOT_RIGHT, USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake in how raccord was called; exit 2."""


def _load(args: argparse.Namespace) -> Config:
    path = Path(args.config) if args.config else config_module.default_path()
    return config_module.load(path)


def _fmt(args: argparse.Namespace) -> str:
    return str(args.format or output.default_format())


# -- run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import Gateway

    config = _load(args)
    logs.configure(background=True)

    async def main() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        gateway = Gateway(config)
        loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
        await gateway.run(stopping)

    try:
        asyncio.run(main())
    finally:
        logs.flush()
    return OK


# -- check --------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    today = datetime.now(UTC).date()
    print(f"{config.path}: configuration is valid ({len(config.connections)} connection(s))")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    status = OK
    for conn in config.connections:
        unusable = conn.unusable_reason(today)
        connected = ", ".join(
            f"{code}={mode.value}"
            for code, mode in conn.interfaces.items()
            if mode is not Mode.NONE
        )
        state = "usable" if unusable is None else f"not usable: {unusable[1]}"
        print(
            f"  {conn.name}: {conn.protocol} {conn.environment}, {state}; "
            f"interfaces: {connected or 'none connected'}"
        )
        if args.connect and unusable is None:
            ok, message = asyncio.run(_connect(conn))
            print(f"    connect: {'ok' if ok else 'FAILED'} — {message}")
            if not ok:
                status = NOT_RIGHT
    return status


async def _connect(conn: Connection) -> tuple[bool, str]:
    sender = registry.get(conn.protocol).create_sender(conn.settings)
    try:
        async with sender:
            return True, await sender.check()
    except TransferError as exc:
        return False, str(exc)


# -- connections --------------------------------------------------------------------------------

CONNECTION_COLUMNS = (
    "name",
    "partner_code",
    "protocol",
    "environment",
    "structure",
    "interfaces",
    "valid_from",
    "valid_to",
    "state",
    "usable",
    "why_not",
)


def connection_sheet(conn: Connection, today: date) -> dict[str, Any]:
    """One connection as the portal's *fiche de raccordement* shows it, usable today or not."""
    unusable = conn.unusable_reason(today)
    return {
        "name": conn.name,
        "partner_code": conn.partner_code,
        "protocol": conn.protocol,
        "environment": conn.environment,
        "structure": conn.structure,
        "interfaces": {code: mode.value for code, mode in conn.interfaces.items()},
        "valid_from": conn.valid_from.isoformat(),
        "valid_to": conn.valid_to.isoformat(),
        "state": conn.state.value,
        "usable": unusable is None,
        "why_not": None if unusable is None else unusable[1],
    }


def _selected(conn: Connection, args: argparse.Namespace) -> bool:
    if args.protocol and conn.protocol != args.protocol:
        return False
    if args.state and conn.state.value != args.state:
        return False
    if args.environment and conn.environment != args.environment:
        return False
    if args.interface:
        mode = conn.interfaces.get(args.interface, Mode.NONE)
        # An interface code asked for is one the connection carries, in the mode asked for.
        return mode.value == args.mode if args.mode else mode is not Mode.NONE
    if args.mode:
        return any(mode.value == args.mode for mode in conn.interfaces.values())
    return True


def cmd_connections(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.interface and args.interface not in codes.BY_CODE:
        hint = nearest(args.interface, codes.BY_CODE)
        raise UsageError(
            f"--interface {args.interface}: unknown interface code"
            + (f"; did you mean {hint}?" if hint else "")
        )
    today = datetime.now(UTC).date()
    sheets = [connection_sheet(c, today) for c in config.connections if _selected(c, args)]
    fmt = _fmt(args)
    if fmt != "json":  # one cell: "FSO1100A=complete FSO1106A=partial"
        for sheet in sheets:
            sheet["interfaces"] = " ".join(f"{k}={v}" for k, v in sheet["interfaces"].items())
    output.render(sheets, CONNECTION_COLUMNS, fmt)
    for warning in config.warnings:
        print(f"raccord: warning: {warning}", file=sys.stderr)
    return OK


# -- analyze ------------------------------------------------------------------------------------


def _routing(result: Analysis, config: Config) -> dict[str, Any]:
    from gateway.dispatcher import route

    today = datetime.now(UTC).date()
    verdicts: dict[str, str] = {}
    carrier = None
    for conn in config.connections:
        if not result.ok:
            verdicts[conn.name] = result.message or "not sendable"
            continue
        refusal = route(conn, result, today)
        verdicts[conn.name] = "would carry it" if refusal is None else refusal.message
        if refusal is None and carrier is None:
            carrier = conn.name
    return {"connection": carrier, "connections": verdicts}


def cmd_analyze(args: argparse.Namespace) -> int:
    config = _load(args) if args.config else None
    records = []
    status = OK
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"{name}: no such file")
        result = analyze(path)
        record: dict[str, Any] = {"file": str(path), **result.to_dict()}
        if config is not None:
            record.update(_routing(result, config))
        if not result.ok:
            status = NOT_RIGHT
        records.append(record)
    fmt = _fmt(args)
    if fmt == "table":
        for record in records:
            print(record["file"])
            for key, value in record.items():
                if key != "file" and value not in (None, {}):
                    if isinstance(value, dict):
                        for sub, text in value.items():
                            print(f"  {key}.{sub}: {text}")
                    else:
                        print(f"  {key}: {value}")
    else:
        columns = [
            "file",
            "format",
            "interface_code",
            "invoice_number",
            "issue_date",
            "supplier_id",
            "buyer_id",
            "size",
            "problem",
            "connection",
        ]
        output.render(records, columns, fmt)
    return status


# -- flows --------------------------------------------------------------------------------------

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
    "return_status",
    "updated_at",
]
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


def _return_status(invoices: list[dict[str, Any]]) -> str | None:
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


def _journal(config: Config) -> JournalDB:
    layout = Layout(config.gateway.data_dir)
    if not layout.journal.exists():
        raise UsageError(f"no journal at {layout.journal}: has raccord run with this data_dir?")
    return JournalDB(layout.journal)


def cmd_flows(args: argparse.Namespace) -> int:
    config = _load(args)
    db = _journal(config)
    try:
        if args.returns:
            found = db.returns(state=args.return_state, connection=args.connection)
            output.render(found, RETURN_COLUMNS, _fmt(args))
            return OK
        if (args.status or args.invoice) and not args.flow:
            output.render(_invoices(db, args), invoice_listing.COLUMNS, _fmt(args))
            return OK
        rows = db.search(
            connection=args.connection,
            state=args.state,
            since=args.since,
            until=args.until,
            invoice=args.invoice,
            flow=args.flow,
            status=args.status,
        )
        listed = []
        for row in rows:
            # A lot's invoices, or a dropped file's own invoice wherever it travelled.
            invoices = db.invoices(row.flow_id) if row.packaging else db.carried(row.flow_id)[-1:]
            data = row.to_dict()
            data["return_status"] = _return_status(invoices)
            if args.flow:  # one flow asked for: its invoices and status history too
                data["invoices"] = invoices
                data["statuses"] = db.statuses(row.flow_id)
            listed.append(data)
    finally:
        db.close()
    output.render(listed, FLOW_COLUMNS, _fmt(args))
    return OK


def _invoices(db: JournalDB, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``--status``/``--invoice``: the invoices themselves (see gateway.invoice_listing)."""
    return invoice_listing.records(
        db,
        invoice=args.invoice,
        status=args.status,
        connection=args.connection,
        state=args.state,
        since=args.since,
        until=args.until,
        table=_fmt(args) != "json",
    )


# -- certs --------------------------------------------------------------------------------------

CERT_COLUMNS = (
    "connection",
    "role",
    "subject",
    "not_after",
    "days_left",
    "state",
    "chain_problems",
)


def cmd_certs(args: argparse.Namespace) -> int:
    from gateway import certificates

    config = _load(args)
    records = certificates.report(config, args.warn_days, datetime.now(UTC))
    output.render(records, CERT_COLUMNS, _fmt(args))
    troubled = [r for r in records if r["state"] != "valid" or r["chain_problems"]]
    for record in troubled:
        print(
            f"raccord: {record['connection']}: {record['role']} certificate {record['subject']}: "
            + (record["state"] if record["state"] != "valid" else "")
            + (f" ({record['days_left']} days left)" if record["state"] == "expiring" else "")
            + (f" chain: {record['chain_problems']}" if record["chain_problems"] else ""),
            file=sys.stderr,
        )
    return NOT_RIGHT if troubled else OK


# -- import -------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from gateway import returns

    config = _load(args)
    names = [c.name for c in config.connections]
    connection = args.connection or (names[0] if len(names) == 1 else None)
    if connection is None:
        raise UsageError(f"several connections: say which with --connection ({', '.join(names)})")
    if connection not in names:
        raise UsageError(f"no connection named {connection} in the configuration")
    layout = Layout(config.gateway.data_dir)
    layout.create([connection])
    logs.configure("stderr")
    db = JournalDB(layout.journal)
    status = OK
    try:
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                print(f"raccord: {path}: no such file", file=sys.stderr)
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


# -- retry --------------------------------------------------------------------------------------


def cmd_retry(args: argparse.Namespace) -> int:
    from gateway.dispatcher import requeue

    config = _load(args)
    if not args.flows and not args.failed:
        raise UsageError("name the flows to retry, or use --failed for every flow in error")
    db = _journal(config)
    status = OK
    try:
        flow_ids = list(args.flows) or [row.flow_id for row in db.in_states(("error",))]
        for flow_id in flow_ids:
            try:
                print(requeue(db, flow_id, force=args.force))
            except LookupError as exc:
                print(f"raccord: {exc.args[0]}", file=sys.stderr)
                status = NOT_RIGHT
    finally:
        db.close()
    return status


# -- simulate / demo ----------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.demo import simulate

    return asyncio.run(simulate(Path(args.dir) if args.dir else None))


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import demo

    return asyncio.run(demo(Path(args.dir) if args.dir else None, wait=args.timeout))


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raccord", description="Gateway between your systems and Chorus Pro."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        help="configuration file (default: $RACCORD_CONFIG, else /etc/raccord/raccord.toml)",
    )
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument(
        "--format", choices=output.FORMATS, help="default: table on a terminal, else json"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    p.set_defaults(handler=cmd_run)
    p = sub.add_parser("check", parents=[common], help="validate the configuration")
    p.add_argument("--connect", action="store_true", help="also log in to every usable connection")
    p.set_defaults(handler=cmd_check)
    p = sub.add_parser(
        "connections", parents=[common, listing], help="the connection sheets and their state"
    )
    p.add_argument("--protocol", help="e.g. sftp, as2")
    p.add_argument(
        "--interface", metavar="CODE", help="carries this interface code (e.g. FSO1100A)"
    )
    p.add_argument("--state", choices=[s.value for s in State])
    p.add_argument("--environment", choices=["qualification", "production"])
    p.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        help="has an interface code in this mode (with --interface: that one)",
    )
    p.set_defaults(handler=cmd_connections)
    p = sub.add_parser("analyze", parents=[common, listing], help="analyse files; nothing is sent")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(handler=cmd_analyze)
    p = sub.add_parser("flows", parents=[common, listing], help="list flows from the journal")
    p.add_argument("--connection")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--since", help="ISO date or time (UTC), inclusive")
    p.add_argument("--until", help="ISO date or time (UTC), exclusive")
    p.add_argument(
        "--invoice", help="invoice number: that invoice in every flow that carried it, and history"
    )
    p.add_argument(
        "--status",
        help="list invoices by current status: a code (e.g. 05), rejected, collateral or "
        "not_received",
    )
    p.add_argument("--flow", help="flow id (also shows its invoices and status history)")
    p.add_argument("--returns", action="store_true", help="list return flows instead")
    p.add_argument(
        "--return-state",
        choices=["applied", "unmatched", "unreadable", "unrecognised", "received", "applying"],
        help="with --returns: only those (e.g. unmatched)",
    )
    p.set_defaults(handler=cmd_flows)
    p = sub.add_parser(
        "certs", parents=[common, listing], help="every certificate in use and how it stands"
    )
    p.add_argument(
        "--warn-days",
        type=int,
        default=30,
        metavar="N",
        help="exit 1 if one expires within N days (default 30), is expired or its chain broken",
    )
    p.set_defaults(handler=cmd_certs)
    p = sub.add_parser("import", parents=[common], help="feed return flows received by other means")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--connection", help="the connection they came on (needed if several)")
    p.set_defaults(handler=cmd_import)
    p = sub.add_parser("retry", parents=[common], help="put failed flows back in the queue")
    p.add_argument("flows", nargs="*", metavar="FLOW")
    p.add_argument("--failed", action="store_true", help="every flow in error")
    p.add_argument("--force", action="store_true", help="send even if it is a duplicate")
    p.set_defaults(handler=cmd_retry)
    p = sub.add_parser("simulate", parents=[common], help="run the partner simulator alone")
    p.add_argument("--dir", help="folder for its files (default: a temporary folder)")
    p.set_defaults(handler=cmd_simulate)
    p = sub.add_parser("demo", parents=[common], help="simulator + gateway + sample invoices")
    p.add_argument("--dir", help="folder for the demo (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for delivery")
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (ConfigError, UsageError) as exc:
        print(f"raccord: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
