"""Integration reports asked of an API partner (a scripted source on the memory connection):
when they are asked, when the gateway gives up, what it applies, and the one resend."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flows.returns import PISTE_REPORT_FORMAT
from gateway.alerts import Alert, Alerter
from gateway.folders import Layout
from gateway.journal import Journal, JournalDB
from gateway.reports import Reporter
from protocols import memory
from protocols.base import Report
from protocols.errors import RemoteBusy
from tests.gateway.harness import deliver, memory_config
from tests.gateway.test_returns import invoice

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


def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
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


async def rounds(config, source: Scripted, count: int, alerts: Alerter | None = None) -> list[int]:  # type: ignore[no-untyped-def]
    journal = Journal(Layout(config.gateway.data_dir).journal)
    await journal.open()
    try:
        reporter = Reporter(config, journal, {CONN: source}, alerts)  # type: ignore[dict-item]
        done = []
        for _ in range(count):
            done.append(await reporter.round(CONN, source))  # type: ignore[arg-type]
            await asyncio.sleep(0.01)
        return done
    finally:
        await journal.close()


def deposit(config, flow_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    db = JournalDB(Layout(config.gateway.data_dir).journal)
    try:
        found = db.deposit(flow_id)
        assert found is not None
        return found
    finally:
        db.close()


def due_now(config, flow_id: str) -> None:  # type: ignore[no-untyped-def]
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
    capsys,  # type: ignore[no-untyped-def]
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
    capsys,  # type: ignore[no-untyped-def]
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
        db.transition(
            again.flow_id,
            "sent",
            expect=("claimed",),
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
