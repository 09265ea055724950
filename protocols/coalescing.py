"""A transport whose writes of one turn of the event loop leave in one send; and, built on it,
a TCP connection for asyncssh.

asyncssh hands each SSH packet to its transport as soon as it is built, and puts an empty
``SSH_MSG_IGNORE`` packet before every packet it encrypts: uploading a small file is about
twelve writes, each of which asyncio turns into its own ``send()`` system call (and the local
sshd into as many wake-ups). :class:`Coalescing` is passed as asyncssh's ``tunnel``: it opens
the TCP connection itself and gives asyncssh a transport that gathers the writes made during one
turn of the loop and sends them together at the start of the next: fewer system calls for the
client, fewer wake-ups for the server (docs/performance.md, "What was measured"). Nothing waits
longer than the end of the current turn.

:class:`CoalescingTransport` wraps any transport: :mod:`protocols.offload` sends the messages
of one turn to and from its worker process the same way.

asyncssh uses four transport methods (``write``, ``close``, ``abort``, ``get_extra_info``);
those and ``is_closing`` are what the transport offers (the others raise NotImplementedError, as
in asyncio's base class, rather than forward untested).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Coalescing:
    """An asyncssh ``tunnel`` that connects directly over TCP, with coalesced writes."""

    async def create_connection(
        self, session_factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        _, relay = await loop.create_connection(lambda: _Relay(session_factory()), host, port)
        assert relay.transport is not None  # connection_made ran
        return relay.transport, relay.inner

    def close(self) -> None:
        """Nothing to close: each connection is closed by its SSH connection."""

    async def wait_closed(self) -> None:
        """Nothing to wait for (see :meth:`close`)."""


class _Relay(asyncio.Protocol):
    """Stands between the socket transport and asyncssh's connection."""

    def __init__(self, inner: asyncio.Protocol) -> None:
        self.inner = inner
        self.transport: CoalescingTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = CoalescingTransport(transport)
        self.inner.connection_made(self.transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class CoalescingTransport(asyncio.Transport):
    """Gathers the writes of one loop turn; closing and extra info go to the socket transport."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self._flush()  # what was written before close() still leaves, as with asyncio's own
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)
