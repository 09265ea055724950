"""What the dispatcher's tests share: a fresh memory bucket per test, and invoices by number."""

from __future__ import annotations

import itertools

import pytest

from protocols.testing import memory
from tests.conftest import sample

_buckets = itertools.count()


@pytest.fixture
def bucket() -> str:
    """A memory partner's bucket of its own for the test."""
    name = f"test-{next(_buckets)}"
    memory.BUCKETS.pop(name, None)
    return name


def invoice(number: str) -> bytes:
    """The sample UBL invoice under another invoice number."""
    return sample("ubl-invoice.xml").replace(b"DEMO-UBL-0001", number.encode())
