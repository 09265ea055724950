"""PeSIT E wire format: FPDUs, their parameters, and the transport framing. Bytes only.

An FPDU is a 6-byte header and a content::

    length:2  phase:1  type:1  id_dst:1  id_src:1  │ PI/PGI units…  (or data, for DTFs)

``length`` counts the whole FPDU; ``phase`` follows from the type (0x40 connection, 0x00 data,
0xC0 the rest). A parameter unit is ``code:1 LI value`` and a group (PGI) ``code:1 LI units…``;
LI is one byte for 1..254 and ``FF`` + two bytes up to 65535, and never 0. Units go in
ascending order of their code, each at most once. Numbers are big-endian with their leading
zero bytes stripped (at least one byte). Aggregates (PI 2, 7, 21) keep their fixed width.

Over TCP, peers differ on one point: most put a 2-byte length before each transport entity
(holding one or more FPDUs), some send bare FPDUs. :class:`FrameReader` and :func:`frame` take
that as a flag. The optional *pre-connection* (24 EBCDIC bytes, answered ``ACK0``/``NAK0``) is
encoded here too. The protocol facts relied on: ``docs/pesit.md``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

HEADER = 6
MAX_FPDU = 65535


class CodecError(ValueError):
    """Bytes that are no valid FPDU (``diagnostic``: the PeSIT reason to give the peer)."""

    def __init__(self, message: str, diagnostic: int = 311) -> None:
        super().__init__(message)
        self.diagnostic = diagnostic


class Kind(enum.IntEnum):
    """FPDU types (spec annex E)."""

    DTF = 0x00
    READ = 0x01
    WRITE = 0x02
    SYN = 0x03
    DTF_END = 0x04
    RESYN = 0x05
    IDT = 0x06
    TRANS_END = 0x08
    CREATE = 0x11
    SELECT = 0x12
    DESELECT = 0x13
    ORF = 0x14
    CRF = 0x15
    MSG = 0x16
    MSGDM = 0x17
    MSGMM = 0x18
    MSGFM = 0x19
    CONNECT = 0x20
    ACONNECT = 0x21
    RCONNECT = 0x22
    RELEASE = 0x23
    RELCONF = 0x24
    ABORT = 0x25
    ACK_CREATE = 0x30
    ACK_SELECT = 0x31
    ACK_DESELECT = 0x32
    ACK_ORF = 0x33
    ACK_CRF = 0x34
    ACK_READ = 0x35
    ACK_WRITE = 0x36
    ACK_TRANS_END = 0x37
    ACK_SYN = 0x38
    ACK_RESYN = 0x39
    ACK_IDT = 0x3A
    ACK_MSG = 0x3B
    DTFMA = 0x40
    DTFDA = 0x41
    DTFFA = 0x42

    @property
    def phase(self) -> int:
        if self in _DATA:
            return 0x00
        if Kind.CONNECT <= self <= Kind.ABORT:
            return 0x40
        return 0xC0

    @property
    def carries_data(self) -> bool:
        return self in _DATA


_DATA = frozenset({Kind.DTF, Kind.DTFMA, Kind.DTFDA, Kind.DTFFA})


class PI(enum.IntEnum):
    """The parameter (and group) codes raccord uses, by their spec numbers."""

    CRC = 1
    DIAGNOSTIC = 2
    REQUESTER = 3
    SERVER = 4
    ACCESS_CONTROL = 5
    VERSION = 6
    SYNC_OPTIONS = 7
    FILE_ID = 9  # PGI {3, 4, 11, 12}
    FILE_TYPE = 11
    FILE_NAME = 12
    TRANSFER_ID = 13
    REQUESTED_ATTRIBUTES = 14
    RESTARTED = 15
    DATA_CODE = 16
    PRIORITY = 17
    RESTART_POINT = 18
    END_CODE = 19
    SYNC_NUMBER = 20
    COMPRESSION = 21
    ACCESS_TYPE = 22
    RESYNC = 23
    ENTITY_SIZE = 25
    BYTE_COUNT = 27
    ARTICLE_COUNT = 28
    DIAGNOSTIC_MORE = 29
    LOGICAL_ATTRIBUTES = 30  # PGI {31, 32, 33, …}
    ARTICLE_FORMAT = 31
    ARTICLE_LENGTH = 32
    ORGANISATION = 33
    FILE_LABEL = 37
    PHYSICAL_ATTRIBUTES = 40  # PGI {41, 42}
    RESERVATION_UNIT = 41
    RESERVATION_MAX = 42
    HISTORICAL_ATTRIBUTES = 50  # PGI {51, 52}
    CREATED = 51
    CLIENT_ID = 61
    BANK_ID = 62
    MESSAGE = 91
    FREE_MESSAGE = 99


GROUPS = frozenset(
    {PI.FILE_ID, PI.LOGICAL_ATTRIBUTES, PI.PHYSICAL_ATTRIBUTES, PI.HISTORICAL_ATTRIBUTES}
)


@dataclass(frozen=True)
class Param:
    """One PI (``value`` bytes) or PGI (``members``)."""

    code: int
    value: bytes = b""
    members: tuple[Param, ...] = ()

    @property
    def is_group(self) -> bool:
        return self.code in GROUPS


@dataclass(frozen=True)
class Fpdu:
    kind: Kind
    dst: int = 0
    src: int = 0
    params: tuple[Param, ...] = ()
    data: bytes = b""  # DTF content (articles as the peer framed them)

    def get(self, code: int) -> Param | None:
        """The parameter ``code``, looked for in the groups too."""
        for param in self.params:
            if param.code == code:
                return param
            for member in param.members:
                if member.code == code:
                    return member
        return None

    def number(self, code: int, default: int | None = None) -> int | None:
        param = self.get(code)
        return default if param is None else int.from_bytes(param.value, "big")

    def text(self, code: int, default: str | None = None) -> str | None:
        param = self.get(code)
        return default if param is None else param.value.decode("ascii", "replace").rstrip(" ")

    @property
    def diagnostic(self) -> int:
        """PI 2 as the 3-digit reason (0 when absent or success)."""
        param = self.get(PI.DIAGNOSTIC)
        return 0 if param is None else decode_diagnostic(param.value)


# -- parameter values ---------------------------------------------------------------------


def number(code: int, value: int, width: int = 4) -> Param:
    """A numeric or symbolic PI: big-endian, leading zero bytes stripped (≥ 1 byte)."""
    if value < 0 or value >= 1 << (8 * width):
        raise ValueError(f"PI {code}: {value} does not fit in {width} bytes")
    raw = value.to_bytes(width, "big").lstrip(b"\0") or b"\0"
    return Param(code, raw)


def text(code: int, value: str) -> Param:
    return Param(code, value.encode("ascii"))


def raw(code: int, value: bytes) -> Param:
    return Param(code, value)


def group(code: int, *members: Param | None) -> Param:
    present = tuple(sorted((m for m in members if m is not None), key=lambda m: m.code))
    return Param(code, members=present)


def diagnostic(reason: int = 0) -> Param:
    """PI 2 for a 3-digit reason (0 = success, 301 = requester unknown…): type then reason,
    the full number in the two reason bytes (``03 01 2d`` for 301)."""
    return Param(PI.DIAGNOSTIC, bytes([reason // 100]) + reason.to_bytes(2, "big"))


def decode_diagnostic(value: bytes) -> int:
    if len(value) != 3:
        raise CodecError(f"PI 2 must be 3 bytes, got {value.hex(' ')}", 318)
    reason = int.from_bytes(value[1:], "big")
    if reason < 100 and value[0]:  # a peer writing only the last two digits
        reason += 100 * value[0]
    return reason


def sync_options(interval_kb: int, window: int) -> Param:
    return Param(PI.SYNC_OPTIONS, interval_kb.to_bytes(2, "big") + bytes([window]))


def decode_sync_options(value: bytes) -> tuple[int, int]:
    if len(value) != 3:
        raise CodecError(f"PI 7 must be 3 bytes, got {value.hex(' ')}", 318)
    return int.from_bytes(value[:2], "big"), value[2]


# -- FPDUs ----------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n == 0:
        raise ValueError("a PeSIT parameter cannot be empty (LI = 0 is refused)")
    if n < 255:
        return bytes([n])
    if n > 0xFFFF:
        raise ValueError(f"a PeSIT parameter cannot hold {n} bytes")
    return b"\xff" + n.to_bytes(2, "big")


def _units(params: Iterable[Param]) -> bytes:
    out = bytearray()
    last = -1
    for param in params:
        if param.code <= last:
            raise ValueError(f"PI {param.code} after PI {last}: parameters go in ascending order")
        last = param.code
        body = _units(param.members) if param.is_group else param.value
        out += bytes([param.code]) + _length(len(body)) + body
    return bytes(out)


def encode(fpdu: Fpdu) -> bytes:
    """The FPDU's bytes (header included)."""
    content = fpdu.data if fpdu.kind.carries_data else _units(fpdu.params)
    total = HEADER + len(content)
    if total > MAX_FPDU:
        raise ValueError(f"{fpdu.kind.name} of {total} bytes exceeds {MAX_FPDU}")
    header = total.to_bytes(2, "big") + bytes([fpdu.kind.phase, fpdu.kind, fpdu.dst, fpdu.src])
    return header + content


