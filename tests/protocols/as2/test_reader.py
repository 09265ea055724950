"""The streaming reader, through :func:`protocols.as2.receiver.open_file`: it reads what
pyas2lib, the streaming builder and OpenSSL make, with the answer pyas2lib gives (payload, file
name, MIC in the MDN); what it cannot confirm goes to pyas2lib, whose answer stands; it never
holds the payload in memory."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.sandbox import pki
from protocols.as2 import message, reader
from protocols.as2.receiver import Inbound, Party, open_file, open_message
from protocols.as2.settings import As2Settings
from protocols.certs import KeyPair
from tests.as2_config import build_message, mirror, stream_message

DATA = b"<?xml version='1.0'?>\n<Status>F-1 \r\n<Note>Fa\xc3\xa7ade</Note>\r</Status>\n\x00\xff"


def receive(
    tmp_path: Path, ours: As2Settings, sent: message.Outgoing, *, seen: bool = False
) -> Inbound:
    """What our side (``ours``) makes of ``sent`` through open_file."""
    party = Party("qualif-as2", ours)
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return open_file(
        sent.headers,
        io.BytesIO(sent.body),
        lambda to, frm: party if (to, frm) == (ours.as2_from, ours.as2_to) else None,
        lambda *_: seen,
        payload_dir=lambda _connection: inbox,
        scratch=tmp_path,
    )


def pyas2lib_reads(ours: As2Settings, sent: message.Outgoing, *, seen: bool = False) -> Inbound:
    party = Party("qualif-as2", ours)
    return open_message(
        message.raw_http(sent.headers, sent.body), lambda *_: party, lambda *_: seen
    )


def mdn_of(partner: As2Settings, sent: message.Outgoing, inbound: Inbound) -> message.MdnReport:
    assert inbound.mdn_headers is not None and inbound.mdn_body is not None
    return message.judge_mdn(
        message.organization(partner),
        message.partner(partner),
        sent,
        message.raw_http(inbound.mdn_headers, inbound.mdn_body),
    )


@pytest.fixture
def sides(
    as2_settings: As2Settings, our_keys: KeyPair, partner_keys: KeyPair
) -> tuple[As2Settings, As2Settings]:
    """(our settings, the partner's mirror view)."""
    return as2_settings, mirror(as2_settings, partner_keys, our_keys)


@pytest.mark.parametrize("builder", [build_message, stream_message])
@pytest.mark.parametrize("encryption", ["aes_256_cbc", "aes_128_cbc", "tripledes", "none"])
@pytest.mark.parametrize("signature", ["sha256", "sha512", "sha1", "none"])
def test_it_reads_what_pyas2lib_reads_and_returns_the_same_mic(
    tmp_path: Path,
    sides: tuple[As2Settings, As2Settings],
    builder: object,
    encryption: str,
    signature: str,
) -> None:
    ours, partner = sides
    mdn = "sync-signed" if signature != "none" else "sync"
    ours = replace(ours, encryption=encryption, signature=signature, mdn=mdn)
    partner = replace(partner, encryption=encryption, signature=signature, mdn=mdn)
    sent = builder(partner, DATA, "m-1")  # type: ignore[operator]

    inbound = receive(tmp_path, ours, sent)
    oracle = pyas2lib_reads(ours, sent)

    assert inbound.fallback is None and inbound.processed and oracle.processed
    assert inbound.payload_file is not None and inbound.payload_file.read_bytes() == DATA
    assert oracle.payload == DATA
    assert (inbound.filename, inbound.message_id, inbound.as2_from, inbound.as2_to) == (
        oracle.filename,
        oracle.message_id,
        oracle.as2_from,
        oracle.as2_to,
    )
    report = mdn_of(partner, sent, inbound)
    assert report.outcome == "processed" and report.mic == sent.mic
    assert report.signed == (signature != "none")
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []  # no scratch left


def test_a_payload_in_base64_is_decoded(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings]
) -> None:
    ours, partner = sides
    # pyas2lib sends a text type in base64 (its canonical form: CRLF line ends)
    sent = build_message(partner, DATA, "m-text", mime_type="application/xml")
    inbound = receive(tmp_path, ours, sent)
    oracle = pyas2lib_reads(ours, sent)
    assert inbound.fallback is None, inbound.fallback
    assert oracle.payload == DATA.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(
        b"\n", b"\r\n"
    )
    assert inbound.payload_file is not None
    assert inbound.payload_file.read_bytes() == oracle.payload
    assert mdn_of(partner, sent, inbound).mic == sent.mic


