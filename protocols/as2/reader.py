"""Inbound AS2 messages read from a file to a file, never holding the payload in memory.

The mirror of :mod:`protocols.as2.stream`. pyas2lib parses an inbound message from bytes through
the email package and asn1crypto, copying it at each layer, so that receiving a large invoice
costs many times its size in memory. This reader takes the request body from a file and

1. decodes a base64 body, and decrypts CMS ``EnvelopedData`` (DER or BER; RSA key transport;
   AES or 3DES in CBC mode) to a scratch file, reading the ASN.1 around the ciphertext itself so
   that the ciphertext streams through the cipher;
2. finds the two parts of a ``multipart/signed`` entity by scanning for its boundary;
3. verifies the detached CMS signature (RSA PKCS#1 v1.5) over the first part's exact bytes with
   the partner's certificate; the digest of those bytes is the MIC the MDN returns;
4. writes the first part's body (decoded if base64) to the output file.

Anything it does not cover or cannot confirm — compression, another key type or cipher, a
signature that does not verify, a damaged envelope — raises :class:`NotStreamable`, and the
receiver (:func:`protocols.as2.receiver.open_file`) lets pyas2lib read the message: pyas2lib then
gives the answer, the payload or the negative disposition, it has always given. An envelope
this reader opened and pyas2lib cannot (RSAES-OAEP with SHA-256) is handed to pyas2lib opened
(:attr:`NotStreamable.opened`), so that its answer names the real cause.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message as MimeMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import BinaryIO

from asn1crypto import cms
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP, PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from protocols.as2.settings import As2Settings

#: Bytes read at a time.
CHUNK = 1 << 20
#: The longest MIME header block read.
HEAD = 64 * 1024
#: The longest ASN.1 element or signature part read whole.
SMALL = 1 << 20
#: Digests a partner may sign with, by the names pyas2lib gives them (and the MIC carries).
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
#: Content types that carry a CMS signature.
_SIGNATURE_TYPES = ("application/pkcs7-signature", "application/x-pkcs7-signature")
#: Transfer encodings whose body is the bytes themselves.
_IDENTITY = ("", "binary", "8bit", "7bit")
#: DER contents of the envelopedData object identifier (1.2.840.113549.1.7.3).
_ENVELOPED_DATA = bytes.fromhex("2a864886f70d010703")


class NotStreamable(Exception):
    """A message this reader does not cover, or could not confirm: pyas2lib reads it."""

    #: The decrypted entity (its MIME headers and body), when this reader opened an envelope
    #: pyas2lib cannot open (RSAES-OAEP key transport): pyas2lib then reads that instead.
    opened: bytes | None = None


#: Key transports pyas2lib decrypts (through oscrypto); it fails on the others.
_PYAS2LIB_TRANSPORTS = ("rsaes_pkcs1v15",)


@dataclass(frozen=True)
class Read:
    """What was read, the payload being in the output file."""

    filename: str | None
    size: int  # payload bytes written
    mic: str | None  # base64 digest of the signed part; None when unsigned
    digest_algorithm: str | None  # the signer's digest, as pyas2lib names it ("sha256")
    encrypted: bool
    signed: bool


def read(
    settings: As2Settings,
    headers: Mapping[str, str],
    body: BinaryIO,
    out: BinaryIO,
    *,
    scratch: Path,
) -> Read:
    """Read the message whose HTTP ``headers`` (names in lower case) and ``body`` (a file)
    came from the partner of ``settings``; write its payload to ``out``. Demands what pyas2lib
    demands of that partner: encryption and a signature unless the settings say "none"."""
    with contextlib.ExitStack() as stack:
        entity, start, end = body, 0, body.seek(0, 2)
        head = _mime_head(headers)
        kind = head.get_content_type()
        encrypted = kind == "application/pkcs7-mime"
        if encrypted:
            if head.get_param("smime-type") != "enveloped-data":
                raise NotStreamable(f"{kind} {head.get_param('smime-type')} is not enveloped data")
            if _encoding(head) == "base64":
                decoded = stack.enter_context(tempfile.TemporaryFile(dir=scratch))
                _write(decoded, _unbase64(_span(body, 0, end)))
                entity, end = decoded, decoded.tell()
            elif _encoding(head) not in _IDENTITY:
                raise NotStreamable(f"an envelope in {_encoding(head)} transfer encoding")
            plain = stack.enter_context(tempfile.TemporaryFile(dir=scratch))
            transport = _decrypt(settings, entity, plain)
            end = plain.tell()
            try:
                return _read_entity(settings, plain, end, out, encrypted=True)
            except NotStreamable as exc:
                if transport not in _PYAS2LIB_TRANSPORTS:
                    # pyas2lib would answer "decryption-failed" for an envelope that opened
                    # well: it reads the decrypted entity instead, and names the real cause.
                    exc.opened = b"".join(_span(plain, 0, end))
                raise
        if settings.encryption != "none":
            raise NotStreamable("not encrypted")
        return _read_entity(settings, entity, end, out, head=head, start=start)


def _read_entity(
    settings: As2Settings,
    entity: BinaryIO,
    end: int,
    out: BinaryIO,
    *,
    head: MimeMessage | None = None,
    start: int = 0,
    encrypted: bool = False,
) -> Read:
    """Verify and write out the MIME entity of ``entity`` (up to ``end``): the request body
    itself (``head``: its headers, from HTTP), or a decrypted one (headers included)."""
    if head is None:
        head, start = _read_head(entity, 0, end)
        if head.get_content_type() == "text/plain":
            raise NotStreamable("a text/plain entity (pyas2lib reads it as the payload)")
    kind = head.get_content_type()
    if kind != "multipart/signed":
        if settings.signature != "none":
            raise NotStreamable("not signed")
        if kind.startswith("multipart/") or kind == "application/pkcs7-mime":
            raise NotStreamable(f"a {kind} payload")
        size = _write(out, _decoded(head, _span(entity, start, end)))
        return Read(head.get_filename(), size, None, None, encrypted, signed=False)
    boundary = head.get_boundary()
    if not boundary:
        raise NotStreamable("multipart/signed without a boundary")
    signed, signature = _parts(entity, start, end, boundary)
    signers = _signers(signature)
    digests = _digests(entity, signed, {_digest_name(signer) for signer in signers})
    algorithm = _verify(settings, signers, digests)
    part, part_body = _read_head(entity, signed.start, signed.stop)
    inner = part.get_content_type()
    if inner == "application/pkcs7-mime":  # compressed-data, most likely
        raise NotStreamable(f"signed {part.get_param('smime-type') or inner}")
    if inner.startswith("multipart/") or inner in _SIGNATURE_TYPES:
        raise NotStreamable(f"a signed {inner} part")
    size = _write(out, _decoded(part, _span(entity, part_body, signed.stop)))
    mic = binascii.b2a_base64(digests[algorithm], newline=False).decode("ascii")
    return Read(part.get_filename(), size, mic, algorithm, encrypted, signed=True)


def _mime_head(headers: Mapping[str, str]) -> MimeMessage:
    """The MIME fields of the HTTP headers, as an email header block."""
    head = MimeMessage()
    for name in ("content-type", "content-transfer-encoding", "content-disposition"):
        if name in headers:
            head[name] = headers[name]
    return head


def _encoding(head: MimeMessage) -> str:
    return str(head.get("content-transfer-encoding", "")).strip().lower()


def _read_head(f: BinaryIO, start: int, end: int) -> tuple[MimeMessage, int]:
    """The header block of the MIME entity at ``start``, and where its body starts. Lines end
    in CRLF, or in LF alone as some writers (OpenSSL) frame their MIME."""
    f.seek(start)
    window = f.read(min(HEAD, end - start))
    for blank in (b"\r\n", b"\n"):
        if window.startswith(blank):
            return MimeMessage(), start + len(blank)
    ends = [(at, len(blank)) for blank in (b"\n\r\n", b"\n\n") if (at := window.find(blank)) >= 0]
    if not ends:
        raise NotStreamable("no MIME header block")
    at, size = min(ends)
    head = BytesHeaderParser().parsebytes(window[: at + size])
    return head, start + at + size


def _span(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """The bytes of ``f`` from ``start`` to ``end``, a chunk at a time."""
    position = start
    while position < end:
        f.seek(position)
        chunk = f.read(min(CHUNK, end - position))
        if not chunk:
            raise NotStreamable("the file ends early")
        position += len(chunk)
        yield chunk


def _write(out: BinaryIO, chunks: Iterator[bytes]) -> int:
    written = 0
    for chunk in chunks:
        out.write(chunk)
        written += len(chunk)
    return written


def _decoded(head: MimeMessage, chunks: Iterator[bytes]) -> Iterator[bytes]:
    encoding = _encoding(head)
    if encoding == "base64":
        return _unbase64(chunks)
    if encoding in _IDENTITY:
        return chunks
    raise NotStreamable(f"{encoding} transfer encoding")


def _unbase64(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Base64 decoding across chunk ends, line breaks and spaces ignored, strictly otherwise."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk.translate(None, b" \t\r\n")
        cut = len(data) - len(data) % 4
        rest = data[cut:]
        try:
            yield binascii.a2b_base64(data[:cut], strict_mode=True)
        except binascii.Error as exc:
            raise NotStreamable(f"bad base64: {exc}") from None
    if rest:
        raise NotStreamable("base64 that does not end on a full group")


def _find(f: BinaryIO, pattern: bytes, start: int, end: int) -> Iterator[int]:
    """Where ``pattern`` occurs in ``f`` between ``start`` and ``end``, in order."""
    carry = b""
    position = start
    for chunk in _span(f, start, end):
        window = carry + chunk
        base = position - len(carry)
        at = window.find(pattern)
        while at >= 0:
            yield base + at
            at = window.find(pattern, at + 1)
        position += len(chunk)
        carry = window[len(window) - len(pattern) + 1 :]


def _parts(f: BinaryIO, start: int, end: int, boundary: str) -> tuple[range, bytes]:
    """The signed part's span and the DER signature of the multipart/signed body at
    ``start``: exactly two parts, between RFC 2046 delimiters (a line break, ``--``, the
    boundary) — CRLF line breaks, or LF alone as OpenSSL writes them."""
    for line_break in (b"\r\n", b"\n"):
        delimiter = line_break + b"--" + boundary.encode("ascii", "replace")
        f.seek(start)
        marks = (
            [start - len(line_break)]
            if f.read(len(delimiter) - len(line_break)) == (delimiter[len(line_break) :])
            else []
        )
        for at in _find(f, delimiter, start, end):
            marks.append(at)
            if len(marks) == 3:
                break
        if len(marks) == 3:
            break
    else:
        raise NotStreamable("a multipart/signed entity without its two parts")
    f.seek(marks[2] + len(delimiter))
    if f.read(2) != b"--":
        raise NotStreamable("a multipart/signed entity with more than two parts")
    signed = range(_line_end(f, marks[0] + len(delimiter)), marks[1])
    second = range(_line_end(f, marks[1] + len(delimiter)), marks[2])
    if len(second) > SMALL:
        raise NotStreamable(f"a signature part of {len(second)} bytes")
    head, body = _read_head(f, second.start, second.stop)
    if head.get_content_type() not in _SIGNATURE_TYPES:
        raise NotStreamable(f"a second part of type {head.get_content_type()}")
    f.seek(body)
    return signed, b"".join(_decoded(head, iter([f.read(second.stop - body)])))


def _line_end(f: BinaryIO, position: int) -> int:
    """Past the line break that ends a delimiter line (after optional transport padding)."""
    f.seek(position)
    line = f.read(256)
    stripped = line.lstrip(b" \t")
    for line_break in (b"\r\n", b"\n"):
        if stripped.startswith(line_break):
            return position + len(line) - len(stripped) + len(line_break)
    raise NotStreamable("a boundary delimiter line without its line break")


def _signers(signature: bytes) -> list[cms.SignerInfo]:
    """The signer infos of a DER CMS SignedData, every one with a digest we know."""
    try:
        info = cms.ContentInfo.load(signature)
        if info["content_type"].native != "signed_data":
            raise NotStreamable(f"a signature of type {info['content_type'].native}")
        signers = list(info["content"]["signer_infos"])
        info.native  # noqa: B018 - parse it all now (asn1crypto is lazy), errors included
    except (ValueError, TypeError, KeyError) as exc:
        raise NotStreamable(f"an unreadable signature: {exc}") from None
    if not signers:
        raise NotStreamable("a signature without a signer")
    for signer in signers:
        if _digest_name(signer) not in _HASHES:
            raise NotStreamable(f"digest {_digest_name(signer)}")
    return signers


def _digest_name(signer: cms.SignerInfo) -> str:
    return str(signer["digest_algorithm"]["algorithm"].native).lower()


def _digests(f: BinaryIO, span: range, names: set[str]) -> dict[str, bytes]:
    hashers = {name: hashlib.new(name) for name in names}
    for chunk in _span(f, span.start, span.stop):
        for hasher in hashers.values():
            hasher.update(chunk)
    return {name: hasher.digest() for name, hasher in hashers.items()}


def _verify(settings: As2Settings, signers: list[cms.SignerInfo], digests: dict[str, bytes]) -> str:
    """Check every signer against the partner's certificate; the digest algorithm of the last
    one (what pyas2lib reports, and the MIC is computed with)."""
    public = settings.partner_certificate.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise NotStreamable("a partner key that is not RSA")
    name = ""
    for signer in signers:
        name = _digest_name(signer)
        if signer["signature_algorithm"].signature_algo != "rsassa_pkcs1v15":
            raise NotStreamable(f"signature {signer['signature_algorithm'].signature_algo}")
        digest = digests[name]
        value = signer["signature"].native
        try:
            attributes = signer["signed_attrs"]
            if attributes:
                stated = b"".join(
                    b"".join(attribute["values"].native)
                    for attribute in attributes
                    if attribute["type"].native == "message_digest"
                )
                if stated != digest:
                    raise NotStreamable("the message digest does not match")
                public.verify(value, attributes.untag().dump(), PKCS1v15(), _HASHES[name]())
            else:
                public.verify(value, digest, PKCS1v15(), Prehashed(_HASHES[name]()))
        except InvalidSignature:
            raise NotStreamable("the signature does not verify") from None
    return name


class _Ber:
    """Reads BER (and so DER) element headers and contents from a file."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def _read(self, size: int) -> bytes:
        data = self.f.read(size)
        if len(data) != size:
            raise NotStreamable("the envelope ends early")
        return data

    def head(self) -> tuple[int, int | None, bytes]:
        """Tag, length (None: indefinite) and the header's own bytes."""
        tag, first = self._read(2)
        if tag & 0x1F == 0x1F:
            raise NotStreamable("a multi-byte ASN.1 tag")
        if first < 0x80:
            return tag, first, bytes([tag, first])
        if first == 0x80:
            return tag, None, bytes([tag, first])
        count = first & 0x7F
        if count > 8:
            raise NotStreamable("an ASN.1 length over 8 bytes")
        size = self._read(count)
        return tag, int.from_bytes(size, "big"), bytes([tag, first]) + size

    def expect(self, tag: int) -> int | None:
        found, length, _ = self.head()
        if found != tag:
            raise NotStreamable(f"ASN.1 tag {found:#x} where {tag:#x} belongs")
        return length

    def whole(self, tag: int) -> bytes:
        """The element (header and contents) with that tag, definite and small."""
        found, length, raw = self.head()
        if found != tag or length is None or length > SMALL:
            raise NotStreamable(f"ASN.1 element {found:#x} of length {length}")
        return raw + self._read(length)

    def peek(self) -> int:
        at = self.f.tell()
        tag = self._read(1)[0]
        self.f.seek(at)
        return tag

    def octets(self) -> Iterator[bytes]:
        """The contents of ``[0] IMPLICIT OCTET STRING``, primitive or cut in segments."""
        tag, length, _ = self.head()
        if tag == 0x80 and length is not None:
            yield from self._stream(length)
        elif tag == 0xA0:
            left = length
            while left is None or left > 0:
                kind, size, raw = self.head()
                if left is None and kind == 0 and size == 0:
                    return
                if kind != 0x04 or size is None:
                    raise NotStreamable(f"ASN.1 segment {kind:#x} in the encrypted content")
                yield from self._stream(size)
                if left is not None:
                    left -= len(raw) + size
        else:
            raise NotStreamable(f"encrypted content as ASN.1 {tag:#x}")

    def _stream(self, size: int) -> Iterator[bytes]:
        while size:
            chunk = self.f.read(min(CHUNK, size))
            if not chunk:
                raise NotStreamable("the envelope ends early")
            size -= len(chunk)
            yield chunk