def _parse_units(content: bytes, *, nested: bool = False) -> tuple[Param, ...]:
    params: list[Param] = []
    at, last = 0, -1
    while at < len(content):
        if at + 2 > len(content):
            raise CodecError(f"parameter unit cut short at byte {at}")
        code, size = content[at], content[at + 1]
        at += 2
        if size == 0xFF:
            if at + 2 > len(content):
                raise CodecError(f"PI {code}: 3-byte length cut short")
            size = int.from_bytes(content[at : at + 2], "big")
            at += 2
        if size == 0:
            raise CodecError(f"PI {code} has length 0, which PeSIT forbids", 318)
        if at + size > len(content):
            raise CodecError(f"PI {code} announces {size} bytes, {len(content) - at} remain")
        body = content[at : at + size]
        at += size
        if code <= last:
            what = "appears twice" if code == last else f"comes after PI {last}"
            raise CodecError(f"PI {code} {what}: parameters go once, in ascending order", 318)
        last = code
        if code in GROUPS and not nested:
            params.append(Param(code, members=_parse_units(body, nested=True)))
        else:
            params.append(Param(code, body))
    return tuple(params)


def decode(raw_fpdu: bytes) -> Fpdu:
    """One whole FPDU (as :class:`FrameReader` cuts them).

    Raises:
        CodecError: unknown type, wrong phase byte, bad lengths, parameters out of order.
    """
    if len(raw_fpdu) < HEADER:
        raise CodecError(f"FPDU of {len(raw_fpdu)} bytes is shorter than its header")
    length = int.from_bytes(raw_fpdu[:2], "big")
    if length != len(raw_fpdu):
        raise CodecError(f"FPDU says {length} bytes, got {len(raw_fpdu)}")
    try:
        kind = Kind(raw_fpdu[3])
    except ValueError:
        raise CodecError(f"unknown FPDU type 0x{raw_fpdu[3]:02x}") from None
    if raw_fpdu[2] != kind.phase:
        raise CodecError(f"{kind.name} with phase byte 0x{raw_fpdu[2]:02x}")
    content = raw_fpdu[HEADER:]
    if kind.carries_data:
        return Fpdu(kind, raw_fpdu[4], raw_fpdu[5], data=bytes(content))
    return Fpdu(kind, raw_fpdu[4], raw_fpdu[5], params=_parse_units(content))


