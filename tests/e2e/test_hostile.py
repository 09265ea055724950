"""A real ``raccord run`` against hostile conditions: one daemon per data_dir (a second exits 2
naming the first's pid, read-only commands still work), and a kill -9 in the middle of a
runaway parse leaves no process behind and no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.daemon import LOCK_FILE
from tests.conftest import sample
from tests.e2e.conftest import write_sftp_config
from tests.e2e.daemon import daemon
from tests.e2e.sshd import Sshd
from tests.gateway.flow.test_hostile_outbox import many_attributes
from tests.gateway.harness import drop, memory_config_text, rows

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _config(tmp_path: Path, **gateway: str) -> Path:
    extra = "\n".join(f'{key} = "{value}"' for key, value in gateway.items())
    path = tmp_path / "raccord.toml"
    path.write_text(memory_config_text(tmp_path / "data", "e2e", gateway_extra=extra))
    return path


def _raccord(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_daemon_on_the_same_data_dir_exits_2_naming_the_first(tmp_path: Path) -> None:
    """Two daemons would claim and send the same spool: the second refuses to start."""
    path = _config(tmp_path)
    with daemon(path, tmp_path / "daemon.log") as first:
        second = _raccord("run", "--config", str(path))
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"pid {first.process.pid}" in lines[0] and "Traceback" not in second.stderr
        # Read-only commands still work beside the running daemon.
        listing = _raccord("flows", "--config", str(path))
        assert listing.returncode == 0, listing.stderr
        assert first.process.poll() is None
        status, _ = first.stop()
    assert status == 0
    with daemon(path, tmp_path / "again.log") as again:  # the lock went with the first
        assert (tmp_path / "data" / LOCK_FILE).read_text().strip() == str(again.process.pid)
        again.stop()


@pytest.mark.parametrize("how", ["kill -9", "SIGTERM"])
def test_during_a_runaway_parse_the_daemon_stops_and_leaves_nothing_behind(
    tmp_path: Path, how: str
) -> None:
    """A parse that would take minutes holds up neither SIGTERM (honoured within
    shutdown_grace) nor, after a kill -9, the end of every worker: none is left behind, and
    no traceback is printed."""
    path = _config(tmp_path, analysis_timeout="10m")
    config = config_module.load(path)
    log = tmp_path / "daemon.log"
    with daemon(path, log) as running:
        drop(config, "hostile.xml", many_attributes(300_000))
        running.logged("flow.claimed")
        drop(config, "fine.xml", b"<Order xmlns='urn:x'/>")
        running.logged("flow.failed")  # the daemon goes on beside the runaway parse
        assert len(running.session()) >= 4, running.session()
        if how == "kill -9":
            running.process.send_signal(signal.SIGKILL)
            running.process.wait(timeout=10)
        else:
            status, took = running.stop()
            assert status == 0, running.tail()
            assert took < config.gateway.shutdown_grace + 5, f"exit took {took:.1f} s"
        assert running.left_behind(timeout=10) == [], "worker processes outlived the daemon"
    assert "Traceback" not in log.read_text()
    assert "Error" not in log.read_text().replace('"error"', "")
    by_name = {row.original_name: row for row in rows(config)}
    assert by_name["hostile.xml"].state == "claimed"  # analysed again at the next start
    assert os.path.exists(by_name["hostile.xml"].spool_path)


def test_over_sftp_a_link_or_fifo_is_never_sent_and_the_real_invoice_is(
    tmp_path: Path, sshd: Sshd
) -> None:
    """Through a real raccord run and a real OpenSSH sshd: a link to an invoice outside
    data_dir is filed itself in error/, never uploaded; a FIFO does not wedge the daemon; the
    invoice dropped after them is uploaded."""
    path = write_sftp_config(tmp_path, sshd)
    config = config_module.load(path)
    outside = tmp_path / "outside.xml"
    outside.write_bytes(sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", b"OUTSIDE"))
    outbox = Path(config.gateway.data_dir) / "outbox" / config.connections[0].name
    with daemon(path, tmp_path / "daemon.log") as running:
        (outbox / "link.xml").symlink_to(outside)
        os.mkfifo(outbox / "fifo.xml")
        drop(config, "real.xml", sample("ubl-invoice.xml"))
        running.wait_for(
            "three flows filed",
            lambda: len([r for r in rows(config) if r.state in ("sent", "error")]) == 3,
            timeout=60,
        )
        status, _ = running.stop()
    assert status == 0
    by_name = {row.original_name: row for row in rows(config)}
    assert by_name["real.xml"].state == "sent"
    for name in ("link.xml", "fifo.xml"):
        assert (by_name[name].state, by_name[name].reason) == ("error", "not_a_regular_file")
    uploaded = sshd.uploaded()
    assert len(uploaded) == 1 and b"OUTSIDE" not in b"".join(uploaded.values())
    assert (outbox.parent.parent / "error" / config.connections[0].name / "link.xml").is_symlink()
