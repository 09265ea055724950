"""The daemon's periodic duties, each a loop that runs until the daemon stops.

* every :data:`REQUEUE_POLL` seconds: flows put back by ``raccord retry``, overdue receipts,
  and the STATUS line systemd shows;
* hourly: flows filed longer ago than ``[gateway] retention`` are purged;
* daily: certificates are checked against ``[gateway] warn_days``.

A round that fails is logged and tried again at the next: housekeeping never ends the daemon.
The configuration is read afresh at each round, so a reload applies at the next one.

Retention and the certificate alerts are duties (:mod:`gateway.duties`): with several nodes
sharing a journal, one node purges and one alerts. Every node still checks its certificates
for its own gauges and log. The requeue round is the dispatcher's, on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from gateway import logs
from gateway.config import Config
from gateway.duties import Duties, Duty
from gateway.flow.dispatcher import Dispatcher, Now
from gateway.journal import Call, Journal, JournalDB
from gateway.ops import certificates
from gateway.ops import retention as retention_module
from gateway.ops.alerts import Alerter
from gateway.ops.metrics import JOURNAL_PATIENCE, Metrics
from gateway.ops.systemd import notify

log = logs.get()

#: How often the journal is polled for flows put back by ``raccord retry``, and for flows whose
#: acknowledgement is overdue.
REQUEUE_POLL = 2.0
#: How often flows older than [gateway] retention are looked for.
RETENTION_PERIOD = 3600.0
#: How often certificates are checked against ``[gateway] warn_days`` (and logged).
CERTIFICATE_CHECK = 24 * 3600.0
#: The duties' names.
RETENTION_DUTY = "retention"
CERTIFICATE_DUTY = "certificates"


class Housekeeping:
    """The periodic loops, and the health of the one the dispatcher relies on."""

    def __init__(
        self, config: Callable[[], Config], *, now: Now, metrics: Metrics, alerts: Alerter
    ) -> None:
        self._config = config  # the running configuration, which a reload replaces
        self._now = now
        self.metrics = metrics
        self.alerts = alerts
        self._certificate_duty: Duty | None = None  # None: alone, this node alerts
        self._housekept_at = time.monotonic()
        self._problem: str | None = None

    # -- requeued flows, overdue receipts, status --------------------------------------------

    async def requeue_loop(self, dispatcher: Dispatcher, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), REQUEUE_POLL)
            if stopping.is_set():
                break
            try:
                await dispatcher.pick_up_requeued()
                await dispatcher.expire_receipts()
            except Exception as exc:  # e.g. the journal's disk is full: try again next round
                log.exception("gateway.housekeeping_failed")
                self._problem = f"housekeeping failed: {exc}"
            else:
                self._problem = None
            self._housekept_at = time.monotonic()
            await self.status(dispatcher)

    async def status(self, dispatcher: Dispatcher) -> None:
        """The STATUS line systemctl status shows: the queue and what is being worked on."""
        try:
            depth = await dispatcher.journal.call(Call(JournalDB.queue_depth))
        except Exception:  # the health check reports the journal; the status just says less
            notify(f"STATUS=in flight: {dispatcher.busy}")
            return
        notify(f"STATUS=queue: {depth} flow(s) not yet filed, {dispatcher.busy} in flight")

    async def dispatcher_health(self, dispatcher: Dispatcher) -> str | None:
        if dispatcher.stopping.is_set():
            return "stopping"
        if self._problem is not None:
            return self._problem
        age = time.monotonic() - self._housekept_at
        if age > 3 * REQUEUE_POLL + 5:
            return f"its housekeeping last ran {age:.0f} s ago"
        return None

    # -- retention ---------------------------------------------------------------------------

    async def retention_loop(
        self, journal: Journal, stopping: asyncio.Event, duties: Duties | None = None
    ) -> None:
        """``[gateway] retention``: purge flows filed longer ago, hourly, batch by batch (see
        :mod:`gateway.ops.retention`), by the node holding the duty."""
        duties = duties or Duties(journal, lease=self._config().journal.lease_timeout)
        async with duties.duty(RETENTION_DUTY) as duty:
            while not stopping.is_set():
                settings = self._config().gateway
                if settings.retention is None:  # off: no duty to hold (a reload may turn it on)
                    await duty.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), RETENTION_PERIOD)
                    continue
                if await duty.held():
                    try:
                        async with duty.heartbeat():
                            await self._purge(journal, settings.retention, settings.retention_files)
                    except Exception:  # the disk, a bug: never the end of the daemon
                        log.exception("journal.purge_failed", action="trying again in an hour")
                await duty.pause(stopping, RETENTION_PERIOD)

    async def _purge(self, journal: Journal, retention: float, with_files: bool) -> None:
        cutoff = (self._now() - timedelta(seconds=retention)).isoformat(timespec="milliseconds")
        total = retention_module.Purged()
        after: tuple[str, str] | None = retention_module.START
        while after is not None:
            batch = await journal.call(
                Call(retention_module.purge_batch, cutoff, after, with_files)
            )
            removed = await asyncio.to_thread(retention_module.remove_files, batch.files)
            total.add(retention_module.Purged(batch.flows, batch.returns, removed))
            after = batch.after
        if total.flows or total.returns:
            log.info(
                "journal.purged",
                before=cutoff,
                flows=total.flows,
                returns=total.returns,
                files=total.files,
            )

    # -- certificates ------------------------------------------------------------------------

    async def certificate_loop(self, stopping: asyncio.Event, duties: Duties | None = None) -> None:
        """Daily: every node checks (its gauges, its log); the duty's holder alerts."""
        if duties is None:
            return await self._certificate_rounds(stopping)
        async with duties.duty(CERTIFICATE_DUTY) as duty:
            self._certificate_duty = duty
            try:
                await self._certificate_rounds(stopping)
            finally:
                self._certificate_duty = None

    async def _certificate_rounds(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.check_certificates_now()
            duty = self._certificate_duty
            if duty is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), CERTIFICATE_CHECK)
            else:
                await duty.pause(stopping, CERTIFICATE_CHECK)

    async def check_certificates_now(self) -> None:
        """:meth:`check_certificates` in a thread, alerting for each that needs a person (on
        the node holding the certificates duty, when there is one)."""
        try:
            records = await asyncio.to_thread(self.check_certificates)
        except Exception:  # e.g. a TLS certificate file gone: say so, try again tomorrow
            log.exception("certificate.check_failed")
            return
        duty = self._certificate_duty
        if duty is not None and not await duty.held():
            return  # another node alerts
        for record in records:
            if record["state"] != "valid":
                self.alerts.certificate(record)

    def check_certificates(self) -> list[dict[str, Any]]:
        """Log every certificate that needs a person (expiring within ``warn_days``, expired,
        not yet valid) and refresh the certificate gauges."""
        config = self._config()
        records = certificates.report(config, config.gateway.warn_days, self._now())
        self.metrics.watch_certificates(records)
        for record in records:
            fields = {
                key: record[key]
                for key in ("connection", "role", "subject", "not_after", "days_left", "file")
            }
            if record["state"] == "expiring":
                log.warning("certificate.expiring", warn_days=config.gateway.warn_days, **fields)
            elif record["state"] != "valid":
                log.error(
                    f"certificate.{record['state']}",
                    consequence="the connection carries nothing until it is replaced"
                    if record["connection"] != certificates.RECEIVER
                    else "inbound TLS connections fail until it is replaced",
                    **fields,
                )
        return records


async def journal_health(journal: Journal) -> str | None:
    """None if the journal answers a ping within :data:`JOURNAL_PATIENCE`, else why not."""
    try:
        await asyncio.wait_for(journal.call(Call(JournalDB.ping)), JOURNAL_PATIENCE)
    except TimeoutError:
        return f"no answer within {JOURNAL_PATIENCE:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
