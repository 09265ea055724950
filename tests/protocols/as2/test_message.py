"""Building messages and judging MDNs: what proves delivery and what does not.

The partner here is pyas2lib itself, driven directly, so that each MDN can be bent in one way
(a MIC changed, a signature broken, an MDN for another message). Interoperability with other
implementations is proven in tests/e2e (django-pyas2, ``openssl cms``).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any

import pyas2lib
import pytest

from protocols.as2 import message
from protocols.as2.settings import As2Settings
from protocols.certs import KeyPair
from protocols.errors import ReceiptInvalid
from tests.as2_config import build_message, mirror

# LF and CRLF line ends, trailing spaces and a NUL: the partner must get these very bytes.
INVOICE = b"<?xml version='1.0'?>\n<Invoice>FA-2026-0001 \r\n</Invoice>\n\x00\n"


def _send(settings: As2Settings, data: bytes = INVOICE) -> message.Outgoing:
    return build_message(settings, data, "flow-0001")


def _partner_receives(
    settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair, sent: message.Outgoing
) -> tuple[pyas2lib.Message, str, Any]:
    """The partner parses our message the way an AS2 server does; returns its MDN too."""
    them = mirror(settings, partner_keys, our_keys)
    org = message.organization(them)
    us_as_seen = message.partner(them)
    received = pyas2lib.Message()
    status, _, mdn = received.parse(
        message.raw_http(sent.headers, sent.body),
        find_org_cb=lambda _name: org,
        find_partner_cb=lambda _name: us_as_seen,
    )
    return received, status, mdn


def _mdn_raw(mdn: Any) -> bytes:
    return message.raw_http({k: message.one_line(v) for k, v in mdn.headers.items()}, mdn.content)


def _judge(settings: As2Settings, sent: message.Outgoing, raw: bytes) -> message.MdnReport:
    return message.judge_mdn(message.organization(settings), message.partner(settings), sent, raw)


@pytest.mark.parametrize(
    ("encryption", "signature", "compress"),
    [
        ("aes_256_cbc", "sha256", False),
        ("aes_128_cbc", "sha1", True),
        ("aes_192_cbc", "sha384", False),
        ("tripledes", "sha512", False),
    ],
)
def test_the_partner_decrypts_verifies_and_confirms_our_mic(
    as2_settings: As2Settings,
    partner_keys: KeyPair,
    our_keys: KeyPair,
    encryption: str,
    signature: str,
    compress: bool,
) -> None:
    settings = replace(as2_settings, encryption=encryption, signature=signature, compress=compress)
    sent = _send(settings)

    received, status, mdn = _partner_receives(settings, partner_keys, our_keys, sent)
    report = _judge(settings, sent, _mdn_raw(mdn))

    assert status == "processed"
    assert received.content == INVOICE
    assert received.encrypted and received.signed and received.compressed == compress
    assert sent.message_id == "flow-0001@raccord.test"
    assert report.outcome == "processed" and report.signed
    assert report.mic_algorithm is not None
    assert (report.mic, report.mic_algorithm.replace("-", "")) == (sent.mic, signature)
    assert sent.headers["AS2-From"] == "MYCOMPANY" and sent.headers["AS2-To"] == "CTAIFEP"


def test_a_signed_mdn_with_another_mic_is_a_failure(
    as2_settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair
) -> None:
    sent = _send(as2_settings)
    received, _, _ = _partner_receives(as2_settings, partner_keys, our_keys, sent)
    received.mic = base64.b64encode(b"\0" * 32)  # the partner hashed other bytes
    lying = pyas2lib.Mdn(mdn_mode="SYNC", digest_alg="sha256")
    lying.build(message=received, status="processed")

    with pytest.raises(ReceiptInvalid, match=r"MIC mismatch for message flow-0001@raccord\.test"):
        _judge(as2_settings, sent, _mdn_raw(lying))


def test_a_signed_mdn_without_a_mic_proves_nothing(
    as2_settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair
) -> None:
    sent = _send(as2_settings)
    received, _, _ = _partner_receives(as2_settings, partner_keys, our_keys, sent)
    received.mic = None
    silent = pyas2lib.Mdn(mdn_mode="SYNC", digest_alg="sha256")
    silent.build(message=received, status="processed")

    with pytest.raises(ReceiptInvalid, match="carries no MIC"):
        _judge(as2_settings, sent, _mdn_raw(silent))


def test_an_mdn_altered_in_transit_fails_its_signature(
    as2_settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair
) -> None:
    sent = _send(as2_settings)
    _, _, mdn = _partner_receives(as2_settings, partner_keys, our_keys, sent)
    raw = _mdn_raw(mdn)
    assert sent.mic is not None
    tampered = raw.replace(sent.mic.encode(), base64.b64encode(b"\1" * 32), 1)
    assert tampered != raw

    with pytest.raises(ReceiptInvalid, match="does not verify with the partner's certificate"):
        _judge(as2_settings, sent, tampered)


def test_an_mdn_signed_by_someone_else_is_refused(
    as2_settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair
) -> None:
    from gateway.sandbox import pki

    impostor = pki.issue("CTAIFEP AS2")  # same name, other key
    sent = _send(as2_settings)
    # The impostor got the same message (encrypted for it) and signs a perfect MDN for it.
    copy = _send(replace(as2_settings, partner_chain=(impostor.certificate,)))
    _, _, mdn = _partner_receives(as2_settings, impostor, our_keys, copy)
    assert copy.message_id == sent.message_id and copy.mic == sent.mic

    with pytest.raises(ReceiptInvalid, match="does not verify with the partner's certificate"):
        _judge(as2_settings, sent, _mdn_raw(mdn))


def test_an_unsigned_mdn_is_refused_when_a_signed_one_was_asked(
    as2_settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair
) -> None:
    sent = _send(as2_settings)
    received, _, _ = _partner_receives(as2_settings, partner_keys, our_keys, sent)
    del received.payload["disposition-notification-options"]
    plain = pyas2lib.Mdn(mdn_mode="SYNC")
    plain.build(message=received, status="processed")

    with pytest.raises(ReceiptInvalid, match="not signed, and a signed one was asked"):
        _judge(as2_settings, sent, _mdn_raw(plain))


def test_an_mdn_for_another_message_is_refused(
    as2_settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair
) -> None:
    sent = _send(as2_settings)
    other = build_message(as2_settings, INVOICE, "flow-0002", mime_type="application/xml")
    _, _, mdn = _partner_receives(as2_settings, partner_keys, our_keys, other)

    with pytest.raises(ReceiptInvalid, match=r"answers message flow-0002@raccord\.test, not ours"):
        _judge(as2_settings, sent, _mdn_raw(mdn))


def test_an_answer_that_is_no_mdn_is_refused(as2_settings: As2Settings) -> None:
    sent = _send(as2_settings)
    html = message.raw_http({"Content-Type": "text/html"}, b"<html>Bad Gateway</html>")

    with pytest.raises(ReceiptInvalid, match="is not an MDN"):
        _judge(as2_settings, sent, html)


def test_negative_and_duplicate_dispositions_are_read(
    as2_settings: As2Settings, partner_keys: KeyPair, our_keys: KeyPair
) -> None:
    sent = _send(as2_settings)
    received, _, _ = _partner_receives(as2_settings, partner_keys, our_keys, sent)
    refused = pyas2lib.Mdn(mdn_mode="SYNC", digest_alg="sha256")
    refused.build(message=received, status="processed/Error", detailed_status="decryption-failed")
    received.mic = None
    duplicate = pyas2lib.Mdn(mdn_mode="SYNC", digest_alg="sha256")
    duplicate.build(
        message=received, status="processed/Warning", detailed_status="duplicate-document"
    )

    negative = _judge(as2_settings, sent, _mdn_raw(refused))
    again = _judge(as2_settings, sent, _mdn_raw(duplicate))

    assert (negative.outcome, negative.modifier, negative.positive) == (
        "error",
        "decryption-failed",
        False,
    )
    assert (again.outcome, again.duplicate, again.positive) == ("warning", True, True)
