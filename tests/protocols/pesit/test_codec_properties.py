"""The codec's rules stated at their bounds and over generated values: what goes on the wire
comes back the same, lengths switch encoding exactly at 255 and stop at 65535, and each malformed
input is refused with the words and the PeSIT diagnostic the peer will be sent."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocols.pesit import codec
from protocols.pesit.codec import PI, Fpdu, Kind, Param

# Behaviour, not speed: no per-example deadline (mutation testing runs these on a loaded machine).
relaxed = settings(deadline=None)


def exactly(message: str) -> str:
    """A ``match`` for the whole message, not a part of it."""
    return f"^{re.escape(message)}$"


def refused(wire: str) -> codec.CodecError:
    with pytest.raises(codec.CodecError) as caught:
        codec.decode(bytes.fromhex(wire.replace(" ", "")))
    return caught.value


# -- numbers and values -----------------------------------------------------------------------


@relaxed
@given(st.integers(0, (1 << 32) - 1))
@example(0x5800)  # a leading byte that is not zero stays, whatever it is
@example(0)
def test_a_number_round_trips_without_leading_zero_bytes(value: int) -> None:
    param = codec.number(PI.BYTE_COUNT, value)
    assert int.from_bytes(param.value, "big") == value
    assert len(param.value) == max(1, (value.bit_length() + 7) // 8)
    fpdu = codec.decode(codec.encode(Fpdu(Kind.TRANS_END, 1, 0, (param,))))
    assert fpdu.number(PI.BYTE_COUNT) == value


def test_a_number_is_four_bytes_at_most_unless_told() -> None:
    assert codec.number(PI.BYTE_COUNT, (1 << 32) - 1).value == b"\xff" * 4
    with pytest.raises(ValueError, match=exactly("PI 27: 4294967296 does not fit in 4 bytes")):
        codec.number(PI.BYTE_COUNT, 1 << 32)
    with pytest.raises(ValueError, match="does not fit"):
        codec.number(PI.BYTE_COUNT, -1)


def test_text_is_ascii_read_leniently_and_only_trailing_blanks_are_dropped() -> None:
    fpdu = Fpdu(Kind.MSG, params=(codec.raw(PI.MESSAGE, b"caf\xe9\t  "),))
    assert fpdu.text(PI.MESSAGE) == "caf\ufffd\t"  # not an error: the peer's words, shown
    assert fpdu.text(PI.FREE_MESSAGE) is None
    assert Fpdu(Kind.MSG, params=(codec.text(PI.MESSAGE, "BOX X"),)).text(PI.MESSAGE) == "BOX X"
    assert fpdu.text(PI.FREE_MESSAGE, "none") == "none"
    assert fpdu.number(PI.BYTE_COUNT, 7) == 7


def test_raw_keeps_the_code_and_the_bytes() -> None:
    assert codec.raw(PI.COMPRESSION, b"\0\0") == Param(PI.COMPRESSION, b"\0\0")


def test_the_default_diagnostic_is_success() -> None:
    assert codec.diagnostic() == Param(PI.DIAGNOSTIC, b"\0\0\0")


@pytest.mark.parametrize(
    ("value", "reason"),
    [("010064", 100), ("000064", 100), ("000063", 99), ("020005", 205), ("02012d", 301)],
)
def test_a_diagnostic_reads_the_full_number_and_the_two_digit_form(value: str, reason: int) -> None:
    assert codec.decode_diagnostic(bytes.fromhex(value)) == reason


@relaxed
@given(st.integers(0, 999))
def test_every_three_digit_diagnostic_round_trips(reason: int) -> None:
    assert codec.decode_diagnostic(codec.diagnostic(reason).value) == reason


@pytest.mark.parametrize(
    ("decoder", "pi"), [(codec.decode_diagnostic, 2), (codec.decode_sync_options, 7)]
)
def test_fixed_width_values_of_another_width_are_refused_with_318(
    decoder: Callable[[bytes], object], pi: int
) -> None:
    with pytest.raises(codec.CodecError, match=exactly(f"PI {pi} must be 3 bytes, got 03 01")) as e:
        decoder(b"\x03\x01")
    assert e.value.diagnostic == 318


@relaxed
@given(st.integers(0, 0xFFFF), st.integers(0, 255))
def test_sync_options_round_trip(interval_kb: int, window: int) -> None:
    value = codec.sync_options(interval_kb, window).value
    assert value == interval_kb.to_bytes(2, "big") + bytes([window])
    assert codec.decode_sync_options(value) == (interval_kb, window)


# -- lengths --------------------------------------------------------------------------------


@relaxed
@given(st.integers(1, codec.MAX_FPDU - codec.HEADER - 4))
@example(254)
@example(255)
@example(256)
def test_a_parameter_length_is_one_byte_below_255_and_ff_plus_two_bytes_from_255(
    size: int,
) -> None:
    value = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    wire = codec.encode(Fpdu(Kind.MSG, 1, 0, (codec.raw(PI.MESSAGE, value),)))
    li = bytes([size]) if size < 255 else b"\xff" + size.to_bytes(2, "big")
    assert wire[codec.HEADER :] == bytes([PI.MESSAGE]) + li + value
    assert codec.decode(wire).get(PI.MESSAGE) == Param(PI.MESSAGE, value)


def test_an_fpdu_may_be_65535_bytes_and_no_more() -> None:
    room = codec.MAX_FPDU - codec.HEADER
    wire = codec.encode(Fpdu(Kind.DTF, 1, 0, data=b"x" * room))
    assert len(wire) == codec.MAX_FPDU
    assert wire[:2] == b"\xff\xff"
    with pytest.raises(ValueError, match=exactly("DTF of 65536 bytes exceeds 65535")):
        codec.encode(Fpdu(Kind.DTF, 1, 0, data=b"x" * (room + 1)))
    # a parameter of 65535 bytes has a length, its FPDU does not fit
    with pytest.raises(ValueError, match=exactly("MSG of 65545 bytes exceeds 65535")):
        codec.encode(Fpdu(Kind.MSG, params=(codec.raw(PI.MESSAGE, b"x" * 0xFFFF),)))
    with pytest.raises(ValueError, match=exactly("a PeSIT parameter cannot hold 65536 bytes")):
        codec.encode(Fpdu(Kind.MSG, params=(codec.raw(PI.MESSAGE, b"x" * 0x10000),)))
    with pytest.raises(
        ValueError, match=exactly("a PeSIT parameter cannot be empty (LI = 0 is refused)")
    ):
        codec.encode(Fpdu(Kind.MSG, params=(codec.raw(PI.MESSAGE, b""),)))


# -- order of parameters ----------------------------------------------------------------------


def test_pi_1_is_a_parameter_like_any_other() -> None:
    fpdu = Fpdu(Kind.MSG, 1, 0, (codec.raw(PI.CRC, b"\x01"), codec.text(PI.MESSAGE, "hi")))
    wire = codec.encode(fpdu)
    assert wire[codec.HEADER :].startswith(b"\x01\x01\x01")
    assert codec.decode(wire) == fpdu


def test_a_parameter_given_twice_is_not_encoded() -> None:
    twice = (codec.number(PI.TRANSFER_ID, 1), codec.number(PI.TRANSFER_ID, 2))
    with pytest.raises(
        ValueError, match=exactly("PI 13 after PI 13: parameters go in ascending order")
    ):
        codec.encode(Fpdu(Kind.MSG, params=twice))


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("000e c030 e200 0d0101 0d0101 0000", "PI 13 appears twice"),
        ("000e c030 e200 0d0101 0203000000", "PI 2 comes after PI 13"),
    ],
)
def test_parameters_out_of_order_are_refused_with_318(wire: str, message: str) -> None:
    error = refused(wire)
    assert str(error) == f"{message}: parameters go once, in ascending order"
    assert error.diagnostic == 318


def test_a_group_code_inside_a_group_is_a_plain_parameter() -> None:
    # PGI 9 holding a unit coded 30 (a group's code at the top level): its bytes, not members
    fpdu = codec.decode(bytes.fromhex("000b c011 0100 0903 1e0141"))
    assert fpdu.params == (Param(PI.FILE_ID, members=(Param(30, b"A"),)),)


# -- malformed bytes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "message", "diagnostic"),
    [
        ("0007 c016 0100 5b", "parameter unit cut short at byte 0", 311),
        ("0009 c016 0100 5bff00", "PI 91: 3-byte length cut short", 311),
        ("000a c016 0100 5bff0001", "PI 91 announces 1 bytes, 0 remain", 311),
        ("000b c030 e200 0205000000", "PI 2 announces 5 bytes, 3 remain", 311),
        ("0008 c030 e200 0200", "PI 2 has length 0, which PeSIT forbids", 318),
        ("0005 c030 e2", "FPDU of 5 bytes is shorter than its header", 311),
        ("0009 c0ff e200 020300", "unknown FPDU type 0xff", 311),
        ("0006 4002 e200", "WRITE with phase byte 0x40", 311),
    ],
)
def test_malformed_fpdus_are_refused_with_their_reason(
    wire: str, message: str, diagnostic: int
) -> None:
    error = refused(wire)
    assert str(error) == message
    assert error.diagnostic == diagnostic


# -- whole FPDUs ------------------------------------------------------------------------------

_KINDS = st.sampled_from(sorted(set(Kind) - {Kind.DTF, Kind.DTFMA, Kind.DTFDA, Kind.DTFFA}))
_VALUES = st.binary(min_size=1, max_size=300)
_PARAMS = st.dictionaries(
    st.integers(1, 255).filter(lambda code: code not in codec.GROUPS), _VALUES, max_size=6
).map(lambda units: tuple(Param(code, value) for code, value in sorted(units.items())))


@relaxed
@given(_KINDS, st.integers(0, 255), st.integers(0, 255), _PARAMS)
def test_any_fpdu_with_parameters_round_trips(
    kind: Kind, dst: int, src: int, params: tuple[Param, ...]
) -> None:
    fpdu = Fpdu(kind, dst, src, params)
    wire = codec.encode(fpdu)
    assert int.from_bytes(wire[:2], "big") == len(wire)
    assert wire[2:6] == bytes([kind.phase, kind, dst, src])
    assert codec.decode(wire) == fpdu


@relaxed
@given(
    st.sampled_from([Kind.DTF, Kind.DTFMA, Kind.DTFDA, Kind.DTFFA]),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=600),
)
def test_any_data_unit_round_trips(kind: Kind, dst: int, src: int, data: bytes) -> None:
    fpdu = Fpdu(kind, dst, src, data=data)
    wire = codec.encode(fpdu)
    assert wire[2] == 0
    assert codec.decode(wire) == fpdu


# -- articles ---------------------------------------------------------------------------------


@relaxed
@given(st.lists(st.binary(max_size=40), min_size=2, max_size=8))
@example([b"a", b""])  # an empty last article ends exactly at the end of the data
def test_multi_article_data_round_trips(chunks: list[bytes]) -> None:
    data = codec.multi_article(chunks)
    assert data[:2] == len(chunks[0]).to_bytes(2, "big")
    assert codec.articles(Fpdu(Kind.DTF, 1, len(chunks), data=data)) == chunks


def test_a_dtf_with_src_0_or_1_is_one_article() -> None:
    for src in (0, 1):
        assert codec.articles(Fpdu(Kind.DTF, 1, src, data=b"\x00\x01ab")) == [b"\x00\x01ab"]
    assert codec.articles(Fpdu(Kind.DTFDA, 1, 3, data=b"\x00\x01ab")) == [b"\x00\x01ab"]


def test_articles_that_do_not_add_up_are_refused() -> None:
    data = codec.multi_article([b"one"])
    with pytest.raises(
        codec.CodecError, match=exactly("multi-article DTF announces 2 articles, holds fewer")
    ):
        codec.articles(Fpdu(Kind.DTF, 1, 2, data=data))
    with pytest.raises(codec.CodecError) as caught:
        codec.articles(Fpdu(Kind.DTF, 1, 2, data=codec.multi_article([b"a", b"b"]) + b"z"))
    assert str(caught.value) == "multi-article DTF: article lengths do not add up to its size"
    assert caught.value.diagnostic == 319


# -- transport framing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nsdu_header", "message"),
    [(True, "transport entity of 3 bytes"), (False, "FPDU length 3 is shorter than its header")],
)
def test_a_length_under_the_header_size_is_refused_as_soon_as_it_is_read(
    nsdu_header: bool, message: str
) -> None:
    reader = codec.FrameReader(nsdu_header)
    with pytest.raises(codec.CodecError, match=exactly(message)) as caught:
        list(reader.feed(b"\x00\x03"))
    assert caught.value.diagnostic == 311


def test_a_header_cut_after_its_entity_length_waits_for_more() -> None:
    syn = codec.encode(Fpdu(Kind.SYN, 1, 0, (codec.number(PI.SYNC_NUMBER, 1),)))
    reader = codec.FrameReader(True)
    assert list(reader.feed(codec.frame(syn, True)[:3])) == []
    assert list(reader.feed(codec.frame(syn, True)[3:])) == [syn]
    assert reader.pending == 0


# -- pre-connection -------------------------------------------------------------------------


def test_pre_connection_names_are_eight_characters_at_most() -> None:
    assert codec.read_pre_connection(codec.pre_connection("ABCDEFGH", "12345678")) == (
        "PESIT",
        "ABCDEFGH",
        "12345678",
    )
    with pytest.raises(
        ValueError, match=exactly("pre-connection identifier is 9 characters, at most 8")
    ):
        codec.pre_connection("ABCDEFGHI", "x")
    with pytest.raises(
        ValueError, match=exactly("pre-connection password is 9 characters, at most 8")
    ):
        codec.pre_connection("x", "123456789")
    with pytest.raises(codec.CodecError, match=exactly("pre-connection of 23 bytes, 24 expected")):
        codec.read_pre_connection(b"\x40" * 23)
