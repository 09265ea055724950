"""A batch's moves of one shape in one statement, on PostgreSQL.

On PostgreSQL each statement costs both processes a round trip: the client's CPU to send it
and read its answer, the server's to bind, run and answer it; a flow's move costs about five
times more as a statement of its own than as a row of a statement moving a batch of flows
(``bench/journal_bulk_moves.py``). So before a batch runs call by call, :func:`coalesce`
looks for calls that are the same move for different flows — recording a claimed flow
(:meth:`~gateway.journal.flows.FlowQueries.insert`), a move from the state the caller read
(:meth:`~gateway.journal.flows.FlowQueries.transition` with ``current``), a filing
(:meth:`~gateway.journal.flows.FlowQueries.file_to` with ``current``), a queueing with its
duplicate check, invoice and move on to sending
(:meth:`~gateway.journal.flows.FlowQueries.queue_unless_duplicate`) — and runs each group as
one ``INSERT … SELECT … FROM unnest(…)`` or ``UPDATE … FROM unnest(…)`` (three for a
queueing: the move, the invoices, the move on).

Each row is the statement the call would have run alone, with its guards (the state read,
the lease fence, a filing's free path), and the triggers still run per row (history, counts).
A call whose row comes back is answered with it. One whose row does not (the move refused:
the flow moved meanwhile, another node holds it, the path is taken) is left to run alone, as
before, so that it fails or falls back exactly as it would have: the refused row wrote nothing.
Calls whose order matters run alone, in order, too: two calls of the batch on one flow (the
second depends on the first), two queueings of the same bytes or invoice (alone, the second
is found a duplicate of the first; in one statement neither would see the other), two filings
of one name in one folder; and so does a call with a value that is neither text nor an
integer. ``tests/gateway/journal/test_bulk.py`` checks, on drawn batches, that a batch
coalesced answers and writes exactly as its calls one at a time.

SQLite runs its statements in the journal's own process, where a statement costs
microseconds: nothing is coalesced there.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from gateway.folders import free_name
from gateway.journal.base import timestamp
from gateway.journal.flows import FlowQueries, _expected, duplicate_of, path_free
from gateway.journal.leases import LeaseQueries, fence, lease_end
from gateway.journal.rows import COLUMN_SET, FlowRow, StateConflict

#: Fewer calls of one shape than this run one by one (nothing to save).
SMALLEST = 2

#: Calls that write nothing a move's guards read (reads, and leases, which the fence lets this
#: node's moves through anyway): the groups may run before them.
REORDERABLE = frozenset(
    {
        FlowQueries.get,
        LeaseQueries.take,
        LeaseQueries.lease,
        LeaseQueries.renew,
        LeaseQueries.release,
        LeaseQueries.states_of,
        LeaseQueries.workable,
    }
)

#: The array type of each column of ``flows``, for ``unnest``.
_TYPES = {f.name: "bigint" if str(f.type).startswith("int") else "text" for f in fields(FlowRow)}
_TYPES.update(dup_sha256="text", dup_supplier="text", dup_number="text")

#: The columns an insert may not be given: the flow's identity and its first state.
_SET_BY_INSERT = frozenset({"flow_id", "connection", "original_name", "spool_path", "state"})


class _Group:
    """Calls of one shape: their places in the batch, and each one's row of values."""

    def __init__(self) -> None:
        self.places: list[int] = []
        self.rows: list[tuple[Any, ...]] = []


def coalesce(db: FlowQueries, calls: Sequence[Callable[..., Any]]) -> dict[int, Any]:
    """Run the groups of same-shaped moves among ``calls`` (see the module's docstring);
    return the outcome of each call answered, by its place in ``calls``."""
    entangled = _entangled(calls)
    groups: dict[tuple[Any, ...], _Group] = {}
    paths: set[str] = set()
    for place, call in enumerate(calls):
        shaped = _shape(call, paths, entangled)
        if shaped is None:
            if getattr(call, "function", None) in REORDERABLE:
                continue
            # It may write what a later call's guards read (a flow moved into a state that
            # makes another a duplicate, a path recorded): the groups run before the calls
            # left alone, so nothing after it is grouped; the rest run alone, in order.
            break
        key, values = shaped
        group = groups.setdefault(key, _Group())
        group.places.append(place)
        group.rows.append(values)
    answered: dict[int, Any] = {}
    for key, group in groups.items():
        if len(group.places) < SMALLEST:
            continue
        found = _run(db, key, group.rows)
        for place, values in zip(group.places, group.rows, strict=True):
            if values[0] in found:
                answered[place] = found[values[0]]
    return answered


