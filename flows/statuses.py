"""The invoice status lifecycle, as a table, and an invoice's current status from its history.

Statuses arrive out of order: several return files, several channels (CPP Statut, AIFE Statut,
PISTE invoice searches), and a stale file may come days after a newer one. An invoice's current
status is therefore never "the last one received" but is derived from its whole history:

* entries are taken in the order of their own timestamp (``Horodatage``, ``dateHeureEtatCourant``);
  arrival order only breaks ties, and places an entry without a readable timestamp;
* a **final** status (rejected 04/05, paid 11; the PISTE words map onto these codes) is never
  replaced: neither by an earlier-stamped one that arrives late, nor by a non-final one, nor by
  another final one;
* what comes after a final status and disagrees with it (another final code, or any status
  stamped later than the final one) is a **contradiction**: it stays in the history and is
  reported as an anomaly, it is not applied. A status stamped *before* the final one is only
  stale: history, nothing to report.

Why the first final status wins even over a final one stamped earlier that arrives later: the
first one was acted on (rejected invoices filed, a payment reported); undoing that silently is
worse than reporting the contradiction to a person.

Pure functions: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


class Stage(enum.StrEnum):
    """Where an invoice stands, coarser than its status code."""

    DEPOSITED = "deposited"
    ROUTING = "routing"
    WITH_BUYER = "with_buyer"
    SUSPENDED = "suspended"
    PROCESSING = "processing"
    REJECTED = "rejected"
    PAID = "paid"


@dataclass(frozen=True)
class StatusInfo:
    code: str
    label: str
    stage: Stage
    final: bool

    @property
    def rejected(self) -> bool:
        return self.stage is Stage.REJECTED


#: Invoice-level statuses (CPP Statut ``IdStatut``; PISTE words are mapped to these codes when
#: read). Codes 13–41 exist without a published label: they are not in the table, so not final.
#: (Written out row by row, without a helper: the table is data, built once at import.)
TABLE: dict[str, StatusInfo] = {
    "01": StatusInfo("01", "déposée", Stage.DEPOSITED, False),
    "02": StatusInfo("02", "en cours d'acheminement", Stage.ROUTING, False),
    "03": StatusInfo("03", "mise à disposition", Stage.WITH_BUYER, False),
    "04": StatusInfo(
        "04",
        "rejetée (erreur dans les données d'acheminement, à recycler)",
        Stage.REJECTED,
        True,
    ),
    "05": StatusInfo("05", "rejetée (autre motif)", Stage.REJECTED, True),
    "06": StatusInfo("06", "suspendue", Stage.SUSPENDED, False),
    "07": StatusInfo("07", "service fait", Stage.PROCESSING, False),
    "08": StatusInfo("08", "mandatée", Stage.PROCESSING, False),
    "09": StatusInfo("09", "mise à disposition du comptable", Stage.PROCESSING, False),
    "10": StatusInfo("10", "comptabilisée", Stage.PROCESSING, False),
    "11": StatusInfo("11", "mise en paiement", Stage.PAID, True),
    "12": StatusInfo("12", "complétée", Stage.WITH_BUYER, False),
}


def info(code: str | None) -> StatusInfo | None:
    """The table row of ``code``; None for a code raccord does not know (never final)."""
    return TABLE.get(code or "")


def is_final(code: str | None) -> bool:
    row = info(code)
    return row is not None and row.final


def is_rejected(code: str | None) -> bool:
    row = info(code)
    return row is not None and row.rejected


def instant(text: str | None) -> datetime | None:
    """A status timestamp as an aware time (no zone: taken as UTC), None if unreadable.

    Accepts ISO 8601 with ``T`` or a space, with or without fraction and zone (``Z``, ``+01:00``).
    """
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Entry:
    """One status of one invoice, as received (the history is given in arrival order)."""

    code: str
    at: str | None = None


@dataclass(frozen=True)
class Anomaly:
    index: int  # the entry (in arrival order) that contradicts the current status
    entry: Entry
    current: Entry

    def text(self) -> str:
        return (
            f"status {self.entry.code} ({self.entry.at or 'no timestamp'}) contradicts final "
            f"status {self.current.code} ({self.current.at or 'no timestamp'}): kept in the "
            "history, not applied"
        )


@dataclass(frozen=True)
class Lifecycle:
    current: Entry | None
    anomalies: tuple[Anomaly, ...]

    @property
    def final(self) -> bool:
        return self.current is not None and is_final(self.current.code)


def _later(entry: Entry, than: Entry) -> bool:
    """Whether ``entry`` (arrived after ``than``) stands after it in time: by timestamp when
    both are readable, else by arrival."""
    mine, theirs = instant(entry.at), instant(than.at)
    if mine is None or theirs is None:
        return True
    return mine >= theirs


def lifecycle(history: Sequence[Entry]) -> Lifecycle:
    """The current status and the contradictions of an invoice's ``history`` (arrival order)."""
    current: Entry | None = None
    anomalies: list[Anomaly] = []
    for index, entry in enumerate(history):
        if current is None:
            current = entry
        elif is_final(current.code):
            if entry.code == current.code:
                continue  # the same final status again (another channel, a repeat)
            if is_final(entry.code) or _later(entry, current):
                anomalies.append(Anomaly(index, entry, current))
        elif is_final(entry.code) or _later(entry, current):
            current = entry
    return Lifecycle(current, tuple(anomalies))
