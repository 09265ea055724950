"""gateway.batching: items that arrive while a batch runs go together in the next one."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.batching import Batcher


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
