"""A real OpenSSH sshd on 127.0.0.1 for the tests, with its own config, host key and users' key."""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
MaxStartups 100
MaxSessions 100
"""


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    state: str  # "R", "S", "Z" (a zombie: ended, not yet reaped)…
    parent: int
    session: int


def processes() -> Iterator[ProcessInfo]:
    """Every process of the machine, read from /proc/<pid>/stat."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        state, parent, _, session = stat.rsplit(")", 1)[1].split()[:4]
        yield ProcessInfo(int(entry.name), state, int(parent), int(session))


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for process in processes():
        children.setdefault(process.parent, []).append(process.pid)
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "raccord-test", "-f", str(path)],
        check=True,
    )


class Sshd:
    """sshd serving SFTP to the current user; ``upload_dir`` is an absolute local folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.host_key = folder / "ssh_host_ed25519_key"
        self.client_key = folder / "id_ed25519"
        keygen(self.host_key)
        keygen(self.client_key)
        (folder / "authorized_keys").write_bytes(Path(f"{self.client_key}.pub").read_bytes())
        self.upload_dir = folder / "depot"
        self.upload_dir.mkdir()
        self.download_dir = folder / "retrait"
        self.download_dir.mkdir()
        self.port = free_port()
        self.username = getpass.getuser()
        self.config = folder / "sshd_config"
        self.config.write_text(CONFIG.format(port=self.port, host_key=self.host_key, folder=folder))
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(self.known_hosts_line(self.host_key))
        self._process: subprocess.Popen[bytes] | None = None

    def known_hosts_line(self, host_key: Path) -> str:
        public = Path(f"{host_key}.pub").read_text().split()
        return f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n"

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        with (self.folder / "sshd.log").open("ab") as log:
            self._process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)], start_new_session=True, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                said = (self.folder / "sshd.log").read_text()
                raise RuntimeError(f"sshd exited with {self._process.returncode}: {said}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening within 10 s")

    def stop(self) -> None:
        """Kill the listener and every session it forked (they call setsid: no group kill)."""
        if self._process is None:
            return
        for pid in [*descendants(self._process.pid), self._process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._process.wait(timeout=10)
        self._process = None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[list[int]]:
        """A partner that stops answering: the processes serving the clients connected now
        (session sshd and sftp-server, not the listener) are stopped (SIGSTOP), and killed on
        leaving — as a stalled session would end. Yields their pids."""
        sessions = descendants(self._process.pid) if self._process is not None else []
        for pid in sessions:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield sessions
        finally:
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def clients(self) -> list[int]:
        """The processes holding a TCP connection to this sshd (from /proc/net/tcp and each
        process's file descriptors)."""
        inodes = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == self.port and fields[3] == "01":  # ESTABLISHED
                    inodes.add(f"socket:[{fields[9]}]")
        found = []
        for process in processes():
            with contextlib.suppress(OSError):
                fds = Path(f"/proc/{process.pid}/fd")
                if any(os.readlink(fd) in inodes for fd in fds.iterdir()):
                    found.append(process.pid)
        return found

    def uploaded(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in self.upload_dir.iterdir()}
