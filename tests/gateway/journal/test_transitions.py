"""The journal alone says which moves are legal; a caller names only the state it read."""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.lifecycle import TRANSITIONS, FlowState
from gateway.journal import JournalDB, StateConflict
from tests.lifecycle import walk

ROOT = Path(__file__).resolve().parents[3]
STATES = st.sampled_from(list(FlowState))


def _journal_in(folder: Path, state: FlowState) -> JournalDB:
    """A journal holding one flow, ``f``, in ``state``."""
    db = JournalDB(folder / "journal.sqlite")
    db.insert("f", "c", "f.xml", "/spool/f")
    if state is not FlowState.CLAIMED:
        walk(db, "f", state)
    return db


@settings(max_examples=60, deadline=None)
@given(held=STATES, actual=STATES, to=STATES)
def test_a_move_is_made_only_if_the_table_allows_it_and_the_flow_is_still_as_read(
    held: FlowState, actual: FlowState, to: FlowState
) -> None:
    """A step holding a row read in ``held`` moves the flow to ``to`` only when the table has
    that move and the flow is still ``held`` (compare-and-set); otherwise nothing is written."""
    with tempfile.TemporaryDirectory() as folder:
        db = _journal_in(Path(folder), actual)
        before = db.transitions("f")
        legal, current = to in TRANSITIONS[held], held == actual
        if legal and current:
            assert db.transition("f", to, current=held).state == to
        else:
            message = "lifecycle has no move" if not legal else f"is {actual}"
            with pytest.raises(StateConflict, match=message):
                db.transition("f", to, current=held)
            row = db.get("f")
            assert row is not None and row.state == actual
            assert db.transitions("f") == before
        db.close()


def test_a_row_moved_on_meanwhile_is_not_obeyed(tmp_path: Path) -> None:
    """A step holding a stale ``queued`` row cannot refuse the flow once another has started
    sending it, though the table allows both queued → failing and sending → failing: the
    move the step decided on was about a state that no longer holds."""
    db = _journal_in(tmp_path, FlowState.QUEUED)
    db.transition("f", "sending", current="queued")
    with pytest.raises(StateConflict, match="is sending, expected \\['queued'\\]"):
        db.transition("f", "failing", current="queued", reason="r")
    row = db.get("f")
    assert row is not None and row.state == "sending" and row.reason is None
    db.close()


def _expect_keywords(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and any(k.arg == "expect" for k in node.keywords)
    ]


def test_no_step_outside_the_journal_lists_the_states_a_move_may_come_from() -> None:
    """Outside ``gateway/journal/``, no call passes ``expect=``: a step names the state it
    read (``current``) and the lifecycle table decides, so the table cannot drift from
    predecessor lists copied into the steps."""
    found = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "gateway").rglob("*.py"))
        if "journal" not in path.relative_to(ROOT).parts
        for lines in [_expect_keywords(path)]
        if lines
    }
    assert found == {}
