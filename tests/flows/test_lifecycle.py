"""The flow lifecycle table: the one place that says which moves a flow may make."""

from __future__ import annotations

import re
from pathlib import Path

from flows.lifecycle import (
    LOST_FROM,
    OPEN,
    RETRY,
    TERMINAL,
    TRANSITIONS,
    UNFILED,
    WAITING,
    FlowState,
    diagram,
    predecessors,
)

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_every_state_has_a_row_and_every_move_leads_to_a_state() -> None:
    """The table is complete: no state without its row, no move to a state that does not exist."""
    assert set(TRANSITIONS) == set(FlowState)
    for after in TRANSITIONS.values():
        assert after <= set(FlowState)


def test_the_journal_values_are_the_ones_stored_by_earlier_versions() -> None:
    """Journals written by earlier versions hold these exact strings: renaming one would strand
    their flows."""
    assert {state.value for state in FlowState} == {
        "claimed",
        "queued",
        "sending",
        "delivered",
        "failing",
        "sent",
        "error",
        "batched",
        "packed",
        "awaiting_receipt",
    }


def test_each_terminal_state_maps_to_one_place() -> None:
    """A file ends in sent/, in error/, or inside a lot; only an operator's retry leaves error."""
    assert {FlowState.SENT, FlowState.ERROR, FlowState.PACKED} == TERMINAL
    assert TRANSITIONS[FlowState.SENT] == frozenset()
    assert TRANSITIONS[FlowState.PACKED] == frozenset()
    assert TRANSITIONS[FlowState.ERROR] == {FlowState.CLAIMED}
    assert RETRY == (FlowState.ERROR, FlowState.CLAIMED)


def test_every_state_reaches_a_terminal_state() -> None:
    """No flow can be stuck: from every state some path ends in sent/, error/ or a lot."""
    for start in FlowState:
        seen, todo = {start}, [start]
        while todo:
            for after in TRANSITIONS[todo.pop()]:
                if after not in seen:
                    seen.add(after)
                    todo.append(after)
        assert seen & TERMINAL, start


def test_a_decision_is_filed_before_anything_else_happens() -> None:
    """``delivered`` and ``failing`` are decided: the only move left is filing the file."""
    assert TRANSITIONS[FlowState.DELIVERED] == {FlowState.SENT}
    assert TRANSITIONS[FlowState.FAILING] == {FlowState.ERROR}


def test_only_flows_whose_file_is_in_the_spool_can_be_lost() -> None:
    """The lost edge (spool file removed by hand) goes to error from the spool states only."""
    for state in LOST_FROM:
        assert FlowState.ERROR in TRANSITIONS[state]
    assert FlowState.DELIVERED not in LOST_FROM and FlowState.FAILING not in LOST_FROM


def test_derived_sets_partition_the_states() -> None:
    """Every state is exactly one of: being worked on, waiting for the partner, or filed."""
    assert set(OPEN) | set(WAITING) | TERMINAL == set(FlowState)
    assert not set(OPEN) & set(WAITING)
    assert set(UNFILED) == set(OPEN) | set(WAITING)


def test_predecessors_are_the_table_read_backwards() -> None:
    for state in FlowState:
        for before in predecessors(state):
            assert state in TRANSITIONS[before]
        assert {b for b in FlowState if state in TRANSITIONS[b]} == set(predecessors(state))


def test_the_diagram_in_the_architecture_document_is_the_table() -> None:
    """docs/architecture.md shows the lifecycle; it must say what the code does."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    match = re.search(r"<!-- lifecycle -->\n```\n(.*?)\n```", text, re.DOTALL)
    assert match, "docs/architecture.md has no lifecycle block"
    assert match.group(1) == diagram()
