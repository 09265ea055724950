"""flows.returns: CPP Statut parsed fully; other return flows read tolerantly, never fatally."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows import cppstatut
from flows.returns import Kind, parse

FLOW_ID = "20261123T101500Z-00a1b2"

FLOW_LEVEL = f"""<?xml version="1.0" encoding="UTF-8"?>
<CPPStatut Version="1.19">
  <Enveloppe>
    <EnveloppeUnitaire>
      <Parametres>
        <ParametreIndiv><Code>DtPrd</Code><Valeurparametre>2026-11-23</Valeurparametre></ParametreIndiv>
        <ParametreIndiv><Code>IdFlx</Code><Valeurparametre>FSO1100A_VFE056_{FLOW_ID}.xml</Valeurparametre></ParametreIndiv>
      </Parametres>
      <Partenaires>
        <Emetteur><Id>AIFE</Id></Emetteur>
        <Recepteur><Id>VFE056</Id></Recepteur>
      </Partenaires>
    </EnveloppeUnitaire>
  </Enveloppe>
  <CPPFluxStatuts>
    <CPPFluxStatutUnitaire>
      <DonneesStatut>
        <IdStatut>93</IdStatut>
        <Horodatage>2026-11-23T10:20:00</Horodatage>
        <IdFlux>{FLOW_ID}</IdFlux>
        <Details>
          <LigneErreurDetail>
            <NatureErreur>REJET</NatureErreur>
            <CodeErreur>E123</CodeErreur>
            <LibelleErreur>Montant incohérent</LibelleErreur>
            <DescriptionErreur>Facture F-007 : total TTC faux</DescriptionErreur>
          </LigneErreurDetail>
          <LigneErreurDetail><CodeErreur>E999</CodeErreur></LigneErreurDetail>
        </Details>
      </DonneesStatut>
    </CPPFluxStatutUnitaire>
  </CPPFluxStatuts>
</CPPStatut>
"""

INVOICE_LEVEL = """<CPPStatut Version="1.19">
  <Enveloppe><EnveloppeUnitaire><Parametres>
    <ParametreIndiv><Code>DtPrd</Code><Valeurparametre>2026-11-24</Valeurparametre></ParametreIndiv>
  </Parametres></EnveloppeUnitaire></Enveloppe>
  <CPPFactureStatuts>
    <CPPFactureStatutUnitaire>
      <Fournisseur>
        <TypeIdentifiant>1</TypeIdentifiant><Identifiant>12345678200010</Identifiant>
        <RaisonSociale>Fournitures Durand</RaisonSociale>
      </Fournisseur>
      <Debiteur><Identifiant>11000201100044</Identifiant><CodeService>SERV1</CodeService></Debiteur>
      <DonneesStatut>
        <IdStatut>05</IdStatut><Horodatage>2026-11-24T09:00:00</Horodatage>
        <IdFacture>F-007</IdFacture><Commentaire>Bon de commande inconnu</Commentaire>
      </DonneesStatut>
    </CPPFactureStatutUnitaire>
    <CPPFactureStatutUnitaire>
      <Fournisseur><Identifiant>12345678200010</Identifiant></Fournisseur>
      <DonneesStatut><IdStatut>03</IdStatut><IdFacture>F-008</IdFacture></DonneesStatut>
    </CPPFactureStatutUnitaire>
    <CPPFactureStatutUnitaire>
      <DonneesStatut><IdStatut>27</IdStatut><IdFacture>F-009</IdFacture></DonneesStatut>
    </CPPFactureStatutUnitaire>
    <CPPFactureStatutUnitaire>
      <DonneesStatut><IdStatut>77</IdStatut><IdFacture>F-010</IdFacture></DonneesStatut>
    </CPPFactureStatutUnitaire>
    <CPPFactureStatutUnitaire><DonneesStatut><Horodatage>x</Horodatage></DonneesStatut></CPPFactureStatutUnitaire>
  </CPPFactureStatuts>
