"""Lots through the gateway (memory sender): packing, validation under Complète, the return
that rejects a lot, resubmission of the collateral invoices, and recovery after a crash."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from flows import lots
from gateway import config as config_module
from gateway.cli.commands import main
from gateway.config import Config
from gateway.flow import lotting as dispatcher
from gateway.flow.lots import journal_lot
from gateway.flow.lots import write_lot as write_lot_for_real
from gateway.folders import Layout, spool_name
from gateway.journal import TERMINAL, FlowRow, JournalDB
from gateway.returns import pipeline as returns
from protocols.testing import memory
from tests.gateway.harness import (
    answer_lost_after,
    deliver,
    drop,
    memory_config,
    rows,
    running,
    sidecar,
    until,
)
from tests.gateway.returns.test_returns import cpp_statut, invoice

_buckets = itertools.count()
CONN = "qualif-mem"
#: Done, or waiting for the rest of a lot.
WAITING = TERMINAL | {"batched"}


def lot_config(tmp_path: Path, mode: str = "complete", **lot: Any) -> tuple[Config, str]:
    bucket = f"lots-{next(_buckets)}"
    memory.BUCKETS.pop(bucket, None)
    settings = {"max_invoices": 20, "max_wait": '"30s"', "packaging": '"tar.gz"', **lot}
    resubmit = settings.pop("resubmit", False)
    inline = ", ".join(f"{key} = {value}" for key, value in settings.items())
    extra = f"lot = {{ {inline} }}\nresubmit_collateral = {str(resubmit).lower()}"
    return memory_config(tmp_path, bucket, connection_extra=extra, mode=mode), bucket


def twenty() -> dict[str, bytes]:
    return {f"f{i:02}.xml": invoice(f"F-{i:03}") for i in range(20)}


def lots_of(found: list[FlowRow]) -> list[FlowRow]:
    return [row for row in found if row.packaging is not None]


def test_twenty_invoices_leave_as_one_lot_and_each_is_journaled(tmp_path: Path) -> None:
    config, bucket = lot_config(tmp_path)
    found = deliver(config, twenty())
    (lot,) = lots_of(found)
    members = [row for row in found if row.packaging is None]
    assert lot.state == "sent" and lot.format == "lot" and lot.mode == "complete"
    assert len(members) == 20 and {m.state for m in members} == {"packed"}
    assert {m.lot_id for m in members} == {lot.flow_id}
    (remote,) = memory.bucket(bucket).files
    assert remote == lot.remote_name and remote.endswith(f"{lot.flow_id}.tar.gz")
    unpacked = dict(lots.read_members(memory.bucket(bucket).files[remote]))
    assert unpacked == twenty()
    receipt = sidecar(lot, ".receipt.json")
    numbers = sorted(i["invoice_number"] for i in receipt["invoices"])
    assert numbers == [f"F-{i:03}" for i in range(20)]
    assert {i["dropped_as"] for i in receipt["invoices"]} == {m.flow_id for m in members}
    assert Path(lot.final_path or "").read_bytes() == memory.bucket(bucket).files[remote]
    spool = Layout(config.gateway.data_dir).spool(CONN)
    assert list(spool.iterdir()) == []  # the members' bytes live in the lot only


def test_a_lot_leaves_after_max_wait_and_splits_at_max_bytes(tmp_path: Path) -> None:
    config, bucket = lot_config(tmp_path, max_wait='"300ms"', max_bytes='"13KB"')
    size = len(invoice("F-000"))
    assert 2 * (size + lots.MEMBER_OVERHEAD) <= 13000 < 3 * (size + lots.MEMBER_OVERHEAD)
    found = deliver(config, {f"f{i}.xml": invoice(f"F-{i:03}") for i in range(5)})
    sizes = sorted(len([m for m in found if m.lot_id == lot.flow_id]) for lot in lots_of(found))
    assert sizes == [1, 2, 2]
    assert len(memory.bucket(bucket).files) == 3


def test_under_complete_an_unfit_invoice_goes_to_error_instead_of_sinking_the_lot(
    tmp_path: Path,
) -> None:
    config, _ = lot_config(tmp_path, max_invoices=3)
    no_number = invoice("F-002").replace(b"<cbc:ID>F-002</cbc:ID>", b"")
    assert no_number != invoice("F-002")
    found = deliver(
        config,
        {"a.xml": invoice("F-000"), "b.xml": invoice("F-001"), "c.xml": no_number},
        settled=WAITING,
    )
    (refused,) = [row for row in found if row.state == "error"]
    assert refused.original_name == "c.xml" and refused.reason == "unfit_for_lot"
    assert "no invoice number" in (refused.message or "")
    assert sidecar(refused, ".error.json")["reason"] == "unfit_for_lot"
    # The two good ones wait for a third; nothing is lost at the stop.
    assert sorted(row.state for row in found if row.state != "error") == ["batched", "batched"]


def test_invoices_batched_at_a_stop_are_packed_after_the_restart(tmp_path: Path) -> None:
    config, bucket = lot_config(tmp_path, max_invoices=3)
    deliver(config, {"a.xml": invoice("F-000"), "b.xml": invoice("F-001")}, settled=WAITING)
    found = deliver(config, {"c.xml": invoice("F-002")})
    (lot,) = lots_of(found)
    assert lot.state == "sent"
    assert len(dict(lots.read_members(memory.bucket(bucket).files[lot.remote_name or ""]))) == 3


def test_a_crash_in_the_middle_of_packing_loses_nothing(tmp_path: Path) -> None:
    """Archive written but never journaled: removed at start, invoices packed again. Members
    journaled packed but their spool copy still there: the copy is removed."""
    config, bucket = lot_config(tmp_path, max_invoices=2)
    deliver(config, {"a.xml": invoice("F-000")}, settled=WAITING)
    layout = Layout(config.gateway.data_dir)
    spool = layout.spool(CONN)
    orphan_id = "20261123T090000Z-00abcd"
    orphan = spool / spool_name(orphan_id, lots.lot_name(orphan_id, "tar.gz"))
    orphan.write_bytes(b"half a lot")
    found = deliver(config, {"b.xml": invoice("F-001")})
    assert not orphan.exists()
    (lot,) = lots_of(found)
    assert lot.state == "sent" and orphan_id not in {r.flow_id for r in found}
    assert len(memory.bucket(bucket).files) == 1

    (member,) = [r for r in found if r.original_name == "a.xml"]
    leftover = Path(member.spool_path)
    leftover.write_bytes(invoice("F-000"))  # as if the removal had not happened
    deliver(config, {})
    assert not leftover.exists()
    assert rows(config) == found  # nothing new was journaled or sent
    assert len(memory.bucket(bucket).files) == 1


def test_an_invoice_already_in_a_lot_is_a_duplicate(tmp_path: Path) -> None:
    config, _ = lot_config(tmp_path, max_invoices=2)
    found = deliver(config, {"a.xml": invoice("F-000"), "b.xml": invoice("F-001")})
    found = deliver(config, {"again.xml": invoice("F-001")})
    (dup,) = [r for r in found if r.original_name == "again.xml"]
    assert dup.state == "error" and dup.reason == "duplicate"


def apply_return(config: Config, data: bytes) -> returns.Outcome:
    layout = Layout(config.gateway.data_dir)
    path = config.path.parent / "FEN1200A.xml"
    path.write_bytes(data)
    resubmit = {c.name for c in config.connections if c.resubmit_collateral}
    db = JournalDB(layout.journal)
    try:
        return returns.receive(db, layout, CONN, path, resubmit=resubmit)
    finally:
        db.close()


def rejecting_seven(lot: FlowRow, flow_code: str) -> bytes:
    statuses = tuple((f"F-{i:03}", "05" if i == 7 else "01") for i in range(20))
    return cpp_statut(flow_ref=lot.remote_name or "", flow_code=flow_code, invoices=statuses)


@pytest.mark.parametrize(
    ("mode", "flow_code", "rejected", "collateral"),
    [("complete", "93", 20, 19), ("partial", "96", 1, 0)],
)
def test_one_bad_invoice_in_a_lot_of_twenty(
    tmp_path: Path,
    mode: str,
    flow_code: str,
    rejected: int,
    collateral: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _ = lot_config(tmp_path, mode=mode)
    (lot,) = lots_of(deliver(config, twenty()))
    outcome = apply_return(config, rejecting_seven(lot, flow_code))
    assert (outcome.state, outcome.rejected, outcome.collateral) == (
        "applied",
        rejected,
        collateral,
    )
    layout = Layout(config.gateway.data_dir)
    reports = sorted(layout.rejected(CONN).glob("*.rejection.json"))
    assert len(reports) == rejected
    documents = [json.loads(p.read_text()) for p in reports]
    assert [d["invoice_number"] for d in documents if not d["collateral"]] == ["F-007"]
    assert sum(d["collateral"] for d in documents) == collateral
    # Each rejected invoice is there as it was dropped, taken out of the lot.
    assert (layout.rejected(CONN) / "f07.xml").read_bytes() == invoice("F-007")
    status = sidecar(lot, ".status.json")
    assert sum(i["rejected"] for i in status["invoices"]) == rejected
    db = JournalDB(layout.journal)
    assert [r.flow_id for r in db.search(invoice="F-007") if r.packaging] == [lot.flow_id]
    db.close()
    assert not [r for r in rows(config) if r.resubmit_of]  # the policy is off by default

    capsys.readouterr()
    listing = ["flows", "--config", str(config.path), "--format", "json"]
    # The invoices themselves, each with its own status, its dropped file's flow and its lot.
    assert main([*listing, "--invoice", "F-007"]) == 0
    (guilty,) = json.loads(capsys.readouterr().out)
    assert guilty["status"] == "05 rejetée (autre motif)" and guilty["lot_id"] == lot.flow_id
    assert guilty["file"] == "f07.xml" and guilty["flow_id"] != lot.flow_id
    assert [h["code"] for h in guilty["history"]] == [flow_code, "05"]
    assert main([*listing, "--invoice", "F-003"]) == 0
    (innocent,) = json.loads(capsys.readouterr().out)
    assert innocent["status"] == ("rejected (collateral)" if collateral else "01 déposée")
    assert main([*listing, "--status", "collateral"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) == collateral and {r["lot_id"] for r in listed} <= {lot.flow_id}
    assert "f07.xml" not in {r["file"] for r in listed}
    assert main([*listing, "--status", "05"]) == 0
    assert [r["file"] for r in json.loads(capsys.readouterr().out)] == ["f07.xml"]
    # The flows view of the lot still sums its invoices up.
    assert main([*listing, "--flow", lot.flow_id]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["return_status"] == f"{rejected}/20 rejected ({collateral} collateral)"


def test_resubmission_sends_the_collateral_invoices_once_in_a_new_lot(tmp_path: Path) -> None:
    config, bucket = lot_config(tmp_path, resubmit=True)
    (lot,) = lots_of(deliver(config, twenty()))
    ret = rejecting_seven(lot, "93")
    outcome = apply_return(config, ret)
    assert (outcome.rejected, outcome.collateral) == (20, 19)
    found = deliver(config, {})  # the daemon sends the new lot
    (again,) = [r for r in lots_of(found) if r.resubmit_of == lot.flow_id]
    assert outcome.resubmitted == (again.flow_id,)
    assert again.state == "sent"
    sent = dict(lots.read_members(memory.bucket(bucket).files[again.remote_name or ""]))
    assert len(sent) == 19 and "f07.xml" not in sent
    assert sent["f03.xml"] == invoice("F-003")

    # The new lot is integrated; a second rejection of the old lot resubmits nothing more.
    integrated = tuple((f"F-{i:03}", "01") for i in range(20) if i != 7)
    outcome = apply_return(
        config, cpp_statut(flow_ref=again.remote_name or "", flow_code="90", invoices=integrated)
    )
    assert (outcome.flows, outcome.rejected) == ((again.flow_id,), 0)
    apply_return(config, ret.replace(b"2026-11-23T10:00:00", b"2026-11-23T11:00:00"))
    assert len(lots_of(rows(config))) == 2
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    assert [i["status_code"] for i in db.invoices(again.flow_id)] == ["01"] * 19
    assert db.resubmission_of(lot.flow_id) == again.flow_id
    db.close()


def test_a_rejected_invoice_may_be_dropped_again_after_correction(tmp_path: Path) -> None:
    config, _ = lot_config(tmp_path, max_invoices=2, mode="partial")
    (lot,) = lots_of(deliver(config, {"a.xml": invoice("F-000"), "b.xml": invoice("F-001")}))
    statuses = (("F-000", "01"), ("F-001", "05"))
    apply_return(config, cpp_statut(flow_ref=lot.remote_name or "", invoices=statuses))
    fixed = invoice("F-001").replace(b"</Invoice>", b"<!-- corrected --></Invoice>")
    found = deliver(
        config, {"b-fixed.xml": fixed, "a-again.xml": invoice("F-000")}, settled=WAITING
    )
    states = {r.original_name: (r.state, r.reason) for r in found}
    assert states["b-fixed.xml"][0] == "batched"  # not a duplicate: the partner rejected it
    assert states["a-again.xml"] == ("error", "duplicate")  # F-000 was integrated


def test_invoices_waiting_on_a_connection_removed_from_the_configuration_go_to_error(
    tmp_path: Path,
) -> None:
    config, _ = lot_config(tmp_path, max_invoices=3)
    (waiting,) = deliver(config, {"a.xml": invoice("F-000")}, settled=WAITING)
    assert waiting.state == "batched"
    text = config.path.read_text().replace('name = "qualif-mem"', 'name = "other-mem"')
    config.path.write_text(text)
    found = deliver(config_module.load(config.path), {})
    (row,) = [r for r in found if r.flow_id == waiting.flow_id]
    assert (row.state, row.reason) == ("error", "unknown_connection")
    assert Path(row.final_path or "").read_bytes() == invoice("F-000")  # in error/qualif-mem/


def test_a_failed_cleanup_after_packing_neither_fails_nor_duplicates_the_invoices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, bucket = lot_config(tmp_path, max_invoices=2)

    def cannot_remove(paths: object) -> None:
        raise PermissionError("spool is read-only for a moment")

    monkeypatch.setattr(dispatcher, "remove_members", cannot_remove)
    found = deliver(config, {"a.xml": invoice("F-000"), "b.xml": invoice("F-001")})
    (lot,) = lots_of(found)
    assert lot.state == "sent" and len(memory.bucket(bucket).files) == 1
    assert {r.state for r in found if not r.packaging} == {"packed"}  # not in error/ as well
    layout = Layout(config.gateway.data_dir)
    assert not list(layout.error(CONN).iterdir())
    assert len(list(layout.spool(CONN).iterdir())) == 2  # the copies left behind…
    monkeypatch.undo()
    deliver(config, {})
    assert list(layout.spool(CONN).iterdir()) == []  # …are removed at the next start
    assert len(memory.bucket(bucket).files) == 1


def test_a_lot_journaled_whose_answer_was_lost_is_sent_not_thrown_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal process died after committing the lot: its archive is what the invoices'
    rows now point to, so it must be kept and sent."""
    config, bucket = lot_config(tmp_path, max_invoices=2)
    journal = answer_lost_after(journal_lot)
    monkeypatch.setattr("gateway.daemon.Journal", journal)
    found = deliver(config, {"a.xml": invoice("F-000"), "b.xml": invoice("F-001")})
    assert journal.lost == 1  # type: ignore[attr-defined]
    (lot,) = lots_of(found)
    assert lot.state == "sent" and len(memory.bucket(bucket).files) == 1
    assert {r.state for r in found if not r.packaging} == {"packed"}
    layout = Layout(config.gateway.data_dir)
    assert not list(layout.error(CONN).iterdir())


