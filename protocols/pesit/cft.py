"""``protocol = "pesit-cft"``: hand each flow to an installed Axway Transfer CFT.

For sites whose PeSIT link to Chorus Pro already runs through CFT: raccord does not speak PeSIT
itself but submits a transfer with ``CFTUTIL`` and waits for CFT's verdict::

    CFTUTIL SEND PART=<partner>, IDF=<idf>, FNAME=<file>, NFNAME=<remote name>, IDA=<flow id>

Waiting is one of two documented ways (in CFT's documentation), per connection:

* ``wait = "sync"``: the SEND itself waits (``WSTATES=TX, WTIMEOUT=<timeout>``); CFTUTIL says
  ``CFTU00I SEND _ Correct (…IDTU=…)`` once the transfer ended, or ``CFTU25E … TIMEOUT reached``;
* ``wait = "catalog"``: the SEND returns at once with the transfer's IDTU, then
  ``CFTUTIL LISTCAT IDTU=<idtu>, CONTENT=FULL`` is polled until its PHASE/PHASESTEP say done
  (X/X, or a later phase) or killed (K), with DIAGI/DIAGP for the reason.

``IDA`` carries the flow id, so a resend after an unknown outcome first looks the flow up in
the catalog (``LISTCAT IDA=<flow id>``): a transfer CFT already finished is not sent again.

Catalog fields are read as ``NAME = value`` or ``NAME=value`` pairs; which exact layout a given
CFT version prints is not settled by public documents, so the parser takes both and the
command templates are settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import time
from dataclasses import dataclass

from protocols.base import Capabilities, Closing, Outbound, ProtocolPlugin, Receipt
from protocols.errors import (
    ConnectError,
    ProtocolError,
    RemoteBusy,
    TransferError,
    TransferTimeout,
)
from protocols.pesit.sender import TEMPLATE_FIELDS, diagnostic_error, name_fields
from protocols.settings import Section, SettingsError

SEND_TEMPLATE = "SEND PART={partner}, IDF={idf}, FNAME={file}, NFNAME={nfname}, IDA={ida}"
SYNC_SUFFIX = ", WSTATES=TX, WTIMEOUT={wait_seconds}"
LISTCAT_IDTU = "LISTCAT IDTU={idtu}, CONTENT=FULL"
LISTCAT_IDA = "LISTCAT IDA={ida}, CONTENT=FULL"
#: What send_template may use besides the name fields (TEMPLATE_FIELDS) of idf/nfname/parm.
SEND_FIELDS = (*TEMPLATE_FIELDS, "partner", "idf", "nfname", "parm", "file", "ida")
_PAIR = re.compile(r"\b(IDTU|IDT|IDA|STATE|PHASE|PHASESTEP|DIAGI|DIAGP)\s*=\s*([^\s,()]+)", re.I)
_DONE_PHASES = frozenset({"Y", "Z", "X"})  # the transfer phase (T) is over


@dataclass(frozen=True)
class CftSettings:
    command: str = "CFTUTIL"
    partner: str = ""
    idf: str = "{interface}"
    nfname: str = "{remote_name}"
    parm: str = ""
    send_template: str = SEND_TEMPLATE
    wait: str = "sync"
    timeout: float = 600.0  # how long a transfer may take, end to end
    poll_interval: float = 2.0  # catalog mode
    command_timeout: float = 60.0  # one CFTUTIL run (other than a synchronous SEND)


def parse_settings(section: Section) -> CftSettings:
    settings = CftSettings(
        command=section.string("command", "CFTUTIL"),
        partner=section.string("partner", required=True),
        idf=section.template("idf", "{interface}", TEMPLATE_FIELDS),
        nfname=section.template("nfname", "{remote_name}", TEMPLATE_FIELDS),
        parm=section.template("parm", "", TEMPLATE_FIELDS),
        send_template=section.template("send_template", SEND_TEMPLATE, SEND_FIELDS),
        wait=section.choice("wait", ["sync", "catalog"], "sync"),
        timeout=section.duration("timeout", "10m"),
        poll_interval=section.duration("poll_interval", "2s"),
        command_timeout=section.duration("command_timeout", "60s"),
    )
    if "{file}" not in settings.send_template or "{ida}" not in settings.send_template:
        raise SettingsError(
            section.key("send_template"),
            "must pass {file} (what to send) and {ida} (how raccord finds the transfer again)",
        )
    section.finish()
    return settings


@dataclass(frozen=True)
class Catalog:
    """What CFT's catalog says of one transfer."""

    idtu: str | None
    phase: str | None
    phasestep: str | None
    state: str | None
    diagi: str | None
    diagp: str | None

    @property
    def done(self) -> bool:
        return self.phase in _DONE_PHASES and self.phasestep != "K"

    @property
    def killed(self) -> bool:
        return self.phasestep == "K" or (self.phasestep == "H" and self.diagi not in (None, "0"))


