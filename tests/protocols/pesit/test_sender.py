"""The PeSIT sender against the strict test responder on loopback: deliveries, restarts,
refusals and every fault ending in a clear error within its timers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.sandbox import pki
from gateway.sandbox.pesit_partner import Account, PesitResponder
from protocols import base
from protocols.base import Outbound, outcome_marker
from protocols.errors import (
    AuthenticationError,
    CertificateError,
    ConnectError,
    HostKeyError,
    ProtocolError,
    RemoteBusy,
    RemoteNameConflict,
    TransferError,
    TransferTimeout,
)
from protocols.pesit.sender import PesitSender, PesitSettings, parse_settings, transfer_id
from protocols.settings import Secret, Section, SettingsError

PASSWORD = "s3cret"


def _flow(tmp_path: Path, data: bytes, name: str = "a", **changes: Any) -> Outbound:
    path = tmp_path / f"{name}.xml"
    path.write_bytes(data)
    flow = Outbound(
        flow_id=f"flow-{name}",
        path=path,
        remote_name=f"FSO1100A_VFE056_{name}.xml",
        interface_code="FSO1100A",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return replace(flow, **changes)


def _settings(responder: PesitResponder, **changes: Any) -> PesitSettings:
    base = PesitSettings(
        host="127.0.0.1",
        port=responder.port,
        requester="VFE056",
        server="CHORUSPRO",
        password=Secret(PASSWORD, "literal"),
        sync_interval=4,
        sync_window=2,
        entity_size=4096,
        timeout=2.0,
        connect_timeout=2.0,
        nsdu_header=responder.nsdu_header,
        pre_connection=responder.pre_connection,
    )
    return replace(base, **changes)


def _responder(tmp_path: Path, **options: Any) -> PesitResponder:
    return PesitResponder(tmp_path / "partner", {"VFE056": Account(PASSWORD)}, **options)


async def _send(settings: PesitSettings, flow: Outbound) -> Any:
    async with PesitSender(settings) as sender:
        return await sender.send(flow)


@pytest.mark.parametrize(
    ("label", "responder_options", "sender_changes"),
    [
        ("plain", {}, {}),
        ("no entity header, pre-connection", {"nsdu_header": False, "pre_connection": True}, {}),
        ("multi-article", {}, {"multi_article": True, "article_length": 300}),
        ("segmented articles", {"entity_size": 1024}, {"article_length": 5000}),
        ("no sync points", {}, {"sync_interval": 0}),
    ],
)
def test_files_arrive_intact(
    tmp_path: Path, label: str, responder_options: dict[str, Any], sender_changes: dict[str, Any]
) -> None:
    data = os.urandom(50_000)

    async def scenario() -> None:
        async with _responder(tmp_path, **responder_options) as responder:
            settings = _settings(responder, **sender_changes)
            async with PesitSender(settings) as sender:
                first = await sender.send(_flow(tmp_path, data, "a"))
                second = await sender.send(_flow(tmp_path, b"<Invoice/>", "b"))
            assert responder.violations == []
            assert responder.connections == 1  # one session carried both files
        held = tmp_path / "partner" / "depot"
        assert (held / "FSO1100A_VFE056_a.xml").read_bytes() == data
        assert (held / "FSO1100A_VFE056_b.xml").read_bytes() == b"<Invoice/>"
        assert first.details["file_name"] == "FSO1100A"
        assert first.details["transfer_id"] == transfer_id("flow-a")
        assert not second.already_delivered
        if settings.sync_interval:
            assert first.details["sync_points"] == len(data) // (settings.sync_interval * 1024)

    asyncio.run(scenario())


def test_a_dropped_connection_resumes_from_the_last_acknowledged_sync_point(
    tmp_path: Path,
) -> None:
    data = os.urandom(100_000)
    interval = 4 * 1024

    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            responder.faults.drop_after = 61_000
            receipt = await _send(_settings(responder), _flow(tmp_path, data))
            assert responder.violations == []
            ((ident, point),) = responder.restarts
            assert ident == transfer_id("flow-a")
            assert receipt.details["restart_point"] == point
            assert receipt.details["reconnects"] == 1
            # resumed from the sync point the responder had secured before the drop …
            dropped_at = responder.dropped_at
            assert dropped_at is not None
            assert point * interval <= dropped_at < (point + 1 + 2) * interval  # window of 2
            assert receipt.details["resumed_at"] == point * interval
            # … so only the bytes after it were sent again
            assert responder.received_bytes - len(data) == dropped_at - point * interval

    asyncio.run(scenario())
    assert (tmp_path / "partner" / "depot" / "FSO1100A_VFE056_a.xml").read_bytes() == data


def test_a_resend_after_a_daemon_restart_resumes_the_same_transfer(tmp_path: Path) -> None:
    data = os.urandom(80_000)

    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            responder.faults.drop_after = 50_000
            with pytest.raises(ConnectError, match="resume from the last acknowledged") as lost:
                await _send(_settings(responder, restarts=0), _flow(tmp_path, data))
            assert lost.value.retryable
            # a new daemon: nothing in memory, the flow comes back as a resend
            receipt = await _send(_settings(responder), _flow(tmp_path, data, resend=True))
            assert receipt.details["restart_point"] > 0
            assert responder.received_bytes - len(data) < 4 * 1024 * 3
            assert responder.violations == []

    asyncio.run(scenario())
    assert (tmp_path / "partner" / "depot" / "FSO1100A_VFE056_a.xml").read_bytes() == data


@pytest.mark.parametrize("restarts", [3, 0])
def test_a_connection_lost_after_the_partner_stored_the_file_is_no_conflict(
    tmp_path: Path, restarts: int
) -> None:
    """The ACK(TRANS.END) is lost on a kept session: the file is at the partner. The retry,
    in the same send or the dispatcher's resend, must say so, not report a name conflict."""
    data = os.urandom(30_000)

    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            settings = _settings(responder, restarts=restarts)
            async with PesitSender(settings) as sender:
                await sender.send(_flow(tmp_path, b"<Invoice>0</Invoice>", "first"))
                responder.faults.drop_at_end = True  # the next transfer, on the kept session
                flow = _flow(tmp_path, data)
                if restarts:
                    receipt = await sender.send(flow)
                else:
                    with pytest.raises(ConnectError) as lost:
                        await sender.send(flow)
                    assert lost.value.retryable
                    receipt = await sender.send(replace(flow, resend=True))
            assert receipt.already_delivered
            assert responder.violations == []

    asyncio.run(scenario())
    assert (tmp_path / "partner" / "depot" / "FSO1100A_VFE056_a.xml").read_bytes() == data


