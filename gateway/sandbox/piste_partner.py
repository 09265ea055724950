"""A stand-in for PISTE and the Chorus Pro API, for ``raccord simulate`` and the tests.

It serves, over HTTP on loopback, the three requests raccord makes, in their documented shapes:

* ``POST /api/oauth/token`` — client credentials (form); tokens live ``token_lifetime`` seconds;
* ``POST /cpro/factures/v1/deposer/flux`` — checks the bearer token (401 when unknown or
  expired), the ``cpro-account`` header (403), the body (400 with ``codeRetour``/``libelle``),
  stores the file under ``depot/`` and answers ``numeroFluxDepot`` and ``dateDepot``;
* ``POST /cpro/factures/v1/rechercher/fournisseur`` — by ``numeroFluxDepot``: the integrated
  invoices (``listeFactures``), whose ``statut`` moves through ``lifecycle_steps``, one step a
  search (by default MISE_A_DISPOSITION, then MISE_EN_PAIEMENT);
* ``POST /cpro/transverses/v1/consulterCRDetaille`` — ``processing_polls`` answers
  IN_EN_COURS_TRAITEMENT_CPP, then the final state the simulator's :class:`Rules` give:
  IN_INTEGRE, IN_INTEGRE_PARTIEL (partial mode, some invoices refused, named in
  ``listeErreurDP``), IN_REJETE (complete mode with a fault, or nothing readable).

:class:`PisteFaults` makes it misbehave as the real one may: revoke every token (the next call
gets 401), queue canned answers (429 with ``Retry-After``, 500, bytes that are no JSON),
declare the next deposit IN_INCIDENTE, leave token requests unanswered, or store the next
deposit and never answer it. It can be as strict as the real API or looser: a wrong technical
account gets 403 or, as the real gateway answers, 401 (``account_status``); files over
``max_deposit_size`` (10 MB, None: no limit) are refused with ``GDP_MSG_11.022``. It is for
demos and tests, never for production traffic.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from aiohttp import web

from flows import codes, naming
from gateway.ops.httpserver import serve
from gateway.sandbox.chorus import Rules, judge
from protocols.base import Closing
from protocols.piste.api import DEPOSIT_LIMIT

UPLOAD_DIR = "depot"
TOKEN_PATH = "/api/oauth/token"  # noqa: S105 - a path, not a password
DEPOSIT_PATH = "/cpro/factures/v1/deposer/flux"
REPORT_PATH = "/cpro/transverses/v1/consulterCRDetaille"
INVOICES_PATH = "/cpro/factures/v1/rechercher/fournisseur"
SYNTAXES = {row.piste_syntax: row.code for row in codes.INTERFACE_CODES if row.piste_syntax}


@dataclass(frozen=True)
class Canned:
    """An answer given instead of the real one to the next API request."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    path: str | None = None  # only for requests to this path (None: any)


@dataclass
class PisteFaults:
    canned: list[Canned] = field(default_factory=list)  # consumed one per API request
    incident_next: bool = False  # the next deposit ends IN_INCIDENTE
    token_silent: bool = False  # token requests get no answer (until the stand-in closes)
    silent_after_storing: bool = False  # the next deposit is stored, then never answered


@dataclass
class Deposit:
    number: str
    name: str
    syntax: str
    state: str
    errors_dp: list[dict[str, str]]
    errors_technical: list[dict[str, str]]
    deposited_at: str
    polls: int = 0
    integrated: list[str] = field(default_factory=list)  # invoice numbers Chorus Pro took
    searches: int = 0


