"""Signals on a running ``raccord run`` (a real process, a real sshd): SIGTERM in the middle
of a transfer exits 0 within the grace period and the flow resumes under the same remote name;
SIGHUP applies a valid configuration and keeps the running one when the new file is invalid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_module
from tests.conftest import sample
from tests.e2e.conftest import write_sftp_config
from tests.e2e.sshd import Sshd
from tests.gateway.harness import drop, rows

pytestmark = pytest.mark.e2e


def invoice(number: str, padding: int = 0) -> bytes:
    data = sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())
    return data + b"<!--" + b"x" * padding + b"-->\n" if padding else data


class Daemon:
    """``raccord run`` in its own process, its JSON log lines readable as they come."""

    def __init__(self, config_path: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def wait_for(self, what: str, done: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert self.process.poll() is None, f"raccord exited: {self.log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s: {self.tail()}"
            time.sleep(0.05)

    def logged(self, name: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        self.wait_for(name, lambda: len(self.events(name)) >= count, timeout)
        return self.events(name)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; the exit status and how long the exit took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=timeout)
        return status, time.monotonic() - started


@contextlib.contextmanager
def daemon(config_path: Path, log: Path) -> Iterator[Daemon]:
    running = Daemon(config_path, log)
    try:
        running.logged("gateway.ready")
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(timeout=10)


def test_sigterm_mid_transfer_exits_0_and_the_flow_resumes_under_its_remote_name(
    tmp_path: Path, sshd: Sshd
) -> None:
    path = write_sftp_config(tmp_path, sshd)
    config = config_module.load(path)
    big = invoice("SIG-1", padding=20_000_000)
    log = tmp_path / "daemon.log"
    frozen: list[int] = []
    try:
        with daemon(path, log) as first:
            drop(config, "big.xml", big)
            first.logged("flow.sending")

            def partly_uploaded() -> bool:
                return any(
                    p.name.endswith(".part") and p.stat().st_size > 0
                    for p in sshd.upload_dir.iterdir()
                )

            first.wait_for("partial upload", partly_uploaded)
            # The partner stalls mid-file: its session processes stop answering.
            frozen = sshd.sessions()
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            status, took = first.stop()
        assert status == 0, first.tail()
        assert took < config.gateway.shutdown_grace + 10, f"exit took {took:.1f} s"
        [row] = rows(config)
        assert (row.state, row.unknown_outcome, row.attempts) == ("sending", 1, 1)
        remote_name = row.remote_name
        assert remote_name and remote_name not in sshd.uploaded()  # never renamed in place
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    with daemon(path, log) as second:
        second.wait_for("the flow filed", lambda: rows(config)[0].state == "sent", timeout=60)
        status, _ = second.stop()
    assert status == 0
    [row] = rows(config)
    assert (row.remote_name, row.attempts) == (remote_name, 2)
    assert sshd.uploaded() == {remote_name: big}  # whole, once, no temporary file left


ADDED = """
[[connection]]
name = "second-sftp"
environment = "qualification"
protocol = "sftp"
partner_code = "VFE057"
structure = "00000000000230"
valid_from = 2017-06-21
valid_to = 2099-06-30

[connection.interfaces]
FSO1100A = "partial"

[connection.sftp]
host = "127.0.0.1"
port = {port}
username = "{username}"
private_key = "{key}"
known_hosts = "{known_hosts}"
upload_dir = "{upload_dir}"
"""


def test_sighup_applies_a_valid_configuration_and_keeps_the_running_one_otherwise(
    tmp_path: Path, sshd: Sshd
) -> None:
    path = write_sftp_config(tmp_path, sshd)
    config = config_module.load(path)
    original = path.read_text()
    second_dir = sshd.folder / "depot2"
    second_dir.mkdir()
    with daemon(path, tmp_path / "daemon.log") as running:
        path.write_text(original.replace("[gateway]", "[gateway", 1))
        running.process.send_signal(signal.SIGHUP)
        [failed] = running.logged("config.reload_failed")
        assert "not valid TOML" in failed["error"]
        assert failed["action"] == "kept the running configuration"
        drop(config, "kept.xml", invoice("SIG-2"))
        running.wait_for("kept.xml sent", lambda: [r.state for r in rows(config)] == ["sent"])

        path.write_text(
            original
            + ADDED.format(
                port=sshd.port,
                username=sshd.username,
                key=sshd.client_key,
                known_hosts=sshd.known_hosts,
                upload_dir=second_dir,
            )
        )
        running.process.send_signal(signal.SIGHUP)
        [reloaded] = running.logged("config.reloaded")
        assert reloaded["added"] == ["second-sftp"] and reloaded["changed"] == []
        drop(config, "added.xml", invoice("SIG-3"), connection="second-sftp")
        running.wait_for(
            "added.xml sent",
            lambda: len(rows(config)) == 2 and all(r.state == "sent" for r in rows(config)),
        )
        status, _ = running.stop()
    assert status == 0
    by_name = {r.original_name: r for r in rows(config)}
    assert by_name["added.xml"].connection == "second-sftp"
    assert [p.name for p in second_dir.iterdir()] == [by_name["added.xml"].remote_name]
    assert by_name["kept.xml"].remote_name in sshd.uploaded()
