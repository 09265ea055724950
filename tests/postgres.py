"""A throw-away PostgreSQL 15 server for the tests, and a fresh database per test.

The server is Debian's ``postgresql`` package (``scripts/install-and-test`` installs it): one
cluster per test session, initialised in a temporary folder, listening on loopback and on a
socket in that folder only, stopped at the end of the session. Each test that asks for a
database gets one of its own (``CREATE DATABASE … TEMPLATE template0``, a few milliseconds),
so tests never see each other's rows.

Without PostgreSQL the tests that need it skip, saying why; with ``RACCORD_REQUIRE_POSTGRES=1``
(set by ``scripts/install-and-test``) they fail instead, so that CI cannot skip them silently.

Use from any test package: the fixtures ``postgres_server`` (session) and ``postgres_url``
(a fresh database's URL) are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(os.environ.get("RACCORD_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
REQUIRED = os.environ.get("RACCORD_REQUIRE_POSTGRES") == "1"
#: The cluster's owner: PostgreSQL refuses to run as root.
OWNER = "postgres"
_NAMES = itertools.count(1)


def unavailable() -> str | None:
    """Why no PostgreSQL server can be started here, or None."""
    if not (BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed ({BIN}/initdb missing; Debian package postgresql)"
    if os.geteuid() == 0 and shutil.which("su") is None:
        return "su is missing: the cluster must run as the postgres user"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip the test for ``reason``, or fail it when CI requires PostgreSQL."""
    if REQUIRED:
        pytest.fail(f"RACCORD_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@dataclass
class PostgresServer:
    """A running cluster: loopback TCP on ``port``, superuser ``postgres`` without password."""

    folder: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"test_{os.getpid()}_{next(_NAMES)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'")
        return self.url(name)

    def psql(self, database: str, sql: str) -> None:
        """Run ``sql`` as the superuser in ``database``."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as admin:
            admin.execute(sql.encode())


def cut_connections(server: PostgresServer, url: str) -> None:
    """End every session on ``url``'s database, as a server restart or a network cut would."""
    import psycopg

    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (url.rsplit("/", 1)[1],),
        )


def _as_owner(command: str) -> list[str]:
    if os.geteuid() == 0:
        return ["su", OWNER, "-s", "/bin/sh", "-c", command]
    return ["/bin/sh", "-c", command]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(settings: str = "-c fsync=off") -> PostgresServer:
    """Initialise and start a cluster in a new temporary folder (about two seconds).

    ``settings``: server options; the tests' default skips fsync (a throw-away cluster), a
    benchmark passes ``""`` to measure a server as installed."""
    folder = Path(tempfile.mkdtemp(prefix="raccord-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, OWNER)
    data = folder / "data"
    subprocess.run(
        _as_owner(
            f"{BIN}/initdb -D {data} -U postgres --auth=trust -E UTF8 --locale=C.UTF-8"
            " --no-sync >/dev/null"
        ),
        check=True,
        timeout=120,
    )
    for _ in range(5):  # a port found free may be taken before the server binds it
        port = _free_port()
        started = subprocess.run(
            _as_owner(
                f"{BIN}/pg_ctl -D {data} -l {folder}/log -w -t 60 -o"
                f" '-c listen_addresses=127.0.0.1 -p {port} -k {folder} {settings}'"
                " start >/dev/null"
            ),
            check=False,
            timeout=120,
        )
        if started.returncode == 0:
            return PostgresServer(folder, port)
    log = (folder / "log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"PostgreSQL did not start in {folder}: {log}")


def stop_server(server: PostgresServer) -> None:
    subprocess.run(
        _as_owner(f"{BIN}/pg_ctl -D {server.folder}/data -m fast -w stop >/dev/null"),
        check=False,
        timeout=120,
    )
    shutil.rmtree(server.folder, ignore_errors=True)


def wait_until_ready(server: PostgresServer, deadline: float = 30.0) -> None:
    """Wait (with a deadline) until the server accepts connections."""
    import psycopg

    end = time.monotonic() + deadline
    while True:
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)  # polling the condition, not waiting for time to pass


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL 15 server for this session (skips, or fails under
    ``RACCORD_REQUIRE_POSTGRES=1``, when none can run here)."""
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    server = start_server()
    try:
        wait_until_ready(server)
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database()
