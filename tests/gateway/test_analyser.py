"""The analysis worker process: same answers as flows.analysis, and a file that kills the worker
fails alone."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from flows.analysis import analyze
from gateway import analyser as analyser_module
from gateway.analyser import SMALL, Analyser, AnalysisCrashed, Outcome, analyse_all
from tests.conftest import sample
from tests.gateway.harness import through

LIMIT = 30_000 * 1024


def _dies_on_poison(items: list[tuple[Path, int]]) -> list[Outcome | Exception | None]:
    """Worker work that ends the worker process as a parser crash would."""
    if any("poison" in path.name for path, _ in items):
        os._exit(70)
    return analyse_all(items)


def analysed(
    paths: list[Path], limit: int = LIMIT, work: Any = analyse_all
) -> list[Outcome | BaseException]:
    """Every path through one Analyser, concurrently (so they share batches), in order."""
    return through(Analyser(work), lambda analyser, path: analyser.analyse(path, limit), paths)


def _documents(folder: Path) -> list[Path]:
    documents = {
        "ubl.xml": sample("ubl-invoice.xml"),
        "cii.xml": sample("cii-invoice.xml"),
        "broken.xml": b"<Invoice><cbc:ID>1</Invoice>",
        "empty.xml": b"",
        "notes.txt": b"not an invoice",
    }
    paths = []
    for name, data in documents.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_answers_are_those_of_an_analysis_in_process(tmp_path: Path) -> None:
    paths = _documents(tmp_path)
    big = tmp_path / "big.xml"  # over SMALL: analysed on a thread of this process
    big.write_bytes(
        sample("ubl-invoice.xml").replace(
            b"</Invoice>", b"<!--" + b"x" * (SMALL + 10) + b"-->\n</Invoice>"
        )
    )
    paths.append(big)

    outcomes = analysed(paths)
    assert outcomes == [(path.stat().st_size, analyze(path)) for path in paths]
    formats = {o[1].format.value for o in outcomes if isinstance(o, tuple) and o[1] is not None}
    assert formats == {"ubl-invoice", "cii-d16b", "unknown"}


def test_over_the_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "ubl.xml"
    path.write_bytes(sample("ubl-invoice.xml"))

    assert analysed([path], limit=100) == [(path.stat().st_size, None)]


def test_a_missing_file_raises_for_its_caller_only(tmp_path: Path) -> None:
    present = tmp_path / "ubl.xml"
    present.write_bytes(sample("ubl-invoice.xml"))

    missing, found = analysed([tmp_path / "gone.xml", present])
    assert isinstance(missing, FileNotFoundError)
    assert found == (present.stat().st_size, analyze(present))


def test_a_file_that_kills_the_worker_fails_alone(tmp_path: Path) -> None:
    paths = _documents(tmp_path)
    poison = tmp_path / "poison.xml"
    poison.write_bytes(sample("ubl-invoice.xml"))
    batch = [*paths[:2], poison, *paths[2:]]

    async def scenario() -> tuple[list[Outcome | BaseException], Outcome]:
        analyser = Analyser(_dies_on_poison)
        try:
            first = await asyncio.gather(
                *(analyser.analyse(path, LIMIT) for path in batch), return_exceptions=True
            )
            # A new worker takes over for the files that come after.
            after = await analyser.analyse(paths[0], LIMIT)
            return first, after
        finally:
            await analyser.close()

    first, after = asyncio.run(scenario())
    crashed = first.pop(2)
    assert isinstance(crashed, AnalysisCrashed)
    assert "poison.xml" in str(crashed) and "raccord retry" in str(crashed)
    assert first == [(path.stat().st_size, analyze(path)) for path in paths]
    assert after == (paths[0].stat().st_size, analyze(paths[0]))


def test_a_burst_is_answered_in_full_and_in_order(tmp_path: Path) -> None:
    """More files than one batch holds (256): every caller gets its own file's analysis."""
    count = 600
    template = sample("ubl-invoice.xml")
    paths = []
    for i in range(count):
        path = tmp_path / f"inv-{i}.xml"
        path.write_bytes(template.replace(b"DEMO-UBL-0001", f"BURST-{i:04}".encode()))
        paths.append(path)

    numbers = [o[1].invoice_number for o in analysed(paths) if isinstance(o, tuple) and o[1]]
    assert numbers == [f"BURST-{i:04}" for i in range(count)]


def test_a_large_file_does_not_hold_up_the_small_ones_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = _documents(tmp_path)[:2]
    large = tmp_path / "large.xml"
    large.write_bytes(
        sample("ubl-invoice.xml").replace(
            b"</Invoice>", b"<!--" + b"x" * (SMALL + 10) + b"-->\n</Invoice>"
        )
    )
    release = threading.Event()
    in_process = analyser_module.size_and_analysis

    def slow(path: Path, limit: int) -> Outcome:  # a large file that takes its time here
        assert release.wait(10), "never released"
        return in_process(path, limit)

    monkeypatch.setattr(analyser_module, "size_and_analysis", slow)

    async def scenario() -> tuple[list[Outcome], Outcome]:
        analyser = Analyser()
        try:
            late = asyncio.ensure_future(analyser.analyse(large, LIMIT))
            early = await asyncio.wait_for(
                asyncio.gather(*(analyser.analyse(path, LIMIT) for path in small)), 5
            )
            release.set()
            return early, await late
        finally:
            release.set()
            await analyser.close()

    early, late = asyncio.run(scenario())
    assert early == [(path.stat().st_size, analyze(path)) for path in small]
    assert late == (large.stat().st_size, analyze(large))
