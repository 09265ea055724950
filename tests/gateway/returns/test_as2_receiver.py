"""The AS2 receiver inside a running gateway, with partners built from pyas2lib on loopback:
what is stored (durably, once), what is refused (and how it is answered), and that it keeps
serving. Interoperability with django-pyas2 and ``openssl cms`` is in tests/e2e."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.config import Config
from gateway.folders import Layout
from gateway.journal import JournalDB, journal_target
from gateway.returns.as2_receiver import ENVELOPE
from gateway.sandbox import pki
from protocols.as2 import message
from protocols.as2.settings import As2Settings
from protocols.certs import KeyPair
from tests.as2_config import build_message, mirror, respelled_headers, write_as2_config
from tests.e2e.sshd import free_port
from tests.gateway.harness import running

STATUS = b"<?xml version='1.0'?>\n<CPPStatut>not one of ours, stored all the same</CPPStatut>\n"


@pytest.fixture
def config(tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair) -> Config:
    return write_as2_config(
        tmp_path, our_keys, partner_keys, receiver_port=free_port(), max_file_size="10KB"
    )


def partner_view(config: Config, partner_keys: KeyPair, our_keys: KeyPair) -> As2Settings:
    ours: As2Settings = config.connections[0].settings
    return mirror(ours, partner_keys, our_keys)


def build(view: As2Settings, data: bytes, message_id: str, **headers: str) -> message.Outgoing:
    sent = build_message(view, data, message_id, filename="FEN1200A_0001.xml")
    return replace(sent, headers=sent.headers | headers)


async def post(config: Config, sent: message.Outgoing) -> tuple[int, dict[str, str], bytes]:
    assert config.as2_receiver is not None
    url = f"http://127.0.0.1:{config.as2_receiver.port}/as2"
    async with (
        aiohttp.ClientSession() as client,
        client.post(url, data=sent.body, headers=sent.headers) as answer,
    ):
        return answer.status, dict(answer.headers.items()), await answer.read()


def judged(view: As2Settings, sent: message.Outgoing, answer: Any) -> message.MdnReport:
    status, headers, body = answer
    assert status == 200, body
    return message.judge_mdn(
        message.organization(view), message.partner(view), sent, message.raw_http(headers, body)
    )


def stored(config: Config) -> list[dict[str, Any]]:
    db = JournalDB(journal_target(config, Layout(config.gateway.data_dir)))
    try:
        rows = db._db.execute("SELECT * FROM returns ORDER BY received_at").fetchall()
        return [dict(zip(row.keys(), row, strict=True)) for row in rows]
    finally:
        db.close()


def inbox(config: Config) -> list[Path]:
    return sorted(Layout(config.gateway.data_dir).inbox("qualif-as2").iterdir())


def test_a_message_is_stored_once_then_confirmed_and_a_repeat_is_a_duplicate(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    view = partner_view(config, partner_keys, our_keys)
    sent = build(view, STATUS, "m-1")

    async def scenario() -> tuple[Any, Any]:
        async with running(config):
            first = await post(config, sent)
            again = await post(config, sent)
            return first, again

    first, again = asyncio.run(scenario())

    report = judged(view, sent, first)
    assert report.outcome == "processed" and report.signed and report.mic == sent.mic
    repeat = judged(view, sent, again)
    assert repeat.duplicate
    (row,) = stored(config)
    (path,) = inbox(config)
    assert path.read_bytes() == STATUS and row["inbox_path"] == str(path)
    assert row["file"] == "FEN1200A_0001.xml"


@pytest.mark.parametrize(
    ("bend", "modifier"),
    [
        ("impostor signs", "authentication-failed"),
        ("encrypted for someone else", "decryption-failed"),
        ("unsigned", "insufficient-message-security"),
    ],
)
def test_a_message_that_cannot_be_trusted_gets_a_negative_mdn_and_is_not_stored(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair, bend: str, modifier: str
) -> None:
    view = partner_view(config, partner_keys, our_keys)
    stranger = pki.issue("stranger")
    if bend == "impostor signs":
        crooked = replace(view, keys=stranger)
    elif bend == "encrypted for someone else":
        crooked = replace(view, partner_chain=(stranger.certificate,))
    else:
        crooked = replace(view, signature="none", mdn="sync")
    sent = build(crooked, STATUS, "m-2")

    async def scenario() -> tuple[Any, Any]:
        async with running(config):
            refused = await post(config, sent)
            fine = await post(config, build(view, STATUS, "m-3"))  # still serving
            return refused, fine

    refused, fine = asyncio.run(scenario())

    status, _, body = refused
    assert status == 200 and modifier.encode() in body
    assert judged(view, build(view, STATUS, "m-3"), fine).outcome == "processed"
    assert [Path(r["inbox_path"]).read_bytes() for r in stored(config)] == [STATUS]


def test_unknown_partners_garbage_and_oversized_bodies_are_refused(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    view = partner_view(config, partner_keys, our_keys)
    unknown = build(replace(view, as2_from="STRANGER"), STATUS, "m-4")
    too_big = build(view, b"<x>" + b"0" * 20_000 + b"</x>", "m-5")  # over max_file_size 10KB
    garbage = replace(unknown, body=b"\x00garbage" * 10)
    no_as2 = replace(unknown, headers={"Content-Type": "text/plain"})

    async def scenario() -> list[Any]:
        async with running(config):
            return [await post(config, sent) for sent in (unknown, too_big, garbage, no_as2)]

    answers = asyncio.run(scenario())

    assert b"unknown-trading-partner" in answers[0][2]
    assert answers[1][0] == 413
    assert answers[2][0] == 200 and b"processed/Error" in answers[2][2]
    assert answers[3][0] == 400 and b"AS2-From and Message-ID are required" in answers[3][2]
    assert stored(config) == [] and inbox(config) == []


def test_messages_with_the_same_file_name_arriving_together_are_each_stored(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    view = partner_view(config, partner_keys, our_keys)
    documents = [STATUS.replace(b"stored", f"stored {i}".encode()) for i in range(6)]
    sent = [build(view, data, f"m-same-{i}") for i, data in enumerate(documents)]

    async def scenario() -> list[Any]:
        async with running(config):
            return await asyncio.gather(*(post(config, one) for one in sent))

    answers = asyncio.run(scenario())

    assert all(
        judged(view, s, a).outcome == "processed" for s, a in zip(sent, answers, strict=True)
    )
    assert sorted(p.read_bytes() for p in inbox(config)) == sorted(documents)
    assert len(stored(config)) == 6


def test_a_message_the_streaming_reader_does_not_cover_is_read_by_pyas2lib(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    view = replace(partner_view(config, partner_keys, our_keys), compress=True)
    sent = build(view, STATUS, "m-zip")

    async def scenario() -> Any:
        async with running(config):
            return await post(config, sent)

    with capture_logs() as logs:
        answer = asyncio.run(scenario())

    assert judged(view, sent, answer).outcome == "processed"
    (path,) = inbox(config)
    assert path.read_bytes() == STATUS
    (received,) = [e for e in logs if e["event"] == "as2.received"]
    assert received["reader"] == "pyas2lib" and "compressed" in received["fallback"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_while_it_streams_in(
    config: Config, our_keys: KeyPair, partner_keys: KeyPair, chunked: bool
) -> None:
    view = partner_view(config, partner_keys, our_keys)
    sent = build(view, STATUS, "m-huge")
    limit = config.gateway.max_file_size * 2 + ENVELOPE
    huge = sent.body + b"\0" * limit
    later = build(view, STATUS, "m-after")

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(huge), 65536):
            yield huge[at : at + 65536]

    async def scenario() -> tuple[tuple[int, bytes], tuple[int, dict[str, str], bytes]]:
        assert config.as2_receiver is not None
        url = f"http://127.0.0.1:{config.as2_receiver.port}/as2"
        async with running(config), aiohttp.ClientSession() as client:
            data = pieces() if chunked else huge
            async with client.post(url, data=data, headers=sent.headers) as answer:
                refused = answer.status, await answer.read()
            return refused, await post(config, later)

    (status, text), after = asyncio.run(scenario())

    assert status == 413 and b"too large" in text
    assert judged(view, later, after).outcome == "processed"
    assert len(stored(config)) == 1
    spool = Layout(config.gateway.data_dir).data_dir / "spool"
    assert [p for p in spool.iterdir() if p.is_file()] == []


# Each example starts a gateway: few examples, and no shrinking (the failing spelling is shown).
@settings(
    max_examples=6,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_header_names_in_any_case_are_read_as_the_same_names(
    our_keys: KeyPair, partner_keys: KeyPair, data: st.DataObject
) -> None:
    """RFC 9110 §5.1: a message whose AS2 and MIME header names are spelled in other cases
    (``As2-From`` as nodemailer writes it, ``MESSAGE-ID``, ``content-type``…) is stored once,
    byte-identical, and answered with the MDN it asks for; an MDN posted with a lower-case
    ``content-type`` is taken as an MDN, not as a message."""
    with tempfile.TemporaryDirectory() as folder:
        config = write_as2_config(
            Path(folder), our_keys, partner_keys, receiver_port=free_port(), max_file_size="10KB"
        )
        view = partner_view(config, partner_keys, our_keys)
        sent = build(view, STATUS, "m-case")
        spelled = replace(sent, headers=data.draw(respelled_headers(sent.headers)))
        stray_mdn = replace(
            sent,
            headers=data.draw(
                respelled_headers(
                    {
                        "Content-Type": "multipart/report; boundary=b; "
                        "report-type=disposition-notification",
                        "AS2-From": "CTAIFEP",
                        "AS2-To": "MYCOMPANY",
                        "Message-ID": "<mdn-1@partner.test>",
                    }
                )
            ),
            body=b"--b\r\nContent-Type: message/disposition-notification\r\n\r\n"
            b"Original-Message-ID: <nobody@raccord.test>\r\n"
            b"Disposition: automatic-action/MDN-sent-automatically; processed\r\n--b--\r\n",
        )

        async def scenario() -> tuple[Any, Any]:
            async with running(config):
                return await post(config, spelled), await post(config, stray_mdn)

        answer, mdn_answer = asyncio.run(scenario())

        report = judged(view, sent, answer)
        assert report.outcome == "processed" and report.signed and report.mic == sent.mic
        (path,) = inbox(config)
        assert path.read_bytes() == STATUS
        assert mdn_answer[0] == 400 and b"awaits an MDN" in mdn_answer[2]
