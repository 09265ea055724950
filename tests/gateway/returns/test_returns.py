"""Return flows through the gateway: stored, correlated, decided, filed — via `raccord import`
and the pipeline's entry point."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from flows import cppstatut
from gateway.cli.commands import main
from gateway.config import Config
from gateway.folders import Layout
from gateway.journal import FlowRow, JournalDB
from gateway.ops.metrics import JournalCollector
from gateway.returns import pipeline as returns
from protocols.testing import memory
from tests.conftest import sample
from tests.gateway.harness import deliver, memory_config, rows, sidecar

_buckets = itertools.count()

SentFlow = tuple[Config, FlowRow]
"""The ``sent_flow`` fixture: a configuration and its one flow, sent."""


def invoice(number: str) -> bytes:
    return sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())


def cpp_statut(
    *,
    flow_ref: str = "",
    flow_code: str | None = None,
    errors: tuple[str, ...] = (),
    invoices: tuple[tuple[str, str], ...] = (),
    supplier: str = "12345678200010",
) -> bytes:
    """A CPP Statut return: a flow status with its errors, and (invoice number, code) pairs."""
    return cppstatut.build(
        cppstatut.Statut(
            flow_ref=flow_ref,
            produced_at="2026-11-23T10:00:00",
            flow=[
                cppstatut.FlowLine(
                    flow_code, "2026-11-23T10:00:00", [(f"E{i}", e) for i, e in enumerate(errors)]
                )
            ]
            if flow_code
            else [],
            invoices=[
                cppstatut.InvoiceLine(number, code, supplier, comment="motif")
                for number, code in invoices
            ],
        )
    )


@pytest.fixture
def sent_flow(tmp_path: Path) -> SentFlow:
    bucket = f"returns-{next(_buckets)}"
    memory.BUCKETS.pop(bucket, None)
    config = memory_config(tmp_path, bucket)
    (row,) = deliver(config, {"facture.xml": invoice("F-100")})
    assert row.state == "sent" and row.mode == "complete"
    return config, row


def test_rejected_invoice_is_copied_to_rejected_with_its_reasons(
    tmp_path: Path, sent_flow: SentFlow, capsys: pytest.CaptureFixture[str]
) -> None:
    config, row = sent_flow
    ret = tmp_path / "FEN1200A_1.xml"
    ret.write_bytes(cpp_statut(invoices=(("F-100", "05"),)))
    assert main(["import", "--config", str(config.path), str(ret)]) == 0
    out = capsys.readouterr().out
    assert f"FEN1200A_1.xml: applied ({row.flow_id}; 1 rejected, 0 collateral)" in out
    assert ret.exists()  # an import copies: the operator's file is left alone

    layout = Layout(config.gateway.data_dir)
    (copy,) = [p for p in layout.rejected("qualif-mem").iterdir() if p.suffix == ".xml"]
    assert copy.name == "facture.xml" and copy.read_bytes() == invoice("F-100")
    rejection = json.loads((copy.parent / "facture.xml.rejection.json").read_text())
    assert rejection["collateral"] is False and rejection["status_code"] == "05"
    assert rejection["reasons"] == ["invoice status 05 (rejetée (autre motif)): motif"]
    assert rejection["flow_id"] == row.flow_id
    status = sidecar(row, ".status.json")
    assert status["invoices"][0]["rejected"] is True
    assert [h["code"] for h in status["history"]] == ["05"]
    (stored,) = list(layout.inbox("qualif-mem").iterdir())
    assert stored.read_bytes() == ret.read_bytes()

    assert main(["flows", "--config", str(config.path), "--format", "json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["return_status"] == "rejected" and listed["state"] == "sent"


def test_the_same_return_twice_is_applied_once(
    tmp_path: Path, sent_flow: SentFlow, capsys: pytest.CaptureFixture[str]
) -> None:
    config, row = sent_flow
    assert row.remote_name is not None
    ret = tmp_path / "status.xml"
    ret.write_bytes(cpp_statut(flow_ref=row.remote_name, flow_code="90"))
    again = tmp_path / "status-again.xml"
    again.write_bytes(ret.read_bytes())
    assert main(["import", "--config", str(config.path), str(ret), str(again)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("status.xml: applied") and "0 rejected" in out[0]
    assert out[1].startswith("status-again.xml: duplicate")
    layout = Layout(config.gateway.data_dir)
    db = JournalDB(layout.journal)
    assert [s["code"] for s in db.statuses(row.flow_id)] == ["90"]
    assert len(db.returns()) == 1
    db.close()
    assert len(list(layout.inbox("qualif-mem").iterdir())) == 1
    assert sidecar(row, ".status.json")["history"][0]["code"] == "90"
    assert not list(layout.rejected("qualif-mem").iterdir())


def test_a_return_for_no_known_flow_is_kept_and_listed(
    tmp_path: Path, sent_flow: SentFlow, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = sent_flow
    ret = tmp_path / "stray.xml"
    ret.write_bytes(cpp_statut(flow_ref="FSO1100A_X_20250101T000000Z-abcdef.xml", flow_code="93"))
    assert main(["import", "--config", str(config.path), str(ret)]) == 0
    assert "stray.xml: unmatched (no flow" in capsys.readouterr().out
    cfg = ["--config", str(config.path), "--format", "json"]
    assert main(["flows", *cfg, "--returns", "--return-state", "unmatched"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["file"] == "stray.xml" and Path(listed["inbox_path"]).exists()
    assert "20250101T000000Z-abcdef is not a flow of qualif-mem" in listed["message"]


def test_an_import_that_is_no_return_flow_is_refused_and_said(
    tmp_path: Path, sent_flow: SentFlow, capsys: pytest.CaptureFixture[str]
) -> None:
    """By hand, a file that is no return flow is a mistake to say, not a return to keep (a
    partner's unreadable return, fetched by the daemon, is still kept)."""
    config, _ = sent_flow
    bad = tmp_path / "garbage.xml"
    bad.write_bytes(b"\x00\x01 not xml")
    an_invoice = tmp_path / "invoice.xml"
    an_invoice.write_bytes(sample("ubl-invoice.xml"))
    missing = tmp_path / "missing.xml"
    command = ["import", "--config", str(config.path), str(bad), str(an_invoice), str(missing)]
    assert main(command) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"raccord: {bad}: not a return flow (not readable as XML: "
        + captured.err.split("not readable as XML: ")[1].split("\n")[0],
        f"raccord: {an_invoice}: this is an invoice (ubl-invoice, FSO1100A), not a return "
        "flow: to send it, drop it in outbox/qualif-mem/; nothing imported",
        f"raccord: {missing}: no such file",
    ]
    assert captured.err.splitlines()[0].endswith("; nothing imported")
    assert not list(Layout(config.gateway.data_dir).inbox("qualif-mem").iterdir())