</CPPStatut>
"""


def write(tmp_path: Path, text: str | bytes, name: str = "ret.xml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_flow_level_cpp_statut(tmp_path: Path) -> None:
    ret = parse(write(tmp_path, FLOW_LEVEL))
    assert ret.kind is Kind.CPP_STATUT and ret.version == "1.19"
    assert ret.production_date == "2026-11-23"
    assert ret.flow_ref == f"FSO1100A_VFE056_{FLOW_ID}.xml"
    assert (ret.sender, ret.recipient) == ("AIFE", "VFE056")
    assert ret.flow_ids == (FLOW_ID,)
    (status,) = ret.flow_statuses
    assert (status.code, status.label, status.failed) == ("93", "erreur réception", True)
    assert status.timestamp == "2026-11-23T10:20:00" and status.flow_ref == FLOW_ID
    first, second = status.errors
    assert (first.nature, first.code, first.label) == ("REJET", "E123", "Montant incohérent")
    assert "F-007" in (first.description or "")
    assert (second.code, second.label, second.description) == ("E999", None, None)
    assert ret.unrecognised == ()


def test_invoice_level_cpp_statut_keeps_unknown_codes_and_reports_them(tmp_path: Path) -> None:
    ret = parse(write(tmp_path, INVOICE_LEVEL))
    assert ret.flow_statuses == () and ret.flow_ids == ()
    rejected, available, unlabelled, unknown = ret.invoice_statuses
    assert (rejected.code, rejected.rejected, rejected.invoice_number) == ("05", True, "F-007")
    assert rejected.label == "rejetée (autre motif)"
    assert (rejected.supplier_id, rejected.supplier_id_type) == ("12345678200010", "1")
    assert rejected.supplier_name == "Fournitures Durand"
    assert (rejected.debtor_id, rejected.debtor_service) == ("11000201100044", "SERV1")
    assert rejected.comment == "Bon de commande inconnu"
    assert (available.code, available.label, available.rejected) == (
        "03",
        "mise à disposition",
        False,
    )
    assert available.timestamp is None and available.debtor_id is None
    assert (unlabelled.code, unlabelled.label) == ("27", None)
    assert (unknown.code, unknown.label) == ("77", None)
    assert ret.unrecognised == (
        "invoice status code 27 has no published label",
        "unknown invoice status code 77",
        "CPPFactureStatutUnitaire without IdStatut (ignored)",
    )


def test_prefixes_bom_and_other_encodings_are_accepted(tmp_path: Path) -> None:
    text = FLOW_LEVEL.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')
    ret = parse(write(tmp_path, b"\xef\xbb\xbf" + FLOW_LEVEL.encode()))
    assert ret.flow_statuses[0].code == "93"
    latin = parse(write(tmp_path, text.encode("iso-8859-1"), "latin.xml"))
    assert latin.flow_statuses[0].errors[0].label == "Montant incohérent"


def test_aife_statut_and_reports_are_read_tolerantly(tmp_path: Path) -> None:
    document = f"""<ns:AIFEStatut xmlns:ns="urn:example:aife">
      <ns:Flux nom="FSO1100A_VFE056_{FLOW_ID}.xml"><ns:Etat>INTEGRE</ns:Etat></ns:Flux>
      <ns:Facture><ns:NumeroFacture>F-1</ns:NumeroFacture><ns:Statut>REJETEE</ns:Statut></ns:Facture>
      <ns:Autre>rien</ns:Autre>
    </ns:AIFEStatut>"""
    ret = parse(write(tmp_path, document))
    assert ret.kind is Kind.AIFE_STATUT and ret.root == "AIFEStatut"
    assert ret.flow_ids == (FLOW_ID,)
    assert ret.invoice_numbers == ("F-1",)
    assert ret.status_words == ("INTEGRE", "REJETEE")
    assert [(s.invoice_number, s.code, s.rejected) for s in ret.invoice_statuses] == [
        ("F-1", "05", True)
    ]
    assert ret.unrecognised == (
        "status INTEGRE names no invoice and is not a flow status (not applied)",
    )

    report = parse(write(tmp_path, "<CSO1100A><Ligne>ok</Ligne></CSO1100A>", "cso.xml"))
    assert report.kind is Kind.INTEGRATION_REPORT and report.flow_ids == ()


def test_malformed_empty_and_hostile_documents_are_unreadable_not_fatal(tmp_path: Path) -> None:
    cases = {
        "malformed.xml": b"<CPPStatut><Enveloppe></CPPStatut>",
        "empty.xml": b"",
        "xxe.xml": b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><CPPStatut>&e;</CPPStatut>',
        "binary.xml": bytes(range(256)),
    }
    for name, data in cases.items():
        ret = parse(write(tmp_path, data, name))
        assert ret.kind is Kind.UNREADABLE, name
        assert ret.unrecognised and ret.unrecognised[0].startswith("not readable as XML"), name
    assert "DTD" in parse(tmp_path / "xxe.xml").unrecognised[0]
    missing = parse(tmp_path / "nowhere.xml")
    assert missing.kind is Kind.UNREADABLE and "cannot read" in missing.unrecognised[0]


def test_statut_without_any_status_says_there_is_nothing_to_apply(tmp_path: Path) -> None:
    ret = parse(write(tmp_path, "<CPPStatut><Enveloppe/></CPPStatut>"))
    assert ret.kind is Kind.CPP_STATUT
    assert ret.unrecognised == (
        "no CPPFluxStatutUnitaire nor CPPFactureStatutUnitaire: nothing to apply",
    )


def test_aife_statut_statuses_are_read_record_by_record(tmp_path: Path) -> None:
    """A FEN1201A rejection used to be journaled `applied` while changing nothing: each element
    carrying a status (and an invoice number) is now one status, read as CPP Statut's are."""
    document = f"""<AIFEStatut>
      <Entete><IdFlux>{FLOW_ID}</IdFlux></Entete>
      <StatutFlux><CodeStatut>93</CodeStatut><Horodatage>2026-03-02T10:00:00</Horodatage>
        <IdFlux>{FLOW_ID}</IdFlux></StatutFlux>
      <StatutFacture><NumeroFacture>FA-1</NumeroFacture><CodeStatut>01</CodeStatut>
        <Horodatage>2026-03-02T10:01:00</Horodatage><Commentaire>ok</Commentaire>
        <IdentifiantFournisseur>12345678200010</IdentifiantFournisseur></StatutFacture>
      <StatutFacture><CodeStatut>05</CodeStatut><NumeroFacture>FA-12</NumeroFacture>
        <Motif>SIRET inconnu</Motif></StatutFacture>
      <StatutFacture><NumeroFacture>FA-123</NumeroFacture></StatutFacture>
      <StatutFacture><NumeroFacture>FA-2</NumeroFacture><Statut>INVENTE</Statut></StatutFacture>
    </AIFEStatut>"""
    ret = parse(write(tmp_path, document))
    assert ret.kind is Kind.AIFE_STATUT and ret.flow_ids == (FLOW_ID,)
    assert [(s.code, s.label, s.timestamp, s.flow_ref) for s in ret.flow_statuses] == [
        ("93", "erreur réception", "2026-03-02T10:00:00", FLOW_ID)
    ]
    assert ret.flow_statuses[0].failed
    found = [
        (s.invoice_number, s.code, s.timestamp, s.comment, s.supplier_id)
        for s in ret.invoice_statuses
    ]
    assert found == [
        ("FA-1", "01", "2026-03-02T10:01:00", "ok", "12345678200010"),
        ("FA-12", "05", None, "SIRET inconnu", None),
        ("FA-2", "INVENTE", None, None, None),
    ]
    assert ret.unrecognised == (
        "invoice FA-123 without a status (not applied)",
        "unknown invoice status INVENTE for invoice FA-2",
    )


