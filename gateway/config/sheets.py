"""One ``[[connection]]`` table, the *fiche de raccordement*, read into a :class:`Connection`.

The protocol's own table (``[connection.sftp]``…) is read by the protocol itself
(:mod:`protocols.registry`), so a plugin's keys are validated exactly like the built-ins'.
"""

from __future__ import annotations

import re

from flows import codes, naming
from flows import validation as rulebook
from gateway.config.model import Checking, Connection, Lot, Mode, State
from protocols import registry
from protocols.settings import Section, SettingsError, nearest

_NAME = re.compile(r"^[a-z0-9-]+$")


def connection(section: Section) -> Connection:
    name = section.string("name", required=True)
    if not _NAME.match(name):
        raise SettingsError(
            section.key("name"), f"{name!r} must be lower-case letters, digits and '-' only"
        )
    protocol_name = section.string("protocol", required=True)
    try:
        plugin = registry.get(protocol_name)
    except registry.UnknownProtocol as exc:
        raise SettingsError(section.key("protocol"), str(exc)) from None
    template = section.string("remote_name", "{interface}_{partner_code}_{flow_id}{ext}")
    try:
        naming.check_template(template)
    except naming.TemplateError as exc:
        raise SettingsError(section.key("remote_name"), str(exc)) from None
    valid_from = section.date("valid_from")
    valid_to = section.date("valid_to")
    if valid_to < valid_from:
        raise SettingsError(
            section.key("valid_to"), f"{valid_to} is before valid_from {valid_from}"
        )
    protocol_section = section.table(protocol_name)
    if protocol_section is None:
        raise SettingsError(
            section.key(protocol_name),
            f"protocol {protocol_name} needs a [connection.{protocol_name}] table",
        )
    environment = section.choice("environment", ["qualification", "production"])
    protocol_section.context["environment"] = environment
    connection = Connection(
        name=name,
        environment=environment,
        protocol=protocol_name,
        partner_code=section.string("partner_code", required=True),
        structure=section.string("structure", ""),
        state=State(section.choice("state", [s.value for s in State], "active")),
        valid_from=valid_from,
        valid_to=valid_to,
        return_syntax=section.choice("return_syntax", ["CPPStatut", "AIFEStatut"], "CPPStatut"),
        remote_name=template,
        interfaces=_interfaces(section.table("interfaces")),
        settings=plugin.parse_settings(protocol_section),
        lot=_lot(section.table("lot")),
        resubmit_collateral=section.boolean("resubmit_collateral", False),
        validation=Checking(section.choice("validation", [c.value for c in Checking], "warn")),
        validation_rules=_validation_rules(section),
        return_deadline=section.duration("return_deadline", "3d"),
    )
    # Other protocols' tables would be silently ignored; say so instead.
    section.finish()
    return connection


def _validation_rules(section: Section) -> tuple[str, ...]:
    if section.raw("validation_rules") is None:
        return rulebook.DEFAULT_RULES
    wanted = section.strings("validation_rules")
    for name in wanted:
        if name not in rulebook.RULE_SETS:
            hint = nearest(name, rulebook.RULE_SETS)
            did_you_mean = f"did you mean {hint!r}? " if hint else ""
            raise SettingsError(
                section.key("validation_rules"),
                f"unknown rule set {name!r}; {did_you_mean}known: {', '.join(rulebook.RULE_SETS)}",
            )
    if not wanted:
        raise SettingsError(
            section.key("validation_rules"),
            'name at least one rule set, e.g. ["en16931"] (or set validation = "off")',
        )
    return tuple(dict.fromkeys(wanted))


def _interfaces(section: Section | None) -> dict[str, Mode]:
    if section is None:
        return {}
    result: dict[str, Mode] = {}
    for code in section.keys():  # noqa: SIM118 - a Section is not a dict
        if code not in codes.BY_CODE:
            hint = nearest(code, codes.BY_CODE)
            did_you_mean = f"did you mean {hint!r}? " if hint else ""
            raise SettingsError(
                section.key(code), f"unknown interface code; {did_you_mean}".rstrip()
            )
        result[code] = Mode(section.choice(code, [m.value for m in Mode]))
    section.finish()
    return result


def _lot(section: Section | None) -> Lot:
    if section is None:
        return Lot()
    lot = Lot(
        max_invoices=section.integer("max_invoices", 1, minimum=1, maximum=500),
        max_wait=section.duration("max_wait", "0s"),
        max_bytes=section.size("max_bytes", "30000KB"),
        packaging=section.choice("packaging", ["none", "tar.gz", "zip"], "none"),
    )
    section.finish()
    if lot.max_invoices > 1 and lot.packaging == "none":
        raise SettingsError(
            section.key("packaging"),
            f'lots of up to {lot.max_invoices} invoices need packaging = "tar.gz" or "zip"',
        )
    return lot
