"""Retention: forgetting flows long filed (``[gateway] retention``, ``raccord purge``).

A flow is purged — its journal rows (flow, history, invoices, statuses) and, when asked, its
files in ``sent/`` — only when all of these hold:

* it is filed: ``sent``, ``error`` or ``packed`` (never a flow still open or awaiting a receipt);
* nothing happened to it since the cut-off: its last state change, and every return that gave
  it a status, are older;
* no partner is still being asked about it (a PISTE deposit whose report or invoice life-cycle
  is still followed);
* a packed invoice goes with its lot: not while the lot stays; a lot goes once every invoice
  it packed is packed (none waits to be packed again);
* a flow in ``error`` whose file is still in ``error/`` stays (``raccord retry`` needs both).

A return flow is purged (row, and its file in ``inbox/`` when asked) once it is older than the
cut-off and none of the statuses it gave is left. The records of downloads and of inbound AS2
messages stay: they keep a file still on the partner's side from being taken twice.

**What the cut-off costs**: duplicate detection only knows the flows in the journal; an invoice
dropped again after its flow was purged is sent again. Hence :data:`MINIMUM` and the default
(off). Work goes in batches of :data:`BATCH` flows, each its own transaction, so that the daemon
(or the daemon beside a ``raccord purge``) never waits long for the journal.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from gateway.journal import JournalDB

#: The shortest retention accepted: statuses (payment, for one) may come months after sending.
MINIMUM = timedelta(days=90)
#: Flows examined per batch (one transaction each).
BATCH = 500

_CANDIDATES = """
SELECT f.flow_id, f.created_at, f.state, f.final_path, f.packaging FROM flows f
WHERE f.created_at < :cutoff AND (f.created_at, f.flow_id) > (:after_at, :after_id)
  AND f.state IN ('sent', 'error', 'packed') AND f.updated_at < :cutoff
  AND NOT EXISTS (
    SELECT 1 FROM statuses s JOIN returns r USING (return_id)
    WHERE s.flow_id = f.flow_id AND r.received_at >= :cutoff)
  AND NOT EXISTS (
    SELECT 1 FROM deposits d WHERE d.flow_id = f.flow_id
    AND (d.outcome IS NULL OR (d.lifecycle_next IS NOT NULL AND d.lifecycle_outcome IS NULL)))
  AND NOT EXISTS (
    SELECT 1 FROM flows l WHERE l.flow_id = f.lot_id
    AND (l.state NOT IN ('sent', 'error') OR l.updated_at >= :cutoff))
  AND NOT EXISTS (
    -- By the index always: most flows have no lot, and statistics then make it look useless.
    SELECT 1 FROM flows m INDEXED BY flows_lot WHERE m.lot_id = f.flow_id AND m.state <> 'packed')
ORDER BY f.created_at, f.flow_id LIMIT :batch
"""

_OLD_RETURNS = """
SELECT return_id, inbox_path FROM returns r
WHERE r.received_at < :cutoff AND r.state NOT IN ('received', 'applying')
  AND NOT EXISTS (SELECT 1 FROM statuses s WHERE s.return_id = r.return_id)
LIMIT :batch
"""


@dataclass
class Purged:
    """What a purge removed."""

    flows: int = 0
    returns: int = 0
    files: int = 0

    def add(self, other: Purged) -> None:
        self.flows += other.flows
        self.returns += other.returns
        self.files += other.files


@dataclass(frozen=True)
class Batch:
    """One batch's outcome: what it removed, the files to delete once it is committed, and
    where the next batch starts (the last flow's creation time and id; None: done)."""

    flows: int
    returns: int
    files: tuple[str, ...]
    after: tuple[str, str] | None


def too_recent(cutoff: datetime, now: datetime) -> str | None:
    """Why ``cutoff`` may not be used, or None."""
    if now - cutoff < MINIMUM:
        return (
            f"{cutoff:%Y-%m-%d} is less than {MINIMUM.days} days ago: return flows may still "
            "name those flows (and duplicates of their invoices would no longer be recognised)"
        )
    return None


#: Where the first batch starts.
START = ("", "")


def purge_batch(db: JournalDB, cutoff: str, after: tuple[str, str], with_files: bool) -> Batch:
    """Remove the next batch of purgeable flows (created after ``after``, in creation order:
    the creation-time index keeps each batch to the flows older than the cut-off), then, once
    the flows are done, a batch of old returns; one transaction. Runs in the journal process
    (daemon) or directly (``raccord purge``)."""
    connection = db._db  # the journal's own module: its connection, one transaction
    with db.transaction():
        rows = connection.execute(
            _CANDIDATES,
            {"after_at": after[0], "after_id": after[1], "cutoff": cutoff, "batch": BATCH},
        ).fetchall()
        doomed = [
            row["flow_id"]
            for row in rows
            # A file still in error/ is the operator's to retry: its row stays with it.
            if not (row["state"] == "error" and _still_there(row["final_path"]))
        ]
        files: list[str] = []
        if with_files:
            for row in rows:
                if row["state"] == "sent" and row["final_path"] and row["flow_id"] in doomed:
                    path = row["final_path"]
                    files += [path, f"{path}.receipt.json", f"{path}.status.json"]
        marks = ",".join("?" * len(doomed))
        if doomed:
            for table in ("statuses", "transitions", "invoices", "deposits", "flows"):
                # Statuses before flows: their count is kept by connection (see the journal).
                connection.execute(
                    f"DELETE FROM {table} WHERE flow_id IN ({marks})",  # noqa: S608 - ours
                    doomed,
                )
        returns = 0
        if not rows:  # flows done: the returns they leave without a status
            old = connection.execute(_OLD_RETURNS, {"cutoff": cutoff, "batch": BATCH}).fetchall()
            if old:
                ids = [row["return_id"] for row in old]
                marks = ",".join("?" * len(ids))
                connection.execute(
                    f"DELETE FROM returns WHERE return_id IN ({marks})",  # noqa: S608 - marks
                    ids,
                )
                returns = len(ids)
                if with_files:
                    files += [row["inbox_path"] for row in old]
    last = (rows[-1]["created_at"], rows[-1]["flow_id"]) if rows else None
    after_next = last or (after if returns else None)
    return Batch(len(doomed), returns, tuple(files), after_next)


def _still_there(path: str | None) -> bool:
    return bool(path) and Path(str(path)).exists()


def remove_files(paths: tuple[str, ...]) -> int:
    """Delete the files of a committed batch; the count of those that were there."""
    removed = 0
    for name in paths:
        with contextlib.suppress(FileNotFoundError):
            Path(name).unlink()
            removed += 1
    return removed


def purge(db: JournalDB, cutoff: datetime, *, with_files: bool) -> Purged:
    """Every batch until nothing is left to purge before ``cutoff`` (``raccord purge``)."""
    total = Purged()
    stamp = cutoff.isoformat(timespec="milliseconds")
    after: tuple[str, str] | None = START
    while after is not None:
        batch = purge_batch(db, stamp, after, with_files)
        total.add(Purged(batch.flows, batch.returns, remove_files(batch.files)))
        after = batch.after
    return total
