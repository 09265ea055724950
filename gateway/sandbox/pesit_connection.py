"""One requester's connection to the PeSIT test responder
(:class:`~gateway.sandbox.pesit_partner.PesitResponder`).

:class:`Exchange` reads and answers FPDUs through the server side of the sans-IO machine and
handles the connection and selection phases (CONNECT, CREATE, SELECT…); :class:`Connection`
adds the data phases: a write deposited under ``depot/`` and a read served from ``retrait/``,
with the faults the responder is told to inject on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from protocols.pesit import codec
from protocols.pesit.codec import PI, Fpdu, Kind
from protocols.pesit.machine import Machine, RemoteProtocolError, Role, State
from protocols.pesit.session import sync_file

if TYPE_CHECKING:
    from gateway.sandbox.pesit_partner import PesitResponder


@dataclass
class Transfer:
    requester: str
    transfer_id: int
    final: Path
    partial: Path
    secured: int = 0  # bytes on disk at the last acknowledged sync point
    point: int = 0
    holder: object | None = None  # the connection writing it, until that connection ends


@dataclass
class Served:
    requester: str
    path: Path
    transfer_id: int
    points: dict[int, int]  # sync point → file offset, as sent


def reopen(partial: Path, secured: int) -> BinaryIO:
    """``partial`` cut back to its secured bytes, open for appending."""
    with partial.open("r+b") as out:
        out.truncate(secured)
    return partial.open("ab")


class Abort(Exception):
    def __init__(self, message: str, diagnostic: int) -> None:
        super().__init__(message)
        self.diagnostic = diagnostic


class Exchange:
    """The FPDUs in and out of one connection, and its connection and selection phases."""

    def __init__(
        self, owner: PesitResponder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.owner = owner
        self.reader = reader
        self.writer = writer
        self.machine = Machine(
            Role.SERVER, connection_id=(next(owner._ids) % 254) + 1, nsdu_header=owner.nsdu_header
        )
        self.requester = ""
        self.transfer: Transfer | None = None
        self.served: Served | None = None
        self.out: BinaryIO | None = None
        self.article_length = 0xFFFF
        self.received = 0  # this write's bytes on disk (resumed part included)
        self.articles = 0
        self.segment = bytearray()
        self.interval = 0
        self.interrupting = 0  # the diagnostic of our IDT, until its ACK(IDT)

    def close_files(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None

    def release(self) -> None:
        """The connection ended: its transfer (if unfinished) may be restarted elsewhere."""
        self.close_files()
        if self.transfer is not None and self.transfer.holder is self:
            self.transfer.holder = None

    async def _send(self, kind: Kind, *params: codec.Param | None, data: bytes = b"") -> None:
        self.writer.write(self.machine.send(kind, *params, data=data))
        await self.writer.drain()

    async def _next(self) -> Fpdu | None:
        while True:
            fpdu = self.machine.next_event()
            if fpdu is not None:
                return fpdu
            if self.machine.at_eof:
                return None
            self.machine.receive_data(await self.reader.read(1 << 16))

    async def run(self) -> None:
        faults = self.owner.faults
        if faults.silent:
            await self.reader.read()  # until the requester gives up
            return
        if self.owner.pre_connection and not await self._pre_connection():
            return
        try:
            while True:
                fpdu = await self._next_or_interrupt()
                if fpdu is None:
                    return
                if self.interrupting and fpdu.kind is not Kind.ACK_IDT:
                    continue  # sent before our IDT reached the requester: dropped
                if fpdu.kind is Kind.CONNECT and faults.garbage:
                    self.writer.write(b"\x00\x03\xff\xfe\xfd garbage, not PeSIT")
                    await self.writer.drain()
                    return
                await self._handle(fpdu)
                if self.machine.state is State.CLOSED:
                    return
        except RemoteProtocolError as exc:
            await self._abort(str(exc), exc.diagnostic)
        except Abort as exc:
            await self._abort(str(exc), exc.diagnostic)

    async def _next_or_interrupt(self) -> Fpdu | None:
        """The next FPDU; a window violation is answered with IDT 217 when so configured."""
        try:
            return await self._next()
        except RemoteProtocolError as exc:
            if (
                exc.diagnostic != 217
                or self.owner.window_violation != "idt"
                or self.machine.state is not State.WRITING
            ):
                raise
            self.owner.violations.append(str(exc))
            await self._interrupt(217)
            return await self._next_or_interrupt()

    async def _interrupt(self, diagnostic: int) -> None:
        """IDT (F.CANCEL) for the write under way, error end (PI 19 = 4: a restart may
        follow): what it wrote stays secured up to its last acknowledged sync point."""
        self.interrupting = diagnostic
        self.close_files()
        await self._send(Kind.IDT, codec.diagnostic(diagnostic), codec.number(PI.END_CODE, 4))

    async def _on_ack_idt(self, fpdu: Fpdu) -> None:
        self.owner.interruptions.append(self.interrupting)
        self.interrupting = 0

    async def _abort(self, message: str, diagnostic: int) -> None:
        self.owner.violations.append(message)
        with contextlib.suppress(Exception):
            self.writer.write(
                codec.frame(
                    codec.encode(
                        Fpdu(
                            Kind.ABORT,
                            self.machine.peer_id,
                            self.machine.own_id,
                            (codec.diagnostic(diagnostic),),
                        )
                    ),
                    self.owner.nsdu_header,
                )
            )
            await self.writer.drain()

    async def _pre_connection(self) -> bool:
        if self.owner.nsdu_header:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
            if size != 24:
                self.owner.violations.append(f"pre-connection entity of {size} bytes")
                return False
        _, identifier, password = codec.read_pre_connection(await self.reader.readexactly(24))
        account = self.owner.accounts.get(identifier)
        ok = account is not None and account.password in (None, password)
        self.writer.write(
            codec.frame(codec.PRE_ACK if ok else codec.PRE_NAK, self.owner.nsdu_header)
        )
        await self.writer.drain()
        return ok

    async def _handle(self, fpdu: Fpdu) -> None:
        handler = getattr(self, f"_on_{fpdu.kind.name.lower()}", None)
        if handler is None:
            raise Abort(f"{fpdu.kind.name} is not handled by this responder", 311)
        await handler(fpdu)

    # -- connection phase -------------------------------------------------------------------

    async def _on_connect(self, fpdu: Fpdu) -> None:
        owner = self.owner
        self.requester = fpdu.text(PI.REQUESTER) or ""
        account = owner.accounts.get(self.requester)
        for required in (PI.REQUESTER, PI.SERVER, PI.VERSION, PI.ACCESS_TYPE):
            if fpdu.get(required) is None:
                await self._send(Kind.RCONNECT, codec.diagnostic(318))
                return
        if fpdu.number(PI.VERSION) != 2:
            await self._send(Kind.RCONNECT, codec.diagnostic(308))
            return
        password = fpdu.text(PI.ACCESS_CONTROL)
        if (
            account is None
            or fpdu.text(PI.SERVER) != owner.server_id
            or account.password not in (None, password)
        ):
            await self._send(
                Kind.RCONNECT,
                codec.diagnostic(301),
                codec.text(PI.DIAGNOSTIC_MORE, "requester unknown or password refused"),
            )
            return
        interval, window = owner.sync_interval_kb, owner.sync_window
        options = fpdu.get(PI.SYNC_OPTIONS)
        if options is not None:
            asked_interval, asked_window = codec.decode_sync_options(options.value)
            interval, window = min(interval, asked_interval), min(window, asked_window)
        else:
            interval, window = 0, 0
        self.interval = interval * 1024
        self.machine.window = window
        await self._send(
            Kind.ACONNECT, codec.number(PI.VERSION, 2), codec.sync_options(interval, window)
        )

    async def _on_abort(self, fpdu: Fpdu) -> None:
        """The requester gave up: the machine is closed, the connection ends; a write's
        partial file stays, secured up to its last sync point, for a restart."""
        self.owner.aborts.append(fpdu.diagnostic)

    async def _on_release(self, fpdu: Fpdu) -> None:
        await self._send(Kind.RELCONF)

    # -- selection --------------------------------------------------------------------------

    async def _on_create(self, fpdu: Fpdu) -> None:
        name = fpdu.text(PI.FILE_NAME)
        transfer_id = fpdu.number(PI.TRANSFER_ID)
        for required in (PI.FILE_NAME, PI.TRANSFER_ID, PI.PRIORITY, PI.ENTITY_SIZE):
            if fpdu.get(required) is None:
                raise Abort(f"CREATE without PI {int(required)}", 318)
        assert name is not None and transfer_id is not None
        if transfer_id == 0:
            raise Abort("CREATE with transfer id 0", 318)
        self.article_length = fpdu.number(PI.ARTICLE_LENGTH, 0xFFFF) or 0xFFFF
        label = fpdu.text(PI.FILE_LABEL) or f"{name}.{transfer_id}"
        begun = self.owner._begin(
            self.requester, transfer_id, label, fpdu.number(PI.RESTARTED, 0) == 1, self
        )
        if isinstance(begun, int):
            await self._send(Kind.ACK_CREATE, codec.diagnostic(begun))
            return
        self.transfer = begun
        entity = min(self.owner.entity_size, fpdu.number(PI.ENTITY_SIZE) or 0)
        await self._send(
            Kind.ACK_CREATE,
            codec.diagnostic(0),
            codec.number(PI.TRANSFER_ID, transfer_id, 3),
            codec.number(PI.ENTITY_SIZE, entity, 2),
        )

    async def _on_select(self, fpdu: Fpdu) -> None:
        owner = self.owner
        name = fpdu.text(PI.FILE_NAME) or ""
        if fpdu.number(PI.RESTARTED, 0) == 1:
            known = owner._served.get((self.requester, fpdu.number(PI.TRANSFER_ID, 0) or 0))
            if known is None or not known.path.exists():
                await self._send(Kind.ACK_SELECT, codec.diagnostic(214))
                return
            self.served = known
        else:
            path = owner._offer(name, self.requester)
            if path is None:
                await self._send(Kind.ACK_SELECT, codec.diagnostic(205))
                return
            self.served = Served(self.requester, path, (next(owner._ids) % 0xFFFFFF) + 1, {0: 0})
            owner._served[(self.requester, self.served.transfer_id)] = self.served
        path = self.served.path
        entity = min(self.owner.entity_size, fpdu.number(PI.ENTITY_SIZE) or 0)
        await self._send(
            Kind.ACK_SELECT,
            codec.diagnostic(0),
            codec.group(PI.FILE_ID, codec.number(PI.FILE_TYPE, 0), codec.text(PI.FILE_NAME, name)),
            codec.number(PI.TRANSFER_ID, self.served.transfer_id, 3),
            codec.number(PI.ENTITY_SIZE, entity, 2),
            codec.group(PI.LOGICAL_ATTRIBUTES, codec.text(PI.FILE_LABEL, path.name)),
        )

    async def _on_deselect(self, fpdu: Fpdu) -> None:
        self.release()
        self.transfer = None
        self.served = None
        await self._send(Kind.ACK_DESELECT, codec.diagnostic(0))

    async def _on_orf(self, fpdu: Fpdu) -> None:
        await self._send(Kind.ACK_ORF, codec.diagnostic(0))

    async def _on_crf(self, fpdu: Fpdu) -> None:
        self.close_files()
        await self._send(Kind.ACK_CRF, codec.diagnostic(0))


class Connection(Exchange):
    """A connection with its data phases: a write's deposit and a read's serving."""

    # -- write ------------------------------------------------------------------------------

    async def _on_write(self, fpdu: Fpdu) -> None:
        transfer = self.transfer
        if transfer is None:
            raise Abort("WRITE after a SELECT", 311)
        self.out = await asyncio.to_thread(reopen, transfer.partial, transfer.secured)
        self.received = transfer.secured
        self.articles = 0
        if transfer.point:
            self.owner.restarts.append((transfer.transfer_id, transfer.point))
        await self._send(
            Kind.ACK_WRITE, codec.diagnostic(0), codec.number(PI.RESTART_POINT, transfer.point)
        )

    async def _take(self, chunk: bytes) -> None:
        if self.interrupting:
            return  # the rest of a DTF our IDT cut short
        if len(chunk) > self.article_length:
            raise Abort(
                f"article of {len(chunk)} bytes, longer than the {self.article_length} declared",
                311,
            )
        assert self.out is not None and self.transfer is not None
        await asyncio.to_thread(self.out.write, chunk)
        self.received += len(chunk)
        if self.interval and self.received - self.transfer.secured > self.interval:
            raise Abort(
                f"{self.received - self.transfer.secured} bytes since the last sync point, "
                f"over the {self.interval} negotiated",
                222,
            )
        self.owner.received_bytes += len(chunk)
        faults = self.owner.faults
        if faults.idt_after is not None and self.owner.received_bytes >= faults.idt_after:
            faults.idt_after = None
            await self._interrupt(faults.idt_diagnostic)
            return
        drop = self.owner.faults.drop_after
        if drop is not None and self.owner.received_bytes >= drop:
            self.owner.faults.drop_after = None
            self.owner.dropped_at = self.owner.received_bytes
            self.out.flush()
            self.writer.transport.abort()
            raise ConnectionResetError("fault: connection dropped mid-transfer")

    async def _on_dtf(self, fpdu: Fpdu) -> None:
        if self.transfer is None:
            raise Abort("data outside a write", 311)
        for article in codec.articles(fpdu):
            self.articles += 1
            await self._take(article)

    async def _on_dtfda(self, fpdu: Fpdu) -> None:
        self.segment = bytearray(fpdu.data)

    async def _on_dtfma(self, fpdu: Fpdu) -> None:
        self.segment += fpdu.data

    async def _on_dtffa(self, fpdu: Fpdu) -> None:
        self.segment += fpdu.data
        self.articles += 1
        await self._take(bytes(self.segment))
        self.segment = bytearray()

    async def _on_syn(self, fpdu: Fpdu) -> None:
        transfer = self.transfer
        number = fpdu.number(PI.SYNC_NUMBER) or 0
        if transfer is None or self.out is None:
            raise Abort("SYN outside a write", 311)
        await asyncio.to_thread(sync_file, self.out)
        transfer.secured, transfer.point = self.received, number
        if not self.owner.faults.withhold_ack_sync:
            await self._send(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, number))

    async def _on_dtf_end(self, fpdu: Fpdu) -> None:
        if self.out is not None:
            await asyncio.to_thread(sync_file, self.out)

    async def _on_trans_end(self, fpdu: Fpdu) -> None:
        served = self.served
        if served is not None:  # the end of a read: the file is the requester's if all came
            size = served.path.stat().st_size
            if fpdu.number(PI.BYTE_COUNT) != size:
                await self._send(
                    Kind.ACK_TRANS_END,
                    codec.diagnostic(319),
                    codec.text(PI.DIAGNOSTIC_MORE, f"{size} bytes sent"),
                )
                return
            served.path.unlink(missing_ok=True)
            self.owner._served.pop((served.requester, served.transfer_id), None)
            await self._send(Kind.ACK_TRANS_END, codec.diagnostic(0))
            return
        transfer = self.transfer
        assert transfer is not None
        self.close_files()
        counted = fpdu.number(PI.BYTE_COUNT)
        articles = fpdu.number(PI.ARTICLE_COUNT)
        if counted is not None and counted != self.received:
            await self._send(
                Kind.ACK_TRANS_END,
                codec.diagnostic(319),
                codec.text(PI.DIAGNOSTIC_MORE, f"{self.received} bytes received, {counted} said"),
            )
            return
        if articles is not None and articles != self.articles:
            await self._send(Kind.ACK_TRANS_END, codec.diagnostic(319))
            return
        diagnostic = self.owner._finish(transfer)
        if self.owner.faults.drop_at_end:
            self.owner.faults.drop_at_end = False
            self.writer.transport.abort()
            raise ConnectionResetError("fault: connection dropped before ACK(TRANS.END)")
        await self._send(
            Kind.ACK_TRANS_END,
            codec.diagnostic(diagnostic),
            codec.number(PI.BYTE_COUNT, self.received, 8),
        )

    # -- read -------------------------------------------------------------------------------

    async def _on_read(self, fpdu: Fpdu) -> None:
        served = self.served
        if served is None:
            raise Abort("READ after a CREATE", 311)
        point = fpdu.number(PI.RESTART_POINT, 0) or 0
        offset = served.points.get(point)
        if offset is None:
            await self._send(Kind.ACK_READ, codec.diagnostic(214))
            return
        if point:
            self.owner.read_restarts.append((served.transfer_id, point))
        await self._send(Kind.ACK_READ, codec.diagnostic(0))
        entity = self.machine.entity_size - 6
        interval = self.interval
        faults = self.owner.faults
        with await asyncio.to_thread(served.path.open, "rb") as data:
            data.seek(offset)
            at = offset
            while True:
                boundary = (at // interval + 1) * interval if interval else at + entity
                chunk = await asyncio.to_thread(data.read, min(entity, boundary - at))
                if not chunk:
                    break
                while self.machine.window_full:  # data waits for room too, not only SYNs
                    await self._acknowledged()
                await self._send(Kind.DTF, data=chunk)
                at += len(chunk)
                self.owner.sent_bytes += len(chunk)
                if (
                    faults.drop_read_after is not None
                    and self.owner.sent_bytes >= faults.drop_read_after
                ):
                    faults.drop_read_after = None
                    self.owner.dropped_at = self.owner.sent_bytes
                    self.writer.transport.abort()
                    raise ConnectionResetError("fault: connection dropped mid-read")
                if interval and at % interval == 0:
                    await self._sync(served, at)
        await self._send(Kind.DTF_END, codec.diagnostic(0))

    async def _sync(self, served: Served, at: int) -> None:
        """A sync point at file offset ``at``, after waiting for room in the window."""
        while self.machine.window_full:
            await self._acknowledged()
        number = self.machine.last_sync + 1
        served.points[number] = at
        await self._send(Kind.SYN, codec.number(PI.SYNC_NUMBER, number))

    async def _on_ack_syn(self, fpdu: Fpdu) -> None:
        """A read's last sync points acknowledged after its DTF.END (the machine checked the
        numbers)."""

    async def _acknowledged(self) -> None:
        fpdu = await self._next()
        if fpdu is None:
            raise ConnectionResetError("the requester left during a read")
        if fpdu.kind is not Kind.ACK_SYN:
            raise Abort(f"{fpdu.kind.name} while sync points await acknowledgement", 311)