def _entangled(calls: Sequence[Callable[..., Any]]) -> set[tuple[Any, ...]]:
    """What two or more calls of the batch share — a flow, a queued invoice's bytes or
    number, a filing's name in its folder: such calls depend on the order they run in (the
    second move of a flow, the second copy of an invoice found a duplicate), so they run
    alone, in order."""
    counts: Counter[tuple[Any, ...]] = Counter()
    for call in calls:
        args: tuple[Any, ...] = getattr(call, "args", ())
        if args and isinstance(args[0], str):
            counts[("flow", args[0])] += 1
        function = getattr(call, "function", None)
        if function is FlowQueries.queue_unless_duplicate and len(args) == 2:
            counts.update(_marks(args[1]))
        elif function is FlowQueries.file_to and len(args) == 4:
            counts[("name", str(args[2]), args[3])] += 1
    return {mark for mark, n in counts.items() if n > 1}


def _marks(identity: Any) -> set[tuple[Any, ...]]:
    """What makes two queueings duplicates of each other: the bytes, or the invoice."""
    if not (isinstance(identity, tuple) and len(identity) == 3):
        return {("odd", repr(identity))}
    sha256, supplier, number = identity
    marks: set[tuple[Any, ...]] = {("sha256", sha256)}
    if supplier is not None and number is not None:
        marks.add(("invoice", supplier, number))
    return marks


#: A call's group key and its row of values (its flow first).
Shaped = tuple[tuple[Any, ...], tuple[Any, ...]]


def _shape(call: Callable[..., Any], paths: set[str], entangled: set[Any]) -> Shaped | None:
    """The group key and row of values of a call that a bulk statement can stand for, else
    None."""
    function = getattr(call, "function", None)
    args: tuple[Any, ...] = getattr(call, "args", ())
    kwargs: dict[str, Any] = dict(getattr(call, "kwargs", {}))
    if not args or ("flow", args[0]) in entangled:
        return None
    if function is FlowQueries.insert:
        if len(args) != 4 or not all(isinstance(a, str) for a in args) or not _plain(kwargs):
            return None
        if not kwargs.keys() <= COLUMN_SET - _SET_BY_INSERT:
            return None
        return ("insert", tuple(kwargs)), (*args, *kwargs.values())
    if function is FlowQueries.queue_unless_duplicate:
        return _queue_shape(args, kwargs, entangled)
    current = kwargs.pop("current", None)
    if not isinstance(current, str) or "expect" in kwargs:
        return None
    if function is FlowQueries.transition and len(args) == 2:
        flow_id, to_state = args
        detail = kwargs.pop("detail", None)
    elif function is FlowQueries.file_to and len(args) == 4:
        flow_id, to_state, folder, name = args
        detail = None
        if "final_path" in kwargs or not isinstance(folder, Path):
            return None
        if ("name", str(folder), name) in entangled:
            return None
        target = str(free_name(folder, name, flow_id, os.path.lexists))
        if target in paths:
            return None  # another filing of the batch chose it: alone, it finds another
        paths.add(target)
        kwargs["final_path"] = target
    else:
        return None
    if not (_plain(kwargs) and kwargs.keys() <= COLUMN_SET and isinstance(detail, str | None)):
        return None
    try:
        _expected(flow_id, to_state, current, None)
    except StateConflict:
        return None  # the lifecycle refuses it: alone, it says so
    guard = "free_path" if function is FlowQueries.file_to else ""
    key = ("move", to_state, current, detail, tuple(kwargs), guard)
    return key, (flow_id, *kwargs.values())


