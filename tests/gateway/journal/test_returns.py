"""The journal's memory of fetched remote files, on both databases: a file remembered again
(stored, then done) keeps the return it was stored as — on PostgreSQL too, where the update
of a conflicting row must name its table's columns."""

from __future__ import annotations

from gateway.journal import JournalDB, JournalTarget


def test_a_download_remembered_again_keeps_its_return(target: JournalTarget) -> None:
    """A poller marks a file ``stored`` with its return, then ``done`` without one: the row is
    updated (not refused), and still names the return — else the poller could not tell the
    file was already applied and would fetch it again at every poll."""
    db = JournalDB(target)
    try:
        db.record_download("qualif", "FEN1.xml", 10, 1, outcome="stored", return_id="R1")
        db.record_download("qualif", "FEN1.xml", 10, 1, outcome="done")
        row = db.download("qualif", "FEN1.xml", 10, 1)
    finally:
        db.close()
    assert row is not None and (row["outcome"], row["return_id"]) == ("done", "R1")
