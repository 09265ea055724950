"""The ``deposits`` table: flows sent to an API partner (PISTE) that is asked about each one
until its report, then its invoices' life-cycle, is final."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from gateway.journal.base import Queries, timestamp


class DepositQueries(Queries):
    """Which deposits to ask about, and when."""

    def adopt_deposits(self, connection: str, protocol: str, first_after: float) -> int:
        """Start asking about the flows sent on ``connection`` over ``protocol`` that are not
        followed yet: first ``first_after`` seconds after they were sent. A flow sent over
        another protocol, or found already delivered, is recorded as ``not_followed`` so that
        it is looked at once. Returns how many are asked about now."""
        rows = self._db.execute(
            "SELECT flow_id, remote_name, receipt FROM flows f WHERE connection=? AND"
            " state='sent' AND receipt IS NOT NULL AND NOT EXISTS"
            " (SELECT 1 FROM deposits d WHERE d.flow_id=f.flow_id)",
            (connection,),
        ).fetchall()
        adopted = 0
        for row in rows:
            document = json.loads(row["receipt"])
            followed = document.get("protocol") == protocol and not document.get(
                "already_delivered"
            )
            details = {**document.get("partner_answer", {}), "remote_name": row["remote_name"]}
            sent_at = str(document.get("sent_at") or timestamp())
            first = datetime.fromisoformat(sent_at) + timedelta(seconds=first_after)
            self._db.execute(
                "INSERT INTO deposits (flow_id, connection, receipt, sent_at, next_at,"
                " outcome, at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    row["flow_id"],
                    connection,
                    json.dumps(details),
                    sent_at,
                    first.isoformat(timespec="milliseconds"),
                    None if followed else "not_followed",
                    timestamp(),
                ),
            )
            adopted += followed
        return adopted

    def deposits_due(self, connection: str, now: str) -> list[dict[str, Any]]:
        """The deposits on ``connection`` still asked about whose time has come."""
        rows = self._db.execute(
            "SELECT * FROM deposits WHERE connection=? AND outcome IS NULL AND next_at<=?"
            " ORDER BY next_at",
            (connection, now),
        ).fetchall()
        return [dict(row) for row in rows]

    def lifecycles_due(self, connection: str, now: str) -> list[dict[str, Any]]:
        """The integrated deposits on ``connection`` whose invoices are followed and due."""
        rows = self._db.execute(
            "SELECT * FROM deposits WHERE connection=? AND lifecycle_next IS NOT NULL AND"
            " lifecycle_outcome IS NULL AND lifecycle_next<=? ORDER BY lifecycle_next",
            (connection, now),
        ).fetchall()
        return [dict(row) for row in rows]

    def deposit(self, flow_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM deposits WHERE flow_id=?", (flow_id,)).fetchone()
        return dict(row) if row else None

    def update_deposit(self, /, flow_id: str, **values: Any) -> None:
        assignments = ", ".join(f"{name}=?" for name in values)
        self._db.execute(
            f"UPDATE deposits SET {assignments}, at=? WHERE flow_id=?",  # noqa: S608 - our names
            (*values.values(), timestamp(), flow_id),
        )
