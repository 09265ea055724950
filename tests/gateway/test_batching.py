"""gateway.batching: items that arrive while a batch runs go together in the next one."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.batching import Batcher, WorkerDied, WorkerProcess, answer_batches


def test_items_arriving_during_a_batch_are_run_together_in_the_next() -> None:
    started, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def work(items: list[int]) -> list[int | Exception]:
        sizes.append(len(items))
        if len(sizes) == 1:
            started.set()
            release.wait(10)  # the first batch is slow: the others queue up meanwhile
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    async def main() -> list[object]:
        batcher: Batcher[int, int] = Batcher(work)
        first = asyncio.ensure_future(batcher.submit(0))
        assert await asyncio.to_thread(started.wait, 10), "the first batch never started"
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 100)]
        await asyncio.sleep(0)  # one turn of the loop: each task queues its item
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert sizes == [1, 99]
    assert outcomes[4] == 40
    assert isinstance(outcomes[3], ValueError) and str(outcomes[3]) == "odd 3"


def test_work_that_breaks_fails_every_item_of_its_batch_and_the_batcher_goes_on() -> None:
    calls = 0

    def work(items: list[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return []  # a wrong number of outcomes: a bug, reported to every caller
        return list(items)

    async def main() -> int:
        batcher: Batcher[int, int] = Batcher(work)
        with pytest.raises(RuntimeError, match="0 outcomes for 1 items"):
            await batcher.submit(1)
        return await batcher.submit(2)

    assert asyncio.run(main()) == 2


def _echo(pipe: Any) -> None:
    """A worker that answers each batch with its process id and the batch; "die" ends it."""

    def answer(batch: Any) -> tuple[int, Any]:
        if batch == "die":
            os._exit(3)
        return os.getpid(), batch

    answer_batches(pipe, answer)


def test_a_worker_answers_in_its_own_process_and_survives_stop_signals() -> None:
    """systemd's stop signals the whole control group and Ctrl-C the whole process group: the
    worker must stay to serve the daemon until the daemon ends it."""
    worker = WorkerProcess("test-echo", _echo)
    worker.start()
    try:
        pid, answer = worker.run(["a", 1])
        assert (pid, answer) == (worker.pid, ["a", 1]) and pid != os.getpid()
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        assert worker.run("again") == (pid, "again")  # the same process answered
    finally:
        worker.stop()
    assert worker.pid is None


def test_a_worker_that_dies_with_a_batch_fails_it_and_the_next_batch_gets_a_new_one() -> None:
    worker = WorkerProcess("test-echo", _echo)
    worker.start()
    try:
        first, _ = worker.run(1)
        with pytest.raises(WorkerDied, match="test-echo ended"):
            worker.run("die")
        second, answer = worker.run(3)
        assert answer == 3 and second != first
    finally:
        worker.stop()


def test_a_worker_killed_between_batches_is_replaced_before_the_next_one() -> None:
    worker = WorkerProcess("test-echo", _echo)
    worker.start()
    try:
        first, _ = worker.run(1)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _running(first):  # its pipe closes when it is gone (a zombie has no files)
            assert time.monotonic() < deadline, "the killed worker did not end"
            time.sleep(0.01)
        second, answer = worker.run(2)  # not lost: sent to a new worker
        assert answer == 2 and second != first
    finally:
        worker.stop()


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
