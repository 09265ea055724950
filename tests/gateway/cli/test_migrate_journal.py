"""``raccord migrate-journal`` copies a stopped node's SQLite journal into an empty PostgreSQL
database, checked row for row; ``raccord check --connect`` reaches the shared journal."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from gateway.daemon import lock_data_dir
from gateway.journal import SCHEMA_VERSION, JournalDB, PostgresTarget
from tests.gateway.harness import memory_config_text, raccord_cli
from tests.postgres import PostgresServer


def configured(tmp_path: Path, url: str | None = None) -> Path:
    """A node's configuration (data_dir under tmp_path), with ``[journal] url`` if given."""
    path = tmp_path / "raccord.toml"
    text = memory_config_text(tmp_path / "data", "migrate")
    if url is not None:
        text += f'\n[journal]\nurl = "{url}"\n'
    path.write_text(text)
    return path


def a_journal_with_history(data_dir: Path) -> None:
    """Flows in several states, their history, invoices, a return and its statuses, a
    download, a deposit: every kind of row a node's journal holds."""
    db = JournalDB(data_dir / "journal.sqlite", node="old-node")
    for i in range(30):
        flow = f"20261123T120000Z-{i:06x}"
        db.insert(flow, "qualif", f"l'facture {i} 100%?.xml", f"/spool/{i}", invoice_number=f"F{i}")
        db.add_invoices(flow, [(f"f{i}.xml", f"F{i}", "S", flow)])
        if i % 3:
            db.transition(flow, "queued")
            db.transition(flow, "sending", expect=("queued",))
    db.record_return("r1", "qualif", "r.xml", "/inbox/r.xml", "sha")
    for i in (1, 2):
        db.record_status("r1", f"20261123T120000Z-{i:06x}", 0, "05", "Reçue", "2026-11-23", None)
    db.record_download("qualif", "r.xml", 12, 1700000000, outcome="done", return_id="r1")
    db._db.execute(
        "INSERT INTO deposits (flow_id, connection, receipt, sent_at, next_at, at)"
        " VALUES ('20261123T120000Z-000001', 'qualif', '{}', 'a', 'b', 'c')"
    )
    db.close()


