"""Where a journal lives: a SQLite file in data_dir (one node), or a PostgreSQL database that
several nodes share (``[journal] url``).

A target is a plain value: it travels to the journal process, and names the journal in
messages without ever showing the password (the ``[journal] password`` secret, or one written
in the URL, which is why the URL itself is never shown either).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import Config
from gateway.folders import Layout
from protocols.settings import Secret


@dataclass(frozen=True)
class PostgresTarget:
    """A PostgreSQL journal: a libpq URL (TLS and other options as its parameters, e.g.
    ``?sslmode=verify-full&sslrootcert=/etc/raccord/db-ca.pem``) and the password, if any."""

    url: str
    password: Secret | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"PostgresTarget({self.where})"

    __str__ = __repr__

    @property
    def where(self) -> str:
        """``user@host:port/database``, for messages (never the password)."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(self.url)
        except Exception:  # an unparsable URL: say so without echoing it
            return "an unparsable [journal] url"
        user = f"{parts['user']}@" if parts.get("user") else ""
        host = parts.get("host") or "localhost"
        port = parts.get("port") or "5432"
        return f"{user}{host}:{port}/{parts.get('dbname') or parts.get('user') or ''}"


#: A journal's location: the SQLite file, or the PostgreSQL database.
JournalTarget = Path | PostgresTarget


def journal_target(config: Config, layout: Layout | None = None) -> JournalTarget:
    """The journal ``config`` names: ``[journal] url`` if set, else the SQLite file in
    data_dir."""
    if config.journal.url:
        return PostgresTarget(config.journal.url, config.journal.password)
    return (layout or Layout(config.gateway.data_dir)).journal


def describe(target: JournalTarget) -> str:
    """The journal, named for a message: its file, or ``PostgreSQL user@host:port/db``."""
    if isinstance(target, PostgresTarget):
        return f"PostgreSQL {target.where}"
    return str(target)