@pytest.mark.parametrize(
    ("bend", "modifier"),
    [
        ("impostor signs", "authentication-failed"),
        ("encrypted for someone else", "decryption-failed"),
        ("unsigned", "insufficient-message-security"),
        ("unencrypted", "insufficient-message-security"),
        ("altered in transit", "authentication-failed"),
    ],
)
def test_what_it_cannot_confirm_gets_pyas2lib_answer_and_leaves_no_file(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings], bend: str, modifier: str
) -> None:
    ours, partner = sides
    stranger = pki.issue("stranger")
    crooked = {
        "impostor signs": replace(partner, keys=stranger),
        "encrypted for someone else": replace(partner, partner_chain=(stranger.certificate,)),
        "unsigned": replace(partner, signature="none", mdn="sync"),
        "unencrypted": replace(partner, encryption="none"),
        "altered in transit": partner,
    }[bend]
    sent = stream_message(crooked, DATA * 100, "m-2")
    if bend == "altered in transit":  # one bit of the ciphertext, amid the payload
        body = bytearray(sent.body)
        body[len(body) // 2] ^= 0x01
        sent = replace(sent, body=bytes(body))

    inbound = receive(tmp_path, ours, sent)

    oracle = pyas2lib_reads(ours, sent)
    assert not inbound.processed and inbound.payload_file is None
    assert (inbound.status, inbound.detail) == (oracle.status, oracle.detail)
    assert inbound.detail == modifier
    assert inbound.mdn_body is not None and modifier.encode() in inbound.mdn_body
    assert list((tmp_path / "inbox").iterdir()) == []


def test_a_tampered_signed_part_fails_authentication(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings]
) -> None:
    ours, partner = sides
    ours, partner = (replace(s, encryption="none") for s in (ours, partner))
    sent = stream_message(partner, DATA, "m-3")
    sent = replace(sent, body=sent.body.replace(b"F-1", b"F-2", 1))
    inbound = receive(tmp_path, ours, sent)
    assert inbound.fallback == "the message digest does not match"
    assert inbound.detail == "authentication-failed" and not inbound.processed


def test_duplicates_and_strangers_are_answered_from_the_headers(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings]
) -> None:
    ours, partner = sides
    sent = stream_message(partner, DATA, "m-4")
    duplicate = receive(tmp_path, ours, sent, seen=True)
    stranger = receive(tmp_path, ours, replace(sent, headers=sent.headers | {"AS2-From": "X"}))
    assert duplicate.duplicate and duplicate.status == "processed/Warning"
    assert stranger.detail == "unknown-trading-partner"
    assert list((tmp_path / "inbox").iterdir()) == []


def openssl(*args: str, data: bytes) -> bytes:
    assert shutil.which("openssl"), "openssl (Debian package openssl) is not installed"
    done = subprocess.run(["openssl", *args], input=data, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


@pytest.mark.parametrize("stream", [False, True], ids=["der", "ber-indefinite"])
def test_it_decrypts_what_openssl_enveloped(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings], our_keys: KeyPair, stream: bool
) -> None:
    """OpenSSL writes definite DER, or with -stream indefinite-length BER with the ciphertext
    cut in segments: both stream through."""
    ours, partner = sides
    ours, partner = (replace(s, signature="none", mdn="sync") for s in (ours, partner))
    certificate = pki.write_certificates([our_keys.certificate], tmp_path / "our.pem", "pem")
    entity = b"Content-Type: application/octet-stream\r\n\r\n" + DATA * 3000
    args = ["cms", "-encrypt", "-binary", "-aes-256-cbc", "-outform", "DER"]
    envelope = openssl(*args, *(["-stream"] if stream else []), str(certificate), data=entity)
    assert (envelope[1] == 0x80) == stream  # indefinite length, or not
    sent = replace(
        stream_message(partner, b"", "m-5"),
        headers={
            "AS2-From": partner.as2_from,
            "AS2-To": partner.as2_to,
            "Message-ID": "<m-5@partner.test>",
            "Content-Type": "application/pkcs7-mime; smime-type=enveloped-data",
            "Content-Transfer-Encoding": "binary",
        },
        body=envelope,
    )
    inbound = receive(tmp_path, ours, sent)
    assert inbound.fallback is None, inbound.fallback
    assert inbound.payload_file is not None and inbound.payload_file.read_bytes() == DATA * 3000


