"""Retention: ``raccord purge`` and ``[gateway] retention`` forget flows long filed — never a
flow still open, one a return or a partner may still name, or one whose file waits in error/."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.cli.commands import main
from gateway.config import Config, ConfigError, load
from gateway.folders import Layout
from gateway.journal import JournalDB, journal_target
from tests.gateway.harness import memory_config, memory_config_text, rows, running, until

OLD = (datetime.now(UTC) - timedelta(days=500)).isoformat(timespec="milliseconds")
RECENT = (datetime.now(UTC) - timedelta(days=5)).isoformat(timespec="milliseconds")


def flow(db: JournalDB, flow_id: str, state: str, at: str, **values: object) -> None:
    db.insert(flow_id, "qualif-mem", f"{flow_id}.xml", f"/spool/{flow_id}")
    db._db.execute(
        "UPDATE flows SET state=?, created_at=?, updated_at=? WHERE flow_id=?",
        (state, at, at, flow_id),
    )
    for name, value in values.items():
        db._db.execute(f"UPDATE flows SET {name}=? WHERE flow_id=?", (value, flow_id))  # noqa: S608


def a_journal(config: Config, tmp_path: Path) -> dict[str, Path]:
    """Flows of every kind the rule tells apart, with their files; the files by flow id."""
    layout = Layout(config.gateway.data_dir)
    layout.create(["qualif-mem"])
    sent_dir = tmp_path / "data" / "sent" / "qualif-mem" / "2025-01-01"
    sent_dir.mkdir(parents=True)
    files = {}
    for name in ("old-sent", "status-recent", "piste-followed"):
        files[name] = sent_dir / f"{name}.xml"
        files[name].write_text("x")
        Path(f"{files[name]}.receipt.json").write_text("{}")
    files["error-kept"] = layout.error("qualif-mem") / "error-kept.xml"
    files["error-kept"].write_text("x")
    files["return"] = layout.inbox("qualif-mem") / "old-return.xml"
    files["return"].write_text("<r/>")
    db = JournalDB(journal_target(config))
    try:
        flow(db, "old-sent", "sent", OLD, final_path=str(files["old-sent"]))
        flow(db, "recent-sent", "sent", RECENT)
        flow(db, "old-queued", "queued", OLD)
        flow(db, "old-awaiting", "awaiting_receipt", OLD)
        flow(db, "error-kept", "error", OLD, final_path=str(files["error-kept"]))
        flow(db, "error-gone", "error", OLD, final_path=str(tmp_path / "not-there.xml"))
        flow(db, "status-recent", "sent", OLD, final_path=str(files["status-recent"]))
        flow(db, "piste-followed", "sent", OLD, final_path=str(files["piste-followed"]))
        flow(db, "lot", "sent", OLD, packaging="tar.gz")
        flow(db, "member", "packed", OLD, lot_id="lot")
        flow(db, "open-lot", "sending", OLD, packaging="tar.gz")
        flow(db, "open-member", "packed", OLD, lot_id="open-lot")
        db._db.execute(
            "INSERT INTO returns (return_id, connection, file, inbox_path, sha256, state,"
            " received_at) VALUES ('r-old', 'qualif-mem', 'r.xml', ?, 'h1', 'unmatched', ?),"
            " ('r-recent', 'qualif-mem', 'r2.xml', '/x', 'h2', 'applied', ?)",
            (str(files["return"]), OLD, RECENT),
        )
        db._db.execute(
            "INSERT INTO statuses (return_id, flow_id, code) VALUES ('r-recent', 'status-recent',"
            " '05')"
        )
        db._db.execute(
            "INSERT INTO deposits (flow_id, connection, receipt, sent_at, next_at, at)"
            " VALUES ('piste-followed', 'qualif-mem', '{}', ?, ?, ?)",
            (OLD, RECENT, OLD),
        )
    finally:
        db.close()
    return files


KEPT = {
    "recent-sent",
    "old-queued",
    "old-awaiting",
    "error-kept",
    "status-recent",
    "piste-followed",
    "open-lot",
    "open-member",
}


def listed(config: Config) -> set[str]:
    """The flow ids in the journal ``config`` names (either database)."""
    db = JournalDB(journal_target(config))
    try:
        return {row.flow_id for row in db.search()}
    finally:
        db.close()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_purge_forgets_only_what_nothing_may_still_name(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    """The same rule on a shared PostgreSQL journal as on SQLite."""
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else ""
    extra = f'node_name = "node-r"\n\n[journal]\nurl = "{url}"' if url else ""
    config = memory_config(tmp_path, "purge", gateway_extra=extra)
    files = a_journal(config, tmp_path)
    status = main(["purge", "--config", str(config.path), "--before", "400d", "--files"])
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("purged 4 flow(s) and 1 return(s) filed before ")
    assert out.endswith("; 3 file(s) deleted\n")  # old-sent, its receipt, the old return
    assert listed(config) == KEPT
    assert not files["old-sent"].exists() and not files["return"].exists()
    assert all(files[name].exists() for name in ("status-recent", "piste-followed", "error-kept"))
    db = JournalDB(journal_target(config))
    try:
        assert [r["return_id"] for r in db.returns()] == ["r-recent"]
        assert (
            db._db.execute("SELECT COUNT(*) FROM transitions WHERE flow_id='old-sent'").fetchone()[
                0
            ]
            == 0
        )
        flows, _ = db.metrics()  # the counts follow the purge
        assert sum(flows.values()) == len(KEPT)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("before", "says"),
    [
        ("30d", "is less than 90 days ago: return flows may still name those flows"),
        ("last year", "expected an ISO 8601 date or time"),
    ],
)
def test_purge_refuses_a_date_too_recent_or_not_a_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], before: str, says: str
) -> None:
    config = memory_config(tmp_path, "purge-refused")
    a_journal(config, tmp_path)
    status = main(["purge", "--config", str(config.path), "--before", before])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("raccord: --before ") and says in err
    assert err.count("\n") == 1
    assert len(rows(config)) == len(KEPT) + 4


@pytest.mark.parametrize(("value", "ok"), [('"400d"', True), ('"off"', True), ('"30d"', False)])
def test_retention_is_at_least_90_days_or_off(tmp_path: Path, value: str, ok: bool) -> None:
    path = tmp_path / "raccord.toml"
    path.write_text(
        memory_config_text(tmp_path / "data", "r", gateway_extra=f"retention = {value}")
    )
    if ok:
        load(path)
    else:
        with pytest.raises(ConfigError, match=r"gateway.retention: at least 90d"):
            load(path)


def test_the_daemon_purges_by_itself_with_retention(tmp_path: Path) -> None:
    config = memory_config(tmp_path, "retained", gateway_extra='retention = "400d"')
    a_journal(config, tmp_path)

    async def main_loop() -> None:
        async with running(config):
            await until(lambda: {r.flow_id for r in rows(config)} == KEPT, what="purged")

    asyncio.run(main_loop())
