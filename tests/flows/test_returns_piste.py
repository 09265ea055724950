"""flows.returns on what the PISTE API answers: integration reports and invoice searches, every
state and field read, a junk entry never hiding the rest, JSON that is not raccord's said so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.returns import FLOW_FAILED, PISTE_STATE_LABELS, Kind, ReturnFlow, parse
from tests.flows.test_returns import FLOW_ID, write


def _piste(tmp_path: Path, document: dict[str, Any]) -> ReturnFlow:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(document))
    return parse(path)


def test_a_piste_report_becomes_a_flow_status_with_its_errors(tmp_path: Path) -> None:
    ret = _piste(
        tmp_path,
        {
            "format": "raccord/piste-consulterCRDetaille",
            "numeroFluxDepot": "DF42",
            "nomFichier": "FSO1100A_VFE056_20261123T100000Z-abc123.xml",
            "answer": {
                "codeRetour": 0,
                "etatCourantDepotFlux": "IN_INTEGRE_PARTIEL",
                "listeErreurDP": [{"numeroDP": "F-2", "libelleErreurDP": "montant faux"}],
                "listeErreurTechnique": [
                    {"codeErreur": "T1", "libelleErreur": "champ vide", "natureErreur": "F"}
                ],
            },
        },
    )
    assert ret.kind is Kind.PISTE_REPORT and ret.flow_ids == ("20261123T100000Z-abc123",)
    (status,) = ret.flow_statuses
    assert (status.code, status.flow_ref, status.failed) == ("IN_INTEGRE_PARTIEL", "DF42", False)
    assert [e.text() for e in status.errors] == ["F-2 — montant faux", "T1 — champ vide"]
    rejected = _piste(
        tmp_path,
        {
            "format": "raccord/piste-consulterCRDetaille",
            "answer": {"etatCourantDepotFlux": "IN_REJETE"},
        },
    )
    assert rejected.flow_statuses[0].failed
    odd = _piste(
        tmp_path,
        {"format": "raccord/piste-consulterCRDetaille", "answer": {"etatCourantDepotFlux": "X"}},
    )
    assert odd.unrecognised == ("unknown deposit state X",)


def test_a_piste_invoice_search_becomes_invoice_statuses(tmp_path: Path) -> None:
    ret = _piste(
        tmp_path,
        {
            "format": "raccord/piste-rechercherFactureParFournisseur",
            "numeroFluxDepot": "DF42",
            "nomFichier": "FSO1100A_VFE056_20261123T100000Z-abc123.xml",
            "answer": {
                "listeFactures": [
                    {"numeroFacture": "F-1", "statut": "MISE_EN_PAIEMENT"},
                    {"numeroFacture": "F-2", "statut": "REJETEE"},
                    {"numeroFacture": "F-3", "statut": "NOUVEAU_STATUT"},
                ]
            },
        },
    )
    assert ret.kind is Kind.PISTE_INVOICES
    assert [(s.invoice_number, s.code, s.rejected) for s in ret.invoice_statuses] == [
        ("F-1", "11", False),
        ("F-2", "05", True),
        ("F-3", "NOUVEAU_STATUT", False),
    ]
    assert ret.unrecognised == ("unknown invoice status NOUVEAU_STATUT",)


def test_json_that_is_not_raccords_report_is_read_as_no_known_schema(tmp_path: Path) -> None:
    ret = _piste(tmp_path, {"etatCourantDepotFlux": "IN_INTEGRE"})  # no format: not ours
    assert ret.kind is Kind.UNREADABLE


REPORT = "raccord/piste-consulterCRDetaille"


SEARCH = "raccord/piste-rechercherFactureParFournisseur"


@pytest.mark.parametrize("state", sorted(PISTE_STATE_LABELS))
def test_every_known_piste_state_is_read_with_its_label_and_only_in_rejete_fails(
    tmp_path: Path, state: str
) -> None:
    ret = _piste(tmp_path, {"format": REPORT, "answer": {"etatCourantDepotFlux": state}})
    (status,) = ret.flow_statuses
    assert (status.code, status.label) == (state, PISTE_STATE_LABELS[state])
    assert status.failed is (state == "IN_REJETE") and ret.unrecognised == ()


def test_the_piste_states_are_the_documented_ones() -> None:
    assert PISTE_STATE_LABELS == {
        "IN_RECU": "reçu",
        "IN_TRAITE_SE_CPP": "traité par le service d'échange",
        "IN_EN_ATTENTE_TRAITEMENT_CPP": "en attente de traitement",
        "IN_EN_COURS_TRAITEMENT_CPP": "en cours de traitement",
        "IN_EN_ATTENTE_RETRAITEMENT_CPP": "en attente de retraitement",
        "IN_INTEGRE": "intégré",
        "IN_INTEGRE_PARTIEL": "intégré partiellement",
        "IN_REJETE": "rejeté",
        "IN_INCIDENTE": "en incident (à redéposer)",
    }
    assert set(FLOW_FAILED) == {"93", "94", "95", "IN_REJETE"}


def test_a_piste_report_keeps_its_time_number_and_errors_past_junk_entries(
    tmp_path: Path,
) -> None:
    ret = _piste(
        tmp_path,
        {
            "format": REPORT,
            "numeroFluxDepot": " DF42 ",
            "answer": {
                "etatCourantDepotFlux": "IN_REJETE",
                "dateHeureEtatCourantFlux": "2026-11-23T10:00:00.000+01:00",
                "nomFichier": f"FSO1100A_VFE056_{FLOW_ID}.xml",
                "listeErreurDP": [
                    "junk",
                    {"numeroDP": "F-1", "libelleErreurDP": "montant"},
                    {"numeroDP": "F-2"},
                ],
                "listeErreurTechnique": [
                    7,
                    {"codeErreur": "T1", "libelleErreur": "vide", "natureErreur": "F"},
                    {"codeErreur": "T2"},
                ],
            },
        },
    )
    (status,) = ret.flow_statuses
    assert status.timestamp == "2026-11-23T10:00:00.000+01:00" and status.flow_ref == "DF42"
    assert ret.parameters == {"numeroFluxDepot": "DF42"} and ret.flow_ids == (FLOW_ID,)
    assert [(e.nature, e.code, e.label, e.description) for e in status.errors] == [
        ("DP", "F-1", "montant", None),
        ("DP", "F-2", None, None),
        ("F", "T1", "vide", None),
        (None, "T2", None, None),
    ]
    assert ret.kind is Kind.PISTE_REPORT and ret.root == "json"


def test_a_piste_report_without_answer_or_state_says_so(tmp_path: Path) -> None:
    bare = _piste(tmp_path, {"format": REPORT, "answer": "oops"})
    assert (bare.kind, bare.flow_statuses, bare.unrecognised) == (
        Kind.PISTE_REPORT,
        (),
        ("no answer in the report",),
    )
    stateless = _piste(tmp_path, {"format": REPORT, "answer": {}})
    assert stateless.flow_statuses == ()
    assert stateless.unrecognised == ("unknown deposit state (none)",)


def test_a_junk_entry_in_a_piste_invoice_search_never_drops_the_invoices_after_it(
    tmp_path: Path,
) -> None:
    ret = _piste(
        tmp_path,
        {
            "format": SEARCH,
            "numeroFluxDepot": "DF42",
            "nomFichier": f"FSO1100A_VFE056_{FLOW_ID}.xml",
            "answer": {
                "listeFactures": [
                    "junk",
                    {
                        "numeroFacture": " F-1 ",
                        "statut": "REJETEE",
                        "dateHeureEtatCourant": "2026-11-24T09:00:00",
                        "identifiantDestinataire": "11000201100044",
                        "identifiantFactureCPP": 4242,
                    },
                    None,
                    {"numeroFacture": "F-2", "statut": "MISE_EN_PAIEMENT"},
                    {"numeroFacture": "F-3"},
                ]
            },
        },
    )
    first, second, third = ret.invoice_statuses
    assert (first.invoice_number, first.code, first.label) == (
        "F-1",
        "05",
        "rejetée (autre motif)",
    )
    assert (first.timestamp, first.debtor_id, first.comment) == (
        "2026-11-24T09:00:00",
        "11000201100044",
        "identifiantFactureCPP 4242",
    )
    assert (first.supplier_id, first.supplier_id_type, first.supplier_name) == (None, None, None)
    assert first.debtor_service is None
    assert (second.invoice_number, second.code) == ("F-2", "11")
    assert (third.code, third.label) == ("", None)
    assert ret.unrecognised == ("unknown invoice status (none)",)
    # The link back to our flow: the deposit's file name and number.
    assert ret.flow_ids == (FLOW_ID,) and ret.parameters == {"numeroFluxDepot": "DF42"}
    assert ret.kind is Kind.PISTE_INVOICES and ret.root == "json"


def test_a_piste_invoice_search_with_no_invoice_says_so(tmp_path: Path) -> None:
    answer: object
    for answer in ({"listeFactures": []}, {"listeFactures": "x"}, "x"):
        ret = _piste(tmp_path, {"format": SEARCH, "answer": answer})
        assert ret.invoice_statuses == ()
        assert ret.unrecognised == ("no invoice in listeFactures",)


def test_an_unknown_piste_word_keeps_its_own_label(tmp_path: Path) -> None:
    ret = _piste(
        tmp_path,
        {"format": SEARCH, "answer": {"listeFactures": [{"numeroFacture": "F", "statut": "X"}]}},
    )
    assert (ret.invoice_statuses[0].code, ret.invoice_statuses[0].label) == ("X", "X")


def test_json_is_recognised_past_leading_space_and_broken_json_is_unreadable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spaced.json"
    path.write_text("   \n" + json.dumps({"format": REPORT, "answer": {}}))
    assert parse(path).kind is Kind.PISTE_REPORT
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "raccord/piste-consulterCRDetaille", ')
    assert parse(broken).kind is Kind.UNREADABLE
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something else"}))
    assert parse(other).kind is Kind.UNREADABLE
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"format": "\xff"}')
    assert parse(latin).kind is Kind.UNREADABLE


def test_what_a_return_without_content_says_of_itself(tmp_path: Path) -> None:
    from flows.returns import ErrorDetail

    assert ErrorDetail(None, None, None, None).text() == "(no detail)"
    assert parse(write(tmp_path, b"<nope", "bad.xml")).root == ""
    assert parse(tmp_path / "missing.xml").root == ""
    no_answer = _piste(tmp_path, {"format": REPORT})
    assert no_answer.root == "json" and no_answer.parameters == {}
    unnumbered = _piste(tmp_path, {"format": REPORT, "answer": {"etatCourantDepotFlux": "X"}})
    assert unnumbered.parameters == {"numeroFluxDepot": ""}
    searched = _piste(tmp_path, {"format": SEARCH, "answer": {}})
    assert searched.parameters == {"numeroFluxDepot": ""}
