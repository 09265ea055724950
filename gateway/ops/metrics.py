"""``[gateway] metrics = "host:port"``: Prometheus ``/metrics`` and ``/healthz``.

What happens is counted as it happens (:class:`Metrics`, fed by the dispatcher): files received,
sent, failed and retried, transfer durations and sizes, the last successful transfer per
connection. What the journal holds is read at each scrape, on a worker thread with its own
connection (:class:`JournalCollector`): flows by state, the queue depth, return statuses by
code — so these survive restarts. Certificate gauges are set by the daemon's certificate check.

``/healthz`` answers 200 only when the watcher (its inotify thread and its rescans), the journal
(a query answered within 2 s) and the dispatcher (its housekeeping round within the last few
seconds) are alive; 503 otherwise, with a JSON body naming what is not.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import logs
from gateway.journal import TERMINAL, JournalDB, JournalTarget
from gateway.ops import version
from gateway.ops.httpserver import serve

log = logs.get()

#: Seconds the journal has to answer the health check.
JOURNAL_PATIENCE = 2.0


#: A counter's ``_created`` series (when it was first used) doubles every counter for what
#: Prometheus' own ``process_start_time_seconds`` already tells.
disable_created_metrics()  # type: ignore[no-untyped-call] # the library's own, unannotated


class Metrics:
    """The counters and histograms the gateway feeds, in a registry of their own, with the
    process' own series (``process_*``: CPU, memory, open files, start time), the Python
    runtime's and ``raccord_build_info`` (whose ``node`` label names this node).

    These are this node's own figures; the :class:`JournalCollector`'s are the journal's, the
    same on every node sharing it (see docs/operations.md)."""

    def __init__(self, node: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge(
            "raccord_build_info",
            "Always 1; the labels say which raccord (and components) this is.",
            ["version", "node", *(name for name, _ in version.components())],
            registry=r,
        )
        self.build_info.labels(
            version.raccord(),
            node or socket.gethostname(),
            *(value for _, value in version.components()),
        ).set(1)
        self.received = Counter(
            "raccord_files_received", "Files claimed from an outbox.", ["connection"], registry=r
        )
        self.sent = Counter(
            "raccord_files_sent", "Files delivered and filed in sent/.", ["connection"], registry=r
        )
        self.failed = Counter(
            "raccord_files_failed",
            "Files filed in error/, by reason.",
            ["connection", "reason"],
            registry=r,
        )
        self.invalid = Counter(
            "raccord_invoices_invalid",
            "Invoices that broke a validation rule, by rule (each rule once per invoice).",
            ["connection", "rule"],
            registry=r,
        )
        self.ignored = Counter(
            "raccord_intake_ignored",
            "Entries in the outbox tree that no connection reads (reported once each), by "
            "where they lie: outbox_root, unknown_folder.",
            ["where"],
            registry=r,
        )
        self.retried = Counter(
            "raccord_files_retried",
            "Transfers tried again after a retryable error, by reason.",
            ["connection", "reason"],
            registry=r,
        )
        self.transfer_seconds = Histogram(
            "raccord_transfer_seconds",
            "Duration of successful transfers.",
            ["connection"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.transfer_bytes = Histogram(
            "raccord_transfer_bytes",
            "Size of the files transferred successfully.",
            ["connection"],
            buckets=(1e3, 1e4, 1e5, 1e6, 5e6, 1e7, 3e7, 1e8),
            registry=r,
        )
        self.last_success = Gauge(
            "raccord_last_success_timestamp_seconds",
            "When a transfer to the partner last succeeded (Unix time).",
            ["connection"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "raccord_certificate_expiry_timestamp_seconds",
            "When a certificate of the configuration expires (Unix time).",
            ["connection", "role", "subject"],
            registry=r,
        )
        self.certificate_attention = Gauge(
            "raccord_certificate_attention",
            "1 when a certificate of the configuration is expired, not yet valid or expires "
            "within [gateway] warn_days; else 0.",
            ["connection", "role", "subject"],
            registry=r,
        )
        self.duty_held = Gauge(
            "raccord_duty_held",
            "1 while this node holds the duty (return polling of a connection, retention...), "
            "0 once it let it go or lost it; one node at a time holds each.",
            ["duty"],
            registry=r,
        )
        self._transfers: dict[str, tuple[Any, Any, Any]] = {}

    def transferred(self, connection: str, seconds: float, size: int) -> None:
        children = self._transfers.get(connection)
        if children is None:  # labels() validates and locks at every call: looked up once
            children = self._transfers[connection] = (
                self.transfer_seconds.labels(connection),
                self.transfer_bytes.labels(connection),
                self.last_success.labels(connection),
            )
        duration, sizes, last_success = children
        duration.observe(seconds)
        sizes.observe(size)
        last_success.set(time.time())

    def watch_certificates(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Set the expiry and attention gauges from :func:`gateway.ops.certificates.report`'s
        records — only those: certificates a reload took out of the configuration disappear."""
        self.certificate_expiry.clear()
        self.certificate_attention.clear()
        for record in records:
            labels = (record["connection"], record["role"], record["subject"])
            expires = datetime.fromisoformat(record["not_after"]).timestamp()
            self.certificate_expiry.labels(*labels).set(expires)
            self.certificate_attention.labels(*labels).set(0 if record["state"] == "valid" else 1)


