"""The Chorus Pro API through PISTE (``protocol = "piste"``): deposits and integration reports.

A flow is deposited with ``POST /cpro/factures/v1/deposer/flux``: the file in base64, its
remote name, the ``syntaxeFlux`` of its interface code (the table in :mod:`flows.codes`) and
``avecSignature``. The deposit number (``numeroFluxDepot``) and date go into the receipt; the
gateway then asks ``POST /cpro/transverses/v1/consulterCRDetaille`` about that number until the
state is final (:data:`FINAL_STATES`), and applies the report like a return flow.

A deposit whose answer never came (a timeout, a dropped connection) may have been taken: it is
not deposited again blindly — the API offers no way to find a deposit by file name — but filed
in ``error/`` with what to check. A deposit that got no further than a 401 (then no fresh
token) took nothing: it is retried like any retryable failure. A file over
``max_deposit_size`` (10 MB, the API's limit) is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flows import codes
from flows.returns import (
    INVOICE_FINAL,
    PISTE_INVOICE_STATUSES,
    PISTE_INVOICES_FORMAT,
    PISTE_REPORT_FORMAT,
)
from protocols.base import Capabilities, Closing, Outbound, ProtocolPlugin, Receipt, Report
from protocols.errors import FileTooLarge, ProtocolError, RemoteRejected, TransferTimeout
from protocols.piste.api import Client, PisteSettings, parse_settings

DEPOSIT = "/cpro/factures/v1/deposer/flux"
REPORT = "/cpro/transverses/v1/consulterCRDetaille"
INVOICES = "/cpro/factures/v1/rechercher/fournisseur"
#: States after which Chorus Pro does no more with a deposit (IN_INCIDENTE: it must be sent
#: again). Others (IN_RECU, IN_EN_COURS_TRAITEMENT_CPP, …, and any new one) mean "ask later".
FINAL_STATES = frozenset({"IN_INTEGRE", "IN_INTEGRE_PARTIEL", "IN_REJETE", "IN_INCIDENTE"})
RESEND_STATES = frozenset({"IN_INCIDENTE"})  # the whole flow must be deposited again


def syntax(interface_code: str) -> str:
    """The ``syntaxeFlux`` for an interface code.

    Raises:
        ProtocolError: the code has no PISTE syntax (not depositable through the API).
    """
    known = codes.BY_CODE.get(interface_code)
    if known is None or known.piste_syntax is None:
        depositable = ", ".join(sorted(c.code for c in codes.INTERFACE_CODES if c.piste_syntax))
        raise ProtocolError(
            f"interface code {interface_code} has no PISTE syntaxeFlux; the API takes "
            f"{depositable}: use an EDI connection for this flow"
        )
    return known.piste_syntax


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


class PisteSender(Closing):
    protocol = "piste"
    capabilities = Capabilities(integration_reports=True)

    def __init__(self, settings: PisteSettings) -> None:
        self._settings = settings
        self.client = Client(settings)
        self.report_interval = settings.report_interval
        self.report_max_interval = settings.report_max_interval
        self.report_deadline = settings.report_deadline
        self.lifecycle_interval = settings.lifecycle_interval
        self.lifecycle_deadline = settings.lifecycle_deadline
        if settings.lifecycle:
            self.capabilities = Capabilities(integration_reports=True, invoice_lifecycle=True)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def send(self, flow: Outbound) -> Receipt:
        s = self._settings
        syntaxe = syntax(flow.interface_code)
        size = flow.size or flow.path.stat().st_size
        if size > s.max_deposit_size:
            raise FileTooLarge(
                f"{flow.remote_name} is {size} bytes, over the {s.max_deposit_size} bytes the "
                "PISTE API takes per file (max_deposit_size; Chorus Pro refuses larger files "
                "with GDP_MSG_11.022); nothing was sent: deposit it over an EDI connection "
                "(SFTP, AS2, PeSIT) or split it into smaller files",
                nothing_sent=True,
            )
        encoded = await asyncio.to_thread(_base64, flow.path)  # up to 40 MB: off the loop
        body: dict[str, Any] = {
            "fichierFlux": encoded,
            "nomFichier": flow.remote_name,
            "syntaxeFlux": syntaxe,
            "avecSignature": s.signature,
        }
        if s.user_id is not None:
            body["idUtilisateurCourant"] = s.user_id
        unknown = (
            "; it may have been deposited all the same: look for "
            f"{flow.remote_name} in Chorus Pro (suivi des flux) before raccord retry"
        )
        try:
            answer = await self.client.call(DEPOSIT, body, f"deposit of {flow.remote_name}")
        except (TransferTimeout, ProtocolError) as exc:
            if exc.nothing_sent:  # e.g. a 401, then no fresh token: a plain retryable failure
                raise
            if isinstance(exc, TransferTimeout):  # the request went: its outcome is unknown
                raise TransferTimeout(f"{exc}{unknown}", retryable=False) from None
            raise ProtocolError(f"{exc}{unknown}") from None  # an answer no one can read
        number = answer.get("numeroFluxDepot")
        if not isinstance(number, str | int) or not str(number):
            raise ProtocolError(f"PISTE deposit of {flow.remote_name}: no numeroFluxDepot{unknown}")
        return Receipt(
            self.protocol,
            flow.remote_name,
            {
                "numeroFluxDepot": str(number),
                "dateDepot": answer.get("dateDepot"),
                "syntaxeFlux": syntaxe,
                "environment": s.environment,
                "libelle": answer.get("libelle"),
            },
        )

    async def report(self, receipt: Mapping[str, Any]) -> Report:
        number = str(receipt["numeroFluxDepot"])
        body = {"numeroFluxDepot": number, "syntaxeFlux": receipt.get("syntaxeFlux")}
        answer = await self.client.call(REPORT, body, f"report on deposit {number}")
        state = answer.get("etatCourantDepotFlux")
        if not isinstance(state, str) or not state:
            raise ProtocolError(f"PISTE report on deposit {number}: no etatCourantDepotFlux")
        if state not in FINAL_STATES:
            return Report(state, final=False)
        document = {
            "format": PISTE_REPORT_FORMAT,  # what flows.returns recognises
            "numeroFluxDepot": number,
            "syntaxeFlux": receipt.get("syntaxeFlux"),
            "nomFichier": receipt.get("remote_name") or answer.get("nomFichier"),
            "answer": answer,
        }
        text = json.dumps(document, ensure_ascii=False, indent=1).encode()
        return Report(
            state,
            final=True,
            document=text,
            name=f"CR_{number}.json",
            resend=state in RESEND_STATES,
        )

    async def lifecycle(self, receipt: Mapping[str, Any]) -> Report:
        number = str(receipt["numeroFluxDepot"])
        answer = await self.client.call(
            INVOICES, {"numeroFluxDepot": number}, f"invoices of deposit {number}"
        )
        found = answer.get("listeFactures")
        invoices = [i for i in found if isinstance(i, dict)] if isinstance(found, list) else []
        words = sorted(f"{i.get('numeroFacture')}={i.get('statut')}" for i in invoices)
        final = bool(invoices) and all(
            PISTE_INVOICE_STATUSES.get(str(i.get("statut"))) in INVOICE_FINAL for i in invoices
        )
        document = {
            "format": PISTE_INVOICES_FORMAT,  # what flows.returns recognises
            "numeroFluxDepot": number,
            "nomFichier": receipt.get("remote_name"),
            "answer": answer,
        }
        text = json.dumps(document, ensure_ascii=False, indent=1).encode()
        return Report(", ".join(words), final=final, document=text, name=f"FACTURES_{number}.json")

    async def check(self) -> str:
        s = self._settings
        await self.client.tokens.get()
        # A read-only call that needs both the token and the technical account: a report on a
        # deposit number that cannot exist. Any JSON answer proves both were accepted.
        # codeRetour ≠ 0 about deposit 0 is expected: the token and the account were accepted
        with contextlib.suppress(RemoteRejected):
            await self.client.call(REPORT, {"numeroFluxDepot": "0"}, "check call")
        await self.aclose()
        return f"PISTE {s.environment}: {s.api_url} (token obtained, technical account accepted)"


PLUGIN = ProtocolPlugin(
    name="piste",
    parse_settings=parse_settings,
    create_sender=PisteSender,
    secret_fields=frozenset(
        {"client_id", "client_secret", "technical_login", "technical_password"}
    ),
    capabilities=PisteSender.capabilities,
)
