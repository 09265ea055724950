"""The window and the leases: a node holds a bounded number of flows in flight, the others wait
in the journal; nodes sharing one journal each work on a flow alone, and a dead node's flows
are resumed by another as a restart would resume them: never sent twice, never lost."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.daemon import _open_sender
from gateway.flow import dispatcher as dispatcher_module
from gateway.flow.dispatcher import Dispatcher
from gateway.folders import Layout, spool_name
from gateway.journal import Journal, JournalDB, journal_target
from gateway.journal.leases import lease_end
from protocols.testing import memory
from tests.gateway.flow.conftest import invoice
from tests.gateway.harness import memory_config, rows, running, until


def test_a_backlog_goes_through_a_bounded_window_each_file_sent_once(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 files waiting in the outbox at start: never more than the window (50) in flight,
    and every file sent exactly once."""
    monkeypatch.setattr(dispatcher_module, "WINDOW", 50)
    config = memory_config(tmp_path, bucket, delay="5ms")
    outbox = Layout(config.gateway.data_dir).outbox("qualif-mem")
    outbox.mkdir(parents=True)
    count = 3000
    for i in range(count):
        (outbox / f"inv-{i:05}.xml").write_bytes(invoice(f"W-{i}"))

    async def main() -> int:
        async with running(config) as gateway:
            assert gateway.dispatcher is not None
            window = gateway.dispatcher.window
            await until(lambda: len(memory.bucket(bucket).files) >= count, 240, "every file sent")
            await until(lambda: not window.slots, 30, "the window empty")
            return window.peak

    peak = asyncio.run(main())
    assert 0 < peak <= 50
    sent = rows(config)
    assert len(sent) == count and all(row.state == "sent" for row in sent)
    assert memory.bucket(bucket).sends == count
    assert len({row.remote_name for row in sent}) == count
    assert not list(outbox.iterdir())


def backlog(config: Config, count: int) -> list[str]:
    """``count`` files claimed (spooled and journaled) that no node holds yet."""
    layout = Layout(config.gateway.data_dir)
    layout.create([c.name for c in config.connections])
    db = JournalDB(layout.journal, node="intake")
    ids = []
    try:
        for i in range(count):
            flow_id = f"20261207T080000Z-{i:06x}"
            spool = layout.spool("qualif-mem") / spool_name(flow_id, f"inv-{i}.xml")
            spool.write_bytes(invoice(f"N-{i}"))
            db.insert(flow_id, "qualif-mem", f"inv-{i}.xml", str(spool))
            ids.append(flow_id)
    finally:
        db.close()
    return ids


@asynccontextmanager
async def node(config: Config, name: str, *, window: int) -> AsyncIterator[Dispatcher]:
    """A node: its own journal process (named ``name``) and dispatcher, on the shared
    data_dir and journal; stopped as ``raccord run`` stops."""
    journal = Journal(journal_target(config, Layout(config.gateway.data_dir)), node=name)
    await journal.open()
    conn = config.connections[0]
    senders = {conn.name: await _open_sender(conn)}
    dispatcher = Dispatcher(config, journal, senders, max_in_flight=window)
    try:
        await dispatcher.open()
        await dispatcher.reconcile()
        yield dispatcher
        if not dispatcher.stopping.is_set():  # else killed by the test: nothing released
            await dispatcher.drain(5)
    finally:
        await dispatcher.close()
        await journal.close()


def moved_by(config: Config, flow_id: str) -> set[str]:
    """The nodes that moved ``flow_id`` after its claim."""
    db = JournalDB(journal_target(config, Layout(config.gateway.data_dir)))
    try:
        return {t["node"] for t in db.transitions(flow_id) if t["from_state"] is not None}
    finally:
        db.close()


def all_sent(config: Config, count: int) -> bool:
    current = rows(config)
    return len(current) == count and all(row.state == "sent" for row in current)


def test_two_nodes_on_one_journal_share_the_backlog_each_flow_sent_once(
    tmp_path: Path, bucket: str
) -> None:
    """Two nodes leasing from one journal: every flow is sent once, each by one node alone."""
    config = memory_config(tmp_path, bucket, delay="20ms")
    ids = backlog(config, 120)

    async def main() -> None:
        async with node(config, "a", window=10), node(config, "b", window=10):
            await until(lambda: all_sent(config, len(ids)), 120, "every flow sent")

    asyncio.run(main())
    assert memory.bucket(bucket).sends == len(ids)
    assert len(memory.bucket(bucket).files) == len(ids)
    workers = [moved_by(config, flow_id) for flow_id in ids]
    assert all(len(nodes) == 1 for nodes in workers), workers
    assert set().union(*workers) == {"a", "b"}


