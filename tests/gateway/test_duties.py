"""Singleton duties in the daemon's loops: two nodes' return pollers over one journal share a
partner, each remote file is fetched once, and the duty moves when its holder stops or dies."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.config import Config
from gateway.duties import Duties
from gateway.folders import Layout
from gateway.journal import Journal, JournalDB
from gateway.ops.metrics import Metrics
from gateway.returns.polling import Poller, poll_duty
from protocols.base import RemoteFile
from protocols.testing import memory
from tests.gateway.harness import memory_config, running, until
from tests.gateway.returns.test_returns import cpp_statut

CONN = "qualif-mem"
#: Short leases keep the tests short; the daemon's are [journal] lease_timeout (at least 5 s).
#: Where a lost renewal would change the outcome, the lease is long enough for a loaded machine.
LEASE = 1.5
_buckets = itertools.count()


class Counting(memory.MemorySender):
    """The memory partner, noting which node fetched which file."""

    def __init__(self, config: Config, node: str, fetched: list[tuple[str, str]]) -> None:
        super().__init__(config.connections[0].settings)
        self.node = node
        self.fetched = fetched

    async def fetch_return(self, remote: RemoteFile, local: Path) -> None:
        self.fetched.append((self.node, remote.name))
        await asyncio.sleep(0.01)  # a fetch takes time: the other node has its chance
        await super().fetch_return(remote, local)


def setup(tmp_path: Path) -> tuple[Config, memory.Bucket]:
    name = f"duties-{next(_buckets)}"
    memory.BUCKETS.pop(name, None)
    config = memory_config(tmp_path, name, delay='0s"\npoll_interval = "50ms')
    Layout(config.gateway.data_dir).create([CONN])
    return config, memory.bucket(name)


class Node:
    """One node's poller (its own journal process and node name) over the shared journal."""

    def __init__(
        self, config: Config, name: str, fetched: list[tuple[str, str]], lease: float
    ) -> None:
        self.name = name
        self.journal = Journal(Layout(config.gateway.data_dir).journal, node=name)
        self.metrics = Metrics(name)
        self.duties = Duties(self.journal, lease=lease, metrics=self.metrics)
        self.sender = Counting(config, name, fetched)
        self.poller = Poller(config, self.journal, {CONN: self.sender}, duties=self.duties)
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def holds(self) -> bool:
        value = self.metrics.registry.get_sample_value(
            "raccord_duty_held", {"duty": poll_duty(CONN)}
        )
        return value == 1

    async def stop(self) -> None:
        self.stopping.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


@asynccontextmanager
async def nodes(
    config: Config, *names: str, lease: float = LEASE
) -> AsyncIterator[tuple[list[Node], list[tuple[str, str]]]]:
    fetched: list[tuple[str, str]] = []
    started = [Node(config, name, fetched, lease) for name in names]
    for node in started:
        await node.journal.open()
    try:
        for node in started:
            node.task = asyncio.create_task(node.poller.run(node.stopping))
        yield started, fetched
    finally:
        for node in started:
            node.stopping.set()
        await asyncio.gather(*(n.task for n in started if n.task), return_exceptions=True)
        for node in started:
            await node.journal.close()


def offer(bucket: memory.Bucket, first: int, count: int) -> None:
    for i in range(first, first + count):
        bucket.returns[f"FEN1200A_{i}.xml"] = cpp_statut(invoices=((f"F-{i}", "01"),))


def applied(config: Config) -> list[str]:
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        return sorted(str(r["file"]) for r in db.returns())
    finally:
        db.close()


def test_two_nodes_polling_one_partner_fetch_each_return_once(tmp_path: Path) -> None:
    """Both nodes run the polling loop of the same connection over one journal: one holds the
    duty and polls, the other waits; every return is fetched, stored and applied once."""
    config, bucket = setup(tmp_path)

    async def main() -> list[tuple[str, str]]:
        async with nodes(config, "node-a", "node-b", lease=10.0) as (both, fetched):
            for wave in range(3):
                offer(bucket, wave * 10, 10)
                await until(lambda: not bucket.returns, what="returns fetched")
            assert sum(node.holds() for node in both) == 1
            return list(fetched)

    fetched = asyncio.run(main())
    names = [name for _, name in fetched]
    assert sorted(names) == sorted(set(names)) and len(names) == 30
    assert len({node for node, _ in fetched}) == 1  # the holder did it all
    assert len(applied(config)) == 30


