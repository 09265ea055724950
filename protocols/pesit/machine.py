"""The PeSIT E session as a state machine, for both roles, without sockets or clocks.

Theory of operation
-------------------
A :class:`Machine` is one side of one PeSIT connection. The code that owns the socket does
three things with it and nothing else:

* ``machine.send(kind, params…)`` → bytes to write: the machine fills in the header's
  connection ids, checks that this FPDU may be sent now, moves to its next state and frames the
  bytes (with or without the 2-byte entity header, a per-peer setting);
* ``machine.receive_data(bytes)`` with whatever the socket read (``b""`` at end of stream);
* ``machine.next_event()`` → the next complete :class:`~protocols.pesit.codec.Fpdu` the peer
  sent (checked against the same table, which moves the state), or ``None`` until more bytes
  come.

Both roles share one transition table, keyed by *who sends* the FPDU: the requester drives
(CONNECT, CREATE/SELECT, ORF, WRITE/READ, TRANS.END, CRF, DESELECT, RELEASE), the server
answers, and data (DTF…, SYN, DTF.END) flows from whoever holds the file: the requester in a
write, the server in a read. A negative answer (an ACK with a PI 2 diagnostic) moves back to
the state before the request. ABORT ends everything from anywhere. Sync points are numbered
here too: a SYN must be the next number, an ACK(SYN) must acknowledge one that was sent, and
:attr:`Machine.window_full` tells the data sender to stop: while it holds, no data unit and no
SYN may be sent (a data unit or SYN received then is refused with diagnostic 217, too many
unacknowledged sync points).

Either side may interrupt a transfer with IDT (F.CANCEL), answered by ACK(IDT). Data units,
SYN, DTF.END, ACK(SYN) and TRANS.END the other side had already sent when the IDT crossed them
are let through in ``INTERRUPTING`` and tracked no further: the transfer they belong to is
over.

ACK(SYN) may reach a requester after it sent TRANS.END (the server answers the SYNs it read
before it reads the TRANS.END). The machine accepts it there; it is the adapter's business
never to take it for the answer to TRANS.END (:attr:`Fpdu.kind` says which it is).

A peer that breaks the table, the ids or the lengths raises :class:`RemoteProtocolError` with
the diagnostic to send back in an ABORT; our own misuse raises :class:`LocalProtocolError`.
Timers are the adapter's business (the machine never reads a clock).
"""

from __future__ import annotations

import enum

from protocols.pesit import codec
from protocols.pesit.codec import PI, Fpdu, Kind, Param


class Role(enum.Enum):
    REQUESTER = "requester"
    SERVER = "server"

    @property
    def other(self) -> Role:
        return Role.SERVER if self is Role.REQUESTER else Role.REQUESTER


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"  # CONNECT sent
    CONNECTED = "connected"
    SELECTING = "selecting"  # CREATE or SELECT sent
    SELECTED = "selected"
    DESELECTING = "deselecting"
    OPENING = "opening"  # ORF sent
    OPEN = "open"
    CLOSING = "closing"  # CRF sent
    STARTING_WRITE = "starting_write"
    WRITING = "writing"  # requester → server data
    STARTING_READ = "starting_read"
    READING = "reading"  # server → requester data
    DATA_ENDED = "data_ended"  # DTF.END seen
    ENDING = "ending"  # TRANS.END sent
    INTERRUPTING = "interrupting"  # IDT sent
    RELEASING = "releasing"
    CLOSED = "closed"


class LocalProtocolError(RuntimeError):
    """We tried to send an FPDU the session does not allow now (a bug in the caller)."""


class RemoteProtocolError(Exception):
    """The peer broke the protocol; ``diagnostic`` is the PeSIT reason for the ABORT."""

    def __init__(self, message: str, diagnostic: int = 311) -> None:
        super().__init__(message)
        self.diagnostic = diagnostic


S, R = Role.SERVER, Role.REQUESTER
_DATA_UNITS = (Kind.DTF, Kind.DTFDA, Kind.DTFMA, Kind.DTFFA, Kind.SYN)
#: what the other side may have sent before our IDT reached it
_CROSSING = frozenset({*_DATA_UNITS, Kind.DTF_END, Kind.ACK_SYN, Kind.TRANS_END})
_IN_TRANSFER = (State.WRITING, State.READING, State.DATA_ENDED)

