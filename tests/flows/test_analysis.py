"""flows.analysis: recognising documents and extracting invoice facts."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest

from flows.analysis import Problem, analyze
from flows.codes import Format
from gateway.sandbox.demo import facturx_pdf
from tests.conftest import Write, sample
from tests.invoices import pdf_attaching


def test_ubl_invoice_facts_are_extracted(write: Write) -> None:
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


def test_ubl_credit_note_with_prefixed_root_and_leading_comment(write: Write) -> None:
    result = analyze(write("c.xml", sample("ubl-creditnote.xml")))
    assert result.format is Format.UBL_CREDIT_NOTE
    assert result.interface_code == "FSO1100A"
    assert result.invoice_number == "DEMO-AV-0001"
    assert result.type_code == "381"
    # No PartyIdentification: the legal entity's CompanyID stands in.
    assert result.supplier_id == "123456782"


def test_cii_d16b_facts_and_date_normalised(write: Write) -> None:
    result = analyze(write("i.xml", sample("cii-invoice.xml")))
    assert result.format is Format.CII_D16B
    assert result.interface_code == "FSO1106A"
    assert result.invoice_number == "DEMO-CII-0001"
    assert result.issue_date == "2026-11-20"
    assert result.supplier_id == "987654321"
    assert result.supplier_name == "Services Martin SARL"
    assert result.buyer_id == "11000201100044"


def test_cii_credit_note_keeps_its_type_code(write: Write) -> None:
    data = sample("cii-invoice.xml").replace(b"<ram:TypeCode>380", b"<ram:TypeCode>381")
    assert analyze(write("a.xml", data)).type_code == "381"


def test_facturx_is_recognised_by_its_embedded_cii(write: Write) -> None:
    result = analyze(write("fx.pdf", facturx_pdf(sample("cii-invoice.xml"))))
    assert result.format is Format.FACTURX
    assert result.interface_code == "FSO1117A"
    assert result.embedded_file == "factur-x.xml"
    assert result.invoice_number == "DEMO-CII-0001"


def test_pdf_without_xml_attachment_is_unknown_format(write: Write) -> None:
    from pypdf import PdfWriter

    buffer = io.BytesIO()
    writer = PdfWriter()
    writer.add_blank_page(width=100, height=100)
    writer.write(buffer)
    result = analyze(write("plain.pdf", buffer.getvalue()))
    assert result.problem is Problem.UNKNOWN_FORMAT
    assert "factur-x.xml" in (result.message or "")


def test_pdf_embedding_ubl_is_not_facturx(write: Write) -> None:
    result = analyze(write("x.pdf", pdf_attaching(sample("ubl-invoice.xml"))))
    assert result.problem is Problem.UNKNOWN_FORMAT
    assert "not a CII" in (result.message or "")


def test_truncated_pdf_is_a_clear_error(write: Write) -> None:
    result = analyze(write("t.pdf", b"%PDF-1.7\n1 0 obj\n<<"))
    assert result.problem is Problem.UNKNOWN_FORMAT
    assert result.message


def test_utf8_bom_is_accepted(write: Write) -> None:
    result = analyze(write("b.xml", b"\xef\xbb\xbf" + sample("ubl-invoice.xml")))
    assert result.ok and result.invoice_number == "DEMO-UBL-0001"


def test_utf16_document_is_decoded(write: Write) -> None:
    text = sample("cii-invoice.xml").decode().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    result = analyze(write("u16.xml", text.encode("utf-16")))
    assert result.ok and result.invoice_number == "DEMO-CII-0001"
    assert result.buyer_name == "Ministère de l'Exemple"


def test_latin1_declared_document_is_decoded(write: Write) -> None:
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
def test_other_chorus_formats_are_named(write: Write, root: str, fmt: Format) -> None:
    assert analyze(write("d.xml", root.encode())).format is fmt


def test_return_flow_has_no_outbound_interface_code(write: Write) -> None:
    result = analyze(write("s.xml", b"<CPPStatut/>"))
    assert result.problem is Problem.NO_INTERFACE_CODE
    assert result.interface_code is None


def test_unknown_root_is_unknown_format_naming_the_root(write: Write) -> None:
    result = analyze(write("o.xml", b"<Order xmlns='urn:example'/>"))
    assert result.problem is Problem.UNKNOWN_FORMAT
    assert "{urn:example}Order" in (result.message or "")


def test_invoice_local_name_in_wrong_namespace_is_not_ubl(write: Write) -> None:
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
def test_bad_inputs_get_a_reason(write: Write, data: bytes, problem: Problem) -> None:
    result = analyze(write("bad.xml", data))
    assert result.problem is problem
    assert result.message


def test_truncated_invoice_is_malformed_with_line_number(write: Write) -> None:
    data = sample("ubl-invoice.xml")[:1500]
    result = analyze(write("cut.xml", data))
    assert result.problem is Problem.MALFORMED_XML
    assert "line" in (result.message or "")


def test_external_entity_is_refused_and_not_read(write: Write, tmp_path: Path) -> None:
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


def test_billion_laughs_is_refused_without_expanding(write: Write) -> None:
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    data = (f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY l0 "lol">{entities}]><r>&l9;</r>').encode()
    tracemalloc.start()
    result = analyze(write("bomb.xml", data))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.problem is Problem.MALFORMED_XML
    assert peak < 20_000_000


def test_large_invoice_is_scanned_in_bounded_memory(write: Write) -> None:
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


def test_to_dict_is_stable_and_json_ready(write: Write) -> None:
    import json

    data = analyze(write("f.xml", sample("ubl-invoice.xml"))).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["format"] == "ubl-invoice"
    assert data["format_label"] == "UBL 2.1 Invoice"
    assert {"sha256", "size", "problem", "message", "supplier_id", "buyer_id"} <= set(data)


# -- what each outcome says, and the fall-back places a party's identity is read from ----------

UBL_NS = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
CAC = "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
CII_NS = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"


def put(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_ubl_parties_fall_back_to_legal_entity_and_party_name(tmp_path: Path) -> None:
    def party(role: str, company: str, name: str) -> str:
        return (
            f"<cac:{role}><cac:Party><cac:PartyName><cbc:Name>{name}</cbc:Name></cac:PartyName>"
            f"<cac:PartyLegalEntity><cbc:CompanyID>{company}</cbc:CompanyID>"
            f"</cac:PartyLegalEntity></cac:Party></cac:{role}>"
        )

    document = (
        f'<Invoice xmlns="{UBL_NS}" xmlns:cac="{CAC}" xmlns:cbc="{CBC}"><cbc:ID>F-1</cbc:ID>'
        + party("AccountingSupplierParty", "S-LEGAL", "Supplier Ltd")
        + party("AccountingCustomerParty", "B-LEGAL", "Buyer Org")
        + "</Invoice>"
    )
    found = analyze(put(tmp_path, "u.xml", document.encode()))
    assert (found.supplier_id, found.supplier_name) == ("S-LEGAL", "Supplier Ltd")
    assert (found.buyer_id, found.buyer_name) == ("B-LEGAL", "Buyer Org")
    assert found.root == f"{{{UBL_NS}}}Invoice"


@pytest.mark.parametrize("where", ["GlobalID", "ID"])
def test_cii_parties_fall_back_to_global_id_then_id(tmp_path: Path, where: str) -> None:
    agreement = "".join(
        f"<ram:{role}><ram:{where}>{who}</ram:{where}></ram:{role}>"
        for role, who in (("SellerTradeParty", "S-1"), ("BuyerTradeParty", "B-1"))
    )
    document = (
        f'<rsm:CrossIndustryInvoice xmlns:rsm="{CII_NS}" xmlns:ram="urn:ram">'
        "<rsm:ExchangedDocument><ram:ID>F-1</ram:ID></rsm:ExchangedDocument>"
        "<rsm:SupplyChainTradeTransaction><ram:ApplicableHeaderTradeAgreement>"
        f"{agreement}</ram:ApplicableHeaderTradeAgreement></rsm:SupplyChainTradeTransaction>"
        "</rsm:CrossIndustryInvoice>"
    )
    found = analyze(put(tmp_path, "c.xml", document.encode()))
    assert (found.supplier_id, found.buyer_id) == ("S-1", "B-1")


def test_each_refusal_keeps_size_and_digest_and_says_what_it_found(tmp_path: Path) -> None:
    empty = analyze(put(tmp_path, "e.xml", b""))
    assert (empty.format, empty.size, empty.problem, empty.message) == (
        Format.UNKNOWN,
        0,
        Problem.EMPTY,
        "empty file",
    )
    assert empty.sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    text = analyze(put(tmp_path, "t.txt", b"hello"))
    assert (text.format, text.size, text.message) == (
        Format.UNKNOWN,
        5,
        "neither XML nor PDF (a UBL, CII or Factur-X invoice was expected)",
    )
    assert len(text.sha256) == 64
    other = analyze(put(tmp_path, "o.xml", b"  \n<other/>"))
    assert (other.format, other.size, other.root, other.message) == (
        Format.UNKNOWN,
        11,
        "other",
        "unrecognised root element other",
    )
    statut = analyze(put(tmp_path, "s.xml", b"<CPPStatut/>"))
    assert (statut.format, statut.problem, statut.root, statut.size) == (
        Format.CPP_STATUT,
        Problem.NO_INTERFACE_CODE,
        "CPPStatut",
        12,
    )
    assert statut.message == "CPPStatut documents have no outbound interface code"
    assert len(statut.sha256) == 64
    broken = analyze(put(tmp_path, "b.pdf", pdf_attaching(b"<rsm:CrossIndustryInvoice")))
    assert broken.format is Format.FACTURX and broken.problem is Problem.MALFORMED_XML
    assert (broken.message or "").startswith("embedded XML: ")
    assert broken.size == (tmp_path / "b.pdf").stat().st_size and len(broken.sha256) == 64
    plain = analyze(put(tmp_path, "p.xml", b"<a>"))
    assert plain.problem is Problem.MALFORMED_XML and not (plain.message or "").startswith("emb")
    assert plain.size == 3 and len(plain.sha256) == 64
    ubl_in_pdf = analyze(put(tmp_path, "u.pdf", pdf_attaching(sample("ubl-invoice.xml"))))
    assert ubl_in_pdf.size > 0 and len(ubl_in_pdf.sha256) == 64


def test_utf16_and_bom_documents_are_given_to_the_parser(tmp_path: Path) -> None:
    ubl = sample("ubl-invoice.xml")
    utf16 = ubl.decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16-le")
    assert analyze(put(tmp_path, "16.xml", utf16)).format is Format.UBL_INVOICE
    undeclared = ubl.split(b"?>", 1)[1].lstrip()
    assert analyze(put(tmp_path, "tab.xml", b"\t\r\n " + undeclared)).format is Format.UBL_INVOICE
    assert analyze(put(tmp_path, "x.xml", b"X<a/>")).problem is Problem.UNKNOWN_FORMAT


def test_the_analysis_as_json_names_format_and_problem_by_value(tmp_path: Path) -> None:
    found = analyze(put(tmp_path, "e.xml", b""))
    data = found.to_dict()
    assert (data["format"], data["problem"]) == ("unknown", "empty")
    ok = analyze(put(tmp_path, "u.xml", sample("ubl-invoice.xml"))).to_dict()
    assert (ok["format"], ok["problem"]) == ("ubl-invoice", None)
