"""Analysis of claimed files in worker processes, with a time budget per file.

Reading a document (lxml scan, digest) is the daemon's only contact with untrusted bytes, and a
hostile document can make a parser run for minutes (libxml2's check of duplicate attributes is
quadratic in the attributes of one element) while holding its interpreter's lock. On a thread
of the daemon that would freeze the event loop, the logs, SIGTERM and the systemd watchdog
alike. So every file is analysed in a worker process, never in the daemon: the daemon waits
for each answer at most ``[gateway] analysis_timeout``; past that it kills the worker, starts
another for the files that come after, and the file is refused as ``analysis_timeout``.

Two workers: files up to :data:`SMALL` bytes are sent to one in batches (one round trip for
hundreds, rather than a round trip's fixed cost to the daemon's main thread per file); larger
ones go to the other (the first, which reads each file's size anyway, says which), so that a
large file does not hold up the small files queued behind it. A worker answers a batch in
parts, at least every :data:`FLUSH_EVERY` seconds, so the daemon knows which files are done
when it died or overran its budget: the file that did it alone fails
(:class:`AnalysisCrashed`, :class:`AnalysisTimedOut`), the others of its batch go on in a fresh
worker (see :class:`_Worker`).

Only regular files are read. A claimed entry is opened with ``O_NOFOLLOW | O_NONBLOCK`` (a
symbolic link is never followed, a FIFO never blocks the opener) and checked with ``fstat``
after the open; anything else (a link, a FIFO, a socket, a device, a directory) is
:class:`NotARegularFile`, and the dispatcher files the entry itself in ``error/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.analysis import Analysis, analyze_stream
from gateway import logs
from gateway.batching import Batcher, WorkerProcess
from gateway.folders import display_name, parse_spool_name

log = logs.get()

#: Files up to this size go to the worker of small files, in batches; larger ones one by one
#: to the worker of large files.
SMALL = 1 << 20

#: Seconds a file's analysis may take by default (``[gateway] analysis_timeout``).
DEFAULT_TIMEOUT = 20.0

Outcome = tuple[int, Analysis | None]


class AnalysisCrashed(RuntimeError):
    """The worker process died while analysing this one file."""


class AnalysisTimedOut(RuntimeError):
    """The analysis of this one file took longer than its time budget."""


class NotARegularFile(OSError):
    """The claimed entry is not a regular file (a link, a FIFO, a socket, a device, a folder);
    the message says what it is."""


def kind_of(mode: int) -> str:
    """What a non-regular entry is, in words."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    )
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def shown(path: Path) -> str:
    """The name ops gave the file at ``path`` (its spool name less its flow identifier)."""
    parsed = parse_spool_name(path.name)
    return display_name(parsed[1] if parsed else path.name)


def describe(path: Path, mode: int) -> str:
    """One sentence on the entry ``path`` that is not a regular file."""
    what = kind_of(mode)
    if stat.S_ISLNK(mode):
        with contextlib.suppress(OSError):
            what += f" to {display_name(os.readlink(path))}"
    return (
        f"{shown(path)} is {what}, not a regular file: raccord reads only regular files from an "
        "outbox and never follows links; the entry itself was moved here, nothing it points "
        "to was read. Drop the file itself (a copy, or a rename of the real file)"
    )


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file.

    ``O_NOFOLLOW``: a symbolic link is refused, never followed; ``O_NONBLOCK``: opening a FIFO
    returns at once rather than waiting for a writer; a socket fails to open. The entry is
    checked before the open (a device is not even opened) and the open file after it (the
    entry may have been replaced in between).

    Raises:
        NotARegularFile: it is not a regular file.
        OSError: it cannot be opened (missing, permissions).
    """
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotARegularFile(describe(path, mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # replaced by a link or a socket meanwhile
            raise NotARegularFile(describe(path, os.lstat(path).st_mode)) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotARegularFile(describe(path, mode))
    return fd


def size_and_analysis(path: Path, limit: int, *, small_only: bool = False) -> Outcome | None:
    """The file's size, and its analysis unless it is over ``limit`` bytes (not read then).
    None, when ``small_only``, for a file over :data:`SMALL` bytes (and within ``limit``).

    Raises:
        NotARegularFile, OSError: see :func:`open_regular`.
    """
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as stream:
        size = os.fstat(fd).st_size
        if size > limit:
            return size, None
        if small_only and size > SMALL:
            return None
        # Huge-mode parsing (long text nodes) is bounded by this size: nothing over ``limit``
        # bytes is parsed.
        return size, analyze_stream(stream)


def analyse_one(item: tuple[Path, int, bool]) -> Outcome | Exception | None:
    """Run in a worker: one item's outcome, or the OSError it met; any other exception (a bug
    of a parser on a hostile document) fails this file alone, as analysis_crashed, rather than
    ending the worker with a traceback on the daemon's output."""
    path, limit, small_only = item
    try:
        return size_and_analysis(path, limit, small_only=small_only)
    except OSError as exc:
        return exc
    except Exception as exc:
        return AnalysisCrashed(
            f"the analysis of {shown(path)} failed ({type(exc).__name__}: {exc}); the file was "
            "not sent. Check it, then raccord retry"
        )


Item = tuple[Path, int, bool]  # (path, max_file_size, whether only small files are analysed)
Work = Callable[[Item], Outcome | Exception | None]


#: Seconds a worker keeps finished answers before it sends them, at most: answers travel in
#: few messages under a burst (each message costs the daemon's main thread a read and an
#: unpickling, whatever it carries), and the daemon still hears from a working worker at least
#: this often (plus one file's time).
FLUSH_EVERY = 0.1


