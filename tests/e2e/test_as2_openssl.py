"""raccord's AS2 checked by an implementation that shares nothing with pyas2lib: OpenSSL's
``openssl cms`` decrypts and verifies what raccord sends, and builds a message (signed,
encrypted, MIME-wrapped per RFC 4130) that raccord's receiver must accept, whose MDN OpenSSL
then verifies too."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway.folders import Layout
from gateway.sandbox import pki
from protocols.certs import KeyPair
from tests.as2_config import build_message, stream_message, write_as2_config
from tests.e2e.sshd import free_port
from tests.gateway.harness import running

pytestmark = pytest.mark.e2e

INVOICE = b"<?xml version='1.0'?>\n<Invoice>FA-2026-0001 \r\n<Note>Fa\xc3\xa7ade</Note></Invoice>\n"


def openssl(*args: str, data: bytes | None = None) -> bytes:
    assert shutil.which("openssl"), "openssl (Debian package openssl) is not installed"
    done = subprocess.run(
        ["openssl", *args], input=data, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def files(tmp_path: Path, name: str, keys: KeyPair) -> tuple[Path, Path]:
    key = pki.write_key(keys, tmp_path / f"{name}.key")
    cert = pki.write_certificates([keys.certificate], tmp_path / f"{name}.pem", "pem")
    return key, cert


@pytest.mark.parametrize("builder", ["streaming", "pyas2lib"])
@pytest.mark.parametrize(
    ("encryption", "cipher"), [("aes_256_cbc", "aes-256-cbc"), ("tripledes", "des-ede3-cbc")]
)
def test_openssl_decrypts_and_verifies_what_raccord_sends(
    tmp_path: Path,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    encryption: str,
    cipher: str,
    builder: str,
) -> None:
    config = write_as2_config(
        tmp_path, our_keys, partner_keys, as2_extra=f'encryption = "{encryption}"'
    )
    settings = config.connections[0].settings
    build = stream_message if builder == "streaming" else build_message
    sent = build(settings, INVOICE, "f-1", filename="FSO1100A_f-1.xml")
    partner_key, _ = files(tmp_path, "partner", partner_keys)
    _, our_cert = files(tmp_path, "our", our_keys)
    assert sent.headers["Content-Type"].startswith("application/pkcs7-mime")

    envelope = tmp_path / "envelope.der"
    envelope.write_bytes(sent.body)
    info = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(envelope))
    signed = openssl(
        "cms",
        "-decrypt",
        "-binary",
        "-inform",
        "DER",
        "-in",
        str(envelope),
        "-inkey",
        str(partner_key),
    )
    # OpenSSL's own multipart reader rewrites every line end of a part as CRLF, which breaks
    # binary content; so the parts are cut here, by their boundary, and OpenSSL checks the
    # detached signature over the exact bytes that travelled.
    content, signature = split_signed(signed)
    (tmp_path / "content").write_bytes(content)
    (tmp_path / "signature.der").write_bytes(signature)
    openssl(
        "cms",
        "-verify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        str(tmp_path / "signature.der"),
        "-content",
        str(tmp_path / "content"),
        "-CAfile",
        str(our_cert),
        "-partial_chain",
        "-out",
        str(tmp_path / "verified"),
    )

    assert cipher.replace("-", "").encode() in info.replace(b"-", b"").lower()
    assert (tmp_path / "verified").read_bytes() == content
    head, _, payload = content.partition(b"\r\n\r\n")
    assert payload == INVOICE
    assert b'filename="FSO1100A_f-1.xml"' in head
    # The MIC raccord expects back is the digest of those very bytes (RFC 4130 §7.3.1).
    assert sent.mic == base64.b64encode(hashlib.sha256(content).digest()).decode()


def split_signed(document: bytes) -> tuple[bytes, bytes]:
    """The signed part (exact bytes) and the DER signature of a multipart/signed document."""
    head, _, body = document.partition(b"\r\n\r\n")
    boundary = re.search(rb'boundary="?([^";\r\n]+)"?', head)
    assert boundary, head
    delimiter = b"--" + boundary.group(1)
    parts = body.split(b"\r\n" + delimiter)
    first = parts[0].removeprefix(delimiter + b"\r\n")
    signature_part = parts[1].removeprefix(b"\r\n")
    _, _, encoded = signature_part.partition(b"\r\n\r\n")
    return first, base64.b64decode(encoded)


def test_raccord_accepts_a_message_built_by_openssl_and_openssl_verifies_the_mdn(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    port = free_port()
    config = write_as2_config(tmp_path, our_keys, partner_keys, receiver_port=port)
    partner_key, partner_cert = files(tmp_path, "partner", partner_keys)
    _, our_cert = files(tmp_path, "our", our_keys)
    inner = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b'Content-Disposition: attachment; filename="FEN1200A_ossl.xml"\r\n\r\n' + INVOICE
    )
    signed = openssl(
        "cms",
        "-sign",
        "-binary",
        "-md",
        "sha256",
        "-signer",
        str(partner_cert),
        "-inkey",
        str(partner_key),
        "-outform",
        "SMIME",
        data=inner,
    )
    encrypted = openssl(
        "cms",
        "-encrypt",
        "-binary",
        "-aes-256-cbc",
        "-outform",
        "SMIME",
        str(our_cert),
        data=signed,
    )
    head, _, body = encrypted.replace(b"\n", b"\r\n").partition(b"\r\n\r\n")
    mime_headers = dict(email.message_from_bytes(head + b"\r\n\r\n").items())
    headers = mime_headers | {
        "AS2-Version": "1.2",
        "AS2-From": "CTAIFEP",
        "AS2-To": "MYCOMPANY",
        "Message-ID": "<openssl-1@partner.test>",
        "Subject": "built by openssl",
        "Disposition-Notification-To": "as2@partner.test",
        "Disposition-Notification-Options": (
            "signed-receipt-protocol=required, pkcs7-signature; "
            "signed-receipt-micalg=required, sha-256"
        ),
    }

    async def scenario() -> tuple[int, dict[str, str], bytes]:
        url = f"http://127.0.0.1:{port}/"
        async with (
            running(config),
            aiohttp.ClientSession() as client,
            client.post(url, data=body, headers=headers) as r,
        ):
            return r.status, dict(r.headers.items()), await r.read()

    status, answer_headers, mdn = asyncio.run(scenario())

    assert status == 200, mdn
    (stored,) = Layout(config.gateway.data_dir).inbox("qualif-as2").iterdir()
    assert stored.read_bytes() == INVOICE and stored.name.endswith("FEN1200A_ossl.xml")
    whole = f"Content-Type: {answer_headers['Content-Type']}\r\n\r\n".encode() + mdn
    report = openssl(
        "cms", "-verify", "-inform", "SMIME", "-CAfile", str(our_cert), "-partial_chain", data=whole
    )
    assert b"Disposition: automatic-action/MDN-sent-automatically; processed" in report
    # The MIC raccord returns is the digest OpenSSL signed over (RFC 4130 §7.3.1).
    import base64
    import hashlib

    mic = base64.b64encode(hashlib.sha256(inner).digest())
    assert (
        b"Received-content-MIC: " + mic + b", sha"
        in report.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        or mic in report
    )


def test_an_oaep_message_from_openssl_with_a_bad_signature_is_refused_for_that_reason(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    """OpenSSL wraps the key with RSAES-OAEP/SHA-256 (as WebCrypto peers do) and a stranger
    signs; the header names are all lower case. The receiver opens the envelope, stores
    nothing, and its MDN (verified by OpenSSL) names the real cause, authentication-failed."""
    port = free_port()
    config = write_as2_config(tmp_path, our_keys, partner_keys, receiver_port=port)
    stranger_key, stranger_cert = files(tmp_path, "stranger", pki.issue("stranger"))
    _, our_cert = files(tmp_path, "our", our_keys)
    inner = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b'Content-Disposition: attachment; filename="FEN1200A_oaep.xml"\r\n\r\n' + INVOICE
    )
    signed = openssl(
        "cms", "-sign", "-binary", "-md", "sha256", "-signer", str(stranger_cert),
        "-inkey", str(stranger_key), "-outform", "SMIME", data=inner,
    )  # fmt: skip
    encrypted = openssl(
        "cms", "-encrypt", "-binary", "-aes-256-cbc", "-outform", "SMIME", "-recip", str(our_cert),
        "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
        "-keyopt", "rsa_mgf1_md:sha256", data=signed,
    )  # fmt: skip
    head, _, body = encrypted.replace(b"\n", b"\r\n").partition(b"\r\n\r\n")
    mime_headers = dict(email.message_from_bytes(head + b"\r\n\r\n").items())
    headers = {
        name.lower(): value
        for name, value in (
            mime_headers
            | {
                "AS2-Version": "1.2",
                "AS2-From": "CTAIFEP",
                "AS2-To": "MYCOMPANY",
                "Message-ID": "<openssl-oaep@partner.test>",
                "Disposition-Notification-To": "as2@partner.test",
                "Disposition-Notification-Options": (
                    "signed-receipt-protocol=required, pkcs7-signature; "
                    "signed-receipt-micalg=required, sha-256"
                ),
            }
        ).items()
    }

    async def scenario() -> tuple[int, dict[str, str], bytes]:
        url = f"http://127.0.0.1:{port}/"
        async with (
            running(config),
            aiohttp.ClientSession() as client,
            client.post(url, data=body, headers=headers) as r,
        ):
            return r.status, dict(r.headers.items()), await r.read()

    with capture_logs() as logs:
        status, answer_headers, mdn = asyncio.run(scenario())

    assert status == 200, mdn
    assert list(Layout(config.gateway.data_dir).inbox("qualif-as2").iterdir()) == []
    whole = f"Content-Type: {answer_headers['Content-Type']}\r\n\r\n".encode() + mdn
    report = openssl(
        "cms", "-verify", "-inform", "SMIME", "-CAfile", str(our_cert), "-partial_chain", data=whole
    )
    assert b"processed/Error: authentication-failed" in report, report
    (refused,) = [e for e in logs if e["event"] == "as2.refused"]
    assert refused["reason"] == "authentication-failed" and refused["reader"] == "pyas2lib"
