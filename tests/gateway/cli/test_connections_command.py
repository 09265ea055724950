"""raccord connections: the connection sheets, filtered and exported as docs/operations.md says."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.commands import main

EXAMPLE = Path(__file__).parents[3] / "config" / "raccord.example.toml"


def sheet(name: str, **keys: str) -> str:
    """The example's SFTP connection as ``name`` with some top-level keys replaced."""
    text = EXAMPLE.read_text()
    block = text[text.index("\n[[connection]]") : text.index("# An AS2 connection")]
    lines = block.replace('name = "qualif-sftp"', f'name = "{name}"').splitlines()
    for key, value in keys.items():
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
        lines[index] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


@pytest.fixture
def configuration(tmp_path: Path) -> Path:
    """Four sheets: the example's, its production twin, an expired one for another structure
    and a production sheet for a structure that has no qualification sheet."""
    text = EXAMPLE.read_text()
    text += sheet("prod-sftp", environment='"production"', partner_code='"VFE057"')
    text += sheet(
        "old-sftp",
        structure='"00000000000230"',
        valid_from="2017-01-01",
        valid_to="2018-12-31",
    )
    text += sheet(
        "prod-other",
        structure='"00000000000404"',
        environment='"production"',
        state='"sent"',
    ).replace('FSO1106A = "partial"', 'FSO1106A = "complete"')
    path = tmp_path / "raccord.toml"
    path.write_text(text)
    return path


def listed(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert main(["connections", *args, "--format", "json"]) == 0
    records: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return records


def test_every_sheet_with_its_modes_period_state_and_usability(
    configuration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = listed(capsys, "--config", str(configuration))
    assert [r["name"] for r in records] == ["qualif-sftp", "prod-sftp", "old-sftp", "prod-other"]
    first = records[0]
    assert first == {
        "name": "qualif-sftp",
        "partner_code": "VFE056",
        "protocol": "sftp",
        "environment": "qualification",
        "structure": "00000000000149",
        "interfaces": {"FSO1100A": "complete", "FSO1106A": "partial", "FSO1117A": "partial"},
        "valid_from": "2017-06-21",
        "valid_to": "2099-06-30",
        "state": "active",
        "usable": True,
        "why_not": None,
    }
    today = datetime.now(UTC).date()
    old = records[2]
    assert old["usable"] is False
    assert old["why_not"] == (
        f"connection old-sftp is valid from 2017-01-01 to 2018-12-31; today is {today}"
    )
    assert records[3]["why_not"] == "connection prod-other is sent, not active"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--environment", "production"], ["prod-sftp", "prod-other"]),
        (["--state", "sent"], ["prod-other"]),
        (["--state", "disabled"], []),
        (["--protocol", "sftp", "--environment", "qualification"], ["qualif-sftp", "old-sftp"]),
        (["--protocol", "as2"], []),
        (["--interface", "FSO1106A", "--mode", "complete"], ["prod-other"]),
        (["--interface", "FSO1106A"], ["qualif-sftp", "prod-sftp", "old-sftp", "prod-other"]),
        (["--interface", "FSO1101A"], []),
        (["--mode", "partial"], ["qualif-sftp", "prod-sftp", "old-sftp", "prod-other"]),
        (["--mode", "none"], []),
    ],
)
def test_filters_combine(
    configuration: Path,
    capsys: pytest.CaptureFixture[str],
    filters: list[str],
    expected: list[str],
) -> None:
    records = listed(capsys, "--config", str(configuration), *filters)
    assert [r["name"] for r in records] == expected


def test_csv_export_puts_the_modes_in_one_cell_and_warnings_on_stderr(
    configuration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["connections", "--config", str(configuration), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert rows[0]["interfaces"] == "FSO1100A=complete FSO1106A=partial FSO1117A=partial"
    assert [r["usable"] for r in rows] == ["yes", "yes", "no", "no"]
    # prod-sftp has qualif-sftp for its structure; prod-other has nothing in qualification.
    assert captured.err == (
        "raccord: warning: connection prod-other: production connection for structure "
        "00000000000404 has no qualification connection for the same structure in this "
        "configuration (Chorus Pro expects the flows to be qualified first)\n"
    )


def test_check_prints_the_same_warning(
    configuration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its keys are not on this machine (exit 1); the warning is printed all the same.
    assert main(["check", "--config", str(configuration)]) == 1
    assert "warning: connection prod-other: production connection" in capsys.readouterr().out


def test_an_unknown_interface_code_is_a_usage_error_with_a_hint(
    configuration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["connections", "--config", str(configuration), "--interface", "FSO1100B"]) == 2
    assert capsys.readouterr().err.startswith(
        "raccord: --interface FSO1100B: unknown interface code; did you mean FSO11"
    )
