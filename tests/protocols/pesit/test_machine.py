"""The PeSIT state machine: a requester and a server machine paired in memory."""

from __future__ import annotations

import pytest

from protocols.pesit import codec
from protocols.pesit.codec import PI, Fpdu, Kind, Param
from protocols.pesit.machine import (
    LocalProtocolError,
    Machine,
    RemoteProtocolError,
    Role,
    State,
)


class Pair:
    def __init__(self, nsdu_header: bool = True) -> None:
        self.requester = Machine(Role.REQUESTER, connection_id=5, nsdu_header=nsdu_header)
        self.server = Machine(Role.SERVER, connection_id=9, nsdu_header=nsdu_header)

    def to_server(self, kind: Kind, *params: Param, data: bytes = b"", count: int = 0) -> Fpdu:
        return _deliver(self.requester.send(kind, *params, data=data, count=count), self.server)

    def to_requester(self, kind: Kind, *params: Param) -> Fpdu:
        return _deliver(self.server.send(kind, *params), self.requester)


def _deliver(wire: bytes, to: Machine) -> Fpdu:
    to.receive_data(wire)
    fpdu = to.next_event()
    assert fpdu is not None
    assert to.next_event() is None
    return fpdu


OK = codec.diagnostic(0)


def _connect(pair: Pair) -> None:
    connect = pair.to_server(
        Kind.CONNECT,
        codec.text(PI.REQUESTER, "ME"),
        codec.text(PI.SERVER, "YOU"),
        codec.number(PI.VERSION, 2),
        codec.number(PI.ACCESS_TYPE, 0),
    )
    assert (connect.dst, connect.src) == (0, 5)
    accept = pair.to_requester(Kind.ACONNECT, codec.number(PI.VERSION, 2))
    assert (accept.dst, accept.src) == (5, 9)
    assert pair.requester.state is pair.server.state is State.CONNECTED


def _open_for_write(pair: Pair, restart_point: int = 0) -> None:
    pair.to_server(
        Kind.CREATE,
        codec.group(PI.FILE_ID, codec.text(PI.FILE_NAME, "F")),
        codec.number(PI.TRANSFER_ID, 1),
        codec.number(PI.ENTITY_SIZE, 4096),
    )
    pair.to_requester(Kind.ACK_CREATE, OK, codec.number(PI.ENTITY_SIZE, 1024))
    assert pair.requester.entity_size == pair.server.entity_size == 1024
    pair.to_server(Kind.ORF)
    pair.to_requester(Kind.ACK_ORF, OK)
    pair.to_server(Kind.WRITE)
    pair.to_requester(Kind.ACK_WRITE, OK, codec.number(PI.RESTART_POINT, restart_point))


def test_a_whole_write_walks_both_machines_through_the_same_states() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair)
    for number in (1, 2):
        dtf = pair.to_server(Kind.DTF, data=b"x" * 100)
        assert (dtf.dst, dtf.src) == (9, 0)
        pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, number))
        pair.to_requester(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, number))
    pair.to_server(Kind.DTF_END, OK)
    pair.to_server(Kind.TRANS_END, codec.number(PI.BYTE_COUNT, 200, 8))
    pair.to_requester(Kind.ACK_TRANS_END, OK)
    pair.to_server(Kind.CRF, OK)
    pair.to_requester(Kind.ACK_CRF, OK)
    pair.to_server(Kind.DESELECT, OK)
    pair.to_requester(Kind.ACK_DESELECT, OK)
    release = pair.to_server(Kind.RELEASE, OK)
    assert (release.dst, release.src) == (9, 5)
    pair.to_requester(Kind.RELCONF)
    assert pair.requester.state is pair.server.state is State.CLOSED


def test_a_read_sends_data_the_other_way() -> None:
    pair = Pair(nsdu_header=False)
    _connect(pair)
    pair.to_server(Kind.SELECT, codec.group(PI.FILE_ID, codec.text(PI.FILE_NAME, "R")))
    pair.to_requester(Kind.ACK_SELECT, OK, codec.number(PI.TRANSFER_ID, 3))
    pair.to_server(Kind.ORF)
    pair.to_requester(Kind.ACK_ORF, OK)
    pair.to_server(Kind.READ, codec.number(PI.RESTART_POINT, 0))
    pair.to_requester(Kind.ACK_READ, OK)
    with pytest.raises(LocalProtocolError, match="DTF from the requester"):
        pair.requester.send(Kind.DTF, data=b"no")
    _deliver(pair.server.send(Kind.DTF, data=b"yes"), pair.requester)
    pair.to_requester(Kind.DTF_END, OK)
    pair.to_server(Kind.TRANS_END)
    pair.to_requester(Kind.ACK_TRANS_END, OK)
    assert pair.requester.state is State.OPEN


def test_a_refused_request_goes_back_one_step() -> None:
    pair = Pair()
    _connect(pair)
    pair.to_server(Kind.CREATE, codec.number(PI.TRANSFER_ID, 1))
    refusal = pair.to_requester(Kind.ACK_CREATE, codec.diagnostic(204))
    assert refusal.diagnostic == 204
    assert pair.requester.state is pair.server.state is State.CONNECTED


