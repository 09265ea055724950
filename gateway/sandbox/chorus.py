"""The partner simulator: a stand-in for the Chorus Pro qualification environment on loopback.

It serves SFTP (asyncssh's server side): public-key authentication against the keys it is
given, and a chroot-like root folder holding ``depot/`` (uploads) and ``retrait/`` (return flows
to pick up). Its :class:`Desk` answers every deposit with a CPP Statut return flow in
``retrait/``, as Chorus Pro would under the connection's mode for the flow's interface code:

* an invoice is rejected (status 05) if it cannot be read or lacks an invoice number, or if its
  number matches the rejection rule (``reject_pattern``);
* Complète: one rejected invoice fails the whole flow (flow status 93, the faulty invoices
  named); Partielle: flow status 96 with 05 for the faulty invoices and 01 for the others;
  a flow without fault gets 90 and 01 for each invoice.

The desk only reads and writes folders, so the tests point it at a real OpenSSH server's
folders as well. It is for demos and tests, never for production traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import asyncssh

from flows import cppstatut, lots, naming
from flows.analysis import analyze
from protocols.base import Closing

UPLOAD_DIR = "depot"
DOWNLOAD_DIR = "retrait"


@dataclass(frozen=True)
class SimulatorKeys:
    host_key: Path
    authorized_keys: Path


def generate_keys(folder: Path, client_key: Path) -> SimulatorKeys:
    """Create a host key and authorise ``client_key`` (creating it if missing) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key = folder / "ssh_host_ed25519_key"
    if not host_key.exists():
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(host_key))
    if not client_key.exists():
        client_key.parent.mkdir(parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="raccord")
        key.write_private_key(str(client_key))
        key.write_public_key(str(client_key) + ".pub")
    client_key.chmod(0o600)
    authorized = folder / "authorized_keys"
    authorized.write_bytes(Path(str(client_key) + ".pub").read_bytes())
    return SimulatorKeys(host_key, authorized)


def known_hosts_line(host_key: Path, host: str, port: int) -> str:
    public = asyncssh.read_private_key(str(host_key)).export_public_key().decode().strip()
    return f"[{host}]:{port} {public}\n"


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True


