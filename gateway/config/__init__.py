"""raccord's configuration: a TOML file (docs/configuration.md) validated into typed, frozen
objects.

Every error names the file and the dotted key at fault (``connection[qualif-sftp].sftp.hots``)
and, for a typo, the nearest valid key. Protocol sections are read by the protocol itself
(:mod:`protocols.registry`), so a plugin's keys are validated exactly like the built-ins'.

The objects live in :mod:`gateway.config.model`, the sections' readers in
:mod:`gateway.config.sections` and :mod:`gateway.config.sheets` (``[[connection]]``), the rules
across sections in :mod:`gateway.config.rules`; everything is importable from here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from gateway.config import rules
from gateway.config.model import (
    AlertSettings,
    As2ReceiverSettings,
    Checking,
    Config,
    ConfigError,
    Connection,
    GatewaySettings,
    JournalSettings,
    Lot,
    Mode,
    Retry,
    SmtpSettings,
    State,
    WebSettings,
)
from gateway.config.sections import (
    MINIMUM_RETENTION_DAYS,
    alert_settings,
    as2_receiver_settings,
    gateway_settings,
    journal_settings,
    web_settings,
    web_warnings,
)
from gateway.config.sheets import connection
from gateway.folders import Layout, LinkedFolder
from protocols.settings import Section, SettingsError

__all__ = [
    "DEFAULT_PATH",
    "MINIMUM_RETENTION_DAYS",
    "AlertSettings",
    "As2ReceiverSettings",
    "Checking",
    "Config",
    "ConfigError",
    "Connection",
    "GatewaySettings",
    "JournalSettings",
    "Lot",
    "Mode",
    "Retry",
    "SmtpSettings",
    "State",
    "WebSettings",
    "default_path",
    "load",
    "parse",
]

DEFAULT_PATH = Path("/etc/raccord/raccord.toml")


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
        config = parse(raw, path)
        # On disk, not in the text: checked at each load (start, reload, raccord check).
        Layout(config.gateway.data_dir).refuse_links([c.name for c in config.connections])
    except SettingsError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except LinkedFolder as exc:
        raise ConfigError(f"{path}: connection[{exc.connection}]: {exc}") from None
    return config


def parse(raw: dict[str, Any], path: Path) -> Config:
    """Validate an already-parsed TOML document (``path`` resolves relative paths)."""
    top = Section(raw, "", path.parent)
    gateway_section = top.table("gateway") or Section({}, "gateway", path.parent)
    gateway = gateway_settings(gateway_section)
    raw_connections = top.raw("connection") or []
    if not isinstance(raw_connections, list):
        raise SettingsError("connection", "use [[connection]] tables, one per connection")
    connections = []
    seen: set[str] = set()
    for index, item in enumerate(raw_connections):
        label = item.get("name") if isinstance(item, dict) else None
        where = f"connection[{label if isinstance(label, str) else index}]"
        conn = connection(Section(item, where, path.parent))
        if conn.name in seen:
            raise SettingsError(f"{where}.name", f"connection name {conn.name!r} is used twice")
        seen.add(conn.name)
        connections.append(conn)
    as2_receiver = as2_receiver_settings(top.table("as2_receiver"))
    alerts = alert_settings(top.table("alerts"))
    web = web_settings(top.table("web"))
    journal = journal_settings(top.table("journal"))
    top.finish()
    rules.one_connection_per_as2_pair(connections)
    rules.async_mdns_need_the_receiver(connections, as2_receiver)
    rules.no_overlapping_sheets(connections)
    return Config(
        path,
        gateway,
        tuple(connections),
        as2_receiver,
        alerts,
        web,
        rules.production_without_qualification(connections)
        + rules.over_deposit_limit(gateway, connections)
        + web_warnings(web),
        journal=journal,
    )
