"""AS2 against django-pyas2 (a real, independent deployment of an AS2 server) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from gateway.cli.commands import main
from gateway.folders import Layout
from gateway.ops.httpserver import serve
from gateway.sandbox import pki
from protocols.as2.sender import As2Sender
from protocols.as2.settings import As2Settings
from protocols.base import Outbound, Receipt
from protocols.certs import KeyPair
from protocols.errors import ConnectError, ReceiptInvalid, RemoteRejected
from tests.as2_config import write_as2_config
from tests.conftest import sample
from tests.e2e.as2_partner import DjangoPyas2
from tests.e2e.sshd import free_port
from tests.gateway.harness import deliver, drop, filed, rows, running, sidecar, until

pytestmark = pytest.mark.e2e

STATUS = b"<?xml version='1.0'?>\n<CPPStatut>a status pushed by the partner</CPPStatut>\n"
# LF and CRLF line ends, trailing blanks, bytes beyond ASCII: they must arrive as they are.
INVOICE = "<?xml version='1.0'?>\n<Invoice>FA-2026-0001 \r\n<Note>Façade</Note></Invoice>\n"


@pytest.fixture
def partner(tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair) -> Iterator[DjangoPyas2]:
    server = DjangoPyas2(tmp_path / "partner", partner_keys, our_keys)
    server.configure()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def outbound(tmp_path: Path, flow_id: str, data: bytes, *, resend: bool = False) -> Outbound:
    path = tmp_path / f"{flow_id}.xml"
    path.write_bytes(data)
    return Outbound(flow_id, path, f"FSO1100A_{flow_id}.xml", "FSO1100A", len(data), "", resend)


async def send(settings: As2Settings, flow: Outbound) -> Receipt:
    async with As2Sender(settings) as sender:
        return await sender.send(flow)


@pytest.mark.parametrize(
    ("encryption", "signature", "compress", "mdn"),
    [
        ("aes_256_cbc", "sha256", False, "sync-signed"),
        ("aes_128_cbc", "sha1", False, "sync-signed"),
        ("aes_192_cbc", "sha384", True, "sync"),
        ("tripledes", "sha512", False, "sync-signed"),
        ("aes_256_cbc", "sha256", False, "none"),
        ("none", "none", False, "sync"),
    ],
)
def test_django_pyas2_receives_intact_and_its_mdn_is_verified(
    tmp_path: Path,
    partner: DjangoPyas2,
    as2_settings: As2Settings,
    encryption: str,
    signature: str,
    compress: bool,
    mdn: str,
) -> None:
    settings = replace(
        as2_settings,
        url=partner.url,
        timeout=30,
        encryption=encryption,
        signature=signature,
        compress=compress,
        mdn=mdn,
    )
    data = INVOICE.encode("utf-8")

    receipt = asyncio.run(send(settings, outbound(tmp_path, "f-0001", data)))

    (stored,) = partner.messages()
    assert stored["message_id"] == "f-0001@raccord.test"
    assert stored["status"] == "S", stored["detailed_status"]
    assert stored["payload"].encode("latin-1") == data
    assert (stored["encrypted"], stored["signed"], stored["compressed"]) == (
        encryption != "none",
        signature != "none",
        compress,
    )
    details = receipt.details
    assert details["message_id"] == "f-0001@raccord.test" and details["http_status"] == 200
    if mdn == "none":
        assert "mdn" not in details
    else:
        assert details["mdn_disposition"].endswith("processed")
        assert details["mdn_signed"] == (mdn == "sync-signed")
        assert details["mdn_mic"] == details["mic"]
        if signature != "none":
            assert base64.b64decode(details["mic"])  # a real digest, confirmed by the partner


class Proxy:
    """An HTTP relay in front of the partner that can lose or bend its answers."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.drop_answers = 0  # answers swallowed (connection closed) after the partner replied
        self.bend: Callable[[bytes], bytes] | None = None
        self.requests = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/pyas2/as2receive"

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with (
            aiohttp.ClientSession() as client,
            client.post(self.upstream, data=body, headers=headers) as answer,
        ):
            payload = await answer.read()
            answer_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP}
            status = answer.status
        if self.drop_answers:
            self.drop_answers -= 1
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("answer dropped on purpose")
        if self.bend is not None:
            payload = self.bend(payload)
        return web.Response(status=status, body=payload, headers=answer_headers)

    async def __aenter__(self) -> Proxy:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/pyas2/as2receive", self._relay)
        self.runner, self.port = await serve(app, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


HOP = {"content-length", "transfer-encoding", "connection", "host", "keep-alive"}


def test_a_resend_after_a_lost_answer_is_a_duplicate_for_django_pyas2(
    tmp_path: Path, partner: DjangoPyas2, as2_settings: As2Settings
) -> None:
    data = INVOICE.encode()

    async def scenario() -> tuple[ConnectError, Receipt, int]:
        async with Proxy(partner.url) as proxy:
            proxy.drop_answers = 1
            settings = replace(as2_settings, url=proxy.url, timeout=30)
            with pytest.raises(ConnectError, match="it may have arrived") as lost:
                await send(settings, outbound(tmp_path, "f-0002", data))
            again = await send(settings, outbound(tmp_path, "f-0002", data, resend=True))
            return lost.value, again, proxy.requests

    lost, again, requests = asyncio.run(scenario())

    assert lost.retryable and requests == 2
    assert again.already_delivered
    assert "duplicate-document" in again.details["mdn_disposition"]
    stored = partner.messages()
    assert [m["message_id"] for m in stored] == [
        "f-0002@raccord.test",
        "f-0002@raccord.test_duplicate",
    ]
    assert stored[0]["status"] == "S" and stored[0]["payload"].encode("latin-1") == data


def test_the_same_message_id_without_a_resend_is_refused_not_hidden(
    tmp_path: Path, partner: DjangoPyas2, as2_settings: As2Settings
) -> None:
    settings = replace(as2_settings, url=partner.url, timeout=30)
    asyncio.run(send(settings, outbound(tmp_path, "f-0003", INVOICE.encode())))

    with pytest.raises(RemoteRejected, match="already has a message with Message-ID f-0003@"):
        asyncio.run(send(settings, outbound(tmp_path, "f-0003", INVOICE.encode())))


def _change_mic(payload: bytes) -> bytes:
    head, mark, rest = payload.partition(b"Received-content-MIC: ")
    assert mark, "the MDN carries a MIC"
    flipped = bytes([rest[0] ^ 0x01]) + rest[1:]  # one character of the digest
    return head + mark + flipped


@pytest.mark.parametrize(
    ("mdn", "expected"),
    [
        ("sync-signed", "does not verify with the partner's certificate"),
        ("sync", "MIC mismatch"),
    ],
)
def test_a_tampered_mdn_fails_the_flow(
    tmp_path: Path, partner: DjangoPyas2, as2_settings: As2Settings, mdn: str, expected: str
) -> None:
    async def scenario() -> None:
        async with Proxy(partner.url) as proxy:
            proxy.bend = _change_mic
            settings = replace(as2_settings, url=proxy.url, timeout=30, mdn=mdn)
            await send(settings, outbound(tmp_path, "f-0004", INVOICE.encode()))

    with pytest.raises(ReceiptInvalid, match=expected) as failed:
        asyncio.run(scenario())

    assert not failed.value.retryable
    assert partner.messages()[0]["status"] == "S"  # it did arrive; only the proof is bad


def test_an_http_400_after_storing_is_refused_with_a_warning(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair, as2_settings: As2Settings
) -> None:
    trap = DjangoPyas2(tmp_path / "trap", partner_keys, our_keys)
    trap.configure()
    trap.start(PARTNER_DATA_DIR_TRAP="1")
    try:
        settings = replace(as2_settings, url=trap.url, timeout=30)
        with pytest.raises(RemoteRejected, match=r"HTTP 400.*may still have stored it"):
            asyncio.run(send(settings, outbound(tmp_path, "f-0005", INVOICE.encode())))
        assert [m["message_id"] for m in trap.messages()] == ["f-0005@raccord.test"]
    finally:
        trap.stop()


@pytest.mark.parametrize(
    ("encryption", "signature", "mdn_mode", "mdn_sign"),
    [
        ("aes_256_cbc", "sha256", "SYNC", "sha256"),
        ("tripledes_192_cbc", "sha1", "SYNC", None),
        ("aes_128_cbc", "sha512", "ASYNC", "sha512"),
    ],
)
def test_django_pyas2_sends_to_the_gateway_and_accepts_its_mdn(
    tmp_path: Path,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    encryption: str,
    signature: str,
    mdn_mode: str,
    mdn_sign: str | None,
) -> None:
    port = free_port()
    server = DjangoPyas2(tmp_path / "partner", partner_keys, our_keys)
    config = write_as2_config(
        tmp_path,
        our_keys,
        partner_keys,
        url=server.url,
        receiver_port=port,
        as2_extra=f'signature = "{signature}"',
    )
    server.configure(
        target_url=f"http://127.0.0.1:{port}/as2",
        encryption=encryption,
        signature=signature,
        mdn_mode=mdn_mode,
        mdn_sign=mdn_sign,
    )
    document = server.folder / "FEN1200A_0001.xml"
    document.write_bytes(STATUS)
    server.start()

    async def scenario() -> None:
        async with running(config):
            await asyncio.to_thread(server.send, document)

            def confirmed() -> bool:
                return [m["status"] for m in server.messages()] == ["S"]

            await until(confirmed, timeout=30, what="django-pyas2 to accept our MDN")

    try:
        with capture_logs() as logs:
            asyncio.run(scenario())
    finally:
        server.stop()

    (message,) = server.messages()
    assert message["direction"] == "OUT" and message["status"] == "S", message
    (stored,) = Layout(config.gateway.data_dir).inbox("qualif-as2").iterdir()
    assert stored.read_bytes() == STATUS
    # Read by the streaming reader, not left to pyas2lib.
    (received,) = [e for e in logs if e["event"] == "as2.received"]
    assert received["reader"] == "stream" and received["fallback"] is None, received


def test_the_gateway_delivers_over_as2_and_files_the_mdn_in_the_receipt(
    tmp_path: Path, partner: DjangoPyas2, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    config = write_as2_config(tmp_path, our_keys, partner_keys, url=partner.url)
    invoice = sample("ubl-invoice.xml")

    (row,) = deliver(config, {"facture.xml": invoice})

    assert row.state == "sent", row.message
    receipt = sidecar(row, ".receipt.json")
    answer = receipt["partner_answer"]
    assert receipt["protocol"] == "as2"
    assert answer["message_id"] == f"{row.flow_id}@raccord.test"
    assert answer["mdn_disposition"].endswith("processed") and answer["mdn_signed"]
    assert answer["mdn_mic"] == answer["mic"] and "Received-content-MIC" in answer["mdn"]
    (stored,) = partner.messages()
    assert stored["message_id"] == answer["message_id"] and stored["status"] == "S"
    assert stored["payload"].encode("latin-1") == invoice


@pytest.mark.parametrize("mdn", ["async-signed", "async"])
def test_django_pyas2_posts_its_mdn_later_and_the_waiting_flow_is_sent(
    tmp_path: Path, partner: DjangoPyas2, our_keys: KeyPair, partner_keys: KeyPair, mdn: str
) -> None:
    port = free_port()
    config = write_as2_config(
        tmp_path,
        our_keys,
        partner_keys,
        url=partner.url,
        receiver_port=port,
        as2_extra=f'mdn = "{mdn}"\nmdn_url = "http://127.0.0.1:{port}/as2"',
    )
    invoice = sample("ubl-invoice.xml")

    async def scenario() -> None:
        async with running(config):
            drop(config, "facture.xml", invoice)

            def waiting() -> bool:
                found = rows(config)
                return bool(found) and found[0].state == "awaiting_receipt"

            await until(waiting, timeout=30, what="the flow awaiting its MDN")
            await asyncio.to_thread(partner.post_async_mdns)
            await until(filed(config, 1), timeout=30, what="the flow filed")

    asyncio.run(scenario())
    (row,) = rows(config)
    assert row.state == "sent", row.message
    answer = sidecar(row, ".receipt.json")["partner_answer"]
    assert answer["mdn_disposition"].endswith("processed")
    assert answer["mdn_mic"] == answer["mic"] and answer["mdn_signed"] == (mdn == "async-signed")
    (stored,) = partner.messages()
    assert stored["message_id"] == answer["message_id"] and stored["status"] == "S"
    assert stored["mdn_status"] == "S" and stored["payload"].encode("latin-1") == invoice


def test_check_connect_reaches_the_partner_and_reports_expired_certificates(
    tmp_path: Path,
    partner: DjangoPyas2,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_as2_config(tmp_path, our_keys, partner_keys, url=partner.url)
    assert main(["check", "--connect", "--config", str(config.path)]) == 0
    reached = capsys.readouterr().out
    assert f"connect: ok — {partner.url} answered HTTP 200; MYCOMPANY → CTAIFEP" in reached

    stale = pki.issue("CTAIFEP AS2", valid_from=datetime.now(UTC) - timedelta(days=90), days=30)
    expired = write_as2_config(tmp_path / "stale", our_keys, stale, url=partner.url)
    assert main(["check", "--connect", "--config", str(expired.path)]) == 1
    refused = capsys.readouterr()
    # Proved without the network: no login is tried, the certificate's own file is named.
    assert "connect:" not in refused.out and "not usable:" in refused.out
    assert f"in {tmp_path / 'stale' / 'keys' / 'partner.p7b'} expired on" in refused.err
