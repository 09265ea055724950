"""Signals on a running ``raccord run`` (a real process, a real sshd): SIGTERM in the middle
of a transfer exits 0 within the grace period and the flow resumes under the same remote name;
the same signal sent to the whole process group (as systemd's stop and Ctrl-C do) lets the
transfer under way finish and be filed; SIGHUP applies a valid configuration and keeps the
running one when the new file is invalid."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from gateway import config as config_module
from tests.conftest import sample
from tests.e2e.conftest import write_sftp_config
from tests.e2e.daemon import daemon
from tests.e2e.sshd import Sshd
from tests.gateway.harness import connection_toml, drop, rows

pytestmark = pytest.mark.e2e


def invoice(number: str, padding: int = 0) -> bytes:
    data = sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())
    return data + b"<!--" + b"x" * padding + b"-->\n" if padding else data


def test_sigterm_mid_transfer_exits_0_and_the_flow_resumes_under_its_remote_name(
    tmp_path: Path, sshd: Sshd
) -> None:
    path = write_sftp_config(tmp_path, sshd)
    config = config_module.load(path)
    big = invoice("SIG-1", padding=20_000_000)
    log = tmp_path / "daemon.log"
    with daemon(path, log) as first:
        drop(config, "big.xml", big)
        first.logged("flow.sending")

        def partly_uploaded() -> bool:
            return any(
                p.name.endswith(".part") and p.stat().st_size > 0 for p in sshd.upload_dir.iterdir()
            )

        first.wait_for("partial upload", partly_uploaded)
        with sshd.frozen():  # the partner stalls mid-file
            status, took = first.stop()
    assert status == 0, first.tail()
    assert took < config.gateway.shutdown_grace + 10, f"exit took {took:.1f} s"
    [row] = rows(config)
    assert (row.state, row.unknown_outcome, row.attempts) == ("sending", 1, 1)
    remote_name = row.remote_name
    assert remote_name and remote_name not in sshd.uploaded()  # never renamed in place

    with daemon(path, log) as second:
        second.wait_for("the flow filed", lambda: rows(config)[0].state == "sent", timeout=60)
        status, _ = second.stop()
    assert status == 0
    [row] = rows(config)
    assert (row.remote_name, row.attempts) == (remote_name, 2)
    assert sshd.uploaded() == {remote_name: big}  # whole, once, no temporary file left


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_whole_group_lets_the_transfer_under_way_finish(
    tmp_path: Path, sshd: Sshd, signum: signal.Signals
) -> None:
    """The journal and analysis processes get the signal too; they must keep serving until the
    daemon, done with its transfers, ends them."""
    path = write_sftp_config(tmp_path, sshd)
    config = config_module.load(path)
    big = invoice("GROUP-1", padding=28_000_000)
    with daemon(path, tmp_path / "daemon.log") as running:
        drop(config, "big.xml", big)

        def partly_uploaded() -> bool:
            return any(
                p.name.endswith(".part") and p.stat().st_size > 0 for p in sshd.upload_dir.iterdir()
            )

        running.wait_for("partial upload", partly_uploaded, poll=0.002)
        workers = set(running.session()) - {running.process.pid}
        os.killpg(running.process.pid, signum)
        assert running.process.wait(timeout=30) == 0, running.tail()
        assert not running.events("flow.failed") and not running.events("flow.unfiled")
        assert (
            running.events("gateway.stopping")[0]["timestamp"]
            < running.events("flow.sent")[0]["timestamp"]
        ), "the transfer was over before the signal: nothing was tested"
        # The workers that got the signal served to the end: none died and was started again.
        assert not running.events("worker.died"), running.tail()
        assert workers and running.left_behind() == [], running.tail()
    [row] = rows(config)
    assert row.state == "sent"
    assert sshd.uploaded() == {row.remote_name: big}


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
        running.signal(signal.SIGHUP)
        [failed] = running.logged("config.reload_failed")
        assert "not valid TOML" in failed["error"]
        assert failed["action"] == "kept the running configuration"
        drop(config, "kept.xml", invoice("SIG-2"))
        running.wait_for("kept.xml sent", lambda: [r.state for r in rows(config)] == ["sent"])

        path.write_text(
            original
            + connection_toml(
                "second-sftp",
                "sftp",
                {
                    "host": "127.0.0.1",
                    "port": sshd.port,
                    "username": sshd.username,
                    "private_key": sshd.client_key,
                    "known_hosts": sshd.known_hosts,
                    "upload_dir": second_dir,
                },
            )
        )
        running.signal(signal.SIGHUP)
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
