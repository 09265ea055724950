"""Return flows: what the partner says about the flows we sent.

* **CPP Statut** (FEN1200A; root ``CPPStatut``, no namespace) is parsed fully: envelope
  parameters (``DtPrd``, ``IdFlx``…), sender and recipient, flow-level statuses 90–96 with their
  error details, invoice-level statuses 01–41 with supplier, debtor, invoice number, time and
  comment. Codes outside the tables below are kept as they are and reported.
* **PISTE integration reports** (``consulterCRDetaille``, as raccord stores them: JSON with
  ``format`` = ``raccord/piste-consulterCRDetaille`` and the API's ``answer``): the deposit's
  state is a flow status (IN_REJETE fails the flow), each ``listeErreurDP`` entry an error
  naming its invoice, each ``listeErreurTechnique`` entry an error of the flow.
* **PISTE invoice searches** (``rechercher/fournisseur`` by deposit number, as raccord stores
  them): each ``listeFactures`` entry is an invoice status, its ``statut`` word mapped to the
  CPP Statut code of the same meaning (:data:`PISTE_INVOICE_STATUSES`).
* **AIFE Statut** (FEN1201A), integration reports (CSO…) and anything else: their schemas are
  not public here, so the document is read tolerantly — raccord flow ids found in any text or
  attribute; invoice numbers, status codes or words, timestamps and comments under element names
  that say so, one status per element whose children carry them (a status with an invoice
  number is that invoice's; a 90–96 code without one is the flow's). AIFE Statut's statuses are
  applied like CPP Statut's; other kinds are only reported. What could not be understood is
  reported in ``unrecognised``. Never an exception for an unknown shape.

Parsing is streaming and hardened like every XML read in raccord (see :mod:`flows.xmlscan`).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flows import statuses, xmlscan

#: Flow-level statuses (CPPFluxStatutUnitaire/DonneesStatut/IdStatut).
FLOW_STATUS_LABELS = {
    "90": "reçu",
    "91": "en cours de transmission",
    "92": "reçu destinataire final",
    "93": "erreur réception",
    "94": "erreur réception destinataire final",
    "95": "erreur de transmission",
    "96": "reçu – intégration partielle",
}
#: States of a deposit through the API (``etatCourantDepotFlux``); the list is open.
PISTE_STATE_LABELS = {
    "IN_RECU": "reçu",
    "IN_TRAITE_SE_CPP": "traité par le service d'échange",
    "IN_EN_ATTENTE_TRAITEMENT_CPP": "en attente de traitement",
    "IN_EN_COURS_TRAITEMENT_CPP": "en cours de traitement",
    "IN_EN_ATTENTE_RETRAITEMENT_CPP": "en attente de retraitement",
    "IN_INTEGRE": "intégré",
    "IN_INTEGRE_PARTIEL": "intégré partiellement",
    "IN_REJETE": "rejeté",
    "IN_INCIDENTE": "en incident (à redéposer)",
}
FLOW_FAILED = frozenset({"93", "94", "95", "IN_REJETE"})
PISTE_REPORT_FORMAT = "raccord/piste-consulterCRDetaille"
PISTE_INVOICES_FORMAT = "raccord/piste-rechercherFactureParFournisseur"
#: Invoice statuses as the API words them (``statut`` in ``listeFactures``) → the CPP Statut
#: code of the same meaning. A word not here is kept as it is, and reported.
PISTE_INVOICE_STATUSES = {
    "DEPOSEE": "01",
    "EN_COURS_ACHEMINEMENT": "02",
    "MISE_A_DISPOSITION": "03",
    "A_RECYCLER": "04",
    "REJETEE": "05",
    "SUSPENDUE": "06",
    "SERVICE_FAIT": "07",
    "MANDATEE": "08",
    "MISE_A_DISPOSITION_COMPTABLE": "09",
    "COMPTABILISEE": "10",
    "MISE_EN_PAIEMENT": "11",
    "COMPLETEE": "12",
}

#: Invoice-level statuses (CPPFactureStatutUnitaire/DonneesStatut/IdStatut); 13–41 exist
#: without a published label. The lifecycle table (stage, final or not) is :mod:`flows.statuses`.
INVOICE_STATUS_LABELS = {code: row.label for code, row in statuses.TABLE.items()}
INVOICE_REJECTED = frozenset(code for code, row in statuses.TABLE.items() if row.rejected)
#: After these, no further life-cycle status is expected (rejection or payment ends the story).
INVOICE_FINAL = frozenset(code for code, row in statuses.TABLE.items() if row.final)

_FLOW_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")
_RECORDS = frozenset(
    {"ParametreIndiv", "Emetteur", "Recepteur", "CPPFluxStatutUnitaire", "CPPFactureStatutUnitaire"}
)
# For documents of unknown schema (AIFE Statut among them): element names (lower case) that
# carry these facts in the AIFE flows we know of, by the field they fill in a status record.
_TOLERANT_FIELDS = {
    **dict.fromkeys(("idflx", "idflux", "numeroflux", "identifiantflux", "nomfichier"), "flow"),
    **dict.fromkeys(("idfacture", "numerofacture", "numfacture", "numerodp"), "invoice"),
    **dict.fromkeys(("idstatut", "statut", "codestatut", "etat", "etatcourant"), "status"),
    **dict.fromkeys(("horodatage", "dateheureetatcourant", "datestatut"), "at"),
    **dict.fromkeys(("commentaire", "motif", "libellestatut"), "comment"),
    **dict.fromkeys(("identifiantfournisseur", "siretfournisseur"), "supplier"),
}


class Kind(enum.StrEnum):
    CPP_STATUT = "cpp_statut"
    AIFE_STATUT = "aife_statut"
    INTEGRATION_REPORT = "integration_report"
    PISTE_REPORT = "piste_report"
    PISTE_INVOICES = "piste_invoices"
    UNKNOWN = "unknown"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class ErrorDetail:
    nature: str | None
    code: str | None
    label: str | None
    description: str | None

    def text(self) -> str:
        parts = [p for p in (self.code, self.label, self.description) if p]
        return " — ".join(parts) or "(no detail)"


@dataclass(frozen=True)
class FlowStatus:
    code: str
    label: str | None  # None: a code raccord does not know
    timestamp: str | None
    flow_ref: str | None  # IdFlux
    errors: tuple[ErrorDetail, ...] = ()

    @property
    def failed(self) -> bool:
        return self.code in FLOW_FAILED


@dataclass(frozen=True)
class InvoiceStatus:
    code: str
    label: str | None
    timestamp: str | None
    invoice_number: str | None
    supplier_id: str | None
    supplier_id_type: str | None
    supplier_name: str | None
    debtor_id: str | None
    debtor_service: str | None
    comment: str | None

    @property
    def rejected(self) -> bool:
        return self.code in INVOICE_REJECTED


@dataclass(frozen=True)
class ReturnFlow:
    kind: Kind
    root: str
    version: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    sender: str | None = None
    recipient: str | None = None
    flow_statuses: tuple[FlowStatus, ...] = ()
    invoice_statuses: tuple[InvoiceStatus, ...] = ()
    #: raccord flow ids found in the document (from IdFlx/IdFlux or any text): for correlation.
    flow_ids: tuple[str, ...] = ()
    #: Unknown schemas only: invoice numbers and status words found under telling names.
    invoice_numbers: tuple[str, ...] = ()
    status_words: tuple[str, ...] = ()
    #: What was not understood (unknown codes, unknown schema, unreadable document).
    unrecognised: tuple[str, ...] = ()

    @property
    def production_date(self) -> str | None:
        return self.parameters.get("DtPrd")

    @property
    def flow_ref(self) -> str | None:
        return self.parameters.get("IdFlx")


def _child_text(element: Any, *path: str) -> str | None:
    """Text of the first descendant reached by local names ``path`` (prefixes ignored)."""
    current = [element]
    for name in path:
        current = [c for e in current for c in e if xmlscan.local_name(c) == name]
        if not current:
            return None
    text = (current[0].text or "").strip()
    return text or None


def _descendants(element: Any, name: str) -> list[Any]:
    return [e for e in element.iter() if xmlscan.local_name(e) == name]


def _flow_status(record: Any, notes: list[str]) -> FlowStatus | None:
    data = next(iter(_descendants(record, "DonneesStatut")), record)
    code = _child_text(data, "IdStatut")
    if code is None:
        notes.append("CPPFluxStatutUnitaire without IdStatut (ignored)")
        return None
    label = FLOW_STATUS_LABELS.get(code)
    if label is None:
        notes.append(f"unknown flow status code {code}")
    errors = tuple(
        ErrorDetail(
            _child_text(line, "NatureErreur"),
            _child_text(line, "CodeErreur"),
            _child_text(line, "LibelleErreur"),
            _child_text(line, "DescriptionErreur"),
        )
        for line in _descendants(record, "LigneErreurDetail")
    )
    return FlowStatus(
        code,
        label,
        _child_text(data, "Horodatage"),
        _child_text(data, "IdFlux") or _child_text(record, "IdFlux"),
        errors,
    )


def _invoice_status(record: Any, notes: list[str]) -> InvoiceStatus | None:
    data = next(iter(_descendants(record, "DonneesStatut")), record)
    code = _child_text(data, "IdStatut")
    if code is None:
        notes.append("CPPFactureStatutUnitaire without IdStatut (ignored)")
        return None
    label = INVOICE_STATUS_LABELS.get(code)
    if label is None:
        known_range = code.isdigit() and 13 <= int(code) <= 41
        notes.append(
            f"invoice status code {code} has no published label"
            if known_range
            else f"unknown invoice status code {code}"
        )
    number = _child_text(data, "IdFacture") or _child_text(record, "IdFacture")
    if number is None:
        notes.append(f"invoice status {code} without IdFacture")
    return InvoiceStatus(
        code=code,
        label=label,
        timestamp=_child_text(data, "Horodatage"),
        invoice_number=number,
        supplier_id=_child_text(record, "Fournisseur", "Identifiant"),
        supplier_id_type=_child_text(record, "Fournisseur", "TypeIdentifiant"),
        supplier_name=_child_text(record, "Fournisseur", "RaisonSociale"),
        debtor_id=_child_text(record, "Debiteur", "Identifiant"),
        debtor_service=_child_text(record, "Debiteur", "CodeService"),
        comment=_child_text(data, "Commentaire"),
    )


def _parse_cpp_statut(source: IO[bytes]) -> ReturnFlow:
    version = None
    parameters: dict[str, str] = {}
    parties: dict[str, str] = {}
    flow_statuses: list[FlowStatus] = []
    invoice_statuses: list[InvoiceStatus] = []
    notes: list[str] = []
    for event, element in xmlscan.records(source, _RECORDS):
        if event == "root":
            version = element.get("Version")
            continue
        name = xmlscan.local_name(element)
        if name == "ParametreIndiv":
            code = _child_text(element, "Code")
            if code:
                parameters[code] = _child_text(element, "Valeurparametre") or ""
        elif name in ("Emetteur", "Recepteur"):
            parties[name] = _child_text(element, "Id") or ""
        elif name == "CPPFluxStatutUnitaire":
            flow = _flow_status(element, notes)
            if flow is not None:
                flow_statuses.append(flow)
        else:
            invoice = _invoice_status(element, notes)
            if invoice is not None:
                invoice_statuses.append(invoice)
    if not flow_statuses and not invoice_statuses:
        notes.append("no CPPFluxStatutUnitaire nor CPPFactureStatutUnitaire: nothing to apply")
    references = [parameters.get("IdFlx", "")] + [s.flow_ref or "" for s in flow_statuses]
    return ReturnFlow(
        kind=Kind.CPP_STATUT,
        root="CPPStatut",
        version=version,
        parameters=parameters,
        sender=parties.get("Emetteur"),
        recipient=parties.get("Recepteur"),
        flow_statuses=tuple(flow_statuses),
        invoice_statuses=tuple(invoice_statuses),
        flow_ids=_unique(m for ref in references for m in _FLOW_ID.findall(ref)),
        unrecognised=tuple(notes),
    )


def _status_code(word: str) -> tuple[str, str | None]:
    """A status as a tolerant read finds it (a code, or an API word) → (code, label)."""
    code = PISTE_INVOICE_STATUSES.get(word.upper(), word)
    return code, FLOW_STATUS_LABELS.get(code) or INVOICE_STATUS_LABELS.get(code)


def _record_statuses(
    fields: dict[str, str], notes: list[str]
) -> tuple[FlowStatus | None, InvoiceStatus | None]:
    """The status one element's fields state, if they state one whole."""
    word, number = fields.get("status"), fields.get("invoice")
    if word is None:
        if number is not None:
            notes.append(f"invoice {number} without a status (not applied)")
        return None, None
    code, label = _status_code(word)
    if number is not None:
        if label is None:
            notes.append(f"unknown invoice status {word} for invoice {number}")
        return None, InvoiceStatus(
            code=code,
            label=label,
            timestamp=fields.get("at"),
            invoice_number=number,
            supplier_id=fields.get("supplier"),
            supplier_id_type=None,
            supplier_name=None,
            debtor_id=None,
            debtor_service=None,
            comment=fields.get("comment"),
        )
    if code in FLOW_STATUS_LABELS:
        return FlowStatus(code, label, fields.get("at"), fields.get("flow")), None
    notes.append(f"status {word} names no invoice and is not a flow status (not applied)")
    return None, None


