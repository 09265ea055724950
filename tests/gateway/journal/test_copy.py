"""gateway.journal.copy: a SQLite journal copied into PostgreSQL is checked row for row, and a
copy that differs is not kept."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from gateway.journal import JournalDB, PostgresTarget
from gateway.journal.copy import BATCH, CopyMismatch, copy_journal


def test_a_journal_larger_than_a_batch_is_copied_whole_in_order(
    tmp_path: Path, postgres_url: str
) -> None:
    """Promise: every row crosses, however many batches it takes, and the history keeps its
    order (its ids) so that a flow's moves read back as they happened."""
    source = tmp_path / "journal.sqlite"
    db = JournalDB(source)
    with db.transaction():
        for i in range(BATCH + 100):
            db.insert(f"f{i:05d}", "c", f"{i}.xml", "/s")
            if i % 500 == 0:
                db.transition(f"f{i:05d}", "queued")
    db.close()
    told: list[tuple[str, int]] = []
    copied = {
        c.table: c.rows
        for c in copy_journal(
            source, PostgresTarget(postgres_url), lambda t, n: told.append((t, n))
        )
    }
    assert copied["flows"] == BATCH + 100 and copied["transitions"] == BATCH + 100 + 5
    assert ("flows", BATCH) in told and ("flows", BATCH + 100) in told
    pg = JournalDB(PostgresTarget(postgres_url))
    try:
        assert [t["to_state"] for t in pg.transitions("f00500")] == ["claimed", "queued"]
        assert pg.counts() == {"claimed": BATCH + 95, "queued": 5}
    finally:
        pg.close()


def test_a_value_postgresql_would_store_otherwise_fails_the_check_and_nothing_is_kept(
    tmp_path: Path, postgres_url: str
) -> None:
    """Promise: the check compares what was written with the source: a value that changes on
    the way (here 1.5 in an integer column, rounded by PostgreSQL) is caught, named, and the
    target stays empty."""
    source = tmp_path / "journal.sqlite"
    db = JournalDB(source)
    db.insert("f1", "c", "a.xml", "/s", size=1.5)  # SQLite keeps what it is given
    db.close()
    with pytest.raises(CopyMismatch, match="the copy of flows differs from the source"):
        copy_journal(source, PostgresTarget(postgres_url))
    with psycopg.connect(postgres_url) as check:
        assert check.execute("SELECT COUNT(*) FROM flows").fetchone() == (0,)
        assert check.execute("SELECT COUNT(*) FROM transitions").fetchone() == (0,)
