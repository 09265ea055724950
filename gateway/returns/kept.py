"""Journal connections kept from one received return flow to the next.

A poll or an AS2 burst brings return files one after another, each stored on a worker thread
with a journal connection of its own (the daemon's cannot be shared across threads). On a
shared PostgreSQL journal a new connection for each file cost the server a session per file
(authentication, TLS, the schema check); here one is lent to a thread at a time and kept for
the next file.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Iterator

from gateway.journal import JournalDB, JournalTarget, PostgresTarget


def connection(target: JournalTarget) -> contextlib.AbstractContextManager[JournalDB]:
    """A journal connection to ``target`` for one received file: a kept one if any."""
    return _IDLE.connection(target)


def close() -> None:
    """Close every kept connection (at exit: the server ends their sessions at once)."""
    _IDLE.close()


class Idle:
    """PostgreSQL journal connections between two received files, for the next one.

    A connection is lent to one thread at a time and kept only when its call ended well (after
    an error it may be broken or mid-transaction: it is closed). SQLite's file is opened for
    each file as before: its connections belong to the thread that opened them, and opening
    one is a file open, not a server session."""

    #: Connections kept per journal: as many as files stored at the same time, usually one.
    KEEP = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[PostgresTarget, list[JournalDB]] = {}

    @contextlib.contextmanager
    def connection(self, target: JournalTarget) -> Iterator[JournalDB]:
        if not isinstance(target, PostgresTarget):
            own = JournalDB(target)
            try:
                yield own
            finally:
                own.close()
            return
        with self._lock:
            kept = self._idle.setdefault(target, [])
            found = kept.pop() if kept else None
        db = found or JournalDB(target)
        try:
            yield db
        except BaseException:
            db.close()
            raise
        if db.aborted:
            db.close()
            return
        with self._lock:
            if len(kept) < self.KEEP:
                kept.append(db)
                return
        db.close()

    def close(self) -> None:
        """Close every kept connection (at exit: the server ends their sessions at once)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for kept in idle.values():
            for db in kept:
                db.close()


_IDLE = Idle()
atexit.register(_IDLE.close)