def articles(fpdu: Fpdu) -> list[bytes]:
    """The articles of a DTF: one (ID.SRC 0 or 1), or N length-prefixed ones (ID.SRC = N)."""
    if fpdu.kind is not Kind.DTF or fpdu.src <= 1:
        return [fpdu.data]
    found: list[bytes] = []
    at = 0
    for _ in range(fpdu.src):
        if at + 2 > len(fpdu.data):
            raise CodecError(f"multi-article DTF announces {fpdu.src} articles, holds fewer")
        size = int.from_bytes(fpdu.data[at : at + 2], "big")
        found.append(fpdu.data[at + 2 : at + 2 + size])
        at += 2 + size
    if at != len(fpdu.data):
        raise CodecError("multi-article DTF: article lengths do not add up to its size", 319)
    return found


def multi_article(chunks: list[bytes]) -> bytes:
    return b"".join(len(c).to_bytes(2, "big") + c for c in chunks)


# -- transport framing ----------------------------------------------------------------------


def frame(fpdu_bytes: bytes, nsdu_header: bool) -> bytes:
    """One transport entity holding one FPDU."""
    return len(fpdu_bytes).to_bytes(2, "big") + fpdu_bytes if nsdu_header else fpdu_bytes


@dataclass
class FrameReader:
    """Cuts a byte stream into FPDUs, with or without the 2-byte entity header."""

    nsdu_header: bool
    _buffer: bytearray = field(default_factory=bytearray)
    _entity_left: int = 0  # bytes of the current entity still to cut into FPDUs

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while True:
            if self.nsdu_header and self._entity_left == 0:
                if len(self._buffer) < 2:
                    return
                self._entity_left = int.from_bytes(self._buffer[:2], "big")
                del self._buffer[:2]
                if self._entity_left < HEADER:
                    raise CodecError(f"transport entity of {self._entity_left} bytes")
            if len(self._buffer) < 2:
                return
            length = int.from_bytes(self._buffer[:2], "big")
            if length < HEADER:
                raise CodecError(f"FPDU length {length} is shorter than its header")
            if self.nsdu_header and length > self._entity_left:
                raise CodecError(
                    f"FPDU of {length} bytes in an entity with {self._entity_left} left"
                )
            if len(self._buffer) < length:
                return
            fpdu = bytes(self._buffer[:length])
            del self._buffer[:length]
            if self.nsdu_header:
                self._entity_left -= length
            yield fpdu

    @property
    def pending(self) -> int:
        return len(self._buffer)


# -- pre-connection (EBCDIC, outside PeSIT proper) ------------------------------------------

PRE_ACK = "ACK0".encode("cp500")
PRE_NAK = "NAK0".encode("cp500")


def pre_connection(identifier: str, password: str) -> bytes:
    """The 24 bytes: ``PESIT`` padded to 8, identifier and password padded to 8, in EBCDIC."""
    for name, value in (("identifier", identifier), ("password", password)):
        if len(value) > 8:
            raise ValueError(f"pre-connection {name} is {len(value)} characters, at most 8")
    return ("PESIT".ljust(8) + identifier.ljust(8) + password.ljust(8)).encode("cp500")


def read_pre_connection(data: bytes) -> tuple[str, str, str]:
    if len(data) != 24:
        raise CodecError(f"pre-connection of {len(data)} bytes, 24 expected")
    text_ = data.decode("cp500")
    return text_[:8].rstrip(), text_[8:16].rstrip(), text_[16:].rstrip()
