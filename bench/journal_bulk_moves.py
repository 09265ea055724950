#!/usr/bin/env python3
"""Benchmark: what a flow's move costs on PostgreSQL as one statement per flow, against one
statement moving a whole batch of flows (``UPDATE … FROM unnest(…)``), in one transaction.

A move alone is its own ``UPDATE … RETURNING *`` (one round trip, one statement for the
server to bind, run and answer); on PostgreSQL the journal runs a batch's moves of one shape
as one statement (gateway/journal/bulk.py). This measures the two at the level of one
statement, without the rest of the journal: per moved row, the client's
CPU (this process: psycopg and the journal's row reading), the server's CPU (its backend
process, from /proc) and the wall time. Rounds alternate the two ways, on the same flows
moved back and forth between two states, with the journal's triggers (history, counts).

PostgreSQL: a throw-away cluster started here (Debian's postgresql 15, loopback TCP).

Usage (repository root, with the venv, as root for the throw-away cluster):
    .venv/bin/python bench/journal_bulk_moves.py [--flows N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.journal import FlowRow, JournalDB, PostgresTarget
from tests import postgres

TICK = os.sysconf("SC_CLK_TCK")

ONE = (
    "UPDATE flows SET state=?, updated_at=?, detail=?, node=?, attempts=?"
    " WHERE flow_id=? AND state IN (?) RETURNING *"
)
ALL = (
    "UPDATE flows AS f SET state=?, updated_at=?, detail=?, node=?, attempts=v.attempts"
    " FROM unnest(?::text[], ?::bigint[]) AS v(flow_id, attempts)"
    " WHERE f.flow_id=v.flow_id AND f.state IN (?) RETURNING f.*"
)


def backend_cpu(db: JournalDB) -> float:
    """CPU seconds so far of the server process serving ``db``'s connection."""
    pid = db._db.execute("SELECT pg_backend_pid()").fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def move(db: JournalDB, ids: list[str], to: str, source: str, bulk: bool) -> None:
    with db.transaction():
        if bulk:
            rows = db._db.execute(
                ALL, (to, "2026-12-07T00:00:00", None, "bench", ids, [1] * len(ids), source)
            ).fetchall()
            assert len(rows) == len(ids), len(rows)
            for row in rows:
                FlowRow.of(row)
        else:
            for flow_id in ids:
                row = db._db.execute(
                    ONE, (to, "2026-12-07T00:00:00", None, "bench", 1, flow_id, source)
                ).fetchone()
                FlowRow.of(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    server = postgres.start_server(settings="")
    try:
        postgres.wait_until_ready(server)
        db = JournalDB(PostgresTarget(server.create_database()), node="bench")
        try:
            ids = [f"20261207T080000Z-{i:06x}" for i in range(args.flows)]
            with db.transaction():
                for flow_id in ids:
                    db.insert(flow_id, "c", "a.xml", "/s")
            spent: dict[str, list[tuple[float, float, float]]] = {"one": [], "all": []}
            states = ("claimed", "queued")
            for r in range(args.rounds):
                for i, way in enumerate(("one", "all")):
                    source, to = states[i % 2], states[(i + 1) % 2]
                    cpu, server_cpu = time.process_time(), backend_cpu(db)
                    wall = time.perf_counter()
                    move(db, ids, to, source, bulk=way == "all")
                    spent[way].append(
                        (
                            time.process_time() - cpu,
                            backend_cpu(db) - server_cpu,
                            time.perf_counter() - wall,
                        )
                    )
                    print(f"round {r + 1} {way:>3}: {spent[way][-1][2] * 1e3:7.1f} ms", flush=True)
        finally:
            db.close()
    finally:
        postgres.stop_server(server)
    print(f"per moved row, medians of {args.rounds} rounds of {args.flows} flows:")
    for way, label in (("one", "a statement per flow"), ("all", "one statement per batch")):
        client, served, wall = (
            statistics.median(run[k] for run in spent[way]) / args.flows * 1e6 for k in range(3)
        )
        print(
            f"  {label:24} client CPU {client:6.1f} us, server CPU {served:6.1f} us,"
            f" wall {wall:6.1f} us"
        )


if __name__ == "__main__":
    main()
