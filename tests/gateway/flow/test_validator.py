"""Validation against the official rule sets, in spawned worker processes: valid invoices pass,
each known-invalid one is caught with the rule it breaks; a validation over its time budget
kills its worker, which is replaced, and the next file is validated as usual."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.validation import PRELOAD, Status, Validation
from gateway.flow import validator as validator_module
from gateway.flow.validator import ValidationTimeout, Validator, _Worker, artefacts, versions
from tests import invoices


@pytest.fixture(scope="module")
def worker() -> Iterator[_Worker]:
    """One spawned validation worker for the module (it compiles the rule sets once)."""
    started = _Worker(artefacts(), PRELOAD)
    yield started
    started.stop()


def check(worker: _Worker, path: Path, rules: tuple[str, ...] = ("en16931",)) -> Validation:
    answer = worker.ask(path, rules, 120.0)
    assert not isinstance(answer, Exception), answer
    return Validation.from_dict(answer)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("ubl.xml", invoices.ubl),
        ("cii.xml", invoices.cii),
        ("facturx.pdf", invoices.facturx_pdf),
    ],
)
def test_known_valid_invoices_pass(
    worker: _Worker, tmp_path: Path, name: str, make: Callable[[], bytes]
) -> None:
    path = tmp_path / name
    path.write_bytes(make())
    checked = check(worker, path)
    assert checked.status is Status.VALID, checked.errors
    assert checked.rules == ("XSD", "EN16931")


@pytest.mark.parametrize(
    ("name", "make", "rule"),
    [
        ("no-buyer-address.xml", invoices.ubl_without_buyer_address, "BR-10"),
        ("wrong-total.xml", invoices.ubl_wrong_total, "BR-CO-15"),
        ("schema.xml", invoices.ubl_schema_error, "XSD"),
        ("cii-lines.xml", invoices.cii_wrong_line_total, "BR-CO-10"),
        (
            "fx-bad.pdf",
            lambda: invoices.facturx_pdf(invoices.cii_wrong_line_total()),
            "BR-CO-10",
        ),
        ("fx-profile.pdf", lambda: invoices.facturx_pdf(level="basic"), "FX-PROFILE"),
    ],
)
def test_known_invalid_invoices_are_caught_with_their_rule(
    worker: _Worker, tmp_path: Path, name: str, make: Callable[[], bytes], rule: str
) -> None:
    path = tmp_path / name
    path.write_bytes(make())
    checked = check(worker, path)
    assert checked.status is Status.INVALID
    assert rule in {e.rule for e in checked.errors}, checked.errors
    first = next(e for e in checked.errors if e.rule == rule)
    assert first.message  # one sentence for the operator
    if rule == "BR-10":
        assert first.location == "/Invoice"


def test_br_fr_rules_are_applied_when_asked(worker: _Worker, tmp_path: Path) -> None:
    """The French CIUS adds its own mandatory mentions: the EN 16931-valid sample breaks some."""
    path = tmp_path / "ubl.xml"
    path.write_bytes(invoices.ubl())
    checked = check(worker, path, ("en16931", "br-fr"))
    assert checked.rules == ("XSD", "EN16931", "BR-FR")
    assert checked.status is Status.INVALID
    assert all(e.rule.startswith("BR-FR") for e in checked.errors), checked.errors


def test_a_document_with_an_external_entity_is_not_read_through_it(
    worker: _Worker, tmp_path: Path
) -> None:
    """Never read a file from outside the folders on a document's behalf."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    doctype = f'<!DOCTYPE Invoice [<!ENTITY x SYSTEM "file://{secret}">]>'.encode()
    data = invoices.ubl().replace(b"<Invoice ", doctype + b"<Invoice ", 1)
    data = data.replace(b"Ramettes de papier A4", b"&x;")
    path = tmp_path / "xxe.xml"
    path.write_bytes(data)
    checked = check(worker, path)
    assert "TOP-SECRET" not in str(checked.to_dict())


def test_an_unreadable_pdf_is_not_checked_rather_than_crashing(
    worker: _Worker, tmp_path: Path
) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.7\nnot really")
    checked = check(worker, path)
    assert checked.status is Status.NOT_CHECKED and checked.note


def test_a_file_over_its_time_budget_kills_its_worker_which_is_replaced(tmp_path: Path) -> None:
    slow = tmp_path / "slow.xml"
    slow.write_bytes(invoices.large_ubl(4000))
    fine = tmp_path / "fine.xml"
    fine.write_bytes(invoices.ubl())

    async def scenario() -> tuple[list[int], bool, list[int], Validation]:
        pool = Validator(workers=1, timeout=120.0)
        try:
            await pool.open()
            before = pool.pids
            pool.timeout = 0.05  # far below what 4,000 lines take
            with pytest.raises(ValidationTimeout) as raised:
                await pool.validate(slow, ("en16931",))
            assert "analysis_timeout" in str(raised.value) and slow.name in str(raised.value)
            alive = _alive(before[0])
            pool.timeout = 120.0
            checked = await pool.validate(fine, ("en16931",))
            return before, alive, pool.pids, checked
        finally:
            await pool.close()

    before, alive, after, checked = asyncio.run(scenario())
    assert not alive, "the worker that overran is killed"
    assert after and after != before, "a new worker took its place"
    assert checked.status is Status.VALID


