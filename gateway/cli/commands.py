"""The ``raccord`` command (CONTRACT.md, "Commands").

Exit status: 0 success; 1 the thing checked is not right (invalid file, failed connection);
2 usage or configuration error. Operator mistakes are one sentence on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows import codes
from flows import validation as rulebook
from gateway import config as config_module
from gateway import logs
from gateway.cli import invoice_listing, output
from gateway.cli import listing as flowlist
from gateway.config import Config, ConfigError, Connection, Mode, State
from gateway.folders import Layout
from gateway.journal import STATES, JournalDB
from protocols import registry
from protocols.errors import TransferError
from protocols.settings import nearest

if TYPE_CHECKING:
    from flows.analysis import Analysis

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
    from gateway.daemon import Gateway, StartupError

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
    except StartupError as exc:
        logs.get().error("gateway.start_failed", message=str(exc))
        logs.flush()
        print(f"raccord: {config.path}: {exc}", file=sys.stderr)
        return USAGE
    finally:
        logs.flush()
    return OK


# -- check --------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.cli import preflight

    config = _load(args)
    now = datetime.now(UTC)
    today = now.date()
    problems = preflight.prove(config, now)
    for problem in problems:
        print(f"raccord: {config.path}: {problem}", file=sys.stderr)
    if problems:
        print(
            f"{config.path}: configuration parses ({len(config.connections)} connection(s)) but "
            f"{len(problems)} problem(s) would stop it working (on stderr)"
        )
    else:
        print(f"{config.path}: configuration is valid ({len(config.connections)} connection(s))")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    status = NOT_RIGHT if problems else OK
    for conn in config.connections:
        unusable = conn.unusable_reason(today)
        own = [p for p in problems if p.key.startswith(f"connection[{conn.name}].")]
        connected = ", ".join(
            f"{code}={mode.value}"
            for code, mode in conn.interfaces.items()
            if mode is not Mode.NONE
        )
        state = "usable" if unusable is None else f"not usable: {unusable[1]}"
        if own and unusable is None:
            state = f"not usable: {own[0].message}"
        print(
            f"  {conn.name}: {conn.protocol} {conn.environment}, {state}; "
            f"interfaces: {connected or 'none connected'}"
        )
        if args.connect and unusable is None and not own:
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
    from gateway.flow.dispatcher import route

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


def _rules(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    for name in wanted:
        if name not in rulebook.RULE_SETS:
            raise UsageError(
                f"--rules: unknown rule set {name!r} (known: {', '.join(rulebook.RULE_SETS)})"
            )
    if not wanted:
        raise UsageError(f"--rules: name a rule set ({', '.join(rulebook.RULE_SETS)})")
    return wanted


def _validations(
    paths: list[Path], results: list[Analysis], wanted: tuple[str, ...], timeout: float
) -> list[rulebook.Validation]:
    """Each file's validation (files whose format is unknown are not checked)."""
    from gateway.flow import validator

    async def run() -> list[rulebook.Validation]:
        checked = [i for i, r in enumerate(results) if r.format in validator.CHECKED_FORMATS]
        pool = validator.Validator(
            workers=max(1, min(len(checked), validator.default_workers())), timeout=timeout
        )

        async def one(path: Path) -> rulebook.Validation:
            try:
                return await pool.validate(path, wanted)
            except (validator.ValidationTimeout, validator.ValidationCrashed, OSError) as exc:
                return rulebook.not_checked(str(exc))

        try:
            done = await asyncio.gather(*(one(paths[i]) for i in checked))
        finally:
            await pool.close()
        found = dict(zip(checked, done, strict=True))
        return [
            found.get(i) or rulebook.not_checked(results[i].message or "format not recognised")
            for i in range(len(results))
        ]

    logs.configure("stderr")  # a worker's warnings must not mix with the JSON on stdout
    try:
        return asyncio.run(run())
    except validator.ValidatorUnavailable as exc:
        raise UsageError(str(exc)) from None


