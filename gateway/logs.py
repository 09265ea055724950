"""structlog set-up: one JSON object per line on stdout (docs/operations.md, "Logs").

Keys: ``timestamp`` (ISO 8601 UTC), ``level``, ``event`` (``<subsystem>.<step>``), then the
context bound for the flow at hand (``connection``, ``flow_id``, ``file``) and the event's fields.
Secrets never reach the log: they are :class:`protocols.settings.Secret` objects, whose ``repr``
hides the value, and :func:`redact` blanks any field named like a secret as a second guard.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import queue
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_WORDS = ("password", "passphrase", "secret", "token", "private_key_data")


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if _secret(key):
            event[key] = "***"
    return event


@functools.lru_cache(maxsize=4096)
def _secret(key: str) -> bool:
    """Whether a field named ``key`` may hold a secret (the log's keys are few: remembered)."""
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


#: syslog priorities of the log levels, for journald (``<3>`` error … ``<7>`` debug).
PRIORITIES = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}


def journal_priority(_: Any, method: str, line: str) -> str:
    """The ``<N>`` prefix journald reads as a line's priority (and strips), so that
    ``journalctl -p err -u raccord`` shows the errors; last, after the JSON is made."""
    return f"<{PRIORITIES.get(method, 6)}>{line}"


def to_journal(stream: Any) -> bool:
    """Whether ``stream`` is the journal stream systemd connected us to (``JOURNAL_STREAM`` is
    ``device:inode`` of it; a stdout redirected elsewhere by the operator is not)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        found = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (found.st_dev, found.st_ino) == (device, inode)


class _Current:
    """``sys.stdout`` or ``sys.stderr`` as it is when a line is written (tests swap them)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def write(self, text: str) -> int:
        return int(getattr(sys, self._name).write(text))

    def flush(self) -> None:
        getattr(sys, self._name).flush()


#: Lines a background writer holds at most before the daemon waits for it.
QUEUED_LINES = 10_000


class _Background:
    """A structlog logger whose lines are written by a thread of their own, in order.

    The daemon's event loop hands a line over (a queue put) instead of writing it: a write
    to a log file waits for the file system, and the daemon writes several lines per flow. Lines
    that pile up while one is written go out together; each batch is flushed at once, so
    ``tail -f`` sees a line within milliseconds. :func:`flush` (also run at exit) writes
    whatever is queued; a kill -9 loses at most the lines of those milliseconds.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        # Bounded by msg(): a stdout that stops taking lines (a paused pipe) slows the daemon
        # down, as a direct write would, rather than growing its memory without end.
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._room = threading.Event()  # set by the writer each time it has taken lines
        self._closed = False
        self._thread = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._thread.start()

    def msg(self, message: str) -> None:
        if self._closed:  # after flush(), e.g. the last words of a failing exit: write them now
            self._emit([message])
            return
        while self._lines.qsize() >= QUEUED_LINES and self._thread.is_alive():
            self._room.clear()
            if self._lines.qsize() >= QUEUED_LINES:
                self._room.wait(0.05)
        self._lines.put(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def _write(self) -> None:
        while True:
            line = self._lines.get()
            batch = []
            while line is not None:
                batch.append(line)
                if len(batch) >= 1000:
                    break
                try:
                    line = self._lines.get_nowait()
                except queue.Empty:
                    break
            self._room.set()
            if batch:
                self._emit(batch)
            if line is None:
                return

    def _emit(self, batch: list[str]) -> None:
        # Never dies: with the writer thread gone, every later line would pile up unwritten.
        with contextlib.suppress(Exception):  # the stream is closed or broken: the lines are lost
            self._stream.write("\n".join(batch) + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Write what is queued, then end the thread (later lines are written directly)."""
        self._lines.put(None)
        self._thread.join(10)
        self._closed = True
        late = []  # put by another thread as the writer ended
        with contextlib.suppress(queue.Empty):
            while True:
                line = self._lines.get_nowait()
                if line is not None:
                    late.append(line)
        if late:
            self._emit(late)


_background: _Background | None = None


@atexit.register
def _at_exit() -> None:
    flush()


def flush() -> None:
    """Write the lines a background writer still holds, and stop it (see ``configure``)."""
    global _background
    writer, _background = _background, None
    if writer is not None:
        writer.close()


def configure(
    stream: TextIO | str | None = None, level: int = logging.INFO, *, background: bool = False
) -> None:
    """Send JSON lines to ``stream``: a file, or "stdout" (the default) or "stderr".

    With ``background`` (the daemon), lines are written by a thread of their own; call
    :func:`flush` before exiting (it is also registered to run at exit).
    """
    global _background
    flush()
    name = stream if isinstance(stream, str) else "stdout"
    given = None if stream is None or isinstance(stream, str) else stream
    factory: Any
    if background:
        writer = _background = _Background(given or getattr(sys, name))
        factory = lambda *_: writer  # noqa: E731 - one writer for every logger
    else:
        factory = structlog.WriteLoggerFactory(given or _Current(name))  # type: ignore[arg-type]
    journald = to_journal(given or getattr(sys, name))
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        redact,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(ensure_ascii=False, default=str),
    ]
    if journald:
        processors.append(journal_priority)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging; keep their noise out of our JSON stream.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    # watchdog logs an ERROR when its reader thread wakes after stop() (a benign race on every
    # shutdown); that module has nothing else to say to an operator.
    logging.getLogger("watchdog.observers.inotify").setLevel(logging.CRITICAL)


def get(name: str | None = None) -> Any:
    return structlog.get_logger(name)
