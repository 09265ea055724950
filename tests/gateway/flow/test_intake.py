"""gateway.flow.intake: which inotify events offer a file, when, and how many times."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from watchdog.events import FileMovedEvent, FileSystemEvent
from watchdog.utils.delayed_queue import DelayedQueue

from gateway.flow import intake
from gateway.flow.intake import Watcher
from tests.gateway.harness import until

Offers = list[tuple[str, str]]


@asynccontextmanager
async def watching(
    outbox: Path, on_candidate: Callable[[str, Path], Awaitable[object]] | None = None
) -> AsyncIterator[tuple[Watcher, Offers]]:
    """A watcher on ``outbox`` (connection "c"), rescans an hour apart: what it offers comes
    from inotify (and the scan at start)."""
    offers: Offers = []

    async def record(connection: str, path: Path) -> None:
        offers.append((connection, path.name))
        if on_candidate is not None:
            await on_candidate(connection, path)

    watcher = Watcher({"c": outbox}, record, rescan_interval=3600, settle_time=0.2)
    stopping = asyncio.Event()
    watcher.start()
    running = asyncio.create_task(watcher.run(stopping))
    try:
        await until(lambda: watcher.scans > 0, what="the first scan")
        yield watcher, offers
    finally:
        stopping.set()
        watcher.wake()
        await running
        watcher.stop()


MARKER = "zz-marker.xml"


async def settled(outbox: Path, staging: Path, offers: Offers) -> None:
    """Wait until every event before now has been handled: inotify reports in order, so once
    a marker renamed in now is offered, an earlier event would have offered its file first."""
    marker = staging / MARKER
    marker.write_bytes(b"<Invoice/>")
    marker.rename(outbox / marker.name)
    await until(lambda: ("c", marker.name) in offers, what="the marker's offer")
    offers.remove(("c", marker.name))


@pytest.fixture
def tested(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names whose readiness the watcher tests (a lease), in order."""
    names: list[str] = []
    real = intake.readiness

    def readiness(path: Path, settle_time: float, now: float | None = None) -> str:
        names.append(path.name)
        return real(path, settle_time, now)

    monkeypatch.setattr(intake, "readiness", readiness)
    return names


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    outbox, staging = tmp_path / "outbox", tmp_path / "staging"
    outbox.mkdir()
    staging.mkdir()
    return outbox, staging


@pytest.mark.parametrize(("folder", "name"), [("staging", "f.xml"), ("outbox", "f.xml.part")])
def test_a_file_renamed_to_its_name_is_offered_once_without_a_readiness_test(
    folders: tuple[Path, Path], tested: list[str], folder: str, name: str
) -> None:
    """Renamed in from another folder, or within the outbox from a name intake ignores: whole
    by construction, offered under its final name only, no lease taken on it."""
    outbox, staging = folders
    written = (outbox if folder == "outbox" else staging) / name

    async def main() -> Offers:
        async with watching(outbox) as (_, offers):
            written.write_bytes(b"<Invoice/>")
            written.rename(outbox / "f.xml")
            await until(lambda: bool(offers), what="the offer")
            await settled(outbox, staging, offers)  # a second offer would have come by now
            return offers

    assert asyncio.run(main()) == [("c", "f.xml")]
    assert tested == []


def test_a_file_written_in_place_is_offered_only_once_closed(
    folders: tuple[Path, Path], tested: list[str]
) -> None:
    outbox, _ = folders

    async def main() -> tuple[Offers, Offers]:
        async with watching(outbox) as (_, offers):
            with (outbox / "slow.xml").open("wb") as out:
                out.write(b"<Invoice>")
                out.flush()
                # Created, still open: tested at its creation and again while deferred.
                await until(lambda: tested.count("slow.xml") >= 2, what="two readiness tests")
                while_open = list(offers)
                out.write(b"</Invoice>")
            await until(lambda: bool(offers), what="the offer after close")
            return while_open, offers

    while_open, offers = asyncio.run(main())
    assert while_open == []
    assert set(offers) == {("c", "slow.xml")}


def test_a_file_moved_out_of_the_outbox_is_not_offered_again(folders: tuple[Path, Path]) -> None:
    """A claim renames the file out: that event offers nothing."""
    outbox, staging = folders
    spool = staging.parent / "spool"
    spool.mkdir()

    async def claim(connection: str, path: Path) -> None:
        path.rename(spool / path.name)

    async def main() -> Offers:
        async with watching(outbox, claim) as (_, offers):
            (staging / "f.xml").write_bytes(b"<Invoice/>")
            (staging / "f.xml").rename(outbox / "f.xml")
            await until(lambda: (spool / "f.xml").exists(), what="the claim")
            await settled(outbox, staging, offers)  # the claim's event came before
            return offers

    assert asyncio.run(main()) == [("c", "f.xml")]


