"""A dropped file's claim: the atomic rename from its outbox into the spool, and its row.

The files of a burst are renamed together, on a worker thread (a rename on the event loop
waits for the file system under load): :func:`rename_all` is that batch. :class:`Claimer`
claims and journals them, leased to this node when the window has room, else to wait.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway import logs
from gateway.batching import Batcher
from gateway.flow.context import Context, Running
from gateway.flow.recovery import local_fault
from gateway.flow.window import Window
from gateway.folders import spool_name
from gateway.journal import Call, FlowRow, JournalDB

log = logs.get()


@dataclass(frozen=True)
class Claim:
    """A dropped file to claim: moved from ``source`` (its outbox) to ``spool``."""

    connection: str
    name: str  # as ops named it (displayable)
    source: Path
    spool: Path


def rename_all(moves: list[tuple[Path, Path]]) -> list[Exception | None]:
    """Rename each (source, target); None or the error, per move (on a worker thread).

    FileNotFoundError means the source is gone (claimed meanwhile, or removed); a target
    folder that is missing is another error, so that it is reported rather than taken for
    "already claimed" at every scan.
    """
    outcomes: list[Exception | None] = []
    for source, target in moves:
        try:
            os.rename(source, target)
            outcomes.append(None)
        except FileNotFoundError as exc:
            if not os.path.lexists(source):
                outcomes.append(exc)
            else:  # a plain OSError (no errno): not mistaken for a vanished source
                outcomes.append(OSError(f"cannot move {source} to {target}: {exc.strerror}"))
        except OSError as exc:
            outcomes.append(exc)
    return outcomes


class Start(Protocol):
    """Runs a flow (:meth:`Dispatcher.start <gateway.flow.dispatcher.Dispatcher.start>`)."""

    def __call__(self, flow_id: str, *, claimed: Claim | None = None, lost: int = 0) -> bool: ...


class Claimer:
    """Claims dropped files: renames them into the spool, in batches on a worker thread, and
    journals them, either leased to this node (worked on at once) or to wait their turn.

    Files claimed only to wait (the window is full) are at most a window's worth at once:
    :meth:`claim_to_wait` waits for a free place in that budget, which slows intake down
    rather than let a backlog pile up in memory.
    """

    def __init__(
        self,
        ctx: Context,
        window: Window,
        running: Running,
        *,
        new_id: Callable[[], str],
        prepare: Callable[[str], None],
        start: Start,
        claim_as: Callable[[str, Path, str], str],
    ) -> None:
        self._ctx = ctx
        self._window = window
        self._running = running
        self._new_id = new_id
        self._prepare = prepare  # tells the connection's sender a file is coming
        self._start = start
        self._claim_as = claim_as  # claims a file under a new identity
        self._renames: Batcher[tuple[Path, Path], None] = Batcher(rename_all)
        self._budget = asyncio.Semaphore(window.size)

    async def take(self, flow_id: str, claim: Claim) -> bool:
        """Rename the claimed file into the spool; False if it is not there (any more)."""
        try:
            await self._renames.submit((claim.source, claim.spool))
        except FileNotFoundError:
            return False  # claimed by an earlier event or scan, or removed by ops
        except OSError as exc:
            # It stays in the outbox; the next scan offers it again.
            reason, action = local_fault(exc) or (
                "claim_failed",
                "check the permissions of the outbox and spool folders; the next scan tries again",
            )
            log.error(
                "intake.claim_failed",
                connection=claim.connection,
                file=claim.name,
                reason=reason,
                error=str(exc),
                action=action,
            )
            return False
        log.info("flow.claimed", connection=claim.connection, flow_id=flow_id, file=claim.name)
        self._ctx.metrics.received.labels(claim.connection).inc()
        self._prepare(claim.connection)
        return True

    async def journal(self, flow_id: str, claim: Claim, *, lease: bool = True) -> FlowRow | None:
        """Journal a claimed file, leased to this node (it is worked on here at once) or not
        (it waits its turn in the journal); None if the identifier is taken."""
        values = {"lease_until": self._window.until()} if lease else {}
        return await self._ctx.journal.call(
            Call(
                JournalDB.insert, flow_id, claim.connection, claim.name, str(claim.spool), **values
            )
        )

    async def claim_to_wait(self, connection: str, path: Path, name: str) -> str | None:
        """Claim ``path`` to wait its turn in the journal (in the background, once a place in
        the budget is free); return its flow identifier, or None if the gateway stops."""
        await self._budget.acquire()
        if self._ctx.stopping.is_set():
            self._budget.release()
            return None
        flow_id = self._new_id()
        spool = self._ctx.layout.spool(connection) / spool_name(flow_id, name)
        claim = Claim(connection, name, path, spool)
        self._running.spawn(self._to_wait(flow_id, claim), f"claim-{flow_id}")
        return flow_id

    async def _to_wait(self, flow_id: str, claim: Claim) -> None:
        """Rename and journal ``claimed`` without a lease: the window takes the flow from the
        journal in its turn. A fault after the rename hands the flow to the ordinary path
        (:meth:`Dispatcher.start`), which knows how to get over it."""
        taken = False
        try:
            taken = await self.take(flow_id, claim)
            if taken:
                row = await self.journal(flow_id, claim, lease=False)
                if row is None:  # the identifier is taken (a clock set back): a new one
                    log.error("flow.id_taken", flow_id=flow_id, file=claim.name)
                    self._claim_as(claim.connection, claim.spool, claim.name)
                else:
                    self._window.waiting()
        except Exception:
            if taken:
                self._start(flow_id, claimed=claim, lost=1)
            else:
                log.exception("intake.claim_failed", connection=claim.connection, file=claim.name)
        finally:
            self._budget.release()
