"""Integration reports asked of an API partner (a scripted source on the memory connection):
when they are asked, when the gateway gives up, what it applies, and the one resend."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.returns import PISTE_INVOICES_FORMAT, PISTE_REPORT_FORMAT
from gateway.config import Config
from gateway.duties import Duties
from gateway.folders import Layout
from gateway.journal import FlowRow, Journal, JournalDB, journal_target
from gateway.ops.alerts import Alert, Alerter
from gateway.returns.reports import Reporter, journal_resend
from protocols.base import Capabilities, Report
from protocols.errors import RemoteBusy
from protocols.testing import memory
from tests.gateway.harness import answer_lost_after, deliver, memory_config, until
from tests.gateway.returns.test_returns import invoice

_buckets = itertools.count()
CONN = "qualif-mem"


class Scripted:
    """Answers from a list (a Report, or an exception to raise); the last one repeats."""

    def __init__(self, *answers: Report | Exception, deadline: float = 3600.0) -> None:
        self.answers = list(answers)
        self.asked: list[Mapping[str, Any]] = []
        self.report_interval = 0.0
        self.report_max_interval = 8.0
        self.report_deadline = deadline

    async def report(self, receipt: Mapping[str, Any]) -> Report:
        self.asked.append(receipt)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def final(state: str, remote_name: str, errors: tuple[str, ...] = ()) -> Report:
    answer = {
        "codeRetour": 0,
        "etatCourantDepotFlux": state,
        "listeErreurDP": [{"numeroDP": n, "libelleErreurDP": f"{n}: refusée"} for n in errors],
    }
    document = {"format": PISTE_REPORT_FORMAT, "numeroFluxDepot": "DF1", "nomFichier": remote_name}
    text = json.dumps({**document, "answer": answer}).encode()
    return Report(state, True, text, f"CR_{state}.json", resend=state == "IN_INCIDENTE")


def setup(tmp_path: Path) -> tuple[Config, FlowRow]:
    bucket = f"rep-{next(_buckets)}"
    memory.BUCKETS.pop(bucket, None)
    config = memory_config(tmp_path, bucket)
    (row,) = deliver(config, {"facture.xml": invoice("F-100")})
    return config, row


class Recorded(Alerter):
    """The alerts the reporter raises, kept instead of delivered."""

    def __init__(self) -> None:
        super().__init__(None)
        self.raised: list[Alert] = []

    def alert(self, alert: Alert) -> None:
        self.raised.append(alert)


async def rounds(
    config: Config,
    source: Scripted,
    count: int,
    alerts: Alerter | None = None,
    journal_type: type[Journal] = Journal,
) -> list[int]:
    journal = journal_type(Layout(config.gateway.data_dir).journal)
    await journal.open()
    try:
        reporter = Reporter(config, journal, {CONN: source}, alerts)
        done = []
        for _ in range(count):
            done.append(await reporter.round(CONN, source))
        return done
    finally:
        await journal.close()


def deposit(config: Config, flow_id: str) -> dict[str, Any]:
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        found = db.deposit(flow_id)
        assert found is not None
        return found
    finally:
        db.close()


def due_now(config: Config, flow_id: str) -> None:
    """Let the wait before the next question pass."""
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        db.update_deposit(flow_id, next_at="2000-01-01T00:00:00.000+00:00")
    finally:
        db.close()


def test_a_deposit_is_asked_about_with_a_doubling_wait_until_final(tmp_path: Path) -> None:
    config, row = setup(tmp_path)
    source = Scripted(Report("IN_RECU", False), Report("IN_EN_COURS_TRAITEMENT_CPP", False))
    source.report_interval, source.report_max_interval = 60.0, 200.0

    asyncio.run(rounds(config, source, 2))
    first = deposit(config, row.flow_id)
    assert first["polls"] == 0 and source.asked == []  # not before report_interval
    sent, asked_at = (datetime.fromisoformat(first[k]) for k in ("sent_at", "next_at"))
    assert asked_at - sent == timedelta(seconds=60)
    waits = []
    for _ in range(4):
        due_now(config, row.flow_id)
        before = datetime.now(UTC)
        asyncio.run(rounds(config, source, 1))
        waits.append(
            round(
                (
                    datetime.fromisoformat(deposit(config, row.flow_id)["next_at"]) - before
                ).total_seconds()
            )
        )
    assert waits == [60, 120, 200, 200]  # doubling, capped at report_max_interval
    later = deposit(config, row.flow_id)
    assert (later["polls"], later["state"], later["outcome"]) == (
        4,
        "IN_EN_COURS_TRAITEMENT_CPP",
        None,
    )
    assert source.asked[0]["remote_name"] == row.remote_name
    source.answers = [final("IN_INTEGRE", row.remote_name or "")]
    due_now(config, row.flow_id)
    assert asyncio.run(rounds(config, source, 2)) == [1, 0]
    done = deposit(config, row.flow_id)
    assert (done["outcome"], done["state"], done["polls"]) == ("reported", "IN_INTEGRE", 5)
    due_now(config, row.flow_id)
    asyncio.run(rounds(config, source, 1))
    assert len(source.asked) == 5  # never asked again once final


def test_a_rejected_report_rejects_the_invoice_it_names(tmp_path: Path) -> None:
    config, row = setup(tmp_path)
    source = Scripted(final("IN_REJETE", row.remote_name or "", errors=("F-100",)))
    assert asyncio.run(rounds(config, source, 1)) == [1]
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        (invoice_row,) = db.invoices(row.flow_id)
        assert invoice_row["rejected"] == 1 and "F-100: refusée" in invoice_row["reasons"]
        (ret,) = db.returns()
        assert ret["kind"] == "piste_report" and ret["state"] == "applied"
    finally:
        db.close()


def test_a_deposit_never_final_is_given_up_after_the_deadline(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, row = setup(tmp_path)
    for answer in (Report("IN_RECU", False), RemoteBusy("HTTP 503")):
        source = Scripted(answer, deadline=0.0)
        alerts = Recorded()
        asyncio.run(rounds(config, source, 3, alerts))
        assert deposit(config, row.flow_id)["outcome"] == "expired"
        (raised,) = alerts.raised
        assert raised.kind == "report_expired" and "suivi des flux" in raised.summary
        assert len(source.asked) <= 1
        assert capsys.readouterr().out.count("report.expired") == (1 if source.asked else 0)
        db = JournalDB(Layout(config.gateway.data_dir).journal)
        db.update_deposit(row.flow_id, outcome=None)  # again, with the other answer
        db.close()


def test_an_incident_is_sent_again_once_only(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, row = setup(tmp_path)
    source = Scripted(final("IN_INCIDENTE", row.remote_name or ""))
    asyncio.run(rounds(config, source, 1))
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        (again,) = [r for r in db.search() if r.resubmit_of == row.flow_id]
        assert again.state == "claimed" and again.forced == 1
        assert Path(again.spool_path).read_bytes() == Path(row.final_path or "").read_bytes()
        # the resend is itself in incident: nothing more is sent, a person is told
        for step in ("queued", "sending", "delivered"):
            db.transition(again.flow_id, step)
        db.transition(
            again.flow_id,
            "sent",
            receipt=json.dumps(
                {"protocol": "memory", "partner_answer": {}, "sent_at": row.updated_at}
            ),
        )
    finally:
        db.close()
    alerts = Recorded()
    asyncio.run(rounds(config, source, 1, alerts))
    assert [a.kind for a in alerts.raised] == ["report_incident"]
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        assert len([r for r in db.search() if r.resubmit_of is not None]) == 1
    finally:
        db.close()
    out = capsys.readouterr().out
    assert out.count("report.resent") == 1 and out.count("report.incident") == 1


def test_a_flow_sent_over_another_protocol_is_looked_at_once_and_never_asked_about(
    tmp_path: Path,
) -> None:
    config, row = setup(tmp_path)
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        receipt = json.loads(db.get(row.flow_id).receipt or "{}")  # type: ignore[union-attr]
        receipt["protocol"] = "sftp"  # sent before the connection moved to the API
        db._db.execute(
            "UPDATE flows SET receipt=? WHERE flow_id=?", (json.dumps(receipt), row.flow_id)
        )
    finally:
        db.close()
    source = Scripted(final("IN_INTEGRE", row.remote_name or ""))
    assert asyncio.run(rounds(config, source, 2)) == [0, 0]
    assert source.asked == []
    assert deposit(config, row.flow_id)["outcome"] == "not_followed"


def test_an_incident_whose_sent_copy_is_gone_says_so_and_sends_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, row = setup(tmp_path)
    Path(row.final_path or "").unlink()  # removed from sent/ by hand
    source = Scripted(final("IN_INCIDENTE", row.remote_name or ""))
    alerts = Recorded()
    asyncio.run(rounds(config, source, 1, alerts))
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        assert [r for r in db.search() if r.resubmit_of is not None] == []
    finally:
        db.close()
    assert list(Layout(config.gateway.data_dir).spool(CONN).iterdir()) == []  # no copy left
    out = capsys.readouterr().out
    assert "report.resend_failed" in out and "report.incident" not in out
    assert [a.kind for a in alerts.raised] == ["report_incident"]
    assert "drop its file again by hand" in alerts.raised[0].summary


def test_a_resend_journaled_whose_answer_was_lost_keeps_its_copy(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The journal process died after recording the resend: the new flow needs its copy."""
    config, row = setup(tmp_path)
    source = Scripted(final("IN_INCIDENTE", row.remote_name or ""))
    journal = answer_lost_after(journal_resend)
    asyncio.run(rounds(config, source, 1, journal_type=journal))
    assert journal.lost == 1  # type: ignore[attr-defined]
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        (again,) = [r for r in db.search() if r.resubmit_of == row.flow_id]
        assert again.state == "claimed"
        assert Path(again.spool_path).read_bytes() == Path(row.final_path or "").read_bytes()
    finally:
        db.close()
    out = capsys.readouterr().out
    assert "report.resent" in out and "report.resend_failed" not in out


