"""flows.decision: Complète rejects the whole flow (innocents marked collateral), Partielle
rejects only the invoices at fault."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.decision import InvoiceRef, decide, names
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


# -- whole-token matching: FA-1 is not FA-12 -------------------------------------------------

NUMBER_CHARS = "ABCFSZ019-/_."
# What may stand between two numbers in an error text: never a character of a number (a full
# stop only before a space: the end of a sentence).
SEPARATORS = st.sampled_from([" ", ", ", " ; ", ": ", " (", ") ", " « ", " » ", '"', "'", ". "])
core = st.text(alphabet="ABCFSZ019", min_size=1, max_size=6)
affix = st.text(alphabet=NUMBER_CHARS, min_size=1, max_size=4).filter(lambda a: a.strip(".") != "")


@st.composite
def related_numbers(draw: st.DrawFn) -> list[str]:
    """A number and others that contain it as a prefix, a suffix or an infix."""
    base = draw(core)
    prefix, suffix = draw(affix), draw(affix)
    return list(dict.fromkeys([base, base + suffix, prefix + base, prefix + base + suffix]))


@given(related_numbers(), st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_an_error_selects_exactly_the_invoices_it_names(numbers: list[str], data: Any) -> None:
    """Sequential numbering (FA-1, FA-12, FA-123) must never make an innocent invoice guilty:
    an invoice is named only where its number stands whole, whatever the numbers around it."""
    named = data.draw(st.lists(st.sampled_from(numbers), unique=True, min_size=1))
    parts = ["Facture"]
    for number in named:
        parts += [data.draw(SEPARATORS), number]
    parts.append(data.draw(st.sampled_from(["", ".", " rejetée", ")"])))
    text = "".join(parts)
    assert {n for n in numbers if names(text, n)} == set(named), text
    lot = [InvoiceRef(i, n, None) for i, n in enumerate(numbers)]
    ret = ReturnFlow(Kind.CPP_STATUT, "CPPStatut", flow_statuses=(flow_status("96", text),))
    verdicts = decide("partial", lot, ret)
    assert {numbers[v.position] for v in verdicts if v.rejected} == set(named), text


def test_s2b_12_named_rejects_s2b_12_only_and_s2b_1_is_collateral_under_complete() -> None:
    """The case seen: a 96 naming S2B-12 rejected S2B-1 too, which would be corrected and sent
    a second time although Chorus Pro integrated it."""
    lot = [InvoiceRef(0, "S2B-1", None), InvoiceRef(1, "S2B-12", None)]
    ret = ReturnFlow(
        Kind.CPP_STATUT,
        "CPPStatut",
        flow_statuses=(flow_status("96", "Facture S2B-12 : montant incohérent"),),
    )
    first, twelfth = decide("partial", lot, ret)
    assert not first.rejected and twelfth.rejected
    first, twelfth = decide("complete", lot, ret)
    assert first.rejected and first.collateral and not twelfth.collateral


def test_numbers_compare_after_unicode_and_padding_normalisation_but_keep_case() -> None:
    assert names("Facture FAÉ-7 rejetée", "FAE\u0301-7 ")  # decomposed É, trailing padding
    assert names("facture FA-1.", "FA-1") and not names("facture FA-1.5", "FA-1")
    assert not names("facture fa-1", "FA-1")
    assert not names("anything", "  ")
    status = InvoiceStatus("05", None, None, " FA-1 ", None, None, None, None, None, None)
    ret = ReturnFlow(Kind.CPP_STATUT, "CPPStatut", invoice_statuses=(status,))
    assert decide("partial", [InvoiceRef(0, "FA-1", None)], ret)[0].rejected


# -- flow-level failures: not received means no invoice of the flow was integrated -------------


@pytest.mark.parametrize("code", ["93", "94", "95", "IN_REJETE"])
def test_failed_flow_naming_one_invoice_fails_every_invoice_under_partial(code: str) -> None:
    """A 93/94/95 naming one invoice used to leave the others `sent` forever: the flow was not
    received, none of them will ever get a status."""
    ret = ReturnFlow(
        Kind.CPP_STATUT, "CPPStatut", flow_statuses=(flow_status(code, "Facture F-002 : XSD"),)
    )
    verdicts = decide("partial", LOT[:5], ret)
    assert all(v.rejected and v.final for v in verdicts)
    assert not any(v.collateral for v in verdicts)
    assert [v.position for v in verdicts if not v.flow_not_received] == [2]
    assert verdicts[0].reasons == (f"flow status {code} (unknown code): E1 — Facture F-002 : XSD",)
    assert verdicts[2].reasons[0] == f"flow status {code}: E1 — Facture F-002 : XSD"


def test_failed_flow_naming_one_invoice_under_complete_marks_the_others_collateral() -> None:
    ret = ReturnFlow(
        Kind.CPP_STATUT, "CPPStatut", flow_statuses=(flow_status("93", "Facture F-001 : XSD"),)
    )
    verdicts = decide("complete", LOT[:3], ret)
    assert all(v.rejected for v in verdicts)
    assert [v.collateral for v in verdicts] == [True, False, True]
    assert [v.flow_not_received for v in verdicts] == [True, False, True]
    assert verdicts[0].reasons[0] == "collateral: the complete-mode flow was rejected for F-001"


def test_a_received_flow_is_not_marked_not_received() -> None:
    verdicts = decide("complete", LOT[:3], one_rejected())
    assert not any(v.flow_not_received for v in verdicts)


@pytest.mark.parametrize("code", ["04", "05"])
def test_both_rejection_codes_reject_the_invoice(code: str) -> None:
    ret = ReturnFlow(
        Kind.CPP_STATUT, "CPPStatut", invoice_statuses=(invoice_status("F-000", code),)
    )
    verdict = decide("partial", LOT[:1], ret)[0]
    assert verdict.rejected and verdict.final and verdict.status_code == code


def test_a_status_for_another_supplier_with_the_same_number_is_not_this_invoice() -> None:
    ret = ReturnFlow(
        Kind.CPP_STATUT,
        "CPPStatut",
        invoice_statuses=(invoice_status("F-000", "05", "99999999999999"),),
    )
    assert not decide("partial", LOT[:1], ret)[0].rejected
    same = replace(ret, invoice_statuses=(invoice_status("F-000", "05", "12345678200010"),))
    assert decide("partial", LOT[:1], same)[0].rejected
    unknown = replace(ret, invoice_statuses=(invoice_status("F-000", "05", None),))
    assert decide("partial", LOT[:1], unknown)[0].rejected


def test_reasons_say_each_fault_exactly_as_the_return_words_it() -> None:
    """What an operator reads in .rejection.json: every error of the flow, every invoice at
    fault, the invoice's own status label, and no dangling colon when there is no detail."""
    ret = ReturnFlow(
        Kind.CPP_STATUT,
        "CPPStatut",
        flow_statuses=(flow_status("93", "F-000 : XSD", "F-001 : SIRET"),),
        invoice_statuses=(
            InvoiceStatus("05", "rejetée", None, "F-002", None, None, None, None, None, None),
        ),
    )
    verdicts = decide("complete", LOT[:4], ret)
    assert verdicts[2].reasons[0] == "invoice status 05 (rejetée)"
    assert verdicts[2].status_label == "rejetée" and verdicts[3].status_label is None
    assert verdicts[3].reasons == (
        "collateral: the complete-mode flow was rejected for F-000, F-001, F-002",
        "flow status 93 (unknown code): E1 — F-000 : XSD; E1 — F-001 : SIRET",
    )
    bare = ReturnFlow(Kind.CPP_STATUT, "CPPStatut", flow_statuses=(flow_status("95"),))
    assert decide("partial", LOT[:1], bare)[0].reasons == ("flow status 95 (unknown code)",)
