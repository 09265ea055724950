"""The native PeSIT E sender (``protocol = "pesit"``): raccord as the requester.

Each flow is one write: CONNECT (once per session; sessions are kept and reused) → CREATE →
ORF → WRITE → DTF… with a SYN every ``sync_interval`` KB → DTF.END → TRANS.END → CRF →
DESELECT. The PI 13 transfer id is derived from the flow id, so it is the same at every
attempt and across daemon restarts:

* a connection lost after data began is reconnected at once (up to ``restarts`` times) and the
  transfer resumed with PI 15 = 1 from the sync point the server secured: bytes before it are
  not sent again;
* a resend after an unknown outcome (``flow.resend``) first asks to resume too; a server that
  knows nothing of the transfer (diagnostic 214) gets it anew, and one that already holds the
  file under its name (diagnostic 204) proves it was delivered — raccord relies on the partner
  refusing to overwrite a name, as it never reuses one;
* but a 214 after the partner had acknowledged data of this transfer (an ACK(SYN), a restart
  point) or after the TRANS.END went is no proof of anything: the partner may have finished
  the transfer, and a partner that overwrites would store the file twice. The flow is then
  "possibly delivered": filed in ``error/`` with what to check, never sent again blindly.
  That the partner acknowledged data survives a daemon restart: the first time it does (or
  before the TRANS.END goes, at the latest) a marker is written and fsynced beside the flow's
  file (:func:`protocols.base.outcome_marker`, ``.<flow_id>.unsure.json`` in the spool), and a
  resend finding it treats a 214 as above. A 204 proving the delivery removes it; otherwise it
  stays (a crash after ACK(TRANS.END) but before the gateway recorded the delivery must still
  find it) until the gateway files the flow, which removes it.

Once the partner's ACK(TRANS.END) is in, the delivery is done: nothing after it (a late
ACK(SYN), a failed CRF) reopens it, and no ABORT is sent for it. A partner's IDT is answered
with ACK(IDT) and its diagnostic named in the error.

With ``return_files`` set, the sender also pulls return flows (a :class:`ReturnQueue`): every
``poll_interval`` it SELECTs each name (PI 12) in turn and READs what the server offers, with
sync points; a connection lost mid-read is reconnected and the read resumed (PI 15 = 1, READ
PI 18 = the last sync point raccord secured). The TRANS.END that lets the server forget the
file is sent only once the gateway has stored it.

What peers do differently is in the settings (docs/pesit.md): the entity header, the pre-connection,
what PI 12 / PI 37 / PI 99 carry, entity size, sync interval and window, article format.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import ssl
import time
from dataclasses import replace
from pathlib import Path

from protocols import certs
from protocols.base import (
    Capabilities,
    Closing,
    Outbound,
    ProtocolPlugin,
    Receipt,
    RemoteFile,
    outcome_marker,
)
from protocols.errors import (
    CertificateError,
    ConnectError,
    FileTooLarge,
    ProtocolError,
    TransferError,
)
from protocols.pesit.codec import Kind
from protocols.pesit.diagnostics import (
    BUSY,
    DIAGNOSTICS,
    broken_error,
    connecting,
    describe,
    diagnostic_error,
    interruption_error,
    possibly_delivered,
    refusal_error,
)
from protocols.pesit.session import (
    DATA_CODES,
    Broken,
    FileAttributes,
    Interrupted,
    Peer,
    Reading,
    Refused,
    Session,
    TooLarge,
)
from protocols.pesit.session import connect as open_session
from protocols.pesit.settings import (
    TEMPLATE_FIELDS,
    PesitSettings,
    name_fields,
    parse_settings,
    transfer_id,
)

__all__ = [
    "DIAGNOSTICS",
    "PLUGIN",
    "TEMPLATE_FIELDS",
    "PesitSender",
    "PesitSettings",
    "describe",
    "diagnostic_error",
    "name_fields",
    "parse_settings",
    "transfer_id",
]


class PesitSender(Closing):
    protocol = "pesit"
    capabilities = Capabilities(detects_resend=True, receives_returns=True)

    def __init__(self, settings: PesitSettings) -> None:
        self._settings = settings
        self.poll_interval = settings.poll_interval
        if not settings.return_files:  # nothing to poll on this connection
            self.capabilities = Capabilities(detects_resend=True)
        password = settings.password.value if settings.password else None
        self._peer = Peer(
            host=settings.host,
            port=settings.port,
            requester=settings.requester,
            server=settings.server,
            password=password,
            tls=None,  # made on first use (files read off the event loop)
            server_hostname=settings.server_hostname,
            nsdu_header=settings.nsdu_header,
            pre_connection=settings.pre_connection,
            sync_interval_kb=settings.sync_interval,
            sync_window=settings.sync_window,
            entity_size=settings.entity_size,
            connect_timeout=settings.connect_timeout,
            timeout=settings.timeout,
        )
        self._idle: list[Session] = []
        self._slots = asyncio.Semaphore(settings.max_parallel)
        #: a read awaiting acknowledgement: its session, progress and progress file
        self._held: tuple[Session, Reading, Path] | None = None
        self._next_name = 0
        self._ids = 0
        #: transfers (PI 13) an attempt left possibly delivered: the error it ended with
        self._unsure: dict[int, TransferError] = {}
        self.where = f"pesit://{settings.requester}@{settings.host}:{settings.port}"

    async def aclose(self) -> None:
        if self._held is not None:
            await self._held[0].abort(312)
            self._held = None
        idle, self._idle = self._idle, []
        for session in idle:
            await session.release()

    async def _session(self) -> tuple[Session, bool]:
        """A connected session and whether it is new (an idle one may have been dropped)."""
        while self._idle:
            session = self._idle.pop()
            if session.reusable:
                return session, False
            await session.close()
        self._ids = self._ids % 255 + 1
        if self._settings.tls and self._peer.tls is None:
            self._peer = replace(self._peer, tls=await asyncio.to_thread(self._tls_context))
        with connecting(self.where):
            return await open_session(self._peer, self._ids), True

    def _tls_context(self) -> ssl.SSLContext:
        s = self._settings
        try:
            return certs.tls_client_context(s.ca_bundle, s.client_certificate, s.client_key)
        except certs.CertificateProblem as exc:  # the files changed since the check
            raise CertificateError(f"{self.where}: {exc}") from None

    async def _again(
        self, session: Session, exc: Broken, fresh: bool, restarts: int, where: str
    ) -> int:
        """After a broken connection, whether to try again on a new one: the restarts used,
        this one counted (the same number for a kept session the partner had closed before
        anything was sent). Raises the error when the restarts are spent."""
        await session.abort(exc.diagnostic or (311 if exc.garbled else 317))
        if not exc.started and not fresh:
            return restarts
        if exc.started and restarts < self._settings.restarts:
            return restarts + 1
        raise broken_error(exc, where) from None

    async def _keep(self, session: Session) -> None:
        if session.reusable:
            self._idle.append(session)
        else:
            await session.abort(312)  # a request refused half-way: leave the session

    def attributes(self, flow: Outbound) -> FileAttributes:
        s = self._settings
        fields = name_fields(flow)
        name, label, message = (t.format(**fields) for t in (s.file_name, s.file_label, s.message))
        for what, value, limit in (
            ("file_name", name, 76),
            ("file_label", label, 80),
            ("message", message, 254),
        ):
            if len(value) > limit or not value.isascii():
                raise ProtocolError(
                    f"{what} {value!r} for {flow.remote_name}: PeSIT allows {limit} ASCII "
                    "characters; shorten the template or the remote_name"
                )
        if not name:
            raise ProtocolError("file_name is empty for this flow: PI 12 is mandatory")
        return FileAttributes(
            name=name,
            label=label or None,
            message=message or None,
            data_code=DATA_CODES[s.data_code],
            article_format=0x80 if s.article_format == "variable" else 0x00,
            article_length=s.article_length,
            multi_article=s.multi_article,
        )

    async def send(self, flow: Outbound) -> Receipt:
        attributes = self.attributes(flow)
        ident = transfer_id(flow.flow_id)
        restart = flow.resend
        where = f"{self.where} {flow.remote_name}"
        marker = outcome_marker(flow.path, flow.flow_id)
        # an earlier attempt lost the connection after the partner had acknowledged data: in
        # this process (its error kept), or before a restart (its marker on disk)
        unsure = self._unsure.pop(ident, None) if restart else None
        marked = restart and await asyncio.to_thread(marker.exists)
        if marked and unsure is None:
            unsure = ConnectError(
                f"{where}: an earlier attempt (before raccord restarted) ended after the "
                f"partner had acknowledged data of transfer {ident}"
            )

        def acknowledged() -> None:
            nonlocal marked
            if not marked:
                _save_marker(marker, flow.flow_id, ident)
                marked = True

        restarts = waits = 0
        async with self._slots:
            while True:
                session, fresh = await self._session()
                try:
                    written = await session.write(
                        flow.path,
                        flow.size,
                        attributes,
                        ident,
                        restart=restart,
                        on_acknowledged=acknowledged,
                    )
                except Refused as exc:
                    await self._keep(session)
                    if exc.what is Kind.CREATE and exc.diagnostic == 214 and restart:
                        if unsure is not None:
                            receipt = await self._probe(session, flow, attributes, ident, unsure)
                            await asyncio.to_thread(marker.unlink, missing_ok=True)
                            return receipt
                        restart = False  # the partner knows nothing of it: send it anew
                        continue
                    if (
                        exc.what is Kind.CREATE
                        and exc.diagnostic in BUSY
                        and restart
                        and waits < self._settings.restarts
                    ):
                        # the partner may still be ending the broken connection's side of
                        # this transfer: give it a moment, then ask again
                        waits += 1
                        await asyncio.sleep(0.5 * 2**waits)
                        continue
                    if (
                        exc.what is Kind.CREATE
                        and exc.diagnostic == 204
                        and (flow.resend or restarts)
                    ):
                        # an earlier attempt (of this send, or before) completed the delivery
                        await asyncio.to_thread(marker.unlink, missing_ok=True)
                        return self._receipt(flow, attributes, ident, already=True)
                    raise refusal_error(exc, where) from None
                except Interrupted as exc:
                    await self._keep(session)
                    raise interruption_error(exc, where) from None
                except Broken as exc:
                    if exc.acknowledged:
                        unsure = broken_error(exc, where, resuming=False)
                    try:
                        used, restarts = (
                            restarts,
                            await self._again(session, exc, fresh, restarts, where),
                        )
                    except TransferError:
                        if unsure is not None:
                            self._remember_unsure(ident, unsure)
                        raise
                    finally:  # the session is closed by now, whatever happens here
                        if exc.acknowledged:
                            # the reader may have taken an ACK(SYN) the session had not seen
                            await asyncio.to_thread(acknowledged)
                    restart = restart or restarts > used  # resume what was sent
                    continue
                except BaseException:
                    await session.abort(312)
                    raise
                await self._keep(session)
                return self._receipt(
                    flow,
                    attributes,
                    ident,
                    restart_point=written.restart_point,
                    resumed_at=written.resumed_at,
                    sync_points=written.sync_points,
                    reconnects=restarts,
                )

    async def _probe(
        self,
        session: Session,
        flow: Outbound,
        attributes: FileAttributes,
        ident: int,
        unsure: TransferError,
    ) -> Receipt:
        """After a 214 that proves nothing (the partner had acknowledged data): a partner
        that holds the name and refuses to overwrite it answers a new CREATE with 204, which
        proves the delivery; any other answer leaves the flow possibly delivered (raised).
        No data is sent either way."""
        try:
            await session.would_create(flow.size, attributes, ident)
        except Refused as exc:
            await self._keep(session)
            if exc.what is Kind.CREATE and exc.diagnostic == 204:
                return self._receipt(flow, attributes, ident, already=True)
            raise possibly_delivered(unsure, flow, attributes) from None
        except (Broken, Interrupted):
            await session.close()
            raise possibly_delivered(unsure, flow, attributes) from None
        await self._keep(session)
        raise possibly_delivered(unsure, flow, attributes)

    def _remember_unsure(self, ident: int, error: TransferError) -> None:
        """Keep, for the next attempt (the dispatcher's, or the operator's ``raccord retry``),
        that ``ident`` may have been delivered (bounded: a flow that is never attempted again
        must not hold memory for ever)."""
        if len(self._unsure) >= 1000:
            del self._unsure[next(iter(self._unsure))]
        self._unsure[ident] = error

    def _receipt(
        self,
        flow: Outbound,
        attributes: FileAttributes,
        ident: int,
        *,
        already: bool = False,
        **details: int,
    ) -> Receipt:
        s = self._settings
        facts: dict[str, object] = {
            "host": s.host,
            "port": s.port,
            "server": s.server,
            "file_name": attributes.name,
            "file_label": attributes.label,
            "transfer_id": ident,
            **details,
        }
        if already:
            facts["found_on_resend"] = "the partner already holds the file (diagnostic 204)"
        return Receipt(self.protocol, flow.remote_name, facts, already_delivered=already)

    async def check(self) -> str:
        session, _ = await self._session()
        interval, window = session.sync_interval // 1024, session.window
        await session.release()
        s = self._settings
        return (
            f"{self.where} → {s.server} (PeSIT E{', TLS' if s.tls else ''}, "
            f"sync points every {interval} KB, window {window})"
        )

    # -- return flows (ReturnQueue) ---------------------------------------------------------

    async def next_return(self, local: Path, limit: int) -> RemoteFile | None:
        if self._held is not None:  # the gateway never stored the last one
            await self.release_return(RemoteFile("", 0, 0))
        side = _progress_file(local)
        found = await asyncio.to_thread(_load_progress, side, local)
        if found is not None:  # a read a stop or crash interrupted: resume it first
            name, progress = found
            held = await self._read(name, local, limit, progress)
            if held is not None:
                return held
        names = self._settings.return_files
        for turn in range(len(names)):  # a different name first at each call: none starves
            name = names[(self._next_name + turn) % len(names)]
            held = await self._read(name, local, limit)
            if held is not None:
                self._next_name = (self._next_name + turn + 1) % len(names)
                return held
        return None

    async def _read(
        self, name: str, local: Path, limit: int, progress: Reading | None = None
    ) -> RemoteFile | None:
        """Read the next file offered as ``name`` (or resume ``progress``), resuming a broken
        read up to ``restarts`` times; the session stays held, the transfer not yet ended.
        What each sync point secures is kept beside ``local``, for a later process."""
        progress = progress or Reading()
        side = _progress_file(local)

        def secured(reading: Reading) -> None:
            _save_progress(side, name, reading)

        restarts = 0
        where = f"{self.where} reading {name}"
        async with self._slots:
            while True:
                session, fresh = await self._session()
                try:
                    if not await session.read(
                        name, local, progress, limit=limit, on_secured=secured
                    ):
                        await self._keep(session)
                        await asyncio.to_thread(side.unlink, missing_ok=True)
                        return None
                except Refused as exc:
                    await self._keep(session)
                    if progress.transfer_id and exc.diagnostic in (205, 214):
                        progress = Reading()  # the server cannot resume it: from the start
                        await asyncio.to_thread(side.unlink, missing_ok=True)
                        continue
                    raise refusal_error(exc, where) from None
                except Interrupted as exc:
                    await self._keep(session)
                    raise interruption_error(exc, where) from None
                except TooLarge as exc:
                    raise FileTooLarge(
                        f"{where}: {exc} (max_file_size); it stays with the partner: take it by "
                        "hand and raccord import it, or raise max_file_size"
                    ) from None
                except Broken as exc:  # progress names the transfer: it is resumed
                    restarts = await self._again(session, exc, fresh, restarts, where)
                    continue
                except BaseException:
                    await session.abort(312)
                    raise
                self._held = (session, progress, side)
                remote_name = progress.label or f"{progress.name}.{progress.transfer_id}"
                return RemoteFile(remote_name, progress.received, int(time.time()))

    async def acknowledge_return(self, remote: RemoteFile) -> str:
        assert self._held is not None, "no read held"
        (session, progress, side), self._held = self._held, None
        await asyncio.to_thread(side.unlink, missing_ok=True)
        try:
            await session.end_read(progress)
        except Refused as exc:
            await self._keep(session)
            raise refusal_error(exc, f"{self.where} acknowledging {remote.name}") from None
        except Broken as exc:
            await session.abort(exc.diagnostic or 317)
            raise broken_error(exc, f"{self.where} acknowledging {remote.name}") from None
        await self._keep(session)
        return "acknowledged"

    async def release_return(self, remote: RemoteFile) -> None:
        if self._held is not None:
            session, _, side = self._held
            self._held = None
            await asyncio.to_thread(side.unlink, missing_ok=True)
            await session.abort(312)  # the transfer is not ended: the partner keeps the file


def _save_marker(marker: Path, flow_id: str, ident: int) -> None:
    """Keep, durably, that the partner acknowledged data of transfer ``ident`` (written whole,
    fsynced, renamed into place, the folder fsynced)."""
    temp = marker.with_name(marker.name + ".tmp")
    facts = {"flow_id": flow_id, "transfer_id": ident, "partner_acknowledged_data": True}
    with temp.open("w", encoding="utf-8") as out:
        json.dump(facts, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, marker)
    folder = os.open(marker.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _progress_file(local: Path) -> Path:
    return local.with_name(local.name + ".pesit.json")


def _save_progress(side: Path, name: str, reading: Reading) -> None:
    """Keep what a resumed read needs (written whole, fsynced, then renamed into place)."""
    temp = side.with_name(side.name + ".tmp")
    facts = {"select": name, **dataclasses.asdict(reading)}
    with temp.open("w", encoding="utf-8") as out:
        json.dump(facts, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, side)


def _load_progress(side: Path, local: Path) -> tuple[str, Reading] | None:
    """The interrupted read kept in ``side``, if ``local`` still holds its secured bytes."""
    try:
        facts = json.loads(side.read_text(encoding="utf-8"))
        name = str(facts.pop("select"))
        reading = Reading(**facts)
        held = local.stat().st_size
    except (OSError, ValueError, TypeError, KeyError):
        side.unlink(missing_ok=True)
        return None
    if not reading.transfer_id or held < reading.secured:
        side.unlink(missing_ok=True)
        return None
    return name, reading


PLUGIN = ProtocolPlugin(
    name="pesit",
    parse_settings=parse_settings,
    create_sender=PesitSender,
    secret_fields=frozenset({"password"}),
    capabilities=PesitSender.capabilities,
)
