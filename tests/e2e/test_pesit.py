"""raccord over PeSIT, the way an operator uses it: a ``protocol = "pesit"`` connection in the
configuration, invoices dropped in its outbox, the gateway delivering them to the strict test
responder (and resuming a broken transfer), ``raccord check --connect`` logging in."""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_module
from gateway.folders import Layout
from gateway.journal import JournalDB
from gateway.sandbox.pesit_partner import Account, PesitResponder
from protocols.base import Outbound, outcome_marker
from protocols.errors import ConnectError
from protocols.pesit.sender import PLUGIN
from tests.conftest import sample
from tests.e2e.conftest import check_connect
from tests.gateway.harness import (
    connection_toml,
    drop,
    filed,
    memory_config_text,
    rows,
    running,
    sidecar,
    until,
)

pytestmark = pytest.mark.e2e

CONNECTION = "qualif-pesit"


def _config(tmp_path: Path, port: int, password: str = "pw", **settings: object) -> Path:  # noqa: S107  # the test partner's password
    text = memory_config_text(tmp_path / "data", "unused") + connection_toml(
        CONNECTION,
        "pesit",
        {
            "host": "127.0.0.1",
            "port": port,
            "requester": "VFE057",
            "server": "CHORUSPRO",
            "password": password,
            "sync_interval": 4,
            "timeout": "3s",
            **settings,
        },
        interfaces={"FSO1100A": "complete", "FSO1106A": "partial"},
    )
    path = tmp_path / "raccord.toml"
    path.write_text(text)
    return path


def _invoice(number: str, padding: int = 0) -> bytes:
    body = sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())
    return body.replace(b"</Invoice>", b"<!--" + b"x" * padding + b"--></Invoice>")


def test_invoices_dropped_in_the_outbox_arrive_over_pesit(tmp_path: Path) -> None:
    invoices = {f"inv-{n}.xml": _invoice(f"PES-{n}", padding=n * 9000) for n in range(5)}

    async def scenario() -> None:
        responder = PesitResponder(tmp_path / "partner", {"VFE057": Account("pw")})
        async with responder:
            config = config_module.load(_config(tmp_path, responder.port))
            async with running(config):
                for name, data in invoices.items():
                    drop(config, name, data, CONNECTION)
                await until(filed(config, len(invoices)), what="every invoice filed")
            assert responder.violations == []
            held = {p.read_bytes() for p in responder.deposits.iterdir()}
            assert held == set(invoices.values())
            for row in rows(config):
                assert row.state == "sent", row
                receipt = sidecar(row, ".receipt.json")
                assert receipt["protocol"] == "pesit"
                assert receipt["partner_answer"]["file_name"] == "FSO1100A"
                assert (responder.deposits / receipt["remote_name"]).exists()

    asyncio.run(scenario())


def test_a_transfer_broken_mid_file_is_resumed_by_the_retry(tmp_path: Path) -> None:
    data = _invoice("PES-BIG", padding=200_000)

    async def scenario() -> None:
        responder = PesitResponder(tmp_path / "partner", {"VFE057": Account("pw")})
        async with responder:
            responder.faults.drop_after = 120_000
            # no in-session restart: the dispatcher's next attempt (a resend) must resume
            config = config_module.load(_config(tmp_path, responder.port, restarts=0))
            async with running(config):
                drop(config, "big.xml", data, CONNECTION)
                await until(filed(config, 1), what="the invoice filed")
            (row,) = rows(config)
            assert row.state == "sent", row
            assert row.attempts == 2
            ((_, point),) = responder.restarts
            assert point > 0
            assert responder.received_bytes < len(data) + 3 * 4096  # the start not sent again
            assert [p.read_bytes() for p in responder.deposits.iterdir()] == [data]
            assert sidecar(row, ".receipt.json")["partner_answer"]["restart_point"] == point

    asyncio.run(scenario())


