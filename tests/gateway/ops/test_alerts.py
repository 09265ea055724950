"""[alerts]: a flow filed in error/, rejected invoices, certificates and a connection failing
for too long reach a local webhook and a local SMTP server; the rate limit sums the rest in one
digest; a channel that fails is logged and changes nothing else."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway import config as config_module
from gateway.config import AlertSettings, ConfigError
from gateway.ops.alerts import Alert, Alerter
from tests.gateway.harness import drop, filed, memory_config, rows, running, until
from tests.gateway.receivers import Mailbox, Webhook


def alerts_section(url: str, smtp_port: int, extra: str = "") -> str:
    return f"""
[alerts]
webhook_url = "{url}"
webhook_token = {{ env = "RACCORD_TEST_HOOK_TOKEN" }}
rate_limit = "1h"
{extra}

[alerts.smtp]
host = "127.0.0.1"
port = {smtp_port}
from = "raccord@gateway.test"
to = ["ops@company.test", "oncall@company.test"]
"""


def test_a_flow_filed_in_error_reaches_the_webhook_and_the_mailbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RACCORD_TEST_HOOK_TOKEN", "s3cret-token")
    bucket = f"alerts-{time.monotonic_ns()}"
    hook, mailbox = Webhook(), Mailbox()

    async def scenario() -> list[MutableMapping[str, Any]]:
        url, port = await hook.start(), await mailbox.start()
        config = memory_config(tmp_path, bucket)
        config.path.write_text(config.path.read_text() + alerts_section(url, port))
        config = config_module.load(config.path)
        try:
            with capture_logs() as events:
                async with running(config):
                    drop(config, "notes.txt", b"not an invoice at all")
                    await until(filed(config, 1), what="the file filed in error/")
                    await until(lambda: bool(hook.received and mailbox.messages), what="the alerts")
        finally:
            await hook.stop()
            await mailbox.stop()
        return events

    events = asyncio.run(scenario())
    [row] = rows(config_module.load(tmp_path / "raccord.toml"))
    [document] = hook.received
    assert document["kind"] == "flow_failed" and document["connection"] == "qualif-mem"
    assert document["node"] == config_module.load(tmp_path / "raccord.toml").gateway.node_name
    assert document["details"]["flow_id"] == row.flow_id
    assert document["details"]["reason"] == row.reason == "unknown_format"
    assert document["details"]["retry"] == f"raccord retry {row.flow_id}"
    assert document["summary"].startswith("notes.txt on qualif-mem was filed in error/")
    assert hook.headers[0]["Authorization"] == "Bearer s3cret-token"
    [message] = mailbox.messages
    assert message["Subject"] == f"[raccord] {document['summary']}"[:150]
    assert mailbox.envelopes == [
        ("raccord@gateway.test", ["ops@company.test", "oncall@company.test"])
    ]
    assert f"raccord retry {row.flow_id}" in message.get_content()
    [sent] = [e for e in events if e["event"] == "alert.sent"]
    assert sent["via"] == ["webhook", "email"]
    assert "s3cret-token" not in repr(events)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def delivering(alerter: Alerter, hook: Webhook, work: Any) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(alerter.run(stopping))
    try:
        await work()
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


def test_the_rate_limit_sends_the_first_at_once_and_a_digest_of_the_rest_later() -> None:
    hook, clock = Webhook(), Clock()

    async def scenario() -> None:
        url = await hook.start()
        alerter = Alerter(AlertSettings(webhook_url=url, rate_limit=600.0), clock=clock)

        async def work() -> None:
            for n in range(5):
                alerter.flow_failed("qualif-mem", f"F{n}", f"f{n}.xml", "too_large", "big", "/e")
            alerter.flow_failed("other", "G0", "g0.xml", "duplicate", "again", "/e")
            await until(lambda: len(hook.received) == 2, what="the first of each connection")
            clock.now += 601  # the period ends: the 4 held back go out as one digest
            await until(lambda: len(hook.received) == 3, what="the digest")

        try:
            await delivering(alerter, hook, work)
        finally:
            await hook.stop()

    asyncio.run(scenario())
    first, other, digest = hook.received
    assert first["details"]["flow_id"] == "F0" and other["connection"] == "other"
    assert digest["connection"] == "qualif-mem"
    assert digest["summary"].startswith("4 more flow_failed alert(s) on qualif-mem in the last 10")
    assert digest["details"]["suppressed"] == 4
    assert digest["details"]["latest"]["flow_id"] == "F4"


def test_a_connection_failing_longer_than_failing_for_alerts_once_then_recovers() -> None:
    hook, clock = Webhook(), Clock()

    async def scenario() -> None:
        url = await hook.start()
        settings = AlertSettings(webhook_url=url, rate_limit=0.0, failing_for=1800.0)
        alerter = Alerter(settings, clock=clock)

        async def work() -> None:
            alerter.transfer_failed("qualif-sftp", "connect_failed", "refused")
            clock.now += 1000
            alerter.transfer_failed("qualif-sftp", "connect_failed", "refused")
            clock.now += 900  # 31 minutes of failures
            alerter.transfer_failed("qualif-sftp", "timeout", "no answer")
            clock.now += 60
            alerter.transfer_failed("qualif-sftp", "timeout", "no answer")  # told already
            await until(lambda: len(hook.received) == 1, what="the failing alert")
            alerter.transfer_succeeded("qualif-sftp")
            await until(lambda: len(hook.received) == 2, what="the recovery")

        try:
            await delivering(alerter, hook, work)
        finally:
            await hook.stop()

    asyncio.run(scenario())
    failing, recovered = hook.received
    assert failing["kind"] == "connection_failing"
    assert failing["summary"] == (
        "every transfer on qualif-sftp has failed for 32 minutes; last error (timeout): no answer"
    )
    assert recovered["kind"] == "connection_recovered"
    assert recovered["details"]["failed_for_seconds"] == 1960


def test_a_failing_channel_is_logged_and_the_other_still_delivers() -> None:
    hook, mailbox = Webhook(status=500), Mailbox()

    async def scenario() -> list[MutableMapping[str, Any]]:
        url, port = await hook.start(), await mailbox.start()
        from gateway.config import SmtpSettings

        smtp = SmtpSettings("127.0.0.1", port, "raccord@gateway.test", ("ops@company.test",))
        alerter = Alerter(AlertSettings(webhook_url=url, smtp=smtp))
        try:
            with capture_logs() as events:
                alerter.flow_failed("c", "F1", "f.xml", "remote_rejected", "no", "/e")
                await delivering(alerter, hook, lambda: until(lambda: bool(mailbox.messages)))
        finally:
            await hook.stop()
            await mailbox.stop()
        return events

    events = asyncio.run(scenario())
    [failed] = [e for e in events if e["event"] == "alert.failed"]
    assert failed["via"] == "webhook" and "answered HTTP 500" in failed["error"]
    [sent] = [e for e in events if e["event"] == "alert.sent"]
    assert sent["via"] == ["email"]


def test_an_unreachable_mail_server_is_an_error_in_the_log_not_a_crash() -> None:
    from gateway.config import SmtpSettings
    from tests.e2e.sshd import free_port

    smtp = SmtpSettings("127.0.0.1", free_port(), "raccord@gateway.test", ("ops@company.test",))
    alerter = Alerter(AlertSettings(smtp=smtp))

    async def scenario() -> list[MutableMapping[str, Any]]:
        with capture_logs() as events:
            alerter.certificate(
                {
                    "connection": "qualif-as2",
                    "role": "partner",
                    "subject": "CN=CTAIFEP",
                    "state": "expiring",
                    "days_left": 9,
                    "not_after": "2026-12-02T00:00:00+00:00",
                    "not_before": "2025-12-02T00:00:00+00:00",
                    "file": "/etc/raccord/partners/aife.p7b",
                }
            )
            stopping = asyncio.Event()
            stopping.set()  # delivers what is queued, then returns
            await alerter.run(stopping)
        return events

    [failed] = [e for e in asyncio.run(scenario()) if e["event"] == "alert.failed"]
    assert failed["via"] == "email" and failed["kind"] == "certificate"
    assert failed["summary"] == (
        "qualif-as2: partner certificate CN=CTAIFEP expires in 9 day(s), on "
        "2026-12-02T00:00:00+00:00"
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[alerts]\nrate_limit = "5m"\n', r"alerts.webhook_url: \[alerts\] needs webhook_url"),
        ('[alerts]\nwebhook_url = "hooks.example"\n', r"expected an http:// or https:// URL"),
        (
            '[alerts.smtp]\nfrom = "r@x.test"\nto = ["not-an-address"]\n',
            r"alerts.smtp.to: expected e-mail addresses",
        ),
        ('[alerts]\nwebhook_ulr = "http://x/"\n', r"did you mean 'webhook_url'"),
    ],
)
def test_alert_settings_are_validated(tmp_path: Path, section: str, expected: str) -> None:
    config = memory_config(tmp_path, "unused")
    config.path.write_text(config.path.read_text() + "\n" + section)
    with pytest.raises(ConfigError, match=expected):
        config_module.load(config.path)


def test_without_alerts_nothing_is_queued() -> None:
    alerter = Alerter(None)
    alerter.flow_failed("c", "F1", "f.xml", "too_large", "big", "/e")
    alerter.transfer_failed("c", "timeout", "slow")
    assert alerter._queue.empty() and not alerter._failing_since


def test_the_commented_example_loads_once_uncommented(tmp_path: Path) -> None:
    example = Path(__file__).parents[3] / "config" / "raccord.example.toml"
    text = example.read_text()
    start = text.index("# [alerts]")
    block = "\n".join(line[2:] for line in text[start:].splitlines())
    path = tmp_path / "raccord.toml"
    path.write_text(text[:start] + block + "\n")
    alerts = config_module.load(path).alerts
    assert alerts is not None and alerts.smtp is not None
    assert (alerts.rate_limit, alerts.failing_for) == (900.0, 1800.0)
    assert alerts.smtp.recipients == ("ops@example.com",)


def test_a_return_flow_rejecting_an_invoice_alerts(tmp_path: Path) -> None:
    from protocols.testing import memory
    from tests.gateway.returns.test_returns import cpp_statut, invoice

    bucket = f"alerts-returns-{time.monotonic_ns()}"
    memory.BUCKETS.pop(bucket, None)
    hook = Webhook()

    async def scenario() -> None:
        url = await hook.start()
        config = memory_config(tmp_path, bucket, memory_extra='poll_interval = "100ms"')
        config.path.write_text(config.path.read_text() + f'\n[alerts]\nwebhook_url = "{url}"\n')
        config = config_module.load(config.path)
        try:
            async with running(config):
                drop(config, "facture.xml", invoice("F-200"))
                await until(filed(config, 1), what="the invoice sent")
                statut = cpp_statut(invoices=(("F-200", "05"),))
                memory.bucket(bucket).returns["FEN1200A_9.xml"] = statut
                await until(lambda: bool(hook.received), what="the alert")
        finally:
            await hook.stop()

    asyncio.run(scenario())
    [document] = hook.received
    assert document["kind"] == "invoices_rejected"
    assert document["summary"] == (
        "return flow FEN1200A_9.xml on qualif-mem rejected 1 invoice(s); see rejected/qualif-mem/"
    )
    assert document["details"]["rejected"] == 1 and document["details"]["collateral"] == 0


class Recorder(Alerter):
    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[Alert] = []

    def alert(self, alert: Alert) -> None:
        self.sent.append(alert)


@pytest.mark.parametrize("state", ["unmatched", "unreadable", "unrecognised"])
def test_a_return_not_accounted_for_alerts(state: str) -> None:
    """Every return accounted for: one that matches no flow, cannot be read, or holds no
    status raccord understands reaches a person, not only the log."""
    from gateway.returns.pipeline import Outcome

    recorder = Recorder()
    recorder.returned("qualif-mem", "FEN1201A_1.xml", Outcome("R1", state, (), 0, 0, "why"))
    (alert,) = recorder.sent
    assert alert.kind == f"return_{state}" and alert.connection == "qualif-mem"
    assert alert.summary.startswith(f"return flow FEN1201A_1.xml on qualif-mem is {state}: ")
    assert "inbox/qualif-mem/" in alert.summary and alert.details["message"] == "why"


def test_an_anomaly_alerts_and_an_applied_return_without_rejection_does_not() -> None:
    from gateway.returns.pipeline import Outcome

    recorder = Recorder()
    recorder.returned("c", "f.xml", Outcome("R1", "applied", ("F1",), 0, 0, ""))
    recorder.returned("c", "f.xml", Outcome("R1", "duplicate", (), 0, 0, ""))
    assert recorder.sent == []
    recorder.returned(
        "c", "f.xml", Outcome("R2", "applied", ("F1",), 0, 0, "", anomalies=("contradiction",))
    )
    (alert,) = recorder.sent
    assert alert.kind == "return_anomaly" and "contradiction" in alert.summary
