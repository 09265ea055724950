"""flows.facturx: which attachment of a PDF is the invoice, and what is said when none is."""

from __future__ import annotations

import io

import pytest
from pypdf import PdfWriter

from flows import facturx


def pdf(*attachments: tuple[str, bytes]) -> io.BytesIO:
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    for name, data in attachments:
        writer.add_attachment(name, data)
    buffer = io.BytesIO()
    writer.write(buffer)
    buffer.seek(0)
    return buffer


def test_a_known_name_wins_over_any_other_xml() -> None:
    found = facturx.embedded_xml(pdf(("notes.xml", b"<n/>"), ("zugferd-invoice.xml", b"<z/>")))
    assert found == ("zugferd-invoice.xml", b"<z/>")


def test_without_a_known_name_the_first_xml_attachment_is_taken_whatever_its_case() -> None:
    found = facturx.embedded_xml(pdf(("readme.txt", b"t"), ("Rechnung.XML", b"<r/>")))
    assert found == ("Rechnung.XML", b"<r/>")


def test_no_xml_attachment_says_what_was_found_and_what_is_expected() -> None:
    with pytest.raises(facturx.FacturXError) as caught:
        facturx.embedded_xml(pdf(("a.txt", b"a"), ("b.png", b"b")))
    assert str(caught.value) == (
        "PDF without an embedded invoice XML (attachments: a.txt, b.png); "
        "a Factur-X PDF embeds factur-x.xml"
    )
    with pytest.raises(facturx.FacturXError) as caught:
        facturx.embedded_xml(pdf())
    assert "(attachments: none)" in str(caught.value)


def test_an_unreadable_pdf_says_so() -> None:
    with pytest.raises(facturx.FacturXError, match=r"^unreadable PDF: "):
        facturx.embedded_xml(io.BytesIO(b"%PDF-1.7 garbage"))