def _parse_tolerantly(source: IO[bytes], root: str) -> ReturnFlow:
    """Documents of unknown schema: each element whose children carry a status (and, for an
    invoice, its number) is read as one status record; the rest is reported, never guessed."""
    lowered = root.lower()
    if "aife" in lowered and "statut" in lowered:
        kind = Kind.AIFE_STATUT
    elif lowered.startswith(("cso", "cr")) or "rapport" in lowered or "integration" in lowered:
        kind = Kind.INTEGRATION_REPORT
    else:
        kind = Kind.UNKNOWN
    flow_ids: list[str] = []
    invoices: list[str] = []
    words: list[str] = []
    notes: list[str] = []
    flow_statuses: list[FlowStatus] = []
    invoice_statuses: list[InvoiceStatus] = []
    records: dict[int, dict[str, str]] = {}  # open parents → the fields their children gave
    for serial, parent, name, text, attributes in xmlscan.nodes(source):
        for value in (text, *attributes.values()):
            flow_ids += _FLOW_ID.findall(value)
        fields = records.pop(serial, None)
        if fields is not None:
            flow, invoice = _record_statuses(fields, notes)
            flow_statuses += [flow] if flow else []
            invoice_statuses += [invoice] if invoice else []
        field_name = _TOLERANT_FIELDS.get(name.lower())
        if not text or field_name is None:
            continue
        if field_name == "invoice":
            invoices.append(text)
        elif field_name == "status":
            words.append(text)
        records.setdefault(parent, {}).setdefault(field_name, text)
    if kind is not Kind.AIFE_STATUT and (flow_statuses or invoice_statuses):
        notes.append(f"{kind.value} documents are reported, never applied")
        flow_statuses, invoice_statuses = [], []
    if not flow_statuses and not invoice_statuses:
        notes.insert(
            0,
            f"schema of {root} is not known to raccord and no status could be read from it: "
            f"stored as received; found {len(set(flow_ids))} flow id(s), "
            f"{len(set(invoices))} invoice number(s), {len(set(words))} status word(s)",
        )
    return ReturnFlow(
        kind=kind,
        root=root,
        flow_statuses=tuple(flow_statuses),
        invoice_statuses=tuple(invoice_statuses),
        flow_ids=_unique(flow_ids),
        invoice_numbers=_unique(invoices),
        status_words=_unique(words),
        unrecognised=tuple(notes),
    )


