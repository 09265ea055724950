"""Outgoing AS2 messages and the MDNs that answer them, with pyas2lib; no I/O, no asyncio.

pyas2lib builds the MIME/CMS structure and checks the MDN's signature. It is lenient where a
gateway that handles money cannot be: a MIC that differs from ours is only a "warning" there,
and an MDN without a MIC passes. :func:`judge_mdn` reads the disposition itself and makes
both a failure (:class:`~protocols.errors.ReceiptInvalid`): a positive MDN proves delivery only
if it proves *what* was delivered.

Every function here is CPU work (CMS signing and encryption): callers run it in a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message as MimeMessage
from typing import Any

import pyas2lib

from protocols import certs
from protocols.as2.settings import ENCRYPTIONS, As2Settings
from protocols.errors import ReceiptInvalid

# pyas2lib logs whole payloads at DEBUG and tracebacks at ERROR on its own logger; raccord
# reports what matters through its own events.
logging.getLogger("pyas2lib").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Outgoing:
    """A built message: what to POST, and what the MDN must confirm."""

    message_id: str  # without angle brackets
    mic: str | None  # base64 digest of the signed content; None when unsigned
    mic_algorithm: str | None
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class MdnReport:
    """What a verified MDN says about one of our messages."""

    original_message_id: str
    outcome: str  # processed | warning | error | failed
    modifier: str  # e.g. "duplicate-document", "authentication-failed"; "" if none
    disposition: str  # the Disposition field as written
    mic: str | None
    mic_algorithm: str | None
    message_id: str | None  # the MDN's own Message-ID
    signed: bool

    @property
    def duplicate(self) -> bool:
        return self.outcome == "warning" and "duplicate" in self.modifier

    @property
    def positive(self) -> bool:
        return self.outcome in ("processed", "warning")


def organization(settings: As2Settings) -> pyas2lib.Organization:
    """Us, as pyas2lib sees us: our AS2 name, our key for signing and decrypting."""
    pem = settings.keys.pem()
    return pyas2lib.Organization(
        as2_name=settings.as2_from,
        sign_key=pem,
        decrypt_key=pem,
        mdn_url=settings.mdn_url,
        domain=settings.message_id_domain,
    )


def partner(settings: As2Settings) -> pyas2lib.Partner:
    """The partner, as pyas2lib sees it. Its chain is judged by :mod:`protocols.certs` (the
    sender refuses an expired or broken one), so pyas2lib's own chain check is off."""
    leaf = certs.to_pem([settings.partner_certificate])
    signs = settings.signature != "none"
    mdn_mode = None if settings.mdn == "none" else ("ASYNC" if settings.mdn_async else "SYNC")
    return pyas2lib.Partner(
        as2_name=settings.as2_to,
        verify_cert=leaf,
        encrypt_cert=leaf,
        validate_certs=False,
        compress=settings.compress,
        sign=signs,
        digest_alg=settings.signature if signs else "sha256",
        encrypt=settings.encryption != "none",
        enc_alg=ENCRYPTIONS[settings.encryption] or "aes_256_cbc",
        mdn_mode=mdn_mode,
        mdn_digest_alg=settings.signature if settings.mdn_signed else None,
    )


def build(
    org: pyas2lib.Organization,
    to: pyas2lib.Partner,
    data: bytes,
    *,
    message_id: str,
    filename: str,
    subject: str,
    mime_type: str,
) -> Outgoing:
    """Sign, compress, encrypt as the partner asks. ``message_id`` is the left-hand side: the
    same flow always gets the same Message-ID, so a resend can be recognised (RFC 4130 §5.5)."""
    message = pyas2lib.Message(sender=org, receiver=to)
    message.build(
        data,
        filename=filename,
        subject=subject,
        content_type=mime_type,
        message_id=message_id,
        disposition_notification_to="raccord@" + (org.domain or "raccord.invalid"),
    )
    headers = {name: one_line(value) for name, value in message.headers.items()}
    return Outgoing(
        message_id=message.message_id,
        mic=message.mic.decode("ascii") if message.mic else None,
        mic_algorithm=message.digest_alg if message.mic else None,
        headers=headers,
        body=message.content,
    )


def one_line(value: Any) -> str:
    """A header value as HTTP carries it: folded lines joined."""
    return " ".join(str(value).split())


