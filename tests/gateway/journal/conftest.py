"""The journal's suite runs against both of its databases: the ``target`` fixture is a SQLite
file, then a fresh PostgreSQL database (see tests/postgres.py)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.journal import JournalDB, JournalTarget, PostgresTarget
from tests.postgres import PostgresServer


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


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], JournalTarget]:
    """A maker of empty journals, on each backend in turn: one per Hypothesis example (a
    function-scoped fixture would be shared by the examples)."""
    if request.param == "sqlite":
        names = itertools.count()
        return lambda: tmp_path / f"journal-{next(names)}.sqlite"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return lambda: PostgresTarget(server.create_database())
