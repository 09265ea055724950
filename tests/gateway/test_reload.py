"""Reloading the configuration (SIGHUP) in a running gateway: an invalid file changes nothing;
added, changed and removed connections take effect without dropping a transfer under way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from gateway import config as config_module
from gateway.config import Config
from gateway.daemon import Gateway
from protocols.testing import memory
from tests.conftest import sample
from tests.gateway.harness import (
    connection_toml,
    drop,
    filed,
    memory_config,
    memory_config_text,
    rows,
    running,
    until,
)


def second_connection(bucket: str, extra: str = "") -> str:
    """A second memory connection (another structure) for ``bucket``."""
    return connection_toml("second-mem", "memory", {"bucket": bucket}, extra=extra)


def invoice(number: str) -> bytes:
    return sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())


def buckets(prefix: str, *names: str) -> list[str]:
    found = [f"{prefix}-{name}-{time.monotonic_ns()}" for name in names]
    for name in found:
        memory.BUCKETS.pop(name, None)
    return found


def rewrite(config: Config, bucket: str, extra: str = "", **overrides: Any) -> None:
    """Write the harness's configuration again, for ``bucket``, with ``extra`` appended."""
    text = memory_config_text(config.gateway.data_dir, bucket, **overrides)
    config.path.write_text(text + extra)


async def reload(gateway: Gateway) -> list[MutableMapping[str, Any]]:
    """SIGHUP's effect: request a reload, wait for its outcome, return the config.* events."""
    with capture_logs() as events:
        gateway.request_reload()
        await until(
            lambda: any(e["event"] in ("config.reloaded", "config.reload_failed") for e in events),
            what="the reload's outcome",
        )
    return [e for e in events if e["event"].startswith("config.")]


def test_an_invalid_configuration_is_logged_and_the_running_one_kept(tmp_path: Path) -> None:
    [bucket] = buckets("reload-invalid", "a")
    config = memory_config(tmp_path, bucket)
    outcomes: list[list[MutableMapping[str, Any]]] = []

    async def scenario() -> None:
        async with running(config) as gateway:
            config.path.write_text(config.path.read_text().replace("[gateway]", "[gateway"))
            outcomes.append(await reload(gateway))
            rewrite(config, bucket, gateway_extra='data_dir = "/elsewhere"')
            config.path.write_text(
                config.path.read_text().replace(f'data_dir = "{config.gateway.data_dir}"\n', "")
            )
            outcomes.append(await reload(gateway))
            rewrite(config, bucket, connection_extra="protocl = 'memory'")
            outcomes.append(await reload(gateway))
            assert gateway.config is config  # all three refused
            drop(config, "after.xml", invoice("R-1"))
            await until(filed(config, 1), what="a file sent after the refused reloads")

    asyncio.run(scenario())
    failures = [events[-1] for events in outcomes]
    assert [e["event"] for e in failures] == ["config.reload_failed"] * 3
    assert all(e["action"] == "kept the running configuration" for e in failures)
    assert "not valid TOML" in failures[0]["error"]
    assert "gateway.data_dir changed from" in failures[1]["error"]
    assert "restart it (systemctl restart raccord)" in failures[1]["error"]
    assert "connection[qualif-mem].protocl" in failures[2]["error"]
    assert [r.state for r in rows(config)] == ["sent"]
    assert len(memory.bucket(bucket).files) == 1


def test_an_added_connection_is_watched_and_carries_files(tmp_path: Path) -> None:
    first, second = buckets("reload-add", "a", "b")
    config = memory_config(tmp_path, first)

    async def scenario() -> list[MutableMapping[str, Any]]:
        async with running(config) as gateway:
            rewrite(config, first, second_connection(second))
            events = await reload(gateway)
            drop(config, "new.xml", invoice("R-2"), connection="second-mem")
            drop(config, "old.xml", invoice("R-3"))
            await until(filed(config, 2), what="both files sent")
            return events

    events = asyncio.run(scenario())
    [reloaded] = [e for e in events if e["event"] == "config.reloaded"]
    assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (
        ["second-mem"],
        [],
        [],
    )
    assert {r.connection: r.state for r in rows(config)} == {
        "qualif-mem": "sent",
        "second-mem": "sent",
    }
    assert len(memory.bucket(second).files) == 1 and len(memory.bucket(first).files) == 1
    [new] = [r for r in rows(config) if r.connection == "second-mem"]
    assert new.final_path is not None
    assert Path(new.final_path).parent.parent == config.gateway.data_dir / "sent" / "second-mem"


