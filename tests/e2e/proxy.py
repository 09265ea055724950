"""A loopback TCP proxy for the tests that can slow, stall and cut the connections it carries.

It runs its own event loop in a thread, so that a daemon, a sender's worker process or the
test's own event loop can all go through it. ``rate`` (bytes per second, None: as fast as
the loopback goes) paces both directions; ``stall()`` stops forwarding (the bytes wait, the
connections stay open, as behind a dead NAT entry), ``resume()`` lets them through again;
``cut()`` closes every connection at once (as a reset link).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Self

CHUNK = 4096


class FaultProxy:
    def __init__(self, target_port: int, *, rate: float | None = None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.port = 0
        self.forwarded = 0  # bytes towards the target (the client's uploads)
        self._flowing = asyncio.Event()  # set and cleared on the proxy's loop only
        self._flowing.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving: set[asyncio.Task[None]] = set()

    def __enter__(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_: object) -> None:
        self.resume()
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def stall(self) -> None:
        self._on_loop(self._flowing.clear)

    def resume(self) -> None:
        self._on_loop(self._flowing.set)

    def _on_loop(self, action: Callable[[], None]) -> None:
        async def act() -> None:
            action()

        asyncio.run_coroutine_threadsafe(act(), self._loop).result(10)

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        self.stall()
        try:
            yield
        finally:
            self.resume()

    def cut(self) -> None:
        """Close every connection now (new ones are still accepted)."""
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(10)

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()
        if self._serving:  # each ends once its connections are aborted
            await asyncio.wait(self._serving, timeout=10)

    async def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer, upload=True),
            self._pump(up_reader, writer, upload=False),
            return_exceptions=True,
        )
        for each in (writer, up_writer):
            self._writers.discard(each)
            each.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upload: bool
    ) -> None:
        while data := await reader.read(CHUNK):
            await self._flowing.wait()
            if writer.transport.is_closing():
                return
            writer.write(data)
            await writer.drain()
            if upload:
                self.forwarded += len(data)
            if self.rate is not None:
                await asyncio.sleep(len(data) / self.rate)
        writer.transport.abort()