def test_a_dead_nodes_flows_are_resumed_by_another_as_after_a_restart(
    tmp_path: Path, bucket: str
) -> None:
    """A node dies mid-transfer: once its leases expire, another node takes its flows, resends
    those it was sending under the same remote name after asking the partner, and each file
    reaches the partner once."""
    config = memory_config(tmp_path, bucket)
    ids = backlog(config, 6)
    journal_path = Layout(config.gateway.data_dir).journal

    async def main() -> list[MutableMapping[str, Any]]:
        gate = memory.hold(bucket)  # node a's transfers hang
        async with node(config, "a", window=10) as a:
            await until(lambda: memory.bucket(bucket).sends == len(ids), 60, "a sending all")
            sending = {row.flow_id: row.remote_name for row in rows(config)}
            # kill -9: a's tasks end where they are, nothing is released or journaled.
            a.stopping.set()
            for task in list(a.running.tasks):
                task.cancel()
            await asyncio.gather(*a.running.tasks, return_exceptions=True)
            a.running.tasks.clear()
        assert all(row.state == "sending" and row.node == "a" for row in rows(config))
        dead = JournalDB(journal_path, node="a")
        try:  # lease_timeout passes (the clock is simulated: the leases end in the past)
            assert sorted(dead.renew(ids, lease_end(-1))) == ids
        finally:
            dead.close()
        gate.set()
        with capture_logs() as logs:
            async with node(config, "b", window=10):
                await until(lambda: all_sent(config, len(ids)), 60, "b finishing them")
        assert {row.flow_id: row.remote_name for row in rows(config)} == sending
        return logs

    logs = asyncio.run(main())
    unknown = {e["flow_id"] for e in logs if e["event"] == "flow.unknown_outcome"}
    assert unknown == set(ids)
    assert len(memory.bucket(bucket).files) == len(ids)
    assert all(moved_by(config, flow_id) == {"a", "b"} for flow_id in ids)


def test_a_live_nodes_flows_are_not_taken(tmp_path: Path, bucket: str) -> None:
    """While a node renews its leases, another node sharing the journal leaves its flows
    alone, even those waiting for the partner."""
    config = memory_config(tmp_path, bucket)
    ids = backlog(config, 4)

    async def main() -> None:
        gate = memory.hold(bucket)
        async with node(config, "a", window=10) as a:
            await until(lambda: memory.bucket(bucket).sends == len(ids), 60, "a sending all")
            async with node(config, "b", window=10) as b:
                assert await b.window.fill() == 0
                assert not b.window.slots
                await a.window.renew()
                assert await b.pick_up_requeued() == 0
            gate.set()
            await until(lambda: all_sent(config, len(ids)), 60, "a finishing them")

    asyncio.run(main())
    assert memory.bucket(bucket).sends == len(ids)
    assert all(moved_by(config, flow_id) == {"a"} for flow_id in ids)


def test_on_a_shared_journal_a_young_orphan_waits_and_is_adopted_once(
    tmp_path: Path, bucket: str, postgres_url: str
) -> None:
    """A spool file with no journal row may be another live node's claim between its rename
    and its insert: on a shared journal it is adopted only once older than lease_timeout, and
    two nodes adopting it record it once; it is then sent once."""
    config = memory_config(tmp_path, bucket)
    shared = dataclasses.replace(config.journal, url=postgres_url)
    config = dataclasses.replace(config, journal=shared)
    layout = Layout(config.gateway.data_dir)
    layout.create(["qualif-mem"])
    flow_id = "20261207T080000Z-00abcd"
    spool = layout.spool("qualif-mem") / spool_name(flow_id, "orphan.xml")
    spool.write_bytes(invoice("O-1"))

    async def main() -> None:
        async with node(config, "a", window=10) as a, node(config, "b", window=10) as b:
            assert a.recovery.orphan_age == config.journal.lease_timeout
            assert rows(config) == []  # too young: maybe being claimed by a live node
            # lease_timeout passes (simulated: the age required drops to nothing)
            a.recovery.orphan_age = b.recovery.orphan_age = 0.0
            adopted = await asyncio.gather(a.recovery.adopt_orphans(), b.recovery.adopt_orphans())
            assert sorted(adopted) == [0, 1]
            await until(lambda: all_sent(config, 1), 60, "the orphan sent")

    asyncio.run(main())
    assert memory.bucket(bucket).sends == 1
    assert [row.flow_id for row in rows(config)] == [flow_id]


