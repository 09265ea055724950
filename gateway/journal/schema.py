"""The journal's tables: their definition, the migration of an older journal, and the counts
kept by triggers for the metrics.

``flows`` holds one row per flow; the triggers at the end of :data:`SCHEMA` write each change
of state to ``transitions``, so that no caller can forget the history.
"""

from __future__ import annotations

import sqlite3

from gateway.journal.base import transaction
from gateway.journal.rows import COLUMNS

#: 12 changed PostgreSQL's schema alone (the counts' commit trigger); SQLite's is as at 11.
SCHEMA_VERSION = 12

SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
    flow_id         TEXT PRIMARY KEY,
    connection      TEXT NOT NULL,
    original_name   TEXT NOT NULL,
    spool_path      TEXT NOT NULL,
    state           TEXT NOT NULL,
    size            INTEGER,
    sha256          TEXT,
    format          TEXT,
    interface_code  TEXT,
    invoice_number  TEXT,
    issue_date      TEXT,
    supplier_id     TEXT,
    buyer_id        TEXT,
    remote_name     TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    unknown_outcome INTEGER NOT NULL DEFAULT 0,
    forced          INTEGER NOT NULL DEFAULT 0,
    reason          TEXT,
    message         TEXT,
    duplicate_of    TEXT,
    final_path      TEXT,
    receipt         TEXT,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    detail          TEXT,
    mode            TEXT,
    lot_id          TEXT,
    packaging       TEXT,
    resubmit_of     TEXT,
    receipt_key     TEXT,
    receipt_due     TEXT,
    validation      TEXT,
    node            TEXT,
    lease_until     TEXT
);
CREATE INDEX IF NOT EXISTS flows_state ON flows(state);
CREATE INDEX IF NOT EXISTS flows_sha256 ON flows(sha256);
CREATE INDEX IF NOT EXISTS flows_invoice ON flows(supplier_id, invoice_number);
CREATE INDEX IF NOT EXISTS flows_final_path ON flows(final_path);
CREATE INDEX IF NOT EXISTS flows_lot ON flows(lot_id);
CREATE INDEX IF NOT EXISTS flows_resubmit ON flows(resubmit_of);
CREATE INDEX IF NOT EXISTS flows_receipt_key ON flows(receipt_key);
-- The filters of the web console's flows table, each with the table's order (date).
CREATE INDEX IF NOT EXISTS flows_created ON flows(created_at);
CREATE INDEX IF NOT EXISTS flows_connection_created ON flows(connection, created_at);
CREATE INDEX IF NOT EXISTS flows_state_created ON flows(state, created_at);
CREATE INDEX IF NOT EXISTS flows_name ON flows(original_name);
CREATE INDEX IF NOT EXISTS flows_number ON flows(invoice_number);
-- The flows a node may lease to work on, oldest first (gateway/journal/leases.py): written as
-- NOT IN so that the query's condition, the same text, can only be served by this index, in
-- order, without sorting a backlog (SQLite would otherwise look up flows_state and sort).
CREATE INDEX IF NOT EXISTS flows_workable ON flows(created_at, flow_id)
    WHERE state NOT IN ('batched', 'packed', 'awaiting_receipt', 'sent', 'error');