def test_aife_statut_with_nothing_readable_says_so_first(tmp_path: Path) -> None:
    ret = parse(write(tmp_path, f"<AIFEStatut><Nom>{FLOW_ID}</Nom></AIFEStatut>"))
    assert ret.kind is Kind.AIFE_STATUT and not ret.flow_statuses and not ret.invoice_statuses
    assert ret.unrecognised == (
        "schema of AIFEStatut is not known to raccord and no status could be read from it: "
        "stored as received; found 1 flow id(s), 0 invoice number(s), 0 status word(s)",
    )


def test_other_unknown_documents_are_reported_never_applied(tmp_path: Path) -> None:
    document = "<CSO1100A><L><NumeroFacture>F-1</NumeroFacture><Statut>05</Statut></L></CSO1100A>"
    ret = parse(write(tmp_path, document, "cso.xml"))
    assert ret.kind is Kind.INTEGRATION_REPORT
    assert not ret.invoice_statuses and ret.invoice_numbers == ("F-1",)
    assert "integration_report documents are reported, never applied" in ret.unrecognised


# -- CPP Statut: what raccord's own simulator writes, read back whole --------------------------


def test_cpp_statut_written_then_read_keeps_every_field_and_timestamp(tmp_path: Path) -> None:
    """Horodatage is what orders an invoice's statuses: it must survive writing and reading."""
    document = cppstatut.build(
        cppstatut.Statut(
            flow_ref=f"FSO1100A_VFE056_{FLOW_ID}.xml",
            produced_at="2026-11-23T10:00:00",
            flow=[cppstatut.FlowLine("93", "2026-11-23T10:01:00", [("E1", "Facture F-1")])],
            invoices=[
                cppstatut.InvoiceLine("F-1", "05", "12345678200010", "2026-11-23T10:02:00", "c"),
                cppstatut.InvoiceLine("F-2", "01"),
            ],
        )
    )
    assert document.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    ret = parse(write(tmp_path, document))
    assert ret.version == "1.19" and ret.production_date == "2026-11-23T10:00:00"
    assert ret.flow_ref == f"FSO1100A_VFE056_{FLOW_ID}.xml" and ret.flow_ids == (FLOW_ID,)
    (flow,) = ret.flow_statuses
    assert (flow.code, flow.timestamp) == ("93", "2026-11-23T10:01:00")
    assert [(e.code, e.label) for e in flow.errors] == [("E1", "Facture F-1")]
    first, second = ret.invoice_statuses
    assert (first.invoice_number, first.code, first.timestamp, first.comment) == (
        "F-1",
        "05",
        "2026-11-23T10:02:00",
        "c",
    )
    assert (first.supplier_id, first.supplier_id_type) == ("12345678200010", "1")
    assert (second.supplier_id, second.timestamp, second.comment) == (None, None, None)
    assert ret.unrecognised == ()
    empty = parse(write(tmp_path, cppstatut.build(cppstatut.Statut("x", "y")), "e.xml"))
    assert "CPPFluxStatuts" not in cppstatut.build(cppstatut.Statut("x", "y")).decode()
    assert empty.flow_statuses == () and empty.invoice_statuses == ()


