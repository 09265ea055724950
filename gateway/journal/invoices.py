"""The ``invoices`` table: the invoices a flow carries (one, or a lot's members) and the
latest status a return gave each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.journal.base import Queries


class InvoiceQueries(Queries):
    """The invoices of a flow, and of a dropped file wherever it travelled."""

    def add_invoices(
        self, flow_id: str, invoices: Iterable[tuple[str, str | None, str | None, str]]
    ) -> None:
        """Record the invoices a flow carries, in order: (file, invoice number, supplier id,
        source flow: the flow of the dropped file, i.e. the flow itself unless it is a lot)."""
        self._db.executemany(
            "INSERT INTO invoices (flow_id, position, file, invoice_number, supplier_id,"
            " source_flow) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(flow_id, i, *invoice) for i, invoice in enumerate(invoices)],
        )

    def invoices(self, flow_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM invoices WHERE flow_id=? ORDER BY position", (flow_id,)
        ).fetchall()
        return [dict(row) for row in rows]

    def carried(self, flow_id: str) -> list[dict[str, Any]]:
        """A dropped file's invoice as the flows that carried it know it (its own flow, or the
        lots it was packed in, a resubmission last)."""
        rows = self._db.execute(
            "SELECT i.* FROM invoices i JOIN flows f USING (flow_id) WHERE i.source_flow=?"
            " ORDER BY f.created_at",
            (flow_id,),
        ).fetchall()
        return [dict(row) for row in rows]

    def flows_of_invoice(
        self, connection: str, invoice_number: str, supplier_id: str | None
    ) -> list[str]:
        """Sent flows of ``connection`` carrying that invoice, latest first."""
        rows = self._db.execute(
            "SELECT i.flow_id FROM invoices i JOIN flows f USING (flow_id)"
            " WHERE f.connection=? AND f.state='sent' AND i.invoice_number=?"
            " AND (? IS NULL OR i.supplier_id IS NULL OR i.supplier_id=?)"
            " ORDER BY f.created_at DESC",
            (connection, invoice_number, supplier_id, supplier_id),
        ).fetchall()
        return [row["flow_id"] for row in rows]

    def set_invoice_status(self, flow_id: str, position: int, **values: Any) -> None:
        allowed = {
            "status_code",
            "status_label",
            "status_at",
            "rejected",
            "collateral",
            "final",
            "reasons",
            "rejected_path",
            "flow_not_received",
        }
        assert set(values) <= allowed, set(values) - allowed
        assignments = ", ".join(f"{name}=?" for name in values)
        self._db.execute(
            f"UPDATE invoices SET {assignments} WHERE flow_id=? AND position=?",  # noqa: S608
            (*values.values(), flow_id, position),
        )

    def rejected_path_held(self, path: str) -> bool:
        """Whether a rejected invoice is already filed (or being filed) at ``path``."""
        row = self._db.execute("SELECT 1 FROM invoices WHERE rejected_path=? LIMIT 1", (path,))
        return row.fetchone() is not None
