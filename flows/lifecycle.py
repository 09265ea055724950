"""The flow lifecycle: every state a flow (a dropped file, or a lot) can be in, and the moves
between them, as one table.

A flow is one row of the journal with one state at a time. The journal refuses a move that is
not in :data:`TRANSITIONS`, so this table is the whole story; the sets the rest of the code needs
(open, waiting, terminal, …) are derived from it rather than listed again elsewhere.

Reading the table, from a file's point of view:

* ``claimed`` — renamed into the spool; nothing decided yet. Analysis and routing move it on:
  ``queued`` (to send), ``batched`` (to wait for its lot), or ``failing`` (refused: unknown
  format, not connected, duplicate, …).
* ``batched`` → ``packed`` — its bytes now travel in a lot, a flow of its own that takes the
  path below. ``packed`` is terminal for the dropped file.
* ``queued`` → ``sending`` → ``delivered`` → ``sent``: the happy path. ``sending`` falls back to
  ``queued`` for a retryable failure (and after a crash, when the outcome is unknown), and may
  wait in ``awaiting_receipt`` while the partner acknowledges later (an asynchronous MDN).
  ``sending`` → ``sending`` is a new attempt of a flow found ``sending`` at start (its outcome
  unknown: the resend checks the partner first).
* ``delivered`` and ``failing`` mean "decided, file not yet filed": after a crash, the file is
  filed where the decision says (``sent/`` or ``error/``).
* ``error`` → ``claimed`` is ``raccord retry``: the flow is analysed and routed afresh, under
  the same remote name.
* Any state whose file is still in the spool → ``error`` is the *lost* edge: at start, the
  journal names a spool file that is gone (removed by hand); the flow is filed with reason
  ``lost``, since there is nothing left to send or to file.

The values are the strings stored in the journal's ``state`` column: never rename one.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "LOST_FROM",
    "OPEN",
    "RETRY",
    "TERMINAL",
    "TRANSITIONS",
    "UNFILED",
    "WAITING",
    "FlowState",
    "diagram",
    "predecessors",
]


class FlowState(StrEnum):
    """A flow's state, as stored in the journal."""

    CLAIMED = "claimed"
    BATCHED = "batched"
    PACKED = "packed"
    QUEUED = "queued"
    SENDING = "sending"
    AWAITING_RECEIPT = "awaiting_receipt"
    DELIVERED = "delivered"
    SENT = "sent"
    FAILING = "failing"
    ERROR = "error"


S = FlowState

#: The *lost* edge: states whose file is in the spool, from which a flow goes straight to
#: ``error`` when that file has disappeared.
LOST_FROM: frozenset[FlowState] = frozenset(
    {S.CLAIMED, S.BATCHED, S.QUEUED, S.SENDING, S.AWAITING_RECEIPT}
)

#: The *retry* edge (``raccord retry``).
RETRY = (S.ERROR, S.CLAIMED)

#: state → the states it may move to.
TRANSITIONS: dict[FlowState, frozenset[FlowState]] = {
    S.CLAIMED: frozenset({S.QUEUED, S.BATCHED, S.FAILING, S.ERROR}),
    S.BATCHED: frozenset({S.PACKED, S.FAILING, S.ERROR}),
    S.PACKED: frozenset(),
    S.QUEUED: frozenset({S.SENDING, S.FAILING, S.ERROR}),
    S.SENDING: frozenset(
        {S.DELIVERED, S.AWAITING_RECEIPT, S.QUEUED, S.SENDING, S.FAILING, S.ERROR}
    ),
    S.AWAITING_RECEIPT: frozenset({S.DELIVERED, S.FAILING, S.ERROR}),
    S.DELIVERED: frozenset({S.SENT}),
    S.FAILING: frozenset({S.ERROR}),
    S.SENT: frozenset(),
    S.ERROR: frozenset({S.CLAIMED}),
}

#: States a flow leaves only by an operator's action (or never): each maps to one folder, or,
#: for ``packed``, to the lot that carries the file.
TERMINAL: frozenset[FlowState] = frozenset(
    state for state, after in TRANSITIONS.items() if not after or after == {S.CLAIMED}
)
#: Flows not yet filed, in a stable order (the order of :class:`FlowState`).
UNFILED: tuple[FlowState, ...] = tuple(state for state in FlowState if state not in TERMINAL)
#: States in which the flow waits for the partner, with no task running for it.
WAITING: tuple[FlowState, ...] = (S.AWAITING_RECEIPT,)
#: States still being worked on: resumed by a task after a restart.
OPEN: tuple[FlowState, ...] = tuple(state for state in UNFILED if state not in WAITING)


def predecessors(state: FlowState | str) -> tuple[FlowState, ...]:
    """The states from which a flow may move to ``state``, in a stable order."""
    return tuple(before for before, after in TRANSITIONS.items() if state in after)


def diagram() -> str:
    """The table as text, one line per state: ``state → next, next``; the form
    ``docs/architecture.md`` shows, so that a test can keep the two the same."""
    width = max(len(state) for state in FlowState)
    lines = []
    for state in FlowState:
        after = ", ".join(sorted(TRANSITIONS[state])) or "(terminal)"
        lines.append(f"{state:<{width}} → {after}")
    return "\n".join(lines)