# -- CPP Statut: records without their usual wrapping, boundaries of the code ranges ----------


def test_cpp_statut_records_read_outside_donnees_statut_and_every_gap_reported(
    tmp_path: Path,
) -> None:
    document = f"""<CPPStatut>
      <Enveloppe><EnveloppeUnitaire><Parametres>
        <ParametreIndiv><Code>IdFlx</Code></ParametreIndiv>
      </Parametres><Partenaires><Emetteur/></Partenaires></EnveloppeUnitaire></Enveloppe>
      <CPPFluxStatuts>
        <CPPFluxStatutUnitaire><IdStatut>97</IdStatut><IdFlux>{FLOW_ID}</IdFlux>
        </CPPFluxStatutUnitaire>
        <CPPFluxStatutUnitaire><DonneesStatut><IdStatut>90</IdStatut></DonneesStatut>
          <IdFlux>{FLOW_ID}</IdFlux></CPPFluxStatutUnitaire>
        <CPPFluxStatutUnitaire><DonneesStatut/></CPPFluxStatutUnitaire>
      </CPPFluxStatuts>
      <CPPFactureStatuts>
        <CPPFactureStatutUnitaire><IdStatut>13</IdStatut><IdFacture>F-1</IdFacture>
          <Horodatage>2026-11-23T10:00:00</Horodatage></CPPFactureStatutUnitaire>
        <CPPFactureStatutUnitaire><DonneesStatut><IdStatut>41</IdStatut></DonneesStatut>
          <IdFacture>F-2</IdFacture></CPPFactureStatutUnitaire>
        <CPPFactureStatutUnitaire><DonneesStatut><IdStatut>12</IdStatut>
          <IdFacture/></DonneesStatut></CPPFactureStatutUnitaire>
        <CPPFactureStatutUnitaire><DonneesStatut><IdStatut>42</IdStatut>
          <IdFacture>F-4</IdFacture></DonneesStatut></CPPFactureStatutUnitaire>
      </CPPFactureStatuts>
    </CPPStatut>"""
    ret = parse(write(tmp_path, document))
    assert ret.root == "CPPStatut" and ret.version is None
    assert ret.parameters == {"IdFlx": ""} and ret.sender == "" and ret.recipient is None
    assert [(s.code, s.label, s.flow_ref) for s in ret.flow_statuses] == [
        ("97", None, FLOW_ID),
        ("90", "reçu", FLOW_ID),
    ]
    assert ret.flow_ids == (FLOW_ID,)
    assert [(s.code, s.invoice_number, s.timestamp) for s in ret.invoice_statuses] == [
        ("13", "F-1", "2026-11-23T10:00:00"),
        ("41", "F-2", None),
        ("12", None, None),
        ("42", "F-4", None),
    ]
    assert ret.unrecognised == (
        "unknown flow status code 97",
        "CPPFluxStatutUnitaire without IdStatut (ignored)",
        "invoice status code 13 has no published label",
        "invoice status code 41 has no published label",
        "invoice status 12 without IdFacture",
        "unknown invoice status code 42",
    )


