"""Untrusted text (file names, invoice numbers, partner messages) through both databases."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.journal import JournalDB, JournalTarget

#: What a file name or an XML text node can hold: any character but NUL (no file name or XML
#: document carries one) and lone surrogates (not text); quotes, %, ? and : included on purpose.
untrusted = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
    max_size=40,
) | st.sampled_from(["'", "''", "%", "%s", "?", ":name", "%(x)s", "' OR '1'='1", "--", "é€😀"])

_ids = itertools.count()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=untrusted, number=untrusted, message=untrusted)
def test_untrusted_text_is_stored_and_found_again_unchanged(
    target: JournalTarget, name: str, number: str, message: str
) -> None:
    """Promise: a name or number with quotes, ``%``, ``?`` or any Unicode is data, never SQL:
    stored as given, found by the same queries, on SQLite and PostgreSQL alike."""
    db = JournalDB(target)
    try:
        n = next(_ids)  # the examples share the database: each its own flow and supplier
        flow, supplier = f"20261123T120000Z-{n:06x}", f"S{n}"
        db.insert(flow, "c", name, f"/spool/{flow}", invoice_number=number, supplier_id=supplier)
        db.transition(flow, "queued", message=message, detail=name)
        earlier = db.find_duplicate(f"{flow}-copy", "another-sha", supplier, number)
        assert earlier is not None and earlier.flow_id == flow
        row = db.get(flow)
        assert row is not None
        assert (row.original_name, row.invoice_number, row.message) == (name, number, message)
        assert db.transitions(flow)[-1]["detail"] == name
        assert flow in [found.flow_id for found in db.search(invoice=number)]
        db.add_invoices(flow, [(name, number, supplier, flow)])
        assert db.invoices(flow)[0]["invoice_number"] == number
    finally:
        db.close()