CREATE TABLE IF NOT EXISTS transitions (
    id          INTEGER PRIMARY KEY,
    flow_id     TEXT NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    at          TEXT NOT NULL,
    detail      TEXT,
    node        TEXT
);
CREATE INDEX IF NOT EXISTS transitions_flow ON transitions(flow_id);
-- The invoices a flow carries (one, or the members of a lot), with their latest return status.
CREATE TABLE IF NOT EXISTS invoices (
    flow_id         TEXT NOT NULL,
    position        INTEGER NOT NULL,
    file            TEXT NOT NULL,
    invoice_number  TEXT,
    supplier_id     TEXT,
    status_code     TEXT,
    status_label    TEXT,
    status_at       TEXT,
    rejected        INTEGER NOT NULL DEFAULT 0,
    collateral      INTEGER NOT NULL DEFAULT 0,
    final           INTEGER NOT NULL DEFAULT 0,
    reasons         TEXT,
    rejected_path   TEXT,
    source_flow     TEXT,
    -- the flow failed before integration (93/94/95) and its error does not name this invoice
    flow_not_received INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (flow_id, position)
);
CREATE INDEX IF NOT EXISTS invoices_number ON invoices(invoice_number, supplier_id);
CREATE INDEX IF NOT EXISTS invoices_source ON invoices(source_flow);
CREATE INDEX IF NOT EXISTS invoices_status ON invoices(status_code);
CREATE INDEX IF NOT EXISTS invoices_rejected ON invoices(status_at) WHERE rejected = 1;
CREATE INDEX IF NOT EXISTS invoices_collateral ON invoices(flow_id) WHERE collateral = 1;
-- Return flows received (integration reports, FEN1200A/FEN1201A, others).
CREATE TABLE IF NOT EXISTS returns (
    return_id       TEXT PRIMARY KEY,
    connection      TEXT NOT NULL,
    file            TEXT NOT NULL,
    inbox_path      TEXT NOT NULL,
    sha256          TEXT NOT NULL,
    kind            TEXT,
    state           TEXT NOT NULL,
    flow_ids        TEXT,
    message         TEXT,
    received_at     TEXT NOT NULL,
    applied_at      TEXT,
    UNIQUE (connection, sha256)
);
CREATE INDEX IF NOT EXISTS returns_state ON returns(state);
-- Every status a return gave a flow or one of its invoices (position NULL: the flow itself).
CREATE TABLE IF NOT EXISTS statuses (
    return_id       TEXT NOT NULL,
    flow_id         TEXT NOT NULL,
    position        INTEGER NOT NULL DEFAULT -1,
    code            TEXT NOT NULL,
    label           TEXT,
    at              TEXT,
    detail          TEXT,
    UNIQUE (return_id, flow_id, position, code)
);
CREATE INDEX IF NOT EXISTS statuses_flow ON statuses(flow_id);
-- Files fetched from a partner's download folder, so that none is processed twice.
CREATE TABLE IF NOT EXISTS downloads (
    connection      TEXT NOT NULL,
    remote_name     TEXT NOT NULL,
    size            INTEGER NOT NULL,
    mtime           INTEGER NOT NULL,
    return_id       TEXT,
    outcome         TEXT NOT NULL,
    at              TEXT NOT NULL,
    PRIMARY KEY (connection, remote_name, size, mtime)
);
-- AS2 messages partners pushed to us, by their Message-ID, so that none is stored twice.
CREATE TABLE IF NOT EXISTS as2_messages (
    as2_from        TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    connection      TEXT NOT NULL,
    return_id       TEXT,
    at              TEXT NOT NULL,
    PRIMARY KEY (as2_from, message_id)
);
-- Deposits an API partner reports on when asked (PISTE): asked until the report is final.
CREATE TABLE IF NOT EXISTS deposits (
    flow_id         TEXT PRIMARY KEY,
    connection      TEXT NOT NULL,
    receipt         TEXT NOT NULL,
    sent_at         TEXT NOT NULL,
    next_at         TEXT NOT NULL,
    polls           INTEGER NOT NULL DEFAULT 0,
    state           TEXT,
    outcome         TEXT,
    return_id       TEXT,
    at              TEXT NOT NULL,
    -- after integration, the invoices' life-cycle (when the connection follows it)
    lifecycle_next  TEXT,
    lifecycle_state TEXT,
    lifecycle_outcome TEXT
);
CREATE INDEX IF NOT EXISTS deposits_due ON deposits(connection, outcome, next_at);
-- Duties one node at a time does (return polling of a connection, housekeeping...): held by
-- ``node`` until ``until``, then free for any node.
CREATE TABLE IF NOT EXISTS duties (
    name            TEXT PRIMARY KEY,
    node            TEXT NOT NULL,
    until           TEXT NOT NULL,
    mark            TEXT  -- the duty's progress, for the node that takes it over (v11)
);
CREATE TRIGGER IF NOT EXISTS flows_claimed AFTER INSERT ON flows BEGIN
    INSERT INTO transitions (flow_id, from_state, to_state, at, detail, node)
    VALUES (NEW.flow_id, NULL, NEW.state, NEW.updated_at, NEW.detail, NEW.node);
