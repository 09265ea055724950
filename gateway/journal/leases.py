"""Flow leases: which node works on which flow, and until when.

Several nodes may share one journal (and one data_dir). Each flow is worked on by one node at
a time, the one whose name is in ``flows.node`` while ``flows.lease_until`` is in the future.
A node *takes* the next flows to work on by leasing them (:meth:`LeaseQueries.lease`: one
statement, oldest first), *renews* the leases of the flows it works on with a heartbeat
(:meth:`LeaseQueries.renew`) and *releases* them when it is done with them or stops
(:meth:`LeaseQueries.release`). A node that dies renews nothing: its leases expire after
``[journal] lease_timeout`` and another node takes those flows as a restart would.

The same statement is how a single node bounds its memory: it holds only a window of flows in
flight and leases the next ones, in journal order, as capacity frees up.

Why the SQL reads as it does:

* ``UPDATE … WHERE flow_id IN (SELECT … LIMIT ?) AND <the lease is free> RETURNING *`` — the
  condition is repeated in the outer WHERE because PostgreSQL, under READ COMMITTED, re-checks
  only the outer condition of a row another transaction changed meanwhile; without it two
  nodes could both take a flow. SQLite (≥ 3.35 for RETURNING) runs it as one write
  transaction.
* :attr:`LeaseQueries.skip_locked` is appended to the inner SELECT: empty on SQLite (one
  writer at a time), ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so that two nodes leasing at
  once take different rows instead of waiting for each other.
* Times are the ISO 8601 UTC strings of :func:`~gateway.journal.base.timestamp`, written by the
  node: they compare as text, and the nodes' clocks must agree within a few seconds (NTP),
  well under ``lease_timeout``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from flows.lifecycle import FlowState
from gateway.journal.base import Queries
from gateway.journal.rows import FlowRow

#: The states a node takes a flow in to work on it: every state but these. ``batched``
#: invoices wait in their connection's lot, ``awaiting_receipt`` flows for the partner, the
#: others are done.
NOT_WORKABLE = ("batched", "packed", "awaiting_receipt", "sent", "error")
WORKABLE = tuple(state.value for state in FlowState if state.value not in NOT_WORKABLE)

#: The condition on ``state`` of a workable flow, word for word the WHERE of the schema's
#: partial index ``flows_workable``: a database uses a partial index only for a query whose
#: condition implies the index's, and literals (not parameters) let it prove so. As NOT IN,
#: ``flows_state`` cannot serve it: SQLite would otherwise look the states up there and sort
#: the whole backlog at every lease (68 ms at 75,000 flows waiting, against 0.01 ms).
_WORKABLE_SQL = "state NOT IN ({})".format(", ".join(f"'{state}'" for state in NOT_WORKABLE))


def fence(table: str = "") -> str:
    """The lease fence of a move of ``table``'s row (``flows``, or its alias): the flow is not
    being worked on (a state no lease covers), or its lease is this node's (the first ``?``),
    or nobody's (never taken, released, or expired before the second ``?``, now)."""
    t = f"{table}." if table else ""
    states = ", ".join(f"'{state}'" for state in NOT_WORKABLE)
    return (
        f" AND ({t}state IN ({states}) OR {t}node=? OR {t}lease_until IS NULL"
        f" OR {t}lease_until < ?)"
    )


T = TypeVar("T")

#: Flow ids per statement when renewing or releasing many (well under SQLite's 32,766
#: parameters and PostgreSQL's 65,535).
CHUNK = 500

#: The lease is free: never taken, released, or expired (``?`` is now).
_FREE = "(lease_until IS NULL OR lease_until < ?)"


