"""The AS2 sender's answers to everything but a good MDN: certificates, network, HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web

from gateway.ops.httpserver import serve
from gateway.sandbox import pki
from protocols.as2.sender import As2Sender
from protocols.as2.settings import As2Settings
from protocols.base import Outbound
from protocols.errors import (
    AuthenticationError,
    CertificateError,
    ConnectError,
    ReceiptInvalid,
    RemoteBusy,
    RemoteRejected,
    TransferError,
)
from tests.e2e.sshd import free_port


def flow(tmp_path: Path) -> Outbound:
    path = tmp_path / "invoice.xml"
    path.write_bytes(b"<Invoice/>")
    return Outbound("f-1", path, "FSO1100A_f-1.xml", "FSO1100A", 10, "")


async def _send(settings: As2Settings, outbound: Outbound) -> None:
    async with As2Sender(settings) as sender:
        await sender.send(outbound)


def answered_by(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    settings: As2Settings,
    outbound: Outbound,
) -> TransferError:
    """Send ``outbound`` to a loopback HTTP server answering with ``handler``; the error."""

    async def scenario() -> TransferError:
        app = web.Application()
        app.router.add_post("/", handler)
        runner, port = await serve(app, "127.0.0.1", 0)
        try:
            await _send(replace(settings, url=f"http://127.0.0.1:{port}/"), outbound)
        except TransferError as exc:
            return exc
        finally:
            await runner.cleanup()
        raise AssertionError("the send succeeded")

    return asyncio.run(scenario())


def test_an_expired_certificate_blocks_the_send_and_says_which(
    tmp_path: Path, as2_settings: As2Settings
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=400)
    expired_partner = pki.issue("CTAIFEP AS2", valid_from=long_ago, days=30)
    expired_ours = pki.issue("MYCOMPANY AS2", valid_from=long_ago, days=30)

    with pytest.raises(CertificateError, match=r"partner certificate partner\.crt: .*expired on"):
        asyncio.run(
            _send(
                replace(as2_settings, partner_chain=(expired_partner.certificate,)), flow(tmp_path)
            )
        )
    with pytest.raises(CertificateError, match=r"our AS2 certificate .* renew it"):
        asyncio.run(_send(replace(as2_settings, keys=expired_ours), flow(tmp_path)))


def test_an_unreachable_partner_is_retryable(tmp_path: Path, as2_settings: As2Settings) -> None:
    closed = replace(as2_settings, url=f"http://127.0.0.1:{free_port()}/", connect_timeout=2)

    with pytest.raises(ConnectError, match="cannot connect") as failed:
        asyncio.run(_send(closed, flow(tmp_path)))

    assert failed.value.retryable


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (503, RemoteBusy, True),
        (500, RemoteBusy, True),
        (429, RemoteBusy, True),
        (401, AuthenticationError, False),
        (404, RemoteRejected, False),
    ],
)
def test_http_errors_are_mapped(
    tmp_path: Path, as2_settings: As2Settings, status: int, kind: type, retryable: bool
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, text="go away")

    error = answered_by(handler, as2_settings, flow(tmp_path))

    assert type(error) is kind and error.retryable is retryable
    assert f"HTTP {status}: go away" in str(error)


def test_a_partner_answering_garbage_gets_no_credit(
    tmp_path: Path, as2_settings: As2Settings
) -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="<html>thanks!</html>", content_type="text/html")

    error = answered_by(handler, as2_settings, flow(tmp_path))

    assert isinstance(error, ReceiptInvalid) and not error.retryable
    assert "is not an MDN" in str(error)
