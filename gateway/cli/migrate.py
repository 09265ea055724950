"""``raccord migrate-journal``: copy this node's SQLite journal into a PostgreSQL database, so
that several nodes can share it (docs/multi-node.md).

The daemon must be stopped (the command takes data_dir's lock for the time of the copy, so
that none starts meanwhile) and the database empty of any journal; the copy is checked row for
row before it is committed (see :mod:`gateway.journal.copy`). The SQLite file is left as it
was: until ``[journal] url`` names the database, nothing changes for the node.
"""

from __future__ import annotations

import argparse
import sys

from gateway.cli.common import NOT_RIGHT, OK, UsageError, load_config
from gateway.daemon import LOCK_FILE, DataDirLocked, lock_data_dir
from gateway.folders import Layout
from gateway.journal import JournalUnreachable, PostgresTarget
from gateway.journal.copy import CopyMismatch, CopyRefused, copy_journal


def cmd_migrate_journal(args: argparse.Namespace) -> int:
    """``raccord migrate-journal --to URL``: copy, check, and say what was copied."""
    config = load_config(args)
    url: str = args.to
    if not url.startswith(("postgresql://", "postgres://")):
        raise UsageError('--to: a "postgresql://user@host/database" URL')
    layout = Layout(config.gateway.data_dir)
    if not layout.journal.exists():
        raise UsageError(f"no journal at {layout.journal}: there is nothing to copy")
    try:
        lock = lock_data_dir(layout.data_dir)
    except DataDirLocked:
        holder = (layout.data_dir / LOCK_FILE).read_text(errors="replace").strip() or "unknown"
        raise UsageError(
            f"raccord runs on {layout.data_dir} (pid {holder}): stop it first, migrate-journal"
            " copies the journal of a stopped node"
        ) from None
    target = PostgresTarget(url, config.journal.password)
    try:
        copied = copy_journal(layout.journal, target)
    except (CopyRefused, JournalUnreachable) as exc:
        raise UsageError(str(exc)) from None
    except CopyMismatch as exc:
        print(f"raccord: {exc}", file=sys.stderr)
        return NOT_RIGHT
    finally:
        lock.close()
    for table in copied:
        print(f"  {table.table}: {table.rows} rows, identical (sha256 {table.digest[:16]}…)")
    rows = sum(table.rows for table in copied)
    print(
        f"{layout.journal} copied to PostgreSQL {target.where}: {rows} rows in {len(copied)}"
        f" tables, checked row for row. Next: set [journal] url in {config.path} and start"
        " raccord; the SQLite file is left as it was."
    )
    return OK