def cmd_analyze(args: argparse.Namespace) -> int:
    from flows.analysis import analyze

    config = _load(args) if args.config else None
    wanted = _rules(args.rules)
    paths: list[Path] = []
    results: list[Analysis] = []
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"{name}: no such file")
        paths.append(path)
        results.append(analyze(path))
    timeout = config.gateway.analysis_timeout if config is not None else 20.0
    validations = _validations(paths, results, wanted, timeout)
    records = []
    status = OK
    for path, result, checked in zip(paths, results, validations, strict=True):
        record: dict[str, Any] = {"file": str(path), **result.to_dict()}
        if config is not None:
            record.update(_routing(result, config))
        record["validation"] = checked.to_dict()
        if checked.note:
            record["validation_note"] = checked.note
        record["valid"] = checked.status.value
        if not result.ok or checked.invalid:
            status = NOT_RIGHT
        records.append(record)
    fmt = _fmt(args)
    if fmt == "table":
        for record in records:
            print(record["file"])
            for key, value in record.items():
                skip = ("file", "validation", "valid", "validation_note")
                if key in skip or value in (None, {}):
                    continue
                if isinstance(value, dict):
                    for sub, text in value.items():
                        print(f"  {key}.{sub}: {text}")
                else:
                    print(f"  {key}: {value}")
            _print_validation(record["validation"], record.get("validation_note"))
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
            "valid",
            "connection",
        ]
        output.render(records, columns, fmt)
    return status


def _print_validation(checked: dict[str, Any], note: str | None) -> None:
    rules = ", ".join(checked["rules"])
    print(f"  validation: {checked['status']}" + (f" ({rules})" if rules else ""))
    if note:
        print(f"    {note}")
    for kind, items in (("", checked["errors"]), ("warning ", checked["warnings"])):
        for item in items:
            print(f"    {kind}{item['rule']}  {item['message']}  {item['location']}".rstrip())


# -- flows --------------------------------------------------------------------------------------

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


def _journal(config: Config) -> JournalDB:
    layout = Layout(config.gateway.data_dir)
    if not layout.journal.exists():
        raise UsageError(f"no journal at {layout.journal}: has raccord run with this data_dir?")
    try:
        return JournalDB(layout.journal)
    except (sqlite3.Error, OSError, RuntimeError) as exc:  # unreadable, damaged, too new
        raise UsageError(f"the journal {layout.journal} cannot be opened: {exc}") from None


def cmd_flows(args: argparse.Namespace) -> int:
    config = _load(args)
    fmt = _fmt(args)
    now = datetime.now(UTC)
    since = None if args.since is None else flowlist.parse_when("--since", args.since, now)
    until = None if args.until is None else flowlist.parse_when("--until", args.until, now)
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit {args.limit}: expected 0 (all) or a positive number")
    db = _journal(config)
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
        _list_flows(args, db, fmt, since, until)
    finally:
        db.close()
    return OK


def _list_flows(
    args: argparse.Namespace, db: JournalDB, fmt: str, since: str | None, until: str | None
) -> None:
    """The flows matching the filters: streamed as JSON or CSV, the latest in a table."""
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
        flowlist.write_table(db, rows, limit, sys.stdout, implicit=implicit)
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
    from gateway.ops import certificates

    config = _load(args)
    records = certificates.report(config, args.warn_days, datetime.now(UTC))
    output.render(records, CERT_COLUMNS, _fmt(args))
    troubled = [r for r in records if r["state"] != "valid" or r["chain_problems"]]
    for record in troubled:
        where = f" in {record['file']}" if record["file"] else ""
        print(
            f"raccord: {record['connection']}: {record['role']} certificate {record['subject']}"
            f"{where}: "
            + (record["state"] if record["state"] != "valid" else "")
            + (f" ({record['days_left']} days left)" if record["state"] == "expiring" else "")
            + (f" chain: {record['chain_problems']}" if record["chain_problems"] else ""),
            file=sys.stderr,
        )
    return NOT_RIGHT if troubled else OK


