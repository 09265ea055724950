"""``raccord run`` in a process of its own, as systemd would run it: its JSON log lines
readable as they come, waits with deadlines, SIGTERM and the exit status."""

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

from tests.e2e.sshd import processes


class Daemon:
    def __init__(self, config_path: Path, log: Path, *, pythonpath: Path | None = None) -> None:
        self.log = log
        env = dict(os.environ)
        if pythonpath is not None:  # e.g. where a plugin was installed
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(pythonpath), env.get("PYTHONPATH")])
            )
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its worker processes are found by its session id
            )

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def wait_for(
        self, what: str, done: Callable[[], bool], timeout: float = 30.0, poll: float = 0.02
    ) -> None:
        """Poll ``done`` every ``poll`` seconds; fail if raccord exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not done():
            assert self.process.poll() is None, f"raccord exited: {self.tail()}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s: {self.tail()}"
            time.sleep(poll)

    def logged(self, name: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        self.wait_for(name, lambda: len(self.events(name)) >= count, timeout)
        return self.events(name)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def session(self) -> list[int]:
        """Every live process of the daemon's session: itself and its worker processes (also
        once it is dead: they would then be orphans)."""
        return [p.pid for p in processes() if p.session == self.process.pid and p.state != "Z"]

    def left_behind(self, timeout: float = 10.0) -> list[int]:
        """The processes of the daemon's session still alive ``timeout`` s after it ended."""
        deadline = time.monotonic() + timeout
        while (found := self.session()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    def stop(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; the exit status and how long the exit took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=timeout)
        return status, time.monotonic() - started


@contextlib.contextmanager
def daemon(config_path: Path, log: Path, *, pythonpath: Path | None = None) -> Iterator[Daemon]:
    """A started daemon (``gateway.ready`` logged); killed on leaving if still running."""
    running = Daemon(config_path, log, pythonpath=pythonpath)
    try:
        running.logged("gateway.ready")
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(timeout=10)
