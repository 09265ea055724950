"""Header names are case-insensitive (RFC 9110 §5.1): whatever case a partner spells them in
(``As2-From`` from nodemailer, ``as2-version``, ``MESSAGE-ID``…), the receiver reads the
message and answers the MDN it asks for, and the MDN reader reads an MDN, exactly as with the
usual spelling."""

from __future__ import annotations

import functools
import io
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sandbox import pki
from protocols.as2 import message
from protocols.as2.receiver import (
    Party,
    as2_sender,
    header_fields,
    looks_like_mdn,
    mdn_reference,
    open_file,
)
from protocols.as2.settings import As2Settings
from tests.as2_config import mirror, respelled_headers, stream_message

DATA = b"<?xml version='1.0'?>\n<Status>F-1\r\n<Note>Fa\xc3\xa7ade</Note></Status>\n"


@functools.cache
def sides() -> tuple[As2Settings, As2Settings]:
    """Our side and the partner's (keys made once: every example reuses them)."""
    ours, theirs = pki.issue("MYCOMPANY AS2"), pki.issue("CTAIFEP AS2")
    settings_ = As2Settings(
        url="http://127.0.0.1:1/",
        as2_from="MYCOMPANY",
        as2_to="CTAIFEP",
        keys=ours,
        partner_chain=(theirs.certificate,),
        partner_trust=(),
        key_path=Path("our.key"),
        partner_certificate_path=Path("partner.crt"),
        message_id_domain="raccord.test",
    )
    return settings_, mirror(settings_, theirs, ours)


@functools.cache
def sent() -> message.Outgoing:
    """One message from the partner: encrypted, signed, asking a signed synchronous MDN."""
    return stream_message(sides()[1], DATA, "case-1", filename="FEN1200A_0001.xml")


def receive(headers: Mapping[str, str], body: bytes, folder: Path) -> message.MdnReport:
    ours, theirs = sides()
    party = Party("qualif-as2", ours)
    inbound = open_file(
        headers,
        io.BytesIO(body),
        lambda to, frm: party if (to, frm) == ("MYCOMPANY", "CTAIFEP") else None,
        lambda *_: False,
        payload_dir=lambda _connection: folder,
        scratch=folder,
    )
    assert inbound.processed, inbound.error
    assert inbound.fallback is None  # the streaming reader read it, as with the usual names
    assert inbound.payload_file is not None and inbound.payload_file.read_bytes() == DATA
    assert (inbound.as2_from, inbound.as2_to) == ("CTAIFEP", "MYCOMPANY")
    assert inbound.message_id == sent().message_id
    assert inbound.mdn_headers is not None and inbound.mdn_body is not None
    assert inbound.mdn_url is None
    return message.judge_mdn(
        message.organization(theirs),
        message.partner(theirs),
        sent(),
        message.raw_http(inbound.mdn_headers, inbound.mdn_body),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_message_is_read_and_its_mdn_built_whatever_the_case_of_its_header_names(
    data: st.DataObject,
) -> None:
    headers = data.draw(respelled_headers(sent().headers))
    with tempfile.TemporaryDirectory() as folder:
        report = receive(headers, sent().body, Path(folder))
    # A signed MDN with our MIC: Disposition-Notification-To/-Options were read, whatever
    # their spelling.
    assert report.outcome == "processed" and report.signed and report.mic == sent().mic


@functools.cache
def mdn() -> tuple[dict[str, str], bytes]:
    """The signed MDN our side answers the partner's message with."""
    ours, _ = sides()
    party = Party("qualif-as2", ours)
    with tempfile.TemporaryDirectory() as folder:
        inbound = open_file(
            sent().headers,
            io.BytesIO(sent().body),
            lambda *_: party,
            lambda *_: False,
            payload_dir=lambda _connection: Path(folder),
            scratch=Path(folder),
        )
    assert inbound.mdn_headers is not None and inbound.mdn_body is not None
    return inbound.mdn_headers, inbound.mdn_body


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_an_mdn_is_recognised_and_judged_whatever_the_case_of_its_header_names(
    data: st.DataObject,
) -> None:
    headers, body = mdn()
    respelled_mdn = data.draw(respelled_headers(headers))
    raw = message.raw_http(respelled_mdn, body)
    fields = header_fields(respelled_mdn.items())
    assert looks_like_mdn(fields["content-type"], body)
    assert mdn_reference(raw) == sent().message_id
    assert as2_sender(raw) == "MYCOMPANY"
    _, theirs = sides()
    report = message.judge_mdn(message.organization(theirs), message.partner(theirs), sent(), raw)
    assert report.outcome == "processed" and report.signed and report.mic == sent().mic


@given(st.data())
def test_header_fields_keys_every_name_in_lower_case(data: st.DataObject) -> None:
    """What the gateway looks names up in: one key per name, whatever its spelling."""
    headers = {"AS2-From": "A", "Message-ID": "<m@x>", "Content-Type": "multipart/report"}
    fields = header_fields(data.draw(respelled_headers(headers)).items())
    assert fields == {"as2-from": "A", "message-id": "<m@x>", "content-type": "multipart/report"}
