"""The running gateway: journal + senders + dispatcher + watcher, owned by one task group.

Start order: folders, journal, senders, reconciliation (unfinished flows resume, interrupted
return flows are applied), watcher and return-flow pollers, then READY for systemd. Stop
(``stopping`` set, e.g. by SIGTERM): the watcher and pollers stop taking files, in-flight
flows get ``shutdown_grace`` seconds to finish and are then cancelled (their outcome is unknown
and they resend under the same remote name at the next start), senders and journal close.

Reload (SIGHUP, :meth:`Gateway.request_reload`): see :meth:`Gateway._reload`. What is replaced
is what reads the configuration — intake, the senders of added or changed connections, the
servers whose address moved; the journal and the dispatcher (with its flows) stay.

The listening servers are :mod:`gateway.servers`, the periodic duties (requeued flows,
retention, certificates) :mod:`gateway.housekeeping`. What one node at a time does when several
share the journal (return polling, reports, retention, alerts) runs under :mod:`gateway.duties`;
the lock on data_dir is :mod:`gateway.datadir`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from gateway import config as config_module
from gateway import logs
from gateway.config import Config, ConfigError, Connection
from gateway.datadir import LOCK_FILE, NODES_DIR, DataDirLock, DataDirLocked, lock_data_dir
from gateway.duties import Duties
from gateway.flow.dispatcher import Dispatcher, Now, Sleep, utc_now
from gateway.flow.intake import Watcher
from gateway.folders import Layout
from gateway.housekeeping import (
    CERTIFICATE_CHECK,
    REQUEUE_POLL,
    RETENTION_PERIOD,
    Housekeeping,
    journal_health,
)
from gateway.journal import Journal, JournalDB, JournalUnreachable, journal_target
from gateway.ops import certificates
from gateway.ops.alerts import Alerter
from gateway.ops.metrics import Metrics, MetricsServer
from gateway.ops.systemd import keep_alive, notify
from gateway.returns.as2_receiver import As2Receiver
from gateway.returns.polling import Poller, sources
from gateway.returns.reports import Reporter, reporters
from gateway.servers import Check, Servers, StartupError
from gateway.web.app import Console
from protocols import registry
from protocols.base import Sender

__all__ = [
    "CERTIFICATE_CHECK",
    "LOCK_FILE",
    "NODES_DIR",
    "REQUEUE_POLL",
    "RETENTION_PERIOD",
    "DataDirLock",
    "DataDirLocked",
    "Gateway",
    "StartupError",
    "lock_data_dir",
]

log = logs.get()


class Gateway:
    def __init__(self, config: Config, *, now: Now = utc_now, sleep: Sleep = asyncio.sleep) -> None:
        self.config = config
        self.layout = Layout(config.gateway.data_dir)
        self._now = now
        self._sleep = sleep
        self.dispatcher: Dispatcher | None = None
        self.watcher: Watcher | None = None
        self.metrics = Metrics(config.gateway.node_name)
        self.duties: Duties | None = None  # once the journal is open
        self.alerts = Alerter(config.alerts, now=now, node=config.gateway.node_name)
        self.journal_target = journal_target(config, self.layout)
        self.servers = Servers(self.metrics, self.alerts, self.journal_target)
        self.housekeeping = Housekeeping(
            lambda: self.config, now=now, metrics=self.metrics, alerts=self.alerts
        )
        self.ready = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._senders: dict[str, Sender] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def request_reload(self) -> None:
        """Reload the configuration file at the next turn of the loop (SIGHUP)."""
        self._reload_requested.set()

    async def run(
        self, stopping: asyncio.Event, on_ready: Callable[[], None] | None = None
    ) -> None:
        """Run until ``stopping`` is set.

        Raises:
            DataDirLocked: another gateway runs on the same data_dir.
            StartupError: data_dir cannot be created or locked.
        """
        try:
            shared = self.config.journal.url is not None
            lock = lock_data_dir(
                self.layout.data_dir, self.config.gateway.node_name if shared else None
            )
        except OSError as exc:
            raise StartupError(
                f"gateway.data_dir: cannot create the folders in {self.layout.data_dir} "
                f"({exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}); "
                "make it writable by the daemon's user (under systemd: ReadWritePaths=)"
            ) from None
        try:
            await self._run(stopping, on_ready)
        finally:
            lock.close()

    async def _run(
        self, stopping: asyncio.Event, on_ready: Callable[[], None] | None = None
    ) -> None:
        config = self.config
        names = [conn.name for conn in config.connections]
        for warning in config.warnings:
            log.warning("config.warning", message=warning)
        data_dir = config.gateway.data_dir
        try:
            self.layout.create(names)
        except OSError as exc:
            raise StartupError(
                f"gateway.data_dir: cannot create the folders in {data_dir} "
                f"({exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}); "
                "make it writable by the daemon's user (under systemd: ReadWritePaths=)"
            ) from None
        journal = Journal(self.journal_target, node=self.config.gateway.node_name)
        try:
            await journal.open()
        except JournalUnreachable as exc:  # the shared database: where, and what to check
            raise StartupError(f"journal.url: {exc}") from None
        except Exception as exc:
            raise StartupError(
                f"gateway.data_dir: the journal {self.layout.journal} cannot be opened ({exc})"
            ) from None
        async with AsyncExitStack() as stack:
            stack.push_async_callback(journal.close)
            stack.push_async_callback(self._close_senders)
            duties = self.duties = Duties(
                journal, lease=config.journal.lease_timeout, now=self._now, metrics=self.metrics
            )
            for conn in config.connections:
                self._senders[conn.name] = await _open_sender(conn)
            dispatcher = Dispatcher(
                config,
                journal,
                self._senders,
                now=self._now,
                sleep=self._sleep,
                metrics=self.metrics,
                alerts=self.alerts,
            )
            self.dispatcher = dispatcher
            stack.push_async_callback(dispatcher.close)
            await dispatcher.open()
            resumed = await dispatcher.reconcile()
            await asyncio.to_thread(self._finish_returns)
            stack.push_async_callback(self.servers.stop)
            health = self._health(journal, dispatcher)
            await self.servers.start(config, journal, dispatcher, health)
            try:
                log.info(
                    "gateway.ready",
                    connections=names,
                    resumed=resumed,
                    data_dir=str(config.gateway.data_dir),
                )
                async with asyncio.TaskGroup() as group:
                    intake = self._start_intake(config, journal, dispatcher, group)
                    notify("READY=1")
                    self.ready.set()
                    if on_ready is not None:
                        on_ready()
                    chores = self.housekeeping
                    group.create_task(chores.requeue_loop(dispatcher, stopping))
                    group.create_task(keep_alive(stopping))
                    group.create_task(chores.certificate_loop(stopping, duties))
                    group.create_task(chores.retention_loop(journal, stopping, duties))
                    group.create_task(self.alerts.run(stopping))
                    while not stopping.is_set():
                        await _first(stopping, self._reload_requested)
                        if self._reload_requested.is_set() and not stopping.is_set():
                            self._reload_requested.clear()
                            try:
                                intake = await self._reload(intake, journal, dispatcher, group)
                            except Exception:  # a bug or the disk: never the end of the daemon
                                log.exception(
                                    "config.reload_failed", action="carrying on as configured"
                                )
                                notify("READY=1")  # ends the RELOADING=1 it may have sent
                                if intake.stopping.is_set():
                                    intake = self._start_intake(
                                        self.config, journal, dispatcher, group
                                    )
                    await intake.stop()
            finally:
                notify("STOPPING=1")
                if self.watcher is not None:  # intake.stop() did it, unless we got here by error
                    await asyncio.to_thread(self.watcher.stop)
                log.info("gateway.stopping", in_flight=dispatcher.busy)
                await dispatcher.drain(self.config.gateway.shutdown_grace)
        log.info("gateway.stopped")

    # -- what runs, and how a reload replaces it ------------------------------------------

    def _start_intake(
        self, config: Config, journal: Journal, dispatcher: Dispatcher, group: asyncio.TaskGroup
    ) -> _Intake:
        watcher = Watcher(
            {conn.name: self.layout.outbox(conn.name) for conn in config.connections},
            dispatcher.claim,
            rescan_interval=config.gateway.rescan_interval,
            settle_time=config.gateway.settle_time,
            root=self.layout.data_dir / "outbox",
            on_ignored=lambda where: self.metrics.ignored.labels(where).inc(),
        )
        self.watcher = watcher
        poller = Poller(config, journal, sources(self._senders), self.alerts, self.duties)
        reporter = Reporter(config, journal, reporters(self._senders), self.alerts, self.duties)
        intake = _Intake(watcher, poller, reporter)
        intake.start(group)
        return intake

    async def _close_senders(self) -> None:
        """Close the senders in use, after those a reload retired (drained by now)."""
        if self._retiring:
            await asyncio.wait(self._retiring)
        for name, sender in list(self._senders.items()):
            try:
                await sender.__aexit__(None, None, None)
            except Exception:
                log.exception("sender.close_failed", connection=name)

    async def _reload(
        self,
        intake: _Intake,
        journal: Journal,
        dispatcher: Dispatcher,
        group: asyncio.TaskGroup,
    ) -> _Intake:
        """Apply the configuration file as it is now, or keep the running one and say why.

        Validated first (as ``raccord check`` would), then new senders are opened for added
        and changed connections; only then is anything replaced: intake stops (claims under
        way finish), the dispatcher takes the new connections, intake restarts. Transfers
        under way finish on the sender they began with, which is closed after them.
        """
        old = self.config
        log.info("config.reloading", path=str(old.path))
        try:
            new = await asyncio.to_thread(config_module.load, old.path)
            _reloadable(old, new)
            in_use = await asyncio.to_thread(certificates.by_connection, new)  # reads TLS files
        except ConfigError as exc:
            log.error(
                "config.reload_failed", error=str(exc), action="kept the running configuration"
            )
            notify(f"STATUS=reload failed, running configuration kept: {exc}")
            return intake
        notify("RELOADING=1")
        before = {conn.name: conn for conn in old.connections}
        after = {conn.name: conn for conn in new.connections}
        added = [name for name in after if name not in before]
        removed = [name for name in before if name not in after]
        changed = [name for name in after if name in before and after[name] != before[name]]
        opened: dict[str, Sender] = {}
        try:
            for name in added + changed:
                opened[name] = await _open_sender(after[name])
        except Exception as exc:
            for sender in opened.values():
                with contextlib.suppress(Exception):
                    await sender.__aexit__(None, None, None)
            log.error(
                "config.reload_failed",
                error=f"cannot open the sender of connection {name}: {exc}",
                action="kept the running configuration",
            )
            notify("READY=1")
            return intake
        for warning in new.warnings:
            log.warning("config.warning", message=warning)
        await intake.stop()
        self.watcher = None
        self.layout.create(list(after))
        retired = [self._senders[name] for name in removed + changed]
        self._senders = {name: opened.get(name) or self._senders[name] for name in after}
        self.config = new
        self.alerts.reconfigure(new.alerts)
        dispatcher.reconfigure(new, self._senders, in_use)
        for sender in retired:
            task = asyncio.create_task(dispatcher.retire(sender))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        try:
            health = self._health(journal, dispatcher)
            await self.servers.start(new, journal, dispatcher, health, old)
        except Exception:  # e.g. the new address is taken: the rest of the reload stands
            log.exception(
                "config.reload_incomplete", what="AS2 receiver, metrics endpoint or web console"
            )
        intake = self._start_intake(new, journal, dispatcher, group)
        await self.housekeeping.check_certificates_now()
        log.info(
            "config.reloaded",
            added=added,
            removed=removed,
            changed=changed,
            in_flight=dispatcher.busy,
        )
        notify("READY=1")
        await self.housekeeping.status(dispatcher)
        return intake

    def _finish_returns(self) -> None:
        """Apply return flows a stop or crash interrupted (worker thread, own connection)."""
        from gateway.returns import pipeline as returns

        db = JournalDB(self.journal_target, node=self.config.gateway.node_name)
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

    # -- what the servers and the health checks see --------------------------------------------

    @property
    def as2_receiver(self) -> As2Receiver | None:
        return self.servers.as2_receiver

    @property
    def metrics_server(self) -> MetricsServer | None:
        return self.servers.metrics_server

    @property
    def console(self) -> Console | None:
        return self.servers.console

    def check_certificates(self) -> list[dict[str, Any]]:
        """See :meth:`Housekeeping.check_certificates`; the daemon does this daily."""
        return self.housekeeping.check_certificates()

    def _health(self, journal: Journal, dispatcher: Dispatcher) -> dict[str, Check]:
        """The checks behind /healthz and the console's status page."""
        return {
            "watcher": self._watcher_health,
            "journal": lambda: journal_health(journal),
            "dispatcher": lambda: self.housekeeping.dispatcher_health(dispatcher),
        }

    async def _watcher_health(self) -> str | None:
        if self.watcher is None:
            return "not running (the configuration is being reloaded)"
        return self.watcher.health()


