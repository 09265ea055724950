"""What every ``raccord`` command shares: exit statuses, usage errors, the configuration and
journal it reads."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from gateway import config as config_module
from gateway.cli import output
from gateway.config import Config
from gateway.journal import JournalDB, JournalUnreachable, describe, journal_target

#: Exit statuses: success; the thing checked is not right; usage or configuration error.
OK, NOT_RIGHT, USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake in how raccord was called; exit 2."""


def load_config(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config``, else the default one."""
    path = Path(args.config) if args.config else config_module.default_path()
    return config_module.load(path)


def output_format(args: argparse.Namespace) -> str:
    """``--format``, else table on a terminal and JSON otherwise."""
    return str(args.format or output.default_format())


def open_journal(config: Config) -> JournalDB:
    """The journal ``config`` names (``[journal] url``, else the SQLite file in data_dir), for
    reading; a usage error if there is none or it cannot be opened."""
    target = journal_target(config)
    if isinstance(target, Path) and not target.exists():
        raise UsageError(f"no journal at {target}: has raccord run with this data_dir?")
    try:
        return JournalDB(target)
    except JournalUnreachable as exc:  # says where and what to check
        raise UsageError(str(exc)) from None
    except (sqlite3.Error, OSError, RuntimeError) as exc:  # unreadable, damaged, too new
        raise UsageError(f"the journal {describe(target)} cannot be opened: {exc}") from None