def serve_analysis(work: Work, pipe: Any) -> None:
    """An analysis worker: say it is ready, then answer each batch with the list of
    ``work(item)`` of its files, sent in parts at least every :data:`FLUSH_EVERY` seconds and
    at its end, until the daemon sends None or is gone."""
    try:
        pipe.send(True)
        while (batch := pipe.recv()) is not None:
            pending: list[Outcome | Exception | None] = []
            sent_at = time.monotonic()
            for item in batch:
                pending.append(work(item))
                if time.monotonic() - sent_at >= FLUSH_EVERY:
                    pipe.send(pending)
                    pending, sent_at = [], time.monotonic()
            if pending:
                pipe.send(pending)
    except (EOFError, OSError):
        return  # the daemon is gone


class _Worker(WorkerProcess):
    """An analysis worker whose answers the daemon waits for at most the time budget at a
    time; a worker that overran it is killed at once (it is stuck in a parser).

    The files of a batch are answered in parts: when the budget runs out with one file
    unanswered, that file is the culprit; with several, the culprit is one of them (the others
    may be done, their answers not sent yet), so they are analysed again one per batch, where
    the culprit is known (it overruns the budget once more, alone)."""

    #: Set when the daemon stops: files not analysed yet are abandoned, no worker restarted.
    closing = False

    def analyse(
        self, items: list[tuple[Path, int, bool]], timeout: float
    ) -> list[Outcome | Exception | None]:
        outcomes: list[Outcome | Exception | None] = []
        one_by_one = len(items) == 1
        while len(outcomes) < len(items):
            rest = items[len(outcomes) :]
            if one_by_one:
                rest = rest[:1]
            if self.closing:
                stopping = AnalysisCrashed("raccord stopped before this file was analysed")
                return outcomes + [stopping] * (len(items) - len(outcomes))
            if self._pipe is not None and self._pipe.poll():
                self._died("between batches")
            if self._pipe is None:
                self.start()
            pipe = self._pipe
            answered = 0
            try:
                pipe.send(rest)
                while answered < len(rest):
                    if not pipe.poll(timeout):
                        self.kill()
                        if len(rest) - answered == 1:
                            path = rest[answered][0]
                            outcomes.append(AnalysisTimedOut(_timed_out(path, timeout)))
                        else:
                            one_by_one = True
                        break
                    part = pipe.recv()
                    outcomes += part
                    answered += len(part)
            except (EOFError, OSError):
                if not self.closing:
                    self._died("with a batch")
                if len(rest) - answered == 1:
                    outcomes.append(AnalysisCrashed(_crashed(rest[answered][0])))
                else:
                    one_by_one = True
        return outcomes


def _timed_out(path: Path, timeout: float) -> str:
    return (
        f"the analysis of {shown(path)} took more than analysis_timeout ({timeout:g} s): a "
        "pathological document (such as an element with a huge number of attributes); the "
        "file was not sent. Check it; raise [gateway] analysis_timeout if it is a genuine "
        "invoice, then raccord retry"
    )


def _crashed(path: Path) -> str:
    return (
        f"the analysis process died reading {shown(path)} (a parser crash, or out of memory); "
        "the file was not sent. Check it, then raccord retry"
    )


class Analyser:
    """Analyses files for the dispatcher, in worker processes (started at :meth:`open`, or
    with the first file)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, work: Work = analyse_one) -> None:
        self.timeout = timeout
        self.small = _Worker("raccord-analysis", serve_analysis, work)
        self.large = _Worker("raccord-analysis-large", serve_analysis, work)
        self._small: Batcher[tuple[Path, int, bool], Outcome | None] = Batcher(
            self._run_small, max_batch=256
        )
        self._large: Batcher[tuple[Path, int, bool], Outcome | None] = Batcher(
            self._run_large,
            max_batch=1,  # one file a batch: a culprit is known at once
        )

    async def open(self) -> None:
        """Start the workers now rather than with the first file (a start is slow: as any
        multiprocessing child each imports the daemon's main module)."""
        await asyncio.gather(
            asyncio.to_thread(self.small.start), asyncio.to_thread(self.large.start)
        )

    async def analyse(self, path: Path, limit: int) -> Outcome:
        """``path``'s size and analysis (None if over ``limit`` bytes).

        Raises:
            NotARegularFile: the claimed entry is not a regular file.
            OSError: the file cannot be read.
            AnalysisCrashed: the worker died on this file.
            AnalysisTimedOut: its analysis took longer than the time budget.
        """
        outcome = await self._small.submit((path, limit, True))
        if outcome is None:  # large: in the other worker, so the small ones are not held up
            outcome = await self._large.submit((path, limit, False))
        assert outcome is not None  # the large worker answers every file
        return outcome

    def _run_small(self, items: list[tuple[Path, int, bool]]) -> list[Outcome | Exception | None]:
        return self.small.analyse(items, self.timeout)

    def _run_large(self, items: list[tuple[Path, int, bool]]) -> list[Outcome | Exception | None]:
        return self.large.analyse(items, self.timeout)

    async def close(self) -> None:
        """End the workers at once. Called once the daemon's flows are done or cancelled: a
        file still under analysis belongs to a cancelled flow (it is analysed again at the next
        start), and waiting for it could take the whole time budget."""
        for worker in (self.small, self.large):
            worker.closing = True
        await asyncio.gather(asyncio.to_thread(self.small.kill), asyncio.to_thread(self.large.kill))
        await self._small.idle()
        await self._large.idle()
