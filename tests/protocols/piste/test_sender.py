"""The PISTE sender against the stand-in over HTTP on loopback: deposits, the token's life,
integration reports, and every way the API says no."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.sandbox.chorus import Rules
from gateway.sandbox.piste_partner import Canned, PisteStandIn
from protocols.base import Outbound
from protocols.errors import (
    AuthenticationError,
    ConnectError,
    FileTooLarge,
    ProtocolError,
    RemoteBusy,
    RemoteRejected,
    TransferTimeout,
)
from protocols.piste.api import HOSTS, PisteSettings, parse_settings
from protocols.piste.sender import DEPOSIT, PisteSender
from protocols.settings import Secret, Section, SettingsError
from tests.conftest import sample

CLIENT_ID, CLIENT_SECRET = "app-4f1c", "s3cr3t-app"
LOGIN, PASSWORD = "TECH_1_VFE@cpp2017.fr", "Pa55-tech"


def _stand_in(tmp_path: Path, **options: Any) -> PisteStandIn:
    return PisteStandIn(
        tmp_path / "chorus",
        Rules({"FSO1100A": "complete", "FSO1106A": "partial"}, reject_pattern="REJ"),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        login=LOGIN,
        password=PASSWORD,
        **options,
    )


def _settings(stand_in: PisteStandIn, **changes: Any) -> PisteSettings:
    base = PisteSettings(
        client_id=Secret(CLIENT_ID, "literal"),
        client_secret=Secret(CLIENT_SECRET, "literal"),
        technical_login=Secret(LOGIN, "literal"),
        technical_password=Secret(PASSWORD, "literal"),
        oauth_url=stand_in.oauth_url,
        api_url=stand_in.api_url,
        timeout=5.0,
        connect_timeout=2.0,
    )
    return replace(base, **changes)


def _flow(
    tmp_path: Path, name: str = "a", data: bytes | None = None, code: str = "FSO1100A"
) -> Outbound:
    data = data if data is not None else sample("ubl-invoice.xml")
    path = tmp_path / f"{name}.xml"
    path.write_bytes(data)
    return Outbound(
        flow_id=f"20261123T100000Z-00000{len(name)}",
        path=path,
        remote_name=f"{code}_VFE056_{name}.xml",
        interface_code=code,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def test_a_ubl_and_a_cii_invoice_are_deposited_and_reported_integrated(tmp_path: Path) -> None:
    ubl, cii = _flow(tmp_path, "ubl"), _flow(tmp_path, "cii", sample("cii-invoice.xml"), "FSO1106A")

    async def scenario() -> None:
        async with _stand_in(tmp_path) as chorus:
            async with PisteSender(_settings(chorus)) as sender:
                for flow, syntax in ((ubl, "IN_DP_E1_UBL_INVOICE"), (cii, "IN_DP_E1_CII_16B")):
                    receipt = await sender.send(flow)
                    details = receipt.details
                    deposit = chorus.deposits[details["numeroFluxDepot"]]
                    assert (deposit.name, deposit.syntax) == (flow.remote_name, syntax)
                    assert details["syntaxeFlux"] == syntax and details["dateDepot"]
                    stored = chorus.root / "depot" / flow.remote_name
                    assert stored.read_bytes() == flow.path.read_bytes()
                    asked = {**details, "remote_name": flow.remote_name}
                    first = await sender.report(asked)
                    assert (first.state, first.final) == ("IN_EN_COURS_TRAITEMENT_CPP", False)
                    final = await sender.report(asked)
                    assert (final.state, final.final) == ("IN_INTEGRE", True)
                    document = json.loads(final.document)
                    assert document["nomFichier"] == flow.remote_name
                    assert document["answer"]["etatCourantDepotFlux"] == "IN_INTEGRE"
                    assert final.name == f"CR_{details['numeroFluxDepot']}.json"
            assert chorus.tokens_issued == 1  # one token for all six calls

    asyncio.run(scenario())


def test_invoices_in_error_are_listed_with_the_state_the_mode_gives(tmp_path: Path) -> None:
    bad_ubl = sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", b"REJ-1")
    bad_cii = sample("cii-invoice.xml").replace(b"DEMO-CII-0001", b"REJ-2")

    async def scenario() -> list[tuple[str, list[str]]]:
        chorus = _stand_in(tmp_path, processing_polls=0)
        async with chorus, PisteSender(_settings(chorus)) as sender:
            found = []
            for flow in (_flow(tmp_path, "u", bad_ubl), _flow(tmp_path, "c", bad_cii, "FSO1106A")):
                receipt = await sender.send(flow)
                report = await sender.report(receipt.details)
                answer = json.loads(report.document)["answer"]
                found.append((report.state, [e["numeroDP"] for e in answer["listeErreurDP"]]))
            return found

    # a lone faulty invoice: rejected whatever the mode (partial needs a good one beside it)
    assert asyncio.run(scenario()) == [("IN_REJETE", ["REJ-1"]), ("IN_REJETE", ["REJ-2"])]


def test_concurrent_deposits_share_one_token_refresh(tmp_path: Path) -> None:
    flows = [_flow(tmp_path, "x" * n) for n in range(1, 9)]

    async def scenario() -> int:
        async with _stand_in(tmp_path) as chorus, PisteSender(_settings(chorus)) as sender:
            await asyncio.gather(*(sender.send(f) for f in flows))
            assert len(chorus.deposits) == len(flows)
            return chorus.tokens_issued

    assert asyncio.run(scenario()) == 1


def test_a_token_revoked_early_is_refreshed_once_and_the_call_made_again(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, list[int]]:
        async with _stand_in(tmp_path) as chorus:
            async with PisteSender(_settings(chorus)) as sender:
                await sender.send(_flow(tmp_path, "a"))
                chorus.revoke_tokens()
                await sender.send(_flow(tmp_path, "bb"))
            return chorus.tokens_issued, [status for _, status in chorus.requests]

    issued, statuses = asyncio.run(scenario())
    assert issued == 2
    assert statuses == [200, 401, 200]


def test_a_token_is_renewed_before_it_expires_not_after(tmp_path: Path) -> None:
    """A 60 s token: with a 60 s margin it is already due for renewal when it comes (each use
    fetches another, none refused); with a 10 s margin the first one serves both uses."""

    async def tokens(margin: float) -> tuple[int, set[int]]:
        async with _stand_in(tmp_path, token_lifetime=60) as chorus:
            async with PisteSender(_settings(chorus, token_margin=margin)) as sender:
                first = await sender.client.tokens.get()
                second = await sender.client.tokens.get()
                assert (first == second) is (margin < 60)
                await sender.send(_flow(tmp_path, "a"))
            return chorus.tokens_issued, {status for _, status in chorus.requests}

    assert asyncio.run(tokens(60.0))[0] >= 3  # renewed at every use
    assert asyncio.run(tokens(10.0)) == (1, {200})  # one token, never refused


def test_rate_limits_are_waited_out_then_given_up_on(tmp_path: Path) -> None:
    limited = Canned(429, b'{"message": "quota"}', {"Retry-After": "0"})

    async def scenario() -> None:
        chorus = _stand_in(tmp_path)
        async with chorus, PisteSender(_settings(chorus, max_retries=2)) as sender:
            chorus.faults.canned = [limited, limited]
            receipt = await sender.send(_flow(tmp_path, "a"))
            assert receipt.details["numeroFluxDepot"] in chorus.deposits
            chorus.faults.canned = [limited, limited, limited]
            with pytest.raises(RemoteBusy, match="429") as busy:
                await sender.send(_flow(tmp_path, "bb"))
            assert busy.value.retryable
            assert len(chorus.deposits) == 1

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("canned", "error", "retryable", "words"),
    [
        (Canned(500, b"<html>oops</html>"), RemoteBusy, True, "HTTP 500"),
        (
            Canned(400, json.dumps({"codeRetour": 20004, "libelle": "syntaxe refusée"}).encode()),
            RemoteRejected,
            False,
            "codeRetour 20004: syntaxe refusée",
        ),
        (
            Canned(200, json.dumps({"codeRetour": 7, "libelle": "flux en doublon"}).encode()),
            RemoteRejected,
            False,
            "codeRetour 7: flux en doublon",
        ),
        (Canned(200, b"{not json"), ProtocolError, False, "may have been deposited"),
        (Canned(200, b'{"codeRetour": 0}'), ProtocolError, False, "no numeroFluxDepot"),
        (Canned(404, b""), ProtocolError, False, "api_url"),
    ],
)
def test_what_the_api_says_becomes_a_clear_error(
    tmp_path: Path, canned: Canned, error: type[Exception], retryable: bool, words: str
) -> None:
    async def scenario() -> None:
        async with _stand_in(tmp_path) as chorus:
            chorus.faults.canned = [canned]
            async with PisteSender(_settings(chorus)) as sender:
                with pytest.raises(error, match=words) as raised:
                    await sender.send(_flow(tmp_path, "a"))
            assert raised.value.retryable is retryable  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_refused_credentials_say_which_to_check_and_never_show_them(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str]:
        async with _stand_in(tmp_path) as chorus:
            wrong_app = _settings(chorus, client_secret=Secret("nope-app", "literal"))
            wrong_account = _settings(chorus, technical_password=Secret("nope-tech", "literal"))
            async with PisteSender(wrong_app) as sender:
                with pytest.raises(AuthenticationError) as app:
                    await sender.send(_flow(tmp_path, "a"))
            async with PisteSender(wrong_account) as sender:
                with pytest.raises(AuthenticationError) as account:
                    await sender.send(_flow(tmp_path, "a"))
            assert chorus.deposits == {}
            return str(app.value), str(account.value)

    app, account = asyncio.run(scenario())
    assert "client_secret" in app and "Client authentication failed" in app
    assert "technical_password" in account and "compte technique" in account
    for secret in ("nope-app", "nope-tech", CLIENT_SECRET, PASSWORD, LOGIN):
        assert secret not in app + account


def test_a_401_then_no_fresh_token_is_a_plain_retryable_failure(tmp_path: Path) -> None:
    """A 401 proves the API took nothing: when the token endpoint then times out, the deposit
    is retried like any retryable failure, never filed as "may have been deposited"."""

    async def scenario() -> None:
        async with _stand_in(tmp_path) as chorus:
            async with PisteSender(_settings(chorus, timeout=0.5)) as sender:
                await sender.client.tokens.get()
                chorus.revoke_tokens()  # the next deposit gets 401
                chorus.faults.token_silent = True  # and its renewal no answer
                with pytest.raises(TransferTimeout) as raised:
                    await sender.send(_flow(tmp_path, "a"))
            assert chorus.requests == [(DEPOSIT, 401)] and chorus.deposits == {}
            error = raised.value
            assert error.retryable and error.nothing_sent
            assert "PISTE token" in str(error) and "may have been deposited" not in str(error)

    asyncio.run(scenario())


def test_a_deposit_stored_then_unanswered_is_an_unknown_outcome(tmp_path: Path) -> None:
    """The opposite case: the request went and the API kept the file; raccord cannot know,
    so it is not sent again blindly but filed with what to check."""

    async def scenario() -> None:
        async with _stand_in(tmp_path) as chorus:
            chorus.faults.silent_after_storing = True
            async with PisteSender(_settings(chorus, timeout=0.5)) as sender:
                with pytest.raises(TransferTimeout) as raised:
                    await sender.send(_flow(tmp_path, "a"))
            assert len(chorus.deposits) == 1
            error = raised.value
            assert not error.retryable and not error.nothing_sent
            assert "may have been deposited" in str(error)

    asyncio.run(scenario())


def test_a_file_over_the_deposit_limit_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    """The API refuses files over 10 MB; the sender says so before encoding and sending."""
    limit = 4_000
    data = sample("ubl-invoice.xml").replace(
        b"</Invoice>", b"<!--" + b"x" * limit + b"--></Invoice>"
    )

    async def scenario() -> None:
        async with _stand_in(tmp_path, max_deposit_size=limit) as chorus:
            async with PisteSender(_settings(chorus, max_deposit_size=limit)) as sender:
                with pytest.raises(FileTooLarge) as raised:
                    await sender.send(_flow(tmp_path, "big", data))
                assert chorus.requests == [] and chorus.tokens_issued == 0
                error = raised.value
                assert not error.retryable and error.nothing_sent
                assert f"{len(data)} bytes" in str(error) and "max_deposit_size" in str(error)
            # Raised above what the API takes, the limit lets the strict API say no itself;
            # the looser stand-in (no limit) takes the file.
            async with PisteSender(_settings(chorus, max_deposit_size=10 * limit)) as sender:
                with pytest.raises(RemoteRejected, match=r"GDP_MSG_11\.022"):
                    await sender.send(_flow(tmp_path, "big", data))
                chorus.max_deposit_size = None
                await sender.send(_flow(tmp_path, "big", data))
            assert len(chorus.deposits) == 1

    asyncio.run(scenario())


@pytest.mark.parametrize(("over", "refused"), [(0, False), (1, True)])
def test_a_file_of_exactly_the_limit_is_deposited_one_byte_more_is_not(
    tmp_path: Path, over: int, refused: bool
) -> None:
    limit = 5_000
    invoice = sample("ubl-invoice.xml")
    filler = b"x" * (limit + over - len(invoice) - len(b"<!---->"))
    data = invoice.replace(b"</Invoice>", b"<!--" + filler + b"--></Invoice>")
    assert len(data) == limit + over

    async def scenario() -> bool:
        async with _stand_in(tmp_path, max_deposit_size=limit) as chorus:
            async with PisteSender(_settings(chorus, max_deposit_size=limit)) as sender:
                try:
                    await sender.send(_flow(tmp_path, "edge", data))
                except FileTooLarge:
                    return True
            return False

    assert asyncio.run(scenario()) is refused


def test_the_deposit_limit_is_10_mb_unless_set() -> None:
    assert _parse({}).max_deposit_size == 10_000_000
    assert _parse({"max_deposit_size": "5MB"}).max_deposit_size == 5_000_000


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_technical_account_names_technical_login_and_password(
    tmp_path: Path, status: int
) -> None:
    """The real gateway answers 401 to a wrong cpro-account even with a fresh token: the token
    was issued, so the client credentials are right and the account is what to check."""

    async def scenario() -> str:
        async with _stand_in(tmp_path, account_status=status) as chorus:
            wrong = _settings(chorus, technical_password=Secret("nope-tech", "literal"))
            async with PisteSender(wrong) as sender:
                with pytest.raises(AuthenticationError) as refused:
                    await sender.check()
            return str(refused.value)

    said = asyncio.run(scenario())
    assert "technical_login" in said and "technical_password" in said
    assert "client_secret" not in said and "nope-tech" not in said


def test_an_interface_code_without_a_piste_syntax_is_refused_before_any_call(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with _stand_in(tmp_path) as chorus:
            async with PisteSender(_settings(chorus)) as sender:
                with pytest.raises(ProtocolError, match="FSO1300A has no PISTE syntaxeFlux"):
                    await sender.send(_flow(tmp_path, "a", code="FSO1300A"))
            assert chorus.requests == [] and chorus.tokens_issued == 0

    asyncio.run(scenario())


def test_an_unreachable_api_is_retryable(tmp_path: Path) -> None:
    settings = _settings(
        _stand_in(tmp_path), oauth_url="http://127.0.0.1:9/token", api_url="http://127.0.0.1:9"
    )

    async def scenario() -> None:
        async with PisteSender(settings) as sender:
            with pytest.raises(ConnectError) as raised:
                await sender.send(_flow(tmp_path, "a"))
            assert raised.value.retryable

    asyncio.run(scenario())


def test_check_gets_a_token_and_makes_a_harmless_call(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, int]:
        async with _stand_in(tmp_path) as chorus:
            async with PisteSender(_settings(chorus)) as sender:
                said = await sender.check()
            assert chorus.deposits == {}
            return said, chorus.tokens_issued

    said, issued = asyncio.run(scenario())
    assert issued == 1 and "token obtained" in said


def _parse(table: dict[str, Any], environment: str = "qualification") -> PisteSettings:
    base = {
        "client_id": "id",
        "client_secret": "S3CR3T-VALUE",
        "technical_login": "TECH_x@cpp2017.fr",
        "technical_password": "PW-VALUE",
    }
    section = Section({**base, **table}, "connection[x].piste")
    section.context["environment"] = environment
    return parse_settings(section)


def test_settings_pick_the_environment_hosts_and_keep_secrets_hidden() -> None:
    qualification, production = _parse({}), _parse({}, "production")
    assert (qualification.oauth_url, qualification.api_url) == HOSTS["qualification"]
    assert (production.oauth_url, production.api_url) == HOSTS["production"]
    moved = _parse({"api_url": "https://rie.example/", "oauth_url": "https://rie.example/t"})
    assert moved.api_url == "https://rie.example" and moved.oauth_url == "https://rie.example/t"
    shown = repr(qualification)
    assert "S3CR3T-VALUE" not in shown and "PW-VALUE" not in shown and "TECH_x" not in shown
    with pytest.raises(SettingsError, match="client_secret"):
        _parse({"client_secret": ""})
    with pytest.raises(SettingsError, match="report_max_interval"):
        _parse({"report_interval": "10m", "report_max_interval": "1m"})
    with pytest.raises(SettingsError, match="did you mean 'signature'"):
        _parse({"signatures": True})
