"""What ``raccord check`` proves without the network, beyond the configuration's own syntax.

Every file the configuration names exists and is readable by this user (run the check as the
daemon's user: ``sudo -u raccord raccord check``, as the unit's ``ExecReload`` does); SSH keys
and ``known_hosts`` parse and vouch for the host; every certificate in use is within its
validity; ``data_dir`` is writable or can be created; the listen addresses are free, or held by
the raccord daemon itself. Each problem is one sentence naming the configuration key and the
file at fault, so that ``raccord check`` fails (exit 1) on a configuration that cannot work.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gateway.config import Config, Connection
from gateway.ops import certificates
from protocols import certs
from protocols.sftp import files as sftp_files
from protocols.sftp.sender import SftpSettings

#: Seconds a listen address in use gets to say it is the raccord daemon.
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Problem:
    """One thing that cannot work: the configuration key at fault and one sentence."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def prove(config: Config, now: datetime) -> list[Problem]:
    """Every problem found in ``config``'s files, folders and addresses, in file order."""
    found: list[Problem] = []
    today = now.date()
    # A connection that carries nothing today (draft, disabled, outside its period) may not
    # have its files yet; they are proved when it becomes usable.
    usable = [conn for conn in config.connections if conn.unusable_reason(today) is None]
    for conn in usable:
        found += connection_files(conn)
    receiver = config.as2_receiver
    if receiver is not None:
        for name in ("tls_certificate", "tls_key"):
            path = getattr(receiver, name)
            problem = path and sftp_files.unreadable(path, name.replace("_", " ") + " file")
            if problem:
                found.append(Problem(f"as2_receiver.{name}", problem))
    found += certificate_problems(config, now, {conn.name for conn in usable})
    problem = data_dir_problem(config.gateway.data_dir)
    if problem:
        found.append(Problem("gateway.data_dir", problem))
    found += listen_problems(config)
    return found


def connection_files(conn: Connection) -> list[Problem]:
    """The files a connection's protocol settings name: readable, and (SFTP) usable."""
    where = f"connection[{conn.name}].{conn.protocol}"
    settings = conn.settings
    found: list[Problem] = []
    if isinstance(settings, SftpSettings):
        problem = sftp_files.key_problem(settings.private_key, settings.passphrase)
        if problem:
            found.append(Problem(f"{where}.private_key", problem))
        problem = sftp_files.known_hosts_problem(settings.known_hosts, settings.host, settings.port)
        if problem:
            found.append(Problem(f"{where}.known_hosts", problem))
        return found
    # Any other protocol, plugins included: every path among its settings must be readable
    # (a folder too: a plugin may name one).
    for name, path in _paths(settings):
        key = name.removesuffix("_path")
        if path.is_dir():
            if not os.access(path, os.R_OK | os.X_OK):
                found.append(Problem(f"{where}.{key}", f"{path} is not readable by this user"))
            continue
        problem = sftp_files.unreadable(path, key.replace("_", " ") + " file")
        if problem:
            found.append(Problem(f"{where}.{key}", problem))
    return found


def _paths(settings: object) -> Iterator[tuple[str, Path]]:
    if not dataclasses.is_dataclass(settings):
        return
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, Path):
            yield field.name, value


