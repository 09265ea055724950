"""flows.analysis: recognising documents and extracting invoice facts."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest

from flows.analysis import Problem, analyze
from flows.codes import Format
from gateway.sandbox.demo import facturx_pdf
from tests.conftest import sample
from tests.invoices import pdf_attaching


def test_ubl_invoice_facts_are_extracted(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("f.xml", sample("ubl-invoice.xml")))
    assert result.ok
    assert result.format is Format.UBL_INVOICE
    assert result.interface_code == "FSO1100A"
    assert result.invoice_number == "DEMO-UBL-0001"
    assert result.issue_date == "2026-11-20"
    assert result.type_code == "380"
    assert result.supplier_id == "12345678200010"
    assert result.supplier_name == "Fournitures Dupont SAS"
    assert result.buyer_id == "11000201100044"
    assert result.currency == "EUR"


def test_ubl_credit_note_with_prefixed_root_and_leading_comment(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("c.xml", sample("ubl-creditnote.xml")))
    assert result.format is Format.UBL_CREDIT_NOTE
    assert result.interface_code == "FSO1100A"
    assert result.invoice_number == "DEMO-AV-0001"
    assert result.type_code == "381"
    # No PartyIdentification: the legal entity's CompanyID stands in.
    assert result.supplier_id == "123456782"


def test_cii_d16b_facts_and_date_normalised(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("i.xml", sample("cii-invoice.xml")))
    assert result.format is Format.CII_D16B
    assert result.interface_code == "FSO1106A"
    assert result.invoice_number == "DEMO-CII-0001"
    assert result.issue_date == "2026-11-20"
    assert result.supplier_id == "987654321"
    assert result.supplier_name == "Services Martin SARL"
    assert result.buyer_id == "11000201100044"


def test_cii_credit_note_keeps_its_type_code(write) -> None:  # type: ignore[no-untyped-def]
    data = sample("cii-invoice.xml").replace(b"<ram:TypeCode>380", b"<ram:TypeCode>381")
    assert analyze(write("a.xml", data)).type_code == "381"


def test_facturx_is_recognised_by_its_embedded_cii(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("fx.pdf", facturx_pdf(sample("cii-invoice.xml"))))
    assert result.format is Format.FACTURX
    assert result.interface_code == "FSO1117A"
    assert result.embedded_file == "factur-x.xml"
    assert result.invoice_number == "DEMO-CII-0001"


def test_pdf_without_xml_attachment_is_unknown_format(write) -> None:  # type: ignore[no-untyped-def]
    from pypdf import PdfWriter

    buffer = io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(width=100, height=100)
    writer.write(buffer)
    result = analyze(write("plain.pdf", buffer.getvalue()))
    assert result.problem is Problem.UNKNOWN_FORMAT
    assert "factur-x.xml" in (result.message or "")


def test_pdf_embedding_ubl_is_not_facturx(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("x.pdf", pdf_attaching(sample("ubl-invoice.xml"))))
    assert result.problem is Problem.UNKNOWN_FORMAT
    assert "not a CII" in (result.message or "")


def test_truncated_pdf_is_a_clear_error(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("t.pdf", b"%PDF-1.7\n1 0 obj\n<<"))
    assert result.problem is Problem.UNKNOWN_FORMAT
    assert result.message


def test_utf8_bom_is_accepted(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("b.xml", b"\xef\xbb\xbf" + sample("ubl-invoice.xml")))
    assert result.ok and result.invoice_number == "DEMO-UBL-0001"


def test_utf16_document_is_decoded(write) -> None:  # type: ignore[no-untyped-def]
    text = sample("cii-invoice.xml").decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    result = analyze(write("u16.xml", text.encode("utf-16")))
    assert result.ok and result.invoice_number == "DEMO-CII-0001"
    assert result.buyer_name == "Ministère de l'Exemple"


def test_latin1_declared_document_is_decoded(write) -> None:  # type: ignore[no-untyped-def]
    text = sample("ubl-invoice.xml").decode().replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')
    result = analyze(write("l1.xml", text.encode("latin-1")))
    assert result.ok and result.buyer_name == "Ministère de l'Exemple"


@pytest.mark.parametrize(
    ("root", "fmt"),
    [
        ("<CPPStatut Version='1'/>", Format.CPP_STATUT),
        ("<CPPFacturePivot/>", Format.CPP_FACTURE_PIVOT),
        ("<PES_Aller/>", Format.PES),
        (
            "<x:Order xmlns:x='rrn:org.xcbl:schemas/xcbl/v4_0/financial/v1_0/financial.xsd'/>",
            Format.XCBL,
        ),
    ],
)
def test_other_chorus_formats_are_named(write, root: str, fmt: Format) -> None:  # type: ignore[no-untyped-def]
    assert analyze(write("d.xml", root.encode())).format is fmt


def test_return_flow_has_no_outbound_interface_code(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("s.xml", b"<CPPStatut/>"))
    assert result.problem is Problem.NO_INTERFACE_CODE
    assert result.interface_code is None


def test_unknown_root_is_unknown_format_naming_the_root(write) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("o.xml", b"<Order xmlns='urn:example'/>"))
    assert result.problem is Problem.UNKNOWN_FORMAT
    assert "{urn:example}Order" in (result.message or "")


def test_invoice_local_name_in_wrong_namespace_is_not_ubl(write) -> None:  # type: ignore[no-untyped-def]
    assert analyze(write("w.xml", b"<Invoice xmlns='urn:other'/>")).format is Format.UNKNOWN


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", Problem.EMPTY),
        (b"   \n", Problem.UNKNOWN_FORMAT),
        (b"PK\x03\x04zipfile", Problem.UNKNOWN_FORMAT),
        (
            b"<Invoice xmlns='urn:oasis:names:specification:ubl:schema:xsd:Invoice-2'>"
            b"<unclosed></Invoice>",
            Problem.MALFORMED_XML,
        ),
        (b"<?xml version='1.0'?>", Problem.MALFORMED_XML),
    ],
)
def test_bad_inputs_get_a_reason(write, data: bytes, problem: Problem) -> None:  # type: ignore[no-untyped-def]
    result = analyze(write("bad.xml", data))
    assert result.problem is problem
    assert result.message


def test_truncated_invoice_is_malformed_with_line_number(write) -> None:  # type: ignore[no-untyped-def]
    data = sample("ubl-invoice.xml")[:1500]
    result = analyze(write("cut.xml", data))
    assert result.problem is Problem.MALFORMED_XML
    assert "line" in (result.message or "")


def test_external_entity_is_refused_and_not_read(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    data = (
        f'<?xml version="1.0"?><!DOCTYPE Invoice [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">'
        '<ID xmlns="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">&x;</ID>'
        "</Invoice>"
    ).encode()
    result = analyze(write("xxe.xml", data))
    assert result.problem is Problem.MALFORMED_XML
    assert "DTD" in (result.message or "")
    assert "TOP-SECRET" not in str(result.to_dict())


def test_billion_laughs_is_refused_without_expanding(write) -> None:  # type: ignore[no-untyped-def]
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    data = (f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY l0 "lol">{entities}]><r>&l9;</r>').encode()
    tracemalloc.start()
    result = analyze(write("bomb.xml", data))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.problem is Problem.MALFORMED_XML
    assert peak < 20_000_000


def test_large_invoice_is_scanned_in_bounded_memory(write) -> None:  # type: ignore[no-untyped-def]
    line = (
        b"<cac:InvoiceLine><cbc:ID>1</cbc:ID><cbc:Note>" + b"x" * 900 + b"</cbc:Note>"
        b"</cac:InvoiceLine>\n"
    )
    head, _, tail = sample("ubl-invoice.xml").partition(b"<cac:InvoiceLine>")
    body = head + line * 30_000 + b"<cac:InvoiceLine>" + tail  # about 29 MB
    path = write("big.xml", body)
    tracemalloc.start()
    result = analyze(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.ok and result.invoice_number == "DEMO-UBL-0001"
    assert result.size == len(body)
    assert peak < 10_000_000, f"peak traced memory {peak} for a {len(body)}-byte file"


def test_to_dict_is_stable_and_json_ready(write) -> None:  # type: ignore[no-untyped-def]
    import json

    data = analyze(write("f.xml", sample("ubl-invoice.xml"))).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["format"] == "ubl-invoice"
    assert data["format_label"] == "UBL 2.1 Invoice"
    assert {"sha256", "size", "problem", "message", "supplier_id", "buyer_id"} <= set(data)
