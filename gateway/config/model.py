"""The configuration's objects: typed and frozen, read by every part of the gateway.

:mod:`gateway.config` builds them from the TOML file; nothing here reads a file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from flows import validation as rulebook
from protocols.settings import Secret


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
    node_name: str = ""  # this node in the journal ("which node did what"); "": the host name


@dataclass(frozen=True)
class JournalSettings:
    """``[journal]``: where the journal lives (docs/configuration.md). Absent: SQLite in
    data_dir, one node."""

    url: str | None = None  # "postgresql://user@host/db": several nodes share that database
    password: Secret | None = None
    lease_timeout: float = 30.0  # a node silent this long loses its flows and duties


@dataclass(frozen=True)
class As2ReceiverSettings:
    host: str
    port: int
    tls_certificate: Path | None = None
    tls_key: Path | None = None


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
    journal: JournalSettings = field(default_factory=JournalSettings)

    def connection(self, name: str) -> Connection:
        for conn in self.connections:
            if conn.name == name:
                return conn
        raise KeyError(name)
