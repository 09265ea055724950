"""structlog set-up: one JSON object per line on stdout (CONTRACT.md, "Logs").

Keys: ``timestamp`` (ISO 8601 UTC), ``level``, ``event`` (``<subsystem>.<step>``), then the
context bound for the flow at hand (``connection``, ``flow_id``, ``file``) and the event's fields.
Secrets never reach the log: they are :class:`protocols.settings.Secret` objects, whose ``repr``
hides the value, and :func:`redact` blanks any field named like a secret as a second guard.
"""

from __future__ import annotations

import functools
import logging
import sys
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


class _Current:
    """``sys.stdout`` or ``sys.stderr`` as it is when a line is written (tests swap them)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def write(self, text: str) -> int:
        return int(getattr(sys, self._name).write(text))

    def flush(self) -> None:
        getattr(sys, self._name).flush()


def configure(stream: TextIO | str | None = None, level: int = logging.INFO) -> None:
    """Send JSON lines to ``stream``: a file, or "stdout" (the default) or "stderr"."""
    if stream is None or isinstance(stream, str):
        stream = _Current(stream or "stdout")  # type: ignore[assignment]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            redact,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False, default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(stream),  # type: ignore[arg-type]
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