def test_a_journal_is_copied_checked_and_then_used_as_it_was(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Promise: nothing is lost in the move to PostgreSQL: every flow, its history, invoices,
    returns and counts read the same, and the journal goes on from there."""
    config = configured(tmp_path)
    a_journal_with_history(tmp_path / "data")
    status, out, err = raccord_cli(
        capsys, "migrate-journal", "--config", str(config), "--to", postgres_url
    )
    assert (status, err) == (0, "")
    assert "  flows: 30 rows, identical" in out and "  transitions: 70 rows, identical" in out
    assert "checked row for row" in out

    lite = JournalDB(tmp_path / "data" / "journal.sqlite")
    pg = JournalDB(PostgresTarget(postgres_url), node="new-node")
    try:
        assert pg.search() == lite.search()
        assert pg.metrics() == lite.metrics() and pg.invoice_metrics() == lite.invoice_metrics()
        flow = "20261123T120000Z-000002"
        assert pg.transitions(flow) == lite.transitions(flow)
        assert pg.statuses(flow) == lite.statuses(flow) and pg.invoices(flow) == lite.invoices(flow)
        assert pg.download("qualif", "r.xml", 12, 1700000000) == lite.download(
            "qualif", "r.xml", 12, 1700000000
        )
        # It goes on: history ids continue after the copied ones, the counts follow.
        pg.transition(flow, "delivered", expect=("sending",))
        assert [t["node"] for t in pg.transitions(flow)][-1] == "new-node"
        assert pg.metrics()[0][("qualif", "delivered")] == 1
    finally:
        lite.close()
        pg.close()


def test_a_database_already_holding_a_journal_is_refused(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Promise: migrate-journal never mixes two journals (a second run, another node's)."""
    config = configured(tmp_path)
    a_journal_with_history(tmp_path / "data")
    assert (
        raccord_cli(capsys, "migrate-journal", "--config", str(config), "--to", postgres_url)[0]
        == 0
    )
    status, out, err = raccord_cli(
        capsys, "migrate-journal", "--config", str(config), "--to", postgres_url
    )
    assert (status, out) == (2, "")
    assert "already holds a journal (30 flows" in err and err.count("\n") == 1
    with psycopg.connect(postgres_url) as check:
        assert check.execute("SELECT COUNT(*) FROM flows").fetchone() == (30,)


def test_the_copy_is_refused_while_the_daemon_runs(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Promise: a running daemon's journal is not copied (the copy would miss its next
    writes): the command says to stop it, and writes nothing."""
    config = configured(tmp_path)
    a_journal_with_history(tmp_path / "data")
    lock = lock_data_dir(tmp_path / "data")  # as the running daemon holds it
    try:
        status, out, err = raccord_cli(
            capsys, "migrate-journal", "--config", str(config), "--to", postgres_url
        )
    finally:
        lock.close()
    assert (status, out) == (2, "")
    assert f"raccord runs on {tmp_path / 'data'} (pid {os.getpid()}): stop it first" in err
    with psycopg.connect(postgres_url) as check:
        tables = check.execute("SELECT to_regclass('flows')").fetchone()
        assert tables == (None,)


def test_check_connect_reports_the_shared_journals_schema(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Promise: before a node starts, check --connect says whether the database answers and
    what its start will do with the schema (create, migrate, or refuse a newer one)."""
    config = configured(tmp_path, postgres_url)
    status, out, _ = raccord_cli(capsys, "check", "--connect", "--config", str(config))
    assert status == 0, out
    assert "journal: ok — PostgreSQL postgres@127.0.0.1" in out and "empty: the first" in out
    JournalDB(PostgresTarget(postgres_url)).close()
    status, out, _ = raccord_cli(capsys, "check", "--connect", "--config", str(config))
    assert status == 0 and f"holds journal schema {SCHEMA_VERSION}, current" in out
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("UPDATE schema_version SET version = version + 1")
    status, out, _ = raccord_cli(capsys, "check", "--connect", "--config", str(config))
    assert status == 1 and "journal: FAILED" in out and "newer than this raccord" in out
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("UPDATE schema_version SET version = version - 2")
    status, out, _ = raccord_cli(capsys, "check", "--connect", "--config", str(config))
    assert status == 0 and f"the next start migrates it to {SCHEMA_VERSION}" in out


def test_check_connect_says_when_the_shared_journal_cannot_be_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Promise: an unreachable database is one line naming host and port, exit 1."""
    import socket

    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        config = configured(tmp_path, f"postgresql://raccord@127.0.0.1:{port}/raccord")
        status, out, _ = raccord_cli(capsys, "check", "--connect", "--config", str(config))
    assert status == 1
    assert f"journal: FAILED — the journal database raccord@127.0.0.1:{port}/raccord" in out


def test_a_role_that_may_not_alter_the_tables_gets_one_sentence_and_nothing_kept(
    tmp_path: Path,
    postgres_server: PostgresServer,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Promise: a copy the database refuses halfway (here the role does not own the tables
    another role created) says why in one sentence, exit 1, and leaves the database empty."""
    JournalDB(PostgresTarget(postgres_url)).close()  # the tables, owned by the superuser
    postgres_server.psql(
        postgres_url.rsplit("/", 1)[1],
        "CREATE ROLE other LOGIN; GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO other;",
    )
    config = configured(tmp_path)
    a_journal_with_history(tmp_path / "data")
    url = postgres_url.replace("postgres@", "other@")
    status, out, err = raccord_cli(capsys, "migrate-journal", "--config", str(config), "--to", url)
    assert (status, out) == (1, "")
    assert err.startswith("raccord: the copy into PostgreSQL other@127.0.0.1:")
    assert "must be owner of table" in err and "nothing was kept" in err
    assert err.count("\n") == 1
    with psycopg.connect(postgres_url) as check:
        assert check.execute("SELECT COUNT(*) FROM flows").fetchone() == (0,)
