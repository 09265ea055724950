#!/usr/bin/env python3
"""Benchmark: one node's journal on SQLite against the same node's on PostgreSQL.

The same workload through the daemon's own path, :class:`~gateway.journal.Journal` (the
journal process, group-committed batches), on each database: N flows each live the life a
sent invoice lives in the journal: claimed (insert), checked for duplicates and queued then
sending (with its invoice), filed as delivered (``file_to``), sent. Calls are issued as the
dispatcher issues them, all flows of a step at once, so batches form as under load.

With ``--daemon``, the whole daemon instead (in this process, the journal in its own, as
``raccord run`` has it): N invoices dropped at once into a memory connection's outbox, timed
until the last one's move to sent (by the journal's record of it; the journal is polled every
100 ms, from a thread).

With ``--statements``, where the time goes on PostgreSQL instead: the lives run in this
process through ``run_batch`` (as the journal process runs them), each statement timed in the
adapter; prints the wall time, this process's CPU (psycopg and the journal's Python; the rest
is waiting for the server), and per statement its count and mean time.

Runs alternate (SQLite, PostgreSQL, SQLite, …) so that the machine's load falls on both
alike; prints each run, the medians in flows/s and their ratio (target: PostgreSQL ≥ 0.7×).

PostgreSQL: a throw-away cluster started here (Debian's postgresql 15, loopback TCP, the
server's default durability: fsync and synchronous_commit on), or ``--url`` of an empty
database. SQLite: WAL, synchronous=NORMAL, as the daemon runs it.

Usage (repository root, with the venv, as root for the throw-away cluster):
    .venv/bin/python bench/journal_backends.py [--flows N] [--rounds R] [--url URL] [--daemon]
        [--statements] [--server-settings "-c synchronous_commit=off"]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.journal import Call, Journal, JournalDB, JournalTarget, PostgresTarget


def steps(folder: Path) -> list[Callable[[str], Call[Any]]]:
    """A sent flow's life, as the dispatcher's calls."""
    return [
        lambda f: Call(JournalDB.insert, f, "qualif", f"{f}.xml", f"/spool/{f}.xml", size=2048),
        lambda f: Call(
            JournalDB.queue_unless_duplicate,
            f,
            (f"sha-{f}", "SUP", f"N-{f}"),
            check=True,
            invoice=(f"{f}.xml", f"N-{f}", "SUP", f),
            sending={"attempts": 1, "unknown_outcome": 1, "remote_name": f"R-{f}.xml"},
            sha256=f"sha-{f}",
            supplier_id="SUP",
            invoice_number=f"N-{f}",
        ),
        lambda f: Call(
            JournalDB.file_to,
            f,
            "delivered",
            folder,
            f"{f}.xml",
            current="sending",
            receipt='{"protocol": "sftp"}',
            unknown_outcome=0,
        ),
        lambda f: Call(JournalDB.transition, f, "sent", current="delivered"),
    ]


async def life(target: JournalTarget, flows: int, run: int, folder: Path) -> float:
    """Seconds for ``flows`` flows' lives through the journal process."""
    journal = Journal(target, node="bench")
    await journal.open()
    try:
        ids = [f"20261207T080000Z-{run:02d}{i:06x}" for i in range(flows)]
        started = time.perf_counter()
        for step in steps(folder):
            await asyncio.gather(*(journal.call(step(f)) for f in ids))
        return time.perf_counter() - started
    finally:
        await journal.close()


async def through_the_daemon(target: JournalTarget, flows: int, run: int, work: Path) -> float:
    """Seconds for ``flows`` invoices dropped at once to be sent by a gateway whose journal
    is ``target``."""
    from gateway import config as config_module
    from tests.gateway.flow.conftest import invoice
    from tests.gateway.harness import drop, memory_config_text, running

    folder = work / f"daemon-{run}-{'pg' if isinstance(target, PostgresTarget) else 'sqlite'}"
    folder.mkdir()
    text = memory_config_text(folder / "data", f"bench-{folder.name}")
    if isinstance(target, PostgresTarget):
        text += f'\n[journal]\nurl = "{target.url}"\n'
    path = folder / "raccord.toml"
    path.write_text(text)
    config = config_module.load(path)
    journal = target if isinstance(target, PostgresTarget) else folder / "data" / "journal.sqlite"
    async with running(config):
        # Polled seldom and from a thread of its own (SQLite's connection stays in the thread
        # that opened it): a poll must not take the CPU it measures (every 20 ms, in the event
        # loop, a count on PostgreSQL held the daemon's loop for each round trip). The end is
        # the journal's own record of the last move to sent.
        poller = ThreadPoolExecutor(max_workers=1)
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(poller, JournalDB, journal)
        try:
            before = (await loop.run_in_executor(poller, db.counts)).get("sent", 0)
            started = time.time()
            for i in range(flows):
                drop(config, f"b{run}-{i}.xml", invoice(f"B{run}-{folder.name}-{i}"))
            deadline = time.monotonic() + 900
            while (await loop.run_in_executor(poller, db.counts)).get("sent", 0) < before + flows:
                assert time.monotonic() < deadline, "not sent within 900 s"
                await asyncio.sleep(0.1)
            last = await loop.run_in_executor(poller, last_sent, db)
            return last - started
        finally:
            await loop.run_in_executor(poller, db.close)
            poller.shutdown()


