"""The lock on ``data_dir``: who may run on it.

With the SQLite journal one daemon owns data_dir: a second one would claim and send the same
files. With a shared journal (``[journal] url``) several nodes share data_dir on a shared file
system, one daemon per node name: two daemons under one name would take each other's flows and
duties. The locks are ``flock`` locks, which go with the process however it ends (kill -9 too);
the files left behind are harmless. See docs/multi-node.md for what the shared file system
must honour.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

from flows import naming
from gateway.config import ConfigError

#: The file in data_dir that the running gateway holds locked, with its pid in it (alone), or
#: that each node sharing data_dir holds with a shared lock.
LOCK_FILE = "raccord.lock"
#: Where each node sharing data_dir keeps its own lock (``<node_name>.lock``, with its pid).
NODES_DIR = "nodes"


class DataDirLocked(ConfigError):
    """Another gateway already runs on this data_dir (or under this node name); the message
    names its pid."""


def lock_data_dir(data_dir: Path, node: str | None = None) -> DataDirLock:
    """Lock ``data_dir`` for this process: closing the lock, or the end of the process however
    it ends (kill -9 too), releases it. The descriptors are
    close-on-exec and the workers are forked from a fork server that never had them: an
    orphaned worker cannot keep a dead daemon's lock.

    ``node`` None (the SQLite journal): an exclusive ``flock`` on :data:`LOCK_FILE`, which then
    holds this pid: one daemon per data_dir. ``node`` given (a shared journal, ``[journal]
    url``): several nodes share data_dir, each holding :data:`LOCK_FILE` shared (so a daemon
    alone on its SQLite journal is refused while nodes run, and the other way round) and
    ``nodes/<node>.lock`` exclusive: two daemons under one node name are refused.

    Raises:
        DataDirLocked: another process holds it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if node is None:
        fd = _lock(
            data_dir / LOCK_FILE,
            fcntl.LOCK_EX,
            lambda holder: (
                f"another raccord run ({holder}) is already working on {data_dir}; "
                "stop it first (two daemons on one data_dir would claim and send the same files; "
                "nodes that share data_dir need a shared journal: [journal] url)"
            ),
        )
        return DataDirLock(_holding(fd))
    shared = _lock(
        data_dir / LOCK_FILE,
        fcntl.LOCK_SH,
        lambda holder: (
            f"a raccord run with its own SQLite journal ({holder}) is working on "
            f"{data_dir}; stop it first: nodes of a shared journal ([journal] url) cannot share "
            "data_dir with it"
        ),
    )
    try:
        os.ftruncate(shared, 0)  # no pid there: a daemon refused by it names no stale one
        (data_dir / NODES_DIR).mkdir(exist_ok=True)
        fd = _lock(
            data_dir / NODES_DIR / f"{naming.safe(node)}.lock",
            fcntl.LOCK_EX,
            lambda holder: (
                f"another raccord run ({holder}) is already working on {data_dir} "
                f"as node {node!r}; give each node its own [gateway] node_name (two daemons under "
                "one name would take each other's flows and duties)"
            ),
        )
    except BaseException:
        os.close(shared)
        raise
    return DataDirLock(_holding(fd), shared)


class DataDirLock:
    """The locks :func:`lock_data_dir` took: their descriptors, closed together."""

    def __init__(self, *fds: int) -> None:
        self.fds = fds

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _lock(path: Path, how: int, refusal: Callable[[str], str]) -> int:
    """``path`` opened and locked (its descriptor).

    Raises:
        DataDirLocked: another process holds it: ``refusal`` of who does (``pid N``).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        holder = f"pid {pid}" if pid else "a node of a shared journal"
        raise DataDirLocked(refusal(holder)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holding(fd: int) -> int:
    """Write this pid in the locked file ``fd`` (what a refused daemon names)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
