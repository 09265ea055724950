"""Byte-exact FPDUs from public sources: an IBM Connect:Express capture and the constructed
CONNECT example, both ways (encode gives the bytes, decode gives the parameters back)."""

from __future__ import annotations

import pytest

from protocols.pesit import codec
from protocols.pesit.codec import PI, Fpdu, Kind, Param

CX_CONNECT = bytes.fromhex(
    "002f 4020 0062 0308"
    + b"CXCLIENT".hex()
    + "0408"
    + b"PESITSRV".hex()
    + "0508"
    + b"test123 ".hex()
    + "060102 0703002002 160102"
)
CONSTRUCTED_CONNECT = bytes.fromhex(
    "0029 4020 0001 0306 4d5950415254 0406 43484f525553 0506 534543524554 060102 0703002002 160100"
)


def test_connect_express_connect_byte_for_byte() -> None:
    fpdu = Fpdu(
        Kind.CONNECT,
        dst=0,
        src=0x62,
        params=(
            codec.text(PI.REQUESTER, "CXCLIENT"),
            codec.text(PI.SERVER, "PESITSRV"),
            codec.text(PI.ACCESS_CONTROL, "test123 "),
            codec.number(PI.VERSION, 2),
            codec.sync_options(32, 2),
            codec.number(PI.ACCESS_TYPE, 2),
        ),
    )
    assert codec.encode(fpdu) == CX_CONNECT
    back = codec.decode(CX_CONNECT)
    assert back == fpdu
    assert back.text(PI.REQUESTER) == "CXCLIENT"
    assert back.text(PI.ACCESS_CONTROL) == "test123"  # trailing blanks are not significant
    assert codec.decode_sync_options(back.get(PI.SYNC_OPTIONS).value) == (32, 2)  # type: ignore[union-attr]  # present: asserted by the equality above


def test_constructed_connect_with_the_nsdu_header() -> None:
    fpdu = Fpdu(
        Kind.CONNECT,
        src=1,
        params=(
            codec.text(PI.REQUESTER, "MYPART"),
            codec.text(PI.SERVER, "CHORUS"),
            codec.text(PI.ACCESS_CONTROL, "SECRET"),
            codec.number(PI.VERSION, 2),
            codec.sync_options(32, 2),
            codec.number(PI.ACCESS_TYPE, 0),
        ),
    )
    encoded = codec.encode(fpdu)
    assert encoded == CONSTRUCTED_CONNECT
    assert codec.frame(encoded, nsdu_header=True) == bytes.fromhex("0029") + encoded
    assert codec.frame(encoded, nsdu_header=False) == encoded


@pytest.mark.parametrize(
    ("fpdu", "wire"),
    [
        (
            Fpdu(Kind.ACONNECT, 0x62, 0xE2, (codec.number(6, 2), codec.sync_options(32, 2))),
            "000e 4021 62e2 060102 0703002002",
        ),
        (Fpdu(Kind.ORF, 0xE2, 0, (codec.raw(PI.COMPRESSION, b"\0\0"),)), "000a c014 e200 15020000"),
        (Fpdu(Kind.WRITE, 0xE2, 0), "0006 c002 e200"),
        (Fpdu(Kind.SYN, 0xE2, 0, (codec.number(PI.SYNC_NUMBER, 1),)), "0009 c003 e200 140101"),
        (Fpdu(Kind.ACK_SYN, 0x62, 0, (codec.number(PI.SYNC_NUMBER, 1),)), "0009 c038 6200 140101"),
        (Fpdu(Kind.DTF_END, 0xE2, 0, (codec.diagnostic(0),)), "000b c004 e200 0203000000"),
        (
            Fpdu(
                Kind.TRANS_END,
                0xE2,
                0,
                (codec.number(PI.BYTE_COUNT, 0x100000, 8), codec.number(PI.ARTICLE_COUNT, 1024)),
            ),
            "000f c008 e200 1b03100000 1c020400",
        ),
        (Fpdu(Kind.RELEASE, 0xE2, 0x62, (codec.diagnostic(0),)), "000b 4023 e262 0203000000"),
        (Fpdu(Kind.RELCONF, 0x62, 0xE2), "0006 4024 62e2"),
    ],
    ids=lambda value: value.kind.name if isinstance(value, Fpdu) else "",
)
def test_captured_fpdus(fpdu: Fpdu, wire: str) -> None:
    assert codec.encode(fpdu).hex() == wire.replace(" ", "")
    assert codec.decode(bytes.fromhex(wire)) == fpdu


def test_numbers_lose_their_leading_zero_bytes_but_keep_one() -> None:
    assert codec.number(PI.RESTART_POINT, 0).value == b"\0"
    assert codec.number(PI.TRANSFER_ID, 0x24C9, 3).value == b"\x24\xc9"
    with pytest.raises(ValueError, match="does not fit"):
        codec.number(PI.TRANSFER_ID, 1 << 24, 3)


