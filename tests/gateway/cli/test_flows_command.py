"""``raccord flows``: filters mean what the operator typed or are refused naming the flag;
the table says when it cuts; exports stream; a reader that stops reading is no error."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.cli.listing import TABLE_LIMIT, FilterError, parse_when, write_table
from gateway.config import Config
from gateway.folders import Layout
from gateway.journal import JournalDB
from tests.gateway.harness import memory_config, raccord_cli


def journal_with(config: Config, ages: list[timedelta]) -> None:
    """One flow per age, created that long ago (flow ids f0000, f0001…)."""
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    now = datetime.now(UTC)
    try:
        with db.transaction():
            for index, age in enumerate(ages):
                flow_id = f"f{index:04d}"
                db.insert(flow_id, "qualif-mem", f"{flow_id}.xml", f"/spool/{flow_id}")
                at = (now - age).isoformat(timespec="milliseconds")
                db._db.execute("UPDATE flows SET created_at=? WHERE flow_id=?", (at, flow_id))
    finally:
        db.close()


def flows(config: Config, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return raccord_cli(capsys, "flows", "--config", str(config.path), *args)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    config = memory_config(tmp_path, "flows")
    journal_with(config, [timedelta(days=10), timedelta(hours=2), timedelta(minutes=5)])
    return config


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ("1h", ["f0002"]),
        ("3h", ["f0001", "f0002"]),
        ("30d", ["f0000", "f0001", "f0002"]),
        ((datetime.now(UTC) - timedelta(days=1)).date().isoformat(), ["f0001", "f0002"]),
        ((datetime.now(UTC) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M"), ["f0001", "f0002"]),
        (
            (datetime.now(UTC) - timedelta(hours=3)).astimezone().isoformat(),
            ["f0001", "f0002"],
        ),
    ],
)
def test_since_takes_iso_8601_or_a_duration_back_from_now(
    config: Config, capsys: pytest.CaptureFixture[str], since: str, expected: list[str]
) -> None:
    status, out, _ = flows(config, capsys, "--format", "json", "--since", since)
    assert status == 0
    assert [record["flow_id"] for record in json.loads(out)] == expected


@pytest.mark.parametrize("value", ["yesterday", "07/12/2026", "1 fortnight", ""])
@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_a_date_that_is_not_one_is_exit_2_naming_the_flag(
    config: Config, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    status, out, err = flows(config, capsys, flag, value)
    assert (status, out) == (2, "")
    assert err.startswith(f"raccord: {flag} {value!r}: expected an ISO 8601 date or time")
    assert err.count("\n") == 1


def test_an_unknown_connection_is_exit_2_with_the_nearest_name(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = flows(config, capsys, "--connection", "qualif-mme")
    assert (status, out) == (2, "")
    assert err == "raccord: --connection qualif-mme: no such connection; did you mean qualif-mem?\n"


def test_the_table_shows_the_latest_flows_and_says_when_it_cuts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = memory_config(tmp_path, "many")
    journal_with(config, [timedelta(minutes=1000 - i) for i in range(TABLE_LIMIT + 5)])
    status, out, _ = flows(config, capsys, "--format", "table")
    lines = out.splitlines()
    assert status == 0
    assert len(lines) == 1 + TABLE_LIMIT + 1  # header, rows, what was cut
    assert lines[1].startswith("f0005 ") and lines[TABLE_LIMIT].startswith(
        f"f{TABLE_LIMIT + 4:04d}"
    )
    assert lines[-1].startswith(f"(the latest {TABLE_LIMIT} shown; more flows match: --limit N")
    status, out, _ = flows(config, capsys, "--format", "table", "--limit", "0")
    assert len(out.splitlines()) == 1 + TABLE_LIMIT + 5
    status, out, _ = flows(config, capsys, "--format", "json", "--limit", "2")
    assert [r["flow_id"] for r in json.loads(out)] == [
        f"f{TABLE_LIMIT + 3:04d}",
        f"f{TABLE_LIMIT + 4:04d}",
    ]


def test_json_and_csv_list_every_flow_without_a_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = memory_config(tmp_path, "all")
    journal_with(config, [timedelta(seconds=2000 - i) for i in range(1200)])  # > one page
    _, out, _ = flows(config, capsys, "--format", "json")
    assert [r["flow_id"] for r in json.loads(out)] == [f"f{i:04d}" for i in range(1200)]
    _, out, _ = flows(config, capsys, "--format", "csv")
    assert len(out.splitlines()) == 1201


def test_one_flow_in_a_table_shows_its_invoices_and_history(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        db.transition("f0001", "queued", detail="routed")
    finally:
        db.close()
    status, out, _ = flows(config, capsys, "--format", "table", "--flow", "f0001")
    assert status == 0
    assert "flow_id" in out and "f0001" in out
    assert "\nINVOICES\n" in out and "\nHISTORY\n" in out
    assert "claimed → queued" in out and "routed" in out
    status, _, err = flows(config, capsys, "--format", "table", "--flow", "nope")
    assert (status, err) == (2, "raccord: --flow nope: no such flow in the journal\n")


def test_a_reader_that_stops_reading_is_no_error(tmp_path: Path) -> None:
    config = memory_config(tmp_path, "pipe")
    journal_with(config, [timedelta(seconds=5000 - i) for i in range(3000)])
    command = [sys.executable, "-m", "gateway.cli", "flows", "--config", str(config.path)]
    with subprocess.Popen(
        [*command, "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline() == b"[\n"
        process.stdout.close()  # as `| head -1` does
        err = process.stderr.read().decode()
        status = process.wait(timeout=60)
    assert (status, err) == (0, "")


def test_a_journal_that_cannot_be_opened_is_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = memory_config(tmp_path, "damaged")
    journal = Layout(config.gateway.data_dir).journal
    journal.parent.mkdir(parents=True)
    journal.write_bytes(b"this is not a database" * 100)
    status, out, err = flows(config, capsys)
    assert (status, out) == (2, "")
    assert err.startswith(f"raccord: the journal {journal} cannot be opened: ")
    assert err.count("\n") == 1


@given(st.text(max_size=40) | st.from_regex(r"\A\s*\d{1,30}\s*(s|m|min|h|d|w)\s*\Z"))
@example("0001-01-01T00:00+14:00")
@example("99999999999d")
@settings(max_examples=300, deadline=None)
def test_any_date_text_is_a_time_or_a_filter_error(text: str) -> None:
    """Whatever the operator types after --since: a time the journal's can be compared with,
    or the one-sentence FilterError — never another exception (a traceback)."""
    now = datetime.now(UTC)
    try:
        stamp = parse_when("--since", text, now)
    except FilterError as exc:
        assert str(exc).startswith(f"--since {text!r}: ")  # noqa: PT017 - any text, not one
        return
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo is not None and stamp.endswith("+00:00")


def test_a_negative_limit_is_exit_2(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = flows(config, capsys, "--limit", "-1")
    assert (status, out) == (2, "")
    assert err == "raccord: --limit -1: expected 0 (all) or a positive number\n"


def test_which_node_did_what_is_in_every_listing(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    """Several nodes share a journal: each flow says which node last moved it (JSON, CSV, and
    the table when the journal is shared), and its history which node made each move."""
    for node, state in (("node-a", "queued"), ("node-b", "sending")):
        db = JournalDB(Layout(config.gateway.data_dir).journal, node=node)
        try:
            db.transition("f0001", state, detail=f"by {node}")
        finally:
            db.close()
    _, out, _ = flows(config, capsys, "--format", "json", "--flow", "f0001")
    (record,) = json.loads(out)
    assert record["node"] == "node-b"
    assert [t["node"] for t in record["transitions"]][-2:] == ["node-a", "node-b"]
    _, out, _ = flows(config, capsys, "--format", "csv")
    header, *lines = out.splitlines()
    assert header.split(",")[-1] == "node" and lines[1].endswith(",node-b")
    _, out, _ = flows(config, capsys, "--format", "table")
    assert "NODE" not in out  # alone (no [journal] url): the table stays narrow
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        shown = io.StringIO()
        write_table(db, db.each_row(newest_first=True), 0, shown, implicit=False, nodes=True)
    finally:
        db.close()
    assert "NODE" in shown.getvalue() and "node-b" in shown.getvalue()
    _, out, _ = flows(config, capsys, "--format", "table", "--flow", "f0001")
    history = out.split("\nHISTORY\n")[1]
    assert "NODE" in history
    assert [line.split()[-3] for line in history.splitlines() if "→ sending" in line] == ["node-b"]