def test_resends_never_deliver_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            settings = _settings(responder)
            await _send(settings, _flow(tmp_path, b"<Invoice>1</Invoice>"))
            again = await _send(settings, _flow(tmp_path, b"<Invoice>1</Invoice>", resend=True))
            assert again.already_delivered
            # a resend the partner never heard of is sent anew (diagnostic 214, then CREATE)
            fresh = await _send(
                settings, _flow(tmp_path, b"<Invoice>2</Invoice>", "b", resend=True)
            )
            assert not fresh.already_delivered
            with pytest.raises(RemoteNameConflict, match="diagnostic 204") as conflict:
                await _send(settings, _flow(tmp_path, b"<Invoice>3</Invoice>", "a"))
            assert not conflict.value.retryable

    asyncio.run(scenario())
    assert (tmp_path / "partner" / "depot" / "FSO1100A_VFE056_a.xml").read_bytes() == (
        b"<Invoice>1</Invoice>"
    )


def test_a_refused_login_is_permanent_and_says_what_to_check(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            settings = _settings(responder, password=Secret("wrong", "literal"))
            with pytest.raises(AuthenticationError, match="diagnostic 301") as refused:
                await _send(settings, _flow(tmp_path, b"x"))
            assert not refused.value.retryable
            assert "password" in str(refused.value)
            assert "wrong" not in str(refused.value)

    asyncio.run(scenario())


def test_a_pre_connection_refusal_is_an_authentication_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _responder(tmp_path, pre_connection=True) as responder:
            settings = _settings(responder, password=Secret("wrong", "literal"))
            with pytest.raises(AuthenticationError, match="NAK0"):
                await _send(settings, _flow(tmp_path, b"x"))

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("withhold_ack_sync", TransferTimeout, "ACK\\(SYN\\)"),
        ("silent", TransferTimeout, "ACONNECT"),
    ],
)
def test_a_misbehaving_partner_ends_in_a_retryable_error_within_the_timer(
    tmp_path: Path, fault: str, error: type[TransferError], message: str
) -> None:
    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            setattr(responder.faults, fault, True)
            started = time.monotonic()
            with pytest.raises(error, match=message) as caught:
                await _send(_settings(responder, timeout=1.0), _flow(tmp_path, os.urandom(40_000)))
            assert caught.value.retryable
            assert time.monotonic() - started < 1.0 * 4 + 2  # Tp per restart attempt, no hang

    asyncio.run(scenario())
    assert not (tmp_path / "partner" / "depot" / "FSO1100A_VFE056_a.xml").exists()


