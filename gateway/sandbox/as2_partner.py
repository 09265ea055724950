"""The partner simulator's AS2 side: a Chorus Pro stand-in that speaks AS2 on loopback.

It receives AS2 messages (as the partner, e.g. ``CTAIFEP``), writes each payload into the
desk's deposit folder — where :class:`gateway.sandbox.chorus.Desk` answers it with a CPP Statut in
the return folder — and pushes every return flow found there to the gateway's
``[as2_receiver]`` as an AS2 message of its own, removing it once the gateway's MDN confirms it.
It uses raccord's own AS2 code on the partner's side (its settings are the connection's,
mirrored), so it is for demos and tests, never a second opinion on raccord's AS2: that is what
the django-pyas2 and ``openssl cms`` tests are for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Self

from aiohttp import web
from cryptography import x509

from flows import naming
from gateway.ops.httpserver import serve
from protocols.as2 import message
from protocols.as2.receiver import Party, open_message
from protocols.as2.sender import As2Sender
from protocols.as2.settings import As2Settings
from protocols.base import Closing, Outbound
from protocols.certs import KeyPair
from protocols.errors import TransferError


def partner_settings(
    keys: KeyPair,
    gateway_certificate: x509.Certificate,
    *,
    as2_from: str,
    as2_to: str,
    url: str,
) -> As2Settings:
    """The simulated partner's side of an AS2 connection: it is ``as2_from`` with ``keys``, the
    gateway is ``as2_to`` with ``gateway_certificate``, reached at ``url`` (its receiver). What
    it asks — sha256, AES-256, a synchronous signed MDN — is what Chorus Pro asks."""
    return As2Settings(
        url=url,
        as2_from=as2_from,
        as2_to=as2_to,
        keys=keys,
        partner_chain=(gateway_certificate,),
        partner_trust=(),
        key_path=Path("simulator.key"),
        partner_certificate_path=Path("gateway.crt"),
        message_id_domain="simulator.invalid",
    )


class As2Simulator(Closing):
    """``settings`` is the partner's view: ``as2_from`` the partner, ``as2_to`` the gateway,
    ``url`` the gateway's receiver (where return flows are pushed)."""

    def __init__(
        self,
        deposits: Path,
        returns: Path,
        settings: As2Settings,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float = 0.2,
    ) -> None:
        self.deposits = deposits
        self.returns = returns
        self.settings = settings
        self.host = host
        self.port = port
        self.interval = interval
        self.received: list[str] = []  # Message-IDs stored, in order
        self.pushed: list[str] = []  # return flows the gateway confirmed
        self._runner: web.AppRunner | None = None
        self._us = Party("simulator", settings)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def __aenter__(self) -> Self:
        self.deposits.mkdir(parents=True, exist_ok=True)
        self.returns.mkdir(parents=True, exist_ok=True)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._receive)
        self._runner, self.port = await serve(app, self.host, self.port)
        return self

    async def aclose(self) -> None:
        """Stop serving (leaving ``async with`` calls this)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _party(self, as2_to: str, as2_from: str) -> Party | None:
        s = self.settings
        return self._us if (as2_to, as2_from) == (s.as2_from, s.as2_to) else None

    async def _receive(self, request: web.Request) -> web.Response:
        raw = message.raw_http(dict(request.headers.items()), await request.read())
        inbound = await asyncio.to_thread(
            open_message, raw, self._party, lambda mid, _sender: mid in self.received
        )
        if inbound.processed and inbound.payload is not None and inbound.message_id:
            name = naming.safe(inbound.filename or "") or f"{inbound.message_id}.bin"
            temp = self.deposits / f".{name}.tmp"
            await asyncio.to_thread(temp.write_bytes, inbound.payload)
            await asyncio.to_thread(temp.rename, self.deposits / name)  # never half-written
            self.received.append(inbound.message_id)
        if inbound.mdn_headers is None or inbound.mdn_body is None:
            return web.Response(status=200 if inbound.processed else 400)
        return web.Response(body=inbound.mdn_body, headers=inbound.mdn_headers)

    def _waiting(self) -> list[Path]:
        return [
            self.returns / name
            for name in sorted(os.listdir(self.returns))
            if not name.startswith(".") and (self.returns / name).is_file()
        ]

    async def push_returns(self, stopping: asyncio.Event) -> None:
        """Push each return flow to the gateway until ``stopping``; a refused or failed push
        is tried again at the next round (the same Message-ID: a repeat is recognised)."""
        async with As2Sender(self.settings) as sender:
            while not stopping.is_set():
                for path in await asyncio.to_thread(self._waiting):
                    flow_id = "sim-" + naming.safe(path.stem)
                    size = (await asyncio.to_thread(path.stat)).st_size
                    outbound = Outbound(flow_id, path, path.name, "FEN1200A", size, "", resend=True)
                    with contextlib.suppress(TransferError):
                        await sender.send(outbound)
                        await asyncio.to_thread(path.unlink)
                        self.pushed.append(path.name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.interval)
