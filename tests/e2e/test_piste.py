"""raccord over the Chorus Pro API, the way an operator uses it: a ``protocol = "piste"``
connection (secrets from files and the environment), invoices dropped in its outbox, deposits
to the PISTE stand-in, integration reports asked for until final and applied under the
connection's modes; tokens that expire, server errors, incidents; no secret in the logs."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_module
from gateway.folders import Layout
from gateway.journal import JournalDB
from gateway.sandbox.chorus import Rules
from gateway.sandbox.piste_partner import Canned, PisteStandIn
from tests.conftest import sample
from tests.e2e.conftest import check_connect
from tests.gateway.harness import (
    connection_toml,
    drop,
    filed,
    memory_config_text,
    rows,
    running,
    until,
)

pytestmark = pytest.mark.e2e

CONNECTION = "qualif-piste"
CLIENT_ID, CLIENT_SECRET = "piste-app-7d2e", "Cl13nt-S3cr3t-9f"
LOGIN, PASSWORD = "TECH_1_VFE057@cpp2017.fr", "T3chn1cal-Pa55"
MODES = {"FSO1100A": "complete", "FSO1106A": "partial"}


def _stand_in(tmp_path: Path) -> PisteStandIn:
    return PisteStandIn(
        tmp_path / "chorus",
        Rules(MODES, reject_pattern="REJ"),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        login=LOGIN,
        password=PASSWORD,
    )


def _config(
    tmp_path: Path,
    chorus: PisteStandIn,
    monkeypatch: pytest.MonkeyPatch,
    *,
    secret: str = CLIENT_SECRET,
    lot: bool = False,
    attempts: int = 4,
    **settings: Any,
) -> Path:
    secret_file = tmp_path / "client_secret"
    secret_file.write_text(secret + "\n")
    monkeypatch.setenv("RACCORD_TEST_TECH_PASSWORD", PASSWORD)
    text = memory_config_text(tmp_path / "data", "unused", attempts=attempts) + connection_toml(
        CONNECTION,
        "piste",
        {
            "client_id": CLIENT_ID,
            "client_secret": {"file": str(secret_file)},
            "technical_login": LOGIN,
            "technical_password": {"env": "RACCORD_TEST_TECH_PASSWORD"},
            "oauth_url": chorus.oauth_url,
            "api_url": chorus.api_url,
            "report_interval": "100ms",
            "report_max_interval": "300ms",
            **settings,
        },
        interfaces=MODES,
        extra='lot = { max_invoices = 3, max_wait = "1s", packaging = "tar.gz" }' if lot else "",
    )
    path = tmp_path / "raccord.toml"
    path.write_text(text)
    return path


def _invoice(number: str, kind: str = "ubl") -> bytes:
    if kind == "ubl":
        return sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())
    return sample("cii-invoice.xml").replace(b"DEMO-CII-0001", number.encode())


def _reported(config: config_module.Config, count: int) -> Any:
    def check() -> bool:
        layout = Layout(config.gateway.data_dir)
        if not layout.journal.exists():
            return False
        db = JournalDB(layout.journal)
        try:
            found = db._db.execute(
                "SELECT COUNT(*) FROM deposits WHERE outcome IS NOT NULL"
            ).fetchone()[0]
            return int(found) >= count
        finally:
            db.close()

    return check


def _journal(config: config_module.Config) -> JournalDB:
    return JournalDB(Layout(config.gateway.data_dir).journal)


def test_ubl_and_cii_invoices_are_deposited_and_reported_integrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> PisteStandIn:
        async with _stand_in(tmp_path) as chorus:
            config = config_module.load(_config(tmp_path, chorus, monkeypatch))
            async with running(config):
                drop(config, "u.xml", _invoice("API-U1"), CONNECTION)
                drop(config, "c.xml", _invoice("API-C1", "cii"), CONNECTION)
                await until(_reported(config, 2), what="both reports final")
                chorus.revoke_tokens()  # expires mid-run: the next call refreshes it
                drop(config, "u2.xml", _invoice("API-U2"), CONNECTION)
                await until(_reported(config, 3), what="the third report final")
            return chorus

    chorus = asyncio.run(scenario())
    config = config_module.load(tmp_path / "raccord.toml")
    db = _journal(config)
    try:
        sent = {r.original_name: r for r in rows(config) if r.connection == CONNECTION}
        assert {r.state for r in sent.values()} == {"sent"}
        syntaxes = {d.name: d.syntax for d in chorus.deposits.values()}
        assert sent["u.xml"].remote_name is not None and sent["c.xml"].remote_name is not None
        assert syntaxes[sent["u.xml"].remote_name] == "IN_DP_E1_UBL_INVOICE"
        assert syntaxes[sent["c.xml"].remote_name] == "IN_DP_E1_CII_16B"
        for row in sent.values():
            deposit = db.deposit(row.flow_id)
            assert deposit is not None
            assert (deposit["outcome"], deposit["state"]) == ("reported", "IN_INTEGRE")
            assert deposit["polls"] >= 2  # IN_EN_COURS_TRAITEMENT_CPP first
            (invoice,) = db.invoices(row.flow_id)
            assert invoice["rejected"] == 0
        assert {r["kind"] for r in db.returns()} == {"piste_report"}
        assert {r["state"] for r in db.returns()} == {"applied"}
    finally:
        db.close()
    assert chorus.tokens_issued == 2
    assert ("/cpro/factures/v1/deposer/flux", 401) in chorus.requests
    logs = capsys.readouterr().out
    assert "report.final" in logs
    account = base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    for secret in (CLIENT_SECRET, PASSWORD, LOGIN, account, *chorus.issued):
        assert secret not in logs


@pytest.mark.parametrize(
    ("kind", "code", "state", "rejected", "collateral"),
    [
        ("ubl", "FSO1100A", "IN_REJETE", 3, 2),  # complete: one bad invoice sinks the lot
        ("cii", "FSO1106A", "IN_INTEGRE_PARTIEL", 1, 0),  # partial: only the bad one
    ],
)
def test_a_lot_with_one_bad_invoice_under_each_mode(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    code: str,
    state: str,
    rejected: int,
    collateral: int,
) -> None:
    async def scenario() -> None:
        async with _stand_in(tmp_path) as chorus:
            config = config_module.load(_config(tmp_path, chorus, monkeypatch, lot=True))
            async with running(config):
                for n, number in enumerate(("GOOD-1", "REJ-2", "GOOD-3")):
                    drop(config, f"{n}.xml", _invoice(number, kind), CONNECTION)
                await until(_reported(config, 1), what="the lot's report final")

    asyncio.run(scenario())
    config = config_module.load(tmp_path / "raccord.toml")
    db = _journal(config)
    try:
        (lot,) = [r for r in rows(config) if r.packaging is not None]
        assert lot.interface_code == code
        deposit = db.deposit(lot.flow_id)
        assert deposit is not None and deposit["state"] == state
        invoices = db.invoices(lot.flow_id)
        assert sum(i["rejected"] for i in invoices) == rejected
        assert sum(i["collateral"] for i in invoices) == collateral
        (bad,) = [i for i in invoices if i["invoice_number"] == "REJ-2"]
        assert bad["rejected"] == 1 and "REJ-2" in bad["reasons"]
    finally:
        db.close()
    layout = Layout(config.gateway.data_dir)
    assert len(list(layout.rejected(CONNECTION).glob("*.rejection.json"))) == rejected


def test_server_errors_and_rate_limits_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> PisteStandIn:
        async with _stand_in(tmp_path) as chorus:
            config = config_module.load(_config(tmp_path, chorus, monkeypatch))
            chorus.faults.canned = [
                Canned(500, b"<html>Internal Server Error</html>"),
                Canned(429, b"{}", {"Retry-After": "0"}),
                # to a report question: asked again later
                Canned(200, b"{not json", path="/cpro/transverses/v1/consulterCRDetaille"),
            ]
            async with running(config):
                drop(config, "u.xml", _invoice("API-R1"), CONNECTION)
                await until(_reported(config, 1), what="the report final")
            return chorus

    chorus = asyncio.run(scenario())
    config = config_module.load(tmp_path / "raccord.toml")
    (row,) = [r for r in rows(config) if r.connection == CONNECTION]
    assert row.state == "sent" and row.attempts == 2  # the 500 cost one attempt
    assert len(chorus.deposits) == 1
    assert chorus.requests[:4] == [
        ("/cpro/factures/v1/deposer/flux", 500),
        ("/cpro/factures/v1/deposer/flux", 429),
        ("/cpro/factures/v1/deposer/flux", 200),
        ("/cpro/transverses/v1/consulterCRDetaille", 200),  # the bytes that are no JSON
    ]
    db = _journal(config)
    try:
        assert db.deposit(row.flow_id)["state"] == "IN_INTEGRE"  # type: ignore[index]
    finally:
        db.close()


def test_an_incident_is_sent_again_once_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> PisteStandIn:
        async with _stand_in(tmp_path) as chorus:
            config = config_module.load(_config(tmp_path, chorus, monkeypatch))
            chorus.faults.incident_next = True
            async with running(config):
                drop(config, "u.xml", _invoice("API-I1"), CONNECTION)
                await until(_reported(config, 2), timeout=30, what="both reports final")
            return chorus

    chorus = asyncio.run(scenario())
    config = config_module.load(tmp_path / "raccord.toml")
    first, again = sorted(
        (r for r in rows(config) if r.connection == CONNECTION), key=lambda r: r.created_at
    )
    assert again.resubmit_of == first.flow_id and again.state == "sent"
    db = _journal(config)
    try:
        assert db.deposit(first.flow_id)["state"] == "IN_INCIDENTE"  # type: ignore[index]
        assert db.deposit(again.flow_id)["state"] == "IN_INTEGRE"  # type: ignore[index]
        assert db.invoices(again.flow_id)[0]["rejected"] == 0
    finally:
        db.close()
    assert sorted(d.state for d in chorus.deposits.values()) == ["IN_INCIDENTE", "IN_INTEGRE"]
    lines = capsys.readouterr().out.splitlines()
    resent = [json.loads(line) for line in lines if '"report.resent"' in line]
    assert len(resent) == 1 and resent[0]["resubmit_of"] == first.flow_id


def test_check_connect_gets_a_token_and_names_bad_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> tuple[int, str, int, str]:
        async with _stand_in(tmp_path) as chorus:
            good = await asyncio.to_thread(check_connect, _config(tmp_path, chorus, monkeypatch))
            bad_path = _config(tmp_path, chorus, monkeypatch, secret="wrong-secret")
            bad = await asyncio.to_thread(check_connect, bad_path)
            assert chorus.deposits == {}
        return good + bad

    ok_code, ok_out, bad_code, bad_out = asyncio.run(scenario())
    assert ok_code == 0, ok_out
    assert f"{CONNECTION}: piste" in ok_out and "token obtained" in ok_out
    assert bad_code != 0 and "client_secret" in bad_out
    assert "wrong-secret" not in bad_out and CLIENT_SECRET not in ok_out + bad_out


def test_the_invoices_are_followed_after_integration_until_paid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def followed(config: config_module.Config) -> bool:
        db = _journal(config)
        try:
            done = db._db.execute(
                "SELECT COUNT(*) FROM deposits WHERE lifecycle_outcome='final'"
            ).fetchone()[0]
            return int(done) == 1
        finally:
            db.close()

    async def scenario() -> PisteStandIn:
        async with _stand_in(tmp_path) as chorus:
            path = _config(
                tmp_path, chorus, monkeypatch, lifecycle=True, lifecycle_interval="200ms"
            )
            config = config_module.load(path)
            async with running(config):
                drop(config, "u.xml", _invoice("API-L1"), CONNECTION)
                await until(lambda: followed(config), what="the invoice paid")
            # one search per step, none once final (counted when the gateway has stopped)
            searched = [p for p, _ in chorus.requests]
            assert searched.count("/cpro/factures/v1/rechercher/fournisseur") == 2
            return chorus

    asyncio.run(scenario())
    config = config_module.load(tmp_path / "raccord.toml")
    (row,) = [r for r in rows(config) if r.connection == CONNECTION]
    db = _journal(config)
    try:
        (invoice,) = db.invoices(row.flow_id)
        assert (invoice["status_code"], invoice["final"], invoice["rejected"]) == ("11", 1, 0)
        codes = [s["code"] for s in db.statuses(row.flow_id) if s["code"] in ("03", "11")]
        assert codes == ["03", "11"]
        assert {r["kind"] for r in db.returns()} == {"piste_report", "piste_invoices"}
    finally:
        db.close()


def test_a_401_then_a_token_endpoint_that_times_out_is_no_unknown_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 proves nothing was deposited: each attempt is a plain retryable failure, and the
    flow given up on says so in error.json (no "may have been deposited", unknown_outcome
    false) — while a deposit the API stored and never answered is an unknown outcome."""

    async def scenario() -> PisteStandIn:
        async with _stand_in(tmp_path) as chorus:
            path = _config(tmp_path, chorus, monkeypatch, attempts=2, timeout="500ms")
            config = config_module.load(path)
            async with running(config):
                drop(config, "first.xml", _invoice("API-T0"), CONNECTION)
                await until(filed(config, 1), what="the first deposit (a token is held)")
                chorus.revoke_tokens()
                chorus.faults.token_silent = True
                drop(config, "u.xml", _invoice("API-T1"), CONNECTION)
                await until(filed(config, 2), what="the second flow given up on")
                chorus.faults.token_silent = False
                chorus.faults.silent_after_storing = True
                drop(config, "s.xml", _invoice("API-T2"), CONNECTION)
                await until(filed(config, 3), what="the third flow filed")
            return chorus

    chorus = asyncio.run(scenario())
    config = config_module.load(tmp_path / "raccord.toml")
    by_name = {r.original_name: r for r in rows(config) if r.connection == CONNECTION}
    assert len(chorus.deposits) == 2  # first.xml, and s.xml stored without an answer
    errors = Layout(config.gateway.data_dir).error(CONNECTION)
    refused = json.loads((errors / "u.xml.error.json").read_text())
    assert (refused["reason"], refused["attempts"], refused["unknown_outcome"]) == (
        "timeout",
        2,
        False,
    )
    assert "may have been deposited" not in refused["message"]
    assert "PISTE token" in refused["message"]
    unknown = json.loads((errors / "s.xml.error.json").read_text())
    assert (unknown["reason"], unknown["attempts"], unknown["unknown_outcome"]) == (
        "timeout",
        1,
        True,
    )
    assert "may have been deposited" in unknown["message"]
    assert by_name["s.xml"].state == "error"


def test_check_warns_of_files_over_the_api_limit_and_names_the_technical_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_file_size (30 MB by default) over the API's 10 MB: a warning; a technical account
    refused with 401, as the real gateway does: check --connect names it, not client_id."""

    async def scenario() -> tuple[int, str]:
        async with _stand_in(tmp_path) as chorus:
            chorus.account_status = 401
            path = _config(tmp_path, chorus, monkeypatch)
            monkeypatch.setenv("RACCORD_TEST_TECH_PASSWORD", "wrong-password")
            return await asyncio.to_thread(check_connect, path)

    code, out = asyncio.run(scenario())
    assert code != 0
    assert "max_file_size (30000000 bytes) is over what the PISTE API takes" in out
    failed = next(line for line in out.splitlines() if "connect: FAILED" in line)
    assert "technical_login and technical_password" in failed, failed
    assert "client_secret" not in failed and "wrong-password" not in out