def test_garbage_from_a_partner_it_reached_is_a_protocol_error_not_unreachable(
    tmp_path: Path,
) -> None:
    """The partner answered: the network is fine, what it says is the problem (often a
    setting: the entity header, the pre-connection, TLS), so the reason says so."""

    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            responder.faults.garbage = True
            with pytest.raises(ProtocolError, match="broke the protocol") as caught:
                await _send(_settings(responder, timeout=1.0), _flow(tmp_path, b"x"))
            assert caught.value.reason == "protocol_error"
            assert "nsdu_header" in str(caught.value)

    asyncio.run(scenario())


def test_an_unreachable_partner_is_retryable(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _responder(tmp_path) as responder:
            settings = _settings(responder)  # the port it listened on, closed now
        with pytest.raises(ConnectError) as caught:
            await _send(settings, _flow(tmp_path, b"x"))
        assert caught.value.retryable

    asyncio.run(scenario())


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    ca = pki.issue("test CA", ca=True)
    server = pki.issue("pesit.test", ca, dns_names=["pesit.test"])
    client = pki.issue("VFE056", ca)
    ca_file = pki.write_certificates([ca.certificate], tmp_path / "ca.pem", "pem")
    server_cert = pki.write_certificates([server.certificate], tmp_path / "server.pem", "pem")
    server_key = pki.write_key(server, tmp_path / "server.key")
    client_cert = pki.write_certificates([client.certificate], tmp_path / "client.pem", "pem")
    client_key = pki.write_key(client, tmp_path / "client.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    context.load_cert_chain(str(server_cert), str(server_key))
    context.verify_mode = ssl.CERT_REQUIRED  # the partner demands our certificate

    async def scenario() -> None:
        async with _responder(tmp_path, tls=context) as responder:
            good = _settings(
                responder,
                tls=True,
                ca_bundle=ca_file,
                client_certificate=client_cert,
                client_key=client_key,
                server_hostname="pesit.test",
            )
            await _send(good, _flow(tmp_path, b"<Invoice>tls</Invoice>"))
            async with PesitSender(good) as sender:
                assert "TLS" in await sender.check()
            untrusted = replace(good, ca_bundle=None)
            with pytest.raises(HostKeyError, match="not trusted") as caught:
                await _send(untrusted, _flow(tmp_path, b"y", "b"))
            assert not caught.value.retryable

    asyncio.run(scenario())
    assert (tmp_path / "partner" / "depot" / "FSO1100A_VFE056_a.xml").read_bytes() == (
        b"<Invoice>tls</Invoice>"
    )


def test_unusable_tls_files_are_named_at_check_time_and_later_fail_the_flow_clearly(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SettingsError, match="cannot use CA bundle") as caught:
        _parse({"tls": True, "ca_bundle": str(garbage)})
    assert caught.value.key == "connection.pesit.ca_bundle"
    with pytest.raises(SettingsError, match="cannot use TLS client certificate") as caught:
        _parse({"tls": True, "client_certificate": str(garbage), "client_key": str(garbage)})
    assert caught.value.key == "connection.pesit.client_certificate"

    # files removed after the check: the sender is still made (the daemon starts) and the
    # flow fails with a certificate error naming the file, not retried
    client = pki.issue("VFE056")
    cert = pki.write_certificates([client.certificate], tmp_path / "client.pem", "pem")
    key = pki.write_key(client, tmp_path / "client.key")
    settings = _parse({"tls": True, "client_certificate": str(cert), "client_key": str(key)})
    key.unlink()
    with pytest.raises(CertificateError, match=r"client\.key") as failed:
        asyncio.run(_send(settings, _flow(tmp_path, b"x")))
    assert not failed.value.retryable


def test_check_logs_in_and_out(tmp_path: Path) -> None:
    async def scenario() -> str:
        async with _responder(tmp_path) as responder:
            async with PesitSender(_settings(responder)) as sender:
                said = await sender.check()
            assert responder.violations == []
            return said

    said = asyncio.run(scenario())
    assert "VFE056@127.0.0.1" in said and "CHORUSPRO" in said and "4 KB" in said


def _parse(table: dict[str, Any]) -> PesitSettings:
    base = {"host": "h", "port": 5000, "requester": "ME", "server": "YOU"}
    return parse_settings(Section({**base, **table}, "connection.pesit"))


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({"port": None}, "port", "no PeSIT port is standard"),
        ({"file_name": "{interfaec}"}, "file_name", "unknown placeholder {interfaec}"),
        ({"requester": "R" * 25}, "requester", "1 to 24"),
        ({"password": "p" * 17}, "password", "at most 16"),
        ({"pre_connection": True, "requester": "LONGER-THAN-8"}, "pre_connection", "8 charac"),
        ({"client_certificate": "c.pem"}, "client_key", "both"),
        ({"ca_bundle": "ca.pem"}, "tls", "tls = false"),
        ({"sync_windw": 2}, "sync_windw", "did you mean 'sync_window'"),
    ],
)
def test_settings_errors_name_the_key(table: dict[str, Any], key: str, message: str) -> None:
    cleaned = {k: v for k, v in table.items() if v is not None}
    base = {"host": "h", "port": 5000, "requester": "ME", "server": "YOU"}
    if table.get("port", 0) is None:
        base.pop("port")
    with pytest.raises(SettingsError, match=message) as caught:
        parse_settings(Section({**base, **cleaned}, "connection.pesit"))
    assert caught.value.key == f"connection.pesit.{key}"


