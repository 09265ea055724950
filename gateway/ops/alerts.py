"""``[alerts]``: telling a person when raccord needs one — a webhook (JSON POST) and/or e-mail.

What alerts (``kind``):

- ``flow_failed``: a flow was filed in ``error/`` (its reason, message and the retry command);
- ``invoices_rejected``: a return flow rejected invoices (Complète lots: with their collateral);
- ``return_unmatched``, ``return_unreadable``, ``return_unrecognised``: a return flow matches no
  flow, cannot be read, or holds no status raccord understands (kept in the inbox, nothing lost);
- ``return_anomaly``: a status contradicts an invoice's final one (kept in its history only);
- ``return_overdue``: flows sent longer than the connection's ``return_deadline`` ago with no
  return status;
- ``certificate``: a certificate expires within ``[gateway] warn_days``, is expired or not yet
  valid (from the daily check, so at most one reminder a day);
- ``connection_failing``: a connection's transfers have failed for longer than ``failing_for``
  without a success, and ``connection_recovered`` when one succeeds again.

Rate limit: per kind and connection, the first alert goes out at once; those that follow within
``rate_limit`` are counted and sent as one digest when the period ends. Alerts never slow or
fail the gateway: they wait in a bounded queue and are delivered by one task; a delivery that
fails is logged (``alert.failed``, with the alert) and not retried — the JSON log has it all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiohttp

from gateway import logs
from gateway.config import AlertSettings, SmtpSettings
from gateway.returns import pipeline as returns

log = logs.get()

#: Alerts waiting for delivery at most; more are dropped (and counted in the log).
QUEUE_SIZE = 1000
#: Seconds one delivery (one webhook POST, one e-mail) may take.
DELIVERY_TIMEOUT = 10.0
#: Seconds the digests still owed get at shutdown.
FLUSH_AT_STOP = 5.0


#: Return states a person must look at, with what each means.
_UNACCOUNTED = {
    "unmatched": "it names no flow raccord sent on this connection",
    "unreadable": "it cannot be read (not well-formed XML, or not readable)",
    "unrecognised": "raccord could not read any status in it, so nothing was applied",
}


@dataclass(frozen=True)
class Alert:
    kind: str
    connection: str | None
    summary: str  # one sentence a person can act on
    details: Mapping[str, Any] = field(default_factory=dict)

    def document(self, at: datetime, node: str = "") -> dict[str, Any]:
        """The alert as posted and mailed; ``node``: the node that raised it (several nodes
        may share the work; default the host name)."""
        host = socket.gethostname()
        return {
            "source": "raccord",
            "host": host,
            "node": node or host,
            "time": at.isoformat(timespec="seconds"),
            "kind": self.kind,
            "connection": self.connection,
            "summary": self.summary,
            "details": dict(self.details),
        }


@dataclass
class _Window:
    started: float
    suppressed: int = 0
    latest: Alert | None = None


class Alerter:
    """Takes alerts from the gateway (plain method calls, never blocking) and delivers them."""

    def __init__(
        self,
        settings: AlertSettings | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        node: str = "",
    ) -> None:
        self.settings = settings
        self.node = node  # ``[gateway] node_name``, said in every alert
        self._clock = clock
        self._now = now
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(QUEUE_SIZE)
        self._windows: dict[tuple[str, str | None], _Window] = {}
        self._failing_since: dict[str, float] = {}
        self._failing_told: set[str] = set()
        self.dropped = 0

    def reconfigure(self, settings: AlertSettings | None) -> None:
        self.settings = settings

    # -- what alerts ----------------------------------------------------------------------

    def flow_failed(
        self, connection: str, flow_id: str, file: str, reason: str, message: str, path: str
    ) -> None:
        self.alert(
            Alert(
                "flow_failed",
                connection,
                f"{file} on {connection} was filed in error/ ({reason}): {message}",
                {
                    "flow_id": flow_id,
                    "file": file,
                    "reason": reason,
                    "message": message,
                    "path": path,
                    "retry": f"raccord retry {flow_id}",
                },
            )
        )

    def returned(self, connection: str, file: str, outcome: returns.Outcome) -> None:
        """A return flow was received: alert if it rejected invoices, contradicted a final
        status, or could not be matched, read or understood."""
        for anomaly in outcome.anomalies:
            self.alert(
                Alert(
                    "return_anomaly",
                    connection,
                    f"return flow {file} on {connection}: {anomaly}; check the invoice in "
                    "Chorus Pro",
                    {"file": file, "return_id": outcome.return_id, "anomaly": anomaly},
                )
            )
        if outcome.state in _UNACCOUNTED:
            self.alert(
                Alert(
                    f"return_{outcome.state}",
                    connection,
                    f"return flow {file} on {connection} is {outcome.state}: "
                    f"{_UNACCOUNTED[outcome.state]}; it is kept in inbox/{connection}/ "
                    f"(raccord flows --returns)",
                    {"file": file, "return_id": outcome.return_id, "message": outcome.message},
                )
            )
        if not outcome.rejected:
            return
        collateral = (
            f", {outcome.collateral} of them only because their lot was"
            if outcome.collateral
            else ""
        )
        self.alert(
            Alert(
                "invoices_rejected",
                connection,
                f"return flow {file} on {connection} rejected {outcome.rejected} invoice(s)"
                f"{collateral}; see rejected/{connection}/",
                {
                    "file": file,
                    "return_id": outcome.return_id,
                    "flows": list(outcome.flows),
                    "rejected": outcome.rejected,
                    "collateral": outcome.collateral,
                },
            )
        )

    def returns_overdue(self, connection: str, flows: list[tuple[str, str]]) -> None:
        """Flows sent longer than ``return_deadline`` ago without any return status."""
        names = ", ".join(f"{file} ({flow_id})" for flow_id, file in flows[:10])
        more = f" and {len(flows) - 10} more" if len(flows) > 10 else ""
        self.alert(
            Alert(
                "return_overdue",
                connection,
                f"{len(flows)} flow(s) sent on {connection} have had no return within "
                f"return_deadline: {names}{more}; look them up in Chorus Pro",
                {"flows": [flow_id for flow_id, _ in flows]},
            )
        )

    def deposit_unsettled(self, connection: str, flow_id: str, kind: str, summary: str) -> None:
        """An API deposit whose outcome raccord cannot settle alone: no final report in time
        (``report_expired``), or a second incident (``report_incident``)."""
        self.alert(Alert(kind, connection, summary, {"flow_id": flow_id}))

    def certificate(self, record: Mapping[str, Any]) -> None:
        state = record["state"]
        when = {
            "expiring": f"expires in {record['days_left']} day(s), on {record['not_after']}",
            "expired": f"expired on {record['not_after']}",
            "not_yet_valid": f"is not valid before {record['not_before']}",
        }.get(state, state)
        self.alert(
            Alert(
                "certificate",
                record["connection"],
                f"{record['connection']}: {record['role']} certificate {record['subject']} {when}",
                {k: record.get(k) for k in ("role", "subject", "not_after", "days_left", "file")}
                | {"state": state},
            )
        )

    def transfer_failed(self, connection: str, reason: str, message: str) -> None:
        """One failed attempt; alerts once the connection has failed for ``failing_for``."""
        if self.settings is None:
            return
        now = self._clock()
        since = self._failing_since.setdefault(connection, now)
        if now - since >= self.settings.failing_for and connection not in self._failing_told:
            self._failing_told.add(connection)
            minutes = (now - since) / 60
            self.alert(
                Alert(
                    "connection_failing",
                    connection,
                    f"every transfer on {connection} has failed for {minutes:.0f} minutes; "
                    f"last error ({reason}): {message}",
                    {
                        "failing_for_seconds": round(now - since),
                        "reason": reason,
                        "message": message,
                    },
                )
            )

    def transfer_succeeded(self, connection: str) -> None:
        since = self._failing_since.pop(connection, None)
        if connection in self._failing_told:
            self._failing_told.discard(connection)
            down = self._clock() - since if since is not None else 0.0
            self.alert(
                Alert(
                    "connection_recovered",
                    connection,
                    f"{connection} delivers again after {down / 60:.0f} minutes of failures",
                    {"failed_for_seconds": round(down)},
                )
            )

    def alert(self, alert: Alert) -> None:
        if self.settings is None:
            return
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alert.dropped", dropped=self.dropped, **_fields(alert))

    # -- delivery -------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver alerts until ``stopping``; then what is queued and the digests still owed,
        for at most FLUSH_AT_STOP seconds."""
        stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
        getter: asyncio.Future[Any] = asyncio.ensure_future(self._queue.get())
        try:
            while not stopping.is_set():
                await asyncio.wait({stop, getter}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    await self._take(getter.result())
                    getter = asyncio.ensure_future(self._queue.get())
                await self._digests(force=False)
        finally:
            stop.cancel()
            getter.cancel()
        leftover = getter.result() if getter.done() and not getter.cancelled() else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(leftover), FLUSH_AT_STOP)

    async def _drain(self, leftover: Alert | None) -> None:
        if leftover is not None:
            await self._take(leftover)
        while not self._queue.empty():
            await self._take(self._queue.get_nowait())
        await self._digests(force=True)

    async def _take(self, alert: Alert) -> None:
        key = (alert.kind, alert.connection)
        window = self._windows.get(key)
        rate_limit = self.settings.rate_limit if self.settings else 0.0
        if window is not None and self._clock() - window.started < rate_limit:
            window.suppressed += 1
            window.latest = alert
            return
        self._windows[key] = _Window(self._clock())
        await self.deliver(alert)

    async def _digests(self, *, force: bool) -> None:
        rate_limit = self.settings.rate_limit if self.settings else 0.0
        for key, window in list(self._windows.items()):
            if window.suppressed and (force or self._clock() - window.started >= rate_limit):
                latest = window.latest
                assert latest is not None
                digest = Alert(
                    latest.kind,
                    latest.connection,
                    f"{window.suppressed} more {latest.kind} alert(s)"
                    f"{' on ' + latest.connection if latest.connection else ''} in the last "
                    f"{rate_limit / 60:.0f} minutes; the latest: {latest.summary}",
                    {"suppressed": window.suppressed, "latest": dict(latest.details)},
                )
                self._windows[key] = _Window(self._clock())
                await self.deliver(digest)

    async def deliver(self, alert: Alert) -> None:
        """Send ``alert`` by every configured channel now (no rate limit); failures logged."""
        settings = self.settings
        if settings is None:
            return
        document = alert.document(self._now(), self.node)
        channels: list[str] = []
        if settings.webhook_url is not None:
            channels.append("webhook")
            try:
                await self._post(settings, document)
            except Exception as exc:
                log.error(
                    "alert.failed", via="webhook", error=str(exc) or repr(exc), **_fields(alert)
                )
                channels.pop()
        if settings.smtp is not None:
            channels.append("email")
            try:
                await asyncio.to_thread(_send_mail, settings.smtp, document)
            except Exception as exc:
                log.error(
                    "alert.failed", via="email", error=str(exc) or repr(exc), **_fields(alert)
                )
                channels.pop()
        if channels:
            log.info("alert.sent", via=channels, **_fields(alert))

    async def _post(self, settings: AlertSettings, document: dict[str, Any]) -> None:
        assert settings.webhook_url is not None
        headers = {"User-Agent": "raccord"}
        if settings.webhook_token is not None:
            headers["Authorization"] = f"Bearer {settings.webhook_token.value}"
        timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(settings.webhook_url, json=document, headers=headers) as answer,
        ):
            if answer.status >= 300:
                raise RuntimeError(
                    f"{settings.webhook_url} answered HTTP {answer.status} {answer.reason}"
                )


def _fields(alert: Alert) -> dict[str, Any]:
    return {"kind": alert.kind, "connection": alert.connection, "summary": alert.summary}


def _send_mail(smtp: SmtpSettings, document: dict[str, Any]) -> None:
    """One e-mail (blocking: runs on a worker thread)."""
    message = EmailMessage()
    subject = f"[raccord] {document['summary']}"
    message["Subject"] = subject if len(subject) <= 150 else subject[:149] + "…"
    message["From"] = smtp.sender
    message["To"] = ", ".join(smtp.recipients)
    lines = [document["summary"], ""]
    lines += [f"{key}: {value}" for key, value in document["details"].items()]
    lines += ["", f"host: {document['host']}  node: {document['node']}  time: {document['time']}"]
    lines += ["", "JSON:"]
    lines.append(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    message.set_content("\n".join(lines))
    with smtplib.SMTP(smtp.host, smtp.port, timeout=DELIVERY_TIMEOUT) as client:
        if smtp.starttls:
            client.starttls(context=ssl.create_default_context())
        if smtp.username is not None and smtp.password is not None:
            client.login(smtp.username, smtp.password.value)
        client.send_message(message)
