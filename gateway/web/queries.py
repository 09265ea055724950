"""What the console reads from the journal: connections of its own, read-only, in threads of
its own, so that a page never waits on (nor holds up) the journal process's writes.

Every query the console makes is here, so that a change of the journal's schema has one place
to follow. The journal is the configured one (:func:`~gateway.journal.journal_target`): the
SQLite file of this node, opened read-only (WAL mode lets these readers run while the journal
commits), or the PostgreSQL database several nodes share, whose console sessions refuse every
write (``default_transaction_read_only``). A reader sees the journal as of its last commit.

The SQL runs on both databases, written in SQLite's spelling as the journal's own queries are
(:mod:`gateway.journal.connection`); where they must differ (an index hint) the
:class:`~gateway.journal.connection.Dialect` gives the fragment.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from gateway.journal import STATES, UNFILED, JournalTarget, PostgresTarget
from gateway.journal.connection import SQLITE, Connection, Dialect

T = TypeVar("T")

#: Rows on a page of the flows table.
PAGE = 50
#: A status filter that matches fewer invoices than this lists their flows directly; above it,
#: the flows are walked newest first and each is checked (many matches: a page fills quickly).
_FEW = 5_000
#: Flow columns the tables show (not the spool paths and hashes).
_LISTED = (
    "flow_id, connection, original_name, state, interface_code, invoice_number, remote_name,"
    " attempts, reason, message, created_at, updated_at, lot_id, packaging, resubmit_of,"
    " duplicate_of, final_path, node"
)


class Reader:
    """Runs queries over the journal in a small pool of threads, one read-only connection each."""

    def __init__(self, journal: JournalTarget, workers: int = 2) -> None:
        self._target = journal
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="web-read")
        self._opened: list[Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> Connection:
        db: Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = open_read_only(self._target)
            self._local.db = db
            with self._lock:
                self._opened.append(db)
        return db

    async def run(self, query: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: query(self._connection(), *args))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            opened, self._opened = self._opened, []
        for db in opened:  # a PostgreSQL session is not left for the server to time out
            db.close()


def open_read_only(target: JournalTarget) -> Connection:
    """A connection to the journal at ``target`` that cannot write: SQLite's file opened
    read-only, or a PostgreSQL session whose transactions are all read-only (set as a
    connection option, so that it holds again when the adapter reconnects after a lost
    server)."""
    if isinstance(target, PostgresTarget):
        from gateway.journal.postgres import PostgresConnection

        return PostgresConnection(read_only_target(target))
    db = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA query_only=ON")
    return db


def read_only_target(target: PostgresTarget) -> PostgresTarget:
    """``target`` with ``default_transaction_read_only`` on for its sessions (added to the
    URL's own ``options``, if any). An unparsable URL is left as it is: connecting says so."""
    try:
        options = conninfo_to_dict(target.url).get("options") or ""
    except Exception:  # psycopg's ProgrammingError; the connection names the fault
        return target
    options = f"{options} -c default_transaction_read_only=on".strip()
    return PostgresTarget(make_conninfo(target.url, options=options), target.password)


def dialect(db: Connection) -> Dialect:
    """The SQL dialect of ``db``'s database."""
    if isinstance(db, sqlite3.Connection):
        return SQLITE
    from gateway.journal.postgres import POSTGRES

    return POSTGRES


@dataclass(frozen=True)
class Filters:
    connection: str | None = None
    state: str | None = None
    status: str | None = None  # a status code (e.g. 10), "rejected" or "collateral"
    since: str | None = None  # ISO date or time (UTC), inclusive
    until: str | None = None  # exclusive
    text: str | None = None  # a flow id, an invoice number, or the start of a file name
    oldest_first: bool = False

    def query(self) -> dict[str, str]:
        """The filters as URL query parameters (for links that keep them)."""
        values = {
            "connection": self.connection,
            "state": self.state,
            "status": self.status,
            "since": self.since,
            "until": self.until,
            "q": self.text,
            "order": "asc" if self.oldest_first else None,
        }
        return {key: value for key, value in values.items() if value}


_LAST = "\U0010ffff"  # sorts after any character: "abc" to "abc" + _LAST is every "abc…"


def _at_least(db: Connection, source: str, values: list[Any]) -> bool:
    """Whether ``SELECT … FROM source`` has :data:`_FEW` rows or more (it stops counting there)."""
    sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM {source} LIMIT {_FEW}) AS few"  # noqa: S608
    return bool(db.execute(sql, values).fetchone()[0] >= _FEW)


def _impossible(*values: str | None) -> bool:
    """Whether a filter holds a NUL, which no name in the journal holds: it matches nothing
    (and PostgreSQL refuses it as a parameter, where SQLite would search for it)."""
    return any(value and "\x00" in value for value in values)


