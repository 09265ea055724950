"""Recognise a document and extract its invoice facts — the portal's "Analyser".

:func:`analyze` answers, for one file: its format, the interface code it would be deposited
under, and what identifies the invoice (number, issue date, supplier and buyer identifiers). It
never raises for bad content: a malformed, empty or unknown document is an :class:`Analysis` with
a ``problem`` (a stable reason code and a human message), so callers can route it to ``error/``.
"""

from __future__ import annotations

import enum
import hashlib
import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from flows import codes, facturx
from flows.codes import Format
from flows.xmlscan import XmlError, scan

_PDF_MAGIC = b"%PDF-"


class Problem(enum.StrEnum):
    """Why a document cannot be sent, as the ``reason`` codes of ``error.json``."""

    EMPTY = "empty"
    MALFORMED_XML = "malformed_xml"
    UNKNOWN_FORMAT = "unknown_format"
    NO_INTERFACE_CODE = "no_interface_code"


_UBL_PARTY = {
    "supplier": "AccountingSupplierParty",
    "buyer": "AccountingCustomerParty",
}
_CII_PARTY = {"supplier": "SellerTradeParty", "buyer": "BuyerTradeParty"}
_CII_AGREEMENT = ("SupplyChainTradeTransaction", "ApplicableHeaderTradeAgreement")


def _ubl_paths() -> dict[tuple[str, ...], str]:
    paths: dict[tuple[str, ...], str] = {
        ("ID",): "invoice_number",
        ("IssueDate",): "issue_date",
        ("InvoiceTypeCode",): "type_code",
        ("CreditNoteTypeCode",): "type_code",
        ("DocumentCurrencyCode",): "currency",
    }
    for role, element in _UBL_PARTY.items():
        party = (element, "Party")
        # Chorus Pro identifies structures by SIRET, usually in PartyIdentification.
        paths[(*party, "PartyIdentification", "ID")] = f"{role}_id"
        paths[(*party, "PartyLegalEntity", "CompanyID")] = f"{role}_alt_id"
        paths[(*party, "PartyLegalEntity", "RegistrationName")] = f"{role}_name"
        paths[(*party, "PartyName", "Name")] = f"{role}_alt_name"
    return paths


def _cii_paths() -> dict[tuple[str, ...], str]:
    paths: dict[tuple[str, ...], str] = {
        ("ExchangedDocument", "ID"): "invoice_number",
        ("ExchangedDocument", "TypeCode"): "type_code",
        ("ExchangedDocument", "IssueDateTime", "DateTimeString"): "issue_date",
        (
            "SupplyChainTradeTransaction",
            "ApplicableHeaderTradeSettlement",
            "InvoiceCurrencyCode",
        ): "currency",
    }
    for role, element in _CII_PARTY.items():
        party = (*_CII_AGREEMENT, element)
        paths[(*party, "SpecifiedLegalOrganization", "ID")] = f"{role}_id"
        paths[(*party, "GlobalID")] = f"{role}_alt_id"
        paths[(*party, "ID")] = f"{role}_alt_id2"
        paths[(*party, "Name")] = f"{role}_name"
    return paths


_PATHS: Mapping[Format, Mapping[tuple[str, ...], str]] = {
    Format.UBL_INVOICE: _ubl_paths(),
    Format.UBL_CREDIT_NOTE: _ubl_paths(),
    Format.CII_D16B: _cii_paths(),
}


def format_of_root(namespace: str, local_name: str) -> Format:
    """The format named by a root element, or ``Format.UNKNOWN``."""
    found = codes.ROOT_FORMATS.get((namespace, local_name))
    if found is not None:
        return found
    return codes.NAMESPACE_FORMATS.get(namespace, Format.UNKNOWN)


def _paths_for_root(root: tuple[str, str]) -> Mapping[tuple[str, ...], str]:
    return _PATHS.get(format_of_root(*root), {})


