"""Singleton duties: work that one node at a time does, and that moves to another node when
that one dies.

Several raccord nodes sharing one journal all run the same loops: return polling of each
connection, PISTE report rounds, retention, the overdue-return check, the certificate alerts.
Each such loop is a :class:`Duty`, held in the journal's ``duties`` table
(:mod:`gateway.journal.duties`)::

    async with duties.duty("returns:sftp-prod") as duty:
        while not stopping.is_set():
            if await duty.held():              # take it, or renew it
                async with duty.heartbeat():   # renewed while a long round runs
                    await one_round()
            await duty.pause(stopping, interval)   # renewed (or tried for) while waiting

The holder renews its lease every ``lease_timeout / 3``; a node that dies stops renewing and
another takes the duty once the lease has run out (within about ``4/3 × lease_timeout``). A
clean stop releases it at once. A node restarted under the same ``node_name`` takes its duties
back at once. On one node with SQLite, that node always holds every duty: nothing changes.

Leases compare the nodes' clocks (ISO 8601 UTC): they must agree within a few seconds (NTP).
A holder that cannot reach the journal for a whole lease stops counting itself the holder;
the round it is in finishes (every duty's work is idempotent: a return fetched twice is
applied once), the next waits until it holds the duty again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

from gateway import logs
from gateway.flow.context import utc_now
from gateway.journal import Call, Journal, JournalDB
from gateway.ops.metrics import Metrics

log = logs.get()

Now = Callable[[], datetime]


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


class Duties:
    """This node's duties over one journal: how long a lease lasts, the clock, the gauges."""

    def __init__(
        self,
        journal: Journal,
        *,
        lease: float = 30.0,
        now: Now = utc_now,
        metrics: Metrics | None = None,
    ) -> None:
        self.journal = journal
        self.lease = lease
        self.now = now
        self.metrics = metrics

    @contextlib.asynccontextmanager
    async def duty(self, name: str) -> AsyncIterator[Duty]:
        """The duty ``name`` for the time of the block; released when the block ends (a clean
        stop, a reload), so that another node can take it over at once."""
        duty = Duty(self, name)
        try:
            yield duty
        finally:
            await duty.release()


class Duty:
    """One duty as this node sees it (see the module docstring)."""

    def __init__(self, duties: Duties, name: str) -> None:
        self.duties = duties
        self.name = name
        self._until: datetime | None = None  # this node's lease, as far as it knows
        self._asked: datetime | None = None  # when this node last took, renewed or tried it
        self._step = timedelta(seconds=duties.lease / 3)
        self._held = False  # as the logs and the gauge last said

    @property
    def holding(self) -> bool:
        """Whether this node holds the duty, by its last take or renewal (no journal call)."""
        return self._until is not None and self.duties.now() < self._until

    async def held(self) -> bool:
        """Take or renew the duty: True if this node holds it. The journal is asked at most
        once a third of a lease: a lease renewed since is still this node's (no other node can
        take it before it runs out), a duty refused since is still another's for all this node
        needs to know (loops with short intervals would otherwise ask at each turn). A journal
        that does not answer counts as not held once the lease this node knows of has run
        out."""
        asked = self._asked
        fresh = asked is not None and self.duties.now() - asked < self._step
        if fresh and self.holding == self._held:  # else a lease ran out: ask, and say so
            return self._held
        return await self._take()

    async def _take(self) -> bool:
        """One take-or-renew in the journal (see :meth:`held`)."""
        duties = self.duties
        now = duties.now()
        self._asked = now
        until = now + timedelta(seconds=duties.lease)
        why = "another node took it over after this node's lease ran out"
        try:
            took = await duties.journal.call(
                Call(JournalDB.take_duty, self.name, _iso(now), _iso(until))
            )
        except Exception as exc:  # the journal is unwell: the lease we had may still run
            log.warning("duty.renew_failed", duty=self.name, error=str(exc))
            took = False
            if self.holding:
                return True
            why = "the journal did not answer for a whole lease"
        self._until = until if took else None
        if took and not self._held:
            self._changed(True)
            log.info("duty.taken", duty=self.name)
        elif self._held and not took:
            self._changed(False)
            log.warning("duty.lost", duty=self.name, why=why)
        return took

    async def pause(self, stopping: asyncio.Event, seconds: float) -> None:
        """Wait ``seconds`` (or until ``stopping``), renewing the duty every third of a lease
        when held, trying for it when not; returns early when it has just been taken over, so
        the new holder runs a round at once rather than after a whole interval."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        step = self.duties.lease / 3
        while not stopping.is_set():
            left = end - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), min(step, left))
            if stopping.is_set() or loop.time() >= end:
                return
            was = self._held
            if await self._take() and not was:
                return

    @contextlib.asynccontextmanager
    async def heartbeat(self) -> AsyncIterator[None]:
        """Renew the duty every third of a lease while the block runs (a long round)."""
        task = asyncio.create_task(self._beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.duties.lease / 3)
            await self._take()

    async def release(self) -> None:
        """Give the duty up (if held) so that another node takes it at once."""
        if self._until is None:
            return
        self._until = self._asked = None
        if self._held:
            self._changed(False)
            log.info("duty.released", duty=self.name)
        try:
            await self.duties.journal.call(Call(JournalDB.release_duty, self.name))
        except Exception as exc:  # the lease then runs out by itself
            log.warning("duty.release_failed", duty=self.name, error=str(exc))

    def _changed(self, held: bool) -> None:
        """This node now holds the duty, or no longer: the gauge says so."""
        self._held = held
        metrics = self.duties.metrics
        if metrics is not None:
            metrics.duty_held.labels(self.name).set(1 if held else 0)