def test_a_refused_login_files_the_invoice_in_error_with_what_to_do(tmp_path: Path) -> None:
    async def scenario() -> None:
        responder = PesitResponder(tmp_path / "partner", {"VFE057": Account("pw")})
        async with responder:
            config = config_module.load(_config(tmp_path, responder.port, password="bad"))
            async with running(config):
                drop(config, "a.xml", _invoice("PES-A"), CONNECTION)
                await until(filed(config, 1), what="the invoice filed")
            (row,) = rows(config)
            assert row.state == "error"
            error = sidecar(row, ".error.json")
            assert error["reason"] == "auth_failed"
            assert "diagnostic 301" in error["message"]
            assert "password" in error["message"]
            assert row.attempts == 1  # permanent: not retried

    asyncio.run(scenario())


def test_check_connect_logs_in_to_the_pesit_partner(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, str, int, str]:
        async with PesitResponder(tmp_path / "partner", {"VFE057": Account("pw")}) as responder:
            good = await asyncio.to_thread(check_connect, _config(tmp_path, responder.port))
            bad = await asyncio.to_thread(check_connect, _config(tmp_path, responder.port, "bad"))
        return good + bad

    ok_code, ok_out, bad_code, bad_out = asyncio.run(scenario())
    assert ok_code == 0, ok_out
    assert f"{CONNECTION}: pesit" in ok_out and "connect: ok" in ok_out
    assert "VFE057@127.0.0.1" in ok_out
    assert bad_code != 0
    assert "connect: FAILED" in bad_out and "diagnostic 301" in bad_out
    assert "bad" not in bad_out.split("FAILED", 1)[1]  # the password is never printed


