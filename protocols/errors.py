"""The errors a sender may raise — the only ones the gateway ever sees from a protocol.

Each implementation translates its library's exceptions (asyncssh, pyas2lib, httpx, …) at its
boundary, so the dispatcher decides on ``retryable`` alone and never sniffs third-party types::

    TransferError                 reason          retryable
    ├── ConnectError              unreachable     yes   network down, refused, DNS, TLS/SSH setup
    ├── TransferTimeout           timeout         yes   no answer in time (outcome may be unknown)
    ├── RemoteBusy                remote_busy     yes   the partner asked us to come back later
    ├── SenderDied                sender_died     yes   our sending process ended mid-transfer
    ├── AuthenticationError       auth_failed     no    credentials refused
    ├── HostKeyError              host_key        no    unknown or changed SSH host key / bad cert
    ├── RemotePermissionDenied    permission      no    the partner refuses the operation
    ├── RemoteNameConflict        remote_exists   no    a different file already has that name
    ├── ProtocolError             protocol_error  no    the partner answered something unusable
    ├── CertificateError          certificate     no    a key or certificate is expired or unusable
    ├── RemoteRejected            refused         no    the partner received and refused the flow
    ├── ReceiptInvalid            receipt_invalid no    the acknowledgement proves nothing (MIC…)
    └── FileTooLarge              too_large       no    a file over a limit (ours, or the API's)

``nothing_sent`` says the failure proves the partner was given nothing in that attempt (a
token refused before the call, a 401, a file refused before sending): the attempt then adds
no uncertainty about whether the partner has the flow.

``reason`` becomes the ``reason`` of ``error.json``; ``str(error)`` is the one-sentence message
an operator reads, saying what to do where the sender knows.

:class:`ForeignAnswer` is no transfer error: a late acknowledgement that does not come from the
flow's partner says nothing about the flow, which goes on waiting for the real one.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "CertificateError",
    "ConnectError",
    "FileTooLarge",
    "ForeignAnswer",
    "HostKeyError",
    "ProtocolError",
    "ReceiptInvalid",
    "RemoteBusy",
    "RemoteNameConflict",
    "RemotePermissionDenied",
    "RemoteRejected",
    "SenderDied",
    "TransferError",
    "TransferTimeout",
]


class TransferError(Exception):
    """A transfer failed. ``retryable`` tells whether trying again later may help."""

    reason = "transfer_failed"
    retryable = False
    #: True when the failure proves the partner was given nothing in this attempt (the
    #: dispatcher then does not count it as a transfer of unknown outcome).
    nothing_sent = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, nothing_sent: bool | None = None
    ) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        if nothing_sent is not None:
            self.nothing_sent = nothing_sent


class ConnectError(TransferError):
    reason = "unreachable"
    retryable = True


class TransferTimeout(TransferError):
    reason = "timeout"
    retryable = True


class RemoteBusy(TransferError):
    reason = "remote_busy"
    retryable = True


class SenderDied(TransferError):
    """The process that ran the transfer ended before answering: the outcome is unknown (see
    :mod:`protocols.offload`); the next attempt is a resend."""

    reason = "sender_died"
    retryable = True


class AuthenticationError(TransferError):
    reason = "auth_failed"


class HostKeyError(TransferError):
    reason = "host_key"


class RemotePermissionDenied(TransferError):
    reason = "permission"


class RemoteNameConflict(TransferError):
    reason = "remote_exists"


class ProtocolError(TransferError):
    reason = "protocol_error"


class CertificateError(TransferError):
    """Our or the partner's key or certificate cannot be used (expired, unreadable, no chain)."""

    reason = "certificate"


class RemoteRejected(TransferError):
    """The partner received the flow and refused it (a negative MDN, a definite HTTP 4xx)."""

    reason = "refused"


class ReceiptInvalid(TransferError):
    """The partner's acknowledgement does not prove delivery: bad signature, MIC mismatch, an MDN
    for another message, or an answer that is no MDN at all. The flow may or may not have
    arrived: a person must check with the partner."""

    reason = "receipt_invalid"


class FileTooLarge(TransferError):
    """A return flow the partner hands out is larger than ``max_file_size``: not taken; or a
    flow larger than the partner takes (the PISTE API's 10 MB): not sent."""

    reason = "too_large"


class ForeignAnswer(Exception):
    """A late acknowledgement that is not the partner's (another sender): ignored."""