def test_a_name_too_long_for_pesit_is_a_clear_permanent_error(tmp_path: Path) -> None:
    settings = _parse({"file_label": "{remote_name}{remote_name}"})
    flow = _flow(tmp_path, b"x", "n" * 40)
    with pytest.raises(TransferError, match="PeSIT allows 80") as caught:
        PesitSender(settings).attributes(flow)
    assert not caught.value.retryable


@pytest.mark.parametrize("restarts", [3, 0])
def test_a_partner_that_overwrites_never_gets_a_stored_file_twice(
    tmp_path: Path, restarts: int
) -> None:
    """The partner stores the file and the connection drops before its ACK(TRANS.END); asked
    to resume, it answers 214 (that transfer is finished). A partner that overwrites names
    would store a full resend a second time: the flow is "possibly delivered" instead, with
    what to check, never retried on its own — in the same send, or at the dispatcher's next
    attempt. The operator's ``raccord retry`` after that sends it (214 is then believed)."""
    data = os.urandom(3 * 4096 + 100)  # ends just past sync point 3

    async def scenario() -> None:
        async with _responder(tmp_path, on_existing="overwrite") as responder:
            settings = _settings(responder, restarts=restarts)
            async with PesitSender(settings) as sender:
                responder.faults.drop_at_end = True
                flow = _flow(tmp_path, data)
                if not restarts:
                    with pytest.raises(ConnectError) as lost:
                        await sender.send(flow)
                    assert lost.value.retryable  # the dispatcher comes back with a resend
                    flow = replace(flow, resend=True)
                with pytest.raises(ConnectError) as unsure:
                    await sender.send(flow)
                assert not unsure.value.retryable
                message = str(unsure.value)
                assert "diagnostic 214" in message
                assert "may have stored it" in message
                assert "FSO1100A_VFE056_a.xml" in message
                assert "raccord retry flow-a only if it does not" in message
                assert responder.stores == {"FSO1100A_VFE056_a.xml": 1}
                # filed in error/, the gateway removed the marker; the operator checked and
                # retried: sent again, as asked
                outcome_marker(flow.path, flow.flow_id).unlink()
                receipt = await sender.send(replace(flow, resend=True))
                assert not receipt.already_delivered
            assert responder.stores == {"FSO1100A_VFE056_a.xml": 2}
            assert responder.violations == []

    asyncio.run(scenario())


