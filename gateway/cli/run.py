"""``raccord run``, ``simulate``, ``demo`` and ``web-passwd``: the daemon and its companions."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from gateway import logs
from gateway.cli.common import OK, USAGE, UsageError, load_config


def cmd_run(args: argparse.Namespace) -> int:
    """``raccord run``: the daemon in the foreground until SIGTERM or SIGINT; SIGHUP reloads."""

    from gateway.daemon import Gateway, StartupError

    config = load_config(args)
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
    """``raccord simulate``: the partner simulators alone, until interrupted."""

    from gateway.sandbox.demo import simulate

    return asyncio.run(simulate(Path(args.dir) if args.dir else None))


def cmd_demo(args: argparse.Namespace) -> int:
    """``raccord demo``: simulators, a gateway and sample invoices, end to end."""

    from gateway.sandbox.demo import demo

    return asyncio.run(demo(Path(args.dir) if args.dir else None, wait=args.timeout))