def test_an_ack_without_its_diagnostic_is_a_protocol_error() -> None:
    pair = Pair()
    _connect(pair)
    pair.to_server(Kind.CREATE, codec.number(PI.TRANSFER_ID, 1))
    wire = codec.frame(codec.encode(Fpdu(Kind.ACK_CREATE, 5, 0)), True)
    pair.requester.receive_data(wire)
    with pytest.raises(RemoteProtocolError, match="diagnostic"):
        pair.requester.next_event()


def test_an_fpdu_out_of_order_is_refused_with_its_name_and_the_state() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError, match="CREATE from the requester is not allowed in"):
        pair.requester.send(Kind.CREATE)
    server = Machine(Role.SERVER)
    server.receive_data(codec.frame(codec.encode(Fpdu(Kind.WRITE, 1, 0)), True))
    with pytest.raises(RemoteProtocolError, match=r"WRITE .* state idle"):
        server.next_event()


def test_wrong_connection_id_is_refused() -> None:
    pair = Pair()
    _connect(pair)
    pair.server.receive_data(codec.frame(codec.encode(Fpdu(Kind.CREATE, 7, 0)), True))
    with pytest.raises(RemoteProtocolError, match="addressed to connection 7"):
        pair.server.next_event()


def test_sync_points_are_numbered_and_the_window_is_honoured() -> None:
    pair = Pair()
    _connect(pair)
    pair.requester.window = pair.server.window = 2
    _open_for_write(pair)
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 1))
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 2))
    assert pair.requester.window_full
    with pytest.raises(LocalProtocolError, match="await acknowledgement"):
        pair.requester.send(Kind.SYN, codec.number(PI.SYNC_NUMBER, 3))
    pair.to_requester(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, 2))  # acknowledges 1 and 2
    assert not pair.requester.window_full
    with pytest.raises(LocalProtocolError, match="ACK\\(SYN\\) 3"):
        pair.server.send(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, 3))
    skipped = codec.frame(
        codec.encode(Fpdu(Kind.SYN, 9, 0, (codec.number(PI.SYNC_NUMBER, 5),))), True
    )
    pair.server.receive_data(skipped)
    with pytest.raises(RemoteProtocolError, match="SYN 5 after sync point 2"):
        pair.server.next_event()


def test_a_peer_over_the_window_gets_diagnostic_217() -> None:
    pair = Pair()
    _connect(pair)
    pair.server.window = 1  # the requester ignores the window it was given
    _open_for_write(pair)
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 1))
    pair.server.receive_data(pair.requester.send(Kind.SYN, codec.number(PI.SYNC_NUMBER, 2)))
    with pytest.raises(RemoteProtocolError) as caught:
        pair.server.next_event()
    assert caught.value.diagnostic == 217


def test_a_restart_continues_the_sync_numbers_after_the_restart_point() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair, restart_point=4)
    assert pair.requester.last_sync == pair.server.last_sync == 4
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 5))


def test_data_over_the_entity_size_is_refused() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair)  # entity size 1024
    pair.server.receive_data(pair.requester.send(Kind.DTF, data=b"x" * 1100))
    with pytest.raises(RemoteProtocolError, match="entity size 1024"):
        pair.server.next_event()


def test_abort_ends_the_session_from_anywhere_and_stream_end_mid_fpdu_is_an_error() -> None:
    pair = Pair()
    _connect(pair)
    pair.to_requester(Kind.ABORT, codec.diagnostic(312))
    assert pair.requester.state is pair.server.state is State.CLOSED
    machine = Machine(Role.REQUESTER)
    machine.receive_data(b"\x00\x20\x40")
    machine.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of an FPDU"):
        machine.next_event()


def test_garbage_is_a_remote_protocol_error() -> None:
    machine = Machine(Role.REQUESTER)
    with pytest.raises(RemoteProtocolError):
        machine.receive_data(b"\x00\x01HTTP/1.1 400 Bad Request\r\n")


def test_a_sync_point_may_be_acknowledged_after_the_trans_end_crossed_it() -> None:
    pair = Pair()
    _connect(pair)
    pair.requester.window = pair.server.window = 2
    _open_for_write(pair)
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 1))
    pair.to_server(Kind.DTF_END, OK)
    pair.to_server(Kind.TRANS_END)  # a requester that does not wait for the last ACK(SYN)
    pair.to_requester(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, 1))
    pair.to_requester(Kind.ACK_TRANS_END, OK)
    assert pair.requester.state is pair.server.state is State.OPEN


def _wire(machine: Machine, kind: Kind, *params: Param, data: bytes = b"") -> bytes:
    return machine.send(kind, *params, data=data)


def _events(machine: Machine, *wires: bytes) -> list[Fpdu]:
    for wire in wires:
        machine.receive_data(wire)
    events = []
    while (fpdu := machine.next_event()) is not None:
        events.append(fpdu)
    return events