class _Intake:
    """What takes work in — the outbox watcher, the return-flow pollers and the integration
    reports asked of API partners — with a stop of its own, so that a reload can replace it
    while flows go on."""

    def __init__(self, watcher: Watcher, poller: Poller, reporter: Reporter) -> None:
        self.watcher = watcher
        self.poller = poller
        self.reporter = reporter
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, group: asyncio.TaskGroup) -> None:
        self.watcher.start()
        self._tasks = [
            group.create_task(self.watcher.run(self.stopping)),
            group.create_task(self.poller.run(self.stopping)),
            group.create_task(self.reporter.run(self.stopping)),
        ]

    async def stop(self) -> None:
        """Stop taking files; a claim or a download under way finishes first."""
        self.stopping.set()
        self.watcher.wake()
        await asyncio.wait(self._tasks)
        await asyncio.to_thread(self.watcher.stop)  # joins the inotify thread


async def _open_sender(conn: Connection) -> Sender:
    return await registry.get(conn.protocol).create_sender(conn.settings).__aenter__()


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _reloadable(old: Config, new: Config) -> None:
    """What a reload cannot change while the daemon runs.

    Raises:
        ConfigError: the change needs a restart (message says which).
    """
    if new.gateway.data_dir != old.gateway.data_dir:
        raise ConfigError(
            f"{new.path}: gateway.data_dir changed from {old.gateway.data_dir} to "
            f"{new.gateway.data_dir}; the journal and folders cannot move while raccord runs: "
            "restart it (systemctl restart raccord)"
        )