class SftpSimulator(Closing):
    """An SFTP server on ``host`` (port 0 = any free port) serving ``root``."""

    def __init__(self, root: Path, keys: SimulatorKeys, host: str = "127.0.0.1", port: int = 0):
        self.root = root
        self.keys = keys
        self.host = host
        self._port = port
        self._server: asyncssh.SSHAcceptor | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "simulator not started"
        return int(self._server.get_port())

    async def __aenter__(self) -> Self:
        (self.root / UPLOAD_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / DOWNLOAD_DIR).mkdir(parents=True, exist_ok=True)
        root = str(self.root).encode()

        def sftp_factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
            return asyncssh.SFTPServer(chan, chroot=root)

        self._server = await asyncssh.listen(
            self.host,
            self._port,
            server_host_keys=[str(self.keys.host_key)],
            authorized_client_keys=str(self.keys.authorized_keys),
            server_factory=_Server,
            sftp_factory=sftp_factory,
            allow_scp=False,
        )
        return self

    async def aclose(self) -> None:
        """Stop serving (leaving ``async with`` calls this)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


@dataclass(frozen=True)
class Rules:
    """How the simulated partner judges deposits."""

    modes: Mapping[str, str] = field(default_factory=dict)  # interface code -> complete|partial
    reject_pattern: str | None = None  # invoices whose number matches are rejected
    default_mode: str = "complete"


@dataclass(frozen=True)
class Judged:
    """One invoice of a deposit, as the simulated partner sees it."""

    invoice_number: str | None
    supplier_id: str | None
    interface_code: str | None
    fault: str | None


@dataclass(frozen=True)
class Judgement:
    """A whole deposit: its invoices (one, or a lot's members) under the mode for their code,
    or why it could not be opened at all."""

    invoices: list[Judged]
    mode: str
    unreadable: str | None = None

    @property
    def faulty(self) -> list[Judged]:
        return [j for j in self.invoices if j.fault]


def _judge(name: str, data: bytes, rules: Rules) -> Judged:
    with tempfile.TemporaryDirectory(prefix="raccord-partner-") as folder:
        path = Path(folder) / "invoice"
        path.write_bytes(data)
        found = analyze(path)
    fault = None
    if not found.ok:
        fault = f"{name}: {found.message or 'unreadable'}"
    elif not found.invoice_number:
        fault = f"{name}: no invoice number"
    elif rules.reject_pattern and re.search(rules.reject_pattern, found.invoice_number):
        fault = f"invoice {found.invoice_number} refused by the simulator's rejection rule"
    return Judged(found.invoice_number, found.supplier_id, found.interface_code, fault)


def judge(remote_name: str, data: bytes, rules: Rules) -> Judgement:
    """How the simulated partner judges the deposit ``remote_name`` holding ``data``."""
    try:
        members = lots.read_members(data) if lots.packaging_of(data[:4]) else [(remote_name, data)]
    except lots.LotError as exc:
        return Judgement([], rules.default_mode, f"archive illisible: {exc}")
    judged = [_judge(name, content, rules) for name, content in members]
    code = next((j.interface_code for j in judged if j.interface_code), None)
    return Judgement(judged, rules.modes.get(code or "", rules.default_mode))


def answer(remote_name: str, data: bytes, rules: Rules, now: datetime | None = None) -> bytes:
    """The CPP Statut Chorus Pro would return for the flow ``remote_name`` holding ``data``."""
    at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S")
    judgement = judge(remote_name, data, rules)
    if judgement.unreadable is not None:
        failed = cppstatut.FlowLine("93", at, [("ARCHIVE", judgement.unreadable)])
        return cppstatut.build(cppstatut.Statut(remote_name, at, [failed]))
    judged, mode, faulty = judgement.invoices, judgement.mode, judgement.faulty

    def line(j: Judged, status: str) -> cppstatut.InvoiceLine:
        return cppstatut.InvoiceLine(j.invoice_number or "", status, j.supplier_id, at, j.fault)

    if not faulty:
        flow = cppstatut.FlowLine("90", at)
        invoices = [line(j, "01") for j in judged]
    elif mode == "complete":
        flow = cppstatut.FlowLine("93", at, [("REJET", j.fault or "") for j in faulty])
        invoices = [line(j, "05") for j in faulty if j.invoice_number]
    else:
        flow = cppstatut.FlowLine("96", at, [("REJET", j.fault or "") for j in faulty])
        invoices = [line(j, "05" if j.fault else "01") for j in judged if j.invoice_number]
    return cppstatut.build(cppstatut.Statut(remote_name, at, [flow], invoices))


class Desk:
    """Answers each new file in ``deposits`` with a CPP Statut in ``returns``."""

    def __init__(
        self, deposits: Path, returns: Path, rules: Rules, *, interval: float = 0.1
    ) -> None:
        self.deposits = deposits
        self.returns = returns
        self.rules = rules
        self.interval = interval
        self.answered: dict[str, str] = {}  # deposit name -> return flow name
        self._count = 0

    def answer_new(self) -> int:
        """Answer every deposit not answered yet; return how many were."""
        done = 0
        for entry in sorted(os.listdir(self.deposits)):
            path = self.deposits / entry
            if entry in self.answered or entry.startswith(".") or not path.is_file():
                continue
            statut = answer(entry, path.read_bytes(), self.rules)
            self._count += 1
            name = f"FEN1200A_{self._count:04d}_{naming.safe(entry)}.xml"
            temp = self.returns / f".{name}.tmp"
            temp.write_bytes(statut)
            temp.rename(self.returns / name)  # the gateway never sees a half-written return
            self.answered[entry] = name
            done += 1
        return done

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await asyncio.to_thread(self.answer_new)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)