def _text(value: Any) -> str | None:
    return str(value).strip() or None if value is not None else None


def _parse_piste_report(document: dict[str, Any]) -> ReturnFlow:
    answer = document.get("answer")
    if not isinstance(answer, dict):
        return ReturnFlow(Kind.PISTE_REPORT, "json", unrecognised=("no answer in the report",))
    notes: list[str] = []
    state = _text(answer.get("etatCourantDepotFlux")) or ""
    label = PISTE_STATE_LABELS.get(state)
    if label is None:
        notes.append(f"unknown deposit state {state or '(none)'}")
    errors: list[ErrorDetail] = []
    for entry in answer.get("listeErreurDP") or []:
        if isinstance(entry, dict):
            errors.append(
                ErrorDetail(
                    "DP", _text(entry.get("numeroDP")), _text(entry.get("libelleErreurDP")), None
                )
            )
    for entry in answer.get("listeErreurTechnique") or []:
        if isinstance(entry, dict):
            errors.append(
                ErrorDetail(
                    _text(entry.get("natureErreur")),
                    _text(entry.get("codeErreur")),
                    _text(entry.get("libelleErreur")),
                    None,
                )
            )
    number = _text(document.get("numeroFluxDepot"))
    status = FlowStatus(
        state, label, _text(answer.get("dateHeureEtatCourantFlux")), number, tuple(errors)
    )
    references = [str(document.get("nomFichier") or ""), str(answer.get("nomFichier") or "")]
    return ReturnFlow(
        kind=Kind.PISTE_REPORT,
        root="json",
        parameters={"numeroFluxDepot": number or ""},
        flow_statuses=(status,) if state else (),
        flow_ids=_unique(m for ref in references for m in _FLOW_ID.findall(ref)),
        unrecognised=tuple(notes),
    )


