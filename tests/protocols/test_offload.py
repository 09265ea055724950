"""Sends in a worker process (protocols/offload.py), with a probe sender defined here.

The SFTP sender uses it for every upload, so every SFTP test against the real sshd (tests/e2e)
goes through it too; here its own rules: answers and errors cross intact, a dead worker fails
its transfers as unknown outcomes and is replaced, cancellation reaches the worker, closing ends
it, and stop signals do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocols.base import Capabilities, Closing, Outbound, Receipt
from protocols.errors import RemoteBusy, SenderDied, TransferError
from protocols.offload import SendingProcess
from tests.gateway.harness import until


@dataclass(frozen=True)
class ProbeSettings:
    folder: Path


class Probe(Closing):
    """Copies each flow into ``folder`` and says which process did it; names starting with
    ``busy-``/``odd-`` fail, ``hang-`` wait (leaving ``.started``, then ``.cancelled``)."""

    protocol = "probe"
    capabilities = Capabilities()

    def __init__(self, settings: ProbeSettings) -> None:
        self.folder = settings.folder

    async def send(self, flow: Outbound) -> Receipt:
        name = flow.remote_name
        if name.startswith("busy-"):
            raise RemoteBusy(f"{name}: the partner asks to come back later")
        if name.startswith("odd-"):
            raise TransferError(f"{name}: made retryable by its raiser", retryable=True)
        if name.startswith("hang-"):
            (self.folder / f"{name}.started").touch()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                (self.folder / f"{name}.cancelled").touch()
                raise
        (self.folder / name).write_bytes(flow.path.read_bytes())
        return Receipt(self.protocol, name, {"pid": os.getpid()})

    async def check(self) -> str:
        return "probe"

    async def aclose(self) -> None:
        (self.folder / "closed").touch()


def broken(settings: ProbeSettings) -> Probe:
    raise ValueError(f"cannot read {settings.folder / 'key.pem'}")


def probe_sends(folder: Path, patience: float = 60.0) -> SendingProcess[ProbeSettings]:
    return SendingProcess(Probe, ProbeSettings(folder), "probe", patience=patience)


def flow(path: Path, remote_name: str) -> Outbound:
    return Outbound(path.stem, path, remote_name, "FSO1100A", path.stat().st_size, "")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "invoice.xml"
    path.write_bytes(b"<Invoice>offload</Invoice>")
    return path


def alive(pid: int) -> bool:
    """Running (not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sends_run_in_one_other_process_and_return_its_receipts(
    tmp_path: Path, source: Path
) -> None:
    async def scenario() -> tuple[set[int], int | None]:
        sends = probe_sends(tmp_path)
        try:
            receipts = await asyncio.gather(
                *(sends.send(flow(source, f"out-{i}.xml")) for i in range(20))
            )
            assert [r.remote_name for r in receipts] == [f"out-{i}.xml" for i in range(20)]
            return {r.details["pid"] for r in receipts}, sends.pid
        finally:
            await sends.aclose()

    pids, worker = asyncio.run(scenario())
    assert pids == {worker} and worker != os.getpid()
    for i in range(20):
        assert (tmp_path / f"out-{i}.xml").read_bytes() == source.read_bytes()


def test_a_transfer_error_crosses_with_its_class_message_and_retryable_flag(
    tmp_path: Path, source: Path
) -> None:
    async def scenario() -> list[BaseException]:
        async with contextlib.aclosing(probe_sends(tmp_path)) as s:
            outcomes = await asyncio.gather(
                s.send(flow(source, "busy-1.xml")),
                s.send(flow(source, "odd-1.xml")),
                return_exceptions=True,
            )
        return [o for o in outcomes if isinstance(o, BaseException)]

    busy, odd = asyncio.run(scenario())
    assert type(busy) is RemoteBusy and busy.retryable and busy.reason == "remote_busy"
    assert str(busy) == "busy-1.xml: the partner asks to come back later"
    assert type(odd) is TransferError and odd.retryable  # the instance's own flag, not the class's
    assert str(odd) == "odd-1.xml: made retryable by its raiser"


def test_a_worker_killed_mid_transfer_fails_it_as_unknown_and_the_next_send_gets_a_new_one(
    tmp_path: Path, source: Path
) -> None:
    async def scenario() -> None:
        async with contextlib.aclosing(probe_sends(tmp_path)) as s:
            hanging = asyncio.create_task(s.send(flow(source, "hang-1.xml")))
            await until(lambda: (tmp_path / "hang-1.xml.started").exists(), what="send start")
            first = s.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            with pytest.raises(SenderDied) as died:
                await asyncio.wait_for(hanging, 15)
            assert died.value.retryable and died.value.reason == "sender_died"
            assert "unknown" in str(died.value) and "sent again under the same name" in str(
                died.value
            )
            receipt = await s.send(flow(source, "after.xml"))
            assert receipt.details["pid"] == s.pid != first

    asyncio.run(scenario())
    assert (tmp_path / "after.xml").read_bytes() == source.read_bytes()


def test_a_frozen_worker_is_killed_after_its_patience_but_a_busy_one_is_not(
    tmp_path: Path, source: Path
) -> None:
    async def scenario() -> None:
        async with contextlib.aclosing(probe_sends(tmp_path, patience=1.5)) as s:
            hanging = asyncio.create_task(s.send(flow(source, "hang-3.xml")))
            await until(lambda: (tmp_path / "hang-3.xml.started").exists(), what="send start")
            first = s.pid
            assert first is not None
            await asyncio.sleep(4)  # a long transfer: the worker answers the pings
            assert not hanging.done() and s.pid == first and alive(first)
            os.kill(first, signal.SIGSTOP)  # now it cannot answer anything
            with pytest.raises(SenderDied) as died:
                await asyncio.wait_for(hanging, 10)
            assert "stopped answering" in str(died.value) and "killed" in str(died.value)
            await until(lambda: not alive(first), what="the frozen worker's end")
            receipt = await s.send(flow(source, "after-freeze.xml"))
            assert receipt.details["pid"] not in (None, first)

    asyncio.run(scenario())


def test_a_cancelled_send_is_cancelled_in_the_worker(tmp_path: Path, source: Path) -> None:
    async def scenario() -> None:
        async with contextlib.aclosing(probe_sends(tmp_path)) as s:
            hanging = asyncio.create_task(s.send(flow(source, "hang-2.xml")))
            await until(lambda: (tmp_path / "hang-2.xml.started").exists(), what="send start")
            hanging.cancel()
            with pytest.raises(asyncio.CancelledError):
                await hanging
            await until(lambda: (tmp_path / "hang-2.xml.cancelled").exists(), what="cancel")
            # The worker goes on serving.
            await s.send(flow(source, "next.xml"))

    asyncio.run(scenario())
    assert (tmp_path / "next.xml").exists()


def test_closing_ends_the_worker_after_its_sender_and_a_later_send_starts_another(
    tmp_path: Path, source: Path
) -> None:
    async def scenario() -> None:
        sends = probe_sends(tmp_path)
        await sends.send(flow(source, "one.xml"))
        first = sends.pid
        assert first is not None and alive(first)
        await sends.aclose()
        assert sends.pid is None and not alive(first)
        assert (tmp_path / "closed").exists()  # the worker closed its sender on the way out
        try:
            await sends.send(flow(source, "two.xml"))
            assert sends.pid not in (None, first)
        finally:
            await sends.aclose()

    asyncio.run(scenario())


def test_a_worker_whose_daemon_end_is_gone_exits_by_itself(tmp_path: Path, source: Path) -> None:
    """What happens when the daemon dies (kill -9): its end of the socket closes."""

    async def scenario() -> None:
        sends = probe_sends(tmp_path)
        await sends.send(flow(source, "one.xml"))
        pid = sends.pid
        assert pid is not None
        link = sends._link
        assert link is not None and link.transport is not None
        link.transport.close()  # no join, no kill: the worker must see it and leave
        await until(lambda: not alive(pid), what="worker exit")
        await sends.aclose()

    asyncio.run(scenario())


def test_the_worker_ignores_stop_signals(tmp_path: Path, source: Path) -> None:
    """systemd signals the whole control group at stop; the daemon still needs its uploads."""

    async def scenario() -> None:
        async with contextlib.aclosing(probe_sends(tmp_path)) as s:
            await s.send(flow(source, "one.xml"))
            pid = s.pid
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
            receipt = await s.send(flow(source, "two.xml"))
            assert receipt.details["pid"] == pid and alive(pid)

    asyncio.run(scenario())


def test_a_sender_that_cannot_be_built_fails_the_send_with_the_reason(
    tmp_path: Path, source: Path
) -> None:
    async def scenario() -> None:
        async with contextlib.aclosing(
            SendingProcess(broken, ProbeSettings(tmp_path), "broken")
        ) as s:
            with pytest.raises(SenderDied) as caught:
                await asyncio.wait_for(s.send(flow(source, "one.xml")), 30)
            assert "could not start" in str(caught.value)
            assert "ValueError" in str(caught.value) and "key.pem" in str(caught.value)

    asyncio.run(scenario())