def test_a_partner_that_never_acknowledges_gets_no_data_beyond_the_window(
    tmp_path: Path,
) -> None:
    """Window 2, sync points every 4 KB, no ACK(SYN) ever: raccord sends exactly 8 KB and
    two SYNs, then waits (and times out); a strict server sees no violation."""

    async def scenario() -> None:
        async with _responder(tmp_path, window_violation="idt") as responder:
            responder.faults.withhold_ack_sync = True
            settings = _settings(responder, restarts=0, timeout=0.5)
            with pytest.raises(TransferTimeout, match="ACK\\(SYN\\)"):
                await _send(settings, _flow(tmp_path, os.urandom(40_000)))
            assert responder.received_bytes == 2 * 4 * 1024
            assert responder.violations == []
            assert responder.interruptions == []

    asyncio.run(scenario())


def test_a_partner_interruption_is_acknowledged_named_and_resumed_later(tmp_path: Path) -> None:
    """The partner sends IDT (diagnostic 213, I/O error) mid-write: raccord answers ACK(IDT),
    sends no ABORT, names the diagnostic in the error (retried as remote_busy), and the next
    attempt resumes the transfer; the file is stored once, intact."""
    data = os.urandom(40_000)

    async def scenario() -> None:
        async with _responder(tmp_path, on_existing="overwrite") as responder:
            responder.faults.idt_after = 20_000
            settings = _settings(responder)
            async with PesitSender(settings) as sender:
                with pytest.raises(RemoteBusy, match="diagnostic 213") as caught:
                    await sender.send(_flow(tmp_path, data))
                assert "interrupted the transfer (IDT, end code 4)" in str(caught.value)
                assert caught.value.reason == "remote_busy"
                assert responder.interruptions == [213]
                assert responder.aborts == []
                receipt = await sender.send(_flow(tmp_path, data, resend=True))
            assert receipt.details["restart_point"] > 0
            assert responder.stores == {"FSO1100A_VFE056_a.xml": 1}
            assert responder.violations == []
            assert responder.connections == 1  # the session survived the interruption

    asyncio.run(scenario())
    assert (tmp_path / "partner" / "depot" / "FSO1100A_VFE056_a.xml").read_bytes() == data