def last_sent(db: JournalDB) -> float:
    """When the journal recorded the last move to sent (epoch seconds)."""
    row = db._db.execute("SELECT MAX(updated_at) FROM flows WHERE state='sent'").fetchone()
    return datetime.fromisoformat(row[0]).timestamp()


def statements(url: str, flows: int, run: int, folder: Path) -> None:
    """Print where ``flows`` lives spend their time on PostgreSQL, statement by statement."""
    from gateway.journal.postgres import PostgresConnection
    from gateway.journal.worker import run_batch

    spent: dict[str, list[float]] = {}
    execute = PostgresConnection.execute

    def timed(self: PostgresConnection, sql: str, parameters: Any = (), /) -> Any:
        started = time.perf_counter()
        try:
            return execute(self, sql, parameters)
        finally:
            spent.setdefault(" ".join(sql.split()), []).append(time.perf_counter() - started)

    db = JournalDB(PostgresTarget(url), node="bench")
    PostgresConnection.execute = timed  # type: ignore[method-assign]
    try:
        ids = [f"20261207T080000Z-S{run:02d}{i:06x}" for i in range(flows)]
        wall, cpu = time.perf_counter(), time.process_time()
        for step in steps(folder):
            failed = [o for o in run_batch(db, [step(f) for f in ids]) if isinstance(o, Exception)]
            if failed:
                raise SystemExit(f"a journal call failed: {failed[0]!r}")
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        PostgresConnection.execute = execute  # type: ignore[method-assign]
        db.close()
    print(f"{flows} lives: wall {wall:.2f} s, client CPU {cpu:.2f} s")
    for sql, times in sorted(spent.items(), key=lambda item: -sum(item[1])):
        mean = statistics.mean(times) * 1e6
        print(f"{len(times):7d} x {mean:6.0f} us = {sum(times):6.2f} s  {sql[:80]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", help="an empty PostgreSQL database (default: a throw-away one)")
    parser.add_argument(
        "--server-settings",
        default="",
        metavar="OPTIONS",
        help='the throw-away server\'s options, e.g. "-c synchronous_commit=off"',
    )
    parser.add_argument("--daemon", action="store_true", help="through the whole daemon")
    parser.add_argument(
        "--statements", action="store_true", help="PostgreSQL alone, each statement timed"
    )
    args = parser.parse_args()
    if args.daemon:
        from gateway import logs

        logs.configure(open(os.devnull, "w"))  # noqa: SIM115 - the gateways' logs, for the run

    from tests import postgres

    server = None
    if args.url:
        url = args.url
    else:
        server = postgres.start_server(settings=args.server_settings)
        postgres.wait_until_ready(server)
        url = server.create_database()
    rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    if args.statements:
        try:
            with tempfile.TemporaryDirectory() as work:
                JournalDB(PostgresTarget(url)).close()  # the schema, outside the timing
                for run in range(args.rounds):
                    statements(url, args.flows, run, Path(work) / "sent")
        finally:
            if server is not None:
                postgres.stop_server(server)
        return
    try:
        with tempfile.TemporaryDirectory() as work:
            folder = Path(work) / "sent"
            targets: dict[str, JournalTarget] = {
                "sqlite": Path(work) / "journal.sqlite",
                "postgresql": PostgresTarget(url),
            }
            for target in targets.values():  # create both schemas outside the timing
                JournalDB(target).close()
            for run in range(args.rounds):
                for name, target in targets.items():
                    if args.daemon:
                        seconds = asyncio.run(
                            through_the_daemon(target, args.flows, run, Path(work))
                        )
                    else:
                        seconds = asyncio.run(life(target, args.flows, run, folder))
                    rates[name].append(args.flows / seconds)
                    print(f"round {run + 1} {name:>10}: {args.flows / seconds:8.0f} flows/s")
    finally:
        if server is not None:
            postgres.stop_server(server)
    sqlite, pg = (statistics.median(rates[name]) for name in ("sqlite", "postgresql"))
    print(f"median: SQLite {sqlite:.0f} flows/s, PostgreSQL {pg:.0f} flows/s")
    print(f"ratio PostgreSQL/SQLite: {pg / sqlite:.2f} (target >= 0.70)")


if __name__ == "__main__":
    main()
