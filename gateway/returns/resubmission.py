"""Lots and their rejections: the invoices of a sent lot, and the resubmission of the
collateral invoices of a lot rejected under Complète (``resubmit_collateral``).

Once per lot: a lot already resubmitted, or itself a resubmission, is never resubmitted; the
new lot is journaled ``claimed`` and the daemon sends it like any claimed flow.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from flows import lots, naming
from gateway import logs
from gateway.flow.lots import journal_lot, write_lot
from gateway.folders import Layout, spool_name
from gateway.journal import JournalDB

log = logs.get()


def lot_members(connection: str, flow_id: str, archive: Path) -> dict[str, bytes]:
    """The invoices of a sent lot by name; none (logged) if the archive cannot be read: the
    rejection reports are written all the same."""
    try:
        return dict(lots.read_members(archive.read_bytes()))
    except (lots.LotError, OSError) as exc:
        log.error(
            "lot.unreadable",
            connection=connection,
            flow_id=flow_id,
            path=str(archive),
            error=str(exc),
            action="rejected invoices are reported without their copy",
        )
        return {}


def resubmit_collateral(
    db: JournalDB, layout: Layout, flow_id: str, ids: naming.FlowIds
) -> str | None:
    """Pack the collateral invoices of a rejected lot into a new lot (state ``claimed``, for
    the daemon to send), its id drawn from ``ids`` (the pipeline's: ids never repeat within
    one generator); return its flow id, or None if there is nothing to resubmit.

    Once per lot: a lot already resubmitted, or itself a resubmission, is left alone.
    """
    flow = db.get(flow_id)
    if flow is None or flow.packaging is None or flow.resubmit_of is not None:
        return None
    earlier = db.resubmission_of(flow_id)
    if earlier is not None:
        return earlier
    # The innocent: collateral of a Complète rejection, or not named by a flow-level failure.
    collateral = [i for i in db.invoices(flow_id) if i["collateral"] or i["flow_not_received"]]
    if not collateral:
        return None
    if not flow.final_path or not Path(flow.final_path).exists():
        log.error(
            "lot.resubmit_failed",
            connection=flow.connection,
            flow_id=flow_id,
            error=f"the sent lot {flow.final_path} is missing; its collateral invoices were "
            "not resubmitted",
        )
        return None
    contents = lot_members(flow.connection, flow_id, Path(flow.final_path))
    collateral = [i for i in collateral if i["file"] in contents]
    if not collateral:
        return None
    lot_id = ids.new(datetime.now(UTC))
    name = lots.lot_name(lot_id, flow.packaging)
    target = layout.spool(flow.connection) / spool_name(lot_id, name)
    write_lot([(i["file"], contents[i["file"]]) for i in collateral], target, flow.packaging)
    try:
        journal_lot(
            db,
            lot_id=lot_id,
            connection=flow.connection,
            name=name,
            spool=target,
            packaging=flow.packaging,
            interface_code=flow.interface_code or "",
            invoices=[
                (i["file"], i["invoice_number"], i["supplier_id"], i["source_flow"])
                for i in collateral
            ],
            resubmit_of=flow_id,
            detail=f"collateral invoices of rejected lot {flow_id}, sent again",
        )
    except Exception:  # rolled back: the archive is nobody's
        target.unlink(missing_ok=True)
        raise
    log.warning(
        "lot.resubmitted",
        connection=flow.connection,
        flow_id=lot_id,
        resubmit_of=flow_id,
        invoices=len(collateral),
        action="the collateral invoices of a lot rejected under Complète are sent again",
    )
    return lot_id
