"""The commands an operator runs on a node whose journal is a shared PostgreSQL database
(``[journal] url``, a real server): ``raccord flows`` (its table, JSON and CSV, one flow, the
invoices), ``raccord retry`` — the same answers as on SQLite, each naming the node that moved
the flow. A database that cannot be reached, or that goes away in the middle of a listing, is
one sentence and an exit status, never a traceback."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.journal import JournalDB, journal_target
from protocols.testing import memory
from tests.e2e.sshd import free_port
from tests.gateway.flow.conftest import invoice
from tests.gateway.harness import drop, memory_config, raccord_cli, rows, running, until
from tests.postgres import PostgresServer, cut_connections

NODE = "node-p"


def shared_config(tmp_path: Path, url: str, bucket: str) -> Config:
    """A memory gateway whose journal is the PostgreSQL database at ``url``."""
    memory.BUCKETS.pop(bucket, None)
    extra = f'node_name = "{NODE}"\n\n[journal]\nurl = "{url}"'
    return memory_config(tmp_path, bucket, gateway_extra=extra)


@pytest.fixture
def delivered(tmp_path: Path, postgres_url: str) -> Config:
    """Two files with one invoice number, delivered by a real gateway on the shared journal:
    the first sent, the second refused as a duplicate (in error)."""
    config = shared_config(tmp_path, postgres_url, "cli-pg")

    async def deliver() -> None:
        async with running(config):
            drop(config, "a.xml", invoice("PG-1"))
            await until(lambda: [r.state for r in rows(config)] == ["sent"], what="a.xml sent")
            drop(config, "b.xml", invoice("PG-1"))
            await until(lambda: len([r for r in rows(config) if r.state == "error"]) == 1)

    asyncio.run(deliver())
    return config


def test_flows_lists_the_shared_journal_with_its_nodes(
    delivered: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """``raccord flows`` on PostgreSQL: every format lists the flows, filters select them, one
    flow shows its invoices and history; each names the node that moved it."""
    config = ["--config", str(delivered.path)]
    status, out, _ = raccord_cli(capsys, "flows", *config, "--format", "json")
    listed = json.loads(out)
    assert status == 0 and [r["original_name"] for r in listed] == ["a.xml", "b.xml"]
    assert {r["node"] for r in listed} == {NODE}
    status, out, _ = raccord_cli(capsys, "flows", *config, "--format", "csv", "--state", "error")
    (row,) = csv.DictReader(io.StringIO(out))
    assert (row["original_name"], row["reason"], row["node"]) == ("b.xml", "duplicate", NODE)
    status, out, _ = raccord_cli(capsys, "flows", *config, "--format", "table", "--since", "1h")
    assert status == 0 and "NODE" in out.splitlines()[0] and out.count(NODE) == 2
    sent = listed[0]["flow_id"]
    status, out, _ = raccord_cli(capsys, "flows", *config, "--format", "table", "--flow", sent)
    assert status == 0 and "\nINVOICES\n" in out and "PG-1" in out
    assert "→ sent" in out.split("\nHISTORY\n")[1]
    status, out, _ = raccord_cli(capsys, "flows", *config, "--format", "json", "--invoice", "PG-1")
    assert status == 0 and [r["flow_id"] for r in json.loads(out)] == [sent]


def test_retry_on_the_shared_journal_keeps_its_rules(
    delivered: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """``raccord retry`` on PostgreSQL: a duplicate is refused without --force (exit 1, one
    sentence), taken back with it (claimed, its file back in the spool for the daemon)."""
    (duplicate,) = [r for r in rows(delivered) if r.state == "error"]
    config = ["--config", str(delivered.path)]
    status, out, err = raccord_cli(capsys, "retry", *config, duplicate.flow_id)
    assert (status, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"raccord: flow {duplicate.flow_id} (b.xml) is a duplicate")
    status, out, _ = raccord_cli(capsys, "retry", *config, "--force", duplicate.flow_id)
    assert status == 0 and out.endswith("queued again (forced)\n")
    assert [r.state for r in rows(delivered) if r.flow_id == duplicate.flow_id] == ["claimed"]


def test_a_database_that_cannot_be_reached_is_one_sentence(tmp_path: Path) -> None:
    """The real ``raccord flows`` with nothing listening at the [journal] url: exit 2 and one
    line naming the database and what to check, no traceback."""
    config = shared_config(tmp_path, f"postgresql://raccord@127.0.0.1:{free_port()}/x", "gone")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "flows", "--config", str(config.path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("raccord: the journal database raccord@127.0.0.1:")
    assert "cannot be reached" in done.stderr and done.stderr.count("\n") == 1


def test_a_database_lost_during_a_listing_is_one_sentence(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    """The real ``raccord flows --format json`` of many flows, its sessions ended by the server
    while it writes (a restart, a network cut): exit 1 and one line, no traceback."""
    config = shared_config(tmp_path, postgres_url, "cut")
    db = JournalDB(journal_target(config))
    try:
        with db.transaction():
            for index in range(5000):  # many pages of the server-side cursor, a full pipe
                db.insert(f"f{index:05d}", "qualif-mem", f"f{index:05d}.xml", f"/spool/{index}")
    finally:
        db.close()
    command = [sys.executable, "-m", "gateway.cli", "flows", "--config", str(config.path)]
    with subprocess.Popen(
        [*command, "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"[\n"  # listing: blocked on the full pipe now
        cut_connections(postgres_server, postgres_url)
        process.stdout.read()
        err = process.stderr.read().decode()
        status = process.wait(timeout=60)
    assert status == 1, err
    assert (
        err.startswith("raccord: the connection to the journal database") and err.count("\n") == 1
    ), err
