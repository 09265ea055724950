"""``[as2_receiver]``: the HTTP(S) endpoint where partners push AS2 messages (return flows).

For each POST: the body (bounded by ``max_file_size``) is streamed to a scratch file and read by
:func:`protocols.as2.receiver.open_file` in a worker thread, which writes a good payload into
``inbox/<connection>/`` without holding it in memory; then the message is *claimed* in the
journal (its sender and Message-ID, a row only one node can insert), and only the claimer
stores it: the payload is fsynced, journaled as a return flow and applied
(:func:`gateway.returns.pipeline.receive`), the claim marked stored — and only then is the MDN
sent.

Several nodes may run this receiver behind a load balancer, over one journal. A message already
stored (same sender, same Message-ID), on this node or another, is answered
"duplicate-document" and stored nothing twice; one stored by another node while this one read
it gets the positive MDN it built, without a second store. A message another node is storing
right now is answered 503 (the partner resends). A claim never marked stored (its node died in
between) is taken over by a resend after :data:`CLAIM_PATIENCE`; one node alone drops its dead
run's claims at start. Unknown partners, bad signatures, undecryptable bodies get the negative
MDN pyas2lib builds (or an HTTP error when no MDN was asked), an ``as2.refused`` event, and
nothing stored; the endpoint keeps serving.

An asynchronous MDN answering one of our messages is handed to the dispatcher
(:meth:`gateway.flow.dispatcher.Dispatcher.settle`), which files the waiting flow; the partner is
told "received" only once that decision is journaled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from aiohttp import web

from gateway import logs
from gateway.config import As2ReceiverSettings, Config
from gateway.folders import Layout
from gateway.journal import Call, Journal, JournalDB, journal_target
from gateway.ops.alerts import Alerter
from gateway.ops.httpserver import serve
from gateway.returns import pipeline as returns
from protocols.as2 import message
from protocols.as2.receiver import (
    PARTIAL,
    SNIFF,
    Inbound,
    Party,
    as2_name,
    header_fields,
    looks_like_mdn,
    mdn_reference,
    open_file,
)

log = logs.get()

#: Room for MIME, signature and encryption around the largest payload accepted.
ENVELOPE = 1_000_000
#: Bytes of a request body written to its scratch file at a time.
CHUNK = 1 << 20
#: The largest MDN read (an MDN is a few kilobytes).
MDN_LIMIT = 1 << 20
#: Attempts to post an asynchronous MDN (1 s, 2 s, 4 s… apart).
ASYNC_MDN_ATTEMPTS = 5
#: Seconds after which a message claimed but not stored counts as abandoned (its node died):
#: a resend then claims and stores it. Storing a payload takes far less.
CLAIM_PATIENCE = 120.0

#: Hands an MDN (its Message-ID reference, the raw request) to the flow awaiting it; returns
#: what became of the flow (see :meth:`gateway.flow.dispatcher.Dispatcher.settle`).
Settle = Callable[[str, bytes], Awaitable[str]]

#: What the partner posting an MDN is told, by what became of the flow: (HTTP status, text).
_MDN_ANSWERS = {
    "sent": (200, "MDN received\n"),
    "failed": (200, "MDN received\n"),
    "settled": (200, "MDN received (already known)\n"),
    "unknown": (400, "no message of ours with that Message-ID awaits an MDN\n"),
    "foreign": (403, "this MDN does not come from the partner the message was sent to\n"),
    "busy": (503, "the message is being worked on; post the MDN again later\n"),
    "error": (500, "the MDN could not be processed; post it again later\n"),
}


class As2Receiver:
    """The endpoint, serving every ``protocol = "as2"`` connection of the configuration."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        *,
        settle: Settle | None = None,
        alerts: Alerter | None = None,
    ) -> None:
        assert config.as2_receiver is not None
        self.settle = settle
        self.alerts = alerts or Alerter(None)
        self.settings: As2ReceiverSettings = config.as2_receiver
        self.layout = Layout(config.gateway.data_dir)
        self.journal = journal
        self.reconfigure(config)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = self.settings.port

    def reconfigure(self, config: Config) -> None:
        """Serve the partners of a reloaded configuration (same address and TLS settings:
        otherwise the daemon starts a new receiver). Messages being read finish as begun."""
        self.config = config
        self.parties = {
            (conn.settings.as2_from, conn.settings.as2_to): Party(conn.name, conn.settings)
            for conn in config.connections
            if conn.protocol == "as2"
        }
        self._resubmit = returns.resubmitting(config)

    async def start(self) -> None:
        await asyncio.to_thread(self._clean)
        if self.config.journal.url is None:  # alone: unfinished claims are a dead run's
            await self.journal.call(Call(JournalDB.drop_as2_claims))
        limit = self.config.gateway.max_file_size * 2 + ENVELOPE
        app = web.Application(client_max_size=limit)
        app.router.add_post("/{tail:.*}", self._handle)
        app.router.add_get("/{tail:.*}", self._hello)
        context = None
        if self.settings.tls_certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.settings.tls_certificate), str(self.settings.tls_key))
        self._runner, self.port = await serve(app, self.settings.host, self.settings.port, context)
        log.info(
            "as2.listening",
            host=self.settings.host,
            port=self.port,
            tls=context is not None,
            partners=sorted(f"{a} <- {b}" for a, b in self.parties),
        )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()  # the partner resends, gets "duplicate" and its MDN then
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hello(self, request: web.Request) -> web.Response:
        return web.Response(text="raccord AS2 receiver: POST AS2 messages here\n")

    async def _handle(self, request: web.Request) -> web.Response:
        headers = header_fields(request.headers.items())
        as2_from = as2_name(headers.get("as2-from", ""))
        message_id = headers.get("message-id", "").strip().strip("<>")
        if not as2_from or not message_id:
            log.warning("as2.refused", peer=request.remote, reason="not_as2")
            return web.Response(
                status=400, text="not an AS2 message: AS2-From and Message-ID are required\n"
            )
        scratch = self.layout.data_dir / "spool"
        body = await asyncio.to_thread(_scratch_file, scratch)
        try:
            if not await self._spool(request, body):
                log.error(
                    "as2.refused",
                    peer=request.remote,
                    reason="too_large",
                    as2_from=as2_from,
                    message_id=message_id,
                    action="the body exceeds twice max_file_size; ask the partner to split it",
                )
                return web.Response(status=413, text="refused: the body is too large\n")
            start = await asyncio.to_thread(_head, body, SNIFF)
            if looks_like_mdn(headers.get("content-type", ""), start):
                whole = await asyncio.to_thread(_head, body, MDN_LIMIT + 1)
                if len(whole) > MDN_LIMIT:
                    return web.Response(status=413, text="refused: too large for an MDN\n")
                raw = message.raw_http(headers, whole)
                return await self._mdn(request, raw, as2_from, message_id)
            return await self._message(headers, body, as2_from, message_id, scratch)
        finally:
            await asyncio.to_thread(body.close)

    async def _spool(self, request: web.Request, body: BinaryIO) -> bool:
        """Write the request body to ``body``; False if it is over the limit."""
        limit = self.config.gateway.max_file_size * 2 + ENVELOPE
        if request.content_length is not None and request.content_length > limit:
            return False
        size = 0
        pending: list[bytes] = []
        waiting = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > limit:
                return False
            pending.append(chunk)
            waiting += len(chunk)
            if waiting >= CHUNK:
                await asyncio.to_thread(body.write, b"".join(pending))
                pending, waiting = [], 0
        await asyncio.to_thread(body.write, b"".join(pending))
        return True

    async def _message(
        self,
        headers: dict[str, str],
        body: BinaryIO,
        as2_from: str,
        message_id: str,
        scratch: Path,
    ) -> web.Response:
        known = await self.journal.call(Call(JournalDB.as2_message, as2_from, message_id))
        stored = known is not None and known["return_id"] is not None
        inbound = await asyncio.to_thread(
            open_file,
            headers,
            body,
            self._find,
            lambda _mid, _sender: stored,
            payload_dir=self.layout.inbox,
            scratch=scratch,
        )
        refusal = None
        if inbound.processed:
            try:
                refusal = await self._keep(inbound)
            finally:
                if inbound.payload_file is not None:  # kept: moved away
                    await asyncio.to_thread(
                        functools.partial(inbound.payload_file.unlink, missing_ok=True)
                    )
        elif inbound.duplicate:
            log.info(
                "as2.duplicate",
                connection=inbound.connection,
                as2_from=as2_from,
                message_id=message_id,
                return_id=known["return_id"] if known else None,
            )
        else:
            log.warning(
                "as2.refused",
                connection=inbound.connection,
                as2_from=as2_from,
                as2_to=inbound.as2_to,
                message_id=message_id,
                reason=inbound.detail or "error",
                error=inbound.error,
                reader="pyas2lib" if inbound.fallback else "headers",
                fallback=inbound.fallback,
            )
        if isinstance(refusal, web.Response):
            return refusal
        return self._answer(inbound, refusal)

    async def _mdn(
        self, request: web.Request, raw: bytes, as2_from: str, message_id: str
    ) -> web.Response:
        """An asynchronous MDN for one of our messages: settle the flow that awaits it."""
        reference = await asyncio.to_thread(mdn_reference, raw)
        if reference is None or self.settle is None:
            log.warning(
                "as2.refused",
                peer=request.remote,
                reason="not_mdn" if reference is None else "no_dispatcher",
                as2_from=as2_from,
                message_id=message_id,
            )
            return web.Response(status=400, text="not an MDN this endpoint can take\n")
        outcome = await self.settle(reference, raw)
        log.info(
            "as2.mdn_received",
            as2_from=as2_from,
            message_id=message_id,
            original_message_id=reference,
            outcome=outcome,
        )
        status, text = _MDN_ANSWERS.get(outcome, (500, f"{outcome}\n"))
        return web.Response(status=status, text=text)

    def _clean(self) -> None:
        """Remove payloads a stop or crash left half-received (the partner sends them again)."""
        for party in self.parties.values():
            for partial in self.layout.inbox(party.connection).glob(f".*{PARTIAL}"):
                partial.unlink(missing_ok=True)

    def _find(self, as2_to: str, as2_from: str) -> Party | None:
        return self.parties.get((as2_to, as2_from))

    async def _keep(self, inbound: Inbound) -> str | web.Response | None:
        """Claim a good message, then make its payload durable and journal it; a refusal
        message if it cannot be, or the answer when another node has it."""
        assert inbound.payload_file is not None and inbound.connection is not None
        limit = self.config.gateway.max_file_size
        size = (await asyncio.to_thread(inbound.payload_file.stat)).st_size
        if size > limit:
            log.error(
                "as2.refused",
                connection=inbound.connection,
                message_id=inbound.message_id,
                reason="too_large",
                size=size,
                action=f"not stored: over max_file_size ({limit} bytes)",
            )
            return "payload over max_file_size"
        sender, message_id, connection = inbound.as2_from, inbound.message_id, inbound.connection
        assert sender is not None and message_id is not None and connection is not None
        stale = datetime.now(UTC) - timedelta(seconds=CLAIM_PATIENCE)
        claim = await self.journal.call(
            Call(
                JournalDB.claim_as2_message,
                sender,
                message_id,
                connection,
                stale.isoformat(timespec="milliseconds"),
            )
        )
        if claim != "claimed":
            log.info(
                "as2.duplicate",
                connection=connection,
                as2_from=sender,
                message_id=message_id,
                claim=claim,
            )
            if claim == "stored":  # by another node while this one read it: the same answer
                return None
            return web.Response(
                status=503,
                text="this message is being stored by another node; send it again later\n",
            )
        try:
            outcome = await asyncio.to_thread(self._store, inbound)
        except BaseException:
            with contextlib.suppress(Exception):  # else the claim goes stale by itself
                await self.journal.call(Call(JournalDB.drop_as2_claim, sender, message_id))
            raise
        # The claim marked stored last: a crash before leaves it unfinished, and the resent
        # message is stored then (its bytes are recognised: applied once).
        await self.journal.call(
            Call(JournalDB.record_as2_message, sender, message_id, connection, outcome.return_id)
        )
        log.info(
            "as2.received",
            connection=inbound.connection,
            as2_from=inbound.as2_from,
            message_id=inbound.message_id,
            file=inbound.filename,
            size=size,
            return_id=outcome.return_id,
            reader="pyas2lib" if inbound.fallback else "stream",
            fallback=inbound.fallback,
        )
        self.alerts.returned(connection, inbound.filename or message_id, outcome)
        return None

    def _store(self, inbound: Inbound) -> returns.Outcome:
        assert inbound.payload_file is not None and inbound.connection is not None
        name = inbound.filename or f"{inbound.message_id}.as2"
        with inbound.payload_file.open("rb+") as payload:
            os.fsync(payload.fileno())
        return returns.receive_download(
            self.layout,
            inbound.connection,
            inbound.payload_file,
            name=name,
            resubmit=self._resubmit,
            journal=journal_target(self.config, self.layout),
            node=self.config.gateway.node_name,
        )

    def _answer(self, inbound: Inbound, refusal: str | None) -> web.Response:
        if refusal is not None:
            return web.Response(status=413, text=f"refused: {refusal}\n")
        if inbound.mdn_headers is None or inbound.mdn_body is None:
            if inbound.processed or inbound.duplicate:
                return web.Response(text="AS2 message received\n")
            return web.Response(status=400, text=f"refused: {inbound.error or inbound.status}\n")
        if inbound.mdn_url is not None:
            task = asyncio.create_task(self._post_mdn(inbound, inbound.mdn_url))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return web.Response(text="AS2 message received; the MDN follows asynchronously\n")
        headers: dict[str, Any] = dict(inbound.mdn_headers)
        return web.Response(status=200, body=inbound.mdn_body, headers=headers)

    async def _post_mdn(self, inbound: Inbound, url: str) -> None:
        """Deliver an asynchronous MDN, a few times with backoff if the partner is away."""
        assert inbound.mdn_headers is not None and inbound.mdn_body is not None
        delay = 1.0
        for attempt in range(1, ASYNC_MDN_ATTEMPTS + 1):
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client,
                    client.post(url, data=inbound.mdn_body, headers=inbound.mdn_headers) as answer,
                ):
                    await answer.read()
                    if answer.status < 300:
                        log.info(
                            "as2.mdn_sent",
                            connection=inbound.connection,
                            message_id=inbound.message_id,
                            url=url,
                            status=inbound.status,
                        )
                        return
                    problem = f"HTTP {answer.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = str(exc) or type(exc).__name__
            if attempt < ASYNC_MDN_ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
        log.error(
            "as2.mdn_failed",
            connection=inbound.connection,
            message_id=inbound.message_id,
            url=url,
            error=problem,
            action="the message is stored; the partner will resend it and get its MDN then",
        )


def _head(body: BinaryIO, size: int) -> bytes:
    """The first ``size`` bytes of ``body``."""
    body.seek(0)
    return body.read(size)


def _scratch_file(folder: Path) -> BinaryIO:
    """An anonymous file in ``folder`` (gone when closed, or if the daemon dies)."""
    return tempfile.TemporaryFile(dir=folder)
