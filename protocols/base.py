"""The sender interface every protocol implements, and what a protocol plugin declares.

A sender is an async context manager (it owns its connections) with two operations:

* :meth:`Sender.send` delivers one flow and returns a :class:`Receipt`, or raises a
  :class:`~protocols.errors.TransferError` whose ``retryable`` flag drives the dispatcher.
  Cancelling a send may leave the partner with all, some or none of the flow: that is why a
  resend after an unknown outcome carries ``resend=True`` and the *same* remote name, so that
  the sender (or the partner) can recognise it.
* :meth:`Sender.check` logs in and out, for ``raccord check --connect``.

A sender that connects on first use may implement :class:`Prepares`: told that a file was just
claimed for its connection, it opens the connection while the file is analysed.

A partner may acknowledge later (an asynchronous AS2 MDN): such a sender implements
:class:`AsyncReceipts`, whose :meth:`~AsyncReceipts.receipt_key` names what the acknowledgement
of a flow will refer to (journaled before the send, since it may arrive before the send
returns). The receipt ``send`` returns then says ``awaiting`` and how long to wait; the flow
waits as ``awaiting_receipt`` until the gateway hands the acknowledgement to
:meth:`AsyncReceipts.settle`, or files it in ``error/`` when the wait is over.

An API partner that reports on each deposit when asked (``integration_reports``) implements
:class:`IntegrationReports`: the gateway asks until the report is final and applies it like a
return flow.

Optional features are flags in :class:`Capabilities`. A sender whose protocol can also fetch
return flows from the partner (``receives_returns``) implements, on the same connection, either
:class:`ReturnSource` (a partner folder the gateway lists, fetches from, then clears) or
:class:`ReturnQueue` (a partner that hands out its waiting files one at a time and forgets each
once acknowledged, as a PeSIT server does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from protocols.settings import Section

__all__ = [
    "MARKER_SUFFIX",
    "AsyncReceipts",
    "Capabilities",
    "Closing",
    "IntegrationReports",
    "InvoiceLifecycle",
    "Outbound",
    "Prepares",
    "ProtocolPlugin",
    "Receipt",
    "RemoteFile",
    "Report",
    "ReturnQueue",
    "ReturnSource",
    "Sender",
    "outcome_marker",
]

#: How a marker a sender keeps beside a flow's file ends (see :func:`outcome_marker`).
MARKER_SUFFIX = ".unsure.json"


def outcome_marker(path: Path, flow_id: str) -> Path:
    """Where a sender keeps, beside a flow's local file ``path`` (in the gateway's spool),
    that the partner may already hold the flow: a hidden name made of the flow id, which no
    claim, recovery or listing takes for a flow. The sender writes it; the gateway removes it
    when it files the flow (and, at start, any whose flow's file is no longer beside it)."""
    return path.with_name(f".{flow_id}{MARKER_SUFFIX}")


@dataclass(frozen=True)
class Outbound:
    """One flow to deliver: a local file and the name the partner must see."""

    flow_id: str
    path: Path
    remote_name: str
    interface_code: str
    size: int
    sha256: str
    resend: bool = False  # an earlier attempt's outcome is unknown


@dataclass(frozen=True)
class Receipt:
    """What the partner acknowledged; stored in ``<name>.receipt.json``."""

    protocol: str
    remote_name: str
    details: Mapping[str, Any] = field(default_factory=dict)
    already_delivered: bool = False  # a resend found the flow already at the partner
    #: The partner took the flow and acknowledges it later (under the sender's
    #: ``receipt_key``); False when this receipt is the acknowledgement.
    awaiting: bool = False
    wait: float = 0.0  # seconds to wait for that acknowledgement


@dataclass(frozen=True)
class Capabilities:
    """What a protocol can do beyond sending."""

    atomic_rename: bool = False  # uploads under a temporary name, then renames
    detects_resend: bool = False  # can tell that a resent flow is already delivered
    receives_returns: bool = False  # has a receiver/poller for return flows
    async_receipts: bool = False  # may acknowledge later; the sender implements AsyncReceipts
    #: reports on each deposit when asked (an API); the sender implements IntegrationReports
    integration_reports: bool = False
    #: and on each integrated invoice's life-cycle; the sender implements InvoiceLifecycle
    invoice_lifecycle: bool = False


class Sender(Protocol):
    """A protocol's sender for one connection."""

    protocol: str
    capabilities: Capabilities

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, flow: Outbound) -> Receipt:
        """Deliver ``flow``.

        Raises:
            protocols.errors.TransferError: the flow was not (or not surely) delivered.
        """
        ...

    async def check(self) -> str:
        """Log in and out; return a one-line description of what was reached.

        Raises:
            protocols.errors.TransferError: the partner cannot be reached or refuses us.
        """
        ...


class Closing:
    """The ``async with`` part of a sender: entering gives the sender, leaving calls
    :meth:`aclose` (nothing to close by default). Built-in senders derive from it, and so do
    the partner simulators (which start serving on entering)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release connections and sessions; a closed sender may be used again."""


@runtime_checkable
class Prepares(Protocol):
    """A sender that can get ready for a flow before it is routed: the dispatcher calls
    :meth:`prepare` when a file is claimed for its connection (at most once a second), so that
    opening the connection overlaps the file's analysis."""

    def prepare(self) -> None:
        """Start opening the connection in the background if it is not open; return at once.
        A failure is not raised: the send that follows meets it and reports it."""
        ...


