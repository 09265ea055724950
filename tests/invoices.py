"""Invoices with known validation outcomes, built from raccord's samples (which pass EN 16931):
each broken variant breaks one named rule."""

from __future__ import annotations

import io

from tests.conftest import sample

BUYER_ADDRESS = b"""      <cac:PostalAddress>
        <cbc:StreetName>1 place de la R\xc3\xa9publique</cbc:StreetName>
        <cbc:CityName>Paris</cbc:CityName>
        <cbc:PostalZone>75001</cbc:PostalZone>
        <cac:Country><cbc:IdentificationCode>FR</cbc:IdentificationCode></cac:Country>
      </cac:PostalAddress>
"""


def ubl(number: str = "DEMO-UBL-0001") -> bytes:
    """A UBL invoice that passes EN 16931."""
    return sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())


def ubl_without_buyer_address(number: str = "BAD-UBL-0001") -> bytes:
    """Breaks BR-10 (the buyer's postal address, BG-8, is missing)."""
    data = ubl(number)
    assert BUYER_ADDRESS in data
    return data.replace(BUYER_ADDRESS, b"")


def ubl_wrong_total(number: str = "BAD-UBL-0002") -> bytes:
    """Breaks BR-CO-15 (total with VAT is not total without VAT + VAT)."""
    data = ubl(number)
    wrong = b'<cbc:TaxInclusiveAmount currencyID="EUR">1300.00</cbc:TaxInclusiveAmount>'
    return data.replace(
        b'<cbc:TaxInclusiveAmount currencyID="EUR">1200.00</cbc:TaxInclusiveAmount>', wrong
    )


def ubl_schema_error(number: str = "BAD-UBL-0003") -> bytes:
    """Not valid against the UBL 2.1 XML Schema (an element UBL does not have)."""
    return ubl(number).replace(b"<cbc:DueDate>", b"<cbc:Unheard>x</cbc:Unheard><cbc:DueDate>")


def cii() -> bytes:
    return sample("cii-invoice.xml")


def cii_wrong_line_total() -> bytes:
    """Breaks BR-CO-10 (the sum of line net amounts is not the lines' sum)."""
    return cii().replace(
        b"<ram:LineTotalAmount>500.00</ram:LineTotalAmount>\n        <ram:TaxBasis",
        b"<ram:LineTotalAmount>400.00</ram:LineTotalAmount>\n        <ram:TaxBasis",
    )


def large_ubl(lines: int) -> bytes:
    """A valid-shaped UBL invoice with many lines (slow to validate)."""
    data = ubl("BIG-0001")
    start = data.index(b"<cac:InvoiceLine>")
    end = data.index(b"</cac:InvoiceLine>") + len(b"</cac:InvoiceLine>")
    line = data[start:end]
    return data[:start] + b"\n".join(line for _ in range(lines)) + data[end:]


def facturx_pdf(xml: bytes | None = None, level: str = "autodetect") -> bytes:
    """A Factur-X PDF made by the factur-x package's own generator (``level``: the profile its
    XMP declares; autodetect: the XML's own)."""
    from facturx import generate_from_binary
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    blank = io.BytesIO()
    writer.write(blank)
    pdf: bytes = generate_from_binary(blank.getvalue(), xml or cii(), level=level, check_xsd=False)
    return pdf


def pdf_attaching(xml: bytes, name: str = "factur-x.xml") -> bytes:
    """A one-page PDF with ``xml`` attached and nothing else (no XMP: not a real Factur-X)."""
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(595, 842)
    writer.add_attachment(name, xml)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()
