"""The Transfer CFT adapter driving a fake CFTUTIL (tests/fixtures/CFTUTIL) put on PATH."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from protocols.base import Outbound
from protocols.errors import (
    AuthenticationError,
    ProtocolError,
    RemoteBusy,
    TransferTimeout,
)
from protocols.pesit.cft import CftSender, CftSettings, parse_settings, read_catalog
from protocols.settings import Section, SettingsError
from protocols.testing import contract

FAKE = Path(__file__).parents[2] / "fixtures" / "CFTUTIL"


@pytest.fixture
def cft(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake CFTUTIL on PATH; returns its home (catalog, calls.log, partner/)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(FAKE, bin_dir / "CFTUTIL")
    home = tmp_path / "cft"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_CFT_HOME", str(home))
    return home


def _flow(tmp_path: Path, data: bytes = b"<Invoice>1</Invoice>", **changes: Any) -> Outbound:
    path = tmp_path / "spool file.xml"  # a space: arguments must survive the command line
    path.write_bytes(data)
    flow = Outbound(
        flow_id="20261123T100000Z-abc123",
        path=path,
        remote_name="FSO1100A_VFE056_20261123T100000Z-abc123.xml",
        interface_code="FSO1100A",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return replace(flow, **changes)


SETTINGS = CftSettings(partner="CHORUS", timeout=5.0, poll_interval=0.05, command_timeout=10)


def _send(settings: CftSettings, flow: Outbound) -> Any:
    async def scenario() -> Any:
        async with CftSender(settings) as sender:
            return await sender.send(flow)

    return asyncio.run(scenario())


@pytest.mark.parametrize("wait", ["sync", "catalog"])
def test_a_flow_is_submitted_and_its_end_awaited(tmp_path: Path, cft: Path, wait: str) -> None:
    flow = _flow(tmp_path)
    receipt = _send(replace(SETTINGS, wait=wait), flow)
    assert (cft / "partner" / flow.remote_name).read_bytes() == flow.path.read_bytes()
    assert receipt.details["idtu"] == "A0000001"
    assert receipt.details["idf"] == "FSO1100A"
    (send, *rest) = (cft / "calls.log").read_text().splitlines()
    assert send.startswith("SEND PART=CHORUS, IDF=FSO1100A, FNAME=")
    assert f"NFNAME={flow.remote_name}, IDA={flow.flow_id}" in send
    if wait == "sync":
        assert send.endswith("WSTATES=TX, WTIMEOUT=5") and rest == []
    else:
        assert "WSTATES" not in send and rest == ["LISTCAT IDTU=A0000001, CONTENT=FULL"]


def test_catalog_mode_polls_until_the_transfer_ends(tmp_path: Path, cft: Path) -> None:
    cft.mkdir(parents=True)
    (cft / "behaviour").write_text("slow")
    receipt = _send(replace(SETTINGS, wait="catalog"), _flow(tmp_path))
    assert receipt.details["phase"] == "X"
    polls = (cft / "calls.log").read_text().splitlines()[1:]
    assert len(polls) == 3


def test_a_timeout_is_retryable_and_the_resend_finds_the_transfer(
    tmp_path: Path, cft: Path
) -> None:
    cft.mkdir(parents=True)
    (cft / "behaviour").write_text("timeout")
    flow = _flow(tmp_path)
    with pytest.raises(TransferTimeout, match="IDA=20261123T100000Z-abc123") as caught:
        _send(SETTINGS, flow)
    assert caught.value.retryable
    # CFT finishes it later; the dispatcher's resend looks the flow up and sends nothing
    catalog = json.loads((cft / "catalog.json").read_text())
    catalog[0].update(phase="X", phasestep="X")
    (cft / "catalog.json").write_text(json.dumps(catalog))
    receipt = _send(SETTINGS, replace(flow, resend=True))
    assert receipt.already_delivered
    calls = (cft / "calls.log").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["SEND", "LISTCAT"]


def test_a_resend_unknown_to_cft_is_sent(tmp_path: Path, cft: Path) -> None:
    receipt = _send(SETTINGS, _flow(tmp_path, resend=True))
    assert not receipt.already_delivered
    assert [c.split()[0] for c in (cft / "calls.log").read_text().splitlines()] == [
        "LISTCAT",
        "SEND",
    ]


@pytest.mark.parametrize("wait", ["sync", "catalog"])
def test_a_refused_login_is_permanent(tmp_path: Path, cft: Path, wait: str) -> None:
    cft.mkdir(parents=True)
    (cft / "behaviour").write_text("refuse-301")
    with pytest.raises(AuthenticationError, match="diagnostic 301") as caught:
        _send(replace(SETTINGS, wait=wait), _flow(tmp_path))
    assert not caught.value.retryable


def test_a_network_failure_is_retryable(tmp_path: Path, cft: Path) -> None:
    cft.mkdir(parents=True)
    (cft / "behaviour").write_text("busy")
    with pytest.raises(RemoteBusy, match="DIAGI 416") as caught:
        _send(replace(SETTINGS, wait="catalog"), _flow(tmp_path))
    assert caught.value.retryable


def test_an_unknown_partner_is_a_permanent_error_with_cftutil_s_words(
    tmp_path: Path, cft: Path
) -> None:
    with pytest.raises(ProtocolError, match="PART not defined") as caught:
        _send(replace(SETTINGS, partner="NOBODY"), _flow(tmp_path))
    assert not caught.value.retryable


def test_a_missing_cftutil_says_what_to_install(tmp_path: Path, cft: Path) -> None:
    with pytest.raises(ProtocolError, match="not found: install Transfer CFT"):
        _send(replace(SETTINGS, command="/nonexistent/CFTUTIL"), _flow(tmp_path))


def test_the_cft_adapter_keeps_the_contract(tmp_path: Path, cft: Path) -> None:
    checked = asyncio.run(
        contract.verify(
            lambda: CftSender(SETTINGS),
            lambda name: (
                (cft / "partner" / name).read_bytes() if (cft / "partner" / name).exists() else None
            ),
            tmp_path,
        )
    )
    assert checked == ["delivers", "check", "resend_recognised", "reusable_after_close"]


def test_catalog_output_is_read_in_both_layouts() -> None:
    listing = "  IDTU       = A0000007\n  PHASE      = X\n  PHASESTEP  = X\n  DIAGI      = 0\n"
    entry = read_catalog(listing)
    assert entry is not None and entry.idtu == "A0000007" and entry.done
    inline = read_catalog("CFTU25E SEND _ Error (SWAITCAT_FAILED,(IDTU=A1,DIAGI=302,DIAGP=301))")
    assert inline is not None and inline.diagp == "301" and inline.idtu == "A1"
    assert read_catalog("CFTU00I LISTCAT _ Correct (0 record selected)") is None


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ({}, "partner", "is required"),
        ({"partner": "P", "idf": "{interfac}"}, "idf", "did you mean {interface}"),
        ({"partner": "P", "send_template": "SEND PART={partner}"}, "send_template", "{ida}"),
        ({"partner": "P", "wait": "poll"}, "wait", "not one of"),
    ],
)
def test_settings_errors(table: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        parse_settings(Section(table, "connection.pesit-cft"))
    assert caught.value.key == f"connection.pesit-cft.{key}"