def _queue_shape(
    args: tuple[Any, ...], kwargs: dict[str, Any], entangled: set[Any]
) -> Shaped | None:
    """A queueing (:meth:`~gateway.journal.flows.FlowQueries.queue_unless_duplicate`) with
    its duplicate check, its invoice and its move on to sending, if a bulk one can stand for
    it (not if another queueing of the batch has its bytes or its invoice: see
    :func:`_entangled`)."""
    if len(args) != 2 or kwargs.pop("check", None) is not True:
        return None
    flow_id, identity = args
    to_state = kwargs.pop("to_state", "queued")
    invoice = kwargs.pop("invoice", None)
    sending = kwargs.pop("sending", None)
    if not (isinstance(identity, tuple) and len(identity) == 3 and isinstance(to_state, str)):
        return None
    if invoice is not None and not (isinstance(invoice, tuple) and len(invoice) == 4):
        return None
    if sending is not None and not isinstance(sending, dict):
        return None
    then: dict[str, Any] = sending or {}
    named = dict(enumerate(identity)) | dict(enumerate(invoice or (), start=3))
    if not (_plain(kwargs) and _plain(then) and _plain(named)):
        return None
    if not (kwargs.keys() | then.keys()) <= COLUMN_SET - _SET_BY_INSERT:
        return None
    if _marks(identity) & entangled:
        return None
    try:
        _expected(flow_id, to_state, None, ("claimed",))
        if sending is not None:
            _expected(flow_id, "sending", None, (to_state,))
    except StateConflict:
        return None
    key = (
        "queue",
        to_state,
        tuple(kwargs),
        invoice is not None,
        tuple(then) if sending is not None else None,
    )
    return key, (flow_id, *identity, *kwargs.values(), *(invoice or ()), *then.values())


def _plain(values: dict[Any, Any]) -> bool:
    """Whether every value is text, an integer or None (what the arrays carry)."""
    return all(
        v is None or (isinstance(v, int | str) and not isinstance(v, bool)) for v in values.values()
    )


