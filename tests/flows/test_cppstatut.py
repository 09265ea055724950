"""The CPP Statut writer, read back by the parser raccord applies returns with."""

from __future__ import annotations

from pathlib import Path

from flows import cppstatut
from flows.returns import Kind, parse


def test_what_is_written_is_what_the_parser_reads(tmp_path: Path) -> None:
    statut = cppstatut.Statut(
        flow_ref="FSO1100A_VFE056_20261123T100000Z-00ab12.tar.gz",
        produced_at="2026-11-23T10:05:00",
        flow=[cppstatut.FlowLine("93", "2026-11-23T10:04:00", [("E7", "facture <F&7> en erreur")])],
        invoices=[
            cppstatut.InvoiceLine("F-7", "05", "12345678200010", comment="montant < 0 & faux"),
            cppstatut.InvoiceLine("F-8", "01"),
        ],
    )
    path = tmp_path / "statut.xml"
    path.write_bytes(cppstatut.build(statut))
    ret = parse(path)
    assert ret.kind is Kind.CPP_STATUT and ret.unrecognised == ()
    assert ret.flow_ids == ("20261123T100000Z-00ab12",)
    assert ret.parameters["DtPrd"] == "2026-11-23T10:05:00"
    (flow,) = ret.flow_statuses
    assert (flow.code, flow.failed, flow.errors[0].label) == ("93", True, "facture <F&7> en erreur")
    first, second = ret.invoice_statuses
    assert (first.invoice_number, first.code, first.supplier_id) == ("F-7", "05", "12345678200010")
    assert first.comment == "montant < 0 & faux" and first.rejected
    assert (second.invoice_number, second.supplier_id, second.rejected) == ("F-8", None, False)