def test_a_burst_of_renames_is_offered_whole_by_inotify(folders: tuple[Path, Path]) -> None:
    """3,000 files renamed in at once, each claimed (moved out) as it is offered: every file
    offered, by inotify alone (the rescan is an hour away), and none twice."""
    outbox, staging = folders
    spool = staging.parent / "spool"
    spool.mkdir()
    names = [f"f{i:05}.xml" for i in range(3000)]
    for name in names:
        (staging / name).write_bytes(b"<Invoice/>")

    async def claim(connection: str, path: Path) -> None:
        path.rename(spool / path.name)

    async def main() -> Offers:
        async with watching(outbox, claim) as (_, offers):
            for name in names:
                (staging / name).rename(outbox / name)
            await until(lambda: len(offers) >= len(names), timeout=60, what="3,000 offers")
            await settled(outbox, staging, offers)
            return offers

    offers = asyncio.run(main())
    assert sorted(name for _, name in offers) == names
    assert sorted(p.name for p in spool.iterdir()) == [*names, MARKER]  # the marker claimed too


def test_moves_out_of_the_outbox_are_not_even_reported(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each claim renames a file out of the outbox: inotify is not asked for those events
    (IN_MOVED_FROM), so watchdog has none to read, queue and hand over."""
    outbox, staging = folders
    spool = staging.parent / "spool"
    spool.mkdir()
    seen: list[FileSystemEvent] = []
    handle = intake._Handler.on_any_event

    def on_any_event(self: intake._Handler, event: FileSystemEvent) -> None:
        seen.append(event)
        handle(self, event)

    monkeypatch.setattr(intake._Handler, "on_any_event", on_any_event)

    async def claim(connection: str, path: Path) -> None:
        path.rename(spool / path.name)

    async def main() -> Offers:
        async with watching(outbox, claim) as (_, offers):
            for i in range(20):
                (staging / f"f{i}.xml").write_bytes(b"<Invoice/>")
                (staging / f"f{i}.xml").rename(outbox / f"f{i}.xml")
            await until(lambda: len(offers) == 20, what="20 offers")
            await settled(outbox, staging, offers)  # the claims' events would have come
            return offers

    assert len(asyncio.run(main())) == 20
    files = [event for event in seen if not event.is_directory]
    assert len(files) == 21  # the arrivals and the marker's
    assert all(isinstance(event, FileMovedEvent) and event.dest_path for event in files)


def test_a_burst_makes_no_search_of_watchdogs_queue(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """watchdog pairs moves by searching its whole queue of pending events for the other half
    at each IN_MOVED_TO, twice: quadratic in a burst. With no IN_MOVED_FROM subscribed there is
    nothing to pair and intake turns that search off. If this fails after a watchdog upgrade,
    its internals changed under intake._ArrivalsEmitter: intake still works, more slowly."""
    outbox, staging = folders
    searches: list[str] = []
    for name in ("find", "remove"):
        real = getattr(DelayedQueue, name)

        def search(self: DelayedQueue[object], predicate: object, real: Any = real) -> object:
            searches.append(real.__name__)
            return real(self, predicate)

        monkeypatch.setattr(DelayedQueue, name, search)
    names = [f"f{i:03}.xml" for i in range(200)]
    for name in names:
        (staging / name).write_bytes(b"<Invoice/>")

    async def main() -> Offers:
        async with watching(outbox) as (_, offers):
            for name in names:
                (staging / name).rename(outbox / name)
            await until(lambda: len(offers) >= len(names), what="200 offers")
            return offers

    assert sorted(name for _, name in asyncio.run(main())) == names
    assert searches == []


def test_a_backlog_is_scanned_in_slices_each_file_offered_once(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog of files waiting in the outbox at start is listed a slice at a time: intake
    never holds more than a slice of paths, and every file is offered once."""
    monkeypatch.setattr(intake, "SCAN_LIMIT", 8)
    outbox, staging = folders
    spool = staging.parent / "spool"
    spool.mkdir()
    names = {f"inv-{i:03}.xml" for i in range(45)}
    for name in names:
        (outbox / name).write_bytes(b"<Invoice/>")
    queued: list[int] = []

    async def main() -> Offers:
        held: list[Watcher] = []

        async def claim(connection: str, path: Path) -> None:
            queued.append(held[0]._queue.qsize() if held else 0)
            path.rename(spool / path.name)

        async with watching(outbox, claim) as (watcher, offers):
            held.append(watcher)
            await until(lambda: len(list(spool.iterdir())) == len(names), what="every claim")
            await settled(outbox, staging, offers)
            return offers

    offers = asyncio.run(main())
    assert sorted(name for _, name in offers) == sorted(names)
    assert max(queued) < 8


def test_a_slice_that_cannot_be_claimed_waits_for_the_next_rescan(
    folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files that stay in the outbox (their claim fails) are not listed again and again:
    once a slice claimed nothing, the next waits for the periodic rescan."""
    monkeypatch.setattr(intake, "SCAN_LIMIT", 4)
    outbox, _ = folders
    for i in range(10):
        (outbox / f"stuck-{i}.xml").write_bytes(b"<Invoice/>")

    async def fails(connection: str, path: Path) -> None:
        """The claim fails: the file stays where it is."""

    async def main() -> tuple[int, int]:
        async with watching(outbox, fails) as (watcher, offers):
            await until(lambda: watcher.scans >= 2 and not watcher._more, what="no more slices")
            await settled(outbox, folders[1], offers)
            return watcher.scans, len([o for o in offers if o[1].startswith("stuck-")])

    scans, offered = asyncio.run(main())
    assert scans == 2
    assert offered == 8  # the first slice, offered again once
