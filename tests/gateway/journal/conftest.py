"""The journal's suite runs against both of its databases: the ``target`` fixture is a SQLite
file, then a fresh PostgreSQL database (see tests/postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.journal import JournalDB, JournalTarget, PostgresTarget


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> JournalTarget:
    """An empty journal's location, on each backend in turn."""
    if request.param == "sqlite":
        return tmp_path / "journal.sqlite"
    url: str = request.getfixturevalue("postgres_url")
    return PostgresTarget(url)


def set_version(target: JournalTarget, version: int) -> None:
    """Write ``version`` as the journal's schema version (as a newer raccord would)."""
    db = JournalDB(target)
    try:
        if db.postgres:
            db._db.execute("UPDATE schema_version SET version=?", (version,))
        else:
            db._db.execute(f"PRAGMA user_version={version}")
    finally:
        db.close()