class PisteStandIn(Closing):
    """The stand-in on ``host:port`` (0: any free port), storing deposits under ``root``."""

    def __init__(
        self,
        root: Path,
        rules: Rules,
        *,
        client_id: str,
        client_secret: str,
        login: str,
        password: str,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: float = 3600.0,
        processing_polls: int = 1,
        account_status: int = 403,
        max_deposit_size: int | None = DEPOSIT_LIMIT,
    ) -> None:
        self.root = root
        self.rules = rules
        self.host = host
        self._port = port
        self._credentials = (client_id, client_secret)
        self._account = base64.b64encode(f"{login}:{password}".encode()).decode("ascii")
        self.token_lifetime = token_lifetime
        self.processing_polls = processing_polls
        self.account_status = account_status
        self.max_deposit_size = max_deposit_size
        self._closing = asyncio.Event()  # releases the requests left unanswered
        #: the statut each integrated invoice shows at the 1st, 2nd… search (the last stays)
        self.lifecycle_steps = ["MISE_A_DISPOSITION", "MISE_EN_PAIEMENT"]
        self.faults = PisteFaults()
        self.deposits: dict[str, Deposit] = {}
        self.tokens_issued = 0
        self.issued: list[str] = []  # every token handed out (tests look for them in logs)
        self.requests: list[tuple[str, int]] = []  # (path, status) of every API request
        self._tokens: dict[str, float] = {}  # token -> expiry (time.monotonic)
        self._numbers = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def oauth_url(self) -> str:
        return f"http://{self.host}:{self.port}{TOKEN_PATH}"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        (self.root / UPLOAD_DIR).mkdir(parents=True, exist_ok=True)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(TOKEN_PATH, self._token)
        app.router.add_post(DEPOSIT_PATH, self._deposit)
        app.router.add_post(REPORT_PATH, self._report)
        app.router.add_post(INVOICES_PATH, self._invoices)
        self._runner, self.port = await serve(app, self.host, self._port)
        return self

    async def aclose(self) -> None:
        """Stop serving (leaving ``async with`` calls this)."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def revoke_tokens(self) -> None:
        """Every token issued so far expires now (as at the end of its life)."""
        self._tokens.clear()

    # -- OAuth2 -----------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.faults.token_silent:
            await self._closing.wait()
        pair = (str(form.get("client_id", "")), str(form.get("client_secret", "")))
        if form.get("grant_type") != "client_credentials" or pair != self._credentials:
            return web.json_response(
                {"error": "invalid_client", "error_description": "Client authentication failed"},
                status=401,
            )
        token = secrets.token_urlsafe(24)
        self._tokens[token] = time.monotonic() + self.token_lifetime
        self.tokens_issued += 1
        self.issued.append(token)
        return web.json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": int(self.token_lifetime),
                "scope": "openid",
            }
        )

    # -- the API ----------------------------------------------------------------------------

    async def _admit(self, request: web.Request) -> web.Response | dict[str, Any]:
        """The request's JSON body, or the answer refusing it."""
        for canned in self.faults.canned:
            if canned.path in (None, request.path):
                self.faults.canned.remove(canned)
                return web.Response(status=canned.status, body=canned.body, headers=canned.headers)
        bearer = request.headers.get("Authorization", "")
        token = bearer.removeprefix("Bearer ")
        expiry = self._tokens.get(token)
        if not bearer.startswith("Bearer ") or expiry is None or time.monotonic() >= expiry:
            self._tokens.pop(token, None)
            return web.json_response(
                {"httpCode": "401", "httpMessage": "Unauthorized", "moreInformation": "token"},
                status=401,
            )
        if request.headers.get("cpro-account") != self._account:
            return web.json_response(
                {"codeRetour": 20001, "libelle": "compte technique inconnu ou mot de passe erroné"},
                status=self.account_status,
            )
        if not request.content_type.startswith("application/json"):
            return _refused(20002, f"Content-Type {request.content_type} : JSON attendu")
        try:
            body = json.loads(await request.read())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _refused(20002, "corps de requête JSON illisible")
        if not isinstance(body, dict):
            return _refused(20002, "corps de requête : un objet JSON est attendu")
        return body

    async def _deposit(self, request: web.Request) -> web.Response:
        admitted = await self._admit(request)
        if isinstance(admitted, web.Response):
            return self._answered(request, admitted)
        name, syntax, content = (
            admitted.get("nomFichier"),
            admitted.get("syntaxeFlux"),
            admitted.get("fichierFlux"),
        )
        if not isinstance(name, str) or not name or naming.safe(name) != name:
            return self._answered(request, _refused(20003, "nomFichier absent ou invalide"))
        if syntax not in SYNTAXES:
            return self._answered(request, _refused(20004, f"syntaxeFlux {syntax!r} inconnue"))
        if not isinstance(admitted.get("avecSignature"), bool):
            return self._answered(request, _refused(20005, "avecSignature absent"))
        try:
            data = base64.b64decode(str(content), validate=True)
        except (binascii.Error, ValueError):
            return self._answered(request, _refused(20006, "fichierFlux : base64 invalide"))
        if not data:
            return self._answered(request, _refused(20006, "fichierFlux vide"))
        if self.max_deposit_size is not None and len(data) > self.max_deposit_size:
            words = "GDP_MSG_11.022 : la taille du fichier dépasse la taille maximale autorisée"
            return self._answered(request, _refused(20008, words))
        (self.root / UPLOAD_DIR / name).write_bytes(data)
        number = f"DF{datetime.now(UTC):%Y%m%d}{next(self._numbers):06d}"
        deposit = self._judged(number, name, str(syntax), data)
        self.deposits[number] = deposit
        if self.faults.silent_after_storing:
            self.faults.silent_after_storing = False
            await self._closing.wait()
        return self._answered(
            request,
            web.json_response(
                {
                    "codeRetour": 0,
                    "libelle": "GCU_MSG_01_000",
                    "numeroFluxDepot": number,
                    "dateDepot": deposit.deposited_at[:10],
                    "syntaxeFlux": syntax,
                }
            ),
        )

    def _judged(self, number: str, name: str, syntax: str, data: bytes) -> Deposit:
        judgement = judge(name, data, self.rules)
        at = datetime.now(UTC).isoformat(timespec="seconds")
        errors_dp = [
            {
                "numeroDP": j.invoice_number or "",
                "identifiantFournisseur": j.supplier_id or "",
                "identifiantDestinataire": "",
                "libelleErreurDP": j.fault or "",
            }
            for j in judgement.faulty
        ]
        technical: list[dict[str, str]] = []
        if self.faults.incident_next:
            self.faults.incident_next = False
            state = "IN_INCIDENTE"
            technical = [
                {
                    "codeErreur": "INC",
                    "libelleErreur": "incident de traitement",
                    "natureErreur": "T",
                }
            ]
            errors_dp = []
        elif judgement.unreadable is not None:
            state = "IN_REJETE"
            technical = [
                {
                    "codeErreur": "ARCHIVE",
                    "libelleErreur": judgement.unreadable,
                    "natureErreur": "F",
                }
            ]
        elif not errors_dp:
            state = "IN_INTEGRE"
        elif judgement.mode == "partial" and len(errors_dp) < len(judgement.invoices):
            state = "IN_INTEGRE_PARTIEL"
        else:
            state = "IN_REJETE"
        integrated = (
            [j.invoice_number or "" for j in judgement.invoices if not j.fault]
            if state in ("IN_INTEGRE", "IN_INTEGRE_PARTIEL")
            else []
        )
        return Deposit(number, name, syntax, state, errors_dp, technical, at, 0, integrated)

    async def _report(self, request: web.Request) -> web.Response:
        admitted = await self._admit(request)
        if isinstance(admitted, web.Response):
            return self._answered(request, admitted)
        deposit = self.deposits.get(str(admitted.get("numeroFluxDepot", "")))
        if deposit is None:
            return self._answered(request, _refused(20007, "numeroFluxDepot inconnu"))
        deposit.polls += 1
        final = deposit.polls > self.processing_polls
        answer: dict[str, Any] = {
            "codeRetour": 0,
            "libelle": "GCU_MSG_01_000",
            "nomFichier": deposit.name,
            "dateDepotFlux": deposit.deposited_at,
            "codeInterfaceDepotFlux": SYNTAXES[deposit.syntax],
            "etatCourantDepotFlux": deposit.state if final else "IN_EN_COURS_TRAITEMENT_CPP",
            "dateHeureEtatCourantFlux": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if final:
            answer["listeErreurDP"] = deposit.errors_dp
            answer["listeErreurTechnique"] = deposit.errors_technical
        return self._answered(request, web.json_response(answer))

    async def _invoices(self, request: web.Request) -> web.Response:
        admitted = await self._admit(request)
        if isinstance(admitted, web.Response):
            return self._answered(request, admitted)
        deposit = self.deposits.get(str(admitted.get("numeroFluxDepot", "")))
        found: list[dict[str, Any]] = []
        if deposit is not None and deposit.polls > self.processing_polls:
            deposit.searches += 1
            statut = self.lifecycle_steps[min(deposit.searches, len(self.lifecycle_steps)) - 1]
            found = [
                {
                    "identifiantFactureCPP": 8_000_000 + n,
                    "numeroFacture": number,
                    "statut": statut,
                    "numeroFluxDepot": deposit.number,
                }
                for n, number in enumerate(deposit.integrated)
            ]
        return self._answered(
            request,
            web.json_response(
                {
                    "codeRetour": 0,
                    "libelle": "GCU_MSG_01_000",
                    "listeFactures": found,
                    "parametresRetour": {"total": len(found), "pageCourante": 1, "pages": 1},
                }
            ),
        )

    def _answered(self, request: web.Request, response: web.Response) -> web.Response:
        self.requests.append((request.path, response.status))
        return response


def _refused(code: int, words: str) -> web.Response:
    return web.json_response({"codeRetour": code, "libelle": words}, status=400)
