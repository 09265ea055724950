"""sd_notify as a running gateway speaks it: READY once it watches, keep-alives from its event
loop at the pace systemd asks (and none while the loop is stuck), STATUS with the queue,
RELOADING then READY around a reload, STOPPING on its way out."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ops import systemd
from tests.gateway.harness import memory_config, running


class Systemd:
    """systemd's side: an abstract datagram socket named in NOTIFY_SOCKET, read by a thread
    that notes when each message arrives."""

    def __init__(self) -> None:
        self.name = f"raccord-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self.stopping = threading.Event()  # STOPPING=1 arrived: the last message
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))
            if data == b"STOPPING=1":
                self.stopping.set()

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self.sock.close()

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self.messages]


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    systemd_side = Systemd()
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + systemd_side.name)
    yield systemd_side
    systemd_side.close()


def test_ready_keep_alives_and_stopping(
    tmp_path: Path, listener: Systemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a keep-alive every 0.1 s
    config = memory_config(tmp_path, "bucket")

    async def scenario() -> None:
        async with running(config) as gateway:
            assert gateway.watcher is not None  # READY comes after the folders are watched
            await asyncio.sleep(0.5)
            time.sleep(0.6)  # noqa: ASYNC251 - the event loop is stuck: no keep-alive meanwhile
            await asyncio.sleep(0.25)

    asyncio.run(scenario())
    assert listener.stopping.wait(5), listener.texts
    listener.close()

    texts = listener.texts
    assert texts[0] == "READY=1" and texts[-1] == "STOPPING=1", texts
    beats = [at for at, text in listener.messages if text == "WATCHDOG=1"]
    assert len(beats) >= 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert max(gaps) >= 0.55  # the stuck loop shows as a hole in the keep-alives
    assert sorted(gaps)[len(gaps) // 2] < 0.15  # otherwise one every 0.1 s


def test_without_a_watchdog_no_keep_alive_is_sent(
    tmp_path: Path, listener: Systemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    config = memory_config(tmp_path, "bucket")

    async def scenario() -> None:
        async with running(config):
            await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert listener.stopping.wait(5), listener.texts
    listener.close()
    assert listener.texts[0] == "READY=1" and "WATCHDOG=1" not in listener.texts


def test_a_watchdog_meant_for_another_process_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_period() is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert systemd.watchdog_period() == 30.0
    monkeypatch.setenv("WATCHDOG_USEC", "soon")
    assert systemd.watchdog_period() is None


def test_status_shows_the_queue_and_a_reload_is_reloading_then_ready(
    tmp_path: Path, listener: Systemd
) -> None:
    from protocols.testing import memory
    from tests.conftest import sample
    from tests.gateway.harness import drop, until

    bucket = f"systemd-status-{time.monotonic_ns()}"
    memory.BUCKETS.pop(bucket, None)
    config = memory_config(tmp_path, bucket)

    async def scenario() -> None:
        async with running(config) as gateway:
            gate = memory.hold(bucket)
            drop(config, "held.xml", sample("ubl-invoice.xml"))
            await until(
                lambda: "STATUS=queue: 1 flow(s) not yet filed, 1 in flight" in listener.texts,
                what="a STATUS line with the held flow",
            )
            gateway.request_reload()
            await until(lambda: "RELOADING=1" in listener.texts, what="RELOADING=1")
            await until(
                lambda: "READY=1" in listener.texts[listener.texts.index("RELOADING=1") :],
                what="READY=1 after the reload",
            )
            gate.set()

    asyncio.run(scenario())
    assert listener.stopping.wait(5), listener.texts
