"""Writing CPP Statut (FEN1200A) documents, as the partner simulator answers deposits.

The shape is the one :mod:`flows.returns` reads (docs/returns.md, "The CPP Statut document"):
an envelope with parameters (``DtPrd``, ``IdFlx``), then flow-level statuses (90–96, with
error details) and invoice-level statuses (01–41, with supplier, invoice number, time and
comment).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree


@dataclass(frozen=True)
class FlowLine:
    """A flow-level status, e.g. ``93`` with the errors that made the flow fail."""

    code: str
    at: str
    errors: Sequence[tuple[str, str]] = ()  # (error code, label)


@dataclass(frozen=True)
class InvoiceLine:
    """An invoice-level status, e.g. ``05`` (rejected) with its reason as the comment."""

    invoice_number: str
    code: str
    supplier_id: str | None = None
    at: str | None = None
    comment: str | None = None


@dataclass(frozen=True)
class Statut:
    flow_ref: str  # IdFlx: the name of the flow the statuses are about
    produced_at: str  # DtPrd
    flow: Sequence[FlowLine] = ()
    invoices: Sequence[InvoiceLine] = field(default_factory=tuple)
    version: str = "1.19"


def _text(parent: etree._Element, tag: str, value: str | None) -> None:
    if value is not None:
        etree.SubElement(parent, tag).text = value


def build(statut: Statut) -> bytes:
    """The CPP Statut document for ``statut``, UTF-8 with an XML declaration."""
    root = etree.Element("CPPStatut", Version=statut.version)
    parameters = etree.SubElement(
        etree.SubElement(etree.SubElement(root, "Enveloppe"), "EnveloppeUnitaire"), "Parametres"
    )
    for code, value in (("DtPrd", statut.produced_at), ("IdFlx", statut.flow_ref)):
        parameter = etree.SubElement(parameters, "ParametreIndiv")
        _text(parameter, "Code", code)
        _text(parameter, "Valeurparametre", value)
    if statut.flow:
        flows = etree.SubElement(root, "CPPFluxStatuts")
        for line in statut.flow:
            unit = etree.SubElement(flows, "CPPFluxStatutUnitaire")
            data = etree.SubElement(unit, "DonneesStatut")
            _text(data, "IdStatut", line.code)
            _text(data, "Horodatage", line.at)
            if line.errors:
                details = etree.SubElement(data, "Details")
                for code, label in line.errors:
                    detail = etree.SubElement(details, "LigneErreurDetail")
                    _text(detail, "CodeErreur", code)
                    _text(detail, "LibelleErreur", label)
    if statut.invoices:
        invoices = etree.SubElement(root, "CPPFactureStatuts")
        for item in statut.invoices:
            unit = etree.SubElement(invoices, "CPPFactureStatutUnitaire")
            if item.supplier_id is not None:
                supplier = etree.SubElement(unit, "Fournisseur")
                _text(supplier, "TypeIdentifiant", "1")
                _text(supplier, "Identifiant", item.supplier_id)
            data = etree.SubElement(unit, "DonneesStatut")
            _text(data, "IdStatut", item.code)
            _text(data, "IdFacture", item.invoice_number)
            _text(data, "Horodatage", item.at)
            _text(data, "Commentaire", item.comment)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