@pytest.mark.parametrize("flow_code", ["93", "94", "95"])
def test_a_flow_level_failure_under_partial_fails_every_invoice_and_resubmits_the_unnamed(
    tmp_path: Path, flow_code: str
) -> None:
    """A 93 naming one invoice of a Partielle lot used to leave the four others `sent` with no
    status ever to come: the flow was not received. All five fail; the four the error does not
    name are marked flow_not_received and go again under resubmit_collateral."""
    config, bucket = lot_config(tmp_path, mode="partial", max_invoices=5, resubmit=True)
    five = {f"f{i:02}.xml": invoice(f"S2B-{i}") for i in (1, 12, 2, 3, 4)}
    (lot,) = lots_of(deliver(config, five))
    outcome = apply_return(
        config,
        cpp_statut(
            flow_ref=lot.remote_name or "", flow_code=flow_code, errors=("Facture S2B-12 : XSD",)
        ),
    )
    assert (outcome.rejected, outcome.collateral) == (5, 0)
    layout = Layout(config.gateway.data_dir)
    documents = {
        d["invoice_number"]: d
        for d in (json.loads(p.read_text()) for p in layout.rejected(CONN).glob("*.rejection.json"))
    }
    assert set(documents) == {"S2B-1", "S2B-12", "S2B-2", "S2B-3", "S2B-4"}
    assert [n for n, d in documents.items() if not d["flow_not_received"]] == ["S2B-12"]
    assert all(d["reasons"][-1].startswith(f"flow status {flow_code}") for d in documents.values())
    found = deliver(config, {})
    (again,) = [r for r in lots_of(found) if r.resubmit_of == lot.flow_id]
    sent = dict(lots.read_members(memory.bucket(bucket).files[again.remote_name or ""]))
    assert sorted(sent) == ["f01.xml", "f02.xml", "f03.xml", "f04.xml"]  # never S2B-12's f12