def lease_end(seconds: float, now: datetime | None = None) -> str:
    """The ``lease_until`` of a lease taken or renewed now for ``seconds``."""
    moment = (now or datetime.now(UTC)) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    """``items`` ``size`` at a time (a statement's parameters stay well under the limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LeaseQueries(Queries):
    """Leasing flows to this node (:attr:`node`), renewing and releasing the leases."""

    def lease(self, /, limit: int, until: str) -> list[FlowRow]:
        """Lease to this node up to ``limit`` flows in a :data:`WORKABLE` state whose lease
        is free, oldest first, until ``until``; return them, oldest first."""
        if limit <= 0:
            return []
        now = _now()
        rows = self._db.execute(
            f"UPDATE flows SET node=?, lease_until=? WHERE flow_id IN"  # noqa: S608 - constants
            f" (SELECT flow_id FROM flows WHERE {_WORKABLE_SQL} AND {_FREE}"
            f" ORDER BY created_at, flow_id LIMIT ?{self.skip_locked})"
            f" AND {_WORKABLE_SQL} AND {_FREE} RETURNING *",
            (self.node, until, now, limit, now),
        ).fetchall()
        taken = [FlowRow.of(row) for row in rows]
        taken.sort(key=lambda row: (row.created_at, row.flow_id))
        return taken

    def take(self, /, flow_id: str, until: str) -> FlowRow | None:
        """Lease one given flow to this node, if its lease is free or already this node's
        (a flow this node starts by itself: a new lot, one resumed after a fault); return
        it, or None if another node holds it."""
        row = self._db.execute(
            "UPDATE flows SET node=?, lease_until=? WHERE flow_id=?"
            " AND (lease_until IS NULL OR lease_until < ? OR node=?) RETURNING *",
            (self.node, until, flow_id, _now(), self.node),
        ).fetchone()
        return FlowRow.of(row) if row else None

    def renew(self, /, flow_ids: Sequence[str], until: str) -> list[str]:
        """Extend to ``until`` the leases this node still holds among ``flow_ids``; return
        the ids renewed (a flow missing there was taken by another node: this one lost it)."""
        renewed: list[str] = []
        with self.transaction():
            for chunk in chunks(flow_ids):
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"UPDATE flows SET lease_until=? WHERE flow_id IN ({marks})"  # noqa: S608
                    " AND node=? AND lease_until IS NOT NULL RETURNING flow_id",
                    (until, *chunk, self.node),
                ).fetchall()
                renewed += [row[0] for row in rows]
        return renewed

    def release(self, /, flow_ids: Sequence[str]) -> int:
        """Give up this node's leases of ``flow_ids`` (done with them, or stopping): any node
        may take those still workable at once. Returns how many were released."""
        released = 0
        with self.transaction():
            for chunk in chunks(flow_ids):
                marks = ",".join("?" * len(chunk))
                released += self._db.execute(
                    f"UPDATE flows SET lease_until=NULL WHERE flow_id IN ({marks})"  # noqa: S608
                    " AND node=? AND lease_until IS NOT NULL",
                    (*chunk, self.node),
                ).rowcount
        return released

    def release_all(self) -> int:
        """Give up every lease held under this node's name: at start, those of its previous
        incarnation (dead: data_dir's lock proves it), so that a restart resumes its flows
        at once rather than after ``lease_timeout``."""
        return int(
            self._db.execute(
                "UPDATE flows SET lease_until=NULL WHERE node=? AND lease_until IS NOT NULL",
                (self.node,),
            ).rowcount
        )

    def workable(self) -> int:
        """How many flows wait to be worked on or are being worked on (any node)."""
        row = self._db.execute(
            f"SELECT COUNT(*) FROM flows WHERE {_WORKABLE_SQL}"  # noqa: S608 - constants
        ).fetchone()
        return int(row[0])

    def states_of(self, /, flow_ids: Sequence[str]) -> dict[str, str]:
        """The state of each of ``flow_ids`` the journal has a row for."""
        found: dict[str, str] = {}
        for chunk in chunks(flow_ids):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT flow_id, state FROM flows WHERE flow_id IN ({marks})",  # noqa: S608
                tuple(chunk),
            ).fetchall()
            found.update((row[0], row[1]) for row in rows)
        return found