def test_a_restart_under_the_same_node_name_resumes_its_flows_at_once(
    tmp_path: Path, bucket: str
) -> None:
    """A node killed with flows leased (an hour left on its leases) and started again under
    the same node_name takes them back at once: its previous incarnation is dead."""
    config = memory_config(tmp_path, bucket, gateway_extra='node_name = "a"')
    ids = backlog(config, 5)
    dead = JournalDB(Layout(config.gateway.data_dir).journal, node="a")
    try:
        assert len(dead.lease(5, lease_end(3600))) == len(ids)
    finally:
        dead.close()

    async def main() -> None:
        async with running(config):
            await until(lambda: all_sent(config, len(ids)), 30, "its flows resumed")

    asyncio.run(main())
    assert memory.bucket(bucket).sends == len(ids)


def test_a_paused_node_that_wakes_leaves_the_flows_another_took_over_alone(
    tmp_path: Path, bucket: str
) -> None:
    """A node frozen mid-transfer for longer than lease_timeout (nothing of it runs, its
    heartbeat included) while another node takes its flows over: when it wakes and its
    transfers end, it records no step of those flows and files none in error/ (each gets
    ``flow.lease_lost``, naming the holder); the other node files every one sent. The peer is
    the looser kind that overwrites a file sent twice under one name."""
    config = memory_config(tmp_path, bucket)
    ids = backlog(config, 4)
    journal_path = Layout(config.gateway.data_dir).journal

    async def main() -> list[MutableMapping[str, Any]]:
        gate = memory.hold(bucket)  # every transfer hangs until the gate opens
        with capture_logs() as logs:
            async with node(config, "a", window=10):
                await until(lambda: memory.bucket(bucket).sends == len(ids), 60, "a sending all")
                frozen = JournalDB(journal_path, node="a")
                try:  # a is frozen past lease_timeout (the clock is simulated)
                    assert sorted(frozen.renew(ids, lease_end(-1))) == ids
                finally:
                    frozen.close()
                async with node(config, "b", window=10):
                    await until(
                        lambda: memory.bucket(bucket).sends == 2 * len(ids), 60, "b resending"
                    )
                    gate.set()  # a wakes: its transfers end, and so do b's
                    await until(lambda: all_sent(config, len(ids)), 60, "every flow sent")
        return logs

    logs = asyncio.run(main())
    lost = [e for e in logs if e["event"] == "flow.lease_lost"]
    assert sorted(e["flow_id"] for e in lost) == ids
    assert all("node b" in e["error"] for e in lost)  # refused by the journal, not a heartbeat
    failed = [e for e in logs if e["event"] in ("flow.internal_error", "flow.unfiled")]
    assert failed == []
    assert all(row.state == "sent" and row.node == "b" for row in rows(config))
    for flow_id in ids:
        db = JournalDB(journal_path)
        try:
            movers = [t["node"] for t in db.transitions(flow_id)]
        finally:
            db.close()
        assert movers[movers.index("b") :] == ["b"] * (len(movers) - movers.index("b")), movers
    assert len(memory.bucket(bucket).files) == len(ids)
    assert not list(Layout(config.gateway.data_dir).error("qualif-mem").iterdir())


def test_a_flow_leased_again_before_the_beat_released_it_keeps_its_new_lease(
    tmp_path: Path, bucket: str
) -> None:
    """A flow done with here is released at the next beat; leased again here before that
    beat (``raccord retry`` soon after its failure, then picked up), the beat must not release
    its new lease: the beat after would find it gone and stop the flow, maybe mid-transfer,
    as lost to another node."""
    config = memory_config(tmp_path, bucket)
    (flow_id,) = backlog(config, 1)
    journal_path = Layout(config.gateway.data_dir).journal

    async def main() -> list[MutableMapping[str, Any]]:
        gate = memory.hold(bucket)
        with capture_logs() as logs:
            async with node(config, "a", window=10) as a:
                await until(lambda: memory.bucket(bucket).sends == 1, 60, "a sending")
                a.window.leave(flow_id)  # done with: its lease goes at the next beat
                a.window.hold([flow_id])  # and leased here again before that beat
                await a.window.renew()
                await a.window.renew()
                db = JournalDB(journal_path)
                try:
                    row = db.get(flow_id)
                finally:
                    db.close()
                assert row is not None and row.node == "a" and row.lease_until is not None
                gate.set()
                await until(lambda: all_sent(config, 1), 60, "sent")
        return logs

    logs = asyncio.run(main())
    assert [e for e in logs if e["event"] == "flow.lease_lost"] == []
