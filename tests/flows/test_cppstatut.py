"""The CPP Statut writer, read back by the parser raccord applies returns with."""

from __future__ import annotations

from pathlib import Path
from typing import cast

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


def test_the_document_has_the_shape_of_the_cpp_statut_schema() -> None:
    """A strict reader finds each value at the path the CPPStatutPivot schema gives it."""
    from lxml import etree

    statut = cppstatut.Statut(
        flow_ref="R",
        produced_at="P",
        flow=[cppstatut.FlowLine("93", "T", [("E1", "L")])],
        invoices=[cppstatut.InvoiceLine("F-1", "05", "S", "T2", "C")],
        version="1.20",
    )
    root = etree.fromstring(cppstatut.build(statut))
    assert root.tag == "CPPStatut" and root.get("Version") == "1.20"

    def elements(path: str) -> list[etree._Element]:
        return cast("list[etree._Element]", root.xpath(path))

    def at(path: str) -> list[str | None]:
        return [e.text for e in elements(path)]

    params = "Enveloppe/EnveloppeUnitaire/Parametres/ParametreIndiv"
    assert at(f"{params}/Code") == ["DtPrd", "IdFlx"]
    assert at(f"{params}/Valeurparametre") == ["P", "R"]
    flow = "CPPFluxStatuts/CPPFluxStatutUnitaire/DonneesStatut"
    assert at(f"{flow}/IdStatut") == ["93"] and at(f"{flow}/Horodatage") == ["T"]
    assert at(f"{flow}/Details/LigneErreurDetail/CodeErreur") == ["E1"]
    assert at(f"{flow}/Details/LigneErreurDetail/LibelleErreur") == ["L"]
    unit = "CPPFactureStatuts/CPPFactureStatutUnitaire"
    assert at(f"{unit}/Fournisseur/TypeIdentifiant") == ["1"]
    assert at(f"{unit}/Fournisseur/Identifiant") == ["S"]
    assert [e.tag for e in elements(f"{unit}/DonneesStatut/*")] == [
        "IdStatut",
        "IdFacture",
        "Horodatage",
        "Commentaire",
    ]
    assert at(f"{unit}/DonneesStatut/*") == ["05", "F-1", "T2", "C"]
    bare = etree.fromstring(cppstatut.build(cppstatut.Statut("R", "P")))
    assert bare.get("Version") == "1.19" and [e.tag for e in bare] == ["Enveloppe"]
    no_error = cppstatut.Statut("R", "P", flow=[cppstatut.FlowLine("90", "T")])
    assert not etree.fromstring(cppstatut.build(no_error)).xpath(f"{flow}/Details")
