"""The ``raccord`` command (docs/operations.md, "Commands"): its parser and :func:`main`.

Exit status: 0 success; 1 the thing checked is not right (invalid file, failed connection);
2 usage or configuration error. Operator mistakes are one sentence on stderr, never a traceback.
Each command lives in a module of its own: check.py (check, connections, certs), analyze.py,
flows.py (flows, purge), retry.py (retry, import), run.py (run, simulate, demo, web-passwd),
migrate.py (migrate-journal).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from flows import validation as rulebook
from gateway.cli import listing as flowlist
from gateway.cli import output
from gateway.cli.analyze import cmd_analyze
from gateway.cli.check import (
    CERT_COLUMNS,
    CONNECTION_COLUMNS,
    cmd_certs,
    cmd_check,
    cmd_connections,
    connection_sheet,
)
from gateway.cli.common import NOT_RIGHT, OK, USAGE, UsageError
from gateway.cli.flows_command import RETURN_COLUMNS, cmd_flows, cmd_purge
from gateway.cli.migrate import cmd_migrate_journal
from gateway.cli.retry import cmd_import, cmd_retry
from gateway.cli.run import cmd_demo, cmd_run, cmd_simulate, cmd_web_passwd
from gateway.config import ConfigError, Mode, State
from gateway.journal import STATES

__all__ = [
    "CERT_COLUMNS",
    "CONNECTION_COLUMNS",
    "NOT_RIGHT",
    "OK",
    "RETURN_COLUMNS",
    "USAGE",
    "UsageError",
    "build_parser",
    "cmd_analyze",
    "cmd_certs",
    "cmd_check",
    "cmd_connections",
    "cmd_demo",
    "cmd_flows",
    "cmd_import",
    "cmd_migrate_journal",
    "cmd_purge",
    "cmd_retry",
    "cmd_run",
    "cmd_simulate",
    "cmd_web_passwd",
    "connection_sheet",
    "main",
]


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
    p.add_argument(
        "--connect",
        action="store_true",
        help="also log in to every usable connection, and to the [journal] database",
    )
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
        "migrate-journal",
        parents=[common],
        help="copy this node's SQLite journal into PostgreSQL (daemon stopped; docs/multi-node.md)",
    )
    p.add_argument(
        "--to", required=True, metavar="URL", help="the empty database: postgresql://user@host/db"
    )
    p.set_defaults(handler=cmd_migrate_journal)
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
