"""The filing worker process: files flows as place_all does, survives one death per batch."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.flow.filer import Filer, FilingFailed, Work
from gateway.folders import Placement, place_all
from tests.gateway.harness import through


def _dies_once(placements: list[Placement]) -> Sequence[Exception | None]:
    """Worker work that ends its process the first time (as a crash would), then files."""
    marker = placements[0].spool.parent / "died-once"
    if not marker.exists():
        marker.touch()
        os._exit(70)
    return place_all(placements)


def _always_dies(placements: list[Placement]) -> Sequence[Exception | None]:
    os._exit(70)


def _placements(tmp_path: Path, count: int) -> list[Placement]:
    spool = tmp_path / "spool"
    spool.mkdir()
    placements = []
    for i in range(count):
        source = spool / f"f{i}.xml"
        source.write_bytes(f"<Invoice>{i}</Invoice>".encode())
        target = tmp_path / "sent" / "2026-11-24" / f"f{i}.xml"
        placements.append(Placement(source, target, ".receipt.json", {"flow": i}))
    return placements


def _file(placements: list[Placement], work: Work = place_all) -> list[BaseException | None]:
    return through(Filer(work), Filer.place, placements)


@pytest.mark.parametrize("work", [place_all, _dies_once], ids=["plain", "worker-dies-once"])
def test_flows_are_filed_with_their_reports(tmp_path: Path, work: Work) -> None:
    placements = _placements(tmp_path, 20)
    assert _file(placements, work) == [None] * 20
    for i, placement in enumerate(placements):
        assert not placement.spool.exists()
        assert placement.target.read_bytes() == f"<Invoice>{i}</Invoice>".encode()
        report = placement.target.with_name(placement.target.name + ".receipt.json")
        assert json.loads(report.read_text()) == {"flow": i}


def test_a_worker_that_dies_twice_fails_the_batch_and_leaves_the_files(tmp_path: Path) -> None:
    placements = _placements(tmp_path, 3)
    outcomes = _file(placements, _always_dies)
    assert all(isinstance(outcome, FilingFailed) for outcome in outcomes), outcomes
    assert "twice" in str(outcomes[0])
    assert all(p.spool.exists() and not p.target.exists() for p in placements)


def test_a_file_that_cannot_be_filed_fails_alone(tmp_path: Path) -> None:
    placements = _placements(tmp_path, 3)
    placements[1].spool.unlink()  # removed by hand before filing
    outcomes = _file(placements)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], FileNotFoundError)
    assert placements[0].target.exists() and placements[2].target.exists()


def test_filing_again_after_a_crash_rewrites_the_report_only(tmp_path: Path) -> None:
    """The data file was moved before a crash, the report is stale: filing again is harmless."""
    (placement,) = _placements(tmp_path, 1)
    placement.target.parent.mkdir(parents=True)
    placement.spool.rename(placement.target)
    report = placement.target.with_name(placement.target.name + ".receipt.json")
    report.write_text("{half")
    assert place_all([placement]) == [None]
    assert json.loads(report.read_text()) == {"flow": 0}
    assert placement.target.read_bytes() == b"<Invoice>0</Invoice>"
    assert [p.name for p in report.parent.iterdir() if p.name.startswith(".")] == []


def test_a_report_that_cannot_be_written_fails_its_flow_only(tmp_path: Path) -> None:
    first, second = _placements(tmp_path, 2)
    blocked = Placement(second.spool, tmp_path / "blocked" / "day" / "f1.xml", ".error.json", {})
    (tmp_path / "blocked").write_bytes(b"")  # a file where the folder should be
    outcomes = place_all([first, blocked])
    assert outcomes[0] is None and isinstance(outcomes[1], OSError)
    assert first.target.exists() and blocked.spool.exists()