def test_a_transfer_under_way_finishes_on_its_sender_which_closes_after_it(
    tmp_path: Path,
) -> None:
    old, new = buckets("reload-change", "old", "new")
    config = memory_config(tmp_path, old)

    async def scenario() -> list[MutableMapping[str, Any]]:
        async with running(config) as gateway:
            gate = memory.hold(old)
            drop(config, "slow.xml", invoice("R-4"))
            await until(lambda: memory.bucket(old).sends == 1, what="the send to start")
            rewrite(config, new)  # the same connection, another partner bucket
            events = await reload(gateway)
            assert memory.bucket(old).closes == 0  # in use by the transfer under way
            gate.set()
            await until(filed(config, 1), what="the transfer under way to end")
            await until(lambda: memory.bucket(old).closes == 1, what="the old sender closed")
            drop(config, "next.xml", invoice("R-5"))
            await until(filed(config, 2), what="the next file sent")
            return events

    events = asyncio.run(scenario())
    [reloaded] = [e for e in events if e["event"] == "config.reloaded"]
    assert reloaded["changed"] == ["qualif-mem"] and reloaded["in_flight"] == 1
    slow, following = sorted(rows(config), key=lambda r: r.original_name)[::-1]
    assert (slow.original_name, slow.state, slow.attempts) == ("slow.xml", "sent", 1)
    assert list(memory.bucket(old).files) == [slow.remote_name]
    assert list(memory.bucket(new).files) == [following.remote_name]


def test_a_removed_connection_finishes_its_transfer_and_files_waiting_invoices_in_error(
    tmp_path: Path,
) -> None:
    first, second = buckets("reload-remove", "a", "b")
    config = memory_config(tmp_path, first)
    lots = second_connection(
        second, 'lot = { max_invoices = 2, max_wait = "1h", packaging = "tar.gz" }'
    )
    rewrite(config, first, lots)
    config = config_module.load(config.path)

    async def scenario() -> list[MutableMapping[str, Any]]:
        async with running(config) as gateway:
            gate = memory.hold(second)
            drop(config, "one.xml", invoice("R-6"), connection="second-mem")
            drop(config, "two.xml", invoice("R-7"), connection="second-mem")
            await until(lambda: memory.bucket(second).sends == 1, what="the lot's send")
            drop(config, "three.xml", invoice("R-8"), connection="second-mem")
            await until(
                lambda: any(r.state == "batched" for r in rows(config)),
                what="the third invoice waiting for the next lot",
            )
            rewrite(config, first)  # second-mem is gone
            events = await reload(gateway)
            await until(
                lambda: any(r.reason == "unknown_connection" for r in rows(config)),
                what="the waiting invoice filed",
            )
            assert memory.bucket(second).closes == 0  # the lot is still being sent
            gate.set()
            await until(lambda: memory.bucket(second).closes == 1, what="the sender closed")
            return events

    events = asyncio.run(scenario())
    [reloaded] = [e for e in events if e["event"] == "config.reloaded"]
    assert reloaded["removed"] == ["second-mem"]
    by_name = {r.original_name: r for r in rows(config)}
    [lot] = [r for r in by_name.values() if r.packaging]
    assert (lot.state, lot.attempts) == ("sent", 1)
    assert by_name["one.xml"].state == by_name["two.xml"].state == "packed"
    waiting = by_name["three.xml"]
    assert (waiting.state, waiting.reason) == ("error", "unknown_connection")
    assert waiting.message is not None
    assert waiting.message.startswith("connection second-mem is no longer configured")
    assert waiting.final_path is not None and Path(waiting.final_path).exists()
