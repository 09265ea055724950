"""Intake: notice files dropped in ``outbox/<connection>/`` and claim them into the spool.

Two sources of candidates, because either alone loses files:

* watchdog's inotify observer, subscribed with an event filter to close-write, moved-to and
  create events only (with the full event mask a burst of thousands of files overflows the
  inotify queue, and watchdog merely logs that events were lost);
* a scan of every outbox at start and every ``rescan_interval``; a backlog is listed a slice
  of :data:`SCAN_LIMIT` files at a time, the next slice as soon as these are claimed, so that
  intake holds a bounded number of paths however many files wait.

A file is *ready* when it arrived by rename (moved-to), was closed after writing, or — seen by a
scan or a bare create event — nobody has it open for writing. That last test takes a read
lease (``F_SETLEASE``), which Linux refuses while a writer holds the file; where leases are not
permitted (another owner, another file system) the file must instead be unchanged for
``settle_time``.

Claiming is one atomic rename into ``spool/<connection>/<flow_id>--<name>``; a file that vanished
meanwhile (claimed by another scan, removed by ops) is simply skipped. The claim is then
journaled; should the daemon die between the two, reconciliation finds the spool file.

Every entry of an outbox is claimed, whatever it is: a symbolic link, a FIFO, a socket, a
device or a folder is renamed (the entry itself, never what it points to) into the spool like a
file, and the analysis refuses it as ``not_a_regular_file`` without reading it, so it ends in
``error/`` rather than lying in the outbox forever. Nothing here opens what a link points to:
entries are examined with ``lstat`` and opened with ``O_NOFOLLOW | O_NONBLOCK``.

Entries where no connection reads (the outbox root itself, a folder that is not a configured
connection's) are reported once each by the scans as ``intake.ignored``, with the connection a
misspelt folder probably meant, and counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyFullEmitter, InotifyObserver
from watchdog.observers.inotify_c import InotifyConstants, Mask
from watchdog.observers.inotify_move_event_grouper import (
    InotifyMoveEventGrouper,
    PathedInotifyEvent,
)

from gateway import logs
from gateway.folders import display_name, is_candidate
from protocols.settings import nearest

log = logs.get()

#: Candidates taken from the queue at once, at most.
BATCH = 256

#: Candidates one scan queues, at most: a backlog of 100,000 files in an outbox is listed and
#: claimed a slice at a time (the next slice is scanned once the queue is empty), so intake
#: holds a bounded number of paths whatever the backlog.
SCAN_LIMIT = 4 * BATCH

#: Called with (connection, path in the outbox) for every file ready to be claimed.
OnCandidate = Callable[[str, Path], Awaitable[object]]

#: Called with where an ignored entry lies ("outbox_root" or "unknown_folder"), once per entry.
OnIgnored = Callable[[str], None]


def open_for_writing(path: Path) -> bool | None:
    """True if some process has ``path`` open for writing, False if not, None if unknowable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def readiness(path: Path, settle_time: float, now: float | None = None) -> str:
    """``"ready"``, ``"wait"`` (still being written) or ``"gone"`` for a file seen by a scan or
    a bare create event. Blocking: call it off the event loop.

    An entry that is not a regular file is ready at once (it will not be read, only filed in
    error/), except a folder, which may still be being filled: it must be left alone
    ``settle_time`` first."""
    try:
        info = os.lstat(path)
    except OSError:
        return "gone"
    mtime = info.st_mtime
    if stat.S_ISDIR(info.st_mode):
        writing: bool | None = None
    elif not stat.S_ISREG(info.st_mode):
        return "ready"
    else:
        writing = open_for_writing(path)
    if writing is None:  # not knowable here: fall back on the file being left alone a while
        writing = ((now if now is not None else time.time()) - mtime) < settle_time
    return "wait" if writing else "ready"


