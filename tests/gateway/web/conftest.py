"""The console's reads run against both of the journal's databases: the ``target`` fixture is a
SQLite file, then a fresh PostgreSQL database (the journal suite's own fixture)."""

from tests.gateway.journal.conftest import target as target

__all__ = ["target"]
