"""Lots and return flows end to end through a real OpenSSH sshd on 127.0.0.1: the gateway
uploads a lot, the simulator's desk answers in the download folder as Chorus Pro would, the
gateway fetches the answer over SFTP and applies Complète or Partielle."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from flows import cppstatut
from gateway import config as config_module
from gateway.cli.commands import main
from gateway.config import Config
from gateway.folders import Layout
from gateway.journal import FlowRow, JournalDB
from gateway.sandbox.chorus import Desk, Rules
from tests.e2e.conftest import write_sftp_config
from tests.e2e.sshd import Sshd
from tests.gateway.harness import drop, running, until
from tests.gateway.returns.test_returns import invoice

pytestmark = pytest.mark.e2e
CONN = "qualif-sftp"
BAD = 7


def number(i: int) -> str:
    return f"F-REJ-{i:03}" if i == BAD else f"F-{i:03}"


def setup(
    tmp_path: Path, sshd: Sshd, mode: str, *, resubmit: bool = False, after: str = "delete"
) -> tuple[Config, Desk]:
    path = write_sftp_config(
        tmp_path,
        sshd,
        mode=mode,
        connection_extra='lot = { max_invoices = 20, max_wait = "30s", packaging = "tar.gz" }\n'
        f"resubmit_collateral = {str(resubmit).lower()}",
        sftp_extra=f'download_dir = "{sshd.download_dir}"\npoll_interval = "200ms"\n'
        f'after_download = "{after}"',
    )
    config = config_module.load(path)
    desk = Desk(sshd.upload_dir, sshd.download_dir, Rules({"FSO1100A": mode}, reject_pattern="REJ"))
    return config, desk


class Journal:
    def __init__(self, config: Config) -> None:
        self.path = Layout(config.gateway.data_dir).journal

    def __enter__(self) -> JournalDB:
        self.db = JournalDB(self.path)
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()


def lots_of(config: Config) -> list[FlowRow]:
    if not Journal(config).path.exists():
        return []
    with Journal(config) as db:
        return [row for row in db.search() if row.packaging]


def applied(config: Config, lot: FlowRow) -> bool:
    with Journal(config) as db:
        return any(s["position"] is None for s in db.statuses(lot.flow_id))


async def run_until(
    config: Config, desk: Desk, predicate: Callable[[], bool], what: str, drops: int = 20
) -> None:
    stopping = asyncio.Event()
    answering = asyncio.create_task(desk.run(stopping))
    try:
        async with running(config):
            for i in range(drops):
                drop(config, f"f{i:02}.xml", invoice(number(i)))
            await until(predicate, timeout=60, what=what)
    finally:
        stopping.set()
        await answering


def test_complete_lot_with_one_bad_invoice_is_rejected_and_the_19_resubmitted(
    tmp_path: Path, sshd: Sshd
) -> None:
    config, desk = setup(tmp_path, sshd, "complete", resubmit=True)

    def resubmission_integrated() -> bool:
        found = lots_of(config)
        again = [lot for lot in found if lot.resubmit_of]
        return len(again) == 1 and again[0].state == "sent" and applied(config, again[0])

    asyncio.run(run_until(config, desk, resubmission_integrated, "the 19 sent again"))
    first, again = sorted(lots_of(config), key=lambda r: r.created_at)
    assert again.resubmit_of == first.flow_id
    with Journal(config) as db:
        invoices = db.invoices(first.flow_id)
        resent = db.invoices(again.flow_id)
        assert [s["code"] for s in db.statuses(first.flow_id) if s["position"] is None] == ["93"]
    assert sum(i["rejected"] for i in invoices) == 20
    assert sum(i["collateral"] for i in invoices) == 19
    (faulty,) = [i for i in invoices if not i["collateral"]]
    assert faulty["invoice_number"] == number(BAD) and faulty["status_code"] == "05"
    assert len(resent) == 19 and {i["status_code"] for i in resent} == {"01"}
    assert number(BAD) not in {i["invoice_number"] for i in resent}
    # Both lots went up once each; both answers were fetched and removed from the partner.
    assert first.remote_name is not None and again.remote_name is not None
    assert sorted(sshd.uploaded()) == sorted([first.remote_name, again.remote_name])
    assert list(sshd.download_dir.iterdir()) == []
    rejected = Layout(config.gateway.data_dir).rejected(CONN)
    assert len(list(rejected.glob("*.rejection.json"))) == 20
    assert (rejected / f"f{BAD:02}.xml").read_bytes() == invoice(number(BAD))


def test_partial_lot_with_one_bad_invoice_rejects_one_and_integrates_19(
    tmp_path: Path, sshd: Sshd
) -> None:
    config, desk = setup(tmp_path, sshd, "partial", after="rename")

    def lot_applied() -> bool:
        found = lots_of(config)
        return len(found) == 1 and found[0].state == "sent" and applied(config, found[0])

    asyncio.run(run_until(config, desk, lot_applied, "the lot's return applied"))
    (lot,) = lots_of(config)
    with Journal(config) as db:
        invoices = db.invoices(lot.flow_id)
    assert [i["invoice_number"] for i in invoices if i["rejected"]] == [number(BAD)]
    assert sum(i["status_code"] == "01" for i in invoices) == 19
    assert not any(i["collateral"] for i in invoices)
    (answer,) = sshd.download_dir.iterdir()
    assert answer.name.endswith(".xml.done")  # renamed at the partner once stored


def test_a_duplicate_return_is_applied_once_and_an_unknown_one_kept(
    tmp_path: Path, sshd: Sshd
) -> None:
    config, desk = setup(tmp_path, sshd, "partial", after="leave")

    def lot_applied() -> bool:
        found = lots_of(config)
        return len(found) == 1 and applied(config, found[0])

    asyncio.run(run_until(config, desk, lot_applied, "the lot's return applied", drops=20))
    (answer,) = sshd.download_dir.iterdir()
    shutil.copy(answer, sshd.download_dir / "copy-of-the-same-return.xml")
    (sshd.download_dir / "stray.xml").write_bytes(
        answer.read_bytes()
        .replace(b"<Valeurparametre>FSO", b"<Valeurparametre>XX_FSO")
        .replace(b"F-0", b"G-0")
        .replace(b"F-REJ", b"G-REJ")
        .replace(lots_of(config)[0].flow_id.encode(), b"20250101T000000Z-abcdef")
    )

    def both_seen() -> bool:
        with Journal(config) as db:
            return len(db.returns()) == 2 and all(r["state"] != "received" for r in db.returns())

    asyncio.run(run_until(config, desk, both_seen, "the stray return journaled", drops=0))
    with Journal(config) as db:
        states = sorted(r["state"] for r in db.returns())
        (lot,) = [row for row in db.search() if row.packaging]
        codes = [s["code"] for s in db.statuses(lot.flow_id) if s["position"] is None]
    assert states == ["applied", "unmatched"]
    assert codes == ["96"]  # the copy was recognised, not applied again
    # Left at the partner (after_download = leave) and remembered: nothing fetched twice.
    assert len(list(sshd.download_dir.iterdir())) == 3


def test_returns_written_outside_raccord_out_of_order_and_contradictory_under_partial(
    tmp_path: Path, sshd: Sshd, capsys: pytest.CaptureFixture[str]
) -> None:
    """Return files not written by raccord's simulator, fetched over real SFTP one by one:
    a 96 naming S2B-12 (whose prefix S2B-1 is in the same lot), a payment, a stale status
    arriving after it, an AIFE Statut rejection contradicting a payment. Each invoice ends
    exactly where the rules say, in status.json, rejected/ and `raccord flows` alike."""
    path = write_sftp_config(
        tmp_path,
        sshd,
        mode="partial",
        connection_extra='lot = { max_invoices = 3, max_wait = "30s", packaging = "tar.gz" }',
        sftp_extra=f'download_dir = "{sshd.download_dir}"\npoll_interval = "200ms"',
    )
    config = config_module.load(path)
    h = "2026-11-23T1{}:00:00"

    def statut(lot: FlowRow, *lines: tuple[str, str, str], flow: str | None = None) -> bytes:
        return cppstatut.build(
            cppstatut.Statut(
                flow_ref=lot.remote_name or "",
                produced_at=h.format(9),
                flow=[cppstatut.FlowLine(flow, h.format(0), [("E1", "Facture S2B-12 : TVA")])]
                if flow
                else [],
                invoices=[cppstatut.InvoiceLine(n, c, at=at) for n, c, at in lines],
            )
        )

    def returns_done(count: int) -> bool:
        with Journal(config) as db:
            found = db.returns()
            return len(found) == count and all(r["state"] != "received" for r in found)

    async def scenario() -> FlowRow:
        async with running(config):
            for i, name in enumerate(("S2B-1", "S2B-12", "S2B-2")):
                drop(config, f"f{i}.xml", invoice(name))
            await until(
                lambda: any(lot.state == "sent" for lot in lots_of(config)), what="lot sent"
            )
            (lot,) = lots_of(config)
            aife = (
                f"<AIFEStatut><IdFlux>{lot.remote_name}</IdFlux><Facture><NumeroFacture>S2B-2"
                f"</NumeroFacture><CodeStatut>05</CodeStatut><Horodatage>{h.format(6)}"
                "</Horodatage></Facture></AIFEStatut>"
            ).encode()
            answers = [
                statut(lot, ("S2B-1", "01", h.format(1)), ("S2B-2", "01", h.format(1)), flow="96"),
                statut(lot, ("S2B-1", "11", h.format(5)), ("S2B-2", "11", h.format(5))),
                statut(lot, ("S2B-1", "01", h.format(0))),  # stale
                aife,  # a rejection after the payment: a contradiction
            ]
            for n, data in enumerate(answers, start=1):
                (sshd.download_dir / f"FEN120{n}.xml.part").write_bytes(data)
                (sshd.download_dir / f"FEN120{n}.xml.part").rename(
                    sshd.download_dir / f"FEN120{n}.xml"
                )
                await until(functools.partial(returns_done, n), what=f"return {n} applied")
            return lot

    lot = asyncio.run(scenario())
    with Journal(config) as db:
        invoices = {i["invoice_number"]: i for i in db.invoices(lot.flow_id)}
        states = [r["state"] for r in db.returns()]
    assert states == ["applied"] * 4
    assert (invoices["S2B-1"]["status_code"], invoices["S2B-1"]["rejected"]) == ("11", 0)
    assert (invoices["S2B-12"]["rejected"], invoices["S2B-12"]["flow_not_received"]) == (1, 0)
    assert (invoices["S2B-2"]["status_code"], invoices["S2B-2"]["rejected"]) == ("11", 0)
    status = json.loads(Path((lot.final_path or "") + ".status.json").read_text())
    assert {i["invoice_number"]: i["status_code"] for i in status["invoices"]} == {
        "S2B-1": "11",
        "S2B-12": None,
        "S2B-2": "11",
    }
    rejected = Layout(config.gateway.data_dir).rejected(CONN)
    assert [p.name for p in rejected.glob("*.rejection.json")] == ["f1.xml.rejection.json"]
    capsys.readouterr()
    listing = ["flows", "--config", str(config.path), "--format", "json", "--status"]
    assert main([*listing, "11"]) == 0
    assert sorted(r["file"] for r in json.loads(capsys.readouterr().out)) == ["f0.xml", "f2.xml"]
    assert main([*listing, "rejected"]) == 0
    assert [r["file"] for r in json.loads(capsys.readouterr().out)] == ["f1.xml"]
