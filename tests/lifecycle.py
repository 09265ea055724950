"""Moving a test's flow to a state the way the daemon would: along the lifecycle table."""

from __future__ import annotations

from typing import Any

from flows.lifecycle import TRANSITIONS, FlowState
from gateway.journal import FlowRow, JournalDB


def path_to(state: str) -> list[str]:
    """The states a new (claimed) flow goes through to reach ``state`` (shortest path)."""
    paths: dict[str, list[str]] = {"claimed": []}
    todo = ["claimed"]
    while todo:
        here = todo.pop(0)
        for after in sorted(TRANSITIONS[FlowState(here)]):
            if after not in paths:
                paths[after] = [*paths[here], after]
                todo.append(after)
    return paths[state]


def walk(db: JournalDB, flow_id: str, state: str, **values: Any) -> FlowRow:
    """Move a claimed flow to ``state`` through the states between; ``values`` are set by the
    last move."""
    steps = path_to(state)
    assert steps, f"{flow_id} is already {state}"
    for step in steps[:-1]:
        db.transition(flow_id, step)
    return db.transition(flow_id, steps[-1], **values)
