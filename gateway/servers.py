"""The daemon's listening servers: the AS2 receiver, the metrics endpoint and the web console.

They are started after reconciliation and stopped before the journal closes. At a reload only
a server whose address (or TLS files) moved is restarted; the others are handed the new
configuration and keep their connections.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

from gateway.config import Config
from gateway.flow.dispatcher import Dispatcher
from gateway.journal import Journal, JournalTarget
from gateway.ops.alerts import Alerter
from gateway.ops.metrics import Metrics, MetricsServer
from gateway.returns.as2_receiver import As2Receiver
from gateway.web.app import Console

#: A health check: None when all is well, else one sentence saying what is wrong.
Check = Callable[[], Awaitable[str | None]]


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


class Servers:
    """The servers ``[as2_receiver]``, ``[gateway] metrics`` and ``[web]`` ask for, each None
    while its section is absent."""

    def __init__(self, metrics: Metrics, alerts: Alerter, journal_path: JournalTarget) -> None:
        self.metrics = metrics
        self.alerts = alerts
        self.journal_path = journal_path
        self.as2_receiver: As2Receiver | None = None
        self.metrics_server: MetricsServer | None = None
        self.console: Console | None = None

    async def start(
        self,
        config: Config,
        journal: Journal,
        dispatcher: Dispatcher,
        health: dict[str, Check],
        old: Config | None = None,
    ) -> None:
        """The servers of ``config``; with ``old`` (a reload), only what moved is restarted: a
        receiver at the same address keeps its connections.

        Raises:
            StartupError: an address cannot be listened on.
        """
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
                server = MetricsServer(host, port, self.metrics, self.journal_path, health)
                await _listening(server.start(), "gateway.metrics", host, port)
                self.metrics_server = server
        await self._start_console(config, health, old)

    async def _start_console(
        self, config: Config, health: dict[str, Check], old: Config | None
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
            console = Console(config, health)
            await console.start()
            self.console = console

    async def stop(self) -> None:
        if self.as2_receiver is not None:
            await self.as2_receiver.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.console is not None:
            await self.console.stop()
