"""The running gateway: journal + senders + dispatcher + watcher, owned by one task group.

Start order: folders, journal, senders, reconciliation (unfinished flows resume, interrupted
return flows are applied), watcher and return-flow pollers, then READY for systemd. Stop
(``stopping`` set, e.g. by SIGTERM): the watcher and pollers stop taking files, in-flight
flows get ``shutdown_grace`` seconds to finish and are then cancelled (their outcome is unknown
and they resend under the same remote name at the next start), senders and journal close.

Reload (SIGHUP, :meth:`Gateway.request_reload`): see :meth:`Gateway._reload`. What is replaced
is what reads the configuration — intake, the senders of added or changed connections, the
servers whose address moved; the journal and the dispatcher (with its flows) stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from gateway import config as config_module
from gateway import logs
from gateway.config import Config, ConfigError, Connection
from gateway.flow.dispatcher import Dispatcher, Now, Sleep, utc_now
from gateway.flow.intake import Watcher
from gateway.folders import Layout
from gateway.journal import Call, Journal, JournalDB
from gateway.ops import certificates
from gateway.ops import retention as retention_module
from gateway.ops.alerts import Alerter
from gateway.ops.metrics import JOURNAL_PATIENCE, Metrics, MetricsServer
from gateway.ops.systemd import keep_alive, notify
from gateway.returns.as2_receiver import As2Receiver
from gateway.returns.polling import Poller, sources
from gateway.returns.reports import Reporter, reporters
from gateway.web.app import Console
from protocols import registry
from protocols.base import Sender

log = logs.get()

#: How often the journal is polled for flows put back by ``raccord retry``, and for flows whose
#: acknowledgement is overdue.
REQUEUE_POLL = 2.0
#: How often flows older than [gateway] retention are looked for.
RETENTION_PERIOD = 3600.0
#: How often certificates are checked against ``[gateway] warn_days`` (and logged).
CERTIFICATE_CHECK = 24 * 3600.0


class StartupError(Exception):
    """The daemon cannot start as configured (a folder it cannot write, an address taken): one
    sentence naming the key and what to do. ``raccord run`` prints it and exits 2."""


async def _listening(start: Awaitable[None], key: str, host: str, port: int) -> None:
    """Run a server's ``start``; an address it cannot take is a :class:`StartupError`."""
    try:
        await start
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            why = "already in use by another program (ss -ltnp shows which)"
        elif exc.errno == errno.EACCES:
            why = "a port this user may not listen on (use a port >= 1024)"
        else:
            why = f"not available ({exc.strerror or exc})"
        raise StartupError(f"{key}: {host}:{port} is {why}; choose another address") from None


#: The file in data_dir that the running gateway holds locked, with its pid in it.
LOCK_FILE = "raccord.lock"


class DataDirLocked(ConfigError):
    """Another gateway already runs on this data_dir; the message names its pid."""


