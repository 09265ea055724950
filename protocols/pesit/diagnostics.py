"""PeSIT diagnostics as an operator reads them, and the :mod:`protocols.errors` type each
one (or a refused, broken or interrupted session) becomes: what it means and what to check.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

from protocols.base import Outbound
from protocols.errors import (
    AuthenticationError,
    ConnectError,
    HostKeyError,
    ProtocolError,
    RemoteBusy,
    RemoteNameConflict,
    RemotePermissionDenied,
    RemoteRejected,
    TransferError,
    TransferTimeout,
)
from protocols.pesit.session import Broken, FileAttributes, Interrupted, Refused

#: PeSIT diagnostics (spec annex D), as an operator reads them.
DIAGNOSTICS = {
    200: "file characteristics insufficient",
    201: "resources temporarily insufficient",
    204: "the file already exists",
    205: "file not found (unknown file identifier)",
    207: "file busy",
    211: "the file cannot be opened",
    213: "input/output error at the partner",
    214: "restart point negotiation failed",
    217: "too many unacknowledged sync points",
    222: "too much data without a sync point",
    223: "abnormal end of transfer",
    226: "transfer refused",
    299: "other file or transfer error",
    301: "requester unknown or password refused",
    304: "requester not authorised",
    308: "protocol version not supported",
    311: "protocol error",
    312: "connection closed by the partner's user",
    313: "idle timeout",
    317: "timer expired",
    318: "mandatory parameter missing or illegal",
    319: "byte or article count mismatch",
    399: "other connection error",
}
BUSY = frozenset({201, 207, 211, 213, 223, 299, 312, 313, 317, 399})
_AUTH = frozenset({301, 304})


def describe(diagnostic: int) -> str:
    return f"diagnostic {diagnostic}: {DIAGNOSTICS.get(diagnostic, 'not in the PeSIT list')}"


def diagnostic_error(diagnostic: int, message: str) -> TransferError:
    """The :mod:`protocols.errors` type for a PeSIT diagnostic (from the partner, or reported
    by Transfer CFT), with what it means and what to check added to ``message``."""
    d = diagnostic
    message = f"{message}: {describe(d)}"
    if d in _AUTH:
        return AuthenticationError(
            f"{message}; check requester, server and password with the partner"
        )
    if d == 204:
        return RemoteNameConflict(f"{message}; it was not overwritten")
    if d == 205:
        return RemotePermissionDenied(f"{message}; check the file name (PI 12) setting")
    if d in BUSY:
        return RemoteBusy(message)
    if d == 226:
        return RemoteRejected(message)
    return ProtocolError(message, retryable=d in (214, 217, 222, 319))


def refusal_error(exc: Refused, where: str) -> TransferError:
    detail = f" ({exc.detail})" if exc.detail else ""
    return diagnostic_error(exc.diagnostic, f"{where}: {exc.what.name} refused{detail}")


def broken_error(exc: Broken, where: str, *, resuming: bool = True) -> TransferError:
    message = f"{where}: {exc}"
    if exc.diagnostic and not exc.garbled:  # the partner's own, in its ABORT
        message += f" — {DIAGNOSTICS.get(exc.diagnostic, 'not in the PeSIT list')}"
    if exc.started and resuming:
        message += "; the transfer will resume from the last acknowledged sync point"
    if exc.diagnostic in _AUTH:
        return AuthenticationError(
            f"{message}; check requester, server and password with the partner"
        )
    if exc.garbled:  # the partner was reached: what it sent is the problem, not the network
        return ProtocolError(
            f"{message}; the partner answered what PeSIT does not allow: check the PeSIT "
            "settings (nsdu_header, pre_connection, tls) with the partner"
        )
    if exc.timeout:
        return TransferTimeout(message)
    return ConnectError(message)


def interruption_error(exc: Interrupted, where: str) -> TransferError:
    """The error for a transfer the partner interrupted (IDT), named by its diagnostic."""
    code = f", end code {exc.end_code}" if exc.end_code is not None else ""
    detail = f": {exc.detail}" if exc.detail else ""
    return diagnostic_error(
        exc.diagnostic, f"{where}: the partner interrupted the transfer (IDT{code}{detail})"
    )


def possibly_delivered(
    cause: TransferError, flow: Outbound, attributes: FileAttributes
) -> TransferError:
    """The error for a transfer whose resume the partner answered 214 after it had
    acknowledged data: it may hold the file. Same reason as ``cause``, never retried."""
    held = f"{attributes.label} ({attributes.name})" if attributes.label else attributes.name
    return type(cause)(
        f"{cause}; asked to resume, the partner then knew nothing of the transfer (diagnostic "
        f"214): it may have stored it all the same. Ask the partner whether it holds {held}; "
        f"raccord retry {flow.flow_id} only if it does not",
        retryable=False,
    )


@contextlib.contextmanager
def connecting(where: str) -> Iterator[None]:
    """Connection failures (refused, broken, TLS, network) as the errors to report."""
    try:
        yield
    except Refused as exc:
        raise refusal_error(exc, where) from None
    except Broken as exc:
        raise broken_error(exc, where) from None
    except ssl.SSLCertVerificationError as exc:
        raise HostKeyError(
            f"{where}: the partner's TLS certificate is not trusted ({exc.verify_message}); "
            "check ca_bundle and server_hostname"
        ) from None
    except ssl.SSLError as exc:
        raise ConnectError(f"{where}: TLS failed ({exc.reason or exc})") from None
    except TimeoutError:
        raise ConnectError(f"{where}: no connection in time") from None
    except OSError as exc:
        raise ConnectError(f"{where}: {exc.strerror or exc}") from None
