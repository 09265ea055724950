"""Reading the rule sets' reports: every broken rule reaches the operator with its id, its text
and where it is; warnings never make an invoice invalid; a Factur-X PDF whose XMP and XML name
different profiles is caught; nothing in an untrusted report or XMP makes the reader crash."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows import validation as v
from flows.codes import Format

SVRL_REPORT = b"""<?xml version="1.0"?>
<svrl:schematron-output xmlns:svrl="http://purl.oclc.org/dsdl/svrl">
  <svrl:fired-rule context="/ubl:Invoice"/>
  <svrl:failed-assert test="exists(x)" id="BR-10" flag="fatal"
      location="/*:Invoice[namespace-uri()='urn:oasis:names:specification:ubl:schema:xsd:Invoice-2'][1]/*:AccountingCustomerParty[namespace-uri()='urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2'][1]">
    <svrl:text>[BR-10]-An Invoice shall contain the Buyer postal address (BG-8).</svrl:text>
  </svrl:failed-assert>
  <svrl:failed-assert test="false" id="PEPPOL-EN16931-R008" flag="warning" location="/x">
    <svrl:text>
      [PEPPOL-EN16931-R008]-Document MUST not contain empty elements.</svrl:text>
  </svrl:failed-assert>
  <svrl:failed-assert test="(ram:X)" id="BR-CO-10" location="/y">
    <svrl:text>[BR-CO-10]-Sum of Invoice line net amount (BT-106) = ...</svrl:text>
  </svrl:failed-assert>
  <svrl:successful-report test="x" location="/z">
    <svrl:text>[FX-1]-Must not be there.</svrl:text>
  </svrl:successful-report>
</svrl:schematron-output>
"""


def test_each_failed_assert_is_a_finding_with_rule_message_and_readable_location() -> None:
    errors, warnings = v.read_svrl(SVRL_REPORT)
    assert [e.rule for e in errors] == ["BR-10", "BR-CO-10", "FX-1"]
    assert errors[0].message == "An Invoice shall contain the Buyer postal address (BG-8)."
    assert errors[0].location == "/Invoice/cac:AccountingCustomerParty"
    assert [w.rule for w in warnings] == ["PEPPOL-EN16931-R008"]
    assert warnings[0].message == "Document MUST not contain empty elements."


def test_an_assert_without_flag_is_an_error_not_silently_a_warning() -> None:
    """The Factur-X rule sets flag none of their asserts: each is a rejection."""
    errors, _ = v.read_svrl(SVRL_REPORT)
    assert "BR-CO-10" in {e.rule for e in errors}


def test_warnings_alone_leave_an_invoice_valid() -> None:
    only_warning = v.outcome(["EN16931"], [], [v.Finding("R008", "empty", "/x")])
    assert only_warning.status is v.Status.VALID
    assert v.outcome(["EN16931"], [v.Finding("BR-10", "m")], []).invalid


def test_the_json_object_has_the_contract_names_and_round_trips() -> None:
    checked = v.outcome(["XSD", "EN16931"], [v.Finding("BR-10", "missing", "/Invoice")], [])
    data = checked.to_dict()
    assert data == {
        "status": "invalid",
        "rules": ["XSD", "EN16931"],
        "errors": [{"rule": "BR-10", "message": "missing", "location": "/Invoice"}],
        "warnings": [],
    }
    assert v.Validation.from_dict(data) == checked
    unchecked = v.not_checked("unreadable PDF")
    assert set(unchecked.to_dict()) == {"status", "rules", "errors", "warnings"}
    assert v.Validation.from_dict(unchecked.to_dict(with_note=True)) == unchecked


def test_the_error_sentence_names_the_first_broken_rule() -> None:
    broken = [v.Finding("BR-10", "Buyer postal address missing."), v.Finding("BR-8", "")]
    checked = v.outcome(["EN16931"], broken, [])
    sentence = checked.sentence()
    assert sentence.startswith("the invoice breaks rule BR-10: Buyer postal address missing (")
    assert "1 more rule" in sentence and "drop it again" in sentence


@pytest.mark.parametrize(
    ("urn", "profile"),
    [
        ("urn:cen.eu:en16931:2017", v.Profile.EN16931),
        ("urn:factur-x.eu:1p0:minimum", v.Profile.MINIMUM),
        ("urn:factur-x.eu:1p0:basicwl", v.Profile.BASIC_WL),
        ("urn:cen.eu:en16931:2017#compliant#urn:factur-x.eu:1p0:basic", v.Profile.BASIC),
        ("urn:cen.eu:en16931:2017#conformant#urn:factur-x.eu:1p0:extended", v.Profile.EXTENDED),
        ("urn:something:else", None),
        (None, None),
    ],
)
def test_the_profile_a_cii_document_declares(urn: str | None, profile: v.Profile | None) -> None:
    assert v.profile_of_guideline(urn) is profile


XMP = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description
 xmlns:fx="urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#">
 <fx:DocumentFileName>factur-x.xml</fx:DocumentFileName>
 <fx:ConformanceLevel>%s</fx:ConformanceLevel></rdf:Description></rdf:RDF></x:xmpmeta>"""


