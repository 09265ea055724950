"""Return files received one after another on a shared PostgreSQL journal (a real server) are
journaled over one kept connection, not a new server session per file; a connection whose
call failed is not kept."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from gateway.folders import Layout
from gateway.journal import JournalDB, PostgresTarget
from gateway.returns import kept
from gateway.returns import pipeline as returns


def sessions(url: str) -> list[int]:
    """The server processes of raccord's sessions on ``url``'s database."""
    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'raccord' ORDER BY pid"
        ).fetchall()
    return [row[0] for row in rows]


def received(layout: Layout, target: PostgresTarget, name: str) -> str:
    source = layout.inbox("qualif").parent.parent / name
    source.write_bytes(f"<not-a-return id='{name}'/>".encode())
    outcome = returns.receive_download(layout, "qualif", source, name=name, journal=target)
    return outcome.return_id


def test_files_received_one_after_another_share_one_session(
    tmp_path: Path, postgres_url: str
) -> None:
    """Three files, one server session: the same one each time, and each file journaled."""
    target = PostgresTarget(postgres_url)
    layout = Layout(tmp_path / "data")
    layout.inbox("qualif").mkdir(parents=True)
    kept.close()  # nothing kept from other tests
    ids = [received(layout, target, "r1.xml")]
    (first,) = sessions(postgres_url)
    ids += [received(layout, target, "r2.xml"), received(layout, target, "r3.xml")]
    assert sessions(postgres_url) == [first]
    db = JournalDB(target)
    try:
        assert all(db.get_return(return_id) is not None for return_id in ids)
    finally:
        db.close()
    kept.close()
    assert sessions(postgres_url) == []


def test_a_connection_whose_call_failed_is_closed(tmp_path: Path, postgres_url: str) -> None:
    """A file that cannot be stored (its source is gone) fails its call: the connection it used
    may be mid-transaction, so it is closed rather than lent to the next file."""
    target = PostgresTarget(postgres_url)
    layout = Layout(tmp_path / "data")
    layout.inbox("qualif").mkdir(parents=True)
    kept.close()
    with pytest.raises(FileNotFoundError):
        returns.receive_download(
            layout, "qualif", tmp_path / "gone.xml", name="gone.xml", journal=target
        )
    assert sessions(postgres_url) == []