def _cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user and system), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped) counts as dead.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_the_daemon_process_never_loads_saxonche() -> None:
    """saxonche aborts a process that forks after loading it: the daemon forks workers."""
    import sys

    assert validator_module.__name__ in sys.modules
    assert "saxonche" not in sys.modules


def test_versions_name_the_rule_sets() -> None:
    line = versions().line()
    assert "factur-x" in line and "EN 16931 UBL" in line


def test_the_files_batched_after_a_timeout_are_validated_by_the_new_worker(
    tmp_path: Path,
) -> None:
    """A bad file fails alone: the files sent to the worker with it (one batch) are not lost
    when it is killed; they go first to its replacement."""
    paths = []
    for name, data in (
        ("a.xml", invoices.ubl("A-1")),
        # far over the budget on any machine (a quiet one validates 12,000 lines within it)
        ("slow.xml", invoices.large_ubl(60000)),
        ("b.xml", invoices.ubl("B-1")),
        ("c.xml", invoices.ubl_without_buyer_address("C-1")),
    ):
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)

    async def scenario() -> list[Validation | BaseException]:
        pool = Validator(workers=1, timeout=3.0)
        try:
            await pool.open()
            return await asyncio.gather(
                *(pool.validate(path, ("en16931",)) for path in paths), return_exceptions=True
            )
        finally:
            await pool.close()

    a, slow, b, c = asyncio.run(scenario())
    assert isinstance(slow, ValidationTimeout)
    assert isinstance(a, Validation) and a.status is Status.VALID
    assert isinstance(b, Validation) and b.status is Status.VALID
    assert isinstance(c, Validation) and [e.rule for e in c.errors] == ["BR-10"]


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: b"%PDF-1.7\n" + b),
        st.binary(max_size=300).map(
            lambda b: (
                b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">'
                + b
                + b"</Invoice>"
            )
        ),
    )
)
def test_any_bytes_get_an_answer_and_leave_the_worker_working(worker: _Worker, data: bytes) -> None:
    """A file the daemon hands over, whatever it holds, gets a validation (most often
    not_checked) and never stops the worker."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.xml"
        path.write_bytes(data)
        checked = check(worker, path)
    assert checked.status in set(Status)
    assert worker.process.is_alive()


def test_closing_does_not_wait_for_a_slow_validation(tmp_path: Path) -> None:
    """A stop (after the flows were cancelled) ends a busy worker at once instead of waiting
    for its batch: a daemon's stop is bounded by its shutdown grace, not by the rule sets."""
    slow = tmp_path / "slow.xml"
    slow.write_bytes(invoices.large_ubl(12000))

    async def scenario() -> tuple[float, int]:
        pool = Validator(workers=1, timeout=120.0)
        await pool.open()
        (pid,) = pool.pids
        idle = _cpu_seconds(pid)
        flow = asyncio.create_task(pool.validate(slow, ("en16931",)))
        # Cancel only once the worker is busy with the file (for many seconds): it has spent
        # a tenth of a second of CPU on it, which an idle worker never does.
        deadline = time.monotonic() + 60
        while _cpu_seconds(pid) - idle < 0.1:
            assert time.monotonic() < deadline, "the worker never took up the file"
            assert not flow.done(), "the slow file was answered before it could be cancelled"
            await asyncio.sleep(0.01)
        flow.cancel()
        started = asyncio.get_running_loop().time()
        await pool.close()
        return asyncio.get_running_loop().time() - started, pid

    took, pid = asyncio.run(scenario())
    # A graceful stop waits 5 s for the worker to finish before killing it: well under that.
    assert took < 4.0
    assert not _alive(pid)


def test_a_worker_ends_by_itself_when_its_daemon_dies_even_mid_file(tmp_path: Path) -> None:
    """kill -9 of the daemon leaves no validation worker behind, not even one busy with a long
    file: the daemon's end of the life line closing (as the kernel does at its death) ends it."""
    slow = tmp_path / "slow.xml"
    slow.write_bytes(invoices.large_ubl(12000))
    started = _Worker(artefacts(), PRELOAD)
    try:
        started.pipe.send([(slow, ("en16931",))])  # busy for seconds with this file
        started._life.close()  # what the kernel does to every descriptor of a dead daemon
        deadline = time.monotonic() + 5
        while _alive(started.pid) and time.monotonic() < deadline:
            started.process.join(0.05)
        assert not _alive(started.pid)
    finally:
        started.kill()
