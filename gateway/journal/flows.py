"""The ``flows`` table: recording a flow, moving it between states, finding it again.

Every move is one ``UPDATE … RETURNING`` guarded by the states the flow may come from: the
table in :mod:`flows.lifecycle` alone says which those are, and a caller that read the flow
names the state it read (``current``), so that a move made meanwhile by someone else is refused
rather than overwritten (compare-and-set). The ``transitions`` history is written by the
schema's triggers, not here.

A check that decides whether to move (no earlier flow makes this one a duplicate, no other
flow holds the path a filing records) is folded into the move's ``WHERE``: the usual case is
one statement, and only a refused move pays for finding out why. On PostgreSQL each statement
is a round trip between two processes, and their number is most of a journal call's cost.

Every move of a flow being worked on is also fenced by its lease: it is refused while another
node holds the flow's lease (:class:`~gateway.journal.rows.LeaseLost`). A node paused longer
than ``lease_timeout`` (a frozen VM, heavy swapping) whose flows another node took over
cannot, once it wakes, record a step of a flow that is no longer its own.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flows.lifecycle import FlowState, predecessors
from gateway.folders import free_name
from gateway.journal.base import timestamp
from gateway.journal.invoices import InvoiceQueries
from gateway.journal.leases import NOT_WORKABLE, fence, lease_end
from gateway.journal.rows import COLUMN_SET, FlowRow, LeaseLost, StateConflict

#: The states in which an earlier flow makes a new one a duplicate.
ACTIVE_FOR_DUPLICATES = (
    "batched",
    "packed",
    "queued",
    "sending",
    "awaiting_receipt",
    "delivered",
    "sent",
)


def duplicate_of(flow: str, sha256: str, supplier: str, number: str) -> str:
    """The condition on an earlier flow ``d`` that makes the flow ``flow`` a duplicate (see
    :meth:`FlowQueries.find_duplicate`). The arguments are SQL: ``?`` parameters for one flow,
    or columns for a batch's (:mod:`gateway.journal.bulk`)."""
    states = ", ".join(f"'{state}'" for state in ACTIVE_FOR_DUPLICATES)
    return (
        f"d.flow_id<>{flow} AND d.state IN ({states})"  # noqa: S608 - this package's SQL
        f" AND (d.sha256={sha256} OR ({supplier} IS NOT NULL AND {number} IS NOT NULL"
        f" AND d.supplier_id={supplier} AND d.invoice_number={number}))"
        " AND NOT (EXISTS (SELECT 1 FROM invoices i WHERE i.source_flow=d.flow_id"
        " AND i.rejected=1) AND NOT EXISTS (SELECT 1 FROM invoices i"
        " WHERE i.source_flow=d.flow_id AND i.rejected=0))"
    )


def path_free(path: str, flow: str) -> str:
    """The condition that no flow but ``flow`` holds the final path ``path`` (SQL, as for
    :func:`duplicate_of`)."""
    held = f"SELECT 1 FROM flows h WHERE h.final_path={path} AND h.flow_id<>{flow}"  # noqa: S608
    return f" AND NOT EXISTS ({held})"


#: :func:`duplicate_of` for one flow; parameters: :func:`_duplicate_params`.
_DUPLICATE = duplicate_of("?", "?", "?", "?")

#: Guards folded into a move (:meth:`FlowQueries._move`), so that the usual case costs one
#: statement rather than a check and a move: on PostgreSQL each statement is a round trip to
#: the server, and their number is most of a journal call's cost there.
_GUARDS = {
    "": "",
    # No earlier flow makes this one a duplicate.
    "unique": f" AND NOT EXISTS (SELECT 1 FROM flows d WHERE {_DUPLICATE})",  # noqa: S608
    # No other flow holds the final path this move records.
    "free_path": path_free("?", "?"),
}

#: The lease fence of every move (see the module's docstring).
_FENCE = fence()


