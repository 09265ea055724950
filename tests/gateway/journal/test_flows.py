"""gateway.journal.flows: the checks folded into a move (the duplicate check into the queueing,
the free name into the filing) decide as the separate checks did, on both databases."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.journal import JournalDB, JournalTarget, StateConflict

_ids = itertools.count()

#: A drop: (sha256, supplier, invoice number, whether the partner rejects its invoice). Few
#: values, so that the same bytes and the same numbers come back often.
drops = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2", "s3"]),
        st.sampled_from(["A", "B", None]),
        st.sampled_from(["N1", "N2", None]),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sequence=drops)
def test_a_flow_is_queued_unless_the_duplicate_check_alone_finds_an_earlier_one(
    target: JournalTarget, sequence: list[tuple[str, str | None, str | None, bool]]
) -> None:
    """Promise: a file is never sent twice: a flow carrying the bytes, or the supplier and
    number, of an earlier live or sent flow is refused with that flow and nothing of it is
    written; any other is queued and goes on to sending with its invoice, both moves in its
    history. Whatever the sequence, the one-statement check decides as the check alone."""
    db = JournalDB(target)
    run = next(_ids)
    try:
        for i, (sha, supplier, number, rejected) in enumerate(sequence):
            flow = f"20261207T090000Z-{run:04x}{i:02x}"
            sha = f"{run}-{sha}"  # the examples share the database: each its own files
            supplier = f"{run}-{supplier}" if supplier else None
            db.insert(flow, "c", f"{i}.xml", f"/spool/{flow}")
            expected = db.find_duplicate(flow, sha, supplier, number)
            queued, earlier = db.queue_unless_duplicate(
                flow,
                (sha, supplier, number),
                check=True,
                invoice=(f"{i}.xml", number, supplier, flow),
                sending={"attempts": 1},
                sha256=sha,
                supplier_id=supplier,
                invoice_number=number,
            )
            row = db.get(flow)
            assert row is not None
            if expected is not None:
                assert queued is None and earlier is not None
                assert earlier.flow_id == expected.flow_id
                assert row.state == "claimed" and row.sha256 is None
                assert [t["to_state"] for t in db.transitions(flow)] == ["claimed"]
                assert db.invoices(flow) == []
                continue
            assert earlier is None and queued is not None
            assert (queued.state, queued.attempts, queued.sha256) == ("sending", 1, sha)
            assert [t["to_state"] for t in db.transitions(flow)] == [
                "claimed",
                "queued",
                "sending",
            ]
            assert [i["invoice_number"] for i in db.invoices(flow)] == [number]
            if rejected:  # the partner refused it: its number may be sent again
                db.set_invoice_status(flow, 0, rejected=1)
                db.transition(flow, "failing", reason="rejected")
                db.transition(flow, "error")
    finally:
        db.close()


def test_a_flow_no_longer_claimed_is_refused_not_queued_again(target: JournalTarget) -> None:
    """Promise: a file is never sent twice: queueing a flow that someone moved on meanwhile
    fails with a StateConflict naming its state, and writes nothing."""
    db = JournalDB(target)
    try:
        db.insert("20261207T090000Z-000001", "c", "a.xml", "/spool/a")
        db.transition("20261207T090000Z-000001", "queued")
        with pytest.raises(StateConflict, match="is queued"):
            db.queue_unless_duplicate(
                "20261207T090000Z-000001", ("sha", None, None), check=True, sha256="sha"
            )
        row = db.get("20261207T090000Z-000001")
        assert row is not None and row.sha256 is None
        assert len(db.transitions("20261207T090000Z-000001")) == 2
    finally:
        db.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(st.sampled_from(["a.xml", "b.xml", "noext", "c.pdf"]), min_size=1, max_size=6),
    on_disk=st.sets(st.sampled_from(["a.xml", "noext"])),
)
def test_each_flow_is_filed_under_a_path_no_file_and_no_other_flow_holds(
    target: JournalTarget,
    tmp_path_factory: pytest.TempPathFactory,
    names: list[str],
    on_disk: set[str],
) -> None:
    """Promise: a file is never lost: two flows filed under one name are given two paths (a
    rename would overwrite one), and a file already in the folder is never the target; a name
    that neither holds is kept as it is."""
    folder = tmp_path_factory.mktemp("sent")
    for name in on_disk:
        (folder / name).write_text("already here")
    db = JournalDB(target)
    run = next(_ids)
    try:
        paths: list[Path] = []
        for i, name in enumerate(names):
            flow = f"20261207T091000Z-{run:04x}{i:02x}"
            db.insert(flow, "c", name, f"/spool/{flow}")
            db.transition(flow, "queued")
            db.transition(flow, "sending")
            row = db.file_to(flow, "delivered", folder, name, current="sending", receipt="{}")
            assert row.state == "delivered" and row.final_path is not None
            path = Path(row.final_path)
            assert path.parent == folder and not path.exists()
            if name not in on_disk and folder / name not in paths:
                assert path == folder / name
            else:
                assert flow in path.name
            paths.append(path)
        assert len(set(paths)) == len(paths)
    finally:
        db.close()


def test_a_refused_filing_records_no_path(target: JournalTarget, tmp_path: Path) -> None:
    """Promise: a flow is filed only from the state its caller read: a filing from a state the
    flow has left is refused with a StateConflict, and leaves neither a path nor a move."""
    db = JournalDB(target)
    try:
        db.insert("20261207T092000Z-000001", "c", "a.xml", "/spool/a")
        with pytest.raises(StateConflict, match="is claimed"):
            db.file_to("20261207T092000Z-000001", "delivered", tmp_path, "a.xml", current="sending")
        with pytest.raises(StateConflict, match="not in the journal"):
            db.file_to("20261207T092000Z-000009", "delivered", tmp_path, "a.xml")
        row = db.get("20261207T092000Z-000001")
        assert row is not None and row.final_path is None and row.state == "claimed"
        assert len(db.transitions("20261207T092000Z-000001")) == 1
    finally:
        db.close()


def _queue_then_fail(db: JournalDB, flow: str) -> None:
    db.queue_unless_duplicate(
        flow, ("sha-failing", None, None), check=True, invoice=("f.xml", "N", "S", flow)
    )
    raise ValueError("the caller failed after queueing")


def test_a_call_that_fails_after_queueing_leaves_neither_the_move_nor_the_invoice(
    target: JournalTarget,
) -> None:
    """Promise: a journal call applies entirely or not at all, even in a batch that commits
    others: a call that failed after queueing a flow with its invoice leaves the flow claimed
    and without invoice; the batch's other call applies."""
    from gateway.journal.worker import run_batch

    db = JournalDB(target)
    try:
        for flow in ("20261207T093000Z-000001", "20261207T093000Z-000002"):
            db.insert(flow, "c", f"{flow}.xml", f"/spool/{flow}")
        outcomes = run_batch(
            db,
            [
                lambda d: _queue_then_fail(d, "20261207T093000Z-000001"),
                lambda d: d.queue_unless_duplicate(
                    "20261207T093000Z-000002", ("sha-other", None, None), check=True
                ),
            ],
        )
        assert isinstance(outcomes[0], ValueError)
        failed, other = db.get("20261207T093000Z-000001"), db.get("20261207T093000Z-000002")
        assert failed is not None and failed.state == "claimed"
        assert db.invoices("20261207T093000Z-000001") == []
        assert other is not None and other.state == "queued"
    finally:
        db.close()
