"""The daemon's log lines: JSON, secrets blanked, written by a background thread in order."""

from __future__ import annotations

import io
import json
import threading

import pytest
import structlog

from gateway import logs


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_background_lines_are_all_written_in_order_by_flush() -> None:
    stream = io.StringIO()
    logs.configure(stream, background=True)
    try:
        log = logs.get()

        def burst(thread: int) -> None:
            for i in range(500):
                log.info("test.line", thread=thread, i=i, password="hunter2")

        threads = [threading.Thread(target=burst, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        logs.flush()
        written = _lines(stream)
        assert len(written) == 2000
        for t in range(4):  # each thread's lines in the order it logged them
            assert [e["i"] for e in written if e["thread"] == t] == list(range(500))
        assert {e["password"] for e in written} == {"***"}

        log.error("test.after_flush")  # e.g. the last words of a failing exit
        assert _lines(stream)[-1]["event"] == "test.after_flush"
    finally:
        logs.flush()
        structlog.reset_defaults()


def test_a_background_line_is_written_soon_without_a_flush() -> None:
    """tail -f sees a line within moments, not at exit."""

    class Signalling(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.flushed = threading.Event()

        def flush(self) -> None:
            super().flush()
            self.flushed.set()

    stream = Signalling()
    logs.configure(stream, background=True)
    try:
        logs.get().info("test.soon", n=1)
        assert stream.flushed.wait(5)
        assert _lines(stream)[0]["event"] == "test.soon"
    finally:
        logs.flush()
        structlog.reset_defaults()


def test_a_stream_that_stops_taking_lines_makes_the_logger_wait_not_grow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Backpressure, as with a direct write: at most QUEUED_LINES wait in memory."""
    monkeypatch.setattr(logs, "QUEUED_LINES", 5)

    class Stuck(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def write(self, text: str) -> int:
            self.release.wait(10)
            return super().write(text)

    stream = Stuck()
    logs.configure(stream, background=True)
    try:
        logged = 0

        def burst() -> None:
            nonlocal logged
            for i in range(50):
                logs.get().info("test.stuck", i=i)
                logged += 1

        writer = threading.Thread(target=burst)
        writer.start()
        writer.join(0.5)
        # at most 5 queued and the 5 being written (taken from the queue as one batch)
        assert writer.is_alive() and logged <= 5 + 5
        stream.release.set()
        writer.join(10)
        logs.flush()
        assert [e["i"] for e in _lines(stream)] == list(range(50))
    finally:
        stream.release.set()
        logs.flush()
        structlog.reset_defaults()


def test_a_broken_stream_loses_lines_but_never_stops_the_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer thread survives any failure of its stream; the queue keeps draining."""
    monkeypatch.setattr(logs, "QUEUED_LINES", 5)

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise RuntimeError("the stream broke")

    logs.configure(Broken(), background=True)
    try:
        done = threading.Event()

        def burst() -> None:
            for i in range(200):
                logs.get().info("test.broken", i=i)
            done.set()

        threading.Thread(target=burst, daemon=True).start()
        assert done.wait(10), "logging blocked behind a dead writer"
    finally:
        logs.flush()
        structlog.reset_defaults()
