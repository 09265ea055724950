"""The window: the flows a node has in flight, at most :attr:`Window.size`, each under a lease.

Why a window: a backlog of 100,000 files must not mean 100,000 flows in memory. A flow holds
a place in the window from the moment it is worked on here until it waits (for its lot, for
an acknowledgement) or is filed. The others wait in the journal, ``claimed`` or ``queued``,
where they cost nothing here; as places free up, :meth:`Window.fill` leases the next ones,
oldest first (:meth:`~gateway.journal.leases.LeaseQueries.lease`), so that no flow starves.

Why leases: several nodes may share one journal. A flow is worked on by the node holding its
lease; :meth:`Window.beat` renews the leases of the flows held here every ``lease_timeout / 3``
and releases those done with. A node that dies renews nothing: after ``lease_timeout`` its
flows are free, and the next :meth:`Window.fill` of any node takes them and resumes them as a
restart does. A flow whose lease another node took meanwhile (this node was silent too long)
is stopped here at once (``flow.lease_lost``).

What holds a place and a lease: a flow's task (claimed here, leased from the journal, a new
lot, a flow resumed after a fault). A flow stopped by a local fault keeps its lease (not its
place) until it is tried again; a flow retried after a transfer failure keeps both while it
waits for its backoff: it is this node's to send, and a place it frees would only go to
another flow of the same failing partner.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from gateway import logs
from gateway.flow.context import Context, Running
from gateway.journal import Call, FlowRow, JournalDB
from gateway.journal.leases import lease_end

log = logs.get()

#: What ``flow.lease_lost`` tells the operator.
LEASE_LOST = (
    "another node took the flow over (this one was silent longer than lease_timeout); "
    "stopped here, it goes on there"
)

#: Resumes the flows just leased (checks, logs) and starts them; returns how many started.
Resume = Callable[[list[FlowRow]], Awaitable[int]]


class Window:
    """The flows in flight here, the leases this node holds, and the two loops that keep
    them: :meth:`feed` (fills free places from the journal) and :meth:`beat` (renews)."""

    def __init__(self, ctx: Context, running: Running, *, size: int, lease_timeout: float) -> None:
        self._ctx = ctx
        self._running = running
        self.size = size
        self.lease_timeout = lease_timeout
        self.slots: set[str] = set()  # flows in flight here (a task each)
        self.leased: set[str] = set()  # flows whose lease this node holds
        self.peak = 0  # the most flows ever in flight here at once
        self._done: set[str] = set()  # leases to release at the next beat
        self._backlog = True  # flows may be waiting in the journal
        self._arrivals = 0  # flows journaled to wait (claimed beyond the window)
        self._wake = asyncio.Event()
        self._filling = asyncio.Lock()
        self._resume: Resume | None = None

    # -- places ---------------------------------------------------------------------------

    @property
    def room(self) -> int:
        return self.size - len(self.slots)

    def direct(self) -> bool:
        """Whether a newly claimed flow may go on at once: a place is free and no older flow
        waits in the journal (it would overtake it)."""
        return not self._backlog and len(self.slots) < self.size

    def until(self) -> str:
        """The end of a lease taken or renewed now."""
        return lease_end(self.lease_timeout)

    def enter(self, flow_id: str) -> None:
        self.slots.add(flow_id)
        self.peak = max(self.peak, len(self.slots))

    def hold(self, flow_ids: Iterable[str]) -> None:
        """The journal just leased ``flow_ids`` to this node: renew them from now on. A flow
        done with earlier and leased again before the beat released it is not released then
        (its new lease would go, and the next beat would stop it as lost)."""
        held = set(flow_ids)
        self.leased |= held
        self._done -= held

    def leave(self, flow_id: str, *, keep_lease: bool = False) -> None:
        """The flow's task ended: its place is free; its lease is released at the next beat
        unless ``keep_lease`` (it is tried again here later)."""
        self.slots.discard(flow_id)
        if not keep_lease and flow_id in self.leased:
            self.leased.discard(flow_id)
            self._done.add(flow_id)
        if self._backlog:
            self._wake.set()

    def forget(self, flow_id: str) -> None:
        """A lease taken for a flow that is worked on here without a place (a late
        acknowledgement being settled): released at the next beat, unless a task of the
        flow holds it."""
        if flow_id not in self.slots and flow_id in self.leased:
            self.leased.discard(flow_id)
            self._done.add(flow_id)

    def waiting(self) -> None:
        """Flows were journaled to wait (claimed beyond the window, requeued, or maybe freed
        by a dead node): look for them as soon as there is room."""
        self._backlog = True
        self._arrivals += 1
        self._wake.set()

    # -- the loops ------------------------------------------------------------------------

    async def fill(self) -> int:
        """Lease flows from the journal into the free places, oldest first; return how many
        were started."""
        if self._resume is None:
            return 0
        started = 0
        async with self._filling:
            while self._backlog and self.room > 0 and not self._ctx.stopping.is_set():
                arrivals, limit = self._arrivals, self.room
                rows = await self._ctx.journal.call(Call(JournalDB.lease, limit, self.until()))
                if len(rows) < limit and arrivals == self._arrivals:
                    self._backlog = False  # nothing more waits (until told otherwise)
                if not rows:
                    break
                self.hold(row.flow_id for row in rows)
                started += await self._resume(rows)
        return started

    async def feed(self, resume: Resume) -> None:
        """Fill the window whenever a place frees up and flows may wait, until stopping."""
        self._resume = resume
        stopping = self._ctx.stopping
        while not stopping.is_set():
            try:
                await self.fill()
            except Exception as exc:  # the journal or the disk: the next beat tries again
                log.error("window.fill_failed", error=str(exc), action="tried again shortly")
            await self._wake.wait()
            self._wake.clear()

    async def beat(self) -> None:
        """Every ``lease_timeout / 3``: release the leases of flows done with, renew the
        others, stop the flows whose lease was lost, and look for flows freed meanwhile."""
        stopping = self._ctx.stopping
        while not stopping.is_set():
            await self._ctx.pause(self.lease_timeout / 3)
            if stopping.is_set():
                break
            try:
                await self.renew()
            except Exception as exc:
                log.error("window.renew_failed", error=str(exc), action="tried again shortly")
            self.waiting()

    async def renew(self) -> None:
        """One beat: release, renew, and stop the flows another node took over."""
        journal = self._ctx.journal
        done = list(self._done)
        if done:
            await journal.call(Call(JournalDB.release, done))
            self._done.difference_update(done)
        held = list(self.leased)
        if not held:
            return
        renewed = set(await journal.call(Call(JournalDB.renew, held, self.until())))
        for flow_id in held:
            if flow_id in renewed or flow_id not in self.leased:
                continue  # renewed, or done with meanwhile
            self.leased.discard(flow_id)
            log.error("flow.lease_lost", flow_id=flow_id, action=LEASE_LOST)
            task = self._running.flow_tasks.get(flow_id)
            if task is not None:
                task.cancel()

    def wake(self) -> None:
        """Make :meth:`feed` look at ``stopping``."""
        self._wake.set()

    async def release_all(self) -> None:
        """Give up every lease held here (the gateway stopped): another node may take these
        flows at once, and this one takes them back at its next start anyway."""
        self.leased.clear()
        self._done.clear()
        try:
            await self._ctx.journal.call(Call(JournalDB.release_all))
        except Exception as exc:  # they expire after lease_timeout instead
            log.warning("window.release_failed", error=str(exc))