@functools.lru_cache(maxsize=256)
def _update_sql(columns: tuple[str, ...], expected: int | None, guard: str = "") -> str:
    """The statement of :meth:`FlowQueries.transition` that sets ``columns``, guarded by
    ``_GUARDS[guard]`` (remembered: the calls are few shapes, made thousands of times)."""
    unknown = set(columns) - COLUMN_SET
    assert not unknown, unknown
    where = "flow_id=?"
    if expected is not None:
        where += f" AND state IN ({','.join('?' * expected)})"
    # Column names come from FlowRow's fields (asserted above), values are parameters.
    assignments = "".join(f", {name}=?" for name in columns)
    return (
        f"UPDATE flows SET state=?, updated_at=?, detail=?, node=?{assignments} WHERE {where}"  # noqa: S608
        f"{_GUARDS[guard]}{_FENCE} RETURNING *"
    )


class FlowQueries(InvoiceQueries):
    """A flow's row and its moves. Built on :class:`InvoiceQueries`: a flow is queued together
    with the invoice it carries, in one transaction."""

    def insert(
        self, /, flow_id: str, connection: str, original_name: str, spool_path: str, **values: Any
    ) -> FlowRow | None:
        """Record a newly claimed flow (with more columns in ``values``: a lot's packaging,
        interface code…); return it, or None if it was already recorded."""
        unknown = values.keys() - COLUMN_SET
        assert not unknown, unknown
        now = timestamp()
        # ``values`` may set the defaults too (a test's created_at): each column named once,
        # which PostgreSQL requires (SQLite let a repeated column pass).
        values = {"created_at": now, "updated_at": now, "node": self.node, **values}
        names = "".join(f", {name}" for name in values)
        marks = ", ?" * len(values)
        row = self._db.execute(
            "INSERT INTO flows (flow_id, connection, original_name, spool_path,"  # noqa: S608 - names from FlowRow
            f" state{names}) VALUES (?, ?, ?, ?, 'claimed'{marks})"
            " ON CONFLICT DO NOTHING RETURNING *",
            (flow_id, connection, original_name, spool_path, *values.values()),
        ).fetchone()
        return FlowRow.of(row) if row else None

    def transition(
        self,
        /,
        flow_id: str,
        to_state: str,
        *,
        current: str | None = None,
        expect: Iterable[str] | None = None,
        detail: str | None = None,
        **values: Any,
    ) -> FlowRow:
        """Move a flow to ``to_state``, setting ``values`` in the same statement; return it.

        The flow may come from any state from which :data:`flows.lifecycle.TRANSITIONS`
        allows the move. ``current`` is the state the caller read the flow in: the move is
        made only if the flow is still in it (compare-and-set: a step holding a row that
        someone else has moved on since is refused, not obeyed). Without it, ``expect`` narrows
        to several states (the journal's own compound moves and its tests use it).

        Raises:
            StateConflict: the flow is unknown, in none of the expected states, or the table
                does not allow the move from ``current`` (nothing is written then).
        """
        expected = _expected(flow_id, to_state, current, expect)
        row = self._move(flow_id, to_state, expected, detail, values)
        if row is None:
            found = self._db.execute(
                "SELECT state, node, lease_until FROM flows WHERE flow_id=?", (flow_id,)
            ).fetchone()
            if found is None:
                raise StateConflict(f"flow {flow_id} is not in the journal")
            if (
                found["state"] not in NOT_WORKABLE
                and found["node"] != self.node
                and found["lease_until"] is not None
                and found["lease_until"] >= lease_end(0)
            ):
                raise LeaseLost(
                    f"flow {flow_id} is worked on by node {found['node']} (its lease runs until"
                    f" {found['lease_until']}), not by this node ({self.node})"
                )
            raise StateConflict(f"flow {flow_id} is {found['state']}, expected {sorted(expected)}")
        return FlowRow.of(row)

    def _move(
        self,
        flow_id: str,
        to_state: str,
        expected: tuple[str, ...],
        detail: str | None,
        values: Mapping[str, Any],
        guard: str = "",
        guarded: tuple[Any, ...] = (),
    ) -> Any:
        """The row of the flow moved from one of ``expected`` to ``to_state`` if it was in one
        and ``_GUARDS[guard]`` (with parameters ``guarded``) held, else None (nothing
        written)."""
        sql = _update_sql(tuple(values), len(expected), guard)
        params = (to_state, timestamp(), detail, self.node, *values.values(), flow_id)
        fence = (self.node, lease_end(0))
        return self._db.execute(sql, (*params, *expected, *guarded, *fence)).fetchone()

    def file_to(
        self,
        /,
        flow_id: str,
        to_state: str,
        folder: Path,
        name: str,
        *,
        current: str | None = None,
        expect: Iterable[str] | None = None,
        **values: Any,
    ) -> FlowRow:
        """Decide where a flow's file goes (``final_path``) and move it to ``to_state``
        (from ``current``, if given: see :meth:`transition`).

        The name is ``folder/name`` unless a file is there or another flow already holds that
        path (then the flow id is inserted before the extension). Choosing and recording run
        back to back on the journal's single thread, so two flows filed at the same instant
        under one name can never be given the same path (a rename would overwrite one).
        """

        def taken(path: Path) -> bool:
            if os.path.lexists(path):  # a link there is taken too, even a dangling one
                return True
            held = self._db.execute(
                "SELECT 1 FROM flows WHERE final_path=? AND flow_id<>? LIMIT 1",
                (str(path), flow_id),
            ).fetchone()
            return held is not None

        with self.transaction():
            # Usually the name is free: one statement records it, if no flow holds it.
            target = free_name(folder, name, flow_id, os.path.lexists)
            values = {**values, "final_path": str(target)}
            expected = _expected(flow_id, to_state, current, expect)
            row = self._move(
                flow_id, to_state, expected, None, values, "free_path", (str(target), flow_id)
            )
            if row is not None:
                return FlowRow.of(row)
            # Another flow holds it, or the move is refused (the transition says why).
            target = free_name(folder, name, flow_id, taken)
            return self.transition(
                flow_id,
                to_state,
                current=current,
                expect=expect,
                **{**values, "final_path": str(target)},
            )

    def get(self, flow_id: str) -> FlowRow | None:
        row = self._db.execute("SELECT * FROM flows WHERE flow_id=?", (flow_id,)).fetchone()
        return FlowRow.of(row) if row else None

    def awaiting(self, receipt_key: str) -> FlowRow | None:
        """The latest flow whose acknowledgement refers to ``receipt_key``, in any state."""
        row = self._db.execute(
            "SELECT * FROM flows WHERE receipt_key=? ORDER BY updated_at DESC LIMIT 1",
            (receipt_key,),
        ).fetchone()
        return FlowRow.of(row) if row else None

    def receipts_due(self, now: str) -> list[FlowRow]:
        """Flows still awaiting an acknowledgement whose wait ended at or before ``now``."""
        rows = self._db.execute(
            "SELECT * FROM flows WHERE state='awaiting_receipt' AND receipt_due<=?"
            " ORDER BY receipt_due",
            (now,),
        ).fetchall()
        return [FlowRow.of(row) for row in rows]

    def find_duplicate(
        self, flow_id: str, sha256: str, supplier_id: str | None, invoice_number: str | None
    ) -> FlowRow | None:
        """An earlier live or sent flow with the same bytes, or the same supplier and invoice.

        An invoice the partner rejected, and that no later flow carries again, is not a
        duplicate: it may be corrected and sent again under its number.
        """
        row = self._db.execute(
            f"SELECT * FROM flows d WHERE {_DUPLICATE} ORDER BY created_at LIMIT 1",  # noqa: S608 - placeholders only
            _duplicate_params(flow_id, sha256, supplier_id, invoice_number),
        ).fetchone()
        return FlowRow.of(row) if row else None

    def queue_unless_duplicate(
        self,
        /,
        flow_id: str,
        identity: tuple[str, str | None, str | None],
        *,
        check: bool,
        to_state: str = "queued",
        invoice: tuple[str, str | None, str | None, str] | None = None,
        sending: Mapping[str, Any] | None = None,
        **values: Any,
    ) -> tuple[FlowRow | None, FlowRow | None]:
        """Queue a claimed flow (or put it in ``batched`` for a lot) unless an earlier flow
        makes it a duplicate; with ``sending`` (the values of that transition), a queued flow
        goes on to ``sending`` at once (both transitions recorded).

        Returns ``(queued row, None)``, or ``(None, earlier flow)`` for a duplicate.

        Check and transition run back to back on the journal's single thread, so two copies
        dropped at the same instant cannot both pass the check.
        ``identity`` is (sha256, supplier identifier, invoice number); ``invoice``, the invoice
        the flow carries, recorded with it (see :meth:`add_invoices`).
        """
        with self.transaction():
            row = None
            if check:  # usually no duplicate: one statement checks and moves
                expected = _expected(flow_id, to_state, None, ("claimed",))
                unique = _duplicate_params(flow_id, *identity)
                row = self._move(flow_id, to_state, expected, None, values, "unique", unique)
                if row is None:  # a duplicate, or the move is refused (the transition says)
                    earlier = self.find_duplicate(flow_id, *identity)
                    if earlier is not None:
                        return None, earlier
            queued = (
                FlowRow.of(row)
                if row is not None
                else self.transition(flow_id, to_state, expect=("claimed",), **values)
            )
            if invoice is not None:
                self.add_invoices(flow_id, [invoice])
            if sending is not None:
                queued = self.transition(flow_id, "sending", expect=(to_state,), **sending)
            return queued, None

    def resubmission_of(self, flow_id: str) -> str | None:
        """The flow that resubmitted ``flow_id``'s collateral invoices, if any."""
        row = self._db.execute(
            "SELECT flow_id FROM flows WHERE resubmit_of=? LIMIT 1", (flow_id,)
        ).fetchone()
        return row["flow_id"] if row else None

    def in_states(self, states: Sequence[str]) -> list[FlowRow]:
        marks = ",".join("?" * len(states))
        rows = self._db.execute(
            f"SELECT * FROM flows WHERE state IN ({marks}) ORDER BY created_at",  # noqa: S608
            tuple(states),
        ).fetchall()
        return [FlowRow.of(row) for row in rows]

    def spools_in(self, state: str) -> list[tuple[str, str]]:
        """(flow_id, spool_path) of the flows in ``state``, oldest first: for a poll that may
        find thousands during a burst, a fraction of the cost of whole rows."""
        rows = self._db.execute(
            "SELECT flow_id, spool_path FROM flows WHERE state=? ORDER BY created_at", (state,)
        ).fetchall()
        return [(row[0], row[1]) for row in rows]

    def transitions(self, flow_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT from_state, to_state, at, detail, node FROM transitions WHERE flow_id=?"
            " ORDER BY id",
            (flow_id,),
        ).fetchall()
        return [dict(row) for row in rows]

    def overdue(self, connection: str, sent_before: str) -> list[FlowRow]:
        """Flows of ``connection`` sent before ``sent_before`` that no return has spoken of yet
        (neither the flow nor any invoice it carries has a status), oldest first."""
        rows = self._db.execute(
            "SELECT * FROM flows f WHERE connection=? AND state='sent' AND updated_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM statuses s WHERE s.flow_id=f.flow_id)"
            " ORDER BY updated_at",
            (connection, sent_before),
        ).fetchall()
        return [FlowRow.of(row) for row in rows]


def _expected(
    flow_id: str, to_state: str, current: str | None, expect: Iterable[str] | None
) -> tuple[str, ...]:
    """The states a move to ``to_state`` may come from: ``current``, or ``expect``, or every
    state :data:`flows.lifecycle.TRANSITIONS` allows it from.

    Raises:
        StateConflict: the lifecycle has no move from ``current`` (or one of ``expect``).
    """
    expected: tuple[str, ...] = predecessors(FlowState(to_state))
    if current is None and expect is None:
        return expected
    wanted = (current,) if current is not None else tuple(expect or ())
    illegal = sorted(set(wanted) - set(expected))
    if illegal:  # a refusal, not an assert: it must hold under python -O too
        raise StateConflict(
            f"flow {flow_id}: the lifecycle has no move from {', '.join(illegal)} to {to_state}"
        )
    return tuple(dict.fromkeys(wanted))


def _duplicate_params(
    flow_id: str, sha256: str, supplier_id: str | None, invoice_number: str | None
) -> tuple[Any, ...]:
    """The parameters of ``_DUPLICATE``."""
    return (
        flow_id,
        sha256,
        supplier_id,
        invoice_number,
        supplier_id,
        invoice_number,
    )