def _decrypt(settings: As2Settings, f: BinaryIO, out: BinaryIO) -> str:
    """Decrypt the CMS EnvelopedData in ``f`` to ``out``; the key transport that opened it
    (``rsaes_pkcs1v15``, ``rsaes_oaep``)."""
    f.seek(0)
    ber = _Ber(f)
    ber.expect(0x30)  # ContentInfo
    if ber.whole(0x06)[2:] != _ENVELOPED_DATA:
        raise NotStreamable("CMS content that is not enveloped data")
    ber.expect(0xA0)
    ber.expect(0x30)  # EnvelopedData
    ber.whole(0x02)  # version
    if ber.peek() == 0xA0:
        ber.whole(0xA0)  # originatorInfo, of no use here
    try:
        recipients = cms.RecipientInfos.load(ber.whole(0x31))
        ber.expect(0x30)  # EncryptedContentInfo
        ber.whole(0x06)
        algorithm = cms.EncryptionAlgorithm.load(ber.whole(0x30))
        transport, key = _content_key(settings, recipients)
        cipher, block = _cipher(algorithm, key)
    except (ValueError, TypeError, KeyError) as exc:
        raise NotStreamable(f"an unreadable envelope: {exc}") from None
    unpadder = padding.PKCS7(block * 8).unpadder()
    for chunk in ber.octets():
        out.write(unpadder.update(cipher.update(chunk)))
    try:
        out.write(unpadder.update(cipher.finalize()) + unpadder.finalize())
    except ValueError as exc:
        raise NotStreamable(f"the decrypted content is not padded right: {exc}") from None
    return transport