def test_an_expired_tls_client_certificate_blocks_the_pesit_connection(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from gateway.ops import certificates
    from gateway.sandbox import pki

    old = pki.issue("VFE057", valid_from=datetime.now(UTC) - timedelta(days=30), days=10)
    cert = pki.write_certificates([old.certificate], tmp_path / "client.pem", "pem")
    key = pki.write_key(old, tmp_path / "client.key")
    path = _config(tmp_path, 4000, tls=True, client_certificate=cert, client_key=key)
    config = config_module.load(path)
    (item,) = certificates.by_connection(config)[CONNECTION]
    assert item.role == "TLS client" and item.source == cert
    blocked = certificates.blocking([item], datetime.now(UTC))
    assert blocked is not None
    assert blocked[0] == "certificate_expired" and str(cert) in blocked[1]


def test_return_flows_are_pulled_over_pesit_and_applied(tmp_path: Path) -> None:
    """The partner offers a life-cycle status that rejects one of the invoices sent; the read
    is cut mid-file once and resumed; the rejection lands in rejected/ and the partner's copy
    is gone only after it was stored."""
    from tests.gateway.returns.test_returns import cpp_statut

    async def scenario() -> None:
        responder = PesitResponder(tmp_path / "partner", {"VFE057": Account("pw")})
        async with responder:
            path = _config(
                tmp_path, responder.port, return_files=["FEN1200A"], poll_interval="200ms"
            )
            config = config_module.load(path)
            async with running(config):
                drop(config, "a.xml", _invoice("PES-RET-1"), CONNECTION)
                await until(filed(config, 1), what="the invoice sent")
                status = cpp_statut(invoices=(("PES-RET-1", "05"),))
                padded = status.replace(b"?>", b"?><!--" + b"p" * 20_000 + b"-->", 1)
                responder.faults.drop_read_after = 10_000
                (responder.returns / "FEN1200A_0001.xml").write_bytes(padded)
                layout = Layout(config.gateway.data_dir)
                await until(
                    lambda: any(layout.rejected(CONNECTION).glob("*.rejection.json")),
                    what="the rejection filed",
                )
                await until(lambda: not any(responder.returns.iterdir()), what="acknowledged")
            assert responder.violations == []
            assert [point for _, point in responder.read_restarts] == [2]
            (row,) = rows(config)
            db = JournalDB(layout.journal)
            try:
                (ret,) = db.returns()
                assert ret["state"] == "applied" and ret["file"] == "FEN1200A_0001.xml"
                assert db.invoices(row.flow_id)[0]["rejected"] == 1
            finally:
                db.close()
            (stored,) = layout.inbox(CONNECTION).iterdir()
            assert stored.read_bytes() == padded

    asyncio.run(scenario())


def _just_past_a_sync_point(number: str, points: int, extra: int) -> bytes:
    """An invoice of ``points`` × 4 KB + ``extra`` bytes: it ends just past a sync point."""
    base = len(_invoice(number))
    target = points * 4096 + extra
    invoice = _invoice(number, padding=target - base)  # base has the empty comment
    assert len(invoice) == target
    return invoice


def _tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, dict[str, Any]]:
    """A TLS server context demanding a client certificate, and the connection keys for it."""
    from gateway.sandbox import pki

    ca = pki.issue("test CA", ca=True)
    server = pki.issue("pesit.test", ca, dns_names=["pesit.test"])
    client = pki.issue("VFE057", ca)
    ca_file = pki.write_certificates([ca.certificate], tmp_path / "ca.pem", "pem")
    server_cert = pki.write_certificates([server.certificate], tmp_path / "server.pem", "pem")
    server_key = pki.write_key(server, tmp_path / "server.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    context.load_cert_chain(str(server_cert), str(server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    keys: dict[str, Any] = {
        "tls": True,
        "ca_bundle": ca_file,
        "client_certificate": pki.write_certificates(
            [client.certificate], tmp_path / "client.pem", "pem"
        ),
        "client_key": pki.write_key(client, tmp_path / "client.key"),
        "server_hostname": "pesit.test",
    }
    return context, keys


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_files_ending_just_past_a_sync_point_are_stored_exactly_once(
    tmp_path: Path, transport: str
) -> None:
    """Against a partner that overwrites a name it already holds (so a second delivery would
    show as a second store), invoices ending 1 to 300 bytes past a sync point are each stored
    exactly once: the late ACK(SYN) of the last sync point is never taken for the answer to
    TRANS.END, no ABORT is sent for a transfer the partner acknowledged, nothing is resumed."""
    invoices = {
        f"inv-{n}.xml": _just_past_a_sync_point(f"PES-SYNC-{n}", points=1 + n % 4, extra=1 + 37 * n)
        for n in range(9)
    }
    tls, keys = _tls_files(tmp_path) if transport == "tls" else (None, {})

    async def scenario() -> None:
        responder = PesitResponder(
            tmp_path / "partner",
            {"VFE057": Account("pw")},
            tls=tls,
            sync_interval_kb=4,
            sync_window=2,
            on_existing="overwrite",
            window_violation="idt",
        )
        async with responder:
            config = config_module.load(_config(tmp_path, responder.port, **keys))
            async with running(config):
                for name, data in invoices.items():
                    drop(config, name, data, CONNECTION)
                await until(filed(config, len(invoices)), what="every invoice filed")
            assert responder.violations == []
            assert responder.aborts == []
            assert responder.restarts == []
            assert sorted(responder.stores.values()) == [1] * len(invoices)
            held = {p.read_bytes() for p in responder.deposits.iterdir()}
            assert held == set(invoices.values())
            for row in rows(config):
                assert row.state == "sent", row
                assert row.attempts == 1
            # each transfer left a marker before its TRANS.END; filing removed them all
            assert os.listdir(Layout(config.gateway.data_dir).spool(CONNECTION)) == []

    asyncio.run(scenario())


def test_a_possibly_delivered_invoice_is_filed_with_what_to_check_not_sent_twice(
    tmp_path: Path,
) -> None:
    """The partner stores the invoice, the connection drops before its ACK(TRANS.END), and
    the resume is answered 214: with a partner that overwrites, raccord cannot tell, so the
    invoice goes to error/ saying what to check — stored once at the partner, not twice."""
    data = _just_past_a_sync_point("PES-UNSURE", points=2, extra=5)

    async def scenario() -> None:
        responder = PesitResponder(
            tmp_path / "partner", {"VFE057": Account("pw")}, on_existing="overwrite"
        )
        async with responder:
            responder.faults.drop_at_end = True
            config = config_module.load(_config(tmp_path, responder.port))
            async with running(config):
                drop(config, "a.xml", data, CONNECTION)
                await until(filed(config, 1), what="the invoice filed")
            assert list(responder.stores.values()) == [1]  # stored once, not twice
            (row,) = rows(config)
            assert row.state == "error"
            error = sidecar(row, ".error.json")
            assert error["unknown_outcome"] is True
            assert "diagnostic 214" in error["message"]
            assert "may have stored it" in error["message"]
            assert f"raccord retry {row.flow_id}" in error["message"]
            # filed: the sender's marker went with the file, nothing stays in the spool
            assert os.listdir(Layout(config.gateway.data_dir).spool(CONNECTION)) == []

    asyncio.run(scenario())