def test_a_partial_integration_rejects_only_the_named_invoice_not_its_prefix(
    tmp_path: Path,
) -> None:
    """A 96 naming S2B-12 rejected S2B-1 as well (substring match)."""
    config, _ = lot_config(tmp_path, mode="partial", max_invoices=2)
    (lot,) = lots_of(deliver(config, {"a.xml": invoice("S2B-1"), "b.xml": invoice("S2B-12")}))
    outcome = apply_return(
        config,
        cpp_statut(flow_ref=lot.remote_name or "", flow_code="96", errors=("Facture S2B-12",)),
    )
    assert (outcome.rejected, outcome.collateral) == (1, 0)
    (report,) = Layout(config.gateway.data_dir).rejected(CONN).glob("*.rejection.json")
    assert json.loads(report.read_text())["invoice_number"] == "S2B-12"


def test_an_invoice_history_across_lots_and_resubmission_in_table_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`raccord flows --invoice N` shows where an invoice travelled — its lot, the lot that
    resubmitted it — and every status it got, in a table as in JSON."""
    config, _ = lot_config(tmp_path, max_invoices=2, resubmit=True)
    (lot,) = lots_of(deliver(config, {"a.xml": invoice("F-000"), "b.xml": invoice("F-001")}))
    apply_return(
        config,
        cpp_statut(flow_ref=lot.remote_name or "", invoices=(("F-000", "05"), ("F-001", "01"))),
    )
    (again,) = [r for r in lots_of(deliver(config, {})) if r.resubmit_of == lot.flow_id]
    apply_return(config, cpp_statut(flow_ref=again.remote_name or "", invoices=(("F-001", "03"),)))

    capsys.readouterr()
    listing = ["flows", "--config", str(config.path), "--invoice", "F-001"]
    assert main([*listing, "--format", "json"]) == 0
    first, second = json.loads(capsys.readouterr().out)
    assert (first["lot_id"], first["resubmitted_in"], first["status"]) == (
        lot.flow_id,
        again.flow_id,
        "rejected (collateral)",
    )
    assert (second["lot_id"], second["resubmit_of"], second["status"]) == (
        again.flow_id,
        lot.flow_id,
        "03 mise à disposition",
    )
    assert first["flow_id"] == second["flow_id"]  # one dropped file, two lots
    assert main([*listing, "--format", "table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["INVOICE_NUMBER", "FILE", "FLOW_ID"]
    assert len(lines) == 5  # header, the first lot's row and its 01, the second's and its 03
    assert "rejected (collateral)" in lines[1] and "↳ invoice status" in lines[2]
    assert "01 déposée" in lines[2] and "03 mise à disposition" in lines[4]
    assert main([*listing, "--format", "csv", "--status", "03"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3  # header, the invoice, its status


def test_a_lot_that_cannot_be_written_on_a_full_disk_says_so_in_error_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Packing on a full data_dir files the invoices in error/ as local_disk_full, saying to
    free space and retry (not internal_error, no traceback); once retried, they leave."""
    config, bucket = lot_config(tmp_path, max_invoices=2)
    real = write_lot_for_real
    full = {"left": 1}

    def write_lot(*args: Any) -> None:
        if full["left"]:
            full["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device", str(args[1]))
        real(*args)

    monkeypatch.setattr(dispatcher, "write_lot", write_lot)
    with capture_logs() as events:
        found = deliver(config, {"a.xml": invoice("F-000"), "b.xml": invoice("F-001")})
    assert {(r.state, r.reason) for r in found} == {("error", "local_disk_full")}
    for row in found:
        report = sidecar(row, ".error.json")
        assert report["reason"] == "local_disk_full"
        assert "No space left on device" in report["message"]
        assert "file system is full: free space there" in report["message"]
        assert report["message"].endswith(f"then raccord retry {row.flow_id}")
        assert "by itself" not in report["message"]  # in error/, it waits for the operator
    (packing,) = [e for e in events if e["event"] == "lot.pack_failed"]
    assert "exc_info" not in packing and "No space left" in packing["error"]
    assert not [e for e in events if e["event"] == "flow.internal_error"]
    capsys.readouterr()
    shown = ["flows", "--config", str(config.path), "--format", "json", "--flow"]
    assert main([*shown, found[0].flow_id]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["reason"] == "local_disk_full"

    for row in found:
        assert main(["retry", "--config", str(config.path), row.flow_id]) == 0
    (lot,) = lots_of(deliver(config, {}))
    assert lot.state == "sent" and len(memory.bucket(bucket).files) == 1


def test_invoices_another_node_packed_first_leave_this_lot_and_the_rest_wait(
    tmp_path: Path,
) -> None:
    """On a shared journal another node's start may pack invoices this node is assembling: the
    journal lets one lot take an invoice (batched → packed once), so this node's lot is
    refused; its other invoices go back to wait for a lot (not to error/), none is sent
    twice."""
    config, bucket = lot_config(tmp_path, max_invoices=3, max_wait='"1h"')
    layout = Layout(config.gateway.data_dir)

    def states() -> dict[str, str]:
        return {row.original_name: row.state for row in rows(config) if not row.packaging}

    async def main() -> None:
        async with running(config):
            drop(config, "a.xml", invoice("F-100"))
            drop(config, "b.xml", invoice("F-101"))
            await until(lambda: states() == {"a.xml": "batched", "b.xml": "batched"})
            (taken,) = [row for row in rows(config) if row.original_name == "a.xml"]
            other = JournalDB(layout.journal, node="node-x")  # its lot takes a.xml first
            try:
                target = layout.spool(CONN) / spool_name("20261207T090000Z-0000aa", "x.tar.gz")
                write_lot_for_real([("a.xml", Path(taken.spool_path))], target, "tar.gz")
                with other.transaction():
                    journal_lot(
                        other,
                        lot_id="20261207T090000Z-0000aa",
                        connection=CONN,
                        name="x.tar.gz",
                        spool=target,
                        packaging="tar.gz",
                        interface_code=taken.interface_code or "",
                        invoices=[("a.xml", "F-100", taken.supplier_id, taken.flow_id)],
                        members=[taken.flow_id],
                    )
            finally:
                other.close()
            with capture_logs() as logs:
                drop(config, "c.xml", invoice("F-102"))
                await until(lambda: any(e["event"] == "lot.members_taken" for e in logs))
            assert states() == {"a.xml": "packed", "b.xml": "batched", "c.xml": "batched"}

    asyncio.run(main())
    assert "error" not in states().values()
    assert memory.bucket(bucket).sends <= 1  # at most the other node's lot, once
