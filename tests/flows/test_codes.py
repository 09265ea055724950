"""flows.codes: the interface-code table is consistent data."""

from __future__ import annotations

import re

import pytest

from flows import codes
from flows.codes import Direction, Format


def test_every_code_has_the_chorus_shape_and_is_unique() -> None:
    seen = [row.code for row in codes.INTERFACE_CODES]
    assert len(seen) == len(set(seen))
    assert all(re.fullmatch(r"[A-Z]{3}\d{4}A", code) for code in seen)


def test_every_format_default_code_is_an_outbound_code_in_the_table() -> None:
    for fmt, code in codes.DEFAULT_CODE_FOR_FORMAT.items():
        row = codes.lookup(code)
        assert row.direction is Direction.OUTBOUND, fmt
        assert not row.withdrawn, fmt


def test_piste_syntaxes_follow_the_in_dp_pattern_for_deposits() -> None:
    for row in codes.INTERFACE_CODES:
        if row.piste_syntax and row.direction is Direction.OUTBOUND:
            assert row.piste_syntax.startswith("IN_DP_"), row.code


def test_unknown_code_is_a_clear_error_listing_the_known_ones() -> None:
    with pytest.raises(codes.UnknownInterfaceCode, match="FSO1100A"):
        codes.lookup("FSO9999A")


def test_every_format_has_a_label() -> None:
    assert all(fmt.label for fmt in Format)
