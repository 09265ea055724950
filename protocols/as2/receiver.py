"""Inbound AS2 messages, with pyas2lib: decrypt, verify, decompress, answer with an MDN.

No I/O here: :func:`open_message` turns the raw HTTP request into an :class:`Inbound` (the
payload if it is good, the reason if not) and the MDN to answer with. The gateway
(:mod:`gateway.as2_receiver`) stores the payload durably *before* it sends that MDN.

The same endpoint takes the asynchronous MDNs that answer our own messages:
:func:`looks_like_mdn` tells them apart cheaply, :func:`mdn_reference` reads which message one
answers (the sender, :meth:`protocols.as2.sender.As2Sender.settle`, judges it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from email.parser import BytesHeaderParser
from typing import Any

import pyas2lib
from pyas2lib.exceptions import DuplicateDocument, MDNNotFound
from pyas2lib.utils import unquote_as2name

from protocols.as2 import message
from protocols.as2.settings import As2Settings


@dataclass(frozen=True)
class Inbound:
    """One parsed inbound message and the answer it calls for."""

    message_id: str | None
    as2_from: str | None
    as2_to: str | None
    status: str  # "processed", or the negative disposition ("processed/Error", …)
    detail: str | None  # the disposition modifier: duplicate-document, authentication-failed…
    error: str | None  # what went wrong, for the log
    payload: bytes | None  # only when processed
    filename: str | None
    connection: str | None  # the connection the message came through
    mdn_headers: dict[str, str] | None  # None: no MDN asked
    mdn_body: bytes | None
    mdn_url: str | None  # asynchronous MDN: where to post it

    @property
    def duplicate(self) -> bool:
        return self.detail == "duplicate-document"

    @property
    def processed(self) -> bool:
        return self.status == "processed" and self.payload is not None


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
) -> Inbound:
    """Parse one inbound request (HTTP headers and body as one MIME document).

    ``find(as2_to, as2_from)`` gives the connection for that pair of AS2 names, or None;
    ``seen(message_id, as2_from)`` tells whether that message was stored before.
    """
    found: list[Party] = []

    def lookup(as2_to: str, as2_from: str) -> tuple[Any, Any]:
        party = find(as2_to, as2_from)
        if party is None:
            return None, None
        found.append(party)
        return party.pyas2lib_parties

    received = pyas2lib.Message()
    status, (exception, _), mdn = received.parse(
        raw, find_org_partner_cb=lookup, find_message_cb=lambda mid, sender: seen(mid, sender)
    )
    headers = received.headers if received.payload is not None else {}
    detail = getattr(exception, "disposition_modifier", None) if exception else None
    party = found[0] if found else None
    processed = status == "processed" and exception is None
    mdn_headers = mdn_body = None
    if mdn is not None:
        mdn_headers = {name: message.one_line(value) for name, value in mdn.headers.items()}
        mdn_body = mdn.content
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
        mdn_url=mdn.mdn_url if mdn is not None and mdn.mdn_mode == "ASYNC" else None,
    )


#: How far into a multipart/signed body the signed part's own Content-Type is looked for.
_FIRST_PART = 4096


def looks_like_mdn(content_type: str, body: bytes) -> bool:
    """Whether a request with this Content-Type and body is an MDN rather than a message: a
    report, or a signature over a report (an AS2 message is encrypted, signed or plain data)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "multipart/report":
        return True
    return kind == "multipart/signed" and b"multipart/report" in body[:_FIRST_PART].lower()


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
