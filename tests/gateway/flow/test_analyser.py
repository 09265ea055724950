"""The analysis workers: same answers as flows.analysis; a file that kills its worker or
overruns its time budget fails alone; only regular files are ever opened."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flows.analysis import analyze
from gateway.flow import analyser as analyser_module
from gateway.flow.analyser import (
    SMALL,
    Analyser,
    AnalysisCrashed,
    AnalysisTimedOut,
    Item,
    NotARegularFile,
    Outcome,
    analyse_one,
    open_regular,
)
from tests.conftest import sample
from tests.gateway.harness import through

LIMIT = 30_000 * 1024


def _dies_on_poison(item: Item) -> Outcome | Exception | None:
    """Worker work that ends the worker process as a parser crash would."""
    if "poison" in item[0].name:
        os._exit(70)
    return analyse_one(item)


def _hangs_on_stuck(item: Item) -> Outcome | Exception | None:
    """Worker work that never ends on one file, as a quadratic parse would not for minutes."""
    outcome = analyse_one(item)  # None: a large file, for the other worker
    if "stuck" in item[0].name and outcome is not None:
        while True:
            time.sleep(1)
    return outcome


def analysed(
    paths: list[Path], limit: int = LIMIT, analyser: Analyser | None = None
) -> list[Outcome | BaseException]:
    """Every path through one Analyser, concurrently (so they share batches), in order."""
    return through(
        analyser or Analyser(), lambda analyser, path: analyser.analyse(path, limit), paths
    )


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


def _large(folder: Path, name: str = "large.xml") -> Path:
    path = folder / name
    path.write_bytes(
        sample("ubl-invoice.xml").replace(
            b"</Invoice>", b"<!--" + b"x" * (SMALL + 10) + b"-->\n</Invoice>"
        )
    )
    return path


def test_answers_are_those_of_an_analysis_in_process(tmp_path: Path) -> None:
    paths = [*_documents(tmp_path), _large(tmp_path)]

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
        analyser = Analyser(work=_dies_on_poison)
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


def test_a_file_over_its_time_budget_fails_alone_and_its_worker_is_replaced(
    tmp_path: Path,
) -> None:
    """The daemon never stalls on a file: a runaway analysis is stopped (the worker killed)
    after analysis_timeout, and the files after it are analysed by a fresh worker."""
    paths = _documents(tmp_path)
    stuck = tmp_path / "stuck.xml"
    stuck.write_bytes(sample("ubl-invoice.xml"))
    analyser = Analyser(timeout=1.0, work=_hangs_on_stuck)
    started = time.monotonic()

    outcomes = analysed([paths[0], stuck, *paths[1:]], analyser=analyser)
    assert time.monotonic() - started < 10
    timed_out = outcomes.pop(1)
    assert isinstance(timed_out, AnalysisTimedOut)
    assert "stuck.xml" in str(timed_out) and "analysis_timeout" in str(timed_out)
    assert outcomes == [(path.stat().st_size, analyze(path)) for path in paths]


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


def test_a_large_file_does_not_hold_up_the_small_ones(tmp_path: Path) -> None:
    """A large file that takes its time (here: forever) is in a worker of its own: the small
    files dropped with it are analysed meanwhile."""
    small = _documents(tmp_path)[:2]
    large = _large(tmp_path, "large-stuck.xml")

    async def scenario() -> tuple[list[Outcome], BaseException | Outcome]:
        analyser = Analyser(timeout=3.0, work=_hangs_on_stuck)
        try:
            late = asyncio.ensure_future(analyser.analyse(large, LIMIT))
            await asyncio.sleep(0)
            early = await asyncio.wait_for(
                asyncio.gather(*(analyser.analyse(path, LIMIT) for path in small)), 2.5
            )
            late_outcome: BaseException | Outcome
            try:
                late_outcome = await late
            except AnalysisTimedOut as exc:
                late_outcome = exc
            return early, late_outcome
        finally:
            await analyser.close()

    early, late = asyncio.run(scenario())
    assert early == [(path.stat().st_size, analyze(path)) for path in small]
    assert isinstance(late, AnalysisTimedOut)


def _entries(folder: Path, outside: Path) -> dict[str, Path]:
    """One entry of every kind that is not a regular file."""
    entries = {
        "link": folder / "link.xml",
        "dangling": folder / "dangling.xml",
        "fifo": folder / "fifo.xml",
        "socket": folder / "socket.xml",
        "folder": folder / "folder.xml",
        "device": folder / "device.xml",
    }
    entries["link"].symlink_to(outside)
    entries["dangling"].symlink_to(folder / "nowhere")
    os.mkfifo(entries["fifo"])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(entries["socket"]))
    entries["folder"].mkdir()
    entries["device"].symlink_to("/dev/null")  # a link to a device: mknod needs privileges
    return entries


@pytest.mark.timeout(30)
def test_only_regular_files_are_opened_never_what_a_link_points_to(tmp_path: Path) -> None:
    """Nothing outside the outbox is ever read through a link, and a FIFO never blocks: each
    non-regular entry is refused at once, with a sentence saying what it is."""
    secret = tmp_path / "secret.xml"
    secret.write_bytes(sample("ubl-invoice.xml"))
    folder = tmp_path / "outbox"
    folder.mkdir()
    entries = _entries(folder, secret)

    outcomes = dict(zip(entries, analysed(list(entries.values())), strict=True))
    for kind, outcome in outcomes.items():
        assert isinstance(outcome, NotARegularFile), kind
        assert "not a regular file" in str(outcome)
    assert "a symbolic link to " + str(secret) in str(outcomes["link"])
    assert "named pipe" in str(outcomes["fifo"])
    assert "socket" in str(outcomes["socket"])
    assert "a folder" in str(outcomes["folder"])


def test_open_regular_refuses_an_entry_replaced_by_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked after the open too: an entry that became a link after it was examined is not
    followed (O_NOFOLLOW)."""
    secret = tmp_path / "secret.xml"
    secret.write_bytes(b"<secret/>")
    path = tmp_path / "drop.xml"
    path.write_bytes(b"<Invoice/>")
    real_lstat = os.lstat

    def swap_after_lstat(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        found = real_lstat(target, *args, **kwargs)
        if Path(target) == path and not path.is_symlink():
            path.unlink()
            path.symlink_to(secret)
        return found

    monkeypatch.setattr(os, "lstat", swap_after_lstat)
    with pytest.raises(NotARegularFile, match="symbolic link"):
        open_regular(path)


def test_an_unreadable_file_is_a_permission_error(tmp_path: Path) -> None:
    path = tmp_path / "private.xml"
    path.write_bytes(sample("ubl-invoice.xml"))
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions are not enforced")
    (outcome,) = analysed([path])
    assert isinstance(outcome, PermissionError)


def test_the_daemon_thread_stays_free_during_a_runaway_analysis(tmp_path: Path) -> None:
    """The runaway parse is in another process: this process's threads keep their pace."""
    stuck = tmp_path / "stuck.xml"
    stuck.write_bytes(b"<a/>")
    ticks: list[float] = []
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.05)

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        (outcome,) = analysed([stuck], analyser=Analyser(timeout=1.5, work=_hangs_on_stuck))
    finally:
        done.set()
        thread.join()
    assert isinstance(outcome, AnalysisTimedOut)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 1.0


def test_a_parser_bug_fails_its_file_alone_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception a parser should not raise (a hostile PDF, say) is this file's
    analysis_crashed, not the end of the worker with a traceback on the daemon's output."""
    path = tmp_path / "odd.pdf"
    path.write_bytes(b"%PDF-1.4 odd")

    def bug(stream: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(analyser_module, "analyze_stream", bug)
    outcome = analyse_one((path, LIMIT, False))
    assert isinstance(outcome, AnalysisCrashed)
    assert "odd.pdf" in str(outcome) and "RecursionError" in str(outcome)
