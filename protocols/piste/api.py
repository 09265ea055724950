"""The PISTE side of Chorus Pro's API: settings, the OAuth2 token, and one JSON call.

Every call is ``POST <api_url>/cpro/<api>/v1/…`` with a JSON body and three headers: the
OAuth2 bearer token of the PISTE application (client credentials, ``scope=openid``), the
``cpro-account`` header (base64 of the Chorus Pro technical account's ``login:password``), and
the JSON content type. Every answer carries ``codeRetour`` (0 = done) and ``libelle``.

:class:`Tokens` keeps one token per connection and refreshes it ``token_margin`` before it
expires, one refresh at a time however many calls wait for it; a 401 on a call discards that
token (once) and the call is made again with a fresh one. A token that cannot be had (refused,
timed out) fails the call as ``nothing_sent``: a 401 proves the API took nothing. A 429 is
honoured (``Retry-After``, else a doubling pause) up to ``max_retries`` times. Everything
else becomes a :mod:`protocols.errors` type with the partner's ``libelle`` in its message —
never a secret.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from protocols import certs
from protocols.errors import (
    AuthenticationError,
    CertificateError,
    ConnectError,
    HostKeyError,
    ProtocolError,
    RemoteBusy,
    RemoteRejected,
    TransferError,
    TransferTimeout,
)
from protocols.settings import Secret, Section, SettingsError

#: The hosts of each environment (the connection's ``environment`` picks one).
HOSTS = {
    "qualification": (
        "https://sandbox-oauth.piste.gouv.fr/api/oauth/token",
        "https://sandbox-api.piste.gouv.fr",
    ),
    "production": (
        "https://oauth.piste.gouv.fr/api/oauth/token",
        "https://api.piste.gouv.fr",
    ),
}
#: The API refuses files over 10 MB (AIFE API annex, GDP_MSG_11.022): such a file is refused
#: here, before it is encoded and sent.
DEPOSIT_LIMIT = 10_000_000
RETRY_AFTER_CAP = 120.0  # seconds: a longer Retry-After is left to the dispatcher's retries


@dataclass(frozen=True)
class PisteSettings:
    client_id: Secret
    client_secret: Secret
    technical_login: Secret
    technical_password: Secret
    oauth_url: str
    api_url: str
    environment: str = "qualification"
    signature: bool = False  # avecSignature
    user_id: int | None = None  # idUtilisateurCourant, when the account needs it
    ca_bundle: Path | None = None
    connect_timeout: float = 15.0
    timeout: float = 60.0
    token_margin: float = 60.0
    max_retries: int = 4
    max_deposit_size: int = DEPOSIT_LIMIT
    report_interval: float = 30.0
    report_max_interval: float = 900.0
    report_deadline: float = 3 * 86400.0
    lifecycle: bool = False  # follow each invoice after integration
    lifecycle_interval: float = 6 * 3600.0
    lifecycle_deadline: float = 120 * 86400.0

    @property
    def account_header(self) -> str:
        pair = f"{self.technical_login.value}:{self.technical_password.value}"
        return base64.b64encode(pair.encode()).decode("ascii")


def parse_settings(section: Section) -> PisteSettings:
    environment = section.context.get("environment", "qualification")
    oauth_default, api_default = HOSTS[environment]
    settings = PisteSettings(
        client_id=_secret(section, "client_id"),
        client_secret=_secret(section, "client_secret"),
        technical_login=_secret(section, "technical_login"),
        technical_password=_secret(section, "technical_password"),
        oauth_url=section.url("oauth_url", required=False) or oauth_default,
        api_url=(section.url("api_url", required=False) or api_default).rstrip("/"),
        environment=environment,
        signature=section.boolean("signature", False),
        user_id=section.integer("user_id", 0, minimum=0) or None,
        ca_bundle=section.path("ca_bundle", required=False),
        connect_timeout=section.duration("connect_timeout", "15s"),
        timeout=section.duration("timeout", "60s"),
        token_margin=section.duration("token_margin", "60s"),
        max_retries=section.integer("max_retries", 4, minimum=0, maximum=10),
        max_deposit_size=section.size("max_deposit_size", "10MB"),
        report_interval=section.duration("report_interval", "30s"),
        report_max_interval=section.duration("report_max_interval", "15m"),
        report_deadline=section.duration("report_deadline", "3d"),
        lifecycle=section.boolean("lifecycle", False),
        lifecycle_interval=section.duration("lifecycle_interval", "6h"),
        lifecycle_deadline=section.duration("lifecycle_deadline", "120d"),
    )
    if settings.report_max_interval < settings.report_interval:
        raise SettingsError(section.key("report_max_interval"), "is shorter than report_interval")
    if settings.ca_bundle is not None:
        problem = certs.tls_problem(settings.ca_bundle, None, None)
        if problem:
            raise SettingsError(section.key(problem[0]), problem[1])
    section.finish()
    return settings


def _secret(section: Section, key: str) -> Secret:
    value = section.secret(key, required=True)
    assert value is not None
    if not value.value.strip():
        raise SettingsError(section.key(key), "is empty")
    return value


@dataclass
class _Token:
    value: str
    expires: float  # time.monotonic()


class Tokens:
    """The connection's OAuth2 token: fetched when needed, shared by concurrent calls."""

    def __init__(
        self,
        settings: PisteSettings,
        http: Callable[[], Awaitable[aiohttp.ClientSession]],
    ) -> None:
        self._settings = settings
        self._http = http
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.fetched = 0  # tokens obtained (for the tests and the check)

    async def get(self) -> str:
        """The token to call with.

        Raises:
            protocols.errors.TransferError: no token came; marked ``nothing_sent`` (the call
            that needed it was not made).
        """
        try:
            return await self._get()
        except TransferError as exc:
            exc.nothing_sent = True
            raise

    async def _get(self) -> str:
        margin = self._settings.token_margin
        token = self._token
        if token is not None and time.monotonic() < token.expires - margin:
            return token.value
        async with self._lock:  # one refresh; the others wait for it and take its result
            token = self._token
            if token is None or time.monotonic() >= token.expires - margin:
                token = self._token = await self._fetch()
            return token.value

    def discard(self, value: str) -> None:
        """The partner refused ``value`` (401): the next :meth:`get` fetches another, unless a
        concurrent call already did."""
        if self._token is not None and self._token.value == value:
            self._token = None

    async def _fetch(self) -> _Token:
        s = self._settings
        form = {
            "grant_type": "client_credentials",
            "client_id": s.client_id.value,
            "client_secret": s.client_secret.value,
            "scope": "openid",
        }
        where = f"PISTE token ({s.oauth_url})"
        with translated(where):
            async with (await self._http()).post(s.oauth_url, data=form) as answer:
                body = await answer.read()
                status = answer.status
        if status in (400, 401, 403):
            raise AuthenticationError(
                f"{where}: refused (HTTP {status}{_error_words(body)}); check client_id and "
                "client_secret, and that the PISTE application is enabled for this environment"
            )
        if status >= 500 or status == 429:
            raise RemoteBusy(f"{where}: HTTP {status}; it will be tried again")
        document = _json(body, where, status)
        value = document.get("access_token")
        if status != 200 or not isinstance(value, str) or not value:
            raise ProtocolError(f"{where}: HTTP {status} without an access_token")
        lifetime = document.get("expires_in", 3600)
        if not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = 3600
        self.fetched += 1
        return _Token(value, time.monotonic() + float(lifetime))