def _parse_piste_invoices(document: dict[str, Any]) -> ReturnFlow:
    answer = document.get("answer")
    found = answer.get("listeFactures") if isinstance(answer, dict) else None
    notes: list[str] = []
    statuses: list[InvoiceStatus] = []
    for entry in found if isinstance(found, list) else []:
        if not isinstance(entry, dict):
            continue
        word = _text(entry.get("statut")) or ""
        code = PISTE_INVOICE_STATUSES.get(word)
        if code is None:
            notes.append(f"unknown invoice status {word or '(none)'}")
        number = _text(entry.get("numeroFacture"))
        statuses.append(
            InvoiceStatus(
                code=code or word,
                label=INVOICE_STATUS_LABELS.get(code or "", word or None),
                timestamp=_text(entry.get("dateHeureEtatCourant")),
                invoice_number=number,
                supplier_id=None,
                supplier_id_type=None,
                supplier_name=None,
                debtor_id=_text(entry.get("identifiantDestinataire")),
                debtor_service=None,
                comment=f"identifiantFactureCPP {entry.get('identifiantFactureCPP')}",
            )
        )
    if not statuses:
        notes.append("no invoice in listeFactures")
    references = [str(document.get("nomFichier") or "")]
    return ReturnFlow(
        kind=Kind.PISTE_INVOICES,
        root="json",
        parameters={"numeroFluxDepot": _text(document.get("numeroFluxDepot")) or ""},
        invoice_statuses=tuple(statuses),
        flow_ids=_unique(m for ref in references for m in _FLOW_ID.findall(ref)),
        unrecognised=tuple(notes),
    )


