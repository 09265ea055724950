"""AS2 against the npm package libas2 (Node.js), a third implementation: it shares neither
pyas2lib nor OpenSSL's MIME with raccord, spells header names its own way (``As2-From``,
``As2-Version``, ``Message-Id``) and wraps keys with RSAES-OAEP/SHA-256. Both directions:
libas2 sends to raccord's receiver and verifies raccord's MDN; raccord sends to a libas2
endpoint, which stores the payload and answers an MDN raccord verifies."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.folders import Layout
from gateway.sandbox import pki
from protocols.as2.sender import As2Sender
from protocols.as2.settings import As2Settings
from protocols.base import Outbound, Receipt
from protocols.certs import KeyPair
from protocols.errors import ReceiptInvalid, RemoteRejected
from tests.as2_config import write_as2_config
from tests.conftest import sample
from tests.e2e import libas2_peer
from tests.e2e.sshd import free_port
from tests.gateway.harness import running

pytestmark = pytest.mark.e2e

# LF and CRLF line ends, trailing blanks, bytes beyond ASCII: they must arrive as they are.
STATUS = "<?xml version='1.0'?>\n<CPPStatut>FA-2026-0001 \r\n<Note>Façade</Note></CPPStatut>\n"


def key_files(folder: Path, name: str, keys: KeyPair) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "key": str(pki.write_key(keys, folder / f"{name}.key")),
        "cert": str(pki.write_certificates([keys.certificate], folder / f"{name}.pem", "pem")),
    }


@pytest.fixture(scope="module")
def libas2() -> Path:
    return libas2_peer.ensure_libas2()


@pytest.mark.parametrize(
    ("encryption", "mdn_signing", "content_type"),
    [
        ("aes256-CBC", "sha-256", "application/xml"),
        ("aes128-CBC", False, "application/octet-stream"),
        ("des-EDE3-CBC", "sha-256", "application/octet-stream"),
    ],
)
def test_libas2_sends_to_the_receiver_and_verifies_its_mdn(
    tmp_path: Path,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    libas2: Path,
    encryption: str,
    mdn_signing: str | bool,
    content_type: str,
) -> None:
    port = free_port()
    config = write_as2_config(tmp_path, our_keys, partner_keys, receiver_port=port)
    payload = tmp_path / "FEN1200A_libas2.xml"
    payload.write_bytes(STATUS.encode())
    request = {
        "url": f"http://127.0.0.1:{port}/as2",
        "ours": {"id": "CTAIFEP", **key_files(tmp_path / "keys", "partner", partner_keys)},
        "theirs": {
            "id": "MYCOMPANY",
            "cert": key_files(tmp_path / "keys", "our", our_keys)["cert"],
        },
        "payload": str(payload),
        "filename": payload.name,
        "contentType": content_type,
        "encryption": encryption,
        "mdnSigning": mdn_signing,
    }

    async def scenario() -> dict[str, Any]:
        async with running(config):
            return await asyncio.to_thread(libas2_peer.run, "send.js", request)

    result = asyncio.run(scenario())

    # nodemailer's spelling reached raccord: the case that used to be refused as "not AS2".
    assert {"As2-From", "As2-To", "As2-Version"} <= set(result["sentHeaders"]), result
    assert result["status"] == 200, result
    (stored,) = Layout(config.gateway.data_dir).inbox("qualif-as2").iterdir()
    assert stored.read_bytes() == STATUS.encode()
    assert stored.name.endswith("FEN1200A_libas2.xml")
    # libas2 read raccord's MDN (and verified its signature when it asked for one).
    mdn = result["mdn"]
    assert mdn["disposition"]["processed"] is True and "description" not in mdn["disposition"]
    assert mdn["originalMessageId"].strip("<>") == result["messageId"].strip("<>")
    assert result["mdnSigned"] is True  # raccord signs whenever signed-receipt options are sent


@pytest.fixture
def endpoint(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair, libas2: Path, request: Any
) -> Iterator[libas2_peer.Endpoint]:
    """libas2 as the partner CTAIFEP; its MDNs signed as the test's ``mdn_signing`` says."""
    signing = getattr(request, "param", False)
    server = libas2_peer.Endpoint(
        tmp_path / "libas2",
        {"id": "CTAIFEP", **key_files(tmp_path / "keys", "partner", partner_keys)},
        {"id": "MYCOMPANY", "cert": key_files(tmp_path / "keys", "our", our_keys)["cert"]},
        mdn_signing=signing,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def outbound(tmp_path: Path, flow_id: str, data: bytes) -> Outbound:
    path = tmp_path / f"{flow_id}.xml"
    path.write_bytes(data)
    return Outbound(flow_id, path, f"FSO1100A_{flow_id}.xml", "FSO1100A", len(data), "", False)


async def send(settings: As2Settings, flow: Outbound) -> Receipt:
    async with As2Sender(settings) as sender:
        return await sender.send(flow)


# libas2 reads a binary part's bytes as Latin-1 and writes them back as UTF-8 before it checks
# the signature: any byte beyond ASCII makes its verification fail (see the last test). So
# the invoice sent to it is ASCII, with the line ends and blanks that must arrive as they are.
INVOICE = (
    sample("ubl-invoice.xml").decode().encode("ascii", "replace")
    + b"<!-- LF, CRLF \r\n, trailing blanks   \n-->\n"
)


@pytest.mark.parametrize("encryption", ["aes_256_cbc", "aes_128_cbc", "tripledes"])
def test_raccord_sends_to_libas2_which_stores_it_intact_and_answers_an_mdn(
    tmp_path: Path,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    endpoint: libas2_peer.Endpoint,
    encryption: str,
) -> None:
    config = write_as2_config(
        tmp_path,
        our_keys,
        partner_keys,
        url=endpoint.url,
        as2_extra=f'encryption = "{encryption}"\nmdn = "sync"',
    )
    receipt = asyncio.run(send(config.connections[0].settings, outbound(tmp_path, "f-1", INVOICE)))

    assert receipt.details["mdn_disposition"].endswith("processed"), receipt.details
    (report,) = endpoint.reports
    assert report["processed"] is True, report
    assert report["filename"] == "FSO1100A_f-1.xml"
    # libas2's MIME parser keeps the CRLF before the closing boundary as part of the payload
    # (RFC 2046 §5.1.1 makes it part of the delimiter): exactly one, and nothing else differs.
    stored = Path(report["stored"]).read_bytes()
    assert stored == INVOICE + b"\r\n"


def test_a_payload_libas2_cannot_verify_is_refused_with_its_reason(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair, endpoint: libas2_peer.Endpoint
) -> None:
    """The stricter peer: libas2 answers "Could not verify signature" for bytes beyond ASCII
    (its own defect); raccord files it as refused, with the partner's words."""
    config = write_as2_config(
        tmp_path, our_keys, partner_keys, url=endpoint.url, as2_extra='mdn = "sync"'
    )
    flow = outbound(tmp_path, "f-2", "<Note>Façade</Note>\n".encode())
    with pytest.raises(RemoteRejected, match="Could not verify signature"):
        asyncio.run(send(config.connections[0].settings, flow))
    (report,) = endpoint.reports
    assert report["processed"] is False


@pytest.mark.parametrize("endpoint", ["sha-256"], indirect=True)
def test_libas2_signed_mdn_is_refused_with_a_clear_reason(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair, endpoint: libas2_peer.Endpoint
) -> None:
    """libas2's signed MDNs are malformed: the part it signs ends before the CRLF it sends
    with it, so the signature is not over what travelled. Delivery is proved only by a
    signature that verifies: raccord refuses the MDN and says why."""
    config = write_as2_config(
        tmp_path, our_keys, partner_keys, url=endpoint.url, as2_extra='mdn = "sync-signed"'
    )
    with pytest.raises(ReceiptInvalid, match="does not verify with the partner's certificate"):
        asyncio.run(send(config.connections[0].settings, outbound(tmp_path, "f-3", INVOICE)))
    (report,) = endpoint.reports
    assert report["processed"] is True  # libas2 took the message; only its MDN is unusable
