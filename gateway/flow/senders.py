"""Which senders are in use, so that one replaced or removed by a reload is closed only once
no transfer (a send, or the settling of a late acknowledgement) uses it any more."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from protocols.base import Sender


class SenderPool:
    """Counts the transfers under way on each sender."""

    def __init__(self) -> None:
        self._using: dict[int, int] = {}  # id(sender) -> sends and settles under way
        self._released = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def use(self, sender: Sender) -> AsyncIterator[Sender]:
        """Hold ``sender`` for one transfer."""
        key = id(sender)
        self._using[key] = self._using.get(key, 0) + 1
        try:
            yield sender
        finally:
            self._using[key] -= 1
            if not self._using[key]:
                del self._using[key]
                async with self._released:
                    self._released.notify_all()

    async def retire(self, sender: Sender) -> None:
        """Close ``sender`` once no transfer uses it."""
        async with self._released:
            await self._released.wait_for(lambda: not self._using.get(id(sender)))
        await sender.__aexit__(None, None, None)
