"""The running gateway: journal + senders + dispatcher + watcher, owned by one task group.

Start order: folders, journal, senders, reconciliation (unfinished flows resume, interrupted
return flows are applied), watcher and return-flow pollers, then READY for systemd. Stop
(``stopping`` set, e.g. by SIGTERM): the watcher and pollers stop taking files, in-flight
flows get ``shutdown_grace`` seconds to finish and are then cancelled (their outcome is unknown
and they resend under the same remote name at the next start), senders and journal close.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from gateway import certificates, logs
from gateway.as2_receiver import As2Receiver
from gateway.config import Config
from gateway.dispatcher import Dispatcher, Now, Sleep, utc_now
from gateway.folders import Layout
from gateway.intake import Watcher
from gateway.journal import Journal, JournalDB
from gateway.metrics import JOURNAL_PATIENCE, Metrics, MetricsServer
from gateway.polling import Poller, sources
from gateway.systemd import keep_alive, notify
from protocols import registry
from protocols.base import Sender

log = logs.get()

#: How often the journal is polled for flows put back by ``raccord retry``, and for flows whose
#: acknowledgement is overdue.
REQUEUE_POLL = 2.0
#: How often certificates are checked against ``[gateway] warn_days`` (and logged).
CERTIFICATE_CHECK = 24 * 3600.0


class Gateway:
    def __init__(self, config: Config, *, now: Now = utc_now, sleep: Sleep = asyncio.sleep) -> None:
        self.config = config
        self.layout = Layout(config.gateway.data_dir)
        self._now = now
        self._sleep = sleep
        self.dispatcher: Dispatcher | None = None
        self.watcher: Watcher | None = None
        self.as2_receiver: As2Receiver | None = None
        self.metrics = Metrics()
        self.metrics_server: MetricsServer | None = None
        self.ready = asyncio.Event()
        self._housekept_at = time.monotonic()
        self._housekeeping_problem: str | None = None

    async def run(
        self, stopping: asyncio.Event, on_ready: Callable[[], None] | None = None
    ) -> None:
        config = self.config
        names = [conn.name for conn in config.connections]
        for warning in config.warnings:
            log.warning("config.warning", message=warning)
        self.layout.create(names)
        journal = Journal(self.layout.journal)
        await journal.open()
        async with AsyncExitStack() as stack:
            stack.push_async_callback(journal.close)
            senders: dict[str, Sender] = {}
            for conn in config.connections:
                sender = registry.get(conn.protocol).create_sender(conn.settings)
                senders[conn.name] = await stack.enter_async_context(sender)
            dispatcher = Dispatcher(
                config, journal, senders, now=self._now, sleep=self._sleep, metrics=self.metrics
            )
            self.dispatcher = dispatcher
            resumed = await dispatcher.reconcile()
            await asyncio.to_thread(self._finish_returns)
            watcher = Watcher(
                {name: self.layout.outbox(name) for name in names},
                dispatcher.claim,
                rescan_interval=config.gateway.rescan_interval,
                settle_time=config.gateway.settle_time,
            )
            self.watcher = watcher
            watcher.start()
            if config.as2_receiver is not None:
                self.as2_receiver = As2Receiver(config, journal, settle=dispatcher.settle)
                await self.as2_receiver.start()
                stack.push_async_callback(self.as2_receiver.stop)
            if config.gateway.metrics is not None:
                host, port = config.gateway.metrics
                self.metrics_server = MetricsServer(
                    host,
                    port,
                    self.metrics,
                    self.layout.journal,
                    {
                        "watcher": lambda: self._watcher_health(watcher),
                        "journal": lambda: self._journal_health(journal),
                        "dispatcher": lambda: self._dispatcher_health(dispatcher),
                    },
                )
                await self.metrics_server.start()
                stack.push_async_callback(self.metrics_server.stop)
            try:
                log.info(
                    "gateway.ready",
                    connections=names,
                    resumed=resumed,
                    data_dir=str(config.gateway.data_dir),
                )
                notify("READY=1")
                self.ready.set()
                if on_ready is not None:
                    on_ready()
                poller = Poller(config, journal, sources(senders))
                async with asyncio.TaskGroup() as group:
                    group.create_task(watcher.run(stopping))
                    group.create_task(poller.run(stopping))
                    group.create_task(self._requeue_loop(dispatcher, stopping))
                    group.create_task(keep_alive(stopping))
                    group.create_task(self._certificate_loop(stopping))
                    await stopping.wait()
                    watcher.wake()
            finally:
                notify("STOPPING=1")
                watcher.stop()
                log.info("gateway.stopping", in_flight=dispatcher.busy)
                await dispatcher.drain(config.gateway.shutdown_grace)
        log.info("gateway.stopped")

    def _finish_returns(self) -> None:
        """Apply return flows a stop or crash interrupted (worker thread, own connection)."""
        from gateway import returns

        db = JournalDB(self.layout.journal)
        try:
            names = [conn.name for conn in self.config.connections]
            returns.recover(db, self.layout, names)
            for return_id in returns.pending(db):
                try:
                    returns.apply(
                        db, self.layout, return_id, resubmit=returns.resubmitting(self.config)
                    )
                except Exception:  # one bad return must not keep the gateway from starting
                    log.exception("return.apply_failed", return_id=return_id)
        finally:
            db.close()

    async def _requeue_loop(self, dispatcher: Dispatcher, stopping: asyncio.Event) -> None:
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
                self._housekeeping_problem = f"housekeeping failed: {exc}"
            else:
                self._housekeeping_problem = None
            self._housekept_at = time.monotonic()
            notify(f"STATUS=in flight: {dispatcher.busy}")

    async def _certificate_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await asyncio.to_thread(self.check_certificates)
            except Exception:  # e.g. a TLS certificate file gone: say so, try again tomorrow
                log.exception("certificate.check_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), CERTIFICATE_CHECK)

    def check_certificates(self) -> list[dict[str, Any]]:
        """Log every certificate that needs a person (expiring within ``warn_days``, expired,
        not yet valid) and refresh the certificate gauges; the daemon does this daily."""
        config, now = self.config, self._now()
        self.metrics.watch_certificates(config, now)
        records = certificates.report(config, config.gateway.warn_days, now)
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

    async def _journal_health(self, journal: Journal) -> str | None:
        try:
            await asyncio.wait_for(journal.call(lambda db: db.ping()), JOURNAL_PATIENCE)
        except TimeoutError:
            return f"no answer within {JOURNAL_PATIENCE:g} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def _watcher_health(self, watcher: Watcher) -> str | None:
        return watcher.health()

    async def _dispatcher_health(self, dispatcher: Dispatcher) -> str | None:
        if dispatcher.stopping.is_set():
            return "stopping"
        if self._housekeeping_problem is not None:
            return self._housekeeping_problem
        age = time.monotonic() - self._housekept_at
        if age > 3 * REQUEUE_POLL + 5:
            return f"its housekeeping last ran {age:.0f} s ago"
        return None
