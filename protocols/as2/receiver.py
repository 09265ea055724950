"""Inbound AS2 messages: decrypt, verify, decompress, answer with an MDN.

:func:`open_file` turns a request (its headers, its body in a file) into an :class:`Inbound`
(the payload in a file if it is good, the reason if not) and the MDN to answer with; the gateway
(:mod:`gateway.returns.as2_receiver`) makes the payload durable *before* it sends that MDN. The
common message (encrypted and signed with RSA keys, uncompressed) is read by the streaming reader
(:mod:`protocols.as2.reader`), the payload never in memory; pyas2lib reads the others, and
answers for all that the streaming reader cannot confirm. :func:`open_message` is pyas2lib's
reading of a request held in memory, for the simulated partner and the tests.

The same endpoint takes the asynchronous MDNs that answer our own messages:
:func:`looks_like_mdn` tells them apart cheaply, :func:`mdn_reference` reads which message one
answers (the sender, :meth:`protocols.as2.sender.As2Sender.settle`, judges it).
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from email import message_from_bytes
from email.message import Message as MimeMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, BinaryIO

import pyas2lib
from pyas2lib.exceptions import DuplicateDocument, MDNNotFound
from pyas2lib.utils import unquote_as2name

from protocols.as2 import message, reader
from protocols.as2.settings import As2Settings

#: Suffix of a payload file being written (the gateway removes leftovers at start).
PARTIAL = ".as2-receiving"


@dataclass(frozen=True)
class Inbound:
    """One parsed inbound message and the answer it calls for."""

    message_id: str | None
    as2_from: str | None
    as2_to: str | None
    status: str  # "processed", or the negative disposition ("processed/Error", …)
    detail: str | None  # the disposition modifier: duplicate-document, authentication-failed…
    error: str | None  # what went wrong, for the log
    payload: bytes | None  # only when processed, from open_message
    filename: str | None
    connection: str | None  # the connection the message came through
    mdn_headers: dict[str, str] | None  # None: no MDN asked
    mdn_body: bytes | None
    mdn_url: str | None  # asynchronous MDN: where to post it
    #: From open_file, when processed: the file holding the payload (the caller's to keep).
    payload_file: Path | None = None
    #: From open_file: why pyas2lib read the message rather than the streaming reader.
    fallback: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.detail == "duplicate-document"

    @property
    def processed(self) -> bool:
        has_payload = self.payload is not None or self.payload_file is not None
        return self.status == "processed" and has_payload


class Party:
    """A connection as the receiver needs it: its name, its AS2 settings, and pyas2lib's view
    of both ends, built once (it parses our key) rather than per message."""

    def __init__(self, connection: str, settings: As2Settings) -> None:
        self.connection = connection
        self.settings = settings

    @functools.cached_property
    def pyas2lib_parties(self) -> tuple[Any, Any]:
        return message.organization(self.settings), _pyas2lib_partner(self.settings)


def _pyas2lib_partner(settings: As2Settings) -> Any:
    """The sending partner: its certificate verifies signatures; what we ask of our own
    messages (signing, encryption) we demand of its messages too."""
    leaf = message.partner(settings)
    return pyas2lib.Partner(
        as2_name=settings.as2_to,
        verify_cert=leaf.verify_cert,
        encrypt_cert=leaf.encrypt_cert,
        validate_certs=False,
        sign=settings.signature != "none",
        encrypt=settings.encryption != "none",
    )


def open_message(
    raw: bytes,
    find: Callable[[str, str], Party | None],
    seen: Callable[[str, str], bool],
    *,
    decrypted: bool = False,
) -> Inbound:
    """Parse one inbound request (HTTP headers and body as one MIME document).

    ``find(as2_to, as2_from)`` gives the connection for that pair of AS2 names, or None;
    ``seen(message_id, as2_from)`` tells whether that message was stored before.
    ``decrypted``: the body is the entity an envelope held, already opened.
    """
    found: list[Party] = []

    def lookup(as2_to: str, as2_from: str) -> tuple[Any, Any]:
        party = find(as2_to, as2_from)
        if party is None:
            return None, None
        found.append(party)
        org, partner = party.pyas2lib_parties
        if decrypted:  # encryption was demanded and found: the envelope is open
            partner = copy.copy(partner)
            partner.encrypt = False
        return org, partner

    received = pyas2lib.Message()
    status, (exception, _), mdn = received.parse(
        raw, find_org_partner_cb=lookup, find_message_cb=lambda mid, sender: seen(mid, sender)
    )
    headers = received.headers if received.payload is not None else {}
    detail = getattr(exception, "disposition_modifier", None) if exception else None
    party = found[0] if found else None
    processed = status == "processed" and exception is None
    mdn_headers, mdn_body, mdn_url = _mdn_answer(mdn)
    filename = None
    if processed and received.payload is not None:
        filename = received.payload.get_filename()
    return Inbound(
        message_id=received.message_id,
        as2_from=_header(headers, "as2-from"),
        as2_to=_header(headers, "as2-to"),
        status=status if not isinstance(exception, DuplicateDocument) else "processed/Warning",
        detail=detail,
        error=str(exception) if exception else None,
        payload=received.content if processed else None,
        filename=filename,
        connection=party.connection if party else None,
        mdn_headers=mdn_headers,
        mdn_body=mdn_body,
        mdn_url=mdn_url,
    )


def _mdn_answer(mdn: pyas2lib.Mdn | None) -> tuple[dict[str, str] | None, bytes | None, str | None]:
    """An MDN pyas2lib built as (HTTP headers, body, the URL of an asynchronous one)."""
    if mdn is None:
        return None, None, None
    headers = {name: message.one_line(value) for name, value in mdn.headers.items()}
    url = mdn.mdn_url if mdn.mdn_mode == "ASYNC" else None
    return headers, mdn.content, url


def header_fields(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """HTTP header fields keyed by their names in lower case: names are case-insensitive
    (RFC 9110 §5.1), and peers spell them as they like (``AS2-From``, ``As2-From``,
    ``as2-from``). Everything here and in the gateway looks names up in this form."""
    return {name.lower(): value for name, value in headers}


def open_file(
    headers: Mapping[str, str],
    body: BinaryIO,
    find: Callable[[str, str], Party | None],
    seen: Callable[[str, str], bool],
    *,
    payload_dir: Callable[[str], Path],
    scratch: Path,
) -> Inbound:
    """Read one inbound request, its ``body`` in a file; as :func:`open_message` answers.

    A processed payload is left in a new file of ``payload_dir(connection)`` named
    ``.*.as2-receiving`` (:attr:`Inbound.payload_file`), for the caller to make durable and
    keep; nothing is left otherwise. Scratch files (decoded and decrypted bodies) go to
    ``scratch`` and are gone when this returns.
    """
    fields = header_fields(headers.items())
    as2_from = as2_name(fields.get("as2-from", ""))
    message_id = fields.get("message-id", "").strip().lstrip("<").rstrip(">")
    party = find(as2_name(fields.get("as2-to", "")), as2_from)
    kind = _mime_type(fields.get("content-type", ""))
    if (
        party is None
        or seen(message_id, as2_from)
        or (party.settings.encryption != "none" and kind != "application/pkcs7-mime")
    ):
        # pyas2lib decides these from the headers, before it reads the body.
        return open_message(message.raw_http(headers, b""), find, seen)
    handle, name = tempfile.mkstemp(
        prefix=".message.", suffix=PARTIAL, dir=payload_dir(party.connection)
    )
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                got = reader.read(party.settings, fields, body, out, scratch=scratch)
            except reader.NotStreamable as exc:
                out.seek(0)
                out.truncate()
                body.seek(0)
                if exc.opened is None:
                    inbound = open_message(message.raw_http(headers, body.read()), find, seen)
                else:
                    inbound = _open_decrypted(headers, exc.opened, find, seen)
                if not inbound.processed or inbound.payload is None:
                    path.unlink()
                    return replace(inbound, fallback=str(exc))
                out.write(inbound.payload)
                return replace(inbound, payload=None, payload_file=path, fallback=str(exc))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    mdn_headers, mdn_body, mdn_url = _mdn_answer(
        _mdn(party, fields, message_id, got.mic, got.digest_algorithm)
    )
    return Inbound(
        message_id=message_id,
        as2_from=as2_from,
        as2_to=party.settings.as2_from,
        status="processed",
        detail=None,
        error=None,
        payload=None,
        filename=got.filename,
        connection=party.connection,
        mdn_headers=mdn_headers,
        mdn_body=mdn_body,
        mdn_url=mdn_url,
        payload_file=path,
    )


def _open_decrypted(
    headers: Mapping[str, str],
    entity: bytes,
    find: Callable[[str, str], Party | None],
    seen: Callable[[str, str], bool],
) -> Inbound:
    """pyas2lib's reading of a message whose envelope the streaming reader opened and pyas2lib
    cannot (RSAES-OAEP key transport): the decrypted ``entity`` under the request's other
    headers. Its answer then names the real cause (a signature that does not verify:
    "authentication-failed"), not pyas2lib's "decryption-failed"."""
    if BytesHeaderParser().parsebytes(entity).get_content_type() == "text/plain":
        # No MIME headers: the whole content is the payload, as pyas2lib reads it.
        entity = b"Content-Type: application/edi-consent\r\n\r\n" + entity
    outer = {name: value for name, value in headers.items() if name.lower() not in _ENVELOPE}
    # No blank line after these headers: the entity goes on with its own header block.
    head = message.raw_http(outer, b"").removesuffix(b"\r\n")
    return open_message(head + entity, find, seen, decrypted=True)


