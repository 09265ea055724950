"""The daemon's certificate watch: a daily log line (and gauge) for every certificate that
needs a person, and a connection blocked with a clear error while one of its certificates is
outside its validity period."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from structlog.testing import capture_logs

from gateway.daemon import Gateway
from gateway.duties import Duties
from gateway.folders import Layout
from gateway.housekeeping import Housekeeping
from gateway.journal import Journal
from gateway.ops.alerts import Alert, Alerter
from gateway.ops.metrics import Metrics
from gateway.sandbox import pki
from protocols.certs import KeyPair
from tests.as2_config import write_as2_config
from tests.conftest import sample
from tests.gateway.harness import drop, filed, rows, running, until
from tests.gateway.ops.test_metrics import parse


def test_an_expired_partner_certificate_blocks_the_connection_before_any_attempt(
    tmp_path: Path, our_keys: KeyPair
) -> None:
    past = datetime.now(UTC) - timedelta(days=400)
    expired = pki.issue("CTAIFEP old", valid_from=past, days=30)
    config = write_as2_config(tmp_path, our_keys, expired)  # its url: nothing listens there

    async def scenario() -> None:
        async with running(config):
            drop(config, "invoice.xml", sample("ubl-invoice.xml"))
            await until(filed(config, 1), what="the invoice filed")

    asyncio.run(scenario())
    [row] = rows(config)
    assert (row.state, row.reason, row.attempts) == ("error", "certificate_expired", 0)
    assert row.message is not None
    assert row.message.startswith(
        "connection qualif-as2 is blocked: its partner certificate CN=CTAIFEP old,O=raccord demo ("
    )
    assert f"expired on {expired.certificate.not_valid_after_utc:%Y-%m-%d}" in row.message
    assert "raccord retry --failed" in row.message


def test_a_certificate_expiring_while_the_daemon_runs_blocks_it_from_then_on(
    tmp_path: Path, our_keys: KeyPair, partner_keys: KeyPair
) -> None:
    """The check is made at each send with the gateway's clock, not once at start."""
    config = write_as2_config(tmp_path, our_keys, partner_keys)
    later = our_keys.certificate.not_valid_after_utc + timedelta(hours=1)

    async def scenario() -> None:
        async with running(config, now=lambda: later):
            drop(config, "invoice.xml", sample("ubl-invoice.xml"))
            await until(filed(config, 1), what="the invoice filed")

    asyncio.run(scenario())
    [row] = rows(config)
    assert (row.reason, row.attempts) == ("certificate_expired", 0)
    assert row.message is not None
    assert row.message.startswith("connection qualif-as2 is blocked: its own certificate CN=")


def logged(events: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in events if e["event"] == name]


def test_the_check_logs_and_flags_what_needs_a_person_and_nothing_else(
    tmp_path: Path, our_keys: KeyPair
) -> None:
    soon = pki.issue("CTAIFEP soon", days=10)
    config = write_as2_config(tmp_path, our_keys, soon)
    gateway = Gateway(config)

    with capture_logs() as events:
        gateway.check_certificates()

    [expiring] = logged(events, "certificate.expiring")
    assert expiring["connection"] == "qualif-as2"
    assert expiring["role"] == "partner"
    assert expiring["days_left"] == 9 and expiring["warn_days"] == 30
    assert expiring["file"].endswith("partner.p7b")
    assert len([e for e in events if e["event"].startswith("certificate.")]) == 1
    attention = {
        dict(labels)["role"]: value
        for (name, labels), value in parse(
            generate_latest(gateway.metrics.registry).decode()
        ).items()
        if name == "raccord_certificate_attention"
    }
    assert attention == {"ours": 0.0, "partner": 1.0}

    # A year on, both are expired: errors that say what stops.
    a_year_on = datetime.now(UTC) + timedelta(days=400)
    with capture_logs() as events:
        Gateway(config, now=lambda: a_year_on).check_certificates()
    expired = logged(events, "certificate.expired")
    assert {e["role"] for e in expired} == {"ours", "partner"}
    assert all(e["log_level"] == "error" for e in expired)
    assert all("carries nothing" in e["consequence"] for e in expired)


class Kept(Alerter):
    """Alerts kept instead of delivered."""

    def __init__(self) -> None:
        super().__init__(None)
        self.kept: list[Alert] = []

    def alert(self, alert: Alert) -> None:
        self.kept.append(alert)


def test_with_two_nodes_each_checks_its_certificates_and_one_alerts(
    tmp_path: Path, our_keys: KeyPair
) -> None:
    """Both nodes check the certificates (their own gauges and log), but the alert goes out
    from the node holding the certificates duty only: a person is told once."""
    past = datetime.now(UTC) - timedelta(days=400)
    config = write_as2_config(tmp_path, our_keys, pki.issue("CTAIFEP old", valid_from=past))
    path = Layout(config.gateway.data_dir).journal
    nodes = {name: (Metrics(name), Kept()) for name in ("node-a", "node-b")}

    def flagged(metrics: Metrics) -> bool:
        return any(s.value == 1 for m in metrics.certificate_attention.collect() for s in m.samples)

    async def main() -> None:
        journals = [Journal(path, node=name) for name in nodes]
        stopping = asyncio.Event()
        for journal in journals:
            await journal.open()
        try:
            loops = [
                asyncio.create_task(
                    Housekeeping(
                        lambda: config, now=lambda: datetime.now(UTC), metrics=m, alerts=a
                    ).certificate_loop(stopping, Duties(journal, lease=5.0))
                )
                for journal, (m, a) in zip(journals, nodes.values(), strict=True)
            ]
            await until(
                lambda: (
                    all(flagged(m) for m, _ in nodes.values())
                    and any(a.kept for _, a in nodes.values())
                ),
                what="both nodes checked, one alerted",
            )
            stopping.set()
            await asyncio.gather(*loops)
        finally:
            for journal in journals:
                await journal.close()

    asyncio.run(main())
    alerted = sorted(len(a.kept) for _, a in nodes.values())
    assert alerted[0] == 0 and alerted[1] >= 1