def _run(db: FlowQueries, key: tuple[Any, ...], rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Run one group's statements; the answers of the calls they applied, by flow."""
    columns: tuple[str, ...]
    if key[0] == "queue":
        return _run_queue(db, key, rows)
    if key[0] == "insert":
        columns = ("flow_id", "connection", "original_name", "spool_path", *key[1])
        now = timestamp()
        defaults = {"created_at": now, "updated_at": now, "node": db.node}
        extra = tuple(name for name in defaults if name not in columns)
        sql = _insert_sql(columns, extra)
        arrays = [list(column) for column in zip(*rows, strict=True)]
        # The shared values come first in the statement's text (in its SELECT list).
        parameters: tuple[Any, ...] = (*(defaults[name] for name in extra), *arrays)
    else:
        _, to_state, current, detail, names, guard = key
        columns = ("flow_id", *names)
        sql = _update_sql(columns, guard)
        arrays = [list(column) for column in zip(*rows, strict=True)]
        fence = (db.node, lease_end(0))
        parameters = (to_state, timestamp(), detail, db.node, *arrays, current, *fence)
    found = db._db.execute(sql, parameters).fetchall()
    return {row["flow_id"]: FlowRow.of(row) for row in found}


@functools.lru_cache(maxsize=64)
def _insert_sql(columns: tuple[str, ...], extra: tuple[str, ...]) -> str:
    """``INSERT … SELECT … FROM unnest(…)`` of claimed flows with ``columns`` (and ``extra``,
    one value for all), skipping those already recorded."""
    unnest = ", ".join(f"?::{_TYPES[name]}[]" for name in columns)
    names = ", ".join(columns)
    chosen = "".join(f", v.{name}" for name in columns)[2:]
    shared = "".join(f", ?::{_TYPES[name]}" for name in extra)
    return (
        f"INSERT INTO flows ({names}, state{''.join(f', {n}' for n in extra)})"  # noqa: S608 - names from FlowRow
        f" SELECT {chosen}, 'claimed'{shared} FROM unnest({unnest}) AS v({names})"
        " ON CONFLICT DO NOTHING RETURNING *"
    )


def _guard(name: str) -> str:
    """The condition a group's move adds (see :data:`gateway.journal.flows._GUARDS`)."""
    if name == "free_path":
        return path_free("v.final_path", "v.flow_id")
    if name == "unique":
        duplicate = duplicate_of("v.flow_id", "v.dup_sha256", "v.dup_supplier", "v.dup_number")
        return f" AND NOT EXISTS (SELECT 1 FROM flows d WHERE {duplicate})"  # noqa: S608
    return ""


@functools.lru_cache(maxsize=256)
def _update_sql(columns: tuple[str, ...], guard: str) -> str:
    """``UPDATE … FROM unnest(…)``: each flow of the arrays moved from the state its caller
    read, setting ``columns[1:]``, guarded as a move alone is."""
    unnest = ", ".join(f"?::{_TYPES[name]}[]" for name in columns)
    names = ", ".join(columns)
    sets = "".join(f", {name}=v.{name}" for name in columns[1:] if name not in _IDENTITY)
    return (
        f"UPDATE flows AS f SET state=?, updated_at=?, detail=?, node=?{sets}"  # noqa: S608 - names from FlowRow
        f" FROM unnest({unnest}) AS v({names})"
        f" WHERE f.flow_id=v.flow_id AND f.state=?{_guard(guard)}{fence('f')}"
        " RETURNING f.*"
    )


_IDENTITY = ("dup_sha256", "dup_supplier", "dup_number")


def _run_queue(
    db: FlowQueries, key: tuple[Any, ...], rows: list[tuple[Any, ...]]
) -> dict[str, Any]:
    """A group of queueings: the move with its duplicate check, then the invoices of the
    flows moved, then their move on to sending, as each queueing alone makes them (the
    answer of each is its row and no duplicate). A flow moved but not taken on by the next
    statement cannot happen in one transaction; if it did, the batch runs again call by call."""
    _, to_state, names, with_invoice, sending = key
    width = 4 + len(names)
    queued_columns = ("flow_id", *_IDENTITY, *names)
    fence = (db.node, lease_end(0))
    moved = db._db.execute(
        _update_sql(queued_columns, "unique"),
        (to_state, timestamp(), None, db.node, *_arrays(rows, 0, width), "claimed", *fence),
    ).fetchall()
    taken = {row["flow_id"] for row in moved}
    kept = [row for row in rows if row[0] in taken]
    found = {row["flow_id"]: row for row in moved}
    if not kept:
        return {}
    after = width
    if with_invoice:
        invoices = [(row[0], 0, *row[width : width + 4]) for row in kept]
        db._db.execute(
            "INSERT INTO invoices (flow_id, position, file, invoice_number, supplier_id,"
            " source_flow) SELECT * FROM unnest(?::text[], ?::bigint[], ?::text[], ?::text[],"
            " ?::text[], ?::text[]) ON CONFLICT DO NOTHING",
            tuple(list(column) for column in zip(*invoices, strict=True)),
        )
        after += 4
    if sending is not None:
        columns = ("flow_id", *sending)
        values = [(row[0], *row[after:]) for row in kept]
        went = db._db.execute(
            _update_sql(columns, ""),
            (
                "sending",
                timestamp(),
                None,
                db.node,
                *_arrays(values, 0, len(columns)),
                to_state,
                *fence,
            ),
        ).fetchall()
        if len(went) != len(kept):
            raise RuntimeError("a flow queued in this transaction could not go on to sending")
        found = {row["flow_id"]: row for row in went}
    return {flow_id: (FlowRow.of(found[flow_id]), None) for flow_id in taken}


def _arrays(rows: list[tuple[Any, ...]], start: int, stop: int) -> list[list[Any]]:
    """Columns ``start`` to ``stop`` of ``rows``, each as a list (an array parameter)."""
    return [list(column) for column in zip(*(row[start:stop] for row in rows), strict=True)]
