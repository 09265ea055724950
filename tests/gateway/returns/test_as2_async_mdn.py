"""Asynchronous MDNs: the gateway sends, the partner answers HTTP 200 and posts its MDN later to
our receiver, which settles the waiting flow. The partner here is pyas2lib on loopback (its side
of the connection), so that the MDN can be delayed, bent or forged; django-pyas2 doing the same
is in tests/e2e/test_as2.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.config import Config
from gateway.ops.httpserver import serve
from protocols.as2 import message
from protocols.as2.receiver import Inbound, Party, open_message
from protocols.certs import KeyPair
from tests.as2_config import mirror, write_as2_config
from tests.conftest import sample
from tests.e2e.sshd import free_port
from tests.gateway.harness import drop, filed, rows, running, sidecar, until

INVOICE = sample("ubl-invoice.xml")


@dataclass
class Partner:
    """Takes our messages, answers HTTP 200 and keeps the MDN each one asked for."""

    party: Party
    taken: list[Inbound] = field(default_factory=list)
    url: str = ""

    async def receive(self, request: web.Request) -> web.Response:
        raw = message.raw_http(dict(request.headers.items()), await request.read())
        inbound = await asyncio.to_thread(
            open_message, raw, lambda _to, _from: self.party, lambda _mid, _sender: False
        )
        self.taken.append(inbound)
        return web.Response(text="accepted; the MDN follows\n")

    async def post_mdn(self, *, bend: bytes = b"", as2_from: str | None = None) -> int:
        """Post the MDN of the last message taken to where it asked (its MIC bent if asked)."""
        inbound = self.taken[-1]
        assert inbound.mdn_url is not None and inbound.mdn_headers is not None
        assert inbound.mdn_body is not None
        headers = dict(inbound.mdn_headers)
        if as2_from is not None:
            headers["AS2-From"] = as2_from
        body = inbound.mdn_body
        if bend:
            mic = body.split(b"Received-content-MIC: ", 1)[1].split(b",", 1)[0]
            body = body.replace(mic, bend)
        async with (
            aiohttp.ClientSession() as client,
            client.post(inbound.mdn_url, data=body, headers=headers) as answer,
        ):
            return answer.status


@asynccontextmanager
async def partner_for(
    config: Config, partner_keys: KeyPair, our_keys: KeyPair
) -> AsyncIterator[Partner]:
    ours = config.connections[0].settings
    partner = Partner(Party("partner", mirror(ours, partner_keys, our_keys)))
    app = web.Application()
    app.router.add_post("/as2", partner.receive)
    port = int(ours.url.rsplit(":", 1)[1].split("/", 1)[0])
    runner, _ = await serve(app, "127.0.0.1", port)
    try:
        yield partner
    finally:
        await runner.cleanup()


def awaiting(config: Config) -> bool:
    found = rows(config)
    return bool(found) and all(r.state == "awaiting_receipt" for r in found)


def make_config(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair, mdn: str, wait: str
) -> Config:
    port = free_port()
    return write_as2_config(
        tmp_path,
        our_keys,
        partner_keys,
        url=f"http://127.0.0.1:{free_port()}/as2",
        receiver_port=port,
        as2_extra=(
            f'mdn = "{mdn}"\nmdn_url = "http://127.0.0.1:{port}/as2"\nasync_mdn_wait = "{wait}"'
        ),
    )


@pytest.mark.parametrize("mdn", ["async-signed", "async"])
def test_the_partners_later_mdn_files_the_flow_in_sent(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair, mdn: str
) -> None:
    config = make_config(tmp_path, our_keys, partner_keys, mdn, "1h")

    async def scenario() -> int:
        async with partner_for(config, partner_keys, our_keys) as partner, running(config):
            drop(config, "facture.xml", INVOICE)
            await until(lambda: awaiting(config), what="the flow awaiting its MDN")
            (inbound,) = partner.taken
            assert inbound.processed and inbound.payload == INVOICE
            status = await partner.post_mdn()
            await until(filed(config, 1), what="the flow filed")
            return status

    assert asyncio.run(scenario()) == 200
    (row,) = rows(config)
    assert row.state == "sent", row.message
    answer = sidecar(row, ".receipt.json")["partner_answer"]
    assert answer["message_id"] == f"{row.flow_id}@raccord.test" == row.receipt_key
    assert answer["mdn_disposition"].endswith("processed")
    assert answer["mdn_mic"] == answer["mic"] and answer["mdn_signed"] == (mdn == "async-signed")
    assert answer["mdn_mode"] == mdn and answer["mdn_received_at"] > answer["answered_at"]


def test_an_mdn_with_another_mic_fails_the_flow(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    config = make_config(tmp_path, our_keys, partner_keys, "async", "1h")

    async def scenario() -> None:
        async with partner_for(config, partner_keys, our_keys) as partner, running(config):
            drop(config, "facture.xml", INVOICE)
            await until(lambda: awaiting(config), what="the flow awaiting its MDN")
            assert (
                await partner.post_mdn(bend=b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=") == 200
            )
            await until(filed(config, 1), what="the flow filed")

    asyncio.run(scenario())
    (row,) = rows(config)
    assert (row.state, row.reason) == ("error", "receipt_invalid")
    assert "MIC mismatch" in (row.message or "")


def test_an_mdn_from_someone_else_is_refused_and_the_flow_waits_for_the_real_one(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    config = make_config(tmp_path, our_keys, partner_keys, "async-signed", "1h")

    async def scenario() -> tuple[int, int]:
        async with partner_for(config, partner_keys, our_keys) as partner, running(config):
            drop(config, "facture.xml", INVOICE)
            await until(lambda: awaiting(config), what="the flow awaiting its MDN")
            forged = await partner.post_mdn(as2_from="SOMEONE")
            assert awaiting(config)  # answered only once decided: ignored, still waiting
            real = await partner.post_mdn()
            await until(filed(config, 1), what="the flow filed")
            return forged, real

    assert asyncio.run(scenario()) == (403, 200)
    assert rows(config)[0].state == "sent"


def test_no_mdn_in_time_files_the_flow_in_error_and_a_late_one_changes_nothing(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    config = make_config(tmp_path, our_keys, partner_keys, "async-signed", "500ms")

    async def scenario() -> int:
        async with partner_for(config, partner_keys, our_keys) as partner, running(config):
            drop(config, "facture.xml", INVOICE)
            await until(filed(config, 1), what="the wait over")
            return await partner.post_mdn()

    assert asyncio.run(scenario()) == 200
    (row,) = rows(config)
    assert (row.state, row.reason) == ("error", "receipt_timeout")
    error = sidecar(row, ".error.json")
    assert f"raccord retry {row.flow_id}" in error["message"]
    assert Path(row.final_path or "").read_bytes() == INVOICE


def test_garbage_posted_as_an_mdn_is_refused(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    config = make_config(tmp_path, our_keys, partner_keys, "async-signed", "1h")
    assert config.as2_receiver is not None
    url = f"http://127.0.0.1:{config.as2_receiver.port}/as2"
    headers = {
        "AS2-From": "CTAIFEP",
        "AS2-To": "MYCOMPANY",
        "Message-ID": "<mdn-1@partner.test>",
        "Content-Type": 'multipart/report; report-type=disposition-notification; boundary="b"',
    }

    async def scenario() -> int:
        async with (
            running(config),
            aiohttp.ClientSession() as client,
            client.post(url, data=b"--b\r\nnot a report\r\n--b--\r\n", headers=headers) as answer,
        ):
            return answer.status

    assert asyncio.run(scenario()) == 400