# -- import -------------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from gateway.returns import pipeline as returns

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
    from gateway.flow.dispatcher import CannotSucceed, requeue

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


# -- purge --------------------------------------------------------------------------------------


def cmd_purge(args: argparse.Namespace) -> int:
    from gateway.ops import retention

    config = _load(args)
    now = datetime.now(UTC)
    cutoff = datetime.fromisoformat(flowlist.parse_when("--before", args.before, now))
    refusal = retention.too_recent(cutoff, now)
    if refusal:
        raise UsageError(f"--before {args.before}: {refusal}")
    db = _journal(config)
    try:
        purged = retention.purge(db, cutoff, with_files=args.files)
    finally:
        db.close()
    print(
        f"purged {purged.flows} flow(s) and {purged.returns} return(s) filed before "
        f"{cutoff:%Y-%m-%d %H:%M} UTC" + (f"; {purged.files} file(s) deleted" if args.files else "")
    )
    return OK


# -- web-passwd ---------------------------------------------------------------------------------


def cmd_web_passwd(args: argparse.Namespace) -> int:
    """A password hash for ``[web.users.<name>] password_hash``: the password is read from the
    terminal (twice) or, when piped, from the first line of stdin, and never echoed."""
    import getpass

    from gateway.web.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the two passwords differ; nothing printed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise UsageError("the password is shorter than 8 characters; nothing printed")
    print(hash_password(password))
    return OK


# -- simulate / demo ----------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    from gateway.sandbox.demo import simulate

    return asyncio.run(simulate(Path(args.dir) if args.dir else None))


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.sandbox.demo import demo

    return asyncio.run(demo(Path(args.dir) if args.dir else None, wait=args.timeout))


# -- parser -------------------------------------------------------------------------------------


class _Version(argparse.Action):
    """``--version``: :func:`gateway.ops.version.describe`, as written (several lines)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from gateway.ops import version

        print(version.describe())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raccord", description="Gateway between your systems and Chorus Pro."
    )
    parser.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        help="the version of raccord and its components (the validation rules' included)",
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
    p.add_argument(
        "--rules",
        default=",".join(rulebook.DEFAULT_RULES),
        metavar="SETS",
        help="rule sets to validate against: en16931 (default), br-fr; e.g. en16931,br-fr",
    )
    p.set_defaults(handler=cmd_analyze)
    p = sub.add_parser("flows", parents=[common, listing], help="list flows from the journal")
    p.add_argument("--connection")
    p.add_argument("--state", choices=STATES)
    p.add_argument(
        "--since", help="ISO 8601 date or time (UTC unless an offset is given), or 1h, 7d…"
    )
    p.add_argument("--until", help="exclusive; same forms as --since")
    p.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help=f"the latest N flows (table default {flowlist.TABLE_LIMIT}; 0: all)",
    )
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
    p = sub.add_parser(
        "purge", parents=[common], help="forget flows filed before a date (see [gateway] retention)"
    )
    p.add_argument(
        "--before",
        required=True,
        metavar="DATE",
        help="ISO 8601 date or time, or a duration back from now (400d); at least 90 days ago",
    )
    p.add_argument(
        "--files", action="store_true", help="also delete their files in sent/ and inbox/"
    )
    p.set_defaults(handler=cmd_purge)
    p = sub.add_parser(
        "web-passwd", help="print a password hash for [web.users.<name>] password_hash"
    )
    p.set_defaults(handler=cmd_web_passwd)
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
    except (ConfigError, UsageError, flowlist.FilterError) as exc:
        print(f"raccord: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader stopped reading (flows … | head -1): its choice, not an error. Point
        # stdout at /dev/null so that the interpreter's last flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return OK
    except OSError as exc:  # the file system refused: say which file, not where in raccord
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"raccord: {where}{exc.strerror or exc}", file=sys.stderr)
        return NOT_RIGHT


if __name__ == "__main__":
    sys.exit(main())