def lock_data_dir(data_dir: Path) -> int:
    """Lock ``data_dir`` for this process (an exclusive ``flock`` on its lock file, which then
    holds this pid) and return the lock's descriptor: closing it, or the end of the process
    however it ends (kill -9 too), releases the lock. The descriptor is close-on-exec and the
    workers are forked from a fork server that never had it: an orphaned worker cannot keep a
    dead daemon's lock.

    Raises:
        DataDirLocked: another process holds it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirLocked(
            f"another raccord run (pid {holder}) is already working on {data_dir}; stop it "
            "first (two daemons on one data_dir would claim and send the same files)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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
        self.alerts = Alerter(config.alerts, now=now)
        self.metrics_server: MetricsServer | None = None
        self.console: Console | None = None
        self.ready = asyncio.Event()
        self._housekept_at = time.monotonic()
        self._housekeeping_problem: str | None = None
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
            lock = lock_data_dir(self.layout.data_dir)
        except OSError as exc:
            raise StartupError(
                f"gateway.data_dir: cannot create the folders in {self.layout.data_dir} "
                f"({exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}); "
                "make it writable by the daemon's user (under systemd: ReadWritePaths=)"
            ) from None
        try:
            await self._run(stopping, on_ready)
        finally:
            os.close(lock)

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
        journal = Journal(self.layout.journal)
        try:
            await journal.open()
        except Exception as exc:
            raise StartupError(
                f"gateway.data_dir: the journal {self.layout.journal} cannot be opened ({exc})"
            ) from None
        async with AsyncExitStack() as stack:
            stack.push_async_callback(journal.close)
            stack.push_async_callback(self._close_senders)
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
            stack.push_async_callback(self._stop_servers)
            await self._start_servers(config, journal, dispatcher)
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
                    group.create_task(self._requeue_loop(dispatcher, stopping))
                    group.create_task(keep_alive(stopping))
                    group.create_task(self._certificate_loop(stopping))
                    group.create_task(self._retention_loop(journal, stopping))
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
        poller = Poller(config, journal, sources(self._senders), self.alerts)
        reporter = Reporter(config, journal, reporters(self._senders), self.alerts)
        intake = _Intake(watcher, poller, reporter)
        intake.start(group)
        return intake

    async def _start_servers(
        self, config: Config, journal: Journal, dispatcher: Dispatcher, old: Config | None = None
    ) -> None:
        """The AS2 receiver and the metrics endpoint of ``config``; with ``old`` (a reload),
        only what moved is restarted: a receiver at the same address keeps its connections."""
        if old is None or old.as2_receiver != config.as2_receiver:
            if self.as2_receiver is not None:
                await self.as2_receiver.stop()
                self.as2_receiver = None
            if config.as2_receiver is not None:
                receiver = As2Receiver(
                    config, journal, settle=dispatcher.settle, alerts=self.alerts
                )
                await _listening(
                    receiver.start(),
                    "as2_receiver.listen",
                    config.as2_receiver.host,
                    config.as2_receiver.port,
                )
                self.as2_receiver = receiver
        elif self.as2_receiver is not None:
            self.as2_receiver.reconfigure(config)
        if old is None or old.gateway.metrics != config.gateway.metrics:
            if self.metrics_server is not None:
                await self.metrics_server.stop()
                self.metrics_server = None
            if config.gateway.metrics is not None:
                host, port = config.gateway.metrics
                server = MetricsServer(
                    host,
                    port,
                    self.metrics,
                    self.layout.journal,
                    {
                        "watcher": self._watcher_health,
                        "journal": lambda: self._journal_health(journal),
                        "dispatcher": lambda: self._dispatcher_health(dispatcher),
                    },
                )
                await _listening(server.start(), "gateway.metrics", host, port)
                self.metrics_server = server
        await self._start_console(config, journal, dispatcher, old)

    async def _start_console(
        self, config: Config, journal: Journal, dispatcher: Dispatcher, old: Config | None
    ) -> None:
        """The web console (``[web]``): restarted when its address or TLS files change; a
        reload otherwise only gives it the new users and connections."""
        web = config.web
        before = old.web if old is not None else None
        moved = (
            web is None
            or before is None
            or (web.host, web.port, web.certificate, web.key)
            != (
                before.host,
                before.port,
                before.certificate,
                before.key,
            )
        )
        if self.console is not None and not moved:
            self.console.reconfigure(config)
            return
        if self.console is not None:
            await self.console.stop()
            self.console = None
        if web is not None:
            console = Console(
                config,
                {
                    "watcher": self._watcher_health,
                    "journal": lambda: self._journal_health(journal),
                    "dispatcher": lambda: self._dispatcher_health(dispatcher),
                },
            )
            await console.start()
            self.console = console

    async def _stop_servers(self) -> None:
        if self.as2_receiver is not None:
            await self.as2_receiver.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.console is not None:
            await self.console.stop()

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
            await self._start_servers(new, journal, dispatcher, old)
        except Exception:  # e.g. the new address is taken: the rest of the reload stands
            log.exception(
                "config.reload_incomplete", what="AS2 receiver, metrics endpoint or web console"
            )
        intake = self._start_intake(new, journal, dispatcher, group)
        await self._check_certificates()
        log.info(
            "config.reloaded",
            added=added,
            removed=removed,
            changed=changed,
            in_flight=dispatcher.busy,
        )
        notify("READY=1")
        await self._status(dispatcher)
        return intake

    def _finish_returns(self) -> None:
        """Apply return flows a stop or crash interrupted (worker thread, own connection)."""
        from gateway.returns import pipeline as returns

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
            await self._status(dispatcher)

    async def _status(self, dispatcher: Dispatcher) -> None:
        """The STATUS line systemctl status shows: the queue and what is being worked on."""
        try:
            depth = await dispatcher.journal.call(Call(JournalDB.queue_depth))
        except Exception:  # the health check reports the journal; the status just says less
            notify(f"STATUS=in flight: {dispatcher.busy}")
            return
        notify(f"STATUS=queue: {depth} flow(s) not yet filed, {dispatcher.busy} in flight")

    async def _retention_loop(self, journal: Journal, stopping: asyncio.Event) -> None:
        """``[gateway] retention``: purge flows filed longer ago, hourly, batch by batch (see
        :mod:`gateway.ops.retention`); the configuration is read afresh at each round (reload)."""
        while not stopping.is_set():
            settings = self.config.gateway
            if settings.retention is not None:
                try:
                    await self._purge(journal, settings.retention, settings.retention_files)
                except Exception:  # the disk, a bug: never the end of the daemon
                    log.exception("journal.purge_failed", action="trying again in an hour")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), RETENTION_PERIOD)

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

    async def _certificate_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self._check_certificates()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), CERTIFICATE_CHECK)

    async def _check_certificates(self) -> None:
        try:
            records = await asyncio.to_thread(self.check_certificates)
        except Exception:  # e.g. a TLS certificate file gone: say so, try again tomorrow
            log.exception("certificate.check_failed")
            return
        for record in records:
            if record["state"] != "valid":
                self.alerts.certificate(record)

    def check_certificates(self) -> list[dict[str, Any]]:
        """Log every certificate that needs a person (expiring within ``warn_days``, expired,
        not yet valid) and refresh the certificate gauges; the daemon does this daily."""
        config = self.config
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

    async def _journal_health(self, journal: Journal) -> str | None:
        try:
            await asyncio.wait_for(journal.call(Call(JournalDB.ping)), JOURNAL_PATIENCE)
        except TimeoutError:
            return f"no answer within {JOURNAL_PATIENCE:g} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def _watcher_health(self) -> str | None:
        if self.watcher is None:
            return "not running (the configuration is being reloaded)"
        return self.watcher.health()

    async def _dispatcher_health(self, dispatcher: Dispatcher) -> str | None:
        if dispatcher.stopping.is_set():
            return "stopping"
        if self._housekeeping_problem is not None:
            return self._housekeeping_problem
        age = time.monotonic() - self._housekept_at
        if age > 3 * REQUEUE_POLL + 5:
            return f"its housekeeping last ran {age:.0f} s ago"
        return None


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
