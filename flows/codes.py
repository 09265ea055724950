"""Chorus Pro interface codes (*codes interface*) and invoice formats, as data.

An interface code names a flow type × format (E1 structured invoice in UBL, E2 mixed invoice in
CII, …). The table below is the single place that knows them; it is data so that new codes (E4/E5
works invoices, whose codes are not in our sources) are a one-line addition. Facts marked
``confirmed=False`` come from a single or indirect source: still usable, to be checked
against the connection sheet.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Format(enum.StrEnum):
    """A document format, recognised from its root element (or, for PDFs, its attachment)."""

    UBL_INVOICE = "ubl-invoice"
    UBL_CREDIT_NOTE = "ubl-creditnote"
    CII_D16B = "cii-d16b"
    FACTURX = "factur-x"
    CPP_FACTURE_PIVOT = "cpp-facture-pivot"
    CPP_STATUT = "cpp-statut"
    XCBL = "xcbl"
    PES = "pes"
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Format.UBL_INVOICE: "UBL 2.1 Invoice",
    Format.UBL_CREDIT_NOTE: "UBL 2.1 CreditNote",
    Format.CII_D16B: "CII D16B CrossIndustryInvoice",
    Format.FACTURX: "Factur-X (PDF/A-3 with embedded CII)",
    Format.CPP_FACTURE_PIVOT: "CPPFacturePivot",
    Format.CPP_STATUT: "CPPStatut",
    Format.XCBL: "XCBL 4.0",
    Format.PES: "PES Aller",
    Format.UNKNOWN: "unknown",
}

UBL_INVOICE_NS = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
UBL_CREDIT_NOTE_NS = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
CII_NS = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
XCBL_NS = "rrn:org.xcbl:schemas/xcbl/v4_0/financial/v1_0/financial.xsd"

#: (namespace, local name) of a root element → format. ``""`` is "no namespace".
ROOT_FORMATS: dict[tuple[str, str], Format] = {
    (UBL_INVOICE_NS, "Invoice"): Format.UBL_INVOICE,
    (UBL_CREDIT_NOTE_NS, "CreditNote"): Format.UBL_CREDIT_NOTE,
    (CII_NS, "CrossIndustryInvoice"): Format.CII_D16B,
    ("", "CPPFacturePivot"): Format.CPP_FACTURE_PIVOT,
    ("", "CPPStatut"): Format.CPP_STATUT,
    ("", "PES_Aller"): Format.PES,
}
#: XCBL documents are recognised by namespace alone (several root names share it).
NAMESPACE_FORMATS: dict[str, Format] = {XCBL_NS: Format.XCBL}


class Direction(enum.StrEnum):
    OUTBOUND = "outbound"  # we deposit it on Chorus Pro
    RETURN = "return"  # Chorus Pro sends it back to us


@dataclass(frozen=True)
class InterfaceCode:
    """One row of the interface-code table."""

    code: str
    flow: str
    format_label: str
    direction: Direction
    piste_syntax: str | None = None
    confirmed: bool = True
    withdrawn: bool = False
    note: str = ""


INTERFACE_CODES: tuple[InterfaceCode, ...] = (
    InterfaceCode(
        "FSO1100A",
        "E1 structured invoice",
        "UBL 2.1 Invoice / CreditNote",
        Direction.OUTBOUND,
        "IN_DP_E1_UBL_INVOICE",
    ),
    InterfaceCode(
        "FSO1101A", "E1 structured invoice", "CII (older)", Direction.OUTBOUND, "IN_DP_E1_CII"
    ),
    InterfaceCode(
        "FSO1106A",
        "E1 structured invoice",
        "CII D16B",
        Direction.OUTBOUND,
        "IN_DP_E1_CII_16B",
        confirmed=False,
    ),
    InterfaceCode(
        "FSO1102A",
        "E1 structured invoice",
        "PES",
        Direction.OUTBOUND,
        withdrawn=True,
        note="withdrawn from the service offer in 2019",
    ),
    InterfaceCode("FSO1105A", "E1 structured invoice", "XCBL", Direction.OUTBOUND, "IN_DP_E1_XCBL"),
    InterfaceCode(
        "FSO1110A",
        "E2 mixed invoice",
        "UBL Invoice Minimal",
        Direction.OUTBOUND,
        "IN_DP_E2_UBL_INVOICE_MIN",
    ),
    InterfaceCode(
        "FSO1111A", "E2 mixed invoice", "CII Minimal", Direction.OUTBOUND, "IN_DP_E2_CII_MIN_16B"
    ),
    InterfaceCode(
        "FSO1112A",
        "E2 mixed invoice",
        "PES Factures Minimal",
        Direction.OUTBOUND,
        withdrawn=True,
        note="PES references removed in 2021",
    ),
    InterfaceCode("FSO1113A", "E2 mixed invoice", "CPP Facture Mixte", Direction.OUTBOUND),
    InterfaceCode(
        "FSO1117A",
        "E2 mixed invoice",
        "Factur-X",
        Direction.OUTBOUND,
        "IN_DP_E2_CII_FACTURX",
        confirmed=False,
    ),
    InterfaceCode(
        "FSO1120A",
        "E3 mémoire de frais de justice",
        "UBL Invoice Mémoire",
        Direction.OUTBOUND,
        "IN_DP_E3_UBL_INVOICE",
    ),
    InterfaceCode(
        "FSO1300A",
        "life-cycle sent by issuers",
        "CPP Statut",
        Direction.OUTBOUND,
        note="qualification only",
    ),
    InterfaceCode(
        "FSO1301A",
        "life-cycle sent by recipients",
        "CPP Statut",
        Direction.OUTBOUND,
        note="qualification only",
    ),
    InterfaceCode("FEN1200A", "life-cycle sent to suppliers", "CPP Statut", Direction.RETURN),
    InterfaceCode("FEN1201A", "life-cycle sent to suppliers", "AIFE Statut", Direction.RETURN),
    InterfaceCode("FEN0036A", "pivot flow", "CPP Pivot", Direction.RETURN, confirmed=False),
    InterfaceCode(
        "FAR0037A",
        "reference flow",
        "CPP Pivot",
        Direction.RETURN,
        "OUT_REF_SP_FAR0037",
        confirmed=False,
    ),
)

BY_CODE: dict[str, InterfaceCode] = {row.code: row for row in INTERFACE_CODES}

#: The interface code a recognised outbound document is deposited under by default. A format
#: absent from this map (a return flow, PES, unknown) has no outbound code.
DEFAULT_CODE_FOR_FORMAT: dict[Format, str] = {
    Format.UBL_INVOICE: "FSO1100A",
    Format.UBL_CREDIT_NOTE: "FSO1100A",
    Format.CII_D16B: "FSO1106A",
    Format.FACTURX: "FSO1117A",
    Format.XCBL: "FSO1105A",
    Format.CPP_FACTURE_PIVOT: "FSO1113A",
}


class UnknownInterfaceCode(ValueError):
    """An interface code that is not in the table."""


def lookup(code: str) -> InterfaceCode:
    """Return the table row for ``code``.

    Raises:
        UnknownInterfaceCode: the code is not in the table (the message lists the known ones).
    """
    try:
        return BY_CODE[code]
    except KeyError:
        known = ", ".join(sorted(BY_CODE))
        raise UnknownInterfaceCode(
            f"unknown interface code {code!r}; known codes: {known}"
        ) from None
