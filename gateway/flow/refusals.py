"""Why a flow is refused, in sentences ops can act on (they end in ``error.json``)."""

from __future__ import annotations

from dataclasses import dataclass

from flows.analysis import Analysis
from gateway.journal import FlowRow


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def unknown_connection(name: str) -> tuple[str, str]:
    return (
        "unknown_connection",
        f"connection {name} is no longer configured; configure it again and raccord retry "
        "this flow, or drop the file in another connection's outbox",
    )


def unreadable(row: FlowRow, exc: OSError) -> str:
    return (
        f"raccord may not read {row.original_name} ({exc.strerror}): it was dropped with "
        "permissions that leave the daemon's user out (an umask of 077?). Give the file read "
        "permission for raccord's group (chmod g+r), then raccord retry"
    )


def duplicate_message(row: FlowRow, earlier: FlowRow, analysis: Analysis) -> str:
    what = (
        "the same bytes"
        if earlier.sha256 == analysis.sha256
        else f"invoice {analysis.invoice_number} of supplier {analysis.supplier_id}"
    )
    return (
        f"{what} already in flow {earlier.flow_id} ({earlier.original_name}, {earlier.state}); "
        f"not sent twice. If it must be sent again: raccord retry --force {row.flow_id}"
    )
