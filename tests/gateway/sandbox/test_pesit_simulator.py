"""The PeSIT test responder's own rules, where a wrong one would let a test pass falsely."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from gateway.sandbox.pesit_partner import Account, PesitResponder


def test_a_transfer_another_connection_still_holds_cannot_be_restarted(tmp_path: Path) -> None:
    """A requester that gave up on a slow connection restarts on a new one while the server is
    still reading the old one: the restart must wait (207), or two connections would write the
    same file (seen under load: the first finished the file, the second appended to it)."""
    responder = PesitResponder(tmp_path, {"R": Account()})
    responder.deposits.mkdir(parents=True)
    old, new = object(), object()
    transfer = responder._begin("R", 7, "a.xml", False, old)
    assert not isinstance(transfer, int)
    assert responder._begin("R", 7, "a.xml", True, new) == 207
    transfer.holder = None  # the old connection ended
    assert responder._begin("R", 7, "a.xml", True, new) is transfer
    assert transfer.holder is new
    assert responder._begin("R", 8, "a.xml", True, new) == 214  # unknown transfer


@pytest.mark.parametrize(("mode", "second", "stores"), [("overwrite", 0, 2), ("refuse", 204, 1)])
def test_a_responder_that_overwrites_counts_every_store_one_that_refuses_keeps_the_first(
    tmp_path: Path, mode: Literal["overwrite", "refuse"], second: int, stores: int
) -> None:
    """The two kinds of real server a double delivery meets: the one that overwrites makes it
    visible only through its store count; the one that refuses answers 204."""
    responder = PesitResponder(tmp_path, {"R": Account()}, on_existing=mode)
    responder.deposits.mkdir(parents=True)
    outcomes = []
    for transfer_id in (1, 2):
        begun = responder._begin("R", transfer_id, "a.xml", False, object())
        if isinstance(begun, int):
            outcomes.append(begun)
            continue
        begun.partial.write_bytes(b"data")
        outcomes.append(responder._finish(begun))
    assert outcomes == [0, second]
    assert responder.stores == {"a.xml": stores}