class _Handler(FileSystemEventHandler):
    def __init__(self, push: Callable[[str, Path, bool], None], outboxes: dict[Path, str]) -> None:
        self._push = push
        self._outboxes = outboxes

    def _offer(self, raw: bytes | str, trusted: bool) -> None:
        path = Path(os.fsdecode(raw))
        connection = self._outboxes.get(path.parent)
        if connection is not None and is_candidate(path.name):
            self._push(connection, path, trusted)

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Folders too: whatever lands in an outbox is claimed, and one that is not a regular
        # file is filed in error/ (see the module's docstring).
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            # Renamed within the outbox, or into it from another folder: a rename is atomic,
            # the file is whole. (Moves out of it are not subscribed; one without a
            # destination would have nothing to offer.)
            if event.dest_path:
                self._offer(event.dest_path, True)
        elif isinstance(event, FileClosedEvent):
            self._offer(event.src_path, True)
        elif isinstance(event, (FileCreatedEvent, DirCreatedEvent)):
            # Created in place, and maybe still being written.
            self._offer(event.src_path, False)


class _Unpaired(InotifyMoveEventGrouper):
    """watchdog's queue of inotify events, without its pairing of moves: with no IN_MOVED_FROM
    subscribed there is never a pair to find, and watchdog looked for one through its whole
    queue of pending events, twice, at every IN_MOVED_TO: a cost per file that grows with the
    backlog of a burst (quadratic at worst), paid under the daemon's GIL. Turned off, intake
    spends a fraction of the CPU on a burst (docs/performance.md, "What was measured")."""

    def get_queued_moved_from_event(self, cookie: int) -> PathedInotifyEvent | None:
        return None

    def put_event(self, event: PathedInotifyEvent) -> None:
        self._queue.put(event)


class _ArrivalsEmitter(InotifyFullEmitter):
    """watchdog's inotify emitter (full events: a move without its other half is still a move)
    subscribed to files arriving only: IN_MOVED_TO without IN_MOVED_FROM, which watchdog's event
    filter cannot tell apart. Every claim renames a file out of the outbox: each would be one
    more event per file to read, queue, dispatch and ignore, and one watchdog would hold back to
    pair (see :meth:`Watcher.start`)."""

    def get_event_mask_from_filter(self) -> Mask:
        return Mask(super().get_event_mask_from_filter() & ~InotifyConstants.IN_MOVED_FROM)

    def on_thread_start(self) -> None:
        super().on_thread_start()
        # The watch group's queue, now without the pairing. Its class is changed in place:
        # events may already be queued in it (the watch is active), none is lost. Should a
        # watchdog release rename these internals, the stock queue stays: slower, still right
        # (tests/gateway/flow/test_intake.py tells when that happens).
        grouper = getattr(self._inotify, "_move_event_grouper", None)
        if type(grouper) is InotifyMoveEventGrouper:
            grouper.__class__ = _Unpaired


class _Observer(InotifyObserver):
    """watchdog's inotify observer, its watches run by :class:`_ArrivalsEmitter`."""

    def __init__(self) -> None:
        super().__init__(generate_full_events=True)
        self._emitter_class = _ArrivalsEmitter


