"""The streaming AS2 builder: what it makes is read back by pyas2lib as the partner (payload,
file name, MIC in the MDN), it never holds the payload in memory, and it leaves to pyas2lib
what it does not cover. OpenSSL's reading of it is in tests/e2e/test_as2_openssl.py."""

from __future__ import annotations

import io
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from protocols.as2 import message, stream
from protocols.as2.receiver import Party, open_message
from protocols.as2.settings import As2Settings
from protocols.certs import KeyPair
from tests.as2_config import mirror, stream_message

DATA = b"<?xml version='1.0'?>\n<Invoice>F-1 \r\n<Note>Fa\xc3\xa7ade</Note>\r</Invoice>\n\x00\xff"


def partner_reads(
    settings: As2Settings, sent: message.Outgoing, our_keys: KeyPair, partner_keys: KeyPair
) -> tuple[bytes | None, str | None, message.MdnReport | None]:
    """What the partner (pyas2lib, with the mirrored settings) gets, and its MDN judged."""
    party = Party("partner", mirror(settings, partner_keys, our_keys))
    inbound = open_message(
        message.raw_http(sent.headers, sent.body), lambda _to, _from: party, lambda *_: False
    )
    assert inbound.processed, (inbound.status, inbound.error)
    report = None
    if inbound.mdn_headers is not None and inbound.mdn_body is not None:
        report = message.judge_mdn(
            message.organization(settings),
            message.partner(settings),
            sent,
            message.raw_http(inbound.mdn_headers, inbound.mdn_body),
        )
    return inbound.payload, inbound.filename, report


@pytest.mark.parametrize("encryption", ["aes_256_cbc", "aes_192_cbc", "aes_128_cbc", "tripledes"])
@pytest.mark.parametrize("signature", ["sha256", "sha384", "sha512", "sha1"])
def test_the_partner_reads_every_cipher_and_digest_and_returns_our_mic(
    as2_settings: As2Settings,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    encryption: str,
    signature: str,
) -> None:
    settings = replace(as2_settings, encryption=encryption, signature=signature)

    sent = stream_message(settings, DATA, "f-1", filename="FSO1100A_f-1.xml")

    payload, filename, report = partner_reads(settings, sent, our_keys, partner_keys)
    assert payload == DATA and filename == "FSO1100A_f-1.xml"
    assert sent.message_id == "f-1@raccord.test" and sent.mic_algorithm == signature
    assert report is not None and report.outcome == "processed" and report.mic == sent.mic
    assert sent.headers["Content-Type"].startswith("application/pkcs7-mime")


@pytest.mark.parametrize(
    ("encryption", "signature", "content_type"),
    [
        ("none", "sha256", "multipart/signed"),
        ("aes_256_cbc", "none", "application/pkcs7-mime"),
        ("none", "none", "application/octet-stream"),
    ],
)
def test_unsigned_or_unencrypted_messages_are_read_too(
    as2_settings: As2Settings,
    our_keys: KeyPair,
    partner_keys: KeyPair,
    encryption: str,
    signature: str,
    content_type: str,
) -> None:
    mdn = "sync-signed" if signature != "none" else "sync"
    settings = replace(as2_settings, encryption=encryption, signature=signature, mdn=mdn)

    sent = stream_message(settings, DATA, "f-2", filename="Facture été.xml")

    payload, filename, report = partner_reads(settings, sent, our_keys, partner_keys)
    assert payload == DATA and filename == "Facture été.xml"
    assert sent.headers["Content-Type"].startswith(content_type)
    assert report is not None and report.positive
    assert (sent.mic is None) == (signature == "none")
    if signature == encryption == "none":
        assert sent.body == DATA  # the bytes themselves, no envelope


def test_a_boundary_found_in_the_payload_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
    as2_settings: As2Settings,
    our_keys: KeyPair,
    partner_keys: KeyPair,
) -> None:
    boundaries = iter(["in-the-payload", "fresh-one"])
    monkeypatch.setattr(stream, "_boundary", lambda: next(boundaries))
    data = b"first half\r\n--in-the-payload\r\nsecond half\n"
    settings = replace(as2_settings, encryption="none")

    sent = stream_message(settings, data, "f-3")

    assert 'boundary="fresh-one"' in sent.headers["Content-Type"]
    payload, _, report = partner_reads(settings, sent, our_keys, partner_keys)
    assert payload == data and report is not None and report.mic == sent.mic


def test_the_payload_is_never_held_in_memory(tmp_path: Path, as2_settings: As2Settings) -> None:
    size = 8 * stream.CHUNK
    source = tmp_path / "big.xml"
    with source.open("wb") as out:
        for index in range(size // 4096):
            out.write(index.to_bytes(4, "big") * 1024)

    class Sink(io.RawIOBase):
        """A file that keeps only a count (what is written is not held here either)."""

        written = 0

        def writable(self) -> bool:
            return True

        def write(self, data: bytes) -> int:  # type: ignore[override]
            self.written += len(data)
            return len(data)

        def tell(self) -> int:
            return self.written

    sink = Sink()
    tracemalloc.start()
    try:
        built = stream.build(
            as2_settings,
            source,
            cast(BinaryIO, sink),
            message_id="big",
            filename="big.xml",
            subject="big",
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert built.size == sink.written > size
    assert peak < 4 * stream.CHUNK, f"peak {peak} bytes for a {size}-byte payload"


def test_what_it_does_not_cover_is_left_to_pyas2lib(as2_settings: As2Settings) -> None:
    assert stream.handles(as2_settings)
    assert not stream.handles(replace(as2_settings, compress=True))
    assert not stream.handles(replace(as2_settings, content_type="application/xml"))
