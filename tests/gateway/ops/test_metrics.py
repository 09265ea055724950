"""``/metrics`` scraped from a running gateway and parsed with prometheus-client's own parser;
``/healthz`` turning 503 when the journal stops answering or the watcher dies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import Config, ConfigError
from gateway.daemon import Gateway
from gateway.journal import Call, JournalDB, journal_target
from protocols.errors import AuthenticationError, ConnectError
from protocols.testing import memory
from tests.as2_config import write_as2_config
from tests.conftest import sample
from tests.e2e.sshd import free_port
from tests.gateway.harness import drop, memory_config, running, until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def invoice(number: str) -> bytes:
    return sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())


def metered(tmp_path: Path, bucket: str, journal: str = "") -> Config:
    """A memory gateway serving /metrics; its journal on PostgreSQL if ``journal`` is a URL."""
    extra = f'metrics = "127.0.0.1:{free_port()}"'
    if journal:
        extra += f'\nnode_name = "node-m"\n\n[journal]\nurl = "{journal}"'
    return memory_config(tmp_path, bucket, gateway_extra=extra)


def filed_in(config: Config, count: int) -> Callable[[], bool]:
    """Whether ``count`` flows are filed in the journal ``config`` names (either database)."""

    def done() -> bool:
        db = JournalDB(journal_target(config))
        try:
            return len(db.in_states(("sent", "error"))) >= count
        finally:
            db.close()

    return done


async def get(gateway: Gateway, path: str) -> tuple[int, str]:
    assert gateway.metrics_server is not None
    url = f"http://127.0.0.1:{gateway.metrics_server.port}{path}"
    async with aiohttp.ClientSession() as client, client.get(url) as answer:
        return answer.status, await answer.text()


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_metrics_count_what_happened(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    """/metrics counts what happened (received, sent, failed, retried), what the journal holds,
    which build and which node this is, and the duties it holds; the same on a journal shared
    on PostgreSQL (the scrape reads the configured journal)."""
    bucket = f"metrics-{time.monotonic_ns()}"
    memory.BUCKETS.pop(bucket, None)
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else ""
    config = metered(tmp_path, bucket, url)
    memory.fail_next(bucket, ConnectError("down"))  # the first try of one file, retried
    started = time.time()
    documents = {"a.xml": invoice("M-1"), "b.xml": invoice("M-2")}

    async def scenario() -> str:
        async with running(config) as gateway:
            for name, data in documents.items():
                drop(config, name, data)
            await until(filed_in(config, 2))
            memory.fail_next(bucket, AuthenticationError("key refused"))
            drop(config, "c.xml", invoice("M-3"))
            await until(filed_in(config, 3))
            status, text = await get(gateway, "/metrics")
            assert status == 200
            return text

    samples = parse(asyncio.run(scenario()))

    conn = (("connection", "qualif-mem"),)
    assert samples[("raccord_files_received_total", conn)] == 3
    assert samples[("raccord_files_sent_total", conn)] == 2
    assert samples[("raccord_files_failed_total", (*conn, ("reason", "auth_failed")))] == 1
    assert samples[("raccord_files_retried_total", (*conn, ("reason", "unreachable")))] == 1
    assert samples[("raccord_transfer_seconds_count", conn)] == 2
    sizes = sum(len(data) for data in documents.values())
    assert samples[("raccord_transfer_bytes_sum", conn)] == sizes
    assert samples[("raccord_last_success_timestamp_seconds", conn)] >= started
    assert samples[("raccord_flows", (*conn, ("state", "sent")))] == 2
    assert samples[("raccord_flows", (*conn, ("state", "error")))] == 1
    assert samples[("raccord_queue_depth", conn)] == 0
    # The process' own series and what build this is; no counter doubled by a _created series.
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_start_time_seconds", ())] > 0
    [(name, labels)] = [key for key in samples if key[0] == "raccord_build_info"]
    assert dict(labels)["version"] and samples[(name, labels)] == 1
    # Which node this is, and the duties it holds (alone, every one).
    assert dict(labels)["node"] == config.gateway.node_name
    assert samples[("raccord_duty_held", (("duty", "returns:qualif-mem"),))] == 1
    assert not [key for key in samples if key[0].endswith("_created")]


def test_certificate_expiry_is_exported(tmp_path: Path, our_keys: Any, partner_keys: Any) -> None:
    config = write_as2_config(tmp_path, our_keys, partner_keys)
    gateway = Gateway(config)
    gateway.check_certificates()  # at start, at each reload and daily
    samples = parse(generate_latest(gateway.metrics.registry).decode())
    expiries = {
        dict(labels)["role"]: value
        for (name, labels), value in samples.items()
        if name == "raccord_certificate_expiry_timestamp_seconds"
    }
    assert expiries == {
        "ours": our_keys.certificate.not_valid_after_utc.timestamp(),
        "partner": partner_keys.certificate.not_valid_after_utc.timestamp(),
    }


def _stall(_: JournalDB, seconds: float) -> None:
    time.sleep(seconds)


def test_healthz_names_what_is_not_alive(tmp_path: Path) -> None:
    bucket = f"health-{time.monotonic_ns()}"
    config = metered(tmp_path, bucket)

    async def scenario() -> list[tuple[int, str]]:
        async with running(config) as gateway:
            answers = [await get(gateway, "/healthz")]
            assert gateway.dispatcher is not None
            # The journal is stuck (a stalled disk): the health check gets no answer in 2 s.
            # The journal serves calls in order: the check's query waits behind this one.
            stuck = asyncio.create_task(gateway.dispatcher.journal.call(Call(_stall, 3.5)))
            answers.append(await get(gateway, "/healthz"))
            await stuck
            answers.append(await get(gateway, "/healthz"))
            assert gateway.watcher is not None
            gateway.watcher.stop()  # the inotify thread is gone
            answers.append(await get(gateway, "/healthz"))
            return answers

    answers = asyncio.run(scenario())

    (s0, b0), (s1, b1), (s2, b2), (s3, b3) = answers
    assert s0 == 200 and json.loads(b0)["status"] == "ok"
    assert s1 == 503
    checks = json.loads(b1)["checks"]
    assert checks["journal"] == "no answer within 2 s" and checks["watcher"] == "ok"
    assert s2 == 200 and json.loads(b2)["checks"]["journal"] == "ok", b2  # answering again
    assert s3 == 503 and json.loads(b3)["checks"]["watcher"] == "not watching"


@pytest.mark.parametrize("value", ["9464", "localhost:", "[::1]:99999"])
def test_a_bad_metrics_address_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"gateway\.metrics: expected \"host:port\""):
        memory_config(tmp_path, "x", gateway_extra=f'metrics = "{value}"')


def test_scrapes_of_a_postgresql_journal_share_one_session(postgres_url: str) -> None:
    """Each scrape reads the shared journal over the same kept connection (not a new server
    session per scrape); stopping the metrics server's collector ends it."""
    import psycopg

    from gateway.journal import PostgresTarget
    from gateway.ops.metrics import JournalCollector

    def sessions() -> list[int]:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            found = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'raccord'"
            ).fetchall()
        return [row[0] for row in found]

    target = PostgresTarget(postgres_url)
    db = JournalDB(target)
    db.insert("F1", "qualif-mem", "f.xml", "/spool/f.xml")
    db.close()
    collector = JournalCollector(target)
    first = {m.name: m.samples for m in collector.collect()}
    (kept,) = sessions()
    second = {m.name: m.samples for m in collector.collect()}
    assert sessions() == [kept] and first == second
    assert [s.value for s in first["raccord_flows"]] == [1]
    collector.close()
    assert sessions() == []