class Watcher:
    """Feeds candidates from inotify and periodic scans to ``on_candidate``, in the loop."""

    def __init__(
        self,
        outboxes: dict[str, Path],
        on_candidate: OnCandidate,
        *,
        rescan_interval: float,
        settle_time: float,
        root: Path | None = None,
        on_ignored: OnIgnored | None = None,
    ) -> None:
        self._outboxes = {path: name for name, path in outboxes.items()}
        self._root = root  # the outbox root, where misplaced entries are looked for
        self._on_ignored = on_ignored
        self._reported: set[Path] = set()  # ignored entries already reported
        self._on_candidate = on_candidate
        self._rescan_interval = rescan_interval
        self._settle_time = settle_time
        self._queue: asyncio.Queue[tuple[str, Path, bool] | None] = asyncio.Queue()
        self._observer: InotifyObserver | None = None
        self.alive = False
        self.scans = 0  # completed scans of the outboxes, for health checks and tests
        self._more = False  # the last scan stopped at SCAN_LIMIT: more files wait
        self._slice: frozenset[Path] = frozenset()  # what the last scan queued
        self._deferred: dict[Path, str] = {}  # seen, still being written: looked at again
        self.started_at: float | None = None  # time.monotonic() of start()
        self.scanned_at: float | None = None  # time.monotonic() of the last scan

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        arrived: collections.deque[tuple[str, Path, bool]] = collections.deque()
        handing_over = False

        def hand_over() -> None:  # in the loop
            nonlocal handing_over
            handing_over = False  # first: a push from now on schedules another hand-over
            while arrived:
                self._queue.put_nowait(arrived.popleft())

        def push(connection: str, path: Path, trusted: bool) -> None:  # in watchdog's thread
            # One wake-up of the loop for the events of a burst, not one per file.
            nonlocal handing_over
            arrived.append((connection, path, trusted))
            if not handing_over:
                handing_over = True
                loop.call_soon_threadsafe(hand_over)

        # No IN_MOVED_FROM (see _ArrivalsEmitter): none held back by watchdog for 0.5 s hoping
        # to pair it, at the head of a queue every later event waits behind (each claim left
        # one: files dropped after a claim arrived in 0.5 s waves). A file renamed into the
        # outbox arrives as a move without a source (whole by construction) rather than as a
        # creation whose readiness must be tested.
        observer = _Observer()
        handler = _Handler(push, self._outboxes)
        for path in self._outboxes:
            observer.schedule(
                handler,
                str(path),
                recursive=False,
                event_filter=[
                    FileClosedEvent,
                    FileMovedEvent,
                    FileCreatedEvent,
                    DirMovedEvent,
                    DirCreatedEvent,
                ],
            )
        observer.start()
        self._observer = observer
        self.alive = True
        self.started_at = time.monotonic()

    async def _readinesses(self, paths: list[Path]) -> list[str]:
        """:func:`readiness` of each of ``paths``, in one worker-thread call."""
        if not paths:
            return []
        settle = self._settle_time
        return await asyncio.to_thread(lambda: [readiness(path, settle) for path in paths])

    def wake(self) -> None:
        """Make :meth:`run` look at its ``stopping`` event now rather than at its next timeout."""
        self._queue.put_nowait(None)

    def stop(self) -> None:
        self.alive = False
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def _list(
        self, skip: frozenset[Path]
    ) -> tuple[list[tuple[str, Path]], bool, list[tuple[Path, str, str | None]]]:
        """The candidates now in the outboxes, whatever their kind (see the module's
        docstring), but those in ``skip``, at most :data:`SCAN_LIMIT` (and whether more were
        left); every misplaced entry not reported yet with where it lies and the connection it
        probably meant (blocking: runs on a worker thread)."""
        found: list[tuple[str, Path]] = []
        more = False
        for path, connection in self._outboxes.items():
            with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(path) as it:
                for entry in it:
                    if not is_candidate(entry.name):
                        continue
                    if len(found) >= SCAN_LIMIT:
                        more = True
                        break
                    candidate = Path(entry.path)
                    if candidate not in skip:
                        found.append((connection, candidate))
            if more:
                break
        return found, more, self._misplaced()

    def _misplaced(self) -> list[tuple[Path, str, str | None]]:
        if self._root is None:
            return []
        seen: list[tuple[Path, str, str | None]] = []
        names = sorted(self._outboxes.values())
        with contextlib.suppress(OSError):
            for entry in os.scandir(self._root):
                if not is_candidate(entry.name) or Path(entry.path) in self._outboxes:
                    continue
                if not entry.is_dir(follow_symlinks=False):
                    seen.append((Path(entry.path), "outbox_root", None))
                    continue
                meant = nearest(entry.name, names)
                with contextlib.suppress(OSError):
                    for inner in os.scandir(entry.path):
                        if is_candidate(inner.name):
                            seen.append((Path(inner.path), "unknown_folder", meant))
        present = {path for path, _, _ in seen}
        self._reported &= present  # one that went and came back is reported again
        fresh = [item for item in seen if item[0] not in self._reported]
        self._reported |= {path for path, _, _ in fresh}
        return fresh

    def _report_ignored(self, misplaced: list[tuple[Path, str, str | None]]) -> None:
        for path, where, meant in misplaced:
            if where == "outbox_root":
                why = "it lies in the outbox root; files go in outbox/<connection>/"
            else:
                why = f"no connection is named {display_name(path.parent.name)!r}"
                if meant:
                    why += f" (did you mean {meant!r}?)"
            log.warning(
                "intake.ignored",
                path=display_name(str(path)),
                reason=why,
                probably_meant=meant,
                action="move it into outbox/<connection>/ of a configured connection",
            )
            if self._on_ignored is not None:
                self._on_ignored(where)

    async def scan(self) -> int:
        """Queue the candidates now in the outboxes, up to :data:`SCAN_LIMIT` (the rest at the
        next scan, as soon as these are claimed); return how many were queued."""
        skip = frozenset(self._deferred)
        found, more, misplaced = await asyncio.to_thread(self._list, skip)
        previous, self._slice = self._slice, frozenset(path for _, path in found)
        # A slice that claimed nothing (the files cannot be moved: a permission, a folder
        # missing in the spool) would be listed again at once, forever: the next slice then
        # waits for the next rescan, as a whole scan used to.
        self._more = more and not self._slice <= previous
        self._report_ignored(misplaced)
        for connection, path in found:
            self._queue.put_nowait((connection, path, False))
        self.scans += 1
        self.scanned_at = time.monotonic()
        return len(found)

    def health(self) -> str | None:
        """None if the watcher works: its inotify thread runs and its rescans keep their pace;
        else what is wrong."""
        if not self.alive or self._observer is None or self.started_at is None:
            return "not watching"
        if not self._observer.is_alive():
            return "the inotify thread has stopped"
        since = time.monotonic() - (self.scanned_at or self.started_at)
        if since > self._rescan_interval + max(30.0, self._rescan_interval):
            if self.scanned_at is None:
                return f"the first scan of the outboxes has not ended after {since:.0f} s"
            return f"the outboxes were last scanned {since:.0f} s ago"
        return None

    async def _offer(self, connection: str, path: Path) -> None:
        """Hand one ready file to the claimer; a failure is logged, never fatal to intake
        (the file stays in the outbox and the next scan offers it again)."""
        try:
            await self._on_candidate(connection, path)
        except Exception:
            log.exception("intake.claim_failed", connection=connection, file=path.name)

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver candidates until ``stopping`` is set; rescans on a timer.

        Candidates are taken in batches (all those queued, up to BATCH): the readiness of the
        untrusted ones is tested in one worker-thread call, so a burst of files costs one hop
        off the event loop per batch rather than per file."""
        await self.scan()
        next_scan = time.monotonic() + self._rescan_interval
        deferred = self._deferred
        while not stopping.is_set():
            if self._more and self._queue.empty():
                next_scan = time.monotonic()  # the next slice of a backlog
            timeout = max(0.0, min(next_scan - time.monotonic(), 0.5 if deferred else 5.0))
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                item = None
            batch: list[tuple[str, Path, bool] | None] = [item]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            items = [entry for entry in batch if entry is not None]
            if items:
                untrusted = [path for _, path, trusted in items if not trusted]
                states = dict(zip(untrusted, await self._readinesses(untrusted), strict=True))
                for connection, path, trusted in items:
                    state = "ready" if trusted else states[path]
                    if state == "ready":
                        deferred.pop(path, None)
                        await self._offer(connection, path)
                    elif state == "wait":
                        deferred[path] = connection
            if deferred and self._queue.empty():
                paths = list(deferred)
                for path, state in zip(paths, await self._readinesses(paths), strict=True):
                    if state == "wait":
                        continue
                    connection = deferred.pop(path)
                    if state == "ready":
                        await self._offer(connection, path)
            if time.monotonic() >= next_scan:
                found = await self.scan()
                if found:
                    log.debug("intake.rescan", found=found)
                next_scan = time.monotonic() + self._rescan_interval