END;
CREATE TRIGGER IF NOT EXISTS flows_transition AFTER UPDATE OF state ON flows BEGIN
    INSERT INTO transitions (flow_id, from_state, to_state, at, detail, node)
    VALUES (NEW.flow_id, OLD.state, NEW.state, NEW.updated_at, NEW.detail, NEW.node);
END;
"""


#: Flows by (connection, state) and statuses by (connection, code), kept by triggers for the
#: metrics (see :func:`add_counters`). Statements separated by a blank line.
COUNTERS = """
CREATE TABLE flow_counts (
    connection TEXT NOT NULL,
    state      TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (connection, state)
) WITHOUT ROWID;

CREATE TABLE status_counts (
    connection TEXT NOT NULL,
    code       TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (connection, code)
) WITHOUT ROWID;

CREATE TRIGGER flows_counted AFTER INSERT ON flows BEGIN
    INSERT INTO flow_counts (connection, state, n) VALUES (NEW.connection, NEW.state, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER flows_recounted AFTER UPDATE OF state, connection ON flows
WHEN OLD.state IS NOT NEW.state OR OLD.connection IS NOT NEW.connection BEGIN
    UPDATE flow_counts SET n = n - 1 WHERE connection = OLD.connection AND state = OLD.state;
    INSERT INTO flow_counts (connection, state, n) VALUES (NEW.connection, NEW.state, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER flows_uncounted AFTER DELETE ON flows BEGIN
    UPDATE flow_counts SET n = n - 1 WHERE connection = OLD.connection AND state = OLD.state;
END;

CREATE TRIGGER statuses_counted AFTER INSERT ON statuses BEGIN
    INSERT INTO status_counts (connection, code, n)
    SELECT connection, NEW.code, 1 FROM flows WHERE flow_id = NEW.flow_id
    ON CONFLICT DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER statuses_uncounted AFTER DELETE ON statuses BEGIN
    UPDATE status_counts SET n = n - 1 WHERE code = OLD.code
    AND connection = (SELECT connection FROM flows WHERE flow_id = OLD.flow_id);
END
"""


def migrate(db: sqlite3.Connection) -> None:
    """Create the schema, or bring an older journal up to date (idempotent)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"journal schema {version} is newer than this raccord knows ({SCHEMA_VERSION}); "
            "run the newer raccord, or restore the journal from before the upgrade"
        )
    if version == SCHEMA_VERSION:
        return
    for table, wanted in (
        ("flows", COLUMNS),
        ("invoices", ("source_flow", "flow_not_received")),
        ("transitions", ("node",)),
        ("duties", ("mark",)),
    ):
        columns = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
        if columns:  # an existing journal: add the (nullable) columns later schemas brought
            for name in wanted:
                if name not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} TEXT")
    if version and version < 10:  # the history triggers now record the node
        db.execute("DROP TRIGGER IF EXISTS flows_claimed")
        db.execute("DROP TRIGGER IF EXISTS flows_transition")
    db.executescript(SCHEMA)
    if version and version < 4:  # one dropped file, one flow: it is its own source
        db.execute("UPDATE invoices SET source_flow=flow_id WHERE source_flow IS NULL")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def add_counters(db: sqlite3.Connection) -> None:
    """The listing index and the counts the metrics read (idempotent, outside the schema
    version: a journal of any version gets them at its first open, filled once).

    ``/metrics`` is scraped every few seconds: a GROUP BY over a million flows at each
    scrape cost more than the scrape interval allows, so the counts are kept by triggers
    as flows are recorded, change state or are purged."""
    db.execute("CREATE INDEX IF NOT EXISTS flows_created ON flows(created_at)")
    if _has_counters(db):
        return
    with transaction(db):
        if _has_counters(db):  # another process (the daemon, a command) was first
            return
        for statement in COUNTERS.split(";\n\n"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO flow_counts (connection, state, n)"
            " SELECT connection, state, COUNT(*) FROM flows GROUP BY connection, state"
        )
        db.execute(
            "INSERT INTO status_counts (connection, code, n)"
            " SELECT f.connection, s.code, COUNT(*) FROM statuses s"
            " JOIN flows f ON f.flow_id = s.flow_id GROUP BY f.connection, s.code"
        )


def _has_counters(db: sqlite3.Connection) -> bool:
    found = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='flow_counts'"
    ).fetchone()
    return found is not None
