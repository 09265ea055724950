"""The ``duties`` table: work that one node at a time does (return polling of a connection,
PISTE reports, retention, the overdue-return check...).

A duty is a row ``(name, node, until, mark)``: ``node`` holds it until ``until`` (ISO 8601 UTC,
from the taking node's clock). The holder renews it well before then; once ``until`` has passed
any node may take it. Taking and renewing are one statement that only one node can win,
whatever the database: an upsert whose update applies only when the row is ours or has expired
(SQLite >= 3.35 and PostgreSQL both read it the same way; ``?`` placeholders only).

``mark`` is the duty's own progress, kept with it so that the node taking it over carries on
where the last holder stopped (e.g. which overdue flows were already alerted).
"""

from __future__ import annotations

from typing import Any

from gateway.journal.base import Queries

#: Take or renew: inserted when absent, updated when ours or expired, else left as it is; the
#: row comes back only when this node holds the duty afterwards.
_TAKE = (
    "INSERT INTO duties (name, node, until) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET node = excluded.node, until = excluded.until"
    " WHERE duties.node = excluded.node OR duties.until < ?"
    " RETURNING node"
)


class DutyQueries(Queries):
    """Take, renew, release and read the duties (see the module docstring)."""

    def take_duty(self, name: str, now: str, until: str) -> bool:
        """Take or renew ``name`` for this node until ``until``: True if this node holds it
        now (it was free, ours, or its holder let ``now`` pass its ``until``)."""
        row = self._db.execute(_TAKE, (name, self.node, until, now)).fetchone()
        return row is not None

    def release_duty(self, name: str) -> bool:
        """Give ``name`` up at once (a clean stop) if this node holds it, so that another node
        takes it at its next try rather than after the lease; the mark stays. True if it was
        held."""
        row = self._db.execute(
            "UPDATE duties SET until = '' WHERE name = ? AND node = ? RETURNING name",
            (name, self.node),
        ).fetchone()
        return row is not None

    def duty_mark(self, name: str) -> str | None:
        """The progress the holders of ``name`` keep with it (None: none yet)."""
        row = self._db.execute("SELECT mark FROM duties WHERE name = ?", (name,)).fetchone()
        return None if row is None else row["mark"]

    def set_duty_mark(self, name: str, mark: str) -> bool:
        """Record ``mark`` as the progress of ``name``, only if this node holds it (a node
        that lost the duty must not overwrite its successor's progress). True if recorded."""
        row = self._db.execute(
            "UPDATE duties SET mark = ? WHERE name = ? AND node = ? RETURNING name",
            (mark, name, self.node),
        ).fetchone()
        return row is not None

    def duties(self) -> list[dict[str, Any]]:
        """Every duty with its holder and lease (an expired lease: nobody holds it)."""
        rows = self._db.execute("SELECT name, node, until FROM duties ORDER BY name").fetchall()
        return [dict(row) for row in rows]
