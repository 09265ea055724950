"""flows.statuses: the lifecycle table, and an invoice's current status from its history —
ordered by the status's own timestamp, a final status never replaced, contradictions reported."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows import statuses
from flows.returns import INVOICE_FINAL, INVOICE_REJECTED, PISTE_INVOICE_STATUSES
from flows.statuses import Entry, Stage, info, instant, is_final, is_rejected, lifecycle

H = "2026-03-02T10:0{}:00"


def test_the_table_says_which_statuses_end_an_invoice_story() -> None:
    """Rejected (04 à recycler, 05 autre motif) and paid (11) are final; nothing else is."""
    assert {c for c, row in statuses.TABLE.items() if row.final} == {"04", "05", "11"}
    assert {c for c, row in statuses.TABLE.items() if row.rejected} == {"04", "05"}
    assert set(INVOICE_FINAL) == {"04", "05", "11"}
    assert set(INVOICE_REJECTED) == {"04", "05"}
    assert set(statuses.TABLE) == {f"{n:02}" for n in range(1, 13)}
    stages = {code: row.stage for code, row in statuses.TABLE.items()}
    assert stages["11"] is Stage.PAID and stages["01"] is Stage.DEPOSITED
    assert stages["06"] is Stage.SUSPENDED and stages["04"] is Stage.REJECTED
    assert all(row.code == code and row.label for code, row in statuses.TABLE.items())


@pytest.mark.parametrize(
    ("word", "final", "rejected"),
    [("REJETEE", True, True), ("A_RECYCLER", True, True), ("MISE_EN_PAIEMENT", True, False)],
)
def test_piste_words_map_onto_the_same_final_statuses(
    word: str, final: bool, rejected: bool
) -> None:
    code = PISTE_INVOICE_STATUSES[word]
    assert is_final(code) is final and is_rejected(code) is rejected


def test_unknown_codes_are_neither_final_nor_rejected() -> None:
    for code in ("13", "41", "IN_REJETE", "", None):
        assert info(code) is None and not is_final(code) and not is_rejected(code)


def test_timestamps_read_with_or_without_zone() -> None:
    assert instant("2026-03-02T10:00:00Z") == instant("2026-03-02T11:00:00+01:00")
    assert instant("2026-03-02 10:00:00") == instant("2026-03-02T10:00:00.000Z")
    assert instant("hier") is None and instant(None) is None and instant("") is None


def test_a_stale_deposited_status_after_payment_does_not_replace_it() -> None:
    """11 stamped h+5 then 01 stamped h+0 in a later file: the invoice stays paid, and the
    stale 01 is history, not an anomaly."""
    result = lifecycle([Entry("11", H.format(5)), Entry("01", H.format(0))])
    assert result.current == Entry("11", H.format(5)) and result.final
    assert result.anomalies == ()


def test_a_stale_status_after_a_rejection_keeps_the_rejection() -> None:
    result = lifecycle([Entry("05", H.format(3)), Entry("01", H.format(1))])
    assert result.current == Entry("05", H.format(3)) and not result.anomalies


def test_a_later_contradiction_is_kept_out_and_reported() -> None:
    """11 after 05: the rejection stays; the payment is an anomaly for a person to look at."""
    history = [Entry("05", H.format(1)), Entry("11", H.format(2))]
    result = lifecycle(history)
    assert result.current == history[0]
    found = [(a.index, a.entry, a.current) for a in result.anomalies]
    assert found == [(1, history[1], history[0])]
    assert "11" in result.anomalies[0].text() and "05" in result.anomalies[0].text()


def test_a_non_final_status_stamped_after_a_final_one_is_a_contradiction() -> None:
    result = lifecycle([Entry("05", H.format(1)), Entry("03", H.format(2))])
    assert result.current == Entry("05", H.format(1)) and len(result.anomalies) == 1
    undated = lifecycle([Entry("05", H.format(1)), Entry("03", None)])
    assert undated.current == Entry("05", H.format(1)) and len(undated.anomalies) == 1


def test_an_earlier_final_status_arriving_late_does_not_replace_the_first_final() -> None:
    first = Entry("05", H.format(5))
    result = lifecycle([first, Entry("11", H.format(3))])
    assert result.current == first and len(result.anomalies) == 1


def test_the_same_final_status_again_is_no_anomaly() -> None:
    result = lifecycle([Entry("05", H.format(1)), Entry("05", H.format(4))])
    assert result.current == Entry("05", H.format(1)) and not result.anomalies


def test_non_final_statuses_follow_their_timestamps_not_their_arrival() -> None:
    assert lifecycle([Entry("03", H.format(5)), Entry("01", H.format(0))]).current == Entry(
        "03", H.format(5)
    )
    assert lifecycle([Entry("01", H.format(0)), Entry("03", H.format(5))]).current == Entry(
        "03", H.format(5)
    )
    # Same timestamp: arrival breaks the tie.
    assert lifecycle([Entry("02", H.format(1)), Entry("03", H.format(1))]).current == Entry(
        "03", H.format(1)
    )
    # Unreadable timestamp: arrival places it.
    assert lifecycle([Entry("02", H.format(1)), Entry("03", "?")]).current == Entry("03", "?")


def test_a_final_status_replaces_a_non_final_one_stamped_later() -> None:
    result = lifecycle([Entry("03", H.format(5)), Entry("05", H.format(2))])
    assert result.current == Entry("05", H.format(2)) and not result.anomalies


def test_an_empty_history_has_no_current_status() -> None:
    result = lifecycle([])
    assert result.current is None and not result.final and not result.anomalies


codes = st.sampled_from(["01", "02", "03", "04", "05", "06", "10", "11", "30"])
stamps = st.one_of(st.none(), st.integers(0, 9).map(H.format))


@given(st.lists(st.builds(Entry, codes, stamps), max_size=12))
@settings(deadline=None)  # timing is not the point; the machine may be loaded
def test_once_final_the_current_status_never_changes(history: list[Entry]) -> None:
    """Whatever arrives after it, in whatever order or timestamp, a final status stays."""
    first_final = next((i for i, e in enumerate(history) if is_final(e.code)), None)
    for end in range(len(history) + 1):
        result = lifecycle(history[:end])
        if first_final is not None and end > first_final:
            assert result.current == history[first_final]
        assert all(a.index < end for a in result.anomalies)
        assert all(is_final(a.current.code) for a in result.anomalies)


def test_an_anomaly_says_both_statuses_and_what_was_done() -> None:
    result = lifecycle([Entry("05", H.format(1)), Entry("11", None)])
    assert result.anomalies[0].text() == (
        "status 11 (no timestamp) contradicts final status 05 (2026-03-02T10:01:00): kept in "
        "the history, not applied"
    )
    reverse = lifecycle([Entry("11", None), Entry("05", H.format(2))])
    assert reverse.anomalies[0].text() == (
        "status 05 (2026-03-02T10:02:00) contradicts final status 11 (no timestamp): kept in "
        "the history, not applied"
    )


def test_the_table_rows_in_full() -> None:
    rows = {code: (row.label, row.stage.value, row.final) for code, row in statuses.TABLE.items()}
    assert rows == {
        "01": ("déposée", "deposited", False),
        "02": ("en cours d'acheminement", "routing", False),
        "03": ("mise à disposition", "with_buyer", False),
        "04": (
            "rejetée (erreur dans les données d'acheminement, à recycler)",
            "rejected",
            True,
        ),
        "05": ("rejetée (autre motif)", "rejected", True),
        "06": ("suspendue", "suspended", False),
        "07": ("service fait", "processing", False),
        "08": ("mandatée", "processing", False),
        "09": ("mise à disposition du comptable", "processing", False),
        "10": ("comptabilisée", "processing", False),
        "11": ("mise en paiement", "paid", True),
        "12": ("complétée", "with_buyer", False),
    }


def test_a_repeated_final_status_does_not_hide_a_contradiction_after_it() -> None:
    history = [Entry("05", H.format(1)), Entry("05", H.format(2)), Entry("11", H.format(3))]
    result = lifecycle(history)
    assert result.current == history[0]
    assert [a.index for a in result.anomalies] == [2]
