"""The coalescing transport under asyncssh: one send per loop turn, nothing lost or reordered.

End to end it carries every SFTP test against the real sshd (tests/e2e); here its own rules."""

from __future__ import annotations

import asyncio
from typing import Any

from protocols.coalescing import Coalescing, CoalescingTransport


class Recording(asyncio.Transport):
    """A socket transport stand-in that records what it is asked to do."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.calls: list[str] = []

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.calls.append("close")

    def abort(self) -> None:
        self.calls.append("abort")

    def is_closing(self) -> bool:
        return bool(self.calls)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 22)}.get(name, default)


async def _turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def test_writes_of_one_turn_leave_together_in_order() -> None:
    async def scenario() -> list[bytes]:
        real = Recording()
        transport = CoalescingTransport(real)
        transport.write(b"ignore|")
        transport.write(b"open|")
        transport.write(b"")
        assert real.sent == []  # not before the turn ends
        await _turn()
        transport.write(b"write|")
        await _turn()
        return real.sent

    assert asyncio.run(scenario()) == [b"ignore|open|", b"write|"]


def test_close_sends_what_was_written_first_and_abort_drops_it() -> None:
    async def scenario() -> tuple[Recording, Recording]:
        closed, aborted = Recording(), Recording()
        for real, end in ((closed, "close"), (aborted, "abort")):
            transport = CoalescingTransport(real)
            transport.write(b"disconnect")
            getattr(transport, end)()
            await _turn()
        return closed, aborted

    closed, aborted = asyncio.run(scenario())
    assert (closed.sent, closed.calls) == ([b"disconnect"], ["close"])
    assert (aborted.sent, aborted.calls) == ([], ["abort"])


def test_the_tunnel_connects_and_the_peer_gets_every_byte() -> None:
    """Over a real loopback TCP connection: the bytes of many turns, in order."""

    async def scenario() -> bytes:
        received = bytearray()
        done = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.extend(await reader.read(-1))
            writer.close()
            done.set()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        protocol = asyncio.Protocol()
        transport, inner = await Coalescing().create_connection(lambda: protocol, "127.0.0.1", port)
        assert inner is protocol
        assert transport.get_extra_info("peername")[1] == port
        for i in range(50):
            transport.write(f"{i:02}.".encode())
            if i % 7 == 0:
                await asyncio.sleep(0)
        transport.close()
        await asyncio.wait_for(done.wait(), 5)
        server.close()
        return bytes(received)

    assert asyncio.run(scenario()) == b"".join(f"{i:02}.".encode() for i in range(50))