def test_the_xmp_profile_is_read_and_compared_with_the_xml() -> None:
    label = v.profile_of_xmp(XMP % b"BASIC WL")
    assert label == "BASIC WL"
    assert v.profile_mismatch(label, v.Profile.BASIC_WL) is None
    mismatch = v.profile_mismatch("BASIC", v.Profile.EN16931)
    assert mismatch is not None and mismatch.rule == "FX-PROFILE"
    assert "BASIC" in mismatch.message and "EN 16931" in mismatch.message
    missing = v.profile_mismatch(None, v.Profile.EN16931)
    assert missing is not None and missing.rule == "FX-XMP"


def test_attribute_form_xmp_is_read_too() -> None:
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        b'22-rdf-syntax-ns#"><rdf:Description xmlns:fx="urn:factur-x:pdfa:CrossIndustryDocument'
        b':invoice:1p0#" fx:ConformanceLevel="EN 16931"/></rdf:RDF></x:xmpmeta>'
    )
    assert v.profile_of_xmp(xmp) == "EN 16931"


def test_the_plan_uses_the_official_artefacts_for_each_syntax() -> None:
    ubl = v.plan(Format.UBL_INVOICE, None, ["en16931", "br-fr"])
    assert [s.label for s in ubl] == ["XSD", "EN16931", "BR-FR"]
    assert ubl[1].artefact == "ubl-2.1/EN16931-UBL-validation.xslt"
    cii = v.plan(Format.CII_D16B, v.Profile.EN16931, ["en16931"])
    assert [s.artefact for s in cii] == [
        "facturx-en16931/Factur-X_EN16931.xsd",
        "facturx-en16931/FACTUR-X_EN16931.xslt",
    ]
    basic_pdf = v.plan(Format.FACTURX, v.Profile.BASIC, ["br-fr"])
    assert [s.label for s in basic_pdf] == ["XSD", "FACTUR-X BASIC", "BR-FR"]
    assert v.plan(Format.UNKNOWN, None, ["en16931"]) == []


@given(st.binary(max_size=400))
def test_any_bytes_as_a_report_either_read_or_refused_with_valueerror(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        v.read_svrl(data)


_REPORT_ELEMENTS = ("failed-assert", "successful-report", "fired-rule", "active-pattern")


@given(
    st.sampled_from(["svrl:", "s:", ""]),
    st.lists(
        st.tuples(st.sampled_from(_REPORT_ELEMENTS), st.sampled_from(["fatal", "warning", None])),
        max_size=5,
    ),
)
def test_a_report_with_a_finding_is_never_skipped_unread(
    prefix: str, elements: list[tuple[str, str | None]]
) -> None:
    """The worker skips parsing the reports that cannot hold a finding (most invoices pass):
    whatever the namespace prefix, a report with a broken rule is read, and one without none
    is found."""
    declared = f"xmlns:{prefix[:-1]}" if prefix else "xmlns"
    body = "".join(
        f'<{prefix}{name} id="R-{i}" location="/x"{f" flag={flag!r}" if flag else ""}>'
        f"<{prefix}text>rule {i}</{prefix}text></{prefix}{name}>"
        for i, (name, flag) in enumerate(elements)
    )
    report = f'<{prefix}schematron-output {declared}="{v.SVRL}">{body}</{prefix}schematron-output>'
    errors, warnings = v.read_svrl(report)
    findings = [name for name, _ in elements if name in ("failed-assert", "successful-report")]
    assert len(errors) + len(warnings) == len(findings)
    assert v.may_have_findings(report) is bool(findings)


@given(st.binary(max_size=400))
def test_any_bytes_as_xmp_give_a_profile_or_none(data: bytes) -> None:
    assert v.profile_of_xmp(data) is None or isinstance(v.profile_of_xmp(data), str)


@given(st.text(max_size=200))
def test_any_location_is_shortened_without_error(location: str) -> None:
    assert isinstance(v.short_location(location), str)
