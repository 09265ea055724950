"""flows.decision: Complète rejects the whole flow (innocents marked collateral), Partielle
rejects only the invoices at fault."""

from __future__ import annotations

from flows.decision import InvoiceRef, decide
from flows.returns import ErrorDetail, FlowStatus, InvoiceStatus, Kind, ReturnFlow

LOT = [InvoiceRef(i, f"F-{i:03}", "12345678200010") for i in range(20)]


def invoice_status(number: str, code: str, supplier: str | None = None) -> InvoiceStatus:
    return InvoiceStatus(code, None, None, number, supplier, None, None, None, None, "motif")


def flow_status(code: str, *errors: str) -> FlowStatus:
    return FlowStatus(
        code, None, None, None, tuple(ErrorDetail(None, "E1", e, None) for e in errors)
    )


def one_rejected() -> ReturnFlow:
    statuses = tuple(
        invoice_status(i.invoice_number or "", "05" if i.position == 7 else "01") for i in LOT
    )
    return ReturnFlow(Kind.CPP_STATUT, "CPPStatut", invoice_statuses=statuses)


def test_complete_one_bad_invoice_rejects_all_twenty_nineteen_collateral() -> None:
    verdicts = decide("complete", LOT, one_rejected())
    assert all(v.rejected and v.final for v in verdicts)
    assert [v.position for v in verdicts if not v.collateral] == [7]
    assert verdicts[7].reasons == ("invoice status 05 (unknown code): motif",)
    assert verdicts[0].reasons == ("collateral: the complete-mode flow was rejected for F-007",)
    assert verdicts[0].status_code == "01"


def test_partial_one_bad_invoice_rejects_only_that_one() -> None:
    verdicts = decide("partial", LOT, one_rejected())
    assert [v.position for v in verdicts if v.rejected] == [7]
    assert not any(v.collateral for v in verdicts)
    assert not verdicts[0].final and verdicts[0].status_code == "01"


def test_flow_error_naming_an_invoice_faults_that_invoice() -> None:
    ret = ReturnFlow(
        Kind.CPP_STATUT,
        "CPPStatut",
        flow_statuses=(flow_status("96", "Facture F-003 : SIRET destinataire inconnu"),),
    )
    partial = decide("partial", LOT, ret)
    assert [v.position for v in partial if v.rejected] == [3]
    assert partial[3].reasons == (
        "flow status 96: E1 — Facture F-003 : SIRET destinataire inconnu",
    )
    assert partial[0].flow_code == "96" and not partial[0].rejected
    complete = decide("complete", LOT, ret)
    assert all(v.rejected for v in complete) and sum(v.collateral for v in complete) == 19


def test_failed_flow_naming_no_invoice_rejects_all_and_none_is_collateral() -> None:
    ret = ReturnFlow(Kind.CPP_STATUT, "CPPStatut", flow_statuses=(flow_status("93", "illisible"),))
    for mode in ("complete", "partial"):
        verdicts = decide(mode, LOT[:3], ret)
        assert all(v.rejected and not v.collateral for v in verdicts), mode
        assert verdicts[0].reasons == ("flow status 93 (unknown code): E1 — illisible",)


def test_progress_statuses_reject_nothing_and_payment_is_final() -> None:
    ret = ReturnFlow(
        Kind.CPP_STATUT,
        "CPPStatut",
        flow_statuses=(flow_status("90"),),
        invoice_statuses=(invoice_status("F-000", "11"), invoice_status("F-001", "03")),
    )
    paid, available, silent = decide("complete", LOT[:3], ret)
    assert not any(v.rejected for v in (paid, available, silent))
    assert paid.final and not available.final and not silent.final
    assert silent.status_code is None and silent.flow_code == "90"


def test_same_number_from_another_supplier_is_not_ours() -> None:
    ret = ReturnFlow(
        Kind.CPP_STATUT,
        "CPPStatut",
        invoice_statuses=(invoice_status("F-000", "05", supplier="99999999999999"),),
    )
    assert not any(v.rejected for v in decide("complete", LOT[:2], ret))
