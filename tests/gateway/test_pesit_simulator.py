"""The PeSIT test responder's own rules, where a wrong one would let a test pass falsely."""

from __future__ import annotations

from pathlib import Path

from gateway.pesit_simulator import Account, PesitResponder


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