def test_invoices_are_followed_until_final_and_then_never_asked_about(tmp_path: Path) -> None:
    config, row = setup(tmp_path)

    class Following(Scripted):
        capabilities = Capabilities(integration_reports=True, invoice_lifecycle=True)
        lifecycle_interval = 60.0
        lifecycle_deadline = 3600.0

        def __init__(self) -> None:
            super().__init__(final("IN_INTEGRE", row.remote_name or ""))
            self.searched = 0

        async def lifecycle(self, receipt: Mapping[str, Any]) -> Report:
            self.searched += 1
            words = "MISE_A_DISPOSITION" if self.searched == 1 else "MISE_EN_PAIEMENT"
            answer = {"listeFactures": [{"numeroFacture": "F-100", "statut": words}]}
            document = {"format": PISTE_INVOICES_FORMAT, "nomFichier": row.remote_name}
            text = json.dumps({**document, "answer": answer}).encode()
            return Report(f"F-100={words}", self.searched > 1, text, "FACTURES.json")

    source = Following()

    async def follow() -> list[int]:
        journal = Journal(Layout(config.gateway.data_dir).journal)
        await journal.open()
        try:
            reporter = Reporter(config, journal, {CONN: source})
            await reporter.round(CONN, source)
            applied = []
            for _ in range(3):
                due_later(config, row.flow_id)
                applied.append(await reporter.lifecycles(CONN, source))
            return applied
        finally:
            await journal.close()

    assert asyncio.run(follow()) == [1, 1, 0]
    assert source.searched == 2  # final at the second search: not asked a third time
    found = deposit(config, row.flow_id)
    assert (found["lifecycle_outcome"], found["lifecycle_state"]) == (
        "final",
        "F-100=MISE_EN_PAIEMENT",
    )
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        (invoice_row,) = db.invoices(row.flow_id)
        assert (invoice_row["status_code"], invoice_row["final"]) == ("11", 1)
    finally:
        db.close()


