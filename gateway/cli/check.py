"""``raccord check``, ``connections`` and ``certs``: the configuration and what it connects."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime
from typing import Any

from flows import codes
from gateway.cli import output
from gateway.cli.common import NOT_RIGHT, OK, UsageError, load_config, output_format
from gateway.config import Connection, Mode
from gateway.journal import SCHEMA_VERSION, JournalUnreachable, PostgresTarget
from protocols import registry
from protocols.errors import TransferError
from protocols.settings import nearest


def cmd_check(args: argparse.Namespace) -> int:
    """``raccord check``: the configuration parses and would work; ``--connect`` also logs in."""

    from gateway.cli import preflight

    config = load_config(args)
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
    if args.connect and config.journal.url:
        ok, message = journal_reachable(PostgresTarget(config.journal.url, config.journal.password))
        print(f"  journal: {'ok' if ok else 'FAILED'} — {message}")
        if not ok:
            status = NOT_RIGHT
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


def journal_reachable(target: PostgresTarget) -> tuple[bool, str]:
    """Whether the shared journal's database answers, and its schema version against ours;
    nothing is written (the next start creates or migrates the schema)."""
    from gateway.journal import pgschema
    from gateway.journal.postgres import PostgresConnection

    try:
        connection = PostgresConnection(target)
    except JournalUnreachable as exc:
        return False, str(exc)
    try:
        found = pgschema.version(connection)
    except Exception as exc:  # e.g. the role may not read the tables
        return False, f"PostgreSQL {target.where} answers, but its schema cannot be read ({exc})"
    finally:
        connection.close()
    where = f"PostgreSQL {target.where}"
    if found > SCHEMA_VERSION:
        return False, (
            f"{where} holds journal schema {found}, newer than this raccord knows"
            f" ({SCHEMA_VERSION}): run the newer raccord on this node"
        )
    if found == 0:
        return True, f"{where} answers; empty: the first start creates the journal's schema"
    if found < SCHEMA_VERSION:
        return True, (
            f"{where} holds journal schema {found}: the next start migrates it to {SCHEMA_VERSION}"
        )
    return True, f"{where} holds journal schema {found}, current"


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
    """``raccord connections``: the connection sheets, filtered, each usable today or not."""
    config = load_config(args)
    if args.interface and args.interface not in codes.BY_CODE:
        hint = nearest(args.interface, codes.BY_CODE)
        raise UsageError(
            f"--interface {args.interface}: unknown interface code"
            + (f"; did you mean {hint}?" if hint else "")
        )
    today = datetime.now(UTC).date()
    sheets = [connection_sheet(c, today) for c in config.connections if _selected(c, args)]
    fmt = output_format(args)
    if fmt != "json":  # one cell: "FSO1100A=complete FSO1106A=partial"
        for sheet in sheets:
            sheet["interfaces"] = " ".join(f"{k}={v}" for k, v in sheet["interfaces"].items())
    output.render(sheets, CONNECTION_COLUMNS, fmt)
    for warning in config.warnings:
        print(f"raccord: warning: {warning}", file=sys.stderr)
    return OK


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
    """``raccord certs``: every certificate in use; exit 1 if one needs a person."""

    from gateway.ops import certificates

    config = load_config(args)
    records = certificates.report(config, args.warn_days, datetime.now(UTC))
    output.render(records, CERT_COLUMNS, output_format(args))
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