#: The request's headers that describe the envelope, not the entity inside it.
_ENVELOPE = ("content-type", "content-transfer-encoding", "content-disposition", "content-length")


def _mdn(
    party: Party, fields: dict[str, str], message_id: str, mic: str | None, digest: str | None
) -> pyas2lib.Mdn | None:
    """The positive MDN pyas2lib builds for a message it read, if the message asks for one."""
    if not fields.get("disposition-notification-to"):
        return None
    read = pyas2lib.Message()
    read.payload = MimeMessage()
    for name, value in fields.items():
        read.payload.add_header(name, value)
    read.message_id = message_id
    read.receiver, read.sender = party.pyas2lib_parties
    read.mic = mic.encode("ascii") if mic else None
    read.digest_alg = digest
    url = fields.get("receipt-delivery-option")
    options = fields.get("disposition-notification-options")
    micalg = options.split(";")[-1].split(",")[-1].strip() if options else None
    mdn = pyas2lib.Mdn(mdn_mode="ASYNC" if url else "SYNC", mdn_url=url, digest_alg=micalg)
    mdn.build(message=read, status="processed")
    return mdn


def _mime_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


#: How far into a multipart/signed body the signed part's own Content-Type is looked for.
SNIFF = 4096


def looks_like_mdn(content_type: str, body: bytes) -> bool:
    """Whether a request with this Content-Type and body is an MDN rather than a message: a
    report, or a signature over a report (an AS2 message is encrypted, signed or plain data)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/report":
        return True
    return kind == "multipart/signed" and b"multipart/report" in body[:SNIFF].lower()


def mdn_reference(raw: bytes) -> str | None:
    """The Message-ID (without angle brackets) of the message the MDN ``raw`` (HTTP headers
    and body) answers; None if it names none."""
    mdn = pyas2lib.Mdn()
    try:
        mdn.payload = message_from_bytes(raw)
        message_id, _recipient = mdn.detect_mdn()
    except (MDNNotFound, AttributeError, TypeError, ValueError, IndexError):
        return None
    return str(message_id) if message_id else None


def as2_sender(raw: bytes) -> str:
    """The AS2-From of a raw request (HTTP headers and body), as a name; "" if none."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return as2_name(str(BytesHeaderParser().parsebytes(head + b"\r\n\r\n").get("AS2-From", "")))


def as2_name(header: str) -> str:
    """An AS2-From or AS2-To header value as a name (quotes removed, RFC 4130 §6.2)."""
    return str(unquote_as2name(header.strip())).strip()


def _header(headers: dict[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return as2_name(str(value)) if value else None
    return None