def certificate_problems(config: Config, now: datetime, usable: set[str]) -> list[Problem]:
    """Certificates outside their validity, and partner chains that do not hold, each naming
    the certificate's own file (the receiver's, and those of the ``usable`` connections)."""
    found: list[Problem] = []
    try:
        items = list(certificates.in_use(config))
    except certs.CertificateProblem as exc:
        return [Problem("certificate", str(exc))]
    for item in items:
        if item.connection != certificates.RECEIVER and item.connection not in usable:
            continue
        cert = item.certificate
        where = f" in {item.source}" if item.source else ""
        subject = certs.name(cert)
        who = "the AS2 receiver" if item.connection == certificates.RECEIVER else item.connection
        if cert.not_valid_after_utc < now:
            found.append(
                Problem(
                    item.key or "certificate",
                    f"{who}: {item.role} certificate {subject}{where} expired on "
                    f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; install a valid one",
                )
            )
        elif cert.not_valid_before_utc > now:
            found.append(
                Problem(
                    item.key or "certificate",
                    f"{who}: {item.role} certificate {subject}{where} is valid only from "
                    f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
                )
            )
        if item.role == "partner":
            settings = config.connection(item.connection).settings
            problems = certs.chain_problems(
                settings.partner_chain, settings.partner_trust, now=now, dates=False
            )
            if problems:
                found.append(
                    Problem(
                        item.key or "certificate",
                        f"{who}: the partner's chain{where} does not hold: {'; '.join(problems)}",
                    )
                )
    return found


def data_dir_problem(data_dir: Path) -> str | None:
    """Why the daemon (this user) could not write in ``data_dir``, or None."""
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"data_dir {data_dir}: {probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        if probe == data_dir:
            return f"data_dir {data_dir} is not writable by this user (uid {os.geteuid()})"
        return (
            f"data_dir {data_dir} does not exist and cannot be created: {probe} is not "
            f"writable by this user (uid {os.geteuid()}); create it for the daemon's user"
        )
    if probe != data_dir:
        return None
    for entry in (data_dir / "journal.sqlite", *sorted(data_dir.iterdir())):
        if entry.exists() and (entry.is_dir() or entry.name.startswith("journal.sqlite")):
            mode = os.W_OK | (os.X_OK if entry.is_dir() else 0)
            if not os.access(entry, mode):
                return f"data_dir {data_dir}: {entry} is not writable by this user"
    return None


def listen_problems(config: Config) -> list[Problem]:
    """The listen addresses: each free, or held by the raccord daemon itself."""
    found: list[Problem] = []
    metrics = config.gateway.metrics
    if metrics is not None:
        problem = address_problem(*metrics, probe_path="/healthz", marker=b'"checks"')
        if problem:
            found.append(Problem("gateway.metrics", problem))
    receiver = config.as2_receiver
    if receiver is not None:
        problem = address_problem(
            receiver.host,
            receiver.port,
            probe_path="/",
            marker=b"raccord AS2 receiver",
            tls=receiver.tls_certificate is not None,
        )
        if problem:
            found.append(Problem("as2_receiver.listen", problem))
    return found


def address_problem(
    host: str, port: int, *, probe_path: str, marker: bytes, tls: bool = False
) -> str | None:
    """Why a server could not listen on ``host``:``port``, or None (free, or raccord's own)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"{host}:{port}: unknown host ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As the servers bind: an address in TIME_WAIT is free for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            return None
        except OSError as exc:
            error = exc
    if error.errno == errno.EADDRINUSE:
        if port and _raccord_answers(host, port, probe_path, marker, tls):
            return None
        return (
            f"{host}:{port} is already in use by another program; choose another port or "
            f"stop that program (ss -ltnp 'sport = :{port}' shows it)"
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{host}:{port}: {host} is not an address of this machine"
    if error.errno == errno.EACCES:
        return f"{host}:{port}: this user may not listen on port {port} (use a port >= 1024)"
    return f"{host}:{port}: cannot listen ({error.strerror or error})"


def _raccord_answers(host: str, port: int, path: str, marker: bytes, tls: bool) -> bool:
    """Whether the program listening there is a raccord daemon (it then holds its address)."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - where to reach a server listening everywhere
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    name = f"[{host}]" if ":" in host else host
    context = None
    if tls:  # our own daemon's certificate: nothing is trusted from the answer but a marker
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{'https' if tls else 'http'}://{name}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT, context=context) as answer:  # noqa: S310
            return marker in answer.read(4096)
    except urllib.error.HTTPError as exc:  # /healthz answers 503 when the daemon is unwell
        return marker in exc.read(4096)
    except (OSError, ValueError):
        return False
