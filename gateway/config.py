"""raccord's configuration: a TOML file (CONTRACT.md) validated into typed, frozen objects.

Every error names the file and the dotted key at fault (``connection[qualif-sftp].sftp.hots``)
and, for a typo, the nearest valid key. Protocol sections are read by the protocol itself
(:mod:`protocols.registry`), so a plugin's keys are validated exactly like the built-ins'.
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from flows import codes, naming
from flows import validation as rulebook
from protocols import registry
from protocols.settings import Secret, Section, SettingsError, nearest

DEFAULT_PATH = Path("/etc/raccord/raccord.toml")
_NAME = re.compile(r"^[a-z0-9-]+$")


class ConfigError(ValueError):
    """The configuration cannot be used; the message is one sentence for the operator."""


class Mode(enum.StrEnum):
    """How Chorus Pro treats an inbound flow with errors (*mode de raccordement*)."""

    COMPLETE = "complete"  # Complète: one bad invoice rejects the whole flow
    PARTIAL = "partial"  # Partielle: only the bad invoices are rejected
    NONE = "none"  # Pas de raccordement


class State(enum.StrEnum):
    """The connection sheet's state; only ``active`` connections carry flows."""

    DRAFT = "draft"
    SENT = "sent"
    ACTIVE = "active"
    DISABLED = "disabled"


class Checking(enum.StrEnum):
    """What a connection does with an invoice that breaks the rules (``validation``)."""

    OFF = "off"  # not validated
    WARN = "warn"  # sent; its receipt carries what would be rejected
    BLOCK = "block"  # not sent: error/ with reason invalid_invoice


@dataclass(frozen=True)
class Lot:
    max_invoices: int = 1
    max_wait: float = 0.0
    max_bytes: int = 30_000_000
    packaging: str = "none"


@dataclass(frozen=True)
class Connection:
    """One *fiche de raccordement*."""

    name: str
    environment: str
    protocol: str
    partner_code: str
    structure: str
    state: State
    valid_from: date
    valid_to: date
    return_syntax: str
    remote_name: str
    interfaces: dict[str, Mode]
    settings: Any  # the protocol's own settings object
    lot: Lot = field(default_factory=Lot)
    resubmit_collateral: bool = False
    # Absent means warn: configurations written before validation existed keep sending.
    validation: Checking = Checking.WARN
    validation_rules: tuple[str, ...] = rulebook.DEFAULT_RULES
    #: Seconds after which a sent flow with no return status raises ``return_overdue`` (0: off).
    return_deadline: float = 3 * 86400.0

    def unusable_reason(self, today: date) -> tuple[str, str] | None:
        """``(reason, message)`` if this connection may not carry flows ``today``."""
        if self.state is not State.ACTIVE:
            return (
                "connection_inactive",
                f"connection {self.name} is {self.state.value}, not active",
            )
        if not self.valid_from <= today <= self.valid_to:
            return (
                "outside_validity",
                f"connection {self.name} is valid from {self.valid_from} to {self.valid_to}; "
                f"today is {today}",
            )
        return None


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 8
    initial: float = 5.0
    maximum: float = 600.0


@dataclass(frozen=True)
class GatewaySettings:
    data_dir: Path
    max_file_size: int = 30_000_000
    metrics: tuple[str, int] | None = None  # host, port of /metrics and /healthz
    rescan_interval: float = 30.0
    settle_time: float = 2.0
    analysis_timeout: float = 20.0  # seconds one file's analysis (or validation) may take
    retry: Retry = field(default_factory=Retry)
    shutdown_grace: float = 20.0
    warn_days: int = 30  # certificates: warn (log, metric, alert) this many days before expiry
    retention: float | None = None  # seconds; flows filed longer ago are purged (None: never)
    retention_files: bool = False  # also delete their files in sent/ and inbox/
    validation_workers: int = 0  # processes running the rule sets; 0: one per two cores


@dataclass(frozen=True)
class As2ReceiverSettings:
    host: str
    port: int
    tls_certificate: Path | None = None
    tls_key: Path | None = None


def _as2_receiver(section: Section | None) -> As2ReceiverSettings | None:
    if section is None:
        return None
    host, port = _address(
        section, "listen", section.string("listen", required=True), "0.0.0.0:4080"
    )
    tls_certificate = section.path("tls_certificate", required=False)
    tls_key = section.path("tls_key", required=False)
    if (tls_certificate is None) != (tls_key is None):
        raise SettingsError(section.key("tls_key"), "give both tls_certificate and tls_key")
    section.finish()
    return As2ReceiverSettings(host, port, tls_certificate, tls_key)


