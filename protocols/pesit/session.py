"""The PeSIT requester's sequences, on a :class:`~protocols.pesit.link.Link`.

:class:`Session` knows the PeSIT sequences but nothing of raccord's flows: :meth:`open` runs
CONNECT, :meth:`Session.write` sends a file (with sync points and restart),
:meth:`Session.read` receives one. Every wait for an answer is bounded by ``timeout`` (the
spec's Tp watchdog). A refusal from the peer raises :class:`Refused` with its diagnostic; a
peer that breaks the protocol or goes quiet ends the session (ABORT when possible) and raises
:class:`Broken`; a transfer the peer interrupts (IDT) is answered with ACK(IDT) and raises
:class:`Interrupted`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from protocols.pesit import codec
from protocols.pesit.codec import PI, Fpdu, Kind
from protocols.pesit.link import Broken, Interrupted, Link, Peer, Refused

__all__ = [
    "DATA_CODES",
    "Broken",
    "FileAttributes",
    "Interrupted",
    "Peer",
    "Reading",
    "Refused",
    "Session",
    "TooLarge",
    "Written",
    "connect",
    "sync_file",
]

VERSION_E = 2
ACCESS_WRITE, ACCESS_READ, ACCESS_MIXED = 0, 1, 2
DATA_CODES = {"ascii": 0, "ebcdic": 1, "binary": 2}
KB = 1024
READ_SIZE = 1 << 20  # file bytes read at a time


@dataclass(frozen=True)
class FileAttributes:
    """What CREATE says of the file."""

    name: str  # PI 12
    label: str | None = None  # PI 37
    message: str | None = None  # PI 99
    data_code: int = DATA_CODES["binary"]
    article_format: int = 0x80  # PI 31: 0x00 fixed, 0x80 variable
    article_length: int = 0  # PI 32; 0: the entity size less the DTF header
    multi_article: bool = False
    priority: int = 1


class TooLarge(Exception):
    """A file being read is larger than the caller accepts."""


@dataclass
class Reading:
    """A read in progress, as far as it is secured: what a restart needs."""

    transfer_id: int = 0  # PI 13 the server gave (0: not selected yet)
    name: str = ""  # PI 12 as the server answered it
    label: str | None = None  # PI 37, when the server gives one
    point: int = 0  # last sync point acknowledged
    secured: int = 0  # bytes on disk at that point
    received: int = 0  # bytes written so far


@dataclass(frozen=True)
class Written:
    restart_point: int  # sync point the server resumed from (0: from the start)
    resumed_at: int  # byte offset sent from
    sync_points: int  # the last sync point sent


class Session(Link):
    """One connection to a PeSIT server, as the requester: CONNECT, then files written
    and read. Use :func:`connect`."""

    async def open(self) -> None:
        peer = self.peer
        if peer.pre_connection:
            await self._pre_connect()
        self._pump = asyncio.ensure_future(self._read_loop())
        await self._send(
            Kind.CONNECT,
            codec.text(PI.REQUESTER, peer.requester),
            codec.text(PI.SERVER, peer.server),
            codec.text(PI.ACCESS_CONTROL, peer.password) if peer.password else None,
            codec.number(PI.VERSION, VERSION_E),
            codec.sync_options(peer.sync_interval_kb, peer.sync_window),
            codec.number(PI.ACCESS_TYPE, ACCESS_MIXED),
        )
        answer = await self._next("ACONNECT")
        if answer.kind is Kind.RCONNECT:
            raise Refused(Kind.CONNECT, answer.diagnostic, answer.text(PI.DIAGNOSTIC_MORE))
        if answer.kind is not Kind.ACONNECT:
            raise Broken(f"{answer.kind.name} in answer to CONNECT", garbled=True)
        interval, window = 0, 0
        options = answer.get(PI.SYNC_OPTIONS)
        if options is not None:
            interval, window = codec.decode_sync_options(options.value)
            if interval == 0xFFFF:  # "undefined": keep ours
                interval = peer.sync_interval_kb
            if interval > peer.sync_interval_kb or window > peer.sync_window:
                raise Broken(
                    f"the server raised the sync options to {interval} KB / window {window} "
                    f"(proposed {peer.sync_interval_kb} KB / {peer.sync_window}); it may only "
                    "lower them",
                    garbled=True,
                )
        self.sync_interval = interval * KB
        self.window = self.machine.window = window

    async def _pre_connect(self) -> None:
        peer = self.peer
        entity = codec.pre_connection(peer.requester, peer.password or "")
        self._writer.write(codec.frame(entity, self.peer.nsdu_header))
        size = 4 + (2 if peer.nsdu_header else 0)
        try:
            answer = await asyncio.wait_for(self._reader.readexactly(size), peer.timeout)
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            raise Broken(f"no pre-connection answer: {exc or 'timed out'}") from None
        if answer[-4:] == codec.PRE_NAK:
            raise Refused(Kind.CONNECT, 301, "pre-connection refused (NAK0)")
        if answer[-4:] != codec.PRE_ACK:
            raise Broken(f"pre-connection answered {answer.hex(' ')}, not ACK0", garbled=True)

    # -- write ------------------------------------------------------------------------------

    async def write(
        self,
        source: Path,
        size: int,
        attributes: FileAttributes,
        transfer_id: int,
        *,
        restart: bool,
        on_acknowledged: Callable[[], None] | None = None,
    ) -> Written:
        """Send ``source`` (``size`` bytes); ``restart``: ask to resume transfer
        ``transfer_id`` (PI 15 = 1) from where the server secured it.

        ``on_acknowledged`` is called (on a thread) once, as soon as the session sees that the
        partner holds data of this transfer (a restart point, an ACK(SYN)), and in any case
        before the TRANS.END is sent: from then on the partner may store the file.

        Once the server's ACK(TRANS.END) is in, the file is delivered, whatever else is
        queued or fails afterwards: closing the file (CRF, DESELECT) is housekeeping, and a
        failure there only drops the connection, without an ABORT.

        Raises:
            Refused: a step was refused (the session is still usable).
            Interrupted: the server interrupted the transfer (IDT), answered with ACK(IDT).
            Broken: the connection is lost; ``started`` says whether data had been sent,
                ``acknowledged`` whether the server had acknowledged any of it.
        """
        entity = self.peer.entity_size
        accepted = await self._create(size, attributes, transfer_id, restart=restart)
        entity = min(entity, accepted.number(PI.ENTITY_SIZE, entity) or entity)
        article = min(attributes.article_length or entity - 6, 0xFFFF)
        await self._request(Kind.ORF, Kind.ACK_ORF)
        started = await self._request(Kind.WRITE, Kind.ACK_WRITE)
        point = started.number(PI.RESTART_POINT, 0) or 0
        offset = point * self.sync_interval
        if point and (not restart or not self.sync_interval or offset > size):
            raise Broken(
                f"the server asked to restart from sync point {point}, which is not one of "
                "this transfer's",
                diagnostic=214,
                garbled=True,
            )
        self._acked = point
        ending = marked = False

        async def acknowledged() -> None:
            nonlocal marked
            if not marked and on_acknowledged is not None:
                await asyncio.to_thread(on_acknowledged)
            marked = True

        try:  # from here on, part or all of the file may be at the partner
            if point:
                await acknowledged()
            articles = await self._data(
                source, offset, size, entity, article, attributes, acknowledged
            )
            await self._send(Kind.DTF_END, codec.diagnostic(0))
            # every sync point acknowledged (the data secured) before the transfer ends
            while self.machine.window and self._acked < self.machine.last_sync:
                await self._heard(await self._next("ACK(SYN) of the last sync points"))
            await acknowledged()
            ending = True
            await self._request(
                Kind.TRANS_END,
                Kind.ACK_TRANS_END,
                codec.number(PI.BYTE_COUNT, size, 8),
                # articles are counted for a whole transfer only (a restart's is ambiguous)
                None if offset else codec.number(PI.ARTICLE_COUNT, articles, 4),
            )
        except Broken as exc:
            exc.started = True
            exc.acknowledged = ending or max(self._acked, self.machine.last_acked) > 0
            raise
        except Interrupted:
            await self._close_file()
            raise
        # the partner has the file: closing it is housekeeping, not the delivery
        await self._close_file()
        return Written(point, offset, self.machine.last_sync)

    async def _create(
        self, size: int, attributes: FileAttributes, transfer_id: int, *, restart: bool
    ) -> Fpdu:
        """CREATE → its accepted ACK(CREATE). Raises :class:`Refused` with its diagnostic."""
        entity = self.peer.entity_size
        await self._send(
            Kind.CREATE,
            codec.group(
                PI.FILE_ID,
                codec.number(PI.FILE_TYPE, 0),
                codec.text(PI.FILE_NAME, attributes.name),
            ),
            codec.number(PI.TRANSFER_ID, transfer_id, 3),
            codec.number(PI.RESTARTED, 1 if restart else 0),
            codec.number(PI.DATA_CODE, attributes.data_code),
            codec.number(PI.PRIORITY, attributes.priority),
            codec.number(PI.ENTITY_SIZE, entity, 2),
            codec.group(
                PI.LOGICAL_ATTRIBUTES,
                codec.raw(PI.ARTICLE_FORMAT, bytes([attributes.article_format])),
                codec.number(PI.ARTICLE_LENGTH, attributes.article_length or entity - 6, 2),
                codec.text(PI.FILE_LABEL, attributes.label) if attributes.label else None,
            ),
            codec.group(
                PI.PHYSICAL_ATTRIBUTES,
                codec.number(PI.RESERVATION_UNIT, 0),
                codec.number(PI.RESERVATION_MAX, -(-size // KB) or 1),
            ),
            codec.text(PI.FREE_MESSAGE, attributes.message) if attributes.message else None,
        )
        return await self._answer(Kind.CREATE, Kind.ACK_CREATE)

    async def would_create(self, size: int, attributes: FileAttributes, transfer_id: int) -> None:
        """Ask whether the server would take a new file under this name, sending no data:
        CREATE (not a restart), then DESELECT at once. A server that holds the name and
        refuses to overwrite it answers 204 (:class:`Refused`); a server that overwrites
        accepts, which proves nothing either way.

        Raises:
            Refused: the CREATE was refused (the session is still usable).
            Broken: the connection is lost.
        """
        await self._create(size, attributes, transfer_id, restart=False)
        await self._request(Kind.DESELECT, Kind.ACK_DESELECT, codec.diagnostic(0))

    async def _data(
        self,
        source: Path,
        offset: int,
        size: int,
        entity: int,
        article: int,
        attributes: FileAttributes,
        acknowledged: Callable[[], Awaitable[None]],
    ) -> int:
        """DTFs from ``offset``, a SYN every ``sync_interval`` bytes of the file (so sync point
        n always sits at byte n × interval: the restart offset follows from the point);
        ``acknowledged`` is awaited at a sync point once the partner acknowledged one."""
        interval = self.sync_interval
        articles = 0
        with await asyncio.to_thread(source.open, "rb") as data:
            data.seek(offset)
            async for unit in _units(data, offset, size, interval, article, entity, attributes):
                await self._room()
                if unit is None:  # a sync point is due
                    if self._acked or self.machine.last_acked:
                        await acknowledged()
                    number = self.machine.last_sync + 1
                    await self._send(Kind.SYN, codec.number(PI.SYNC_NUMBER, number))
                    continue
                kind, chunks = unit
                if kind is Kind.DTF and attributes.multi_article and len(chunks) > 1:
                    await self._send(Kind.DTF, data=codec.multi_article(chunks), count=len(chunks))
                else:
                    await self._send(kind, data=chunks[0])
                articles += len(chunks) if kind is Kind.DTF else int(kind is Kind.DTFFA)
        return articles

    async def _room(self) -> None:
        """Take what the server sent so far, then wait while the sync window is full: with
        ``window`` sync points unacknowledged the data sender stops, data as well as SYNs,
        until an ACK(SYN) comes (a strict server interrupts a transfer that goes on)."""
        while (fpdu := self._queued()) is not None:
            await self._heard(fpdu)
        while self.machine.window_full:
            await self._heard(await self._next("ACK(SYN)"))

    # -- read -------------------------------------------------------------------------------

    async def read(
        self,
        name: str,
        target: Path,
        progress: Reading,
        *,
        limit: int | None = None,
        on_secured: Callable[[Reading], None] | None = None,
    ) -> bool:
        """Receive the file the server offers as ``name`` (PI 12) into ``target``, up to its
        DTF.END, fsynced; False when the server has none (diagnostic 205). The transfer is
        left open: :meth:`end_read` acknowledges it (the server may then delete the file),
        :meth:`abort` leaves it with the server.

        ``progress`` records what is secured (the last acknowledged sync point and the bytes
        on disk there); a ``progress`` that names a transfer restarts it (PI 15 = 1, READ PI 18
        = that point), appending to ``target`` from the secured bytes. ``on_secured`` is called
        (on a worker thread) at each sync point, once its bytes are on disk and before its
        ACK(SYN): what it keeps of ``progress`` lets a later process resume the read.

        Raises:
            Refused: refused for another reason (for a restart, 205 or 214: start anew).
            Interrupted: the server interrupted the read (IDT), answered with ACK(IDT).
            TooLarge: the file grew over ``limit`` bytes (the session is aborted).
            Broken: the connection is lost; ``progress`` says how far the file is secured.
        """
        restart = progress.transfer_id != 0
        try:
            selected = await self._request(
                Kind.SELECT,
                Kind.ACK_SELECT,
                codec.group(
                    PI.FILE_ID, codec.number(PI.FILE_TYPE, 0), codec.text(PI.FILE_NAME, name)
                ),
                codec.number(PI.TRANSFER_ID, progress.transfer_id, 3),
                codec.raw(PI.REQUESTED_ATTRIBUTES, b"\xe0"),
                codec.number(PI.RESTARTED, int(restart)),
                codec.number(PI.PRIORITY, 1),
                codec.number(PI.ENTITY_SIZE, self.peer.entity_size, 2),
            )
        except Refused as exc:
            if exc.diagnostic == 205 and not restart:
                return False
            raise
        progress.transfer_id = selected.number(PI.TRANSFER_ID, 0) or progress.transfer_id
        progress.name = selected.text(PI.FILE_NAME) or name
        progress.label = selected.text(PI.FILE_LABEL) or progress.label
        await self._request(Kind.ORF, Kind.ACK_ORF)
        await self._request(
            Kind.READ, Kind.ACK_READ, codec.number(PI.RESTART_POINT, progress.point)
        )
        with await asyncio.to_thread(_open_at, target, progress.secured, restart) as out:
            progress.received = progress.secured
            try:
                await self._receive(out, progress, limit, on_secured)
            except Broken as exc:
                exc.started = True
                raise
            except Interrupted:
                await self._close_file()
                raise
        return True

    async def _receive(
        self,
        out: BinaryIO,
        progress: Reading,
        limit: int | None,
        on_secured: Callable[[Reading], None] | None,
    ) -> None:
        while True:
            fpdu = await self._next("DTF")
            if fpdu.kind is Kind.DTF_END:
                if fpdu.diagnostic:
                    raise Refused(Kind.READ, fpdu.diagnostic)
                await asyncio.to_thread(sync_file, out)
                return
            if fpdu.kind is Kind.SYN:  # secure the bytes so far, then say so
                await asyncio.to_thread(sync_file, out)
                # this SYN's own number: the machine may have read further ahead already
                progress.point = fpdu.number(PI.SYNC_NUMBER, 0) or 0
                progress.secured = progress.received
                if on_secured is not None:
                    await asyncio.to_thread(on_secured, replace(progress))
                await self._send(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, progress.point))
                continue
            if fpdu.kind is Kind.IDT:
                await self._interrupted(fpdu)
            if fpdu.kind not in (Kind.DTF, Kind.DTFDA, Kind.DTFMA, Kind.DTFFA):
                raise Broken(f"{fpdu.kind.name} during the data transfer", garbled=True)
            data = b"".join(codec.articles(fpdu)) if fpdu.kind is Kind.DTF else fpdu.data
            progress.received += len(data)
            if limit is not None and progress.received > limit:
                await self.abort(213)
                raise TooLarge(f"{progress.label or progress.name} is over {limit} bytes")
            await asyncio.to_thread(out.write, data)

    async def end_read(self, progress: Reading) -> None:
        """Acknowledge a read whose data is stored: TRANS.END (the byte count) → CRF →
        DESELECT. After the ACK(TRANS.END), the file is the requester's.

        Raises:
            Refused: the server does not agree (a count mismatch); the file stays with it.
            Broken: the connection is lost before the ACK(TRANS.END).
        """
        await self._request(
            Kind.TRANS_END, Kind.ACK_TRANS_END, codec.number(PI.BYTE_COUNT, progress.received, 8)
        )
        try:  # housekeeping: the transfer is over
            await self._request(Kind.CRF, Kind.ACK_CRF, codec.diagnostic(0))
            await self._request(Kind.DESELECT, Kind.ACK_DESELECT, codec.diagnostic(0))
        except (Broken, Refused):
            await self.abort(312)


def _open_at(target: Path, secured: int, restart: bool) -> BinaryIO:
    """``target`` open for writing at byte ``secured``: anything after it (a restart's bytes
    past its point) comes again."""
    out = target.open("r+b" if restart else "wb")
    out.truncate(secured)
    out.seek(secured)
    return out


def sync_file(out: BinaryIO) -> None:
    """Flush ``out`` to disk (run it on a worker thread)."""
    out.flush()
    os.fsync(out.fileno())


async def _units(
    data: BinaryIO,
    offset: int,
    size: int,
    interval: int,
    article: int,
    entity: int,
    attributes: FileAttributes,
) -> AsyncIterator[tuple[Kind, list[bytes]] | None]:
    """What to send, in order: ``(DTF kind, articles)`` or ``None`` for a sync point.

    Articles never straddle a sync boundary; an article longer than the entity allows is cut
    into DTFDA, DTFMA…, DTFFA; with ``multi_article`` several articles share one DTF."""
    room = entity - 6
    read_size = article * max(1, READ_SIZE // article)
    at = offset
    while at < size:
        boundary = (at // interval + 1) * interval if interval else size
        span = min(size, boundary, at + read_size) - at
        block = await asyncio.to_thread(data.read, span)
        if len(block) != span:
            raise Broken(f"the file shrank while being sent ({len(block)} of {span} bytes)")
        pieces = [block[i : i + article] for i in range(0, len(block), article)]
        if article > room:
            for piece in pieces:
                segments = [piece[i : i + room] for i in range(0, len(piece), room)]
                if len(segments) == 1:
                    yield Kind.DTF, segments
                    continue
                yield Kind.DTFDA, [segments[0]]
                for middle in segments[1:-1]:
                    yield Kind.DTFMA, [middle]
                yield Kind.DTFFA, [segments[-1]]
        elif attributes.multi_article:
            batch: list[bytes] = []
            used = 0
            for piece in pieces:
                if batch and used + 2 + len(piece) > room:
                    yield Kind.DTF, batch
                    batch, used = [], 0
                batch.append(piece)
                used += 2 + len(piece)
            if batch:
                yield Kind.DTF, batch
        else:
            for piece in pieces:
                yield Kind.DTF, [piece]
        at += span
        if interval and at % interval == 0 and at < size:
            yield None


async def connect(peer: Peer, connection_id: int = 1) -> Session:
    """Open a connection and run CONNECT (and the pre-connection if configured).

    Raises:
        OSError, ssl.SSLError, TimeoutError: the server cannot be reached.
        Refused: the server refused the connection (RCONNECT).
        Broken: the server answered something else.
    """
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            peer.host,
            peer.port,
            ssl=peer.tls,
            server_hostname=(peer.server_hostname or peer.host) if peer.tls else None,
        ),
        peer.connect_timeout,
    )
    session = Session(peer, reader, writer, connection_id)
    try:
        await session.open()
    except BaseException:
        await session.close()
        raise
    return session