TRANSITIONS: dict[tuple[State, Role, Kind], State] = {
    (State.IDLE, R, Kind.CONNECT): State.CONNECTING,
    (State.CONNECTING, S, Kind.ACONNECT): State.CONNECTED,
    (State.CONNECTING, S, Kind.RCONNECT): State.CLOSED,
    (State.CONNECTED, R, Kind.CREATE): State.SELECTING,
    (State.CONNECTED, R, Kind.SELECT): State.SELECTING,
    (State.SELECTING, S, Kind.ACK_CREATE): State.SELECTED,
    (State.SELECTING, S, Kind.ACK_SELECT): State.SELECTED,
    (State.CONNECTED, R, Kind.RELEASE): State.RELEASING,
    (State.RELEASING, S, Kind.RELCONF): State.CLOSED,
    (State.SELECTED, R, Kind.ORF): State.OPENING,
    (State.OPENING, S, Kind.ACK_ORF): State.OPEN,
    (State.SELECTED, R, Kind.DESELECT): State.DESELECTING,
    (State.DESELECTING, S, Kind.ACK_DESELECT): State.CONNECTED,
    (State.OPEN, R, Kind.WRITE): State.STARTING_WRITE,
    (State.STARTING_WRITE, S, Kind.ACK_WRITE): State.WRITING,
    (State.OPEN, R, Kind.READ): State.STARTING_READ,
    (State.STARTING_READ, S, Kind.ACK_READ): State.READING,
    (State.OPEN, R, Kind.CRF): State.CLOSING,
    (State.CLOSING, S, Kind.ACK_CRF): State.SELECTED,
    **{(State.WRITING, R, kind): State.WRITING for kind in _DATA_UNITS},
    (State.WRITING, S, Kind.ACK_SYN): State.WRITING,
    (State.WRITING, R, Kind.DTF_END): State.DATA_ENDED,
    **{(State.READING, S, kind): State.READING for kind in _DATA_UNITS},
    (State.READING, R, Kind.ACK_SYN): State.READING,
    (State.READING, S, Kind.DTF_END): State.DATA_ENDED,
    # acknowledgements of the last sync points may cross the DTF.END, and a write's the
    # TRANS.END (the server answers the SYNs it has read before it reads the TRANS.END)
    (State.DATA_ENDED, S, Kind.ACK_SYN): State.DATA_ENDED,
    (State.DATA_ENDED, R, Kind.ACK_SYN): State.DATA_ENDED,
    (State.ENDING, S, Kind.ACK_SYN): State.ENDING,
    (State.DATA_ENDED, R, Kind.TRANS_END): State.ENDING,
    (State.ENDING, S, Kind.ACK_TRANS_END): State.OPEN,
    **{(state, role, Kind.IDT): State.INTERRUPTING for state in _IN_TRANSFER for role in (R, S)},
    (State.ENDING, S, Kind.IDT): State.INTERRUPTING,  # crossed the TRANS.END
    (State.INTERRUPTING, R, Kind.ACK_IDT): State.OPEN,
    (State.INTERRUPTING, S, Kind.ACK_IDT): State.OPEN,
}

#: Where a refused request (ACK with a diagnostic) leaves the session.
REFUSED: dict[State, State] = {
    State.SELECTING: State.CONNECTED,
    State.OPENING: State.SELECTED,
    State.STARTING_WRITE: State.OPEN,
    State.STARTING_READ: State.OPEN,
    State.CLOSING: State.SELECTED,
    State.DESELECTING: State.CONNECTED,
    State.ENDING: State.OPEN,
}

_ACKS_WITH_DIAGNOSTIC = frozenset(
    {
        Kind.ACK_CREATE,
        Kind.ACK_SELECT,
        Kind.ACK_ORF,
        Kind.ACK_WRITE,
        Kind.ACK_READ,
        Kind.ACK_CRF,
        Kind.ACK_DESELECT,
        Kind.ACK_TRANS_END,
    }
)
_CONNECTION_PHASE = frozenset({Kind.CONNECT, Kind.ACONNECT, Kind.RELEASE, Kind.RELCONF})

MAX_SYNC = 999_999