def test_a_return_interrupted_while_applying_is_applied_again(
    tmp_path: Path, sent_flow: SentFlow
) -> None:
    config, _ = sent_flow
    layout = Layout(config.gateway.data_dir)
    db = JournalDB(layout.journal)
    stored = layout.inbox("qualif-mem") / "20261123T100000Z-000001--late.xml"
    stored.write_bytes(cpp_statut(invoices=(("F-100", "04"),)))
    db.record_return("20261123T100000Z-000001", "qualif-mem", "late.xml", str(stored), "x" * 64)
    assert returns.pending(db) == ["20261123T100000Z-000001"]
    outcome = returns.apply(db, layout, "20261123T100000Z-000001")
    assert outcome.state == "applied" and outcome.rejected == 1
    assert returns.pending(db) == []
    assert returns.apply(db, layout, "20261123T100000Z-000001").rejected == 0  # idempotent
    db.close()
    assert len(list(layout.rejected("qualif-mem").glob("*.rejection.json"))) == 1
    assert rows(config)[0].state == "sent"


def test_the_daemon_finishes_returns_interrupted_by_a_stop(
    tmp_path: Path, sent_flow: SentFlow
) -> None:
    config, row = sent_flow
    layout = Layout(config.gateway.data_dir)
    stored = layout.inbox("qualif-mem") / "20261123T100000Z-000002--late.xml"
    stored.write_bytes(cpp_statut(invoices=(("F-100", "11"),)))
    db = JournalDB(layout.journal)
    db.record_return("20261123T100000Z-000002", "qualif-mem", "late.xml", str(stored), "y" * 64)
    db.close()
    deliver(config, {})  # a start with nothing new to send
    db = JournalDB(layout.journal)
    assert db.get_return("20261123T100000Z-000002")["state"] == "applied"  # type: ignore[index]
    (paid,) = db.invoices(row.flow_id)
    db.close()
    assert (paid["status_code"], paid["final"], paid["rejected"]) == ("11", 1, 0)


