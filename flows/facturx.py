"""Factur-X: find the CII XML embedded in a PDF/A-3.

Factur-X (and its German twin ZUGFeRD) attach the invoice XML to the PDF as an embedded file,
usually named ``factur-x.xml``. The PDF is only read here; raccord deposits it unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import IO

from pypdf import PdfReader
from pypdf.errors import PdfReadError

#: Attachment names the Factur-X / ZUGFeRD / XRechnung specifications use, in order of preference.
KNOWN_NAMES = ("factur-x.xml", "zugferd-invoice.xml", "ZUGFeRD-invoice.xml", "xrechnung.xml")

# pypdf reports recoverable oddities of real-world PDFs through logging; they are not ours to show.
logging.getLogger("pypdf").setLevel(logging.ERROR)


class FacturXError(ValueError):
    """The PDF cannot be read or carries no invoice XML."""


@dataclass(frozen=True)
class Document:
    """What a Factur-X PDF carries for validation: its invoice XML and its XMP metadata."""

    name: str  # the attachment's name
    xml: bytes
    xmp: bytes | None  # the document's XMP packet (declares the profile), None if absent


def read(pdf: IO[bytes]) -> Document:
    """The invoice XML and the XMP metadata of ``pdf``.

    Raises:
        FacturXError: unreadable PDF, or no XML attachment.
    """
    try:
        reader = PdfReader(pdf)
        name, xml = _embedded(reader)
        xmp: bytes | None = None
        metadata = reader.root_object.get("/Metadata")
        if metadata is not None:
            xmp = metadata.get_object().get_data()
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FacturXError(f"unreadable PDF: {exc}") from None
    return Document(name, xml, xmp)


def embedded_xml(pdf: IO[bytes]) -> tuple[str, bytes]:
    """Return (attachment name, bytes) of the invoice XML embedded in ``pdf``.

    Raises:
        FacturXError: unreadable PDF, or no XML attachment.
    """
    try:
        reader = PdfReader(pdf)
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise FacturXError(f"unreadable PDF: {exc}") from None
    return _embedded(reader)


def _embedded(reader: PdfReader) -> tuple[str, bytes]:
    try:
        attachments = reader.attachments
        names = list(attachments.keys())
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise FacturXError(f"unreadable PDF: {exc}") from None
    chosen = next((name for name in KNOWN_NAMES if name in attachments), None)
    if chosen is None:
        chosen = next((name for name in names if name.lower().endswith(".xml")), None)
    if chosen is None:
        listed = ", ".join(names) if names else "none"
        raise FacturXError(
            f"PDF without an embedded invoice XML (attachments: {listed}); "
            "a Factur-X PDF embeds factur-x.xml"
        )
    return chosen, attachments[chosen][0]
