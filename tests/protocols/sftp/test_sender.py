"""protocols.sftp.sender: _finished_within and _bounded, the deadline of every SFTP operation
and the stall timeout of transfers (the sender against a real sshd is tested in
tests/e2e/test_sftp.py and tests/e2e/test_sftp_edges.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from protocols.sftp.sender import Progress, SftpSender, SftpSettings, _finished_within


def test_a_task_that_ends_in_time_is_reported_finished() -> None:
    async def main() -> tuple[bool, int]:
        task = asyncio.ensure_future(asyncio.sleep(0.01, result=7))
        return await _finished_within(task, 5), task.result()

    assert asyncio.run(main()) == (True, 7)


def test_at_the_deadline_the_task_is_left_running() -> None:
    """The caller decides (the SFTP sender aborts the connection first)."""

    async def main() -> tuple[bool, bool, bool]:
        release = asyncio.Event()
        task = asyncio.ensure_future(release.wait())
        finished = await _finished_within(task, 0.05)
        running = not task.done()
        release.set()
        await task
        return finished, running, task.done()

    assert asyncio.run(main()) == (False, True, True)


def test_cancelling_the_caller_leaves_the_task_running() -> None:
    """As a shield would: a cancelled upload's requests must end by the connection's abort."""

    async def main() -> tuple[bool, bool]:
        release = asyncio.Event()
        task = asyncio.ensure_future(release.wait())
        caller = asyncio.ensure_future(_finished_within(task, 30))
        await asyncio.sleep(0)  # one turn: the caller is now waiting inside _finished_within
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        alive = not task.done()
        release.set()
        await task
        return caller.cancelled(), alive

    assert asyncio.run(main()) == (True, True)


def _sender(timeout: float, aborted: asyncio.Event | None = None) -> SftpSender:
    """A sender whose connection abort sets ``aborted`` (as the real abort ends the requests
    under way)."""
    settings = SftpSettings(
        host="127.0.0.1",
        port=22,
        username="u",
        private_key=Path("/nonexistent/key"),
        known_hosts=Path("/nonexistent/known_hosts"),
        upload_dir="/depot",
        download_dir=None,
        poll_interval=60.0,
        timeout=timeout,
    )
    sender = SftpSender(settings, own_process=False)
    if aborted is not None:
        sender._abort = aborted.set  # type: ignore[method-assign]
    return sender


async def _moving(progress: Progress, steps: int, pause: float) -> str:
    for step in range(steps):
        await asyncio.sleep(pause)
        progress.advance((step + 1) * 1000)
    return "done"


def test_a_transfer_that_keeps_moving_outlives_timeout() -> None:
    """timeout bounds a stall, not the transfer: 12 x 50 ms of progress at timeout 0.3 s."""

    async def main() -> tuple[str, float]:
        progress = Progress(12_000)
        started = time.monotonic()
        result = await _sender(0.3)._bounded(_moving(progress, 12, 0.05), progress)
        return result, time.monotonic() - started

    result, took = asyncio.run(main())
    assert result == "done" and took > 0.3


def test_a_transfer_that_stops_moving_fails_after_timeout_saying_how_far_it_got() -> None:
    async def main() -> tuple[str, float]:
        progress = Progress(10_000)
        aborted = asyncio.Event()

        async def stalls() -> None:
            await _moving(progress, 3, 0.05)
            await aborted.wait()  # no more progress until the connection is aborted

        started = time.monotonic()
        with pytest.raises(TimeoutError) as stalled:
            await _sender(0.3, aborted)._bounded(stalls(), progress)
        return str(stalled.value), time.monotonic() - started

    said, took = asyncio.run(main())
    assert 0.4 < took < 2, took
    assert "stalled: no progress for 0.3 s" in said
    assert "(3000 of 10000 bytes written)" in said


def test_a_request_without_progress_must_end_within_timeout() -> None:
    async def main() -> str:
        aborted = asyncio.Event()
        with pytest.raises(TimeoutError) as late:
            await _sender(0.1, aborted)._bounded(aborted.wait())
        return str(late.value)

    assert asyncio.run(main()) == "no answer from the partner for 0.1 s"
