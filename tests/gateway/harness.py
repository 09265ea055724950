"""A gateway running in the test's event loop, on the memory sender or any given config."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gateway import config as config_module
from gateway.config import Config
from gateway.daemon import Gateway
from gateway.folders import Layout
from gateway.journal import (
    TERMINAL,
    Call,
    FlowRow,
    Journal,
    JournalDB,
    JournalUnavailable,
    journal_target,
)

MEMORY_CONFIG = """\
[gateway]
data_dir = "{data_dir}"
rescan_interval = "{rescan}"
settle_time = "200ms"
shutdown_grace = "2s"
retry = {{ max_attempts = {attempts}, initial = "10ms", max = "50ms" }}
{gateway_extra}

[[connection]]
name = "qualif-mem"
environment = "qualification"
protocol = "memory"
partner_code = "VFE056"
state = "{state}"
valid_from = 2017-06-21
valid_to = {valid_to}
validation = "{validation}"
{connection_extra}

[connection.interfaces]
FSO1100A = "{mode}"

[connection.memory]
bucket = "{bucket}"
delay = "{delay}"
{memory_extra}
"""


def memory_config_text(data_dir: Path, bucket: str, **overrides: Any) -> str:
    """The memory connection's configuration with ``overrides`` of its placeholders."""
    values = {
        "data_dir": data_dir,
        "rescan": "1s",
        "attempts": 4,
        "state": "active",
        "valid_to": "2099-06-30",
        "bucket": bucket,
        "gateway_extra": "",
        "connection_extra": "",
        "mode": "complete",
        "delay": "0s",
        "memory_extra": "",
        # Tests of other things do not wait for validation workers (their own tests do).
        "validation": "off",
    }
    values.update(overrides)
    return MEMORY_CONFIG.format(**values)


def connection_toml(
    name: str,
    protocol: str,
    settings: dict[str, Any],
    *,
    partner_code: str = "VFE057",
    structure: str = "00000000000230",
    interfaces: dict[str, str] | None = None,
    extra: str = "",
    validation: str = "off",
) -> str:
    """One more ``[[connection]]`` (qualification, active, valid 2017–2099) to append to a
    configuration: ``settings`` fill its ``[connection.<protocol>]`` table, ``extra`` lines go
    in the connection's own table (e.g. a ``lot``)."""
    lines = [
        "",
        "[[connection]]",
        f'name = "{name}"',
        'environment = "qualification"',
        f'protocol = "{protocol}"',
        f'partner_code = "{partner_code}"',
        f'structure = "{structure}"',
        "valid_from = 2017-06-21",
        "valid_to = 2099-06-30",
        f'validation = "{validation}"',
        extra,
        "",
        "[connection.interfaces]",
        *(f'{code} = "{mode}"' for code, mode in (interfaces or {"FSO1100A": "partial"}).items()),
        "",
        f"[connection.{protocol}]",
        *(f"{key} = {_toml(value)}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # a TOML basic string (paths, names)


def memory_config(tmp_path: Path, bucket: str, **overrides: Any) -> Config:
    path = tmp_path / "raccord.toml"
    path.write_text(memory_config_text(tmp_path / "data", bucket, **overrides))
    return config_module.load(path)


async def until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def raccord_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """``raccord argv…`` in this process: its exit status, stdout and stderr (``capsys``, the
    pytest fixture, captures them); never a traceback."""
    from gateway.cli import main

    status = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.out, captured.err


def rows(config: Config) -> list[FlowRow]:
    """Every flow in the configured journal (SQLite in data_dir, or the shared database)."""
    layout = Layout(config.gateway.data_dir)
    if config.journal.url is None and not layout.journal.exists():
        return []
    db = JournalDB(journal_target(config, layout))
    try:
        return db.search()
    finally:
        db.close()


def filed(config: Config, count: int) -> Callable[[], bool]:
    return lambda: len([r for r in rows(config) if r.state in ("sent", "error")]) >= count


@asynccontextmanager
async def running(config: Config, **kwargs: Any) -> AsyncIterator[Gateway]:
    gateway = Gateway(config, **kwargs)
    stopping = asyncio.Event()
    task = asyncio.create_task(gateway.run(stopping))
    ready = asyncio.create_task(gateway.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield gateway
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


def deliver(
    config: Config, documents: dict[str, bytes], *, settled: frozenset[str] = TERMINAL
) -> list[FlowRow]:
    """Run a gateway, drop ``documents`` (name -> bytes), wait until every flow in the journal
    (new and resumed) is in a ``settled`` state (by default: filed in sent/ or error/, or
    packed in a lot); return all rows."""
    expected = len(rows(config)) + len(documents)

    def all_filed() -> bool:
        current = rows(config)
        return len(current) >= expected and all(r.state in settled for r in current)

    async def main() -> None:
        async with running(config):
            for name, data in documents.items():
                drop(config, name, data)
            await until(all_filed, what="every flow filed")

    asyncio.run(main())
    return rows(config)


def drop(config: Config, name: str, data: bytes, connection: str | None = None) -> Path:
    """Drop as ops should: write a .part file, rename it into the outbox."""
    conn = connection or config.connections[0].name
    outbox = Layout(config.gateway.data_dir).outbox(conn)
    outbox.mkdir(parents=True, exist_ok=True)
    temp = outbox / f".{name}.part"
    temp.write_bytes(data)
    temp.rename(outbox / name)
    return outbox / name


def sidecar(row: FlowRow, suffix: str) -> dict[str, Any]:
    assert row.final_path is not None
    data: dict[str, Any] = json.loads(Path(row.final_path + suffix).read_text())
    return data


def answer_lost_after(*functions: Callable[..., Any], times: int | None = None) -> type[Journal]:
    """A Journal whose calls of ``functions`` (the first ``times`` of them, or all) are
    applied, and then answered with JournalUnavailable: the journal process died between its
    commit and its answer."""

    class AnswerLost(Journal):
        lost = 0

        async def call(self, method: Callable[[JournalDB], Any]) -> Any:
            result = await super().call(method)
            if (
                isinstance(method, Call)
                and method.function in functions
                and (times is None or AnswerLost.lost < times)
            ):
                AnswerLost.lost += 1
                raise JournalUnavailable("the journal process ended (test) during this call")
            return result

    return AnswerLost


class Closable(Protocol):
    """A pool of worker processes (WorkerBatches, the Analyser…): ended with ``close()``."""

    async def close(self) -> None: ...


W = TypeVar("W", bound=Closable)
Item = TypeVar("Item")
R = TypeVar("R")


def through(
    worker: W, call: Callable[[W, Item], Awaitable[R]], items: Iterable[Item]
) -> list[R | BaseException]:
    """``call(worker, item)`` for every item at once (so they share batches), in order, each
    result or exception; the worker process is ended after."""

    async def scenario() -> list[R | BaseException]:
        try:
            return await asyncio.gather(*(call(worker, i) for i in items), return_exceptions=True)
        finally:
            await worker.close()

    return asyncio.run(scenario())


def run_raccord(config: Path) -> subprocess.CompletedProcess[str]:
    """``raccord run --config CONFIG`` in a process of its own, as an operator starts it, for
    the mistakes that must stop it at once (bounded by a timeout)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