class JournalCollector(Collector):
    """Flows by state, queue depth and return statuses, read from the journal at each scrape.

    On a PostgreSQL journal the connection is kept from one scrape to the next (a new one was a
    server session and a schema check per scrape); after a failed scrape it is closed and the
    next one connects again. SQLite's file is opened per scrape: a scrape runs in whichever
    thread is free, and a SQLite connection belongs to the thread that opened it."""

    def __init__(self, journal: JournalTarget) -> None:
        self.journal = journal
        self._kept: JournalDB | None = None
        self._lock = threading.Lock()  # one scrape at a time on the kept connection

    def _counts(self) -> tuple[Any, Any]:
        with self._lock:
            db, self._kept = self._kept or JournalDB(self.journal), None
            try:
                counts = (db.metrics(), db.invoice_metrics())
            except BaseException:
                db.close()
                raise
            if db.postgres:
                self._kept = db
            else:
                db.close()
            return counts

    def close(self) -> None:
        """Close the kept connection, if any."""
        with self._lock:
            if self._kept is not None:
                self._kept.close()
                self._kept = None

    def collect(self) -> Iterator[Metric]:
        flows = GaugeMetricFamily(
            "raccord_flows", "Flows in the journal, by state.", labels=["connection", "state"]
        )
        queue = GaugeMetricFamily(
            "raccord_queue_depth",
            "Flows not yet filed (queued, sending, awaiting a receipt…).",
            labels=["connection"],
        )
        statuses = CounterMetricFamily(
            "raccord_return_statuses",
            "Statuses return flows gave flows and invoices, by code.",
            labels=["connection", "code"],
        )
        invoices = GaugeMetricFamily(
            "raccord_invoices",
            "Invoices sent, by their current status (derived from their whole status history).",
            labels=["connection", "code"],
        )
        returned = GaugeMetricFamily(
            "raccord_returns",
            "Return flows received, by state (applied, unmatched, unreadable, unrecognised…).",
            labels=["connection", "state"],
        )
        (by_state, by_code), (by_current, by_return_state) = self._counts()
        for (connection, code), count in sorted(by_current.items()):
            invoices.add_metric([connection, code], count)
        for (connection, state), count in sorted(by_return_state.items()):
            returned.add_metric([connection, state], count)
        depth: dict[str, int] = {}
        for (connection, state), count in sorted(by_state.items()):
            flows.add_metric([connection, state], count)
            depth.setdefault(connection, 0)
            if state not in TERMINAL:
                depth[connection] += count
        for connection, count in sorted(depth.items()):
            queue.add_metric([connection], count)
        for (connection, code), count in sorted(by_code.items()):
            statuses.add_metric([connection, code], count)
        yield from (flows, queue, statuses, invoices, returned)


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` on the configured address."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        journal: JournalTarget,
        checks: dict[str, Callable[[], Awaitable[str | None]]],
    ) -> None:
        self.host = host
        self.port = port
        self.registry = metrics.registry
        self._collector = JournalCollector(journal)
        self.checks = checks
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.registry.register(self._collector)  # unregistered by stop: a reload may move us
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        try:
            self._runner, self.port = await serve(app, self.host, self.port)
        except BaseException:
            self.registry.unregister(self._collector)
            raise
        log.info("metrics.listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self.registry.unregister(self._collector)
            await asyncio.to_thread(self._collector.close)

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            body = await asyncio.to_thread(generate_latest, self.registry)
        except Exception as exc:  # the journal cannot be read: say so rather than lie
            log.exception("metrics.failed")
            return web.Response(status=500, text=f"metrics unavailable: {exc}\n")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        problems: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                outcome = await check()
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            if outcome is not None:
                problems[name] = str(outcome)
        body = {name: problems.get(name, "ok") for name in self.checks}
        status = 503 if problems else 200
        return web.Response(
            status=status,
            text=json.dumps({"status": "unhealthy" if problems else "ok", "checks": body}) + "\n",
            content_type="application/json",
        )