@pytest.mark.parametrize(
    ("root", "kind"),
    [
        ("AIFEStatut", Kind.AIFE_STATUT),
        ("StatutAIFE", Kind.AIFE_STATUT),
        ("AIFEFlux", Kind.UNKNOWN),
        ("Statut", Kind.UNKNOWN),
        ("CSO1100A", Kind.INTEGRATION_REPORT),
        ("CRDetaille", Kind.INTEGRATION_REPORT),
        ("RapportDepot", Kind.INTEGRATION_REPORT),
        ("CompteRenduIntegration", Kind.INTEGRATION_REPORT),
        ("Facture", Kind.UNKNOWN),
    ],
)
def test_documents_of_unknown_schema_are_classed_by_their_root(
    tmp_path: Path, root: str, kind: Kind
) -> None:
    ret = parse(write(tmp_path, f"<{root}><x>1</x></{root}>"))
    assert (ret.kind, ret.root) == (kind, root)


def test_a_tolerant_field_left_empty_is_no_value(tmp_path: Path) -> None:
    document = (
        "<AIFEStatut><Facture><NumeroFacture>F-1</NumeroFacture><CodeStatut/></Facture>"
        "<Facture><NumeroFacture> </NumeroFacture><CodeStatut>05</CodeStatut></Facture>"
        "</AIFEStatut>"
    )
    ret = parse(write(tmp_path, document))
    assert ret.invoice_statuses == () and ret.flow_statuses == ()
    assert ret.unrecognised[1:] == (
        "invoice F-1 without a status (not applied)",
        "status 05 names no invoice and is not a flow status (not applied)",
    )


def test_an_aife_status_gets_the_label_of_its_code(tmp_path: Path) -> None:
    document = (
        "<AIFEStatut><F><NumeroFacture>F-1</NumeroFacture><Statut>REJETEE</Statut></F>"
        "<G><Etat>93</Etat></G></AIFEStatut>"
    )
    ret = parse(write(tmp_path, document))
    assert ret.invoice_statuses[0].label == "rejetée (autre motif)"
    assert (ret.flow_statuses[0].code, ret.flow_statuses[0].label) == ("93", "erreur réception")