def test_a_fixed_width_number_from_a_peer_is_read_too() -> None:
    # C:X sends PI 13 on three bytes (00 24 c9)
    fpdu = codec.decode(bytes.fromhex("000b c030 e200 0d030024c9"))
    assert fpdu.number(PI.TRANSFER_ID) == 0x24C9


def test_three_byte_lengths_and_groups() -> None:
    label = "x" * 300
    fpdu = Fpdu(
        Kind.CREATE,
        1,
        0,
        (
            codec.group(PI.FILE_ID, codec.text(PI.FILE_NAME, "FSO1100A"), codec.number(11, 0)),
            codec.number(PI.TRANSFER_ID, 7, 3),
            codec.group(PI.LOGICAL_ATTRIBUTES, codec.text(PI.FILE_LABEL, label)),
        ),
    )
    wire = codec.encode(fpdu)
    # PGI 9 holds PI 11 then PI 12 (sorted), PI 37 has an FF length
    assert wire[6:10] == bytes([9, 13, 11, 1])
    assert bytes([37, 0xFF, 0x01, 0x2C]) in wire
    back = codec.decode(wire)
    assert back.text(PI.FILE_NAME) == "FSO1100A"
    assert back.text(PI.FILE_LABEL) == label
    assert back == Fpdu(fpdu.kind, 1, 0, fpdu.params)


def test_diagnostics_carry_the_whole_reason() -> None:
    assert codec.diagnostic(301).value == bytes.fromhex("03012d")
    assert codec.decode_diagnostic(bytes.fromhex("03012d")) == 301
    assert codec.decode_diagnostic(bytes.fromhex("020005")) == 205  # the other reading
    assert Fpdu(Kind.ABORT, params=(codec.diagnostic(0),)).diagnostic == 0


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        ("0008 c030 e200 0200", "length 0"),  # LI = 0
        ("000e c030 e200 0d0101 0203000000", "after PI 13"),  # out of order
        ("000e c030 e200 0d0101 0d0101 0000", "appears twice"),
        ("0009 c0ff e200 020300", "unknown FPDU type"),
        ("0006 4002 e200", "phase byte"),
        ("000b c030 e200 0205000000", "announces 5 bytes"),
        ("0009 c030 e200", "says 9 bytes"),
    ],
)
def test_malformed_fpdus_are_refused(wire: str, message: str) -> None:
    with pytest.raises(codec.CodecError, match=message):
        codec.decode(bytes.fromhex(wire.replace(" ", "")))


def test_an_empty_parameter_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="LI = 0"):
        codec.encode(Fpdu(Kind.MSG, params=(Param(PI.MESSAGE, b""),)))
    with pytest.raises(ValueError, match="ascending"):
        codec.encode(Fpdu(Kind.MSG, params=(codec.number(13, 1), codec.number(12, 1))))


def test_frame_reader_cuts_entities_and_concatenated_fpdus_at_any_boundary() -> None:
    syn = codec.encode(Fpdu(Kind.SYN, 1, 0, (codec.number(PI.SYNC_NUMBER, 1),)))
    dtf = codec.encode(Fpdu(Kind.DTF, 1, 0, data=b"abc"))
    entity = len(dtf + syn).to_bytes(2, "big") + dtf + syn  # two FPDUs in one entity
    stream = entity + codec.frame(dtf, True)
    for cut in range(len(stream) + 1):
        reader = codec.FrameReader(nsdu_header=True)
        got = list(reader.feed(stream[:cut])) + list(reader.feed(stream[cut:]))
        assert got == [dtf, syn, dtf], cut
    bare = codec.FrameReader(nsdu_header=False)
    assert list(bare.feed(dtf + syn)) == [dtf, syn]


def test_frame_reader_refuses_an_fpdu_longer_than_its_entity() -> None:
    dtf = codec.encode(Fpdu(Kind.DTF, 1, 0, data=b"abcdef"))
    with pytest.raises(codec.CodecError, match="entity"):
        list(codec.FrameReader(True).feed((len(dtf) - 2).to_bytes(2, "big") + dtf))


def test_multi_article_dtf() -> None:
    data = codec.multi_article([b"one", b"", b"three"])
    assert codec.articles(Fpdu(Kind.DTF, 1, 3, data=data)) == [b"one", b"", b"three"]
    assert codec.articles(Fpdu(Kind.DTF, 1, 0, data=b"whole")) == [b"whole"]
    with pytest.raises(codec.CodecError):
        codec.articles(Fpdu(Kind.DTF, 1, 2, data=data))


def test_pre_connection_is_ebcdic() -> None:
    wire = codec.pre_connection("MYPART", "SECRET")
    assert wire[:8] == bytes.fromhex("d7c5e2c9e3404040")
    assert len(wire) == 24
    assert codec.read_pre_connection(wire) == ("PESIT", "MYPART", "SECRET")
    assert bytes.fromhex("c1c3d2f0") == codec.PRE_ACK
    assert bytes.fromhex("d5c1d2f0") == codec.PRE_NAK
    with pytest.raises(ValueError, match="at most 8"):
        codec.pre_connection("A-VERY-LONG-ID", "x")
