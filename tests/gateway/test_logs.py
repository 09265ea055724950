"""The daemon's log lines: JSON, secrets blanked, written by a background thread in order."""

from __future__ import annotations

import io
import json
import threading

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
