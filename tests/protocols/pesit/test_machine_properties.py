"""The state machine's rules at their edges: any FPDU out of its state is refused (ours as a
bug, the peer's with a diagnostic) and changes nothing; connection ids, sync numbers, the
window and the entity size are checked at their bounds, with the words and the diagnostic the
peer will be sent."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.pesit import codec
from protocols.pesit.codec import PI, Fpdu, Kind
from protocols.pesit.machine import (
    _CROSSING,
    MAX_SYNC,
    TRANSITIONS,
    LocalProtocolError,
    Machine,
    RemoteProtocolError,
    Role,
    State,
)
from tests.protocols.pesit.test_machine import OK, Pair, _connect, _open_for_write

relaxed = settings(deadline=None)


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def _from_peer(machine: Machine, fpdu: Fpdu) -> Fpdu | None:
    machine.receive_data(codec.frame(codec.encode(fpdu), machine.nsdu_header))
    return machine.next_event()


def _from_peer_wire(machine: Machine, wire: bytes) -> Fpdu:
    machine.receive_data(wire)
    fpdu = machine.next_event()
    assert fpdu is not None
    return fpdu


def _out_of_state(state: State, sender: Role, kind: Kind) -> bool:
    crossing = state is State.INTERRUPTING and kind in _CROSSING
    return kind is not Kind.ABORT and (state, sender, kind) not in TRANSITIONS and not crossing


_EVENTS = st.tuples(st.sampled_from(State), st.sampled_from(Role), st.sampled_from(Kind)).filter(
    lambda event: _out_of_state(*event)
)


@relaxed
@given(_EVENTS)
def test_we_cannot_send_an_fpdu_our_state_does_not_allow(event: tuple[State, Role, Kind]) -> None:
    state, role, kind = event
    machine = Machine(role, connection_id=3)
    machine.state = state
    expected = f"{kind.name} from the {role.value} is not allowed in state {state.value}"
    with pytest.raises(LocalProtocolError, match=exactly(expected)):
        machine.send(kind, OK)
    assert machine.state is state


@relaxed
@given(_EVENTS)
def test_the_peer_cannot_send_an_fpdu_our_state_does_not_allow(
    event: tuple[State, Role, Kind],
) -> None:
    state, sender, kind = event
    machine = Machine(sender.other, connection_id=3)
    machine.state = state
    src = 4 if kind in (Kind.CONNECT, Kind.ACONNECT) else 0
    expected = f"{kind.name} from the {sender.value} is not allowed in state {state.value}"
    with pytest.raises(RemoteProtocolError, match=exactly(expected)) as caught:
        _from_peer(machine, Fpdu(kind, 3, src, (OK,)))
    assert caught.value.diagnostic == 311
    assert machine.state is state


# -- connection ids ---------------------------------------------------------------------------


def test_a_connection_id_is_1_to_255() -> None:
    assert Machine(Role.SERVER, connection_id=255).own_id == 255
    for wrong in (0, 256):
        with pytest.raises(ValueError, match=exactly("a PeSIT connection id is 1..255")):
            Machine(Role.SERVER, connection_id=wrong)


def test_a_requester_with_connection_id_1_connects() -> None:
    requester, server = Machine(Role.REQUESTER), Machine(Role.SERVER, connection_id=1)
    server.receive_data(requester.send(Kind.CONNECT))
    connect = server.next_event()
    assert connect is not None
    assert (connect.dst, connect.src) == (0, 1)
    requester.receive_data(server.send(Kind.ACONNECT))
    assert requester.next_event() is not None
    assert requester.state is server.state is State.CONNECTED


@pytest.mark.parametrize(
    ("kind", "state", "who"),
    [(Kind.CONNECT, State.IDLE, "requester"), (Kind.ACONNECT, State.CONNECTING, "server")],
)
def test_a_connect_or_its_acceptance_without_a_connection_id_gets_318(
    kind: Kind, state: State, who: str
) -> None:
    machine = Machine(Role.SERVER if kind is Kind.CONNECT else Role.REQUESTER, connection_id=3)
    machine.state = state
    message = f"{kind.name} without a {who} connection id"
    with pytest.raises(RemoteProtocolError, match=exactly(message)) as caught:
        _from_peer(machine, Fpdu(kind, 3, 0))
    assert caught.value.diagnostic == 318


def test_a_refused_connection_and_an_early_abort_carry_the_ids_known_then() -> None:
    requester = Machine(Role.REQUESTER, connection_id=5)
    abort = codec.decode(requester.send(Kind.ABORT, codec.diagnostic(312))[2:])
    assert (abort.dst, abort.src) == (0, 5)  # no peer id yet
    server = Machine(Role.SERVER, connection_id=9)
    server.receive_data(Machine(Role.REQUESTER, connection_id=5).send(Kind.CONNECT))
    server.next_event()
    refusal = codec.decode(server.send(Kind.RCONNECT, codec.diagnostic(301))[2:])
    assert (refusal.dst, refusal.src) == (5, 0)


def test_an_abort_to_connection_0_is_accepted_anything_else_to_0_is_not() -> None:
    pair = Pair()
    _connect(pair)
    fpdu = _from_peer(pair.requester, Fpdu(Kind.ABORT, 0, 0, (codec.diagnostic(312),)))
    assert fpdu is not None
    assert pair.requester.state is State.CLOSED
    with pytest.raises(RemoteProtocolError) as caught:
        _from_peer(pair.server, Fpdu(Kind.CREATE, 0, 0))
    assert str(caught.value) == "CREATE addressed to connection 0, we are 9"
    assert caught.value.diagnostic == 311


# -- data units -------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "src"), [(0, 0), (1, 0), (2, 2), (3, 3)])
def test_a_multi_article_dtf_says_its_article_count_in_src(count: int, src: int) -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair)
    chunks = [b"a", b"bb", b"ccc"][: max(count, 1)]
    data = codec.multi_article(chunks) if count > 1 else b"whole"
    fpdu = pair.to_server(Kind.DTF, data=data, count=count)
    assert fpdu.src == src
    assert codec.articles(fpdu) == (chunks if count > 1 else [b"whole"])


def test_count_is_only_for_a_dtf() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair)
    fpdu = pair.to_server(Kind.DTFDA, data=b"x", count=3)
    assert fpdu.src == 0


def test_a_dtf_sent_without_data_is_empty() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair)
    assert _from_peer_wire(pair.server, pair.requester.send(Kind.DTF)).data == b""


def test_data_of_exactly_the_entity_size_passes() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair)  # entity size 1024
    assert pair.to_server(Kind.DTF, data=b"x" * (1024 - codec.HEADER)).data
    pair.server.receive_data(pair.requester.send(Kind.DTF, data=b"x" * (1024 - codec.HEADER + 1)))
    with pytest.raises(RemoteProtocolError) as caught:
        pair.server.next_event()
    assert str(caught.value) == "DTF of 1025 bytes exceeds the entity size 1024"
    assert caught.value.diagnostic == 311


# -- sync points ------------------------------------------------------------------------------


def test_a_fresh_machine_has_no_sync_point_and_is_not_at_end_of_stream() -> None:
    machine = Machine(Role.REQUESTER)
    machine.window = 1
    assert (machine.last_sync, machine.last_acked) == (0, 0)
    assert not machine.window_full
    assert machine.at_eof is False


def test_a_write_without_restart_point_starts_at_sync_point_0() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair, restart_point=3)
    pair.to_server(Kind.DTF_END, OK)
    pair.to_server(Kind.TRANS_END)
    pair.to_requester(Kind.ACK_TRANS_END, OK)
    pair.to_server(Kind.WRITE)
    pair.to_requester(Kind.ACK_WRITE, OK)  # no PI 18
    assert pair.requester.last_sync == pair.server.last_sync == 0
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 1))


def test_sync_points_go_up_to_999999() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair, restart_point=MAX_SYNC - 1)
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, MAX_SYNC))
    with pytest.raises(LocalProtocolError, match=exactly("SYN 1000000 after sync point 999999")):
        pair.requester.send(Kind.SYN, codec.number(PI.SYNC_NUMBER, MAX_SYNC + 1))


def test_a_full_window_names_what_was_refused() -> None:
    pair = Pair()
    _connect(pair)
    pair.requester.window = 1
    _open_for_write(pair)
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 1))
    full = "after sync point 1 while 1 sync points await acknowledgement (the window is full)"
    with pytest.raises(LocalProtocolError, match=exactly(f"SYN 2 {full}")):
        pair.requester.send(Kind.SYN, codec.number(PI.SYNC_NUMBER, 2))
    with pytest.raises(LocalProtocolError, match=exactly(f"DTF {full}")):
        pair.requester.send(Kind.DTF, data=b"x")


def test_a_sync_point_is_acknowledged_once() -> None:
    pair = Pair()
    _connect(pair)
    _open_for_write(pair)
    pair.to_server(Kind.SYN, codec.number(PI.SYNC_NUMBER, 1))
    pair.to_requester(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, 1))
    again = "ACK(SYN) 1 when sync points 2..1 await acknowledgement"
    with pytest.raises(LocalProtocolError, match=exactly(again)):
        pair.server.send(Kind.ACK_SYN, codec.number(PI.SYNC_NUMBER, 1))


# -- the stream -------------------------------------------------------------------------------


def test_half_an_fpdu_waits_for_the_rest_and_an_end_of_stream_inside_it_is_311() -> None:
    pair = Pair()
    wire = pair.requester.send(Kind.CONNECT)
    pair.server.receive_data(wire[:5])
    assert pair.server.next_event() is None
    pair.server.receive_data(b"")
    with pytest.raises(
        RemoteProtocolError, match=exactly("connection closed in the middle of an FPDU")
    ) as caught:
        pair.server.next_event()
    assert caught.value.diagnostic == 311


def test_framing_and_decoding_errors_reach_the_caller_with_their_words_and_diagnostic() -> None:
    machine = Machine(Role.SERVER)
    with pytest.raises(RemoteProtocolError, match=exactly("transport entity of 3 bytes")) as bad:
        machine.receive_data(b"\x00\x03")
    assert bad.value.diagnostic == 311
    machine = Machine(Role.SERVER)
    machine.receive_data(codec.frame(bytes.fromhex("0008 c030 e200 0200"), True))
    with pytest.raises(
        RemoteProtocolError, match=exactly("PI 2 has length 0, which PeSIT forbids")
    ) as caught:
        machine.next_event()
    assert caught.value.diagnostic == 318
