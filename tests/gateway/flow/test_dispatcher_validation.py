"""Validation in the running gateway (memory sender, real rule sets in spawned workers):
under block an invalid invoice is never sent and says which rule it breaks; under warn it is
sent and its receipt says what would be rejected; a Complète lot never carries an invalid
invoice (the lot leaves without it); a validation over its budget files the file alone."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.cli.commands import main
from gateway.config import Config
from gateway.journal import FlowRow
from protocols.testing import memory
from tests import invoices
from tests.gateway.harness import drop, memory_config_text, rows, running, sidecar, until

_buckets = itertools.count()


def config_for(tmp_path: Path, validation: str, *, extra: str = "", gateway: str = "") -> Config:
    bucket = f"validation-{next(_buckets)}"
    memory.BUCKETS.pop(bucket, None)
    path = tmp_path / "raccord.toml"
    path.write_text(
        memory_config_text(
            tmp_path / "data",
            bucket,
            validation=validation,
            connection_extra=extra,
            gateway_extra=gateway,
        )
    )
    return config_module.load(path)


def bucket_of(config: Config) -> memory.Bucket:
    return memory.bucket(config.connections[0].settings.bucket)


def run(config: Config, documents: dict[str, bytes], settled: int) -> tuple[list[FlowRow], float]:
    """Drop ``documents``, wait until ``settled`` flows are sent, in error or packed; the rows
    and the value of raccord_invoices_invalid_total{rule="BR-10"}."""

    async def main() -> float:
        async with running(config) as gateway:
            for name, data in documents.items():
                drop(config, name, data)

            def done() -> bool:
                return (
                    len([r for r in rows(config) if r.state in ("sent", "error", "packed")])
                    >= settled
                )

            await until(done, timeout=60, what=f"{settled} flows settled")
            value = gateway.metrics.registry.get_sample_value(
                "raccord_invoices_invalid_total",
                {"connection": config.connections[0].name, "rule": "BR-10"},
            )
            return value or 0.0

    counted = asyncio.run(main())
    return rows(config), counted


def by_name(found: list[FlowRow]) -> dict[str, FlowRow]:
    return {row.original_name: row for row in found if row.packaging is None}


def test_under_block_an_invalid_invoice_is_not_sent_and_names_its_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(tmp_path, "block")
    found, counted = run(
        config,
        {"good.xml": invoices.ubl("G-1"), "bad.xml": invoices.ubl_without_buyer_address()},
        settled=2,
    )
    flows = by_name(found)
    good, bad = flows["good.xml"], flows["bad.xml"]
    assert good.state == "sent"
    assert sidecar(good, ".receipt.json")["validation"]["status"] == "valid"
    assert bad.state == "error" and bad.reason == "invalid_invoice"
    assert (bad.message or "").startswith("the invoice breaks rule BR-10:")
    error = sidecar(bad, ".error.json")
    assert error["reason"] == "invalid_invoice"
    assert error["validation"]["status"] == "invalid"
    assert error["validation"]["rules"] == ["XSD", "EN16931"]
    assert error["validation"]["errors"][0]["rule"] == "BR-10"
    assert list(bucket_of(config).files) == [good.remote_name]  # never sent
    assert counted == 1
    # raccord flows shows the outcome, and the whole object in JSON.
    capsys.readouterr()
    assert main(["flows", "--config", str(config.path), "--format", "csv"]) == 0
    listed = {line.split(",")[3]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert ",invalid BR-10," in listed["bad.xml"] and ",valid," in listed["good.xml"]
    assert main(["flows", "--config", str(config.path), "--format", "json"]) == 0
    as_json = {f["original_name"]: f for f in json.loads(capsys.readouterr().out)}
    assert as_json["bad.xml"]["validation"]["errors"][0]["rule"] == "BR-10"


def test_under_warn_an_invalid_invoice_is_sent_and_its_receipt_carries_the_rules(
    tmp_path: Path,
) -> None:
    config = config_for(tmp_path, "warn")
    found, counted = run(config, {"bad.xml": invoices.ubl_without_buyer_address()}, settled=1)
    (bad,) = found
    assert bad.state == "sent"
    receipt = sidecar(bad, ".receipt.json")
    assert receipt["validation"]["status"] == "invalid"
    assert [e["rule"] for e in receipt["validation"]["errors"]] == ["BR-10"]
    assert counted == 1


@pytest.mark.parametrize("validation", ["warn", "block"])
def test_a_complete_lot_leaves_without_its_invalid_invoice(tmp_path: Path, validation: str) -> None:
    """Under Complète one invalid invoice would reject every invoice of its lot: it is filed
    alone (even under warn) and the lot goes with the others."""
    lot = 'lot = { max_invoices = 3, max_wait = "30s", packaging = "tar.gz" }'
    config = config_for(tmp_path, validation, extra=lot)
    documents = {
        "a.xml": invoices.ubl("L-1"),
        "b.xml": invoices.ubl_wrong_total("L-2"),
        "c.xml": invoices.ubl("L-3"),
        "d.xml": invoices.ubl("L-4"),
    }
    found, _ = run(config, documents, settled=5)  # 3 packed, 1 error, the lot sent
    flows = by_name(found)
    assert flows["b.xml"].state == "error" and flows["b.xml"].reason == "invalid_invoice"
    assert "BR-CO-15" in (flows["b.xml"].message or "")
    if validation == "warn":
        assert "whole lot" in (flows["b.xml"].message or "")
    assert sidecar(flows["b.xml"], ".error.json")["validation"]["errors"][0]["rule"] == "BR-CO-15"
    (sent_lot,) = [row for row in found if row.packaging is not None]
    assert sent_lot.state == "sent"
    members = sorted(row.original_name for row in found if row.lot_id == sent_lot.flow_id)
    assert members == ["a.xml", "c.xml", "d.xml"]


def test_a_file_over_the_analysis_timeout_is_filed_alone_with_analysis_timeout(
    tmp_path: Path,
) -> None:
    config = config_for(tmp_path, "block", gateway='analysis_timeout = "100ms"')
    found, _ = run(config, {"huge.xml": invoices.large_ubl(4000)}, settled=1)
    (huge,) = found
    assert huge.state == "error" and huge.reason == "analysis_timeout"
    assert "analysis_timeout" in (huge.message or "")
    assert not bucket_of(config).files


def test_under_off_nothing_is_validated(tmp_path: Path) -> None:
    config = config_for(tmp_path, "off")
    found, counted = run(config, {"bad.xml": invoices.ubl_without_buyer_address()}, settled=1)
    (bad,) = found
    assert bad.state == "sent" and bad.validation is None
    assert sidecar(bad, ".receipt.json")["validation"] is None
    assert counted == 0