@runtime_checkable
class AsyncReceipts(Protocol):
    """A sender whose partner may acknowledge a flow after ``send`` returned."""

    def receipt_key(self, flow_id: str) -> str:
        """What the partner's acknowledgement of flow ``flow_id`` refers to (an AS2
        Message-ID)."""
        ...

    async def settle(self, pending: Receipt, answer: bytes) -> Receipt:
        """Judge the partner's late ``answer`` to the flow that ``pending`` (what ``send``
        returned) describes; return the final receipt.

        Raises:
            protocols.errors.TransferError: the answer refuses the flow or proves nothing.
        """
        ...


@dataclass(frozen=True)
class RemoteFile:
    """A return flow waiting at the partner (``mtime``: seconds since the epoch)."""

    name: str
    size: int
    mtime: int


class ReturnSource(Protocol):
    """Fetching return flows from the partner's download folder, polled by the gateway.

    The gateway stores each fetched file durably (and journals it) *before* it calls
    :meth:`finish_return`, so a crash in between fetches it again and the gateway recognises
    the bytes: nothing is lost, nothing applied twice.
    """

    poll_interval: float

    async def list_returns(self) -> list[RemoteFile]:
        """The files waiting, oldest first (hidden and temporary names left out).

        Raises:
            protocols.errors.TransferError: the partner cannot be reached or listed.
        """
        ...

    async def fetch_return(self, remote: RemoteFile, local: Path) -> None:
        """Write ``remote``'s bytes to ``local`` (created or truncated) and fsync it.

        Raises:
            protocols.errors.TransferError: the file could not be fetched completely.
        """
        ...

    async def finish_return(self, remote: RemoteFile) -> str:
        """Do what the connection says with a stored file (delete it, rename it, or leave it);
        return what was done, in a word.

        Raises:
            protocols.errors.TransferError: the partner refused.
        """
        ...


@runtime_checkable
class ReturnQueue(Protocol):
    """Taking return flows the partner hands out one by one, polled by the gateway.

    Each file is received, then held unacknowledged while the gateway stores it durably (and
    journals it); only then does :meth:`acknowledge_return` let the partner forget it. A crash
    before that leaves the file with the partner, which hands it out again: the gateway
    recognises the bytes, so nothing is lost and nothing applied twice.
    """

    poll_interval: float

    async def next_return(self, local: Path, limit: int) -> RemoteFile | None:
        """Receive the next waiting file into ``local`` (created or truncated, fsynced) and
        hold it unacknowledged; None when nothing waits. ``size`` is the bytes received,
        ``mtime`` when they were.

        Raises:
            protocols.errors.FileTooLarge: the file is over ``limit`` bytes (left with the
                partner).
            protocols.errors.TransferError: the partner cannot be reached, or the file could not
                be received completely (it stays with the partner).
        """
        ...

    async def acknowledge_return(self, remote: RemoteFile) -> str:
        """Tell the partner the file held is stored; return what was done, in a word.

        Raises:
            protocols.errors.TransferError: the acknowledgement failed (the partner may hand
                the file out again).
        """
        ...

    async def release_return(self, remote: RemoteFile) -> None:
        """Leave the held file with the partner (it was not stored)."""
        ...


@dataclass(frozen=True)
class Report:
    """Where the partner is with one deposit: ``state`` in its words; once ``final``,
    ``document`` is the report to store and apply as a return flow, under ``name``."""

    state: str
    final: bool
    document: bytes = b""
    name: str = ""
    resend: bool = False  # the partner could not process the deposit: send the flow again


class IntegrationReports(Protocol):
    """Asking the partner about each deposit until it has integrated or refused it.

    The gateway asks after ``report_interval``, then at doubling intervals up to
    ``report_max_interval``, for at most ``report_deadline`` seconds after the deposit.
    """

    report_interval: float
    report_max_interval: float
    report_deadline: float

    async def report(self, receipt: Mapping[str, Any]) -> Report:
        """The state of the deposit that ``receipt`` (the details :meth:`Sender.send` returned)
        describes.

        Raises:
            protocols.errors.TransferError: the partner cannot be asked now.
        """
        ...


@runtime_checkable
class InvoiceLifecycle(Protocol):
    """Asking the partner, after integration, where each invoice of a deposit is (mise à
    disposition, mandatée, mise en paiement…), every ``lifecycle_interval``, until every
    invoice's status is final or ``lifecycle_deadline`` after the deposit."""

    lifecycle_interval: float
    lifecycle_deadline: float

    async def lifecycle(self, receipt: Mapping[str, Any]) -> Report:
        """The invoices' statuses as a document to apply (``final``: none will change).

        Raises:
            protocols.errors.TransferError: the partner cannot be asked now.
        """
        ...


@dataclass(frozen=True)
class ProtocolPlugin:
    """What a protocol brings: its settings parser and its sender factory.

    ``parse_settings`` reads the connection's ``[connection.<name>]`` table (calling
    ``section.finish()`` to reject unknown keys) and returns the protocol's own settings object;
    ``secret_fields`` names the keys that must never be logged.
    """

    name: str
    parse_settings: Callable[[Section], Any]
    create_sender: Callable[[Any], Sender]
    secret_fields: frozenset[str] = frozenset()
    capabilities: Capabilities = Capabilities()