@pytest.mark.parametrize("on_existing", ["overwrite", "refuse"])
def test_a_restarted_daemon_finding_the_marker_never_resends_blindly(
    tmp_path: Path, on_existing: str
) -> None:
    """The partner stores the file and the connection drops before its ACK(TRANS.END); the
    daemon is then restarted (a fresh sender, nothing in memory) and resends. The marker left
    beside the file makes the 214 "possibly delivered" (a partner that overwrites), or the probe
    proves the delivery (204 from a partner that refuses to overwrite, marker removed)."""
    data = os.urandom(3 * 4096 + 100)

    async def scenario() -> None:
        async with _responder(tmp_path, on_existing=on_existing) as responder:
            settings = _settings(responder, restarts=0)
            flow = _flow(tmp_path, data)
            marker = outcome_marker(flow.path, flow.flow_id)
            responder.faults.drop_at_end = True
            with pytest.raises(ConnectError):
                await _send(settings, flow)  # the daemon is killed here
            assert marker.is_file()
            resend = replace(flow, resend=True)
            if on_existing == "overwrite":
                with pytest.raises(ConnectError) as unsure:
                    await _send(settings, resend)
                assert not unsure.value.retryable
                assert "before raccord restarted" in str(unsure.value)
                assert "may have stored it" in str(unsure.value)
                assert marker.is_file()  # kept until the gateway files the flow
            else:
                receipt = await _send(settings, resend)
                assert receipt.already_delivered
                assert not marker.exists()
            assert responder.stores == {"FSO1100A_VFE056_a.xml": 1}
            assert responder.violations == []

    asyncio.run(scenario())


def test_without_a_marker_a_resend_answered_214_is_sent_anew_and_marked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No marker: the partner never acknowledged data of the transfer, so a 214 to the resume
    is believed and the file sent in full. The marker is written once for the transfer (not at
    every sync point), before the TRANS.END, and stays for the gateway to remove."""
    from protocols.pesit import sender as module

    written: list[Path] = []
    save = module._save_marker

    def counted(marker: Path, flow_id: str, ident: int) -> None:
        written.append(marker)
        save(marker, flow_id, ident)

    monkeypatch.setattr(module, "_save_marker", counted)
    data = os.urandom(5 * 4096 + 10)

    async def scenario() -> None:
        async with _responder(tmp_path, on_existing="overwrite") as responder:
            flow = _flow(tmp_path, data, resend=True)
            receipt = await _send(_settings(responder), flow)
            assert not receipt.already_delivered
            assert receipt.details["sync_points"] == 5
            assert responder.stores == {"FSO1100A_VFE056_a.xml": 1}
            marker = base.outcome_marker(flow.path, flow.flow_id)
            assert written == [marker]
            assert json.loads(marker.read_text())["transfer_id"] == transfer_id("flow-a")

    asyncio.run(scenario())


def test_a_connection_lost_after_an_ack_sync_leaves_the_marker_and_is_resumed(
    tmp_path: Path,
) -> None:
    """The partner acknowledged sync points, then the connection drops mid-file (no TRANS.END):
    the marker is on disk already, and a restarted daemon's resend resumes the transfer from the
    secured point (no 214): stored once, intact."""
    data = os.urandom(40_000)

    async def scenario() -> None:
        async with _responder(tmp_path, on_existing="overwrite") as responder:
            responder.faults.drop_after = 20_000
            settings = _settings(responder, restarts=0)
            flow = _flow(tmp_path, data)
            with pytest.raises(ConnectError):
                await _send(settings, flow)
            assert outcome_marker(flow.path, flow.flow_id).is_file()
            receipt = await _send(settings, replace(flow, resend=True))
            assert receipt.details["restart_point"] > 0
            assert responder.stores == {"FSO1100A_VFE056_a.xml": 1}

    asyncio.run(scenario())
    assert (tmp_path / "partner" / "depot" / "FSO1100A_VFE056_a.xml").read_bytes() == data