class Machine:
    """One side of a PeSIT connection. ``connection_id``: our id in the headers (1..255)."""

    def __init__(self, role: Role, *, connection_id: int = 1, nsdu_header: bool = True) -> None:
        if not 1 <= connection_id <= 255:
            raise ValueError("a PeSIT connection id is 1..255")
        self.role = role
        self.state = State.IDLE
        self.own_id = connection_id
        self.peer_id = 0
        self.nsdu_header = nsdu_header
        self.entity_size = codec.MAX_FPDU
        self.window = 0  # sync points a data sender may leave unacknowledged (0: no acks)
        self.last_sync = 0  # last sync point sent (data sender) or received (data receiver)
        self.last_acked = 0
        self._reader = codec.FrameReader(nsdu_header)
        self._pending: list[bytes] = []
        self._eof = False

    # -- what the owner asks ----------------------------------------------------------------

    @property
    def window_full(self) -> bool:
        return self.window > 0 and self.last_sync - self.last_acked >= self.window

    def send(self, kind: Kind, *params: Param | None, data: bytes = b"", count: int = 0) -> bytes:
        """Bytes for one FPDU from us. ``count``: articles in a multi-article DTF (> 1).

        Raises:
            LocalProtocolError: the session does not allow ``kind`` now.
        """
        present = tuple(sorted((p for p in params if p is not None), key=lambda p: p.code))
        fpdu = Fpdu(kind, *self._ids(kind, count), params=present, data=data)
        self._advance(fpdu, self.role, LocalProtocolError)
        return codec.frame(codec.encode(fpdu), self.nsdu_header)

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        try:
            self._pending.extend(self._reader.feed(data))
        except codec.CodecError as exc:
            raise RemoteProtocolError(str(exc), exc.diagnostic) from None

    def next_event(self) -> Fpdu | None:
        """The peer's next FPDU, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: malformed, out of order, wrong ids, or the stream ended inside
                an FPDU.
        """
        if not self._pending:
            if self._eof and self._reader.pending:
                raise RemoteProtocolError("connection closed in the middle of an FPDU")
            return None
        raw = self._pending.pop(0)
        try:
            fpdu = codec.decode(raw)
        except codec.CodecError as exc:
            raise RemoteProtocolError(str(exc), exc.diagnostic) from None
        if len(raw) > self.entity_size and fpdu.kind.carries_data:
            raise RemoteProtocolError(
                f"{fpdu.kind.name} of {len(raw)} bytes exceeds the entity size {self.entity_size}",
                311,
            )
        self._check_ids(fpdu)
        self._advance(fpdu, self.role.other, RemoteProtocolError)
        return fpdu

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._pending

    # -- internals --------------------------------------------------------------------------

    def _ids(self, kind: Kind, count: int) -> tuple[int, int]:
        if kind is Kind.CONNECT:
            return 0, self.own_id
        if kind is Kind.RCONNECT:
            return self.peer_id, 0
        if kind in _CONNECTION_PHASE or kind is Kind.ABORT:
            return self.peer_id, self.own_id
        if kind is Kind.DTF and count > 1:
            return self.peer_id, count
        return self.peer_id, 0

    def _check_ids(self, fpdu: Fpdu) -> None:
        if fpdu.kind is Kind.CONNECT:
            if fpdu.src == 0:
                raise RemoteProtocolError("CONNECT without a requester connection id", 318)
            self.peer_id = fpdu.src
            return
        if fpdu.kind is Kind.ACONNECT:
            if fpdu.src == 0:
                raise RemoteProtocolError("ACONNECT without a server connection id", 318)
            self.peer_id = fpdu.src
        if fpdu.kind is Kind.ABORT and fpdu.dst == 0:
            return  # sent before our id was known
        if fpdu.dst != self.own_id:
            raise RemoteProtocolError(
                f"{fpdu.kind.name} addressed to connection {fpdu.dst}, we are {self.own_id}", 311
            )

    def _advance(self, fpdu: Fpdu, sender: Role, error: type[Exception]) -> None:
        kind = fpdu.kind
        if kind is Kind.ABORT:
            self.state = State.CLOSED
            return
        if self.state is State.INTERRUPTING and kind in _CROSSING and sender is not self.role:
            return  # it crossed the IDT: part of a transfer that is over
        following = TRANSITIONS.get((self.state, sender, kind))
        if following is None:
            raise error(
                f"{kind.name} from the {sender.value} is not allowed in state {self.state.value}"
            )
        if kind in _ACKS_WITH_DIAGNOSTIC:
            if fpdu.get(PI.DIAGNOSTIC) is None:
                raise error(f"{kind.name} without its diagnostic (PI 2)")
            if fpdu.diagnostic:
                self.state = REFUSED[self.state]
                return
        self._track(fpdu, sender, error)
        self.state = following

    def _track(self, fpdu: Fpdu, sender: Role, error: type[Exception]) -> None:
        kind = fpdu.kind
        if kind in (Kind.ACK_CREATE, Kind.ACK_SELECT, Kind.CREATE, Kind.SELECT):
            size = fpdu.number(PI.ENTITY_SIZE)
            if size is not None:
                self.entity_size = size
        elif kind is Kind.ACK_WRITE or kind is Kind.READ:
            start = fpdu.number(PI.RESTART_POINT, 0) or 0
            self.last_sync = self.last_acked = start
        elif kind in _DATA_UNITS:
            if self.window_full:
                what = (
                    f"{kind.name} {fpdu.number(PI.SYNC_NUMBER)}" if kind is Kind.SYN else kind.name
                )
                message = (
                    f"{what} after sync point {self.last_sync} while {self.window} sync points "
                    "await acknowledgement (the window is full)"
                )
                if error is RemoteProtocolError:
                    raise RemoteProtocolError(message, 217)
                raise error(message)
            if kind is Kind.SYN:
                number = fpdu.number(PI.SYNC_NUMBER)
                if number != self.last_sync + 1 or number > MAX_SYNC:
                    raise error(f"SYN {number} after sync point {self.last_sync}")
                self.last_sync = number
        elif kind is Kind.ACK_SYN:
            number = fpdu.number(PI.SYNC_NUMBER)
            if number is None or not self.last_acked < number <= self.last_sync:
                raise error(
                    f"ACK(SYN) {number} when sync points {self.last_acked + 1}.."
                    f"{self.last_sync} await acknowledgement"
                )
            self.last_acked = number