def due_later(config: Config, flow_id: str) -> None:
    """Let the wait before the next life-cycle question pass."""
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        db._db.execute(
            "UPDATE deposits SET lifecycle_next=? WHERE flow_id=? AND lifecycle_next IS NOT NULL",
            ("2000-01-01T00:00:00.000+00:00", flow_id),
        )
    finally:
        db.close()


def test_two_nodes_ask_about_each_deposit_from_one_node_only(tmp_path: Path) -> None:
    """Both nodes run the report loop of the connection over one journal: the duty's holder
    asks, the other never does (PISTE is not asked twice per round)."""
    config, row = setup(tmp_path)
    sources = {node: Scripted(Report("IN_RECU", False)) for node in ("node-a", "node-b")}

    async def main() -> None:
        path = Layout(config.gateway.data_dir).journal
        journals = {node: Journal(path, node=node) for node in sources}
        stopping = asyncio.Event()
        for journal in journals.values():
            await journal.open()
        try:
            loops = [
                asyncio.create_task(
                    Reporter(
                        config,
                        journals[node],
                        {CONN: source},
                        duties=Duties(journals[node], lease=5.0),
                    ).run(stopping)
                )
                for node, source in sources.items()
            ]
            await until(
                lambda: sum(len(s.asked) for s in sources.values()) >= 5, what="five questions"
            )
            stopping.set()
            await asyncio.gather(*loops)
        finally:
            for journal in journals.values():
                await journal.close()

    asyncio.run(main())
    asked = sorted(len(source.asked) for source in sources.values())
    assert asked[0] == 0 and asked[1] >= 5
    assert deposit(config, row.flow_id)["state"] == "IN_RECU"


def test_on_a_shared_journal_a_report_is_stored_there_under_the_node(
    tmp_path: Path, postgres_url: str
) -> None:
    """On a shared PostgreSQL journal the report a node fetched is journaled in that database
    (every node sees it; nothing in data_dir's SQLite file)."""
    bucket = f"rep-{next(_buckets)}"
    memory.BUCKETS.pop(bucket, None)
    shared = memory_config(tmp_path, bucket)
    config = replace(
        shared,
        gateway=replace(shared.gateway, node_name="node-r"),
        journal=replace(shared.journal, url=postgres_url),
    )
    (row,) = deliver(config, {"facture.xml": invoice("F-200")})
    target = journal_target(config, Layout(config.gateway.data_dir))
    source = Scripted(final("IN_REJETE", row.remote_name or "", errors=("F-200",)))

    async def one_round() -> int:
        journal = Journal(target, node="node-r")
        await journal.open()
        try:
            return await Reporter(config, journal, {CONN: source}).round(CONN, source)
        finally:
            await journal.close()

    assert asyncio.run(one_round()) == 1
    db = JournalDB(target)
    try:
        (ret,) = db.returns()
        assert ret["kind"] == "piste_report" and ret["state"] == "applied"
        (invoice_row,) = db.invoices(row.flow_id)
        assert invoice_row["rejected"] == 1
    finally:
        db.close()
    assert not Layout(config.gateway.data_dir).journal.exists()