def _invoice_match(status: str, plus: str = "") -> tuple[str, list[Any]]:
    """The invoices clause of a status filter; ``plus`` (SQLite's ``+``) keeps the planner from
    searching the status index for it (in a per-flow check, the flow's own invoices are the few
    to read)."""
    if status == "rejected":
        return f"{plus}rejected = 1", []
    if status == "collateral":
        return f"{plus}collateral = 1", []
    return f"{plus}status_code = ?", [status]


def flows(
    db: Connection, filters: Filters, page: int = 0, size: int = PAGE
) -> list[dict[str, Any]]:
    """One page of ``size`` flows, newest first (or oldest); one row more when a next page
    exists. Each row has its invoices' current return status (``invoices``, ``status``)."""
    if _impossible(filters.connection, filters.state, filters.status, filters.text):
        return []
    clauses: list[str] = []
    params: list[Any] = []
    for column, op, value in (
        ("connection", "=", filters.connection),
        ("state", "=", filters.state),
        ("created_at", ">=", filters.since),
        ("created_at", "<", filters.until),
    ):
        if value:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    if filters.text:
        text = filters.text.strip()
        # Each alternative is an index search: the flow id, the invoice number (the flow's own
        # or one its lot carries), and a file name that starts with the text; their few
        # matches are looked up and sorted (as one IN of a UNION: PostgreSQL does not combine
        # ORs of subqueries and would walk every flow). A prefix that many names share
        # ("invoice-") is checked row by row along the date order instead (SQLite's unary +
        # keeps it from sorting every match): a page then fills quickly.
        if _at_least(
            db, "flows WHERE original_name >= ? AND original_name < ?", [text, text + _LAST]
        ):
            p = dialect(db).unindexed
            clauses.append(
                f"({p}flow_id = ? OR {p}invoice_number = ?"  # noqa: S608 - p is "" or "+"
                f" OR ({p}original_name >= ? AND {p}original_name < ?)"
                f" OR {p}flow_id IN (SELECT flow_id FROM invoices WHERE invoice_number = ?)"
                f" OR {p}flow_id IN (SELECT source_flow FROM invoices WHERE invoice_number = ?))"
            )
        else:
            clauses.append(
                "flow_id IN (SELECT flow_id FROM flows WHERE flow_id = ?"
                " UNION ALL SELECT flow_id FROM flows WHERE invoice_number = ?"
                " UNION ALL SELECT flow_id FROM flows WHERE original_name >= ?"
                " AND original_name < ?"
                " UNION ALL SELECT flow_id FROM invoices WHERE invoice_number = ?"
                " UNION ALL SELECT source_flow FROM invoices WHERE invoice_number = ?)"
            )
        params += [text, text, text, text + _LAST, text, text]
    if filters.status:
        match, values = _invoice_match(filters.status)
        if not _at_least(db, f"invoices WHERE {match}", values):
            clauses.append(
                f"flow_id IN (SELECT flow_id FROM invoices WHERE {match}"  # noqa: S608
                f" UNION ALL SELECT source_flow FROM invoices WHERE {match})"
            )
            params += values + values
        else:
            match, values = _invoice_match(filters.status, dialect(db).unindexed)
            clauses.append(
                "(EXISTS (SELECT 1 FROM invoices i WHERE i.flow_id = flows.flow_id"  # noqa: S608
                f" AND {match})"
                " OR EXISTS (SELECT 1 FROM invoices i WHERE i.source_flow = flows.flow_id"
                f" AND {match}))"
            )
            params += values + values
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    order = "ASC" if filters.oldest_first else "DESC"
    sql = (
        f"SELECT {_LISTED} FROM flows{where} ORDER BY created_at {order}"  # noqa: S608
        f" LIMIT {int(size) + 1} OFFSET {max(page, 0) * int(size)}"
    )
    rows = [dict(row) for row in db.execute(sql, params)]
    carried = _carried(db, rows)
    for row in rows:
        row["invoices"] = carried.get(row["flow_id"], [])
        row["status"] = return_status(row["invoices"])
    return rows


#: The invoices of a dropped file, wherever it travelled: its own flow, then the lots that
#: carried it or a resubmission, in the order their flows were created (the latest carrier last).
_CARRIERS = (
    "SELECT i.* FROM invoices i JOIN flows f ON f.flow_id = i.flow_id WHERE i.source_flow = ?"
)


#: Flows whose invoices one query reads (well under SQLite's limit of parameters).
_CHUNK = 500