def test_the_payload_is_never_held_in_memory(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings]
) -> None:
    ours, partner = sides
    data = (DATA * (8_000_000 // len(DATA) + 1))[:8_000_000]
    sent = stream_message(partner, data, "m-6")
    del data
    body = tmp_path / "body"
    body.write_bytes(sent.body)
    sent = replace(sent, body=b"")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    party = Party("qualif-as2", ours)
    party.pyas2lib_parties  # noqa: B018 - parsed once per connection, not per message

    tracemalloc.start()
    try:
        with body.open("rb") as f:
            inbound = open_file(
                sent.headers,
                f,
                lambda *_: party,
                lambda *_: False,
                payload_dir=lambda _c: inbox,
                scratch=tmp_path,
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert inbound.fallback is None and inbound.processed
    assert inbound.payload_file is not None and inbound.payload_file.stat().st_size == 8_000_000
    assert peak < 4 * reader.CHUNK, f"peak {peak} bytes for an 8 MB message"


def test_it_reads_a_signed_and_encrypted_smime_message_from_openssl(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings], our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    """Base64 transfer encoding outside, OpenSSL's own MIME framing inside: still streamed,
    and the MIC is the digest of the part OpenSSL signed."""
    ours, _ = sides
    key = pki.write_key(partner_keys, tmp_path / "partner.key")
    theirs = pki.write_certificates([partner_keys.certificate], tmp_path / "partner.pem", "pem")
    mine = pki.write_certificates([our_keys.certificate], tmp_path / "our.pem", "pem")
    inner = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b'Content-Disposition: attachment; filename="FEN1200A_ossl.xml"\r\n\r\n' + DATA
    )
    signed = openssl(
        "cms", "-sign", "-binary", "-md", "sha384", "-signer", str(theirs), "-inkey", str(key),
        "-outform", "SMIME", data=inner,
    )  # fmt: skip
    encrypted = openssl(
        "cms", "-encrypt", "-binary", "-aes-128-cbc", "-outform", "SMIME", str(mine), data=signed
    )
    head, _, body = encrypted.replace(b"\n", b"\r\n").partition(b"\r\n\r\n")
    fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
    assert fields["Content-Transfer-Encoding"] == "base64"
    sent = message.Outgoing(
        "o-1@partner.test",
        base64.b64encode(hashlib.sha384(inner).digest()).decode(),
        "sha384",
        fields
        | {
            "AS2-From": ours.as2_to,
            "AS2-To": ours.as2_from,
            "Message-ID": "<o-1@partner.test>",
            "Disposition-Notification-To": "as2@partner.test",
        },
        body,
    )
    inbound = receive(tmp_path, ours, sent)
    assert inbound.fallback is None, inbound.fallback
    assert inbound.payload_file is not None and inbound.payload_file.read_bytes() == DATA
    assert inbound.filename == "FEN1200A_ossl.xml"
    assert inbound.mdn_body is not None
    assert f"Received-content-MIC: {sent.mic}, sha384".encode() in inbound.mdn_body


def oaep_message(
    tmp_path: Path,
    signer: KeyPair | None,
    our_keys: KeyPair,
    inner: bytes,
    message_id: str,
    oaep: str,
) -> message.Outgoing:
    """A message OpenSSL builds: ``inner`` signed by ``signer`` (unsigned if None), then
    enveloped for us with RSAES-OAEP key transport, its hash and MGF1 hash ``oaep`` (pyas2lib
    decrypts OAEP with SHA-1 only, as libas2 and WebCrypto peers use SHA-256)."""
    mine = pki.write_certificates([our_keys.certificate], tmp_path / "our.pem", "pem")
    entity = inner
    if signer is not None:
        key = pki.write_key(signer, tmp_path / "signer.key")
        cert = pki.write_certificates([signer.certificate], tmp_path / "signer.pem", "pem")
        entity = openssl(
            "cms", "-sign", "-binary", "-md", "sha256", "-signer", str(cert), "-inkey", str(key),
            "-outform", "SMIME", data=inner,
        )  # fmt: skip
    encrypted = openssl(
        "cms", "-encrypt", "-binary", "-aes-256-cbc", "-outform", "SMIME",
        "-recip", str(mine), "-keyopt", "rsa_padding_mode:oaep",
        "-keyopt", f"rsa_oaep_md:{oaep}", "-keyopt", f"rsa_mgf1_md:{oaep}", data=entity,
    )  # fmt: skip
    head, _, body = encrypted.replace(b"\n", b"\r\n").partition(b"\r\n\r\n")
    fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
    return message.Outgoing(
        f"{message_id}@partner.test",
        base64.b64encode(hashlib.sha256(inner).digest()).decode(),
        "sha256",
        fields
        | {
            "AS2-From": "CTAIFEP",
            "AS2-To": "MYCOMPANY",
            "Message-ID": f"<{message_id}@partner.test>",
            "Disposition-Notification-To": "as2@partner.test",
        },
        body,
    )


OAEP_HASHES = pytest.mark.parametrize("oaep", ["sha1", "sha256"])
OSSL_PART = (
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b'Content-Disposition: attachment; filename="FEN1200A_oaep.xml"\r\n\r\n' + DATA
)


@OAEP_HASHES
def test_an_oaep_envelope_from_openssl_is_streamed(
    tmp_path: Path,
    sides: tuple[As2Settings, As2Settings],
    our_keys: KeyPair,
    partner_keys: KeyPair,
    oaep: str,
) -> None:
    sent = oaep_message(tmp_path, partner_keys, our_keys, OSSL_PART, "oaep-1", oaep)
    der = base64.b64decode(sent.body)
    assert b"rsaesOaep" in openssl("cms", "-cmsout", "-print", "-inform", "DER", data=der)
    inbound = receive(tmp_path, sides[0], sent)
    assert inbound.fallback is None, inbound.fallback
    assert inbound.payload_file is not None and inbound.payload_file.read_bytes() == DATA
    assert inbound.mdn_body is not None
    assert f"Received-content-MIC: {sent.mic}, sha256".encode() in inbound.mdn_body


@OAEP_HASHES
def test_an_oaep_envelope_whose_signature_fails_is_answered_authentication_failed(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings], our_keys: KeyPair, oaep: str
) -> None:
    """The envelope opens; the signature is a stranger's. RFC 4130 §7.5.3: the disposition
    names the real cause, "authentication-failed", not "decryption-failed" (pyas2lib's
    answer, as it cannot open OAEP), and nothing is stored."""
    sent = oaep_message(tmp_path, pki.issue("stranger"), our_keys, OSSL_PART, "oaep-2", oaep)
    inbound = receive(tmp_path, sides[0], sent)
    assert inbound.fallback == "the signature does not verify"
    assert not inbound.processed and inbound.detail == "authentication-failed", inbound.error
    assert inbound.mdn_body is not None and b"authentication-failed" in inbound.mdn_body
    assert b"decryption-failed" not in inbound.mdn_body
    assert list((tmp_path / "inbox").iterdir()) == []


@OAEP_HASHES
def test_an_oaep_envelope_without_the_signature_asked_is_insufficient_security(
    tmp_path: Path, sides: tuple[As2Settings, As2Settings], our_keys: KeyPair, oaep: str
) -> None:
    sent = oaep_message(tmp_path, None, our_keys, OSSL_PART, "oaep-3", oaep)
    inbound = receive(tmp_path, sides[0], sent)
    assert not inbound.processed and inbound.detail == "insufficient-message-security"
    assert list((tmp_path / "inbox").iterdir()) == []


@OAEP_HASHES
def test_an_oaep_message_the_streaming_reader_does_not_cover_is_read_all_the_same(
    tmp_path: Path,
    sides: tuple[As2Settings, As2Settings],
    our_keys: KeyPair,
    partner_keys: KeyPair,
    oaep: str,
) -> None:
    """A quoted-printable part sends the message to pyas2lib, which cannot open OAEP: it reads
    the entity the streaming reader decrypted, and the message is stored with its MDN."""
    document = b"<?xml version='1.0'?>\r\n<Status>Fa=C3=A7ade</Status>\r\n"
    inner = (
        b"Content-Type: application/xml\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b'Content-Disposition: attachment; filename="FEN1200A_qp.xml"\r\n\r\n' + document
    )
    sent = oaep_message(tmp_path, partner_keys, our_keys, inner, "oaep-4", oaep)
    inbound = receive(tmp_path, sides[0], sent)
    assert inbound.fallback is not None and "quoted-printable" in inbound.fallback
    assert inbound.processed, inbound.error
    assert inbound.payload_file is not None
    assert (
        inbound.payload_file.read_bytes()
        == "<?xml version='1.0'?>\r\n<Status>Façade</Status>\r\n".encode()
    )
    assert inbound.filename == "FEN1200A_qp.xml"
    assert inbound.mdn_body is not None and b"processed" in inbound.mdn_body
    assert f"Received-content-MIC: {sent.mic}, sha256".encode() in inbound.mdn_body
