"""A sender that delivers into memory — shipped for the gateway's own tests and for dry runs.

``protocol = "memory"`` with ``[connection.memory] bucket = "name"``. Deliveries land in
:data:`BUCKETS`; a test may queue failures with :func:`fail_next`. It mirrors the SFTP sender's
contract: a remote name is never overwritten, and a resend of an already delivered flow is
recognised. With ``receipt_wait`` set, the "partner" acknowledges later, like an asynchronous AS2
MDN: ``send`` returns a receipt awaiting ``memory:<flow id>``, and :meth:`MemorySender.settle`
takes the answer (``ok`` or a refusal text).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from protocols.base import Capabilities, Closing, Outbound, ProtocolPlugin, Receipt, RemoteFile
from protocols.errors import RemoteNameConflict, RemoteRejected, TransferError
from protocols.settings import Section


@dataclass
class Bucket:
    files: dict[str, bytes] = field(default_factory=dict)
    #: Return flows the "partner" offers for download: name -> bytes.
    returns: dict[str, bytes] = field(default_factory=dict)
    listings: int = 0  # how many times the returns were listed (polls)
    failures: deque[TransferError] = field(default_factory=deque)
    sends: int = 0
    #: What the dispatcher and the sender did, in order: "prepare" (a file is coming), "send".
    calls: list[str] = field(default_factory=list)
    closes: int = 0  # how many times a sender of this bucket was closed
    gate: asyncio.Event | None = None  # when set by a test, sends wait for it to open


BUCKETS: dict[str, Bucket] = {}


def bucket(name: str) -> Bucket:
    return BUCKETS.setdefault(name, Bucket())


def hold(name: str) -> asyncio.Event:
    """Make sends to bucket ``name`` wait until the returned event is set (call in the loop)."""
    gate = bucket(name).gate = asyncio.Event()
    return gate


def fail_next(name: str, *errors: TransferError) -> None:
    """Make the next ``len(errors)`` sends or return fetches of bucket ``name`` raise these
    errors, in order."""
    bucket(name).failures.extend(errors)


@dataclass(frozen=True)
class MemorySettings:
    bucket: str
    delay: float
    poll_interval: float = 60.0
    receipt_wait: float = 0.0  # > 0: acknowledgements come later (seconds to wait for them)


def parse_settings(section: Section) -> MemorySettings:
    settings = MemorySettings(
        bucket=section.string("bucket", "default"),
        delay=section.duration("delay", "0s"),
        poll_interval=section.duration("poll_interval", "60s"),
        receipt_wait=section.duration("receipt_wait", "0s"),
    )
    section.finish()
    return settings


class MemorySender(Closing):
    protocol = "memory"
    capabilities = Capabilities(
        atomic_rename=True, detects_resend=True, receives_returns=True, async_receipts=True
    )

    def __init__(self, settings: MemorySettings) -> None:
        self._settings = settings
        self._bucket = bucket(settings.bucket)
        self.poll_interval = settings.poll_interval

    def prepare(self) -> None:
        self._bucket.calls.append("prepare")

    async def send(self, flow: Outbound) -> Receipt:
        self._bucket.sends += 1
        self._bucket.calls.append("send")
        if self._settings.delay:
            await asyncio.sleep(self._settings.delay)
        if self._bucket.gate is not None:
            await self._bucket.gate.wait()
        if self._bucket.failures:
            raise self._bucket.failures.popleft()
        data = flow.path.read_bytes()
        existing = self._bucket.files.get(flow.remote_name)
        if existing is not None:
            if existing == data:
                return Receipt(self.protocol, flow.remote_name, already_delivered=True)
            raise RemoteNameConflict(f"remote file {flow.remote_name} exists with other content")
        self._bucket.files[flow.remote_name] = data
        details = {"bucket": self._settings.bucket}
        if self._settings.receipt_wait:
            return Receipt(
                self.protocol,
                flow.remote_name,
                details,
                awaiting=True,
                wait=self._settings.receipt_wait,
            )
        return Receipt(self.protocol, flow.remote_name, details)

    def receipt_key(self, flow_id: str) -> str:
        return f"memory:{flow_id}"

    async def settle(self, pending: Receipt, answer: bytes) -> Receipt:
        said = answer.decode("utf-8", "replace")
        if said != "ok":
            raise RemoteRejected(f"the partner refused {pending.remote_name}: {said}")
        details = {**pending.details, "acknowledged": said}
        return Receipt(self.protocol, pending.remote_name, details)

    async def aclose(self) -> None:
        self._bucket.closes += 1

    async def check(self) -> str:
        return f"memory bucket {self._settings.bucket!r}"

    async def list_returns(self) -> list[RemoteFile]:
        self._bucket.listings += 1
        return [RemoteFile(name, len(data), 0) for name, data in self._bucket.returns.items()]

    async def fetch_return(self, remote: RemoteFile, local: Path) -> None:
        if self._bucket.failures:
            raise self._bucket.failures.popleft()
        await asyncio.to_thread(local.write_bytes, self._bucket.returns[remote.name])

    async def finish_return(self, remote: RemoteFile) -> str:
        self._bucket.returns.pop(remote.name, None)
        return "deleted"


PLUGIN = ProtocolPlugin(
    name="memory",
    parse_settings=parse_settings,
    create_sender=MemorySender,
    capabilities=MemorySender.capabilities,
)
