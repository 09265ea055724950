"""What a flow's row is: :class:`FlowRow`, its columns, and the error of a refused move."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from flows.lifecycle import FlowState
from gateway.journal.connection import Row

STATES = tuple(FlowState)


@dataclass(frozen=True)
class FlowRow:
    flow_id: str
    connection: str
    original_name: str
    spool_path: str
    state: str
    size: int | None
    sha256: str | None
    format: str | None
    interface_code: str | None
    invoice_number: str | None
    issue_date: str | None
    supplier_id: str | None
    buyer_id: str | None
    remote_name: str | None
    attempts: int
    unknown_outcome: int
    forced: int
    reason: str | None
    message: str | None
    duplicate_of: str | None
    final_path: str | None
    receipt: str | None
    created_at: str
    updated_at: str
    detail: str | None  # what the last transition said (e.g. "raccord retry --force")
    mode: str | None  # complete | partial, for the flow's interface code when it was queued
    lot_id: str | None = None  # a packed invoice: the lot that carries it
    packaging: str | None = None  # a lot: tar.gz | zip
    resubmit_of: str | None = None  # a lot resubmitting the collateral invoices of that flow
    receipt_key: str | None = None  # what a late acknowledgement refers to (set when sending)
    receipt_due: str | None = None  # awaiting_receipt: when waiting ends (ISO 8601 UTC)
    validation: str | None = None  # the validation object (JSON) when the invoice was checked
    node: str | None = None  # the node that last moved the flow (``[gateway] node_name``)
    lease_until: str | None = None  # the node works on the flow until then (ISO 8601 UTC)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["receipt"] = json.loads(self.receipt) if self.receipt else None
        data["validation"] = json.loads(self.validation) if self.validation else None
        return data

    @classmethod
    def of(cls, row: Row) -> FlowRow:
        """A row of ``flows`` (its columns are the fields: the schema is migrated at open).

        Raises:
            RuntimeError: the table has columns this version does not know (a journal written
                by another program, or edited by hand).
        """
        values = dict(zip(row.keys(), row, strict=True))
        if values.keys() != COLUMN_SET:
            raise RuntimeError(f"the journal's flows columns {tuple(values)} are not {COLUMNS}")
        return cls(**values)


#: The columns of ``flows``, in order: FlowRow's fields.
COLUMNS = tuple(f.name for f in fields(FlowRow))
COLUMN_SET = frozenset(COLUMNS)


class StateConflict(RuntimeError):
    """A transition was asked from a state the flow is no longer in."""


class LeaseLost(StateConflict):
    """A move of a flow another node now works on: its lease is that node's (this one was
    silent longer than ``lease_timeout``, and the other took the flow over). Nothing was
    written; the flow goes on there."""
