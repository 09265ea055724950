"""The daemon on a PostgreSQL journal: it sends and records as on SQLite; a database it
cannot reach stops its start with one sentence."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway import config as config_module
from gateway.journal import JournalDB, PostgresTarget
from protocols.testing import memory
from tests.gateway.flow.conftest import invoice
from tests.gateway.harness import drop, memory_config_text, run_raccord, running, until


def test_a_gateway_on_postgresql_sends_and_records_every_flow(
    tmp_path: Path, postgres_url: str
) -> None:
    """Promise: with [journal] url, the daemon's whole path (claim, queue, send, file) runs on
    the shared database, and nothing is written to a SQLite journal."""
    memory.BUCKETS.pop("on-postgres", None)
    path = tmp_path / "raccord.toml"
    path.write_text(
        memory_config_text(tmp_path / "data", "on-postgres")
        + f'\n[journal]\nurl = "{postgres_url}"\n'
    )
    config = config_module.load(path)
    target = PostgresTarget(postgres_url)

    def sent() -> int:
        db = JournalDB(target)
        try:
            return db.counts().get("sent", 0)
        finally:
            db.close()

    async def main() -> None:
        async with running(config):
            for i in range(5):
                drop(config, f"f{i}.xml", invoice(f"PG-{i}"))
            await until(lambda: sent() == 5, what="five flows sent")

    asyncio.run(main())
    db = JournalDB(target)
    try:
        rows = db.search()
        assert sorted(row.original_name for row in rows) == [f"f{i}.xml" for i in range(5)]
        assert all(row.node == config.gateway.node_name for row in rows)
        assert [t["to_state"] for t in db.transitions(rows[0].flow_id)][-1] == "sent"
    finally:
        db.close()
    assert not (tmp_path / "data" / "journal.sqlite").exists()
    assert len(list((tmp_path / "data" / "sent").rglob("*.xml"))) == 5


def test_a_journal_database_that_cannot_be_reached_stops_the_start_in_one_sentence(
    tmp_path: Path,
) -> None:
    """Promise: `raccord run` against an unreachable database exits 2 like any other startup
    mistake, naming host and port and what to check, never the password, no traceback."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, not listening: refused
        port = bound.getsockname()[1]
        path = tmp_path / "raccord.toml"
        path.write_text(
            memory_config_text(tmp_path / "data", "unreachable")
            + f'\n[journal]\nurl = "postgresql://raccord@127.0.0.1:{port}/raccord"\n'
            + 'password = "s3cret-pw"\n'
        )
        done = run_raccord(path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        f"raccord: {path}: journal.url: the journal database raccord@127.0.0.1:{port}/raccord"
        " cannot be reached"
    )
    assert "pg_hba.conf" in done.stderr and done.stderr.count("\n") == 1
    assert "s3cret-pw" not in done.stderr + done.stdout and "Traceback" not in done.stderr
