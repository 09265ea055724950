"""AS2 against django-pyas2 (a real, independent deployment of an AS2 server) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway import pki
from protocols.as2.sender import As2Sender
from protocols.as2.settings import As2Settings
from protocols.base import Outbound
from protocols.certs import KeyPair
from tests.e2e.as2_partner import DjangoPyas2

pytestmark = pytest.mark.e2e

# LF and CRLF line ends, trailing blanks, bytes beyond ASCII: they must arrive as they are.
INVOICE = "<?xml version='1.0'?>\n<Invoice>FA-2026-0001 \r\n<Note>Façade</Note></Invoice>\n"


@pytest.fixture(scope="module")
def our_keys() -> KeyPair:
    return pki.issue("MYCOMPANY AS2")


@pytest.fixture(scope="module")
def partner_keys() -> KeyPair:
    return pki.issue("CTAIFEP AS2")


@pytest.fixture
def partner(tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair) -> Iterator[DjangoPyas2]:
    server = DjangoPyas2(tmp_path / "partner", partner_keys, our_keys)
    server.configure()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def settings_for(server: DjangoPyas2, our_keys: KeyPair, partner_keys: KeyPair) -> As2Settings:
    return As2Settings(
        url=server.url,
        as2_from="MYCOMPANY",
        as2_to="CTAIFEP",
        keys=our_keys,
        partner_chain=(partner_keys.certificate,),
        partner_trust=(),
        key_path=Path("our.key"),
        partner_certificate_path=Path("partner.crt"),
        message_id_domain="raccord.test",
        timeout=30,
    )


def outbound(tmp_path: Path, flow_id: str, data: bytes, *, resend: bool = False) -> Outbound:
    path = tmp_path / f"{flow_id}.xml"
    path.write_bytes(data)
    return Outbound(flow_id, path, f"FSO1100A_{flow_id}.xml", "FSO1100A", len(data), "", resend)


async def send(settings: As2Settings, flow: Outbound):  # type: ignore[no-untyped-def]
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
    our_keys,
    partner_keys,
    encryption,
    signature,
    compress,
    mdn,
) -> None:  # type: ignore[no-untyped-def]
    settings = replace(
        settings_for(partner, our_keys, partner_keys),
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
