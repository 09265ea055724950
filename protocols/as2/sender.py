"""AS2 sender: pyas2lib builds the message, aiohttp carries it, the MDN is judged strictly.

One HTTP client session per connection (keep-alive, TLS as configured). Each flow becomes one
AS2 message whose Message-ID is built from the flow id: a resend after a dropped connection or
a timeout carries the same Message-ID (RFC 4130 §5.5), so the partner answers "duplicate" if
the first copy arrived, which the sender reports as already delivered.

What the partner's answer means:

=============================  ===========================================================
answer                         outcome
=============================  ===========================================================
no answer, connection dropped  retryable (outcome unknown; the resend reuses the Message-ID)
HTTP 5xx, 429, 503             retryable (``remote_busy``)
HTTP 401/403                   ``auth_failed``
other HTTP 4xx                 ``refused``; the partner may still have stored the message
MDN processed, MIC ours        delivered; the receipt holds MIC, disposition and the raw MDN
MDN processed/warning dup.     delivered earlier if this was a resend, else ``refused``
MDN processed/error, failed    ``refused`` (a negative MDN is permanent)
MDN unsigned/unverifiable/MIC  ``receipt_invalid``: nothing proves what arrived
HTTP 2xx, asynchronous MDN     taken; the flow awaits the MDN at our ``[as2_receiver]``,
                               which hands it to :meth:`As2Sender.settle` (same judgement)
=============================  ===========================================================
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from datetime import UTC, datetime
from typing import Any, BinaryIO

import aiohttp

from protocols import certs
from protocols.as2 import message, stream
from protocols.as2.receiver import as2_sender
from protocols.as2.settings import As2Settings, parse_settings
from protocols.base import Capabilities, Closing, Outbound, ProtocolPlugin, Receipt
from protocols.errors import (
    AuthenticationError,
    CertificateError,
    ConnectError,
    ForeignAnswer,
    HostKeyError,
    ProtocolError,
    RemoteBusy,
    RemoteRejected,
    TransferError,
    TransferTimeout,
)

#: How much of an unexpected HTTP answer goes into the error message.
EXCERPT = 200


def _now() -> datetime:
    return datetime.now(UTC)


class As2Sender(Closing):
    protocol = "as2"
    capabilities = Capabilities(detects_resend=True, async_receipts=True)

    def __init__(self, settings: As2Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._parties: tuple[Any, Any] | None = None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self._settings
            context: ssl.SSLContext | bool = False
            if s.url.startswith("https:"):
                try:
                    context = certs.tls_client_context(
                        s.ca_bundle, s.client_certificate, s.client_key
                    )
                except certs.CertificateProblem as exc:  # changed since the check
                    raise CertificateError(str(exc)) from None
            auth = None
            if s.http_user is not None and s.http_password is not None:
                auth = aiohttp.BasicAuth(s.http_user, s.http_password.value)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=8),
                timeout=aiohttp.ClientTimeout(total=s.timeout, sock_connect=s.connect_timeout),
                auth=auth,
            )
        return self._session

    async def _pyas2lib_parties(self) -> tuple[Any, Any]:
        if self._parties is None:
            s = self._settings
            self._parties = await asyncio.to_thread(
                lambda: (message.organization(s), message.partner(s))
            )
        return self._parties

    def _check_certificates(self) -> None:
        """Refuse to send with an expired key or an unusable partner chain, saying which."""
        s = self._settings
        now = _now()
        ours = s.keys.certificate
        if not ours.not_valid_before_utc <= now <= ours.not_valid_after_utc:
            raise CertificateError(
                f"our AS2 certificate ({certs.name(ours)}, {s.key_path}) is valid from "
                f"{ours.not_valid_before_utc:%Y-%m-%d} to {ours.not_valid_after_utc:%Y-%m-%d}; "
                "renew it and send the new one to the partner"
            )
        problems = certs.chain_problems(s.partner_chain, s.partner_trust, now=now)
        if problems:
            raise CertificateError(
                f"partner certificate {s.partner_certificate_path}: {'; '.join(problems)}; "
                "ask the partner for its current certificate chain"
            )

    async def send(self, flow: Outbound) -> Receipt:
        s = self._settings
        self._check_certificates()
        subject = s.subject.format(interface=flow.interface_code, file=flow.remote_name)
        if stream.handles(s):
            # Built from the file into an unnamed file beside it (gone on close or crash),
            # posted from there: the payload is never held in memory.
            folder = flow.path.parent
            opening = asyncio.to_thread(lambda: tempfile.TemporaryFile(dir=folder))  # noqa: SIM115
            with await opening as spooled:
                built = await asyncio.to_thread(
                    stream.build,
                    s,
                    flow.path,
                    spooled,
                    message_id=flow.flow_id,
                    filename=flow.remote_name,
                    subject=subject,
                )
                spooled.seek(0)
                outgoing = message.Outgoing(
                    built.message_id, built.mic, built.mic_algorithm, built.headers, b""
                )
                sent_at = _now()
                status, headers, body = await self._post(outgoing, spooled)
        else:
            org, to = await self._pyas2lib_parties()
            data = await asyncio.to_thread(flow.path.read_bytes)
            outgoing = await asyncio.to_thread(
                message.build,
                org,
                to,
                data,
                message_id=flow.flow_id,
                filename=flow.remote_name,
                subject=subject,
                mime_type=s.content_type,
            )
            del data
            sent_at = _now()
            status, headers, body = await self._post(outgoing, outgoing.body)
        answered_at = _now()
        details: dict[str, Any] = {
            "url": s.url,
            "message_id": outgoing.message_id,
            "mic": outgoing.mic,
            "mic_algorithm": outgoing.mic_algorithm,
            "http_status": status,
            "sent_at": sent_at.isoformat(timespec="milliseconds"),
            "answered_at": answered_at.isoformat(timespec="milliseconds"),
        }
        if status >= 300:
            raise _http_error(status, body, outgoing.message_id)
        if s.mdn == "none":
            return Receipt(self.protocol, flow.remote_name, details)
        if s.mdn_async:
            details |= {"mdn_mode": s.mdn, "mdn_url": s.mdn_url, "resend": flow.resend}
            return Receipt(
                self.protocol,
                flow.remote_name,
                details,
                awaiting=True,
                wait=s.async_mdn_wait,
            )
        raw = message.raw_http(headers, body)
        return await self._judge(flow.remote_name, outgoing, raw, details, resend=flow.resend)

    def receipt_key(self, flow_id: str) -> str:
        """The Message-ID of the flow's message (without angle brackets): the MDN's
        Original-Message-ID."""
        return f"{flow_id}@{self._settings.message_id_domain}"

    async def settle(self, pending: Receipt, answer: bytes) -> Receipt:
        """Judge an asynchronous MDN (``answer``: its HTTP headers and body, as the receiver
        got them) against the message ``pending`` describes."""
        sender = as2_sender(answer)
        if sender != self._settings.as2_to:
            raise ForeignAnswer(
                f"an MDN for message {pending.details.get('message_id')} came from AS2 name "
                f"{sender!r}, not from the partner {self._settings.as2_to!r}"
            )
        details = dict(pending.details)
        outgoing = message.Outgoing(
            message_id=str(details["message_id"]),
            mic=details.get("mic"),
            mic_algorithm=details.get("mic_algorithm"),
            headers={},
            body=b"",
        )
        details["mdn_received_at"] = _now().isoformat(timespec="milliseconds")
        resend = bool(details.pop("resend", False))
        return await self._judge(pending.remote_name, outgoing, answer, details, resend=resend)

    async def _judge(
        self,
        remote_name: str,
        outgoing: message.Outgoing,
        raw: bytes,
        details: dict[str, Any],
        *,
        resend: bool,
    ) -> Receipt:
        """The receipt an MDN proves, or the error it means."""
        org, to = await self._pyas2lib_parties()
        report = await asyncio.to_thread(message.judge_mdn, org, to, outgoing, raw)
        details |= {
            "mdn_disposition": report.disposition,
            "mdn_message_id": report.message_id,
            "mdn_signed": report.signed,
            "mdn_mic": report.mic,
            "mdn": raw.decode("utf-8", "replace"),
        }
        if report.duplicate:
            if resend:
                return Receipt(self.protocol, remote_name, details, already_delivered=True)
            raise RemoteRejected(
                f"the partner already has a message with Message-ID {outgoing.message_id} "
                f"({report.disposition}); check with the partner"
            )
        if not report.positive:
            raise RemoteRejected(
                f"the partner refused message {outgoing.message_id}: {report.disposition}"
            )
        return Receipt(self.protocol, remote_name, details)

    async def _post(
        self, outgoing: message.Outgoing, body: bytes | BinaryIO
    ) -> tuple[int, dict[str, str], bytes]:
        s = self._settings
        try:
            async with self._client().post(
                s.url, data=body, headers=outgoing.headers, allow_redirects=False
            ) as response:
                body = await response.read()
                headers = {name: value for name, value in response.headers.items()}
                return response.status, headers, body
        except TimeoutError:
            raise TransferTimeout(
                f"{s.url} did not answer message {outgoing.message_id} within {s.timeout:g}s; "
                "it may have arrived: the resend carries the same Message-ID"
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise HostKeyError(
                f"TLS certificate of {s.url} not accepted ({exc.certificate_error}); "
                "check ca_bundle"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise HostKeyError(f"TLS with {s.url} failed: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(f"cannot connect to {s.url}: {exc.os_error}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, OSError) as exc:
            raise ConnectError(
                f"the connection to {s.url} broke before the answer to message "
                f"{outgoing.message_id} ({exc or type(exc).__name__}); it may have arrived: "
                "the resend carries the same Message-ID"
            ) from None
        except aiohttp.ClientError as exc:
            raise ProtocolError(f"{s.url}: {exc}") from None

    async def check(self) -> str:
        s = self._settings
        self._check_certificates()
        try:
            async with self._client().get(s.url, allow_redirects=False) as response:
                status = response.status
        except TimeoutError:
            raise TransferTimeout(f"{s.url} did not answer within {s.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise ConnectError(f"cannot reach {s.url}: {exc}") from None
        if status in (401, 403):
            raise AuthenticationError(f"{s.url} refused our credentials (HTTP {status})")
        until = min(
            s.keys.certificate.not_valid_after_utc, s.partner_certificate.not_valid_after_utc
        )
        return (
            f"{s.url} answered HTTP {status}; {s.as2_from} → {s.as2_to}, "
            f"certificates valid until {until:%Y-%m-%d}"
        )


def _http_error(status: int, body: bytes, message_id: str) -> TransferError:
    excerpt = " ".join(body[:EXCERPT].decode("utf-8", "replace").split())
    said = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in (429, 502, 503, 504) or status >= 500:
        return RemoteBusy(f"the partner answered message {message_id} with {said}")
    if status in (401, 403):
        return AuthenticationError(
            f"the partner refused our credentials for message {message_id} ({said}); "
            "check http_user and http_password"
        )
    return RemoteRejected(
        f"the partner answered message {message_id} with {said}; it may still have stored it: "
        "check with the partner before retrying (a retry carries the same Message-ID)"
    )


PLUGIN = ProtocolPlugin(
    name="as2",
    parse_settings=parse_settings,
    create_sender=As2Sender,
    secret_fields=frozenset({"key_password", "http_password"}),
    capabilities=As2Sender.capabilities,
)