def test_the_race_of_the_last_ack_syn_and_trans_end_is_told_apart_by_kind() -> None:
    """The race that delivered files twice, step by step: the file ends just past sync point
    1; the server's ACK(SYN 1) reaches the requester's machine (which counts it) while the
    requester ends the transfer; the next two events are ACK(SYN 1) then ACK(TRANS.END).
    The machine counts the sync point once, ends in OPEN, and the answer to TRANS.END is the
    second event, recognisable by its kind: an adapter that took the first would resend a
    transfer the server has stored."""
    pair = Pair()
    _connect(pair)
    pair.requester.window = pair.server.window = 2
    _open_for_write(pair)
    pair.to_server(Kind.DTF, data=b"x" * 1000)
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 1))
    pair.to_server(Kind.DTF, data=b"y" * 10)  # just past the sync point
    ack_syn = _wire(pair.server, Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, 1))
    pair.requester.receive_data(ack_syn)  # on its way: counted once taken as an event
    assert pair.requester.last_acked == 0
    pair.to_server(Kind.DTF_END, OK)
    pair.to_server(Kind.TRANS_END, codec.number(PI.BYTE_COUNT, 1010, 8))
    ack_end = _wire(pair.server, Kind.ACK_TRANS_END, OK)
    events = _events(pair.requester, ack_end)
    assert [e.kind for e in events] == [Kind.ACK_SYN, Kind.ACK_TRANS_END]
    assert pair.requester.last_acked == 1
    assert pair.requester.state is pair.server.state is State.OPEN


def test_a_full_window_stops_data_too_not_only_the_next_syn() -> None:
    """Window 2, SYN 1 and 2 unacknowledged: the sender may send no more data (the machine
    refuses it locally); a server receiving it answers diagnostic 217."""
    pair = Pair()
    _connect(pair)
    pair.requester.window = pair.server.window = 2
    _open_for_write(pair)
    for number in (1, 2):
        pair.to_server(Kind.DTF, data=b"x" * 100)
        pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, number))
    for kind in (Kind.DTF, Kind.DTFDA):
        with pytest.raises(LocalProtocolError, match="window is full"):
            pair.requester.send(kind, data=b"more")
    loose = Machine(Role.REQUESTER, connection_id=5)  # a requester that ignores the window
    loose.state, loose.peer_id, loose.window = State.WRITING, 9, 0
    pair.server.receive_data(loose.send(Kind.DTF, data=b"more"))
    with pytest.raises(RemoteProtocolError, match="window is full") as caught:
        pair.server.next_event()
    assert caught.value.diagnostic == 217
    pair.to_requester(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, 1))
    pair.to_server(Kind.DTF, data=b"room again")  # one sync point acknowledged: room for data


def test_an_idt_from_the_server_is_acknowledged_and_what_crossed_it_is_dropped() -> None:
    """The server interrupts a write; the requester's DTF and SYN already on the wire reach
    it after its IDT and are let through without tracking; the requester answers ACK(IDT) and
    both sides are back in OPEN, ready for CRF."""
    pair = Pair()
    _connect(pair)
    pair.requester.window = pair.server.window = 1
    _open_for_write(pair)
    crossing = [
        _wire(pair.requester, Kind.DTF, data=b"x" * 100),
        _wire(pair.requester, Kind.SYN, codec.number(PI.SYNC_NUMBER, 1)),
    ]
    idt = _wire(pair.server, Kind.IDT, codec.diagnostic(217), codec.number(PI.END_CODE, 4))
    assert pair.server.state is State.INTERRUPTING
    assert [e.kind for e in _events(pair.server, *crossing)] == [Kind.DTF, Kind.SYN]
    assert pair.server.last_sync == 0  # not tracked: that transfer is over
    (interrupt,) = _events(pair.requester, idt)
    assert interrupt.kind is Kind.IDT and interrupt.diagnostic == 217
    with pytest.raises(LocalProtocolError):
        pair.requester.send(Kind.DTF, data=b"no more")
    pair.to_server(Kind.ACK_IDT)
    # mypy keeps the INTERRUPTING asserted above, unaware that to_server() changes the state.
    assert pair.requester.state is pair.server.state is State.OPEN  # type: ignore[comparison-overlap]
    pair.to_server(Kind.CRF, OK)
    pair.to_requester(Kind.ACK_CRF, OK)


@pytest.mark.parametrize("requester_ended", [False, True])
def test_an_idt_may_come_after_dtf_end_and_cross_the_trans_end(requester_ended: bool) -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair)
    pair.to_server(Kind.DTF_END, OK)
    trans_end = _wire(pair.requester, Kind.TRANS_END) if requester_ended else None
    idt = _wire(pair.server, Kind.IDT, codec.diagnostic(213))
    if trans_end is not None:
        assert [e.kind for e in _events(pair.server, trans_end)] == [Kind.TRANS_END]
    assert [e.kind for e in _events(pair.requester, idt)] == [Kind.IDT]
    pair.to_server(Kind.ACK_IDT)
    assert pair.requester.state is pair.server.state is State.OPEN
