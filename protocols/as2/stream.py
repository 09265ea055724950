"""Outgoing AS2 messages built from a file to a file, never holding the payload in memory.

pyas2lib builds a message from bytes through Python's email package and asn1crypto, copying the
payload at each layer (MIME, signature, MIME again, encryption, MIME again), so that a large
invoice costs many times its size in memory. This builder makes the same message (RFC 4130 over
RFC 5751 S/MIME: a binary MIME part, signed as ``multipart/signed`` with a detached CMS
signature, enveloped in CMS ``EnvelopedData``) in two streaming passes over the file:

1. digest the MIME part (its headers, then the file): that digest is both the CMS
   ``messageDigest`` signed attribute and the MIC the partner's MDN must return;
2. write the message body — through the cipher when encrypting — to a file, its size known in
   advance, so the DER lengths around the ciphertext are written first.

It covers what Chorus Pro asks and the default settings: ``application/octet-stream`` (binary
MIME), signed or not, encrypted or not, uncompressed, with an RSA key. Other cases (a text
content type, compression) go through :func:`protocols.as2.message.build`. The partner cannot
tell the two apart; the tests check both with django-pyas2 and ``openssl cms``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import utils as email_utils
from email.message import Message as MimeMessage
from email.policy import HTTP
from pathlib import Path
from typing import BinaryIO

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from pyas2lib.utils import quote_as2name

from protocols.as2.settings import As2Settings

#: Bytes read at a time.
CHUNK = 1 << 20
#: micalg names (RFC 5751 §3.4.3.2) and CMS digest names, by our signature setting.
MICALG = {"sha1": "sha-1", "sha256": "sha-256", "sha384": "sha-384", "sha512": "sha-512"}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
#: (asn1crypto name, key bytes, block bytes) by our encryption setting.
_CIPHERS = {
    "aes_128_cbc": ("aes128_cbc", 16, 16),
    "aes_192_cbc": ("aes192_cbc", 24, 16),
    "aes_256_cbc": ("aes256_cbc", 32, 16),
    "tripledes": ("tripledes_3key", 24, 8),
}


@dataclass(frozen=True)
class Built:
    """A message written to a file: its HTTP headers, and what the MDN must confirm."""

    message_id: str  # without angle brackets
    mic: str | None  # base64 digest of the signed MIME part; None when unsigned
    mic_algorithm: str | None
    headers: dict[str, str]
    size: int  # bytes written


def handles(settings: As2Settings) -> bool:
    """Whether this builder makes the messages of ``settings`` (else pyas2lib does)."""
    return (
        settings.content_type.lower() == "application/octet-stream"
        and not settings.compress
        and isinstance(settings.keys.key, rsa.RSAPrivateKey)
        and isinstance(settings.partner_certificate.public_key(), rsa.RSAPublicKey)
    )


def build(
    settings: As2Settings,
    source: Path,
    out: BinaryIO,
    *,
    message_id: str,
    filename: str,
    subject: str,
) -> Built:
    """Write the AS2 message body carrying ``source`` to ``out`` (an empty file; no fsync
    needed: a resend builds it again); return its headers. ``message_id`` is the left-hand
    side, as in :func:`protocols.as2.message.build`."""
    part_head = _headers(
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Transfer-Encoding", "binary"),
            ("Content-Disposition", "attachment", {"filename": filename}),
        ]
    )
    size = source.stat().st_size
    signs = settings.signature != "none"
    boundary = _boundary()
    digest = None
    if signs:
        digest, boundary = _digest(settings.signature, part_head, source, boundary)
    full_id = f"{message_id}@{settings.message_id_domain}"
    headers = _as2_headers(settings, full_id, subject)
    # The entity carried: the signed multipart around the part, or the part alone.
    if signs:
        assert digest is not None
        signature = _signature(settings, digest)
        entity_head, opening, closing = _signed_frame(settings.signature, boundary, signature)
        body: tuple[bytes | Path, ...] = (opening, part_head, source, closing)
        body_size = len(opening) + len(part_head) + size + len(closing)
    else:
        entity_head, body, body_size = part_head, (source,), size
    if settings.encryption == "none":
        headers |= _split_head(entity_head)
        for piece in _chain(*body):
            out.write(piece)
    else:
        headers |= {
            "Content-Type": 'application/pkcs7-mime; name="smime.p7m"; smime-type=enveloped-data',
            "Content-Disposition": 'attachment; filename="smime.p7m"',
            "Content-Transfer-Encoding": "binary",
        }
        _envelope(settings, _chain(entity_head, *body), len(entity_head) + body_size, out)
    out.flush()
    written = out.tell()
    mic = base64.b64encode(digest).decode("ascii") if digest is not None else None
    return Built(full_id, mic, settings.signature if signs else None, headers, written)


def _headers(fields: list[tuple[str, str] | tuple[str, str, dict[str, str]]]) -> bytes:
    """A MIME header block (CRLF line ends, blank line included), parameters quoted and
    encoded by the email package (RFC 2231 for names beyond ASCII)."""
    part = MimeMessage(policy=HTTP)
    for field in fields:
        if len(field) == 3:
            part.add_header(field[0], field[1], **field[2])
        else:
            part[field[0]] = field[1]
    return part.as_bytes(policy=HTTP.clone(linesep="\r\n")).split(b"\r\n\r\n", 1)[0] + (b"\r\n\r\n")


def _split_head(head: bytes) -> dict[str, str]:
    """A header block as HTTP header fields."""
    fields = {}
    for line in head.decode("ascii").split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return fields


def _boundary() -> str:
    return "----=_raccord_" + secrets.token_hex(16)


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def _chain(*pieces: bytes | Path) -> Iterator[bytes]:
    for piece in pieces:
        if isinstance(piece, Path):
            yield from _chunks(piece)
        else:
            yield piece


def _digest(algorithm: str, head: bytes, source: Path, boundary: str) -> tuple[bytes, str]:
    """The digest of the MIME part, and a boundary that does not occur in the file."""
    digest = hashlib.new(algorithm, head)
    delimiter = b"--" + boundary.encode("ascii")
    tail = b""
    clash = False
    for chunk in _chunks(source):
        digest.update(chunk)
        window = tail + chunk
        clash = clash or delimiter in window
        tail = window[-len(delimiter) :]
    if clash:  # one chance in 2**128, but then the message would be cut there
        return _digest(algorithm, head, source, _boundary())
    return digest.digest(), boundary


def _certificate(certificate: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))


def _signature(settings: As2Settings, digest: bytes) -> bytes:
    """A detached CMS SignedData over the part whose digest is ``digest`` (signed attributes:
    content type, signing time, message digest, S/MIME capabilities), with our certificate."""
    algorithm = settings.signature
    attributes = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": [cms.ContentType("data")]}),
            cms.CMSAttribute(
                {
                    "type": "signing_time",
                    "values": [cms.Time({"utc_time": core.UTCTime(datetime.now(UTC))})],
                }
            ),
            cms.CMSAttribute({"type": "message_digest", "values": [core.OctetString(digest)]}),
            cms.CMSAttribute(
                {
                    "type": "smime_capabilities",
                    "values": [
                        [
                            {"capability_id": "2.16.840.1.101.3.4.1.42"},  # AES-256-CBC
                            {"capability_id": "2.16.840.1.101.3.4.1.2"},  # AES-128-CBC
                            {"capability_id": "1.2.840.113549.3.7"},  # 3DES-CBC
                        ]
                    ],
                }
            ),
        ]
    )
    key = settings.keys.key
    assert isinstance(key, rsa.RSAPrivateKey)
    signed = key.sign(attributes.dump(), PKCS1v15(), _HASHES[algorithm]())
    ours = _certificate(settings.keys.certificate)
    identity = cms.IssuerAndSerialNumber(
        {"issuer": ours.issuer, "serial_number": ours.serial_number}
    )
    digest_algorithm = algos.DigestAlgorithm({"algorithm": algorithm})
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "data"},
            "certificates": [ours],
            "signer_infos": [
                {
                    "version": "v1",
                    "sid": {"issuer_and_serial_number": identity},
                    "digest_algorithm": digest_algorithm,
                    "signed_attrs": attributes,
                    "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
                    "signature": signed,
                }
            ],
        }
    )
    dumped: bytes = cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump()
    return dumped


def _signed_frame(algorithm: str, boundary: str, signature: bytes) -> tuple[bytes, bytes, bytes]:
    """The ``multipart/signed`` entity around the part: its header block, what comes before
    the part, and what comes after it (the signature part and the closing delimiter)."""
    head = _headers(
        [
            (
                "Content-Type",
                "multipart/signed",
                {
                    "protocol": "application/pkcs7-signature",
                    "micalg": MICALG[algorithm],
                    "boundary": boundary,
                },
            )
        ]
    )
    encoded = base64.encodebytes(signature).replace(b"\n", b"\r\n")
    signature_head = _headers(
        [
            (
                "Content-Type",
                "application/pkcs7-signature",
                {"name": "smime.p7s", "smime-type": "signed-data"},
            ),
            ("Content-Transfer-Encoding", "base64"),
            ("Content-Disposition", "attachment", {"filename": "smime.p7s"}),
        ]
    )
    delimiter = b"--" + boundary.encode("ascii")
    opening = delimiter + b"\r\n"
    closing = b"\r\n" + delimiter + b"\r\n" + signature_head + encoded + delimiter + b"--\r\n"
    return head, opening, closing


def _as2_headers(settings: As2Settings, message_id: str, subject: str) -> dict[str, str]:
    headers = {
        "AS2-Version": "1.2",
        "ediint-features": "CMS",
        "Message-ID": f"<{message_id}>",
        "AS2-From": quote_as2name(settings.as2_from),
        "AS2-To": quote_as2name(settings.as2_to),
        "Subject": subject,
        "Date": email_utils.formatdate(localtime=True),
        "MIME-Version": "1.0",
    }
    if settings.mdn != "none":
        headers["disposition-notification-to"] = f"raccord@{settings.message_id_domain}"
        if settings.mdn_signed:
            headers["disposition-notification-options"] = (
                "signed-receipt-protocol=required, pkcs7-signature; "
                f"signed-receipt-micalg=optional, {settings.signature}"
            )
        if settings.mdn_async and settings.mdn_url:
            headers["receipt-delivery-option"] = settings.mdn_url
    return headers


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _tlv_head(tag: int, length: int) -> bytes:
    return bytes([tag]) + _der_length(length)


def _envelope(
    settings: As2Settings, pieces: Iterator[bytes], plain_size: int, out: BinaryIO
) -> None:
    """Write CMS EnvelopedData (key transport to the partner's RSA certificate) around the
    encryption of ``pieces`` (``plain_size`` bytes in all), streaming the ciphertext."""
    name, key_size, block = _CIPHERS[settings.encryption]
    key, iv = os.urandom(key_size), os.urandom(block)
    partner = settings.partner_certificate
    public = partner.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    theirs = _certificate(partner)
    recipient = cms.RecipientInfo(
        name="ktri",
        value=cms.KeyTransRecipientInfo(
            {
                "version": "v0",
                "rid": {
                    "issuer_and_serial_number": {
                        "issuer": theirs.issuer,
                        "serial_number": theirs.serial_number,
                    }
                },
                "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
                "encrypted_key": public.encrypt(key, PKCS1v15()),
            }
        ),
    )
    version = core.Integer(0).dump()
    recipients = cms.RecipientInfos([recipient]).dump()
    content_type = cms.ContentType("data").dump()
    algorithm = cms.EncryptionAlgorithm(
        {"algorithm": name, "parameters": core.OctetString(iv)}
    ).dump()
    cipher_size = plain_size + block - plain_size % block  # PKCS#7 padding: 1..block bytes
    content = _tlv_head(0x80, cipher_size)  # [0] IMPLICIT OCTET STRING
    info_size = len(content_type) + len(algorithm) + len(content) + cipher_size
    info = _tlv_head(0x30, info_size)
    enveloped_size = len(version) + len(recipients) + len(info) + info_size
    enveloped = _tlv_head(0x30, enveloped_size)
    explicit_size = len(enveloped) + enveloped_size
    explicit = _tlv_head(0xA0, explicit_size)
    outer_type = cms.ContentType("enveloped_data").dump()
    outer = _tlv_head(0x30, len(outer_type) + len(explicit) + explicit_size)
    for head in (outer, outer_type, explicit, enveloped, version, recipients, info):
        out.write(head)
    out.write(content_type + algorithm + content)
    encryptor = _encryptor(settings.encryption, key, iv)
    padder = padding.PKCS7(block * 8).padder()
    written = 0
    for piece in pieces:
        encrypted = encryptor.update(padder.update(piece))
        out.write(encrypted)
        written += len(encrypted)
    encrypted = encryptor.update(padder.finalize()) + encryptor.finalize()
    out.write(encrypted)
    written += len(encrypted)
    assert written == cipher_size, (written, cipher_size)


def _encryptor(encryption: str, key: bytes, iv: bytes) -> CipherContext:
    if encryption == "tripledes":
        return Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
    return Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
