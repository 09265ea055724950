"""A burst on a shared journal: the node that claims it holds only its share, the rest waits
unleased in the journal, and another node with room takes it without having seen a file.
Each flow is sent once, by one node alone. On a real PostgreSQL (skipped without it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.config import Config
from gateway.daemon import _open_sender
from gateway.flow import dispatcher as dispatcher_module
from gateway.flow.dispatcher import Dispatcher
from gateway.folders import Layout
from gateway.journal import FlowRow, Journal, JournalDB, PostgresTarget
from protocols.testing import memory
from tests.gateway.flow.conftest import invoice
from tests.gateway.harness import memory_config, memory_config_text, until


def shared_config(tmp_path: Path, bucket: str, url: str) -> Config:
    path = tmp_path / "raccord.toml"
    text = memory_config_text(tmp_path / "data", bucket)
    path.write_text(f'{text}\n[journal]\nurl = "{url}"\n')
    return config_module.load(path)


@asynccontextmanager
async def node(config: Config, name: str, *, window: int) -> AsyncIterator[Dispatcher]:
    """A node on the shared journal and data_dir, stopped as ``raccord run`` stops."""
    assert config.journal.url is not None
    journal = Journal(PostgresTarget(config.journal.url), node=name)
    await journal.open()
    conn = config.connections[0]
    dispatcher = Dispatcher(
        config, journal, {conn.name: await _open_sender(conn)}, max_in_flight=window
    )
    try:
        await dispatcher.open()
        await dispatcher.reconcile()
        yield dispatcher
        await dispatcher.drain(5)
    finally:
        await dispatcher.close()
        await journal.close()


def flows(url: str) -> list[FlowRow]:
    db = JournalDB(PostgresTarget(url))
    try:
        return db.search()
    finally:
        db.close()


def movers(url: str, flow_id: str) -> set[str]:
    """The nodes that moved ``flow_id`` after its claim."""
    db = JournalDB(PostgresTarget(url))
    try:
        return {t["node"] for t in db.transitions(flow_id) if t["from_state"] is not None}
    finally:
        db.close()


def test_a_burst_claimed_by_one_node_is_shared_with_another(
    tmp_path: Path, bucket: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node a claims a whole burst (12 files) while its transfers hang: it holds only its
    share (4) and journals the rest unleased; node b, which saw none of the files, takes flows
    from the journal within its share; once the partner answers, every file is sent once and
    each flow is moved by one node alone."""
    monkeypatch.setattr(dispatcher_module, "SHARE", 4)
    config = shared_config(tmp_path, bucket, postgres_url)
    layout = Layout(config.gateway.data_dir)
    layout.create([c.name for c in config.connections])
    outbox = layout.outbox("qualif-mem")
    count = 12

    async def main() -> tuple[int, int]:
        gate = memory.hold(bucket)
        async with node(config, "a", window=10) as a, node(config, "b", window=10) as b:
            for i in range(count):
                path = outbox / f"inv-{i:02}.xml"
                path.write_bytes(invoice(f"S-{i}"))
                assert await a.claim("qualif-mem", path) is not None
            await until(lambda: len(flows(postgres_url)) == count, 30, "the burst journaled")
            await until(
                lambda: sum(row.node == "b" for row in flows(postgres_url)) == 4,
                30,
                "node b holding its share",
            )
            gate.set()
            await until(
                lambda: all(row.state == "sent" for row in flows(postgres_url)), 60, "all sent"
            )
            return a.window.peak, b.window.peak

    peak_a, peak_b = asyncio.run(main())
    assert peak_a <= 4 and peak_b <= 4
    assert memory.bucket(bucket).sends == count
    assert len(memory.bucket(bucket).files) == count
    workers = [movers(postgres_url, row.flow_id) for row in flows(postgres_url)]
    assert all(len(nodes) == 1 for nodes in workers), workers
    assert set().union(*workers) == {"a", "b"}
    assert not list(outbox.iterdir())


def test_alone_on_its_journal_a_node_uses_its_whole_window(tmp_path: Path, bucket: str) -> None:
    """SQLite (one node): no share, no polling; the window is the node's whole bound."""
    config = memory_config(tmp_path, bucket)
    journal = Journal(Layout(config.gateway.data_dir).journal, node="solo")
    dispatcher = Dispatcher(config, journal, {}, max_in_flight=50)
    assert dispatcher.window.share == 50
    assert not dispatcher.window.shared