def read_catalog(output: str) -> Catalog | None:
    """The first transfer described in ``output``; None when it describes none."""
    found: dict[str, str] = {}
    for name, value in _PAIR.findall(output):
        found.setdefault(name.upper(), value)
    if not found.get("IDTU") and not found.get("PHASE"):
        return None
    return Catalog(
        found.get("IDTU"),
        found.get("PHASE", "").upper() or None,
        found.get("PHASESTEP", "").upper() or None,
        found.get("STATE"),
        found.get("DIAGI"),
        found.get("DIAGP"),
    )


class CftSender(Closing):
    protocol = "pesit-cft"
    capabilities = Capabilities(detects_resend=True)

    def __init__(self, settings: CftSettings) -> None:
        self._settings = settings

    def _fields(self, flow: Outbound) -> dict[str, str]:
        s = self._settings
        names = name_fields(flow)
        return {
            **names,
            "partner": s.partner,
            "idf": s.idf.format(**names),
            "nfname": s.nfname.format(**names),
            "parm": s.parm.format(**names),
            "file": str(flow.path),
            "ida": flow.flow_id,
        }

    async def _run(self, arguments: str, limit: float) -> tuple[int, str]:
        """Run CFTUTIL with ``arguments`` (already formatted, values shell-quoted)."""
        argv = [self._settings.command, *shlex.split(arguments)]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except FileNotFoundError:
            raise ProtocolError(
                f"{self._settings.command} not found: install Transfer CFT's CFTUTIL or set "
                "command to its full path in [connection.pesit-cft]"
            ) from None
        except OSError as exc:
            raise ProtocolError(f"cannot run {self._settings.command}: {exc}") from None
        try:
            out, _ = await asyncio.wait_for(process.communicate(), limit)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 5)
            raise
        return process.returncode or 0, out.decode("utf-8", "replace")

    def _format(self, template: str, fields: dict[str, str]) -> str:
        return template.format(**{key: shlex.quote(value) for key, value in fields.items()})

    async def send(self, flow: Outbound) -> Receipt:
        s = self._settings
        fields = self._fields(flow)
        if flow.resend:
            earlier = await self._lookup(LISTCAT_IDA, {"ida": flow.flow_id})
            if earlier is not None and earlier.done:
                return self._receipt(flow, fields, earlier, already=True)
            if earlier is not None and not earlier.killed and earlier.idtu:
                # CFT still holds the earlier submission: follow it rather than send again
                return await self._follow(flow, fields, earlier.idtu)
        template = s.send_template + (SYNC_SUFFIX if s.wait == "sync" else "")
        command = self._format(template, {**fields, "wait_seconds": str(int(s.timeout))})
        try:
            code, output = await self._run(command, s.timeout + s.command_timeout)
        except TimeoutError:
            raise TransferTimeout(
                f"CFTUTIL SEND for {flow.remote_name} did not return in "
                f"{s.timeout + s.command_timeout:g}s; the catalog entry with IDA={flow.flow_id} "
                "tells whether it left"
            ) from None
        entry = read_catalog(output)
        if "TIMEOUT" in output.upper() and code != 0:
            raise TransferTimeout(
                f"CFT has not finished the transfer of {flow.remote_name} in {s.timeout:g}s "
                f"({_last_line(output)}); the retry looks it up by IDA={flow.flow_id}"
            )
        if code >= 8 or entry is None or "CORRECT" not in output.upper():
            raise self._failure(flow, output, entry, code)
        if s.wait == "catalog":
            if entry.idtu is None:
                raise ProtocolError(f"CFTUTIL SEND gave no IDTU: {_last_line(output)}")
            return await self._follow(flow, fields, entry.idtu)
        return self._receipt(flow, fields, entry)

    async def _lookup(self, template: str, fields: dict[str, str]) -> Catalog | None:
        try:
            code, output = await self._run(
                self._format(template, fields), self._settings.command_timeout
            )
        except TimeoutError:
            raise RemoteBusy("CFTUTIL LISTCAT did not answer in time") from None
        return read_catalog(output) if code < 8 else None

    async def _follow(self, flow: Outbound, fields: dict[str, str], idtu: str) -> Receipt:
        s = self._settings
        deadline = time.monotonic() + s.timeout
        while True:
            entry = await self._lookup(LISTCAT_IDTU, {"idtu": idtu})
            if entry is None:
                raise ProtocolError(f"transfer IDTU={idtu} of {flow.remote_name} left the catalog")
            if entry.done:
                return self._receipt(flow, fields, entry)
            if entry.killed:
                raise self._failure(flow, "", entry, 8)
            if time.monotonic() > deadline:
                raise TransferTimeout(
                    f"CFT transfer IDTU={idtu} of {flow.remote_name} is still in phase "
                    f"{entry.phase}/{entry.phasestep} after {s.timeout:g}s"
                )
            await asyncio.sleep(s.poll_interval)

    def _failure(
        self, flow: Outbound, output: str, entry: Catalog | None, code: int
    ) -> TransferError:
        where = f"CFT transfer of {flow.remote_name} to {self._settings.partner}"
        diagp = entry.diagp if entry else None
        pesit = re.search(r"\b([23]\d\d)\b", diagp or "")
        if pesit:
            return diagnostic_error(int(pesit.group(1)), f"{where}: killed by CFT, DIAGP {diagp}")
        said = _last_line(output) or (
            f"phase {entry.phase}/{entry.phasestep}, DIAGI {entry.diagi}" if entry else ""
        )
        if entry is not None and entry.diagi not in (None, "0"):
            return RemoteBusy(f"{where} failed: DIAGI {entry.diagi} ({said})")
        if code >= 8:
            return ProtocolError(f"{where}: CFTUTIL refused the request ({said})")
        return ConnectError(f"{where}: no verdict from CFTUTIL ({said})")

    def _receipt(
        self, flow: Outbound, fields: dict[str, str], entry: Catalog, *, already: bool = False
    ) -> Receipt:
        return Receipt(
            self.protocol,
            flow.remote_name,
            {
                "partner": self._settings.partner,
                "idf": fields["idf"],
                "nfname": fields["nfname"],
                "idtu": entry.idtu,
                "phase": entry.phase,
                "phasestep": entry.phasestep,
            },
            already_delivered=already,
        )

    async def check(self) -> str:
        code, output = await self._run("ABOUT", self._settings.command_timeout)
        if code >= 8:
            raise ConnectError(f"CFTUTIL ABOUT failed: {_last_line(output)}")
        said = _last_line(output) or "ok"
        return f"{self._settings.command} answers ({said}); partner {self._settings.partner}"


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


PLUGIN = ProtocolPlugin(
    name="pesit-cft",
    parse_settings=parse_settings,
    create_sender=CftSender,
    capabilities=CftSender.capabilities,
)