class Client:
    """Calls to one connection's PISTE API (an async context manager)."""

    def __init__(self, settings: PisteSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._tokens: Tokens | None = None

    @property
    def tokens(self) -> Tokens:
        if self._tokens is None:
            self._tokens = Tokens(self.settings, self._http)
        return self._tokens

    async def _http(self) -> aiohttp.ClientSession:
        """The connection pool, made on first use (a CA bundle is read off the event loop)."""
        if self._session is None:
            s = self.settings
            context: ssl.SSLContext | bool = True
            if s.ca_bundle is not None:
                try:
                    context = await asyncio.to_thread(
                        certs.tls_client_context, s.ca_bundle, None, None
                    )
                except certs.CertificateProblem as exc:  # the file changed since the check
                    raise CertificateError(f"PISTE: {exc}") from None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=8),
                timeout=aiohttp.ClientTimeout(total=s.timeout, sock_connect=s.connect_timeout),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._tokens = None

    async def call(self, path: str, body: Mapping[str, Any], what: str) -> dict[str, Any]:
        """POST ``body`` to ``path``; the answer's JSON when ``codeRetour`` is 0.

        Raises:
            protocols.errors.TransferError: as the module says; ``what`` names the call.
        """
        s = self.settings
        url = s.api_url + path
        where = f"PISTE {what}"
        refreshed = False
        pauses = 0
        while True:
            token = await self.tokens.get()
            headers = {
                "Authorization": f"Bearer {token}",
                "cpro-account": s.account_header,
                "Content-Type": "application/json;charset=utf-8",
                "Accept": "application/json",
            }
            with translated(where):
                http = await self._http()
                async with http.post(url, data=json.dumps(body), headers=headers) as r:
                    payload = await r.read()
                    status = r.status
                    retry_after = r.headers.get("Retry-After")
            if status == 401 and not refreshed:
                self.tokens.discard(token)  # expired or revoked early: one fresh token, once
                refreshed = True
                continue
            if status == 429:
                if pauses >= s.max_retries:
                    raise RemoteBusy(
                        f"{where}: rate limited (HTTP 429) {pauses + 1} times in a row; "
                        "it will be tried again later"
                    )
                await asyncio.sleep(_pause(retry_after, pauses))
                pauses += 1
                continue
            return _judge(status, payload, where)


