"""``raccord run`` that cannot start as configured: exit 2 and one sentence on stderr naming
the key at fault (a JSON ``gateway.start_failed`` line on stdout for the journal), never the
35-line traceback of an address already in use or a folder it cannot write."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.gateway.harness import memory_config_text, run_raccord


def run(config: Path) -> tuple[int, str, str]:
    done = run_raccord(config)
    return done.returncode, done.stdout, done.stderr


def test_under_journald_each_line_carries_its_priority(tmp_path: Path) -> None:
    """With stdout the journal stream systemd names in JOURNAL_STREAM, each JSON line starts
    with <N> (journald's priority prefix): journalctl -p err shows the errors."""
    (tmp_path / "plain-file").write_text("")
    path = tmp_path / "raccord.toml"
    path.write_text(memory_config_text(tmp_path / "plain-file" / "data", "journald"))
    log = tmp_path / "stdout"
    with log.open("w") as stdout:
        found = os.fstat(stdout.fileno())
        environment = {**os.environ, "JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"}
        subprocess.run(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(path)],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            env=environment,
            timeout=60,
            check=False,
        )
    lines = log.read_text().splitlines()
    [failed] = [line for line in lines if "gateway.start_failed" in line]
    assert failed.startswith('<3>{"')
    assert json.loads(failed[3:])["level"] == "error"
    # Elsewhere (a terminal, a file the operator chose): plain JSON lines.
    _, out, _ = run(path)
    assert all(line.startswith("{") for line in out.splitlines())


def test_a_metrics_address_in_use_is_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        path = tmp_path / "raccord.toml"
        path.write_text(
            memory_config_text(
                tmp_path / "data", "busy", gateway_extra=f'metrics = "127.0.0.1:{port}"'
            )
        )
        status, out, err = run(path)
    assert status == 2
    assert err == (
        f"raccord: {path}: gateway.metrics: 127.0.0.1:{port} is already in use by another "
        "program (ss -ltnp shows which); choose another address\n"
    )
    [failed] = [json.loads(line) for line in out.splitlines() if "start_failed" in line]
    assert failed["level"] == "error"


def test_an_as2_receiver_address_in_use_is_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        path = tmp_path / "raccord.toml"
        path.write_text(
            memory_config_text(tmp_path / "data", "busy2")
            + f'\n[as2_receiver]\nlisten = "127.0.0.1:{port}"\n'
        )
        status, _, err = run(path)
    assert status == 2
    assert err.startswith(f"raccord: {path}: as2_receiver.listen: 127.0.0.1:{port} is already")
    assert err.count("\n") == 1


def test_a_data_dir_that_cannot_be_created_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    path = tmp_path / "raccord.toml"
    path.write_text(memory_config_text(tmp_path / "plain-file" / "data", "nodir"))
    status, _, err = run(path)
    assert status == 2
    assert err.startswith(
        f"raccord: {path}: gateway.data_dir: cannot create the folders in "
        f"{tmp_path / 'plain-file' / 'data'} (Not a directory"
    )
    assert err.count("\n") == 1 and "Traceback" not in err
