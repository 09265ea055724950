"""AS2 against the npm package libas2 (Node.js), a third implementation: it shares neither
pyas2lib nor OpenSSL's MIME with raccord, spells header names its own way (``As2-From``,
``As2-Version``, ``Message-Id``) and wraps keys with RSAES-OAEP/SHA-256. Both directions:
libas2 sends to raccord's receiver and verifies raccord's MDN; raccord sends to a libas2
endpoint, which stores the payload and answers an MDN raccord verifies."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway import pki
from gateway.folders import Layout
from protocols.certs import KeyPair
from tests.as2_config import write_as2_config
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