def _content_key(settings: As2Settings, recipients: cms.RecipientInfos) -> tuple[str, bytes]:
    """The content-encryption key, from the first key-transport recipient our key opens, and
    the name of that key transport."""
    key = settings.keys.key
    if not isinstance(key, rsa.RSAPrivateKey):
        raise NotStreamable("our key is not RSA")
    for recipient in recipients:
        if recipient.name != "ktri":
            continue
        transport = recipient.chosen
        method = transport["key_encryption_algorithm"]
        name = method["algorithm"].native
        if name == "rsaes_pkcs1v15":
            scheme: PKCS1v15 | OAEP = PKCS1v15()
        elif name == "rsaes_oaep":
            parameters = method["parameters"]
            digest = _HASHES[parameters["hash_algorithm"]["algorithm"].native]()
            mask = _HASHES[parameters["mask_gen_algorithm"]["parameters"]["algorithm"].native]()
            scheme = OAEP(MGF1(mask), digest, None)
        else:
            continue
        with contextlib.suppress(ValueError):
            return name, key.decrypt(transport["encrypted_key"].native, scheme)
    raise NotStreamable("no recipient our key opens")


def _cipher(algorithm: cms.EncryptionAlgorithm, key: bytes) -> tuple[CipherContext, int]:
    name = algorithm.encryption_cipher
    if algorithm.encryption_mode != "cbc":
        raise NotStreamable(f"{name} in {algorithm.encryption_mode} mode")
    iv = algorithm.encryption_iv
    if name == "aes" and len(key) == algorithm.key_length:
        return Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor(), 16
    if name == "tripledes" and len(key) == 24:
        return Cipher(TripleDES(key), modes.CBC(iv)).decryptor(), 8
    raise NotStreamable(f"cipher {name} with a {len(key)}-byte key")