def test_a_rejection_interrupted_after_its_path_was_chosen_is_written_once(
    tmp_path: Path, sent_flow: SentFlow
) -> None:
    config, row = sent_flow
    layout = Layout(config.gateway.data_dir)
    db = JournalDB(layout.journal)
    chosen = layout.rejected("qualif-mem") / "facture.xml"
    # As a crash would leave it: verdict and path journaled, nothing written yet.
    db.set_invoice_status(row.flow_id, 0, rejected=1, rejected_path=str(chosen), reasons="[]")
    stored = layout.inbox("qualif-mem") / "20261123T100000Z-000003--r.xml"
    stored.write_bytes(cpp_statut(invoices=(("F-100", "05"),)))
    db.record_return("20261123T100000Z-000003", "qualif-mem", "r.xml", str(stored), "z" * 64)
    assert returns.apply(db, layout, "20261123T100000Z-000003").rejected == 1
    db.close()
    assert sorted(p.name for p in layout.rejected("qualif-mem").iterdir()) == [
        "facture.xml",
        "facture.xml.rejection.json",
    ]
    assert chosen.read_bytes() == invoice("F-100")


def test_a_return_id_already_used_is_never_reused(
    tmp_path: Path, sent_flow: SentFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = sent_flow
    layout = Layout(config.gateway.data_dir)
    taken, fresh = "20261123T100000Z-00000a", "20261123T100000Z-00000b"
    earlier = layout.inbox("qualif-mem") / f"{taken}--a.xml"
    earlier.write_bytes(b"<CPPStatut/>")

    class Ids:
        issued = iter([taken, fresh])

        def new(self, now: object) -> str:
            return next(self.issued)

    monkeypatch.setattr(returns, "_ids", Ids())
    ret = tmp_path / "a.xml"
    ret.write_bytes(cpp_statut(flow_code="90"))
    db = JournalDB(layout.journal)
    outcome = returns.receive(db, layout, "qualif-mem", ret)
    db.close()
    assert outcome.return_id == fresh
    assert earlier.read_bytes() == b"<CPPStatut/>"  # the stored file was not overwritten


def test_a_return_stored_but_not_journaled_before_a_crash_is_applied_at_start(
    tmp_path: Path, sent_flow: SentFlow
) -> None:
    config, row = sent_flow
    layout = Layout(config.gateway.data_dir)
    data = cpp_statut(invoices=(("F-100", "05"),))
    orphan = layout.inbox("qualif-mem") / "20261123T100000Z-000004--fetched.xml"
    orphan.write_bytes(data)  # as a crash right after the move into the inbox leaves it
    copy = layout.inbox("qualif-mem") / "20261123T100000Z-000005--fetched-again.xml"
    copy.write_bytes(data)  # the same bytes, stored a second time before the crash
    deliver(config, {})
    db = JournalDB(layout.journal)
    (ret,) = db.returns()
    (invoice_row,) = db.invoices(row.flow_id)
    db.close()
    assert (ret["return_id"], ret["state"], ret["file"]) == (
        "20261123T100000Z-000004",
        "applied",
        "fetched.xml",
    )
    assert invoice_row["rejected"] == 1
    assert orphan.exists() and not copy.exists()


# -- the status history: current status derived, final never replaced ------------------------


def stamped(flow_ref: str, *lines: tuple[str, str, str]) -> bytes:
    """A CPP Statut with (invoice number, code, Horodatage) lines."""
    return cppstatut.build(
        cppstatut.Statut(
            flow_ref=flow_ref,
            produced_at="2026-11-23T12:00:00",
            invoices=[
                cppstatut.InvoiceLine(number, code, "12345678200010", at=at)
                for number, code, at in lines
            ],
        )
    )


def import_returns(config: Config, tmp_path: Path, *documents: bytes) -> None:
    for n, data in enumerate(documents):
        path = tmp_path / f"FEN1200A_{n}.xml"
        path.write_bytes(data)
        assert main(["import", "--config", str(config.path), str(path)]) == 0


def current(config: Config, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert main(["flows", "--config", str(config.path), "--format", "json", *args]) == 0
    listed: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return listed


def test_a_stale_status_arriving_after_payment_never_replaces_it(
    tmp_path: Path, sent_flow: SentFlow, capsys: pytest.CaptureFixture[str]
) -> None:
    """11 (mise en paiement, h+5) then 01 (déposée, h+0) in a later file: the invoice stays paid
    in status.json and `raccord flows`; the 01 is in the history."""
    config, row = sent_flow
    assert row.remote_name is not None
    import_returns(
        config,
        tmp_path,
        stamped(row.remote_name, ("F-100", "11", "2026-11-23T15:00:00")),
        stamped(row.remote_name, ("F-100", "01", "2026-11-23T10:00:00")),
    )
    status = sidecar(row, ".status.json")
    assert status["invoices"][0]["status_code"] == "11" and status["invoices"][0]["final"]
    assert [h["code"] for h in status["history"]] == ["11", "01"]
    (listed,) = current(config, capsys)
    assert listed["return_status"] == "11 mise en paiement"
    assert [r["flow_id"] for r in current(config, capsys, "--status", "11")] == [row.flow_id]
    assert current(config, capsys, "--status", "01") == []


def test_a_stale_status_after_a_rejection_keeps_it_rejected_and_listed(
    tmp_path: Path, sent_flow: SentFlow, capsys: pytest.CaptureFixture[str]
) -> None:
    config, row = sent_flow
    assert row.remote_name is not None
    import_returns(
        config,
        tmp_path,
        stamped(row.remote_name, ("F-100", "05", "2026-11-23T15:00:00")),
        stamped(row.remote_name, ("F-100", "01", "2026-11-23T10:00:00")),
    )
    invoice_view = sidecar(row, ".status.json")["invoices"][0]
    assert (invoice_view["status_code"], invoice_view["rejected"]) == ("05", True)
    assert [r["flow_id"] for r in current(config, capsys, "--status", "05")] == [row.flow_id]


def test_a_payment_after_a_rejection_is_an_anomaly_not_applied(
    tmp_path: Path, sent_flow: SentFlow, capsys: pytest.CaptureFixture[str]
) -> None:
    """11 after 05: kept in the history, logged as return.anomaly, the rejection stands."""
    config, row = sent_flow
    assert row.remote_name is not None
    import_returns(
        config, tmp_path, stamped(row.remote_name, ("F-100", "05", "2026-11-23T10:00:00"))
    )
    layout = Layout(config.gateway.data_dir)
    path = tmp_path / "late.xml"
    path.write_bytes(stamped(row.remote_name, ("F-100", "11", "2026-11-23T15:00:00")))
    db = JournalDB(layout.journal)
    try:
        outcome = returns.receive(db, layout, "qualif-mem", path)
    finally:
        db.close()
    assert outcome.state == "applied" and len(outcome.anomalies) == 1
    assert "status 11" in outcome.anomalies[0] and "final status 05" in outcome.anomalies[0]
    status = sidecar(row, ".status.json")
    assert (status["invoices"][0]["status_code"], status["invoices"][0]["rejected"]) == (
        "05",
        True,
    )
    assert [h["code"] for h in status["history"]] == ["05", "11"]


def test_a_rejection_after_payment_is_an_anomaly_and_files_nothing(
    tmp_path: Path, sent_flow: SentFlow
) -> None:
    config, row = sent_flow
    assert row.remote_name is not None
    import_returns(
        config,
        tmp_path,
        stamped(row.remote_name, ("F-100", "11", "2026-11-23T10:00:00")),
        stamped(row.remote_name, ("F-100", "05", "2026-11-23T15:00:00")),
    )
    status = sidecar(row, ".status.json")
    assert (status["invoices"][0]["status_code"], status["invoices"][0]["rejected"]) == (
        "11",
        False,
    )
    assert not list(Layout(config.gateway.data_dir).rejected("qualif-mem").iterdir())


def test_aife_statut_rejection_is_applied(tmp_path: Path, sent_flow: SentFlow) -> None:
    """A FEN1201A rejection used to be journaled `applied` and change nothing."""
    config, row = sent_flow
    document = (
        f"<AIFEStatut><IdFlux>{row.remote_name}</IdFlux><Facture>"
        "<NumeroFacture>F-100</NumeroFacture><CodeStatut>05</CodeStatut>"
        "<Motif>SIRET inconnu</Motif></Facture></AIFEStatut>"
    )
    import_returns(config, tmp_path, document.encode())
    status = sidecar(row, ".status.json")
    assert status["invoices"][0]["status_code"] == "05" and status["invoices"][0]["rejected"]
    assert len(list(Layout(config.gateway.data_dir).rejected("qualif-mem").iterdir())) == 2


def test_a_return_with_nothing_readable_is_unrecognised_never_applied(
    tmp_path: Path, sent_flow: SentFlow, capsys: pytest.CaptureFixture[str]
) -> None:
    config, row = sent_flow
    path = tmp_path / "FEN1201A.xml"
    path.write_bytes(f"<AIFEStatut><Truc>{row.remote_name}</Truc></AIFEStatut>".encode())
    assert main(["import", "--config", str(config.path), str(path)]) == 0
    assert "FEN1201A.xml: unrecognised" in capsys.readouterr().out
    (listed,) = current(config, capsys, "--returns")
    assert listed["state"] == "unrecognised" and "not known to raccord" in listed["message"]
    assert "return_status" not in sidecar(row, ".receipt.json")
    assert not Path(row.final_path + ".status.json").exists()  # type: ignore[operator]


def test_metrics_count_invoices_by_current_status_and_returns_by_state(
    tmp_path: Path, sent_flow: SentFlow
) -> None:
    """Metrics read the current status (11 after a stale 01), and count every return's
    outcome, unmatched and unrecognised ones included."""
    config, row = sent_flow
    assert row.remote_name is not None
    import_returns(
        config,
        tmp_path,
        stamped(row.remote_name, ("F-100", "11", "2026-11-23T15:00:00")),
        stamped(row.remote_name, ("F-100", "01", "2026-11-23T10:00:00")),
        stamped("20250101T000000Z-abcdef", ("F-999", "01", "2026-11-23T10:00:00")),
        b"<AIFEStatut/>",
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in JournalCollector(Layout(config.gateway.data_dir).journal).collect()
        for s in family.samples
    }
    conn = ("connection", "qualif-mem")
    assert samples[("raccord_invoices", (("code", "11"), conn))] == 1
    assert ("raccord_invoices", (("code", "01"), conn)) not in samples
    assert samples[("raccord_returns", (conn, ("state", "applied")))] == 2
    assert samples[("raccord_returns", (conn, ("state", "unmatched")))] == 1
    assert samples[("raccord_returns", (conn, ("state", "unrecognised")))] == 1