def raw_http(headers: Mapping[str, str], body: bytes) -> bytes:
    """HTTP headers and body as one MIME document, the form pyas2lib parses."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return head.encode("utf-8", "replace") + b"\r\n" + body


def judge_mdn(
    org: pyas2lib.Organization,
    to: pyas2lib.Partner,
    sent: Outgoing,
    raw: bytes,
) -> MdnReport:
    """Verify an MDN that answers ``sent`` and read its disposition.

    Raises:
        ReceiptInvalid: not an MDN; an MDN for another message; unsigned when a signed one was
            asked; a signature that does not verify with the partner's certificate; a positive
            disposition whose MIC is missing or differs from ours.
    """
    original = pyas2lib.Message(sender=org, receiver=to)
    original.message_id = sent.message_id
    original.mic = sent.mic.encode("ascii") if sent.mic else None
    asked_for: list[str] = []

    def find(message_id: str, _recipient: str) -> pyas2lib.Message | None:
        asked_for.append(message_id)
        return original if message_id == sent.message_id else None

    mdn = pyas2lib.Mdn()
    status, detail = mdn.parse(raw, find)
    if detail == "mdn-not-found":
        raise ReceiptInvalid(f"the partner's answer to message {sent.message_id} is not an MDN")
    if asked_for and asked_for[0] != sent.message_id:
        raise ReceiptInvalid(
            f"the MDN answers message {asked_for[0]}, not ours ({sent.message_id})"
        )
    if status == "failed/Failure" and detail:
        if detail.startswith("Expected signed MDN"):
            raise ReceiptInvalid(
                f"the MDN for message {sent.message_id} is not signed, and a signed one was asked"
            )
        if detail.startswith("Failed to parse received MDN"):
            why = detail.removeprefix("Failed to parse received MDN. ")
            raise ReceiptInvalid(
                f"the MDN for message {sent.message_id} is unreadable or does not verify with "
                f"the partner's certificate: {why}"
            )
    fields = _disposition_part(mdn.payload)
    if fields is None:
        raise ReceiptInvalid(f"the MDN for message {sent.message_id} has no disposition")
    disposition = str(fields.get("Disposition", ""))
    outcome, modifier = _outcome(disposition)
    mic, algorithm = _mic(str(fields.get("Received-Content-MIC", "")))
    report = MdnReport(
        original_message_id=sent.message_id,
        outcome=outcome,
        modifier=modifier,
        disposition=disposition,
        mic=mic,
        mic_algorithm=algorithm,
        message_id=mdn.message_id,
        signed=_signed(raw),
    )
    if report.positive and not report.duplicate and sent.mic is not None:
        _check_mic(sent, report)
    return report


def _check_mic(sent: Outgoing, report: MdnReport) -> None:
    if report.mic is None:
        raise ReceiptInvalid(
            f"the MDN for signed message {sent.message_id} carries no MIC: it does not prove "
            "what the partner received; check with the partner before sending again"
        )
    same_algorithm = _algorithm(report.mic_algorithm) == _algorithm(sent.mic_algorithm)
    if report.mic != sent.mic or not same_algorithm:
        raise ReceiptInvalid(
            f"MIC mismatch for message {sent.message_id}: the partner computed "
            f"{report.mic} ({report.mic_algorithm}), we computed {sent.mic} "
            f"({sent.mic_algorithm}); the partner may have received altered content"
        )


def _disposition_part(payload: MimeMessage | None) -> MimeMessage | None:
    if payload is None:
        return None
    for part in payload.walk():
        if part.get_content_type() == "message/disposition-notification":
            fields = part.get_payload()
            if isinstance(fields, list) and fields:
                # The report's fields parse as one or two header blocks (per-message, then
                # per-recipient); Disposition is in the last.
                merged = MimeMessage()
                for block in fields:
                    if not isinstance(block, MimeMessage):
                        continue
                    for name, value in block.items():
                        merged[name] = value
                return merged
    return None


def _outcome(disposition: str) -> tuple[str, str]:
    """``"automatic-action/MDN-sent-automatically; processed/warning: duplicate-document"``
    → ``("warning", "duplicate-document")``."""
    value = disposition.rsplit(";", 1)[-1].strip().lower()
    kind, _, modifier = value.partition(":")
    kind = kind.strip()
    if kind == "processed":
        return "processed", modifier.strip()
    if kind.startswith("processed/warning"):
        return "warning", modifier.strip()
    if kind.startswith("processed/error"):
        return "error", modifier.strip() or "error"
    return "failed", (modifier.strip() or kind or "no disposition")


def _mic(value: str) -> tuple[str | None, str | None]:
    digest, _, algorithm = value.partition(",")
    digest, algorithm = digest.strip(), algorithm.strip()
    return (digest or None), (algorithm or None)


def _algorithm(name: str | None) -> str:
    return (name or "").lower().replace("-", "")


def _signed(raw: bytes) -> bool:
    head = raw.split(b"\r\n\r\n", 1)[0].lower()
    return b"multipart/signed" in head