def test_a_clean_stop_hands_the_duty_over_at_once(tmp_path: Path) -> None:
    """The holder stops (a clean stop releases its duties): the other node takes over well
    before a lease would have run out, and polls what arrives next."""
    config, bucket = setup(tmp_path)

    async def main() -> tuple[float, list[tuple[str, str]]]:
        async with nodes(config, "node-a", "node-b") as (both, fetched):
            await until(lambda: any(n.holds() for n in both), what="a holder")
            (holder,) = [n for n in both if n.holds()]
            (other,) = [n for n in both if n is not holder]
            began = time.monotonic()
            await holder.stop()
            await until(other.holds, what="the other node takes over")
            handed = time.monotonic() - began
            offer(bucket, 0, 5)
            await until(lambda: not bucket.returns, what="returns fetched by the new holder")
            return handed, [f for f in fetched if f[0] == holder.name]

    handed, by_old = asyncio.run(main())
    assert by_old == []
    assert handed < LEASE  # a step of the waiting node (a third of a lease), not a lease


def test_a_dead_holders_duty_is_taken_over_once_its_lease_has_run_out(tmp_path: Path) -> None:
    """A node that died holding the duty (its lease in the journal, no release) delays the
    polling by at most a lease: then a live node takes it and fetches what waited."""
    config, bucket = setup(tmp_path)
    dead = JournalDB(Layout(config.gateway.data_dir).journal, node="dead-node")
    now = datetime.now(UTC)
    dead_until = now + timedelta(seconds=2)
    assert dead.take_duty(poll_duty(CONN), now.isoformat(), dead_until.isoformat())
    dead.close()
    offer(bucket, 0, 3)

    async def main() -> list[tuple[str, str]]:
        async with nodes(config, "node-b") as (_, fetched):
            await until(lambda: not bucket.returns, what="returns fetched after the lease")
            return list(fetched)

    fetched = asyncio.run(main())
    assert datetime.now(UTC) > dead_until  # not before the dead node's lease ran out
    assert sorted(name for _, name in fetched) == sorted(f"FEN1200A_{i}.xml" for i in range(3))


@asynccontextmanager
async def journals(config: Config, *names: str) -> AsyncIterator[list[Journal]]:
    opened = [Journal(Layout(config.gateway.data_dir).journal, node=name) for name in names]
    try:
        for journal in opened:
            await journal.open()
        yield opened
    finally:
        for journal in opened:
            await journal.close()


def test_a_round_longer_than_the_lease_keeps_its_duty_by_its_heartbeat(tmp_path: Path) -> None:
    """A long round (a big download) outlasts the lease: its heartbeat renews the duty, so the
    other node never takes it meanwhile; once the holder stops, it can."""
    config, _ = setup(tmp_path)

    async def main() -> tuple[list[bool], bool]:
        async with journals(config, "node-a", "node-b") as (a, b):
            mine = Duties(a, lease=0.9)
            theirs = Duties(b, lease=0.9)
            tried: list[bool] = []
            async with mine.duty("returns:x") as holder, theirs.duty("returns:x") as other:
                assert await holder.held()
                async with holder.heartbeat():
                    end = time.monotonic() + 3 * 0.9  # three leases
                    while time.monotonic() < end:
                        tried.append(await other.held())
                        await asyncio.sleep(0.1)
                await holder.release()
                return tried, await other.held()

    tried, after = asyncio.run(main())
    assert len(tried) > 10 and not any(tried)
    assert after


def test_a_waiting_node_runs_a_round_as_soon_as_it_takes_the_duty_over(tmp_path: Path) -> None:
    """The pause between rounds tries for the duty every third of a lease and ends when it is
    taken over: the new holder does not wait a whole (possibly long) interval first."""
    config, _ = setup(tmp_path)
    db = JournalDB(Layout(config.gateway.data_dir).journal, node="dead-node")
    now = datetime.now(UTC)
    assert db.take_duty("retention", now.isoformat(), (now + timedelta(seconds=1)).isoformat())
    db.close()

    async def main() -> float:
        async with (
            journals(config, "node-b") as (b,),
            Duties(b, lease=0.6).duty("retention") as duty,
        ):
            assert not await duty.held()
            began = time.monotonic()
            await duty.pause(asyncio.Event(), 3600)
            assert duty.holding
            return time.monotonic() - began

    assert asyncio.run(main()) < 10  # not the hour asked for


def test_alone_a_daemon_restarted_after_a_crash_takes_its_duties_back_at_once(
    tmp_path: Path,
) -> None:
    """One node: its previous run died holding its duties for a long lease (kill -9, no
    release); the restarted daemon, under the same node name, polls at once all the same."""
    config, bucket = setup(tmp_path)
    db = JournalDB(Layout(config.gateway.data_dir).journal, node=config.gateway.node_name)
    now = datetime.now(UTC)
    assert db.take_duty(poll_duty(CONN), now.isoformat(), (now + timedelta(hours=1)).isoformat())
    db.close()
    offer(bucket, 0, 2)

    async def main() -> None:
        async with running(config):
            await until(lambda: not bucket.returns, timeout=10, what="returns fetched")

    asyncio.run(main())
    assert len(applied(config)) == 2
