"""Filing of finished flows (into sent/ or error/, with their receipt or error report) in a
worker process, many flows per round trip.

Filing is a handful of system calls per flow (write and fsync the report, rename the file) and
an fsync per folder per batch. On a thread of the daemon, each of those calls hands the GIL to
the event loop and waits to get it back, which made filing the slowest stage of the gateway
in a burst. In a process of its own it waits for the disk only, and the daemon's GIL is left
to the event loop (docs/performance.md, "What was measured").

:func:`~gateway.folders.place_all` is idempotent, so a batch whose worker died is run once more
in a new worker; a second death fails the batch, and its flows stay journaled as decided
(``delivered`` or ``failing``) until the next start files them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.batching import WorkerBatches, WorkerDied
from gateway.folders import Placement, place_all

Work = Callable[[list[Placement]], Sequence[Exception | None]]


class FilingFailed(OSError):
    """The filing process died twice with the batch of this flow."""


class Filer(WorkerBatches[Placement, None]):
    """Files flows for the dispatcher; ``work`` is what the worker runs on a batch."""

    def __init__(self, work: Work = place_all) -> None:
        super().__init__("raccord-filer", work, max_batch=512)

    async def place(self, placement: Placement) -> None:
        """File one flow.

        Raises:
            OSError: it could not be filed (the file stays where it was, the report may be
                written already: filing it again later rewrites it).
        """
        await self.submit(placement)

    def run(self, items: list[Placement]) -> Sequence[Exception | None]:
        for _ in range(2):
            try:
                return super().run(items)
            except WorkerDied as exc:
                died = exc
        return [FilingFailed(f"{died} twice while filing this flow")] * len(items)
