"""Rules across sections: what the portal or the protocols forbid (errors), and what is allowed
but probably wrong (warnings, one sentence each)."""

from __future__ import annotations

from gateway.config.model import As2ReceiverSettings, Connection, GatewaySettings, Mode, State
from protocols.settings import SettingsError

#: Connection states the portal holds a structure to: a draft is still being written and a
#: disabled sheet no longer counts, so either may overlap a live one (e.g. its replacement).
_LIVE = (State.SENT, State.ACTIVE)


def no_overlapping_sheets(connections: list[Connection]) -> None:
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


def production_without_qualification(connections: list[Connection]) -> tuple[str, ...]:
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


def over_deposit_limit(gateway: GatewaySettings, connections: list[Connection]) -> tuple[str, ...]:
    """The PISTE API takes smaller files than the gateway may: those fail on that connection."""
    return tuple(
        f"connection {conn.name}: max_file_size ({gateway.max_file_size} bytes) is over what "
        f"the PISTE API takes per file (max_deposit_size, {conn.settings.max_deposit_size} "
        "bytes): larger files will go to error/ with reason too_large; send them over an EDI "
        "connection"
        for conn in connections
        if conn.protocol == "piste" and gateway.max_file_size > conn.settings.max_deposit_size
    )


def async_mdns_need_the_receiver(
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


def one_connection_per_as2_pair(connections: list[Connection]) -> None:
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
