"""``raccord certs``: every certificate of the configuration with its validity; exit 1 when one
is expired, expires within --warn-days, or its chain is broken."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.commands import main
from gateway.sandbox import pki
from protocols.certs import KeyPair
from tests.as2_config import write_as2_config


def certs(
    config_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, Any, str]:
    code = main(["certs", "--config", str(config_path), "--format", "json", *extra])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def by_role(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["role"]: r for r in records}


def test_valid_certificates_pass(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_as2_config(tmp_path, our_keys, partner_keys)
    code, records, err = certs(config.path, capsys)
    assert code == 0 and err == ""
    roles = by_role(records)
    assert set(roles) == {"ours", "partner"}
    assert roles["partner"]["subject"] == partner_keys.certificate.subject.rfc4514_string()
    assert roles["partner"]["file"].endswith("partner.p7b")
    assert roles["ours"]["state"] == "valid" and 360 <= roles["ours"]["days_left"] <= 365


def test_expiring_expired_and_broken_chains_fail_and_are_named(
    tmp_path: Path, our_keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    soon = pki.issue("CTAIFEP soon", days=10)
    code, records, err = certs(write_as2_config(tmp_path / "a", our_keys, soon).path, capsys)
    assert code == 1 and by_role(records)["partner"]["state"] == "expiring"
    assert "partner certificate" in err and "expiring (9 days left)" in err
    code, _, _ = certs(
        write_as2_config(tmp_path / "b", our_keys, soon).path, capsys, "--warn-days", "5"
    )
    assert code == 0  # 10 days left, warned from 5

    past = datetime.now(UTC) - timedelta(days=400)
    expired = pki.issue("CTAIFEP old", valid_from=past, days=30)
    code, records, err = certs(write_as2_config(tmp_path / "c", our_keys, expired).path, capsys)
    assert code == 1 and by_role(records)["partner"]["state"] == "expired"
    assert f"in {tmp_path / 'c' / 'keys' / 'partner.p7b'}: expired" in err  # the file to replace
    assert by_role(records)["partner"]["days_left"] < -300

    ca = pki.issue("Partner CA", ca=True)
    orphan = pki.issue("CTAIFEP issued", issuer=ca)  # the bundle lacks its CA
    code, records, err = certs(write_as2_config(tmp_path / "d", our_keys, orphan).path, capsys)
    partner = by_role(records)["partner"]
    assert code == 1 and partner["state"] == "valid"
    assert "chain incomplete" in partner["chain_problems"] and "Partner CA" in err
