"""protocols.sftp.sender: _finished_within, the deadline of every SFTP operation (the sender
against a real sshd is tested in tests/e2e/test_sftp.py)."""

from __future__ import annotations

import asyncio

from protocols.sftp.sender import _finished_within


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