def _pause(retry_after: str | None, pauses: int) -> float:
    if retry_after is not None and retry_after.strip().isdigit():
        return min(float(retry_after), RETRY_AFTER_CAP)
    return min(0.5 * float(2**pauses), RETRY_AFTER_CAP)


def _judge(status: int, payload: bytes, where: str) -> dict[str, Any]:
    if status == 401:
        # The token was just issued for client_id and client_secret: what the API refuses is
        # the technical account of the cpro-account header (or the application's subscription).
        raise AuthenticationError(
            f"{where}: refused even with a fresh token (HTTP 401{_error_words(payload)}); "
            "the PISTE token was issued, so check technical_login and technical_password (the "
            "Chorus Pro technical account), and that the PISTE application subscribes to the "
            "Chorus Pro API",
            nothing_sent=True,
        )
    if status == 403:
        raise AuthenticationError(
            f"{where}: forbidden (HTTP 403{_error_words(payload)}); check technical_login and "
            "technical_password, and that the PISTE application subscribes to the Chorus Pro API",
            nothing_sent=True,
        )
    if status >= 500:
        raise RemoteBusy(f"{where}: HTTP {status}{_error_words(payload)}; tried again later")
    if status == 404:
        raise ProtocolError(
            f"{where}: HTTP 404, no such endpoint; check api_url", nothing_sent=True
        )
    document = _json(payload, where, status)
    code = document.get("codeRetour")
    words = document.get("libelle")
    said = f": {words}" if isinstance(words, str) and words else ""
    if status >= 400:
        raise RemoteRejected(f"{where}: HTTP {status}, codeRetour {code}{said}")
    if status != 200:
        raise ProtocolError(f"{where}: unexpected HTTP {status}")
    if code not in (0, "0", None):
        raise RemoteRejected(f"{where}: codeRetour {code}{said}")
    if code is None:
        raise ProtocolError(f"{where}: the answer has no codeRetour")
    return document


def _json(payload: bytes, where: str, status: int) -> dict[str, Any]:
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        excerpt = payload[:80].decode("utf-8", "replace")
        raise ProtocolError(
            f"{where}: HTTP {status} with an answer that is not JSON ({excerpt!r})"
        ) from None
    if not isinstance(document, dict):
        raise ProtocolError(f"{where}: HTTP {status} with JSON that is not an object")
    return document


def _error_words(payload: bytes) -> str:
    """The partner's explanation, if its answer is JSON that gives one."""
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    if not isinstance(document, dict):
        return ""
    for key in ("libelle", "error_description", "error", "message"):
        value = document.get(key)
        if isinstance(value, str) and value:
            return f": {value[:200]}"
    return ""


@contextlib.contextmanager
def translated(where: str) -> Iterator[None]:
    """Network failures of aiohttp as :mod:`protocols.errors` types."""
    try:
        yield
    except TransferError:
        raise
    except TimeoutError:
        raise TransferTimeout(f"{where}: no answer in time") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise HostKeyError(
            f"{where}: the server's TLS certificate is not trusted ({exc.certificate_error}); "
            "check ca_bundle"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise ConnectError(f"{where}: cannot connect ({exc.os_error.strerror or exc})") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
        raise TransferTimeout(f"{where}: the connection dropped before the answer") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ConnectError(f"{where}: {exc}") from None
