"""Return flows through the gateway: stored, correlated, decided, filed — via `raccord import`
and the pipeline's entry point."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from flows import cppstatut
from gateway.cli.commands import main
from gateway.folders import Layout
from gateway.journal import JournalDB
from gateway.returns import pipeline as returns
from protocols import memory
from tests.conftest import sample
from tests.gateway.harness import deliver, memory_config, rows, sidecar

_buckets = itertools.count()


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
def sent_flow(tmp_path: Path):  # type: ignore[no-untyped-def]
    bucket = f"returns-{next(_buckets)}"
    memory.BUCKETS.pop(bucket, None)
    config = memory_config(tmp_path, bucket)
    (row,) = deliver(config, {"facture.xml": invoice("F-100")})
    assert row.state == "sent" and row.mode == "complete"
    return config, row


def test_rejected_invoice_is_copied_to_rejected_with_its_reasons(
    tmp_path: Path, sent_flow, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
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
    tmp_path: Path, sent_flow, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    config, row = sent_flow
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
    tmp_path: Path, sent_flow, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
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
    tmp_path: Path, sent_flow, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
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


def test_a_return_interrupted_while_applying_is_applied_again(tmp_path: Path, sent_flow) -> None:  # type: ignore[no-untyped-def]
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


def test_the_daemon_finishes_returns_interrupted_by_a_stop(tmp_path: Path, sent_flow) -> None:  # type: ignore[no-untyped-def]
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
    tmp_path: Path, sent_flow
) -> None:  # type: ignore[no-untyped-def]
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
    tmp_path: Path, sent_flow, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
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
    tmp_path: Path, sent_flow
) -> None:  # type: ignore[no-untyped-def]
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
