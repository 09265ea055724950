"""Reading the journal in bulk: the filtered listings of the CLI and the web console, and the
counts behind the metrics and the health check."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypedDict, Unpack

from flows.lifecycle import UNFILED
from gateway.journal.base import Queries
from gateway.journal.connection import Row
from gateway.journal.rows import FlowRow


class Filters(TypedDict, total=False):
    """The filters of a flow listing; each one given narrows it.

    ``invoice`` also finds the lots and dropped files carrying that invoice; ``status`` is an
    invoice status code (``05``), ``rejected`` or ``collateral``; ``since``/``until`` compare
    with the flow's creation time (ISO 8601, UTC); ``newest_first`` with ``limit``: the latest
    ``limit`` flows."""

    connection: str | None
    state: str | None
    since: str | None
    until: str | None
    invoice: str | None
    flow: str | None
    status: str | None
    limit: int | None
    newest_first: bool


class ListingQueries(Queries):
    """Listings (streamed: a million flows hold one row at a time) and counts."""

    def search(self, **filters: Unpack[Filters]) -> list[FlowRow]:
        """Flows matching every filter given, oldest first (see :class:`Filters`)."""
        return list(self.each(**filters))

    def each(self, **filters: Unpack[Filters]) -> Iterator[FlowRow]:
        """:meth:`search`, one row at a time (a listing of a million flows holds one row)."""
        for row in self.each_row(**filters):
            yield FlowRow.of(row)

    def each_row(self, **filters: Unpack[Filters]) -> Iterator[Row]:
        """:meth:`each` as the database's rows (the listings: a FlowRow per row of a
        million-flow export costs more than the export itself)."""
        invoice, status = filters.get("invoice"), filters.get("status")
        limit, newest_first = filters.get("limit"), filters.get("newest_first", False)
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("connection", "=", filters.get("connection")),
            ("state", "=", filters.get("state")),
            ("created_at", ">=", filters.get("since")),
            ("created_at", "<", filters.get("until")),
            ("flow_id", "=", filters.get("flow")),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        if invoice is not None:  # the flow's own invoice, or one of the invoices it carries
            clauses.append(
                "(invoice_number = ? OR flow_id IN"
                " (SELECT flow_id FROM invoices WHERE invoice_number = ?))"
            )
            params += [invoice, invoice]
        if status is not None:
            clauses.append(
                "flow_id IN (SELECT flow_id FROM invoices WHERE status_code = ?"
                " OR (? = 'rejected' AND rejected = 1) OR (? = 'collateral' AND collateral = 1))"
            )
            params += [status, status, status]
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        order = "DESC" if newest_first else ""
        sql = f"SELECT * FROM flows{where} ORDER BY created_at {order}"  # noqa: S608 - fixed
        if limit:
            sql += f" LIMIT {int(limit)}"
        # PostgreSQL's ordinary cursor would fetch every row at once: a cursor of the server's.
        stream = getattr(self._db, "stream", None)
        rows = stream(sql, params) if stream is not None else self._db.execute(sql, params)
        # Not ``yield from``: closing this generator (a reader that stopped) would close the
        # cursor, which fails once the journal itself is closed.
        for row in rows:  # noqa: UP028 - see above
            yield row

    def has_connection(self, connection: str) -> bool:
        """Whether any flow of ``connection`` is in the journal (one removed from the
        configuration still lists)."""
        row = self._db.execute(
            "SELECT 1 FROM flow_counts WHERE connection=? AND n > 0 LIMIT 1", (connection,)
        ).fetchone()
        return row is not None

    def invoices_of(self, rows: Sequence[Row]) -> dict[str, list[dict[str, Any]]]:
        """For a page of listed flows: a lot's invoices, or a dropped file's own invoice where
        it travelled last (as :meth:`invoices` and ``carried(...)[-1:]``), in two queries."""
        lots = [row["flow_id"] for row in rows if row["packaging"]]
        dropped = [row["flow_id"] for row in rows if not row["packaging"]]
        found: dict[str, list[dict[str, Any]]] = {row["flow_id"]: [] for row in rows}
        if lots:
            marks = ",".join("?" * len(lots))
            for item in self._db.execute(
                f"SELECT * FROM invoices WHERE flow_id IN ({marks})"  # noqa: S608 - marks
                " ORDER BY flow_id, position",
                lots,
            ):
                found[item["flow_id"]].append(dict(item))
        if dropped:
            marks = ",".join("?" * len(dropped))
            sql = (
                "SELECT i.* FROM invoices i JOIN flows f USING (flow_id)"  # noqa: S608 - marks
                f" WHERE i.source_flow IN ({marks}) ORDER BY f.created_at"
            )
            for item in self._db.execute(sql, dropped):
                found[item["source_flow"]][:] = [dict(item)]  # the latest carrier wins
        return found

    def invoice_rows(
        self,
        *,
        invoice: str | None = None,
        status: str | None = None,
        connection: str | None = None,
        state: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:
        """Invoices (one row per flow carrying each) with their flow's connection, state,
        packaging and resubmit_of. ``status``: a current status code (``05``), ``rejected``,
        ``collateral`` or ``not_received``."""
        rows = self._db.execute(
            "SELECT i.*, f.connection, f.state, f.packaging, f.resubmit_of, f.created_at"
            " FROM invoices i JOIN flows f USING (flow_id)"
            " WHERE (? IS NULL OR i.invoice_number = ?)"
            " AND (? IS NULL OR i.status_code = ? OR (? = 'rejected' AND i.rejected = 1)"
            " OR (? = 'collateral' AND i.collateral = 1)"
            " OR (? = 'not_received' AND i.flow_not_received = 1))"
            " AND (? IS NULL OR f.connection = ?) AND (? IS NULL OR f.state = ?)"
            " AND (? IS NULL OR f.created_at >= ?) AND (? IS NULL OR f.created_at < ?)"
            " ORDER BY f.created_at, i.position",
            (
                *(invoice, invoice),
                *[status] * 5,
                *(connection, connection, state, state),
                *(since, since, until, until),
            ),
        ).fetchall()
        return [dict(row) for row in rows]

    def counts(self) -> Mapping[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) AS n FROM flows GROUP BY state").fetchall()
        return {row["state"]: row["n"] for row in rows}

    def metrics(self) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """Flows by (connection, state), and return statuses by (connection, code)."""
        flows = self._db.execute(
            "SELECT connection, state, n FROM flow_counts WHERE n > 0"
        ).fetchall()
        statuses = self._db.execute(
            "SELECT connection, code, n FROM status_counts WHERE n > 0"
        ).fetchall()
        return (
            {(row[0], row[1]): row[2] for row in flows},
            {(row[0], row[1]): row[2] for row in statuses},
        )

    def invoice_metrics(
        self,
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """Invoices by (connection, current status code; ``rejected`` for a rejection without
        a code of its own, ``none`` before any), and returns by (connection, state)."""
        invoices = self._db.execute(
            "SELECT f.connection, CASE WHEN i.status_code IS NOT NULL THEN i.status_code"
            " WHEN i.rejected = 1 THEN 'rejected' ELSE 'none' END AS code, COUNT(*) AS n"
            " FROM invoices i JOIN flows f ON f.flow_id = i.flow_id GROUP BY 1, 2"
        ).fetchall()
        states = self._db.execute(
            "SELECT connection, state, COUNT(*) AS n FROM returns GROUP BY connection, state"
        ).fetchall()
        return (
            {(row[0], row[1]): row[2] for row in invoices},
            {(row[0], row[1]): row[2] for row in states},
        )

    def queue_depth(self) -> int:
        """Flows not yet filed (the same count as the raccord_queue_depth metric, summed)."""
        marks = ", ".join("?" for _ in UNFILED)
        row = self._db.execute(
            f"SELECT COUNT(*) FROM flows WHERE state IN ({marks})",  # noqa: S608 - placeholders
            UNFILED,
        ).fetchone()
        return int(row[0])
