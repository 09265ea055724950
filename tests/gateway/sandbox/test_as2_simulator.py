"""The simulator's AS2 side with a running gateway: an invoice goes out over AS2, the desk
answers it, the answer comes back over AS2 to the gateway's receiver and is applied."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from gateway.folders import Layout
from gateway.journal import JournalDB
from gateway.sandbox import pki
from gateway.sandbox.as2_partner import As2Simulator
from gateway.sandbox.chorus import Desk, Rules
from tests.as2_config import mirror, write_as2_config
from tests.e2e.sshd import free_port
from tests.gateway.harness import drop, rows, running, until
from tests.gateway.returns.test_returns import invoice


def test_an_invoice_goes_out_and_its_status_comes_back_over_as2(tmp_path: Path) -> None:
    ours, theirs = pki.issue("MYCOMPANY AS2"), pki.issue("CTAIFEP AS2")
    simulator_port, receiver_port = free_port(), free_port()
    config = write_as2_config(
        tmp_path,
        ours,
        theirs,
        url=f"http://127.0.0.1:{simulator_port}/",
        receiver_port=receiver_port,
    )
    view = replace(
        mirror(config.connections[0].settings, theirs, ours),
        url=f"http://127.0.0.1:{receiver_port}/",
    )
    partner = tmp_path / "partner"
    desk = Desk(partner / "depot", partner / "retrait", Rules({"FSO1100A": "complete"}, "REJ"))

    async def scenario() -> None:
        stopping = asyncio.Event()
        async with (
            As2Simulator(partner / "depot", partner / "retrait", view, port=simulator_port) as sim,
            running(config),
        ):
            tasks = [
                asyncio.create_task(desk.run(stopping)),
                asyncio.create_task(sim.push_returns(stopping)),
            ]
            drop(config, "F-1.xml", invoice("F-1"))
            drop(config, "F-REJ-2.xml", invoice("F-REJ-2"))

            def statuses() -> dict[str, str | None]:
                db = JournalDB(Layout(config.gateway.data_dir).journal)
                try:
                    return {
                        str(i["invoice_number"]): i["status_code"]
                        for r in rows(config)
                        for i in db.invoices(r.flow_id)
                    }
                finally:
                    db.close()

            await until(
                lambda: statuses() == {"F-1": "01", "F-REJ-2": "05"}, what="both statuses back"
            )
            stopping.set()
            await asyncio.gather(*tasks)
            assert len(sim.received) == 2 and len(sim.pushed) == 2

    asyncio.run(scenario())

    assert sorted(r.state for r in rows(config)) == ["sent", "sent"]
    assert not list((partner / "retrait").iterdir())  # every return pushed and confirmed
