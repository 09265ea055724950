"""The plumbing of a PeSIT requester's connection: the socket, a reader task feeding the
:class:`~protocols.pesit.machine.Machine`, and the bounded waits for the peer's answers.

:class:`Link` knows how to send an FPDU and take the next one, and what a refusal, an
interruption or a broken connection looks like; it knows no PeSIT sequence. The sequences
(CONNECT, a write, a read) are :class:`~protocols.pesit.session.Session`'s, built on it.

The reader task decodes ahead: by the time the link looks at its queue, the machine may
already count an ACK(SYN) the link has not taken out yet. So the link keeps its own count of
the acknowledgements it has *taken* (``_acked``), and every wait for an answer takes
ACK(SYN)s out of its way: an acknowledgement of a sync point is never the answer to another
request (it once was, to TRANS.END, and the transfer the server had just stored was resent).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from protocols.pesit import codec
from protocols.pesit.codec import PI, Fpdu, Kind, Param
from protocols.pesit.machine import Machine, RemoteProtocolError, Role, State


class Refused(Exception):
    """The peer answered a request with a diagnostic (PI 2 ≠ 0)."""

    def __init__(self, what: Kind, diagnostic: int, detail: str | None = None) -> None:
        more = f" ({detail})" if detail else ""
        super().__init__(f"{what.name} refused with diagnostic {diagnostic}{more}")
        self.what = what
        self.diagnostic = diagnostic
        self.detail = detail


class Broken(Exception):
    """The connection is unusable: lost, timed out, aborted or garbled.

    ``garbled``: the peer was reached but sent what PeSIT does not allow (bytes that are no
    FPDU, an FPDU out of turn). ``started``: whether file data had begun to flow (the outcome
    of the transfer is then unknown). ``acknowledged``: whether the peer had acknowledged some
    of it (an ACK(SYN), a restart point) or the TRANS.END had gone: the peer knew the transfer,
    so if it later knows nothing of it, it may have finished it."""

    def __init__(
        self, message: str, *, timeout: bool = False, diagnostic: int = 0, garbled: bool = False
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.diagnostic = diagnostic
        self.garbled = garbled
        self.started = False
        self.acknowledged = False


class Interrupted(Exception):
    """The peer interrupted the transfer (IDT, F.CANCEL) with a diagnostic; raccord answered
    ACK(IDT). The transfer did not complete; the session may still be usable."""

    def __init__(self, diagnostic: int, end_code: int | None, detail: str | None) -> None:
        more = f" ({detail})" if detail else ""
        super().__init__(f"the server interrupted the transfer with diagnostic {diagnostic}{more}")
        self.diagnostic = diagnostic
        self.end_code = end_code  # PI 19: 4 error, 8 suspension, 12 cancelled by the server
        self.detail = detail


@dataclass(frozen=True)
class Peer:
    """How to reach and talk to one PeSIT server."""

    host: str
    port: int
    requester: str  # PI 3
    server: str  # PI 4
    password: str | None = None  # PI 5
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    nsdu_header: bool = True
    pre_connection: bool = False
    sync_interval_kb: int = 32
    sync_window: int = 2
    entity_size: int = 32768
    connect_timeout: float = 15.0
    timeout: float = 30.0  # Tp: the longest wait for the peer's next FPDU


class Link:
    """One connection to a PeSIT server, as the requester: the FPDUs in and out."""

    def __init__(
        self,
        peer: Peer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection_id: int,
    ) -> None:
        self.peer = peer
        self.machine = Machine(
            Role.REQUESTER, connection_id=connection_id, nsdu_header=peer.nsdu_header
        )
        self._reader = reader
        self._writer = writer
        self._events: asyncio.Queue[Fpdu | BaseException] = asyncio.Queue()
        self._pump: asyncio.Future[None] | None = None  # started after the pre-connection
        self.sync_interval = 0  # bytes, as negotiated
        self.window = 0
        self._acked = 0  # the last sync point whose ACK(SYN) the session has taken

    # -- plumbing ---------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(1 << 16)
                self.machine.receive_data(data)
                while (fpdu := self.machine.next_event()) is not None:
                    self._events.put_nowait(fpdu)
                if not data:
                    self._events.put_nowait(Broken("the server closed the connection"))
                    return
        except RemoteProtocolError as exc:
            self._events.put_nowait(
                Broken(
                    f"the server broke the protocol: {exc}",
                    diagnostic=exc.diagnostic,
                    garbled=True,
                )
            )
        except (OSError, ssl.SSLError) as exc:
            self._events.put_nowait(Broken(f"connection lost: {exc.strerror or exc}"))

    async def _send(
        self, kind: Kind, *params: Param | None, data: bytes = b"", count: int = 0
    ) -> None:
        if self._writer.is_closing():
            raise Broken("the connection is closed")
        if self.machine.state is State.INTERRUPTING and kind is not Kind.ACK_IDT:
            if kind is Kind.ACK_SYN:
                # a read the server has interrupted: no acknowledgement is due any more, and
                # its IDT is met in the queue after the data it sent before it
                return
            await self._take_interruption()  # a write: the server's IDT goes first
        self._writer.write(self.machine.send(kind, *params, data=data, count=count))
        try:
            await asyncio.wait_for(self._writer.drain(), self.peer.timeout)
        except TimeoutError:
            raise Broken(
                f"the server stopped reading for {self.peer.timeout:g}s", timeout=True
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise Broken(f"connection lost: {exc}") from None

    def _queued(self) -> Fpdu | None:
        """An FPDU already received, without waiting."""
        try:
            item = self._events.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return self._unwrap(item)

    async def _next(self, waiting_for: str) -> Fpdu:
        try:
            item = await asyncio.wait_for(self._events.get(), self.peer.timeout)
        except TimeoutError:
            raise Broken(
                f"no answer from the server in {self.peer.timeout:g}s while waiting for "
                f"{waiting_for}",
                timeout=True,
            ) from None
        return self._unwrap(item)

    def _unwrap(self, item: Fpdu | BaseException) -> Fpdu:
        if isinstance(item, BaseException):
            self._events.put_nowait(item)  # every later wait sees it too
            raise item
        if item.kind is Kind.ABORT:
            diagnostic = item.diagnostic
            raise Broken(f"the server aborted (diagnostic {diagnostic})", diagnostic=diagnostic)
        return item

    async def _answer(self, request: Kind, expected: Kind) -> Fpdu:
        fpdu = await self._next(expected.name)
        while fpdu.kind is Kind.ACK_SYN:  # a late acknowledgement, never the answer
            self._heard_ack(fpdu)
            fpdu = await self._next(expected.name)
        if fpdu.kind is Kind.IDT:
            await self._interrupted(fpdu)
        if fpdu.kind is not expected:
            raise Broken(f"{fpdu.kind.name} in answer to {request.name}", garbled=True)
        if fpdu.diagnostic:
            raise Refused(request, fpdu.diagnostic, fpdu.text(PI.DIAGNOSTIC_MORE))
        return fpdu

    async def _request(self, kind: Kind, expected: Kind, *params: Param | None) -> Fpdu:
        await self._send(kind, *params)
        return await self._answer(kind, expected)

    def _heard_ack(self, fpdu: Fpdu) -> None:
        """An ACK(SYN) taken out of the queue (the machine has checked its number)."""
        self._acked = max(self._acked, fpdu.number(PI.SYNC_NUMBER, 0) or 0)

    async def _heard(self, fpdu: Fpdu) -> None:
        """What the server may send while a write's data flows: an ACK(SYN), or an IDT."""
        if fpdu.kind is Kind.ACK_SYN:
            self._heard_ack(fpdu)
        elif fpdu.kind is Kind.IDT:
            await self._interrupted(fpdu)
        else:
            raise Broken(f"{fpdu.kind.name} during the data transfer", garbled=True)

    async def _interrupted(self, idt: Fpdu) -> None:
        """Answer the server's IDT with ACK(IDT), then raise :class:`Interrupted`."""
        await self._send(Kind.ACK_IDT)
        raise Interrupted(idt.diagnostic, idt.number(PI.END_CODE), idt.text(PI.DIAGNOSTIC_MORE))

    async def _take_interruption(self) -> None:
        """The machine has read an IDT the session has not taken yet: take what comes before
        it, then answer it (which raises :class:`Interrupted`)."""
        while True:
            await self._heard(await self._next("IDT"))

    # -- lifecycle --------------------------------------------------------------------------

    async def release(self) -> None:
        """RELEASE → RELCONF, then close. Quiet when the connection is already gone."""
        with contextlib.suppress(Broken, Refused):
            if self.machine.state is State.CONNECTED:
                await self._request(Kind.RELEASE, Kind.RELCONF, codec.diagnostic(0))
        await self.close()

    async def abort(self, diagnostic: int) -> None:
        with contextlib.suppress(Exception):
            if self.machine.state not in (State.IDLE, State.CLOSED):
                self._writer.write(self.machine.send(Kind.ABORT, codec.diagnostic(diagnostic)))
        await self.close()

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 5)

    @property
    def reusable(self) -> bool:
        return self.machine.state is State.CONNECTED and not self._writer.is_closing()

    async def _close_file(self) -> None:
        """CRF → DESELECT after a transfer that ended (acknowledged or interrupted), so the
        connection serves the next flow; if that fails, the connection is closed without an
        ABORT (there is no transfer left to abort) and the next flow connects anew."""
        try:
            await self._request(Kind.CRF, Kind.ACK_CRF, codec.diagnostic(0))
            await self._request(Kind.DESELECT, Kind.ACK_DESELECT, codec.diagnostic(0))
        except (Broken, Refused, Interrupted):
            await self.close()
