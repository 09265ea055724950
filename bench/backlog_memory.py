#!/usr/bin/env python3
"""Benchmark: the daemon's memory with a backlog in the outboxes at start (issue 27).

For each size (default 10,000 and 100,000 files): the files are written into the outbox of an
SFTP connection to a local OpenSSH sshd before `raccord run` starts; the real daemon then
claims, journals and sends them all. Sampled every 0.25 s until every file is sent: the
daemon's RSS (its own process) and the PSS of the daemon with all its worker processes
(journal, analysis, filing, uploads, fork server: shared pages divided among them, so the sum
is not inflated by what they share). Printed per size: the daemon's peak RSS (the kernel's
high-water mark, VmHWM), the peak PSS of all, the time until every file is journaled and the
time until every file is sent; then checked: every file sent once (one remote file per flow,
every flow `sent`, nothing left in the outbox, spool or error/).

Target: the daemon's peak RSS under 250 MiB at 100,000 files, and flat from 10,000 to
100,000 (the daemon holds a window of flows in flight, not the backlog).

Usage (repository root, with the venv; a 100,000-file run takes a few minutes of both cores):
    nice -n 10 .venv/bin/python bench/backlog_memory.py [--files 10000 100000] [--size 3000]
Needs /usr/sbin/sshd (Debian package openssh-server).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.folders import Layout
from gateway.journal import JournalDB
from tests.e2e.conftest import write_sftp_config
from tests.e2e.sshd import Sshd, descendants

SAMPLE = Path(__file__).resolve().parents[1] / "gateway" / "sandbox" / "samples" / "ubl-invoice.xml"
CONNECTION = "qualif-sftp"


def invoice(i: int, size: int) -> bytes:
    """The sample UBL invoice under its own number, padded to about ``size`` bytes."""
    data = SAMPLE.read_bytes().replace(b"DEMO-UBL-0001", f"BACKLOG-{i:07}".encode())
    pad = size - len(data)
    if pad <= 7:
        return data
    return data.replace(b"</Invoice>", b"<!--" + b"x" * (pad - 7) + b"-->\n</Invoice>")


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Run:
    files: int
    peak_rss_mib: float  # the daemon's VmHWM
    peak_pss_all_mib: float  # the daemon and its workers, highest sample
    journaled_s: float  # from start until every file has its journal row
    sent_s: float  # from start until every flow is sent


def run(tmp: Path, server: Sshd, files: int, size: int) -> Run:
    work = tmp / f"run-{files}"
    work.mkdir()
    upload = server.upload_dir / f"run-{files}"
    upload.mkdir()
    config = write_sftp_config(work, server, connection_extra='validation = "off"')
    text = config.read_text()
    text = text.replace(f'upload_dir = "{server.upload_dir}"', f'upload_dir = "{upload}"')
    config.write_text(text.replace('rescan_interval = "2s"', 'rescan_interval = "30s"'))
    layout = Layout(work / "data")
    layout.create([CONNECTION])
    outbox = layout.outbox(CONNECTION)
    for i in range(files):
        (outbox / f"inv-{i:07}.xml").write_bytes(invoice(i, size))
    log = work / "daemon.log"
    journaled = sent = 0.0
    peak_pss = 0
    with log.open("wb") as out:
        started = time.monotonic()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        while not layout.journal.exists():
            assert daemon.poll() is None, log.read_text()[-2000:]
            time.sleep(0.05)
        db = JournalDB(layout.journal)
        try:
            last_count = 0.0
            while True:
                assert daemon.poll() is None, log.read_text()[-2000:]
                now = time.monotonic()
                peak_pss = max(
                    peak_pss, sum(pss_kib(pid) for pid in [daemon.pid, *descendants(daemon.pid)])
                )
                if now - last_count >= 1.0:
                    last_count = now
                    counts = db.counts()
                    if not journaled and sum(counts.values()) >= files:
                        journaled = now - started
                    if counts.get("sent", 0) + counts.get("error", 0) >= files:
                        sent = now - started
                        break
                time.sleep(0.25)
            rss = status_kib(daemon.pid, "VmHWM")
            states = db.counts()
        finally:
            db.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    assert states == {"sent": files}, states
    remote = list(upload.iterdir())
    assert len(remote) == files, f"{len(remote)} remote files for {files} flows"
    assert not any(outbox.iterdir()) and not any(layout.spool(CONNECTION).iterdir())
    assert not any(layout.error(CONNECTION).iterdir())
    return Run(files, rss / 1024, peak_pss / 1024, journaled, sent)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--size", type=int, default=3000, help="bytes per file (about)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="raccord-backlog-") as folder:
        tmp = Path(folder)
        server = Sshd(tmp / "sshd")
        server.start()
        try:
            for files in args.files:
                result = run(tmp, server, files, args.size)
                results.append(result)
                print(
                    f"{files:>7} files in the outbox at start: daemon peak RSS "
                    f"{result.peak_rss_mib:6.1f} MiB, with its workers (PSS) "
                    f"{result.peak_pss_all_mib:6.1f} MiB; journaled in {result.journaled_s:6.1f} s,"
                    f" sent in {result.sent_s:6.1f} s; every file sent once",
                    flush=True,
                )
        finally:
            server.stop()
    if len(results) > 1:
        low, high = results[0], results[-1]
        print(
            f"daemon peak RSS {low.files} -> {high.files} files: "
            f"{low.peak_rss_mib:.1f} -> {high.peak_rss_mib:.1f} MiB "
            f"({high.peak_rss_mib / low.peak_rss_mib:.2f}x; target < 250 MiB and flat)"
        )


if __name__ == "__main__":
    main()