def test_a_daemon_restarted_after_the_partner_acknowledged_data_never_stores_it_twice(
    tmp_path: Path,
) -> None:
    """The daemon is killed after the overwriting partner stored the invoice but before its
    ACK(TRANS.END) reached raccord; the restarted daemon (a fresh sender: nothing in memory)
    resends it and the partner answers the resume with 214. The marker beside the spool file
    says the partner had acknowledged data: possibly delivered, stored exactly once."""
    data = _just_past_a_sync_point("PES-RESTART", points=2, extra=5)
    spool = tmp_path / "data" / "spool" / CONNECTION
    spool.mkdir(parents=True)
    path = spool / "0000000000000000000000abcd--a.xml"
    path.write_bytes(data)
    flow = Outbound("flow-restart", path, "FSO1100A_VFE057_a.xml", "FSO1100A", len(data), "")

    async def scenario() -> None:
        responder = PesitResponder(
            tmp_path / "partner", {"VFE057": Account("pw")}, on_existing="overwrite"
        )
        async with responder:
            config = config_module.load(_config(tmp_path, responder.port, restarts=0))
            (connection,) = (c for c in config.connections if c.name == CONNECTION)
            responder.faults.drop_at_end = True
            async with PLUGIN.create_sender(connection.settings) as before:
                with pytest.raises(ConnectError):
                    await before.send(flow)
            # restarted: a new sender, the flow's outcome unknown
            async with PLUGIN.create_sender(connection.settings) as after:
                with pytest.raises(ConnectError) as unsure:
                    await after.send(replace(flow, resend=True))
            assert not unsure.value.retryable
            assert "may have stored it" in str(unsure.value)
            assert list(responder.stores.values()) == [1]  # stored once, not twice
            assert responder.violations == []

    asyncio.run(scenario())
    assert outcome_marker(path, flow.flow_id).is_file()


def test_a_partner_interruption_puts_its_diagnostic_in_error_json(tmp_path: Path) -> None:
    """The partner interrupts the transfer (IDT, diagnostic 226 transfer refused): raccord
    answers ACK(IDT), not ABORT, and error.json names the diagnostic and what it means."""

    async def scenario() -> None:
        responder = PesitResponder(tmp_path / "partner", {"VFE057": Account("pw")})
        async with responder:
            responder.faults.idt_after = 5000
            responder.faults.idt_diagnostic = 226
            config = config_module.load(_config(tmp_path, responder.port))
            async with running(config):
                drop(config, "a.xml", _invoice("PES-IDT", padding=20_000), CONNECTION)
                await until(filed(config, 1), what="the invoice filed")
            assert responder.interruptions == [226]
            assert responder.aborts == []
            (row,) = rows(config)
            error = sidecar(row, ".error.json")
            assert error["reason"] == "refused"
            assert "diagnostic 226: transfer refused" in error["message"]
            assert "interrupted the transfer (IDT" in error["message"]

    asyncio.run(scenario())


def test_garbage_from_the_partner_is_filed_as_protocol_error_not_unreachable(
    tmp_path: Path,
) -> None:
    """The partner answers CONNECT with bytes that are no PeSIT: it was reached, so the
    invoice is filed as ``protocol_error`` naming the settings to compare, not
    ``unreachable``."""

    async def scenario() -> None:
        responder = PesitResponder(tmp_path / "partner", {"VFE057": Account("pw")})
        async with responder:
            responder.faults.garbage = True
            config = config_module.load(_config(tmp_path, responder.port))
            async with running(config):
                drop(config, "a.xml", _invoice("PES-GARBAGE"), CONNECTION)
                await until(filed(config, 1), what="the invoice filed")
            (row,) = rows(config)
            error = sidecar(row, ".error.json")
            assert error["reason"] == "protocol_error"
            assert "nsdu_header" in error["message"]

    asyncio.run(scenario())