def _carried(db: Connection, flows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each flow's invoices: a lot's own, or a dropped file's own invoice wherever it
    travelled (its latest carrier's). A few queries for a whole page rather than one per row:
    on PostgreSQL each query is a round trip to the server."""
    found: dict[str, list[dict[str, Any]]] = {}
    lots = [flow["flow_id"] for flow in flows if flow["packaging"]]
    files = [flow["flow_id"] for flow in flows if not flow["packaging"]]
    for start in range(0, len(lots), _CHUNK):
        chunk = lots[start : start + _CHUNK]
        sql = (
            f"SELECT * FROM invoices WHERE flow_id IN ({','.join('?' * len(chunk))})"  # noqa: S608
            " ORDER BY flow_id, position"
        )
        for row in db.execute(sql, chunk):
            found.setdefault(row["flow_id"], []).append(dict(row))
    for start in range(0, len(files), _CHUNK):
        chunk = files[start : start + _CHUNK]
        sql = (
            "SELECT i.* FROM invoices i JOIN flows f ON f.flow_id = i.flow_id"  # noqa: S608
            f" WHERE i.source_flow IN ({','.join('?' * len(chunk))})"
            " ORDER BY f.created_at, i.flow_id"
        )
        for row in db.execute(sql, chunk):
            found[row["source_flow"]] = [dict(row)]  # the latest carrier wins
    return found


def return_status(invoices: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The flow's return status in one cell: ``code``, ``label``, ``rejected``, ``collateral``
    (for a lot: how many of its invoices)."""
    if not invoices:
        return None
    rejected = sum(1 for i in invoices if i["rejected"])
    collateral = sum(1 for i in invoices if i["collateral"])
    codes = sorted({i["status_code"] for i in invoices if i["status_code"]})
    labels = sorted({i["status_label"] for i in invoices if i["status_label"]})
    if not codes and not rejected:
        return None
    return {
        "code": ", ".join(codes),
        "label": ", ".join(labels),
        "rejected": rejected,
        "collateral": collateral,
        "count": len(invoices),
    }


def flow(db: Connection, flow_id: str) -> dict[str, Any] | None:
    """Everything the journal knows of one flow: its row, transitions, receipt, invoices with
    their status history, the lot it travelled in and the resubmissions around it."""
    row = db.execute("SELECT * FROM flows WHERE flow_id = ?", (flow_id,)).fetchone()
    if row is None:
        return None
    data = dict(row)
    try:
        data["receipt"] = json.loads(data["receipt"]) if data["receipt"] else None
    except ValueError:
        data["receipt"] = {"raw": data["receipt"]}
    data["transitions"] = [
        dict(r)
        for r in db.execute(
            "SELECT from_state, to_state, at, detail, node FROM transitions WHERE flow_id = ?"
            " ORDER BY id",
            (flow_id,),
        )
    ]
    invoices = (
        db.execute("SELECT * FROM invoices WHERE flow_id = ? ORDER BY position", (flow_id,))
        if data["packaging"]
        else db.execute(
            "SELECT i.* FROM invoices i JOIN flows f ON f.flow_id = i.flow_id"
            " WHERE i.source_flow = ? ORDER BY f.created_at, i.flow_id",
            (flow_id,),
        )
    )
    data["invoices"] = []
    for invoice in invoices:
        item = dict(invoice)
        try:
            item["reasons"] = json.loads(item["reasons"]) if item["reasons"] else []
        except ValueError:
            item["reasons"] = [item["reasons"]]
        item["history"] = [
            dict(r)
            for r in db.execute(
                "SELECT s.code, s.label, s.at, s.detail, r.file AS return_file, s.return_id"
                " FROM statuses s JOIN returns r USING (return_id)"
                " WHERE s.flow_id = ? AND s.position = ? ORDER BY r.received_at",
                (item["flow_id"], item["position"]),
            )
        ]
        data["invoices"].append(item)
    data["statuses"] = [
        dict(r)
        for r in db.execute(
            "SELECT s.code, s.label, s.at, s.detail, r.file AS return_file, s.return_id"
            " FROM statuses s JOIN returns r USING (return_id)"
            " WHERE s.flow_id = ? AND s.position < 0 ORDER BY r.received_at",
            (flow_id,),
        )
    ]
    data["returns"] = [
        dict(r)
        for r in db.execute(
            "SELECT DISTINCT r.return_id, r.file, r.kind, r.state, r.received_at"
            " FROM returns r JOIN statuses s USING (return_id) WHERE s.flow_id = ?"
            " ORDER BY r.received_at",
            (flow_id,),
        )
    ]
    data["members"] = [
        dict(r)
        for r in db.execute(
            "SELECT flow_id, original_name, state FROM flows WHERE lot_id = ? ORDER BY created_at",
            (flow_id,),
        )
    ]
    data["resubmissions"] = [
        dict(r)
        for r in db.execute(
            "SELECT flow_id, state, created_at FROM flows WHERE resubmit_of = ?", (flow_id,)
        )
    ]
    return data


def rejected(
    db: Connection, connection: str | None, since: str | None, until: str | None
) -> list[dict[str, Any]]:
    """Rejected invoices, newest first: the guilty ones and the collateral ones told apart,
    each with the flow that carried it and the one it was resubmitted in, if any."""
    if _impossible(connection, since, until):
        return []
    clauses, params = ["i.rejected = 1"], []
    for clause, value in (
        ("f.connection = ?", connection),
        ("i.status_at >= ?", since),
        ("i.status_at < ?", until),
    ):
        if value:
            clauses.append(clause)
            params.append(value)
    sql = (  # the clauses are fixed strings, the values parameters
        "SELECT i.*, f.connection, f.original_name AS flow_file, f.interface_code,"  # noqa: S608
        " (SELECT r.flow_id FROM flows r WHERE r.resubmit_of = i.flow_id LIMIT 1) AS resubmitted"
        " FROM invoices i JOIN flows f ON f.flow_id = i.flow_id"
        f" WHERE {' AND '.join(clauses)} ORDER BY i.status_at DESC LIMIT 500"
    )
    found = []
    for row in db.execute(sql, params):
        item = dict(row)
        try:
            item["reasons"] = json.loads(item["reasons"]) if item["reasons"] else []
        except ValueError:
            item["reasons"] = [item["reasons"]]
        found.append(item)
    return found


def connection_activity(db: Connection, name: str) -> dict[str, Any]:
    """A connection's last success and how many of its latest flows failed in a row (those it
    tried to send: a duplicate or a file that is no invoice says nothing of the connection)."""
    last = db.execute(
        "SELECT updated_at FROM flows WHERE connection = ? AND state = 'sent'"
        " ORDER BY created_at DESC LIMIT 1",
        (name,),
    ).fetchone()
    failures = 0
    for row in db.execute(
        "SELECT state FROM flows WHERE connection = ? AND state IN ('sent', 'error')"
        " AND attempts > 0 ORDER BY created_at DESC LIMIT 1000",
        (name,),
    ):
        if row[0] != "error":
            break
        failures += 1
    return {"last_success": last[0] if last else None, "failures": failures}


def overview(db: Connection, now: datetime) -> dict[str, Any]:
    """Counts per state, queue depth, and files sent / failed / rejected per day (30 days) and
    per hour (48 hours), by the time they were dropped."""
    counts = {state: 0 for state in STATES}
    for row in db.execute("SELECT state, COUNT(*) FROM flows GROUP BY state"):
        counts[row[0]] = row[1]
    queue = sum(counts.get(state, 0) for state in UNFILED)
    return {
        "counts": counts,
        "queue": queue,
        "days": _series(db, now, days=True),
        "hours": _series(db, now, days=False),
    }


def _series(db: Connection, now: datetime, *, days: bool) -> list[dict[str, Any]]:
    width, count, step = (10, 30, timedelta(days=1)) if days else (13, 48, timedelta(hours=1))
    now = now.astimezone(UTC)
    last = now.replace(minute=0, second=0, microsecond=0)
    if days:
        last = last.replace(hour=0)
    buckets = [(last - step * i) for i in reversed(range(count))]
    keys = [b.isoformat()[:width] for b in buckets]
    series = {key: {"key": key, "sent": 0, "failed": 0, "rejected": 0} for key in keys}
    start = buckets[0].isoformat()
    for row in db.execute(
        f"SELECT substr(created_at, 1, {width}) AS k, state, COUNT(*) FROM flows"  # noqa: S608
        " WHERE created_at >= ? AND state IN ('sent', 'error') AND packaging IS NULL"
        " GROUP BY k, state",
        (start,),
    ):
        if row[0] in series:
            series[row[0]]["sent" if row[1] == "sent" else "failed"] += row[2]
    for row in db.execute(
        f"SELECT substr(status_at, 1, {width}) AS k, COUNT(*) FROM invoices"  # noqa: S608
        " WHERE rejected = 1 AND status_at >= ? GROUP BY k",
        (start,),
    ):
        if row[0] in series:
            series[row[0]]["rejected"] += row[1]
    return list(series.values())


def file_of_flow(db: Connection, flow_id: str) -> tuple[str, str] | None:
    """(path, name) of the flow's file where it was filed (sent/ or error/)."""
    row = db.execute(
        "SELECT final_path, original_name FROM flows WHERE flow_id = ?", (flow_id,)
    ).fetchone()
    return (row[0], row[1]) if row and row[0] else None


def file_of_return(db: Connection, return_id: str) -> tuple[str, str] | None:
    row = db.execute(
        "SELECT inbox_path, file FROM returns WHERE return_id = ?", (return_id,)
    ).fetchone()
    return (row[0], row[1]) if row else None


def state_of(db: Connection, flow_id: str) -> str | None:
    row = db.execute("SELECT state FROM flows WHERE flow_id = ?", (flow_id,)).fetchone()
    return str(row[0]) if row else None
