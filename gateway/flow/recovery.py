"""Recovery: getting over a stop, a crash, a local fault or an operator's ``raccord retry``.

At start, :meth:`Recovery.reconcile` makes journal and spool agree (a crash between a decision
and the file's move is finished where the journal says); :meth:`Recovery.resume` checks each
flow the window leases from the journal as a restart would (also those of a dead node).
:func:`requeue` is ``raccord retry``: it puts a flow in ``error`` back to ``claimed``,
refusing retries whose outcome is known (:class:`CannotSucceed`); the running daemon's
window takes them from the journal.
:func:`local_fault` tells a fault of data_dir's own file system, which heals, from a bug.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import sqlite3
import time
from pathlib import Path
from typing import Protocol

from flows import lots
from flows.analysis import digest
from gateway import logs
from gateway.config import Config
from gateway.flow.context import Context
from gateway.flow.window import Window
from gateway.folders import move, parse_spool_name, stray_markers
from gateway.journal import WAITING, Call, FlowRow, JournalDB
from gateway.journal.leases import chunks

log = logs.get()


class Start(Protocol):
    """Runs a flow from its journaled state (:meth:`Dispatcher.start
    <gateway.flow.dispatcher.Dispatcher.start>`)."""

    def __call__(self, flow_id: str, *, leased: FlowRow | None = None) -> bool: ...


class Recovery:
    """Resumes the flows a stop, a crash, a dead node or ``raccord retry`` left unfinished."""

    def __init__(
        self,
        ctx: Context,
        *,
        start: Start,
        orphan_age: float,
        window: Window,
    ) -> None:
        self._ctx = ctx
        self._start = start  # runs a flow from its journaled state
        self.orphan_age = orphan_age  # seconds before a spool file with no row is adopted
        self._window = window

    async def reconcile(self) -> int:
        """Make journal and spool agree after a stop or a crash; return how many flows are
        to be resumed.

        The leases of this node's previous incarnation are released (it is dead: data_dir's
        lock proves it), so its flows are resumed at once. Spool files unknown to the journal
        (claimed just before a crash) are journaled. Invoices waiting for their lot go back
        to it; flows awaiting an acknowledgement go on waiting. The other unfinished flows
        are not loaded here: the window leases them from the journal, oldest first, as it
        has room, and :meth:`resume` checks each as it comes.
        """
        journal = self._ctx.journal
        await journal.call(Call(JournalDB.release_all))
        await self.adopt_orphans()
        waiting = await journal.call(Call(JournalDB.in_states, ("batched", *WAITING)))
        present = await asyncio.to_thread(_present, [row.spool_path for row in waiting])
        for row, here in zip(waiting, present, strict=True):
            if not here:
                await self._lost(row)
            elif row.state == "batched":
                self._start(row.flow_id)  # back to its lot
        self._window.waiting()
        workable: int = await journal.call(Call(JournalDB.workable))
        return workable + sum(1 for row in waiting if row.state == "batched")

    async def resume(self, rows: list[FlowRow]) -> int:
        """Start the flows the window just leased (new, waiting their turn, left by a stop,
        a crash or a dead node), each as a restart would: one whose spool file is gone is
        filed in error (``lost``), one found ``sending`` is resent under the same remote name
        after the partner is asked (``flow.unknown_outcome``). Returns how many started."""
        present = await asyncio.to_thread(_present, [row.spool_path for row in rows])
        started = 0
        for row, here in zip(rows, present, strict=True):
            if not here and row.state not in ("delivered", "failing"):
                await self._lost(row)
                self._window.leave(row.flow_id)
                continue
            if row.state == "sending":
                log.warning(
                    "flow.unknown_outcome", flow_id=row.flow_id, remote_name=row.remote_name
                )
            if self._start(row.flow_id, leased=row):
                started += 1
            else:  # worked on here already (a late acknowledgement being settled)
                self._window.forget(row.flow_id)
        return started

    async def _lost(self, row: FlowRow) -> None:
        await self._ctx.transition(
            row,
            "error",
            reason="lost",
            message=f"spool file {row.spool_path} is missing; it was removed by hand",
            final_path=None,
        )
        log.error("flow.lost", flow_id=row.flow_id, path=row.spool_path)

    async def adopt_orphans(self) -> int:
        """Journal the spool files the journal does not account for; return how many.

        Read in chunks, so that a spool of 100,000 files costs no more memory than its
        listing. With a shared journal a file is adopted only once older than the orphan age
        (another node may be between its rename and its insert); the insert is idempotent
        anyway, so two nodes adopting one file record it once.
        """
        journal = self._ctx.journal
        spooled = await asyncio.to_thread(self._spooled)
        adopted = 0
        for chunk in chunks(spooled):
            parsed = {}
            for connection, path in chunk:
                found = parse_spool_name(path.name)
                if found is not None:
                    parsed[found[0]] = (connection, path, found[1])
            states = await journal.call(Call(JournalDB.states_of, list(parsed)))
            for flow_id, (connection, path, original) in parsed.items():
                if states.get(flow_id, "error") not in ("error", "packed"):
                    continue  # accounted for
                if flow_id not in states and not await self._old_enough(path):
                    continue  # maybe being claimed by another node: looked at again later
                if lots.is_lot_name(flow_id, original) and flow_id not in states:
                    # Packed, but the journal never recorded the lot: its invoices are still
                    # batched and will be packed again.
                    await asyncio.to_thread(functools.partial(path.unlink, missing_ok=True))
                    log.warning("lot.unfinished_removed", connection=connection, path=str(path))
                    continue
                recovered = await journal.call(
                    functools.partial(
                        _recover, flow_id=flow_id, connection=connection, name=original, spool=path
                    )
                )
                if recovered:
                    log.warning(recovered, connection=connection, flow_id=flow_id, file=original)
                    adopted += 1
        if adopted:
            self._window.waiting()
        return adopted

    async def sweep_orphans(self) -> None:
        """With a shared journal: every orphan age (``lease_timeout``), adopt the spool files
        a node that died between its claim's rename and its insert left with no journal row
        (too young to be adopted at start), until stopping."""
        stopping = self._ctx.stopping
        while not stopping.is_set():
            await self._ctx.pause(self.orphan_age)
            if stopping.is_set():
                break
            try:
                await self.adopt_orphans()
            except Exception as exc:  # the journal or the disk: tried again next time
                log.error("recovery.orphans_failed", error=str(exc), action="tried again later")

    async def _old_enough(self, path: Path) -> bool:
        if self.orphan_age <= 0:
            return True
        try:
            # ctime: a rename into the spool sets it (mtime is when the file was written).
            changed = (await asyncio.to_thread(os.lstat, path)).st_ctime
        except FileNotFoundError:
            return False
        return time.time() - changed >= self.orphan_age

    def _spooled(self) -> list[tuple[str, Path]]:
        """(connection, path) of every file in the spool folders, also those of connections no
        longer configured (their flows are filed in error/ as ``unknown_connection``)."""
        found = []
        for connection in self._ctx.layout.spooled_connections():
            folder = self._ctx.layout.spool(connection)
            names = sorted(os.listdir(folder))
            for stray in stray_markers(folder, names):
                # a sender's outcome marker whose flow was filed (a crash came in between)
                stray.unlink(missing_ok=True)
                names.remove(stray.name)
            found += [(connection, folder / entry) for entry in names]
        return found


def orphan_age(config: Config) -> float:
    """Seconds a spool file with no journal row must have lain there before it is adopted.

    With a journal of its own (SQLite, in the locked data_dir) no other node claims: the file
    was claimed just before a crash, adopted at once. With a shared journal another node may
    be between its rename and its insert: only a file older than ``lease_timeout`` is
    clearly orphaned."""
    return config.journal.lease_timeout if config.journal.url else 0.0


def _present(paths: list[str]) -> list[bool]:
    """Whether each spool path is there (the entry itself: a link put back is refused by the
    analysis, not taken for lost)."""
    return [os.path.lexists(path) for path in paths]


#: How every action of :func:`local_fault` ends.
HEALS = "; raccord tries again by itself"


def local_fault(exc: BaseException) -> tuple[str, str] | None:
    """``(reason, what to do)`` when ``exc`` is a fault of data_dir's own file system that
    ops can heal (and raccord then gets over by itself: the flow is tried again), else None."""
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc).lower() if isinstance(exc, sqlite3.OperationalError) else ""
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text:
        return (
            "local_disk_full",
            "data_dir's file system is full: free space there" + HEALS,
        )
    if code == errno.EROFS or "readonly" in text or "read-only" in text:
        return (
            "local_read_only",
            "data_dir's file system is read-only: remount it read-write" + HEALS,
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            "local_permission_denied",
            f"raccord may not write {getattr(exc, 'filename', None) or 'in data_dir'}: give "
            "raccord's user write permission on data_dir" + HEALS,
        )
    return None


def _recover(db: JournalDB, *, flow_id: str, connection: str, name: str, spool: Path) -> str:
    """Journal a spool file the journal does not account for; return the log event, or "".

    Either it was claimed just before a crash (no row yet), or ``raccord retry`` moved it back
    from error/ and was stopped before recording that (row still in ``error``, its file in
    error/ gone): both resume as ``claimed``.
    """
    if db.insert(flow_id, connection, name, str(spool)):
        return "flow.recovered"
    row = db.get(flow_id)
    if row is not None and row.state == "packed":  # its lot was journaled; the copy is spare
        spool.unlink(missing_ok=True)
        return ""
    if row is not None and row.state == "error" and not _in_error_folder(row):
        _back_to_claimed(db, row, "retry finished after restart", forced=bool(row.forced))
        return "flow.retry_recovered"
    return ""


#: Reasons that belong to the file itself: retried unchanged, it fails the same way.
FILE_REASONS = frozenset(
    {
        "empty",
        "malformed_xml",
        "unknown_format",
        "no_interface_code",
        "not_a_regular_file",
        "invalid_invoice",
    }
)


class CannotSucceed(LookupError):
    """``raccord retry`` of a flow that would fail again the same way (exit 1, saying why)."""


def _would_succeed(row: FlowRow, source: Path, *, force: bool) -> None:
    """Refuse a retry whose outcome is known: a duplicate without ``force``, or a file whose
    own content was the problem and has not changed since (the operator may fix a file in
    ``error/`` in place and retry it: its new content is analysed afresh).

    Raises:
        CannotSucceed: saying why and what to do instead.
    """
    name = f"flow {row.flow_id} ({row.original_name})"
    if row.reason == "duplicate" and not force:
        raise CannotSucceed(
            f"{name} is a duplicate"
            + (f" of flow {row.duplicate_of}" if row.duplicate_of else "")
            + "; retrying would refuse it again: use raccord retry --force to send it anyway"
        )
    if row.reason in FILE_REASONS:
        unchanged = row.sha256 is None or not source.is_file() or digest(source)[0] == row.sha256
        if unchanged:
            raise CannotSucceed(
                f"{name} is in error for {row.reason}, which is the file's own content: "
                "retried unchanged it would fail again; fix the file (in error/ or drop a "
                f"corrected one in outbox/{row.connection}/)"
            )


def _in_error_folder(row: FlowRow) -> bool:
    return row.final_path is not None and Path(row.final_path).exists()


def _back_to_claimed(db: JournalDB, row: FlowRow, detail: str, *, forced: bool) -> None:
    """Queue a flow in error again: analysed and routed afresh, same remote name."""
    db.transition(
        row.flow_id,
        "claimed",
        current=row.state,  # still in error as read: a concurrent retry is refused
        detail=detail,
        forced=int(forced),
        reason=None,
        message=None,
        final_path=None,
        attempts=0,
        # An earlier attempt may have reached the partner: the resend must check first.
        unknown_outcome=1 if row.attempts else 0,
        # Free for any node at once: the lease the flow had when it failed may not have been
        # released yet, and this move names the retrying command's node, not the holder's.
        lease_until=None,
    )


def requeue(db: JournalDB, flow_id: str, *, force: bool) -> str:
    """Put a flow in ``error`` back into the queue (``raccord retry``); return what was done.

    The file returns from ``error/`` to its spool path; the flow is analysed and routed again
    (so a fixed configuration applies), keeps its remote name (so a resend after an unknown
    outcome is recognised), and with ``force`` skips the duplicate check.

    Raises:
        LookupError: unknown flow, or not in ``error``, or its file is no longer in error/.
    """
    row = db.get(flow_id)
    if row is None:
        raise LookupError(f"no flow {flow_id} in the journal")
    if row.state != "error":
        raise LookupError(f"flow {flow_id} is {row.state}; only flows in error can be retried")
    if not _in_error_folder(row):
        raise LookupError(f"flow {flow_id}: its file {row.final_path} is no longer in error/")
    source, spool = Path(row.final_path or ""), Path(row.spool_path)
    _would_succeed(row, source, force=force)
    # Move first: a crash before the journal write leaves the file in the spool with its row
    # in error, which reconcile finishes (_recover); the other order could report it lost.
    move(source, spool)
    source.with_name(source.name + ".error.json").unlink(missing_ok=True)
    detail = "raccord retry" + (" --force" if force else "")
    _back_to_claimed(db, row, detail, forced=force or bool(row.forced))
    return f"{flow_id} ({row.original_name}) queued again" + (" (forced)" if force else "")
