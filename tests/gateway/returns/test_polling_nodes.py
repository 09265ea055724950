"""Two nodes polling one SFTP partner (a real OpenSSH sshd on loopback) over one journal: the
duty of polling the connection is held by one node at a time, so each return file is fetched,
stored and removed once, and it moves to the other node when the first stops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from structlog.testing import capture_logs

from gateway import config as config_module
from gateway.config import Config
from gateway.duties import Duties
from gateway.folders import Layout
from gateway.journal import Journal, JournalDB
from gateway.ops.metrics import Metrics
from gateway.returns.polling import Poller, poll_duty, sources
from protocols import registry
from tests.e2e.conftest import sshd as sshd  # the fixture: a real OpenSSH server
from tests.e2e.conftest import write_sftp_config
from tests.e2e.sshd import Sshd
from tests.gateway.harness import until
from tests.gateway.returns.test_returns import cpp_statut

CONN = "qualif-sftp"
DUTY = poll_duty(CONN)


def sftp_config(tmp_path: Path, sshd: Sshd) -> Config:
    path = write_sftp_config(
        tmp_path,
        sshd,
        sftp_extra=f'download_dir = "{sshd.download_dir}"\npoll_interval = "100ms"\n'
        'after_download = "delete"',
    )
    config = config_module.load(path)
    Layout(config.gateway.data_dir).create([CONN])
    return config


class Node:
    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = asyncio.Event()
        self.metrics = Metrics(name)

    def holds(self) -> bool:
        held = self.metrics.registry.get_sample_value("raccord_duty_held", {"duty": DUTY})
        return held == 1


@asynccontextmanager
async def pollers(config: Config, *names: str) -> AsyncIterator[list[Node]]:
    """Each node's poller over the one journal, with its own SFTP sender."""
    nodes = [Node(name) for name in names]
    tasks: list[asyncio.Task[None]] = []
    async with AsyncExitStack() as stack:
        for node in nodes:
            journal = Journal(Layout(config.gateway.data_dir).journal, node=node.name)
            await journal.open()
            stack.push_async_callback(journal.close)
            conn = config.connections[0]
            sender = await stack.enter_async_context(
                registry.get(conn.protocol).create_sender(conn.settings)
            )
            duties = Duties(journal, lease=5.0, metrics=node.metrics)
            poller = Poller(config, journal, sources({CONN: sender}), duties=duties)
            tasks.append(asyncio.create_task(poller.run(node.stopping)))
        try:
            yield nodes
        finally:
            for node in nodes:
                node.stopping.set()
            await asyncio.gather(*tasks)


def offer(sshd: Sshd, first: int, count: int) -> None:
    for i in range(first, first + count):
        (sshd.download_dir / f"FEN1200A_{i}.xml").write_bytes(
            cpp_statut(invoices=((f"F-{i}", "01"),))
        )


def stored(config: Config) -> list[str]:
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        return sorted(str(r["file"]) for r in db.returns())
    finally:
        db.close()


def test_two_nodes_fetch_each_sftp_return_once_and_hand_over_at_a_stop(
    tmp_path: Path, sshd: Sshd
) -> None:
    """Both nodes poll the same download folder: every file is fetched by one of them once;
    when the node that polled stops, the other polls what comes next."""
    config = sftp_config(tmp_path, sshd)

    def gone() -> bool:
        return not any(sshd.download_dir.iterdir())

    async def main() -> None:
        async with pollers(config, "node-a", "node-b") as nodes:
            offer(sshd, 0, 8)
            await until(gone, timeout=30, what="the first files fetched")
            (holder,) = [node for node in nodes if node.holds()]
            (other,) = [node for node in nodes if node is not holder]
            holder.stopping.set()
            await until(other.holds, timeout=10, what="the other node takes the duty")
            offer(sshd, 8, 4)
            await until(gone, timeout=30, what="the later files fetched")

    with capture_logs() as logs:
        asyncio.run(main())
    fetched = [e["remote_name"] for e in logs if e["event"] == "return.fetched"]
    assert sorted(fetched) == sorted(f"FEN1200A_{i}.xml" for i in range(12))
    assert stored(config) == sorted(f"FEN1200A_{i}.xml" for i in range(12))