def _address(section: Section, key: str, value: str, example: str) -> tuple[str, int]:
    """A "host:port" value (an IPv6 host in brackets) as (host, port)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError(
            section.key(key), f'expected "host:port" such as "{example}", got {value!r}'
        )
    return host, int(port)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    sender: str  # the From address
    recipients: tuple[str, ...]
    starttls: bool = False
    username: str | None = None
    password: Secret | None = None


@dataclass(frozen=True)
class AlertSettings:
    """``[alerts]``: who is told when something needs a person, and how often at most."""

    webhook_url: str | None = None
    webhook_token: Secret | None = None  # sent as "Authorization: Bearer …"
    smtp: SmtpSettings | None = None
    rate_limit: float = 900.0  # one alert per kind and connection per period; the rest summed
    failing_for: float = 1800.0  # a connection failing this long without a success alerts


def _alerts(section: Section | None) -> AlertSettings | None:
    if section is None:
        return None
    webhook_url = section.url("webhook_url", required=False)
    token = section.secret("webhook_token", required=False)
    smtp = _smtp(section.table("smtp"))
    settings = AlertSettings(
        webhook_url=webhook_url,
        webhook_token=token,
        smtp=smtp,
        rate_limit=section.duration("rate_limit", "15m"),
        failing_for=section.duration("failing_for", "30m"),
    )
    section.finish()
    if webhook_url is None and smtp is None:
        raise SettingsError(
            section.key("webhook_url"),
            "[alerts] needs webhook_url or an [alerts.smtp] table (or remove [alerts])",
        )
    return settings


def _smtp(section: Section | None) -> SmtpSettings | None:
    if section is None:
        return None
    recipients = section.raw("to")
    if isinstance(recipients, str):
        recipients = [recipients]
    if (
        not isinstance(recipients, list)
        or not recipients
        or not all(isinstance(r, str) and "@" in r for r in recipients)
    ):
        raise SettingsError(
            section.key("to"), 'expected e-mail addresses, e.g. to = ["ops@example.com"]'
        )
    smtp = SmtpSettings(
        host=section.string("host", "localhost"),
        port=section.integer("port", 25, minimum=1, maximum=65535),
        sender=section.string("from", required=True),
        recipients=tuple(recipients),
        starttls=section.boolean("starttls", False),
        username=section.optional_str("username"),
        password=section.secret("password", required=False),
    )
    section.finish()
    return smtp


@dataclass(frozen=True)
class WebSettings:
    """``[web]``: the console (docs/web.md). Off when the section is absent."""

    host: str = "127.0.0.1"
    port: int = 9480
    certificate: Path | None = None  # TLS: both or neither
    key: Path | None = None
    public_read: bool = False  # read-only pages without signing in
    users: dict[str, str] = field(default_factory=dict)  # name -> password hash

    @property
    def tls(self) -> bool:
        return self.certificate is not None


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _web(section: Section | None) -> WebSettings | None:
    if section is None:
        return None
    from gateway.web.auth import HashError, check_hash  # the hash format is the console's

    host, port = _address(
        section, "listen", section.string("listen", "127.0.0.1:9480"), "127.0.0.1:9480"
    )
    certificate = section.path("certificate", required=False)
    key = section.path("key", required=False)
    if (certificate is None) != (key is None):
        raise SettingsError(section.key("key"), "give both certificate and key (or neither)")
    public_read = section.boolean("public_read", False)
    users: dict[str, str] = {}
    users_section = section.table("users") or Section({}, section.key("users"))
    for name in users_section.keys():  # noqa: SIM118 - a Section is not a dict
        user = users_section.table(name)
        assert user is not None  # a key it has
        password_hash = user.string("password_hash", required=True)
        try:
            check_hash(password_hash)
        except HashError as exc:
            raise SettingsError(
                user.key("password_hash"), f"{exc}; make one with raccord web-passwd"
            ) from None
        user.finish()
        users[name] = password_hash
    users_section.finish()
    section.finish()
    return WebSettings(host, port, certificate, key, public_read, users)


def _web_warnings(web: WebSettings | None) -> tuple[str, ...]:
    if web is None:
        return ()
    warnings = []
    if web.host not in _LOOPBACK and not web.tls:
        warnings.append(
            f"[web] listen = {web.host}:{web.port} is reachable from other machines without "
            "TLS: passwords and session cookies would cross the network in clear; set [web] "
            "certificate and key, or listen on 127.0.0.1"
        )
    if not web.users:
        warnings.append(
            "[web] has no [web.users.<name>]: nobody can sign in"
            + ("" if web.public_read else " nor see any page")
            + " (add one with a hash from raccord web-passwd)"
        )
    return tuple(warnings)


@dataclass(frozen=True)
class Config:
    path: Path
    gateway: GatewaySettings
    connections: tuple[Connection, ...]
    as2_receiver: As2ReceiverSettings | None = None
    alerts: AlertSettings | None = None
    web: WebSettings | None = None
    #: Things that are allowed but probably wrong, one sentence each (``raccord check`` prints
    #: them, the daemon logs them as ``config.warning``).
    warnings: tuple[str, ...] = ()

    def connection(self, name: str) -> Connection:
        for conn in self.connections:
            if conn.name == name:
                return conn
        raise KeyError(name)


def default_path() -> Path:
    return Path(os.environ.get("RACCORD_CONFIG") or DEFAULT_PATH)


def load(path: Path) -> Config:
    """Read and validate the configuration at ``path``.

    Raises:
        ConfigError: unreadable, not TOML, or any key invalid (message names file and key).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(raw, path)
    except SettingsError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse(raw: dict[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document (``path`` resolves relative paths)."""
    top = Section(raw, "", path.parent)
    gateway_section = top.table("gateway") or Section({}, "gateway", path.parent)
    gateway = _gateway(gateway_section)
    raw_connections = top.raw("connection") or []
    if not isinstance(raw_connections, list):
        raise SettingsError("connection", "use [[connection]] tables, one per connection")
    connections = []
    seen: set[str] = set()
    for index, item in enumerate(raw_connections):
        label = item.get("name") if isinstance(item, dict) else None
        where = f"connection[{label if isinstance(label, str) else index}]"
        conn = _connection(Section(item, where, path.parent))
        if conn.name in seen:
            raise SettingsError(f"{where}.name", f"connection name {conn.name!r} is used twice")
        seen.add(conn.name)
        connections.append(conn)
    as2_receiver = _as2_receiver(top.table("as2_receiver"))
    alerts = _alerts(top.table("alerts"))
    web = _web(top.table("web"))
    top.finish()
    _one_connection_per_as2_pair(connections)
    _async_mdns_need_the_receiver(connections, as2_receiver)
    _no_overlapping_sheets(connections)
    return Config(
        path,
        gateway,
        tuple(connections),
        as2_receiver,
        alerts,
        web,
        _production_without_qualification(connections)
        + _over_deposit_limit(gateway, connections)
        + _web_warnings(web),
    )


#: Connection states the portal holds a structure to: a draft is still being written and a
#: disabled sheet no longer counts, so either may overlap a live one (e.g. its replacement).
_LIVE = (State.SENT, State.ACTIVE)


def _no_overlapping_sheets(connections: list[Connection]) -> None:
    """The portal's rule: one live connection per structure, environment and interface code at
    any date. Two would leave Chorus Pro (and the operator) unsure which sheet's mode applies."""
    live = [conn for conn in connections if conn.state in _LIVE]
    for index, conn in enumerate(live):
        for other in live[:index]:
            if (other.structure, other.environment) != (conn.structure, conn.environment):
                continue
            if conn.valid_to < other.valid_from or other.valid_to < conn.valid_from:
                continue
            shared = sorted(
                code
                for code, mode in conn.interfaces.items()
                if mode is not Mode.NONE and other.interfaces.get(code, Mode.NONE) is not Mode.NONE
            )
            if shared:
                raise SettingsError(
                    f"connection[{conn.name}].interfaces",
                    f"{', '.join(shared)} {'is' if len(shared) == 1 else 'are'} also connected "
                    f"by connection {other.name} for structure {conn.structure or '(none)'} in "
                    f"{conn.environment} over an overlapping period "
                    f"({max(conn.valid_from, other.valid_from)} to "
                    f"{min(conn.valid_to, other.valid_to)}); a structure has one connection per "
                    "interface code and environment — end one period before the other starts, "
                    'or set one to "none" or its state to "draft" or "disabled"',
                )


def _production_without_qualification(connections: list[Connection]) -> tuple[str, ...]:
    """The portal asks a structure to pass qualification before production."""
    qualified = {c.structure for c in connections if c.environment == "qualification"}
    return tuple(
        f"connection {conn.name}: production connection for structure "
        f"{conn.structure or '(none)'} has no qualification connection for the same structure "
        "in this configuration (Chorus Pro expects the flows to be qualified first)"
        for conn in connections
        if conn.environment == "production"
        and conn.state is not State.DISABLED
        and conn.structure not in qualified
    )


def _over_deposit_limit(gateway: GatewaySettings, connections: list[Connection]) -> tuple[str, ...]:
    """The PISTE API takes smaller files than the gateway may: those fail on that connection."""
    return tuple(
        f"connection {conn.name}: max_file_size ({gateway.max_file_size} bytes) is over what "
        f"the PISTE API takes per file (max_deposit_size, {conn.settings.max_deposit_size} "
        "bytes): larger files will go to error/ with reason too_large; send them over an EDI "
        "connection"
        for conn in connections
        if conn.protocol == "piste" and gateway.max_file_size > conn.settings.max_deposit_size
    )


def _async_mdns_need_the_receiver(
    connections: list[Connection], receiver: As2ReceiverSettings | None
) -> None:
    """An asynchronous MDN is posted to our [as2_receiver]: without it, none would arrive."""
    if receiver is not None:
        return
    for conn in connections:
        if conn.protocol == "as2" and conn.settings.mdn_async:
            raise SettingsError(
                f"connection[{conn.name}].as2.mdn",
                f'mdn = "{conn.settings.mdn}" needs an [as2_receiver] section: the partner '
                "posts the MDN there (at the mdn_url address)",
            )


def _one_connection_per_as2_pair(connections: list[Connection]) -> None:
    """Inbound AS2 messages find their connection by (AS2-To, AS2-From): it must be one."""
    seen: dict[tuple[str, str], str] = {}
    for conn in connections:
        if conn.protocol != "as2":
            continue
        pair = (conn.settings.as2_from, conn.settings.as2_to)
        if pair in seen:
            raise SettingsError(
                f"connection[{conn.name}].as2",
                f"as2_from {pair[0]!r} and as2_to {pair[1]!r} are those of connection "
                f"{seen[pair]} too; inbound messages could not tell them apart",
            )
        seen[pair] = conn.name


def _gateway(section: Section) -> GatewaySettings:
    data_dir = section.path("data_dir", required=False) or Path("/var/lib/raccord")
    retry_section = section.table("retry") or Section({}, section.key("retry"))
    retry = Retry(
        max_attempts=retry_section.integer("max_attempts", 8, minimum=1, maximum=1000),
        initial=retry_section.duration("initial", "5s"),
        maximum=retry_section.duration("max", "10m"),
    )
    retry_section.finish()
    metrics = section.optional_str("metrics")
    analysis_timeout = section.duration("analysis_timeout", "20s")
    if analysis_timeout <= 0:
        raise SettingsError(section.key("analysis_timeout"), "must be more than 0s")
    settings = GatewaySettings(
        data_dir=data_dir,
        max_file_size=section.size("max_file_size", "30000KB"),
        metrics=_address(section, "metrics", metrics, "127.0.0.1:9464") if metrics else None,
        rescan_interval=section.duration("rescan_interval", "30s"),
        settle_time=section.duration("settle_time", "2s"),
        analysis_timeout=analysis_timeout,
        retry=retry,
        shutdown_grace=section.duration("shutdown_grace", "20s"),
        warn_days=section.integer("warn_days", 30, minimum=0, maximum=3650),
        retention=_retention(section),
        retention_files=section.boolean("retention_files", False),
        validation_workers=section.integer("validation_workers", 0, minimum=0, maximum=64),
    )
    section.finish()
    return settings


#: The shortest [gateway] retention (see gateway/ops/retention.py: returns may come months later).
MINIMUM_RETENTION_DAYS = 90


def _retention(section: Section) -> float | None:
    """``retention = "400d"``: how long filed flows are kept; absent or "off": for ever."""
    value = section.raw("retention")
    if value is None or value == "off":
        return None
    seconds = section.duration("retention", "0s")
    if seconds < MINIMUM_RETENTION_DAYS * 86400:
        raise SettingsError(
            section.key("retention"),
            f"at least {MINIMUM_RETENTION_DAYS}d (return flows may still name younger flows), "
            'or "off"',
        )
    return seconds


def _connection(section: Section) -> Connection:
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