def _json_document(path: Path) -> dict[str, Any] | None:
    """The report raccord wrote, if ``path`` holds one (a JSON object of its format)."""
    with path.open("rb") as source:
        start = source.read(64).lstrip()
    if not start.startswith(b"{"):
        return None
    try:
        document = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(document, dict) and document.get("format") in (
        PISTE_REPORT_FORMAT,
        PISTE_INVOICES_FORMAT,
    ):
        return document
    return None


def parse(path: Path) -> ReturnFlow:
    """Read a return flow; never raises for bad content (see ``Kind.UNREADABLE``)."""
    try:
        report = _json_document(path)
        if report is not None and report["format"] == PISTE_INVOICES_FORMAT:
            return _parse_piste_invoices(report)
        if report is not None:
            return _parse_piste_report(report)
        with path.open("rb") as source:
            root = xmlscan.scan(source).local_name
        with path.open("rb") as source:
            if root == "CPPStatut":
                return _parse_cpp_statut(source)
            return _parse_tolerantly(source, root)
    except xmlscan.XmlError as exc:
        return ReturnFlow(Kind.UNREADABLE, "", unrecognised=(f"not readable as XML: {exc}",))
    except OSError as exc:
        return ReturnFlow(Kind.UNREADABLE, "", unrecognised=(f"cannot read: {exc.strerror}",))


def _unique(values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))
