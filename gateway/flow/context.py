"""What every step of a flow reads: the running configuration, the journal, the clock, and
which flows are being worked on.

One :class:`Context` is shared by the dispatcher and its collaborators (routing, delivery,
receipts, filing, lots, recovery). A reload replaces its configuration, senders and
certificates in place, so that every step looks a connection up afresh.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.config import Config, Connection
from gateway.folders import Layout
from gateway.journal import Call, FlowRow, Journal, JournalDB
from gateway.ops import certificates
from gateway.ops.alerts import Alerter
from gateway.ops.metrics import Metrics
from protocols.base import Sender

Now = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    """The state the steps of a flow share (``config``, ``senders`` and ``certificates`` are
    replaced by a reload)."""

    config: Config
    journal: Journal
    senders: dict[str, Sender]
    #: What each connection's transfers depend on: one out of its validity blocks it.
    certificates: dict[str, list[certificates.InUse]]
    metrics: Metrics
    alerts: Alerter
    layout: Layout  # data_dir's folders (a reload keeps data_dir)
    now: Now = utc_now
    sleep: Sleep = asyncio.sleep
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def configured(self, name: str) -> Connection | None:
        """The connection called ``name``, or None if a reload removed it."""
        return next((c for c in self.config.connections if c.name == name), None)

    async def transition(self, row: FlowRow, state: str, **values: Any) -> FlowRow:
        """Journal ``row``'s move to ``state`` with ``values``, if the flow is still in the
        state ``row`` holds (compare-and-set; the journal's table says whether the move is
        legal)."""
        return await self.journal.call(
            Call(JournalDB.transition, row.flow_id, state, current=row.state, **values)
        )

    async def pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if the gateway is stopping."""
        waiters = {
            asyncio.ensure_future(self.stopping.wait()),
            asyncio.ensure_future(self.sleep(delay)),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


class Running:
    """The flows being worked on in this process (one task at most each), and every
    background task, which :meth:`Dispatcher.drain <gateway.flow.dispatcher.Dispatcher.drain>`
    waits for."""

    def __init__(self) -> None:
        self.active: set[str] = set()  # flows being worked on (a task, or a settle)
        self.tasks: set[asyncio.Task[None]] = set()
        self.flow_tasks: dict[str, asyncio.Task[None]] = {}  # the running task of each flow

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``work`` in the background."""
        task = asyncio.create_task(work, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def run_flow(self, flow_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as the task of ``flow_id``."""
        task = self.spawn(work, f"flow-{flow_id}")
        self.flow_tasks[flow_id] = task
        task.add_done_callback(functools.partial(self._forget, flow_id))

    def _forget(self, flow_id: str, task: asyncio.Task[None]) -> None:
        if self.flow_tasks.get(flow_id) is task:  # not a later run of the same flow
            del self.flow_tasks[flow_id]