@dataclass(frozen=True)
class Analysis:
    """Everything raccord knows about one document before sending it.

    ``root`` is ``{namespace}local`` of the (embedded) XML root, for the operator's eyes.
    ``problem``/``message`` are set when the document cannot be deposited as it is.
    """

    format: Format
    size: int
    sha256: str
    interface_code: str | None = None
    invoice_number: str | None = None
    issue_date: str | None = None
    type_code: str | None = None
    currency: str | None = None
    supplier_id: str | None = None
    supplier_name: str | None = None
    buyer_id: str | None = None
    buyer_name: str | None = None
    root: str | None = None
    embedded_file: str | None = None
    problem: Problem | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with stable keys (``format_label`` added for people)."""
        data = asdict(self)
        data["format"] = self.format.value
        data["format_label"] = self.format.label
        data["problem"] = self.problem.value if self.problem else None
        return data


def _facts(values: Mapping[str, str]) -> dict[str, str | None]:
    def first(*keys: str) -> str | None:
        for key in keys:
            if values.get(key):
                return values[key]
        return None

    return {
        "invoice_number": first("invoice_number"),
        "issue_date": _normalise_date(first("issue_date")),
        "type_code": first("type_code"),
        "currency": first("currency"),
        "supplier_id": first("supplier_id", "supplier_alt_id", "supplier_alt_id2"),
        "supplier_name": first("supplier_name", "supplier_alt_name"),
        "buyer_id": first("buyer_id", "buyer_alt_id", "buyer_alt_id2"),
        "buyer_name": first("buyer_name", "buyer_alt_name"),
    }


def _normalise_date(value: str | None) -> str | None:
    """CII writes dates as ``YYYYMMDD`` (format 102); show them as ISO 8601 like UBL does."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _analyze_xml(
    stream: IO[bytes], size: int, digest: str, *, container: Format | None = None
) -> Analysis:
    try:
        found = scan(stream, _paths_for_root)
    except XmlError as exc:
        where = "embedded XML: " if container else ""
        return Analysis(
            container or Format.UNKNOWN,
            size,
            digest,
            problem=Problem.MALFORMED_XML,
            message=f"{where}{exc}",
        )
    fmt = format_of_root(found.namespace, found.local_name)
    root = f"{{{found.namespace}}}{found.local_name}" if found.namespace else found.local_name
    if container is Format.FACTURX and fmt is not Format.CII_D16B:
        return Analysis(
            Format.UNKNOWN,
            size,
            digest,
            root=root,
            problem=Problem.UNKNOWN_FORMAT,
            message=f"PDF attachment is not a CII CrossIndustryInvoice (root {root})",
        )
    fmt = container or fmt
    if fmt is Format.UNKNOWN:
        return Analysis(
            fmt,
            size,
            digest,
            root=root,
            problem=Problem.UNKNOWN_FORMAT,
            message=f"unrecognised root element {root}",
        )
    code = codes.DEFAULT_CODE_FOR_FORMAT.get(fmt)
    problem, message = None, None
    if code is None:
        problem = Problem.NO_INTERFACE_CODE
        message = f"{fmt.label} documents have no outbound interface code"
    return Analysis(
        fmt,
        size,
        digest,
        interface_code=code,
        root=root,
        problem=problem,
        message=message,
        **_facts(found.values),
    )


def analyze(path: Path) -> Analysis:
    """Analyse the file at ``path`` (see :func:`analyze_stream`).

    Raises:
        OSError: the file cannot be read (a missing file is the caller's affair, not a format).
    """
    with path.open("rb") as stream:
        return analyze_stream(stream)


def analyze_stream(stream: IO[bytes]) -> Analysis:
    """Analyse the document read from ``stream`` (seekable, at its start): read twice at most
    (digest, then a streaming scan). The caller opened it, so it decides what may be opened (the
    gateway opens only regular files, never through a symbolic link).

    Raises:
        OSError: the stream cannot be read.
    """
    sha256, size, head = _digest_stream(stream)
    if size == 0:
        return Analysis(Format.UNKNOWN, 0, sha256, problem=Problem.EMPTY, message="empty file")
    stream.seek(0)
    if head.startswith(_PDF_MAGIC):
        try:
            name, xml = facturx.embedded_xml(stream)
        except facturx.FacturXError as exc:
            return Analysis(
                Format.UNKNOWN,
                size,
                sha256,
                problem=Problem.UNKNOWN_FORMAT,
                message=str(exc),
            )
        found = _analyze_xml(io.BytesIO(xml), size, sha256, container=Format.FACTURX)
        return _with_embedded(found, name)
    if not _looks_like_xml(head):
        return Analysis(
            Format.UNKNOWN,
            size,
            sha256,
            problem=Problem.UNKNOWN_FORMAT,
            message="neither XML nor PDF (a UBL, CII or Factur-X invoice was expected)",
        )
    return _analyze_xml(stream, size, sha256)


_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _looks_like_xml(head: bytes) -> bool:
    """Whether the first bytes could start an XML document (any BOM, UTF-16, leading space)."""
    if head.startswith(_BOMS) or b"\x00" in head[:4]:
        return True  # a BOM or UTF-16/32 without one: let the parser decide
    return head.lstrip(b" \t\r\n").startswith(b"<")


def _with_embedded(found: Analysis, name: str) -> Analysis:
    data = {**found.__dict__, "embedded_file": name}
    return Analysis(**data)


def digest(path: Path) -> tuple[str, int, bytes]:
    """(sha256 hex, size, first 64 bytes) of a file, read once in 1 MiB chunks."""
    with path.open("rb") as stream:
        return _digest_stream(stream)


def _digest_stream(stream: IO[bytes]) -> tuple[str, int, bytes]:
    sha = hashlib.sha256()
    size = 0
    head = b""
    while chunk := stream.read(1 << 20):
        if not head:
            head = chunk[:64]
        sha.update(chunk)
        size += len(chunk)
    return sha.hexdigest(), size, head
