"""The SIP transaction layer on a fake clock: every timer path of RFC 3261 §17 / RFC 6026.

Times are literal floats; with the default T1 = 0.5 s, T2 = 4 s, T4 = 5 s the schedules are
A: 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 then B at 32; E/G: 0.5, 1, 2, 4, 4, ... seconds apart.
"""

from __future__ import annotations

import random
from typing import Any, TypeVar

import pytest

from sipua.message import Request, Response, make_response, parse
from sipua.timers import TimerSettings, next_interval, timer_d, timer_i, timer_j, timer_k
from sipua.transaction import (
    AckNotReceived,
    AckReceived,
    CancelReceived,
    ClientTransaction,
    MergedRequestDetected,
    RequestReceived,
    ResponseReceived,
    ResponseSendFailed,
    ServerTransaction,
    SipTransmit,
    TransactionEvent,
    TransactionLayer,
    TransactionSettings,
    TransactionTimedOut,
    TransportFailed,
    TxState,
    build_ack,
    build_cancel,
    response_destination,
)

E = TypeVar("E")

PEER = ("192.0.2.10", 5060)
UA = ("192.0.2.20", 5060)


def request(method: str = "INVITE", *, branch: str = "z9hG4bKaaa", transport: str = "UDP",
            from_tag: str = "ft1", call_id: str = "call-1", cseq: int = 1,
            to_tag: str | None = None, via_extra: str = ";rport", body: bytes = b"",
            routes: tuple[str, ...] = ()) -> Request:
    """A request as a UA at 192.0.2.20 builds it."""
    to = "<sip:bob@b.test>" + (f";tag={to_tag}" if to_tag else "")
    headers = [
        ("Via", f"SIP/2.0/{transport} 192.0.2.20:5060;branch={branch}{via_extra}"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:alice@a.test>;tag={from_tag}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    headers += [("Route", r) for r in routes]
    return Request(method, "sip:bob@b.test", headers, body)


def wire(message: Request) -> Request:
    """The request as the peer's parser would hand it over."""
    parsed = parse(message.encode())
    assert isinstance(parsed, Request)
    return parsed


def parsed_response(data: bytes) -> Response:
    """A response from the wire."""
    parsed = parse(data)
    assert isinstance(parsed, Response)
    return parsed


def one(layer: TransactionLayer, kind: type[E]) -> E:
    """The single queued event, of type ``kind``."""
    events = drain(layer)
    assert len(events) == 1 and isinstance(events[0], kind), events
    return events[0]


def response_to(req: Request, status: int, to_tag: str | None = "tt1") -> Response:
    """The peer's response, re-parsed."""
    return parsed_response(
        make_response(req, status, to_tag=to_tag if status > 100 else None).encode())


def drain(layer: TransactionLayer) -> list[TransactionEvent]:
    """Every queued event."""
    out: list[TransactionEvent] = []
    while (event := layer.next_event()) is not None:
        out.append(event)
    return out


def run(layer: TransactionLayer, until: float) -> list[tuple[float, SipTransmit]]:
    """Fire timers in order up to ``until``; the transmits with the time they went out."""
    sent: list[tuple[float, SipTransmit]] = []
    while (deadline := layer.next_timer()) is not None and deadline <= until:
        layer.handle_timer(deadline)
        sent += [(deadline, t) for t in layer.pop_transmits()]
    return sent


def state_of(tx: ClientTransaction | ServerTransaction) -> TxState:
    """The transaction's state, read afresh (keeps type checkers from narrowing it)."""
    return tx.state


def new_layer(**settings: Any) -> TransactionLayer:
    """A layer with a seeded rng."""
    return TransactionLayer(random.Random(7), TransactionSettings(**settings))


def times(sent: list[tuple[float, SipTransmit]]) -> list[float]:
    """When each transmit went out."""
    return [round(t, 6) for t, _ in sent]


# --- timers -------------------------------------------------------------------------------------

def test_timer_values_follow_table_4() -> None:
    """Timers D, I, J, K are zero on reliable transports and Table 4's values otherwise."""
    s = TimerSettings()
    assert (timer_d(s, False), timer_d(s, True)) == (32.0, 0.0)
    assert (timer_i(s, False), timer_i(s, True)) == (5.0, 0.0)
    assert (timer_j(s, False), timer_j(s, True)) == (32.0, 0.0)
    assert (timer_k(s, False), timer_k(s, True)) == (5.0, 0.0)
    assert next_interval(4.0, s, capped=True) == 4.0
    assert next_interval(4.0, s, capped=False) == 8.0
    with pytest.raises(ValueError):
        TimerSettings(t1=1.0, t2=0.5)


# --- INVITE client --------------------------------------------------------------------------------

def test_invite_client_udp_timer_a_then_b() -> None:
    """Over UDP the INVITE goes out at 0, 0.5, 1.5, ... 31.5 (A doubles, no cap); B ends it."""
    layer = new_layer()
    req = request()
    tx = layer.send_request(req, PEER, "udp", 0.0)
    first = layer.pop_transmits()
    assert first == [SipTransmit(req.encode(), PEER, "udp", tx.id)]
    assert state_of(tx) is TxState.CALLING
    sent = run(layer, 100.0)
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(t.data == req.encode() for _, t in sent)
    assert drain(layer) == [TransactionTimedOut(tx.id, req)]
    assert state_of(tx) is TxState.TERMINATED and layer.next_timer() is None


def test_invite_client_provisional_stops_retransmissions_and_timer_b() -> None:
    """A 1xx moves Calling to Proceeding: no more retransmissions and no timeout (§17.1.1.2)."""
    layer = new_layer()
    req = request()
    tx = layer.send_request(req, PEER, "udp", 0.0)
    layer.pop_transmits()
    assert times(run(layer, 0.6)) == [0.5]
    ringing = response_to(req, 180)
    layer.receive(ringing, PEER, "udp", 0.7)
    assert state_of(tx) is TxState.PROCEEDING
    assert drain(layer) == [ResponseReceived(ringing, tx.id)]
    assert layer.next_timer() is None
    assert run(layer, 1000.0) == []


def test_invite_client_non_2xx_generates_ack_and_timer_d() -> None:
    """A 486 is ACKed by the transaction with the INVITE's branch; copies re-ACKed until D."""
    layer = new_layer()
    req = request(routes=("<sip:proxy.a.test;lr>",))
    tx = layer.send_request(req, PEER, "udp", 0.0)
    layer.pop_transmits()
    busy = response_to(req, 486)
    layer.receive(busy, PEER, "udp", 0.2)
    assert drain(layer) == [ResponseReceived(busy, tx.id)]
    assert state_of(tx) is TxState.COMPLETED
    (ack_tx,) = layer.pop_transmits()
    ack = parse(ack_tx.data)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.vias[0].branch == "z9hG4bKaaa" and len(ack.vias) == 1
    assert ack.to.tag == "tt1" and ack.from_.tag == "ft1"
    assert (ack.cseq.number, ack.cseq.method) == (1, "ACK")
    assert str(ack.uri) == str(req.uri) and ack.call_id == req.call_id
    assert ack.headers.get_all("Route") == ["<sip:proxy.a.test;lr>"]
    assert ack_tx.dest == PEER
    # A retransmitted final is answered with the same ACK and not passed up.
    layer.receive(busy, PEER, "udp", 5.0)
    assert [t.data for t in layer.pop_transmits()] == [ack_tx.data]
    assert drain(layer) == []
    assert layer.next_timer() == pytest.approx(32.2)
    run(layer, 40.0)
    assert state_of(tx) is TxState.TERMINATED
    layer.receive(busy, PEER, "udp", 41.0)
    assert layer.pop_transmits() == [] and layer.stats.stray_responses == 1


def test_invite_client_2xx_accepted_state_delivers_retransmissions() -> None:
    """RFC 6026: after a 2xx the transaction is Accepted; 2xx copies reach the TU until M fires."""
    layer = new_layer()
    req = request()
    tx = layer.send_request(req, PEER, "udp", 0.0)
    layer.pop_transmits()
    ok = response_to(req, 200)
    layer.receive(ok, PEER, "udp", 1.0)
    assert state_of(tx) is TxState.ACCEPTED
    assert layer.pop_transmits() == []  # the TU ACKs a 2xx, not the transaction
    layer.receive(ok, PEER, "udp", 1.5)
    assert drain(layer) == [ResponseReceived(ok, tx.id), ResponseReceived(ok, tx.id)]
    assert layer.next_timer() == pytest.approx(33.0)  # timer M = 64*T1
    run(layer, 40.0)
    assert state_of(tx) is TxState.TERMINATED
    layer.receive(ok, PEER, "udp", 41.0)
    assert drain(layer) == [] and layer.stats.stray_responses == 1


def test_invite_client_tcp_no_retransmission_b_still_applies() -> None:
    """Over TCP nothing is retransmitted, timer B still fires at 64*T1 and D is zero."""
    layer = new_layer()
    req = request(transport="TCP")
    tx = layer.send_request(req, PEER, "tcp", 0.0)
    assert len(layer.pop_transmits()) == 1
    assert run(layer, 100.0) == []
    assert drain(layer) == [TransactionTimedOut(tx.id, req)]
    # A second INVITE gets a 603: ACK sent and the transaction ends at once (D = 0).
    req2 = request(transport="TCP", branch="z9hG4bKbbb", cseq=2)
    tx2 = layer.send_request(req2, PEER, "tcp", 0.0)
    layer.pop_transmits()
    layer.receive(response_to(req2, 603), PEER, "tcp", 0.1)
    (ack,) = layer.pop_transmits()
    assert ack.transport == "tcp" and b"ACK sip:bob@b.test" in ack.data
    assert state_of(tx2) is TxState.TERMINATED and layer.next_timer() is None


def test_invite_client_provisional_then_final_in_proceeding() -> None:
    """Finals in Proceeding: 2xx goes to Accepted, a later 4xx on another INVITE to Completed."""
    layer = new_layer()
    req = request()
    tx = layer.send_request(req, PEER, "udp", 0.0)
    layer.receive(response_to(req, 100), PEER, "udp", 0.1)
    layer.receive(response_to(req, 183), PEER, "udp", 0.2)
    layer.receive(response_to(req, 200), PEER, "udp", 0.3)
    statuses = [e.response.status for e in drain(layer) if isinstance(e, ResponseReceived)]
    assert statuses == [100, 183, 200]
    assert state_of(tx) is TxState.ACCEPTED


# --- non-INVITE client ----------------------------------------------------------------------------

def test_non_invite_client_udp_timer_e_capped_then_f() -> None:
    """E doubles from T1 up to T2 (0.5, 1, 2, 4, 4, ...); F times the request out at 32 s."""
    layer = new_layer()
    req = request("OPTIONS")
    tx = layer.send_request(req, PEER, "udp", 0.0)
    assert len(layer.pop_transmits()) == 1 and state_of(tx) is TxState.TRYING
    sent = run(layer, 100.0)
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert drain(layer) == [TransactionTimedOut(tx.id, req)]
    assert layer.stats.retransmissions == 10


def test_non_invite_client_proceeding_retransmits_every_t2() -> None:
    """After a 1xx, E keeps firing but every T2 (§17.1.2.2)."""
    layer = new_layer()
    req = request("REGISTER")
    tx = layer.send_request(req, PEER, "udp", 0.0)
    layer.pop_transmits()
    layer.receive(response_to(req, 100), PEER, "udp", 0.2)
    assert state_of(tx) is TxState.PROCEEDING
    sent = run(layer, 13.0)
    assert times(sent) == [0.5, 4.5, 8.5, 12.5]
    run(layer, 100.0)
    assert isinstance(drain(layer)[-1], TransactionTimedOut)


def test_non_invite_client_final_then_timer_k() -> None:
    """A final response completes the transaction; copies are absorbed until K (T4) fires."""
    layer = new_layer()
    req = request("OPTIONS")
    tx = layer.send_request(req, PEER, "udp", 0.0)
    layer.pop_transmits()
    ok = response_to(req, 200)
    layer.receive(ok, PEER, "udp", 0.1)
    layer.receive(ok, PEER, "udp", 0.6)
    assert drain(layer) == [ResponseReceived(ok, tx.id)]
    assert state_of(tx) is TxState.COMPLETED and layer.stats.absorbed_responses == 1
    assert layer.next_timer() == pytest.approx(5.1)
    assert run(layer, 10.0) == []  # no retransmission after the final
    assert state_of(tx) is TxState.TERMINATED


def test_awaiting_final_lists_client_transactions_until_their_final_response() -> None:
    """What a shutdown must wait for: a BYE without its final response; not once answered,
    and never a server transaction."""
    layer = new_layer()
    bye = request("BYE")
    tx = layer.send_request(bye, PEER, "udp", 0.0)
    layer.receive(request("OPTIONS", branch="z9hG4bKsrv"), PEER, "udp", 0.0)
    assert layer.awaiting_final() == [tx]
    layer.receive(response_to(bye, 100), PEER, "udp", 0.1)
    assert layer.awaiting_final() == [tx]  # proceeding: still no final response
    layer.receive(response_to(bye, 200), PEER, "udp", 0.2)
    assert layer.awaiting_final() == []


def test_non_invite_client_tcp() -> None:
    """Over TCP: one transmission, F still applies, K is zero."""
    layer = new_layer()
    req = request("OPTIONS", transport="TCP")
    tx = layer.send_request(req, PEER, "tcp", 0.0)
    layer.pop_transmits()
    assert layer.next_timer() == 32.0
    layer.receive(response_to(req, 200), PEER, "tcp", 0.1)
    assert state_of(tx) is TxState.TERMINATED and layer.next_timer() is None
    req2 = request("OPTIONS", transport="TCP", branch="z9hG4bKccc")
    tx2 = layer.send_request(req2, PEER, "tcp", 0.0)
    assert len(layer.pop_transmits()) == 1
    assert run(layer, 40.0) == []
    assert drain(layer)[-1] == TransactionTimedOut(tx2.id, req2)


def test_client_rejects_bad_requests() -> None:
    """ACK, a missing magic cookie and a duplicate branch are the caller's errors."""
    layer = new_layer()
    with pytest.raises(ValueError):
        layer.send_request(request("ACK"), PEER, "udp", 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request(branch="1234"), PEER, "udp", 0.0)
    layer.send_request(request(), PEER, "udp", 0.0)
    with pytest.raises(ValueError):
        layer.send_request(request(), PEER, "udp", 0.0)


def test_stray_and_foreign_responses_are_counted_not_delivered() -> None:
    """A response matching no branch + CSeq method is dropped and counted (§17.1.3)."""
    layer = new_layer()
    req = request("OPTIONS")
    layer.send_request(req, PEER, "udp", 0.0)
    layer.receive(response_to(request("OPTIONS", branch="z9hG4bKzzz"), 200), PEER, "udp", 0.1)
    layer.receive(response_to(request("INFO"), 200), PEER, "udp", 0.1)  # same branch, other method
    assert drain(layer) == [] and layer.stats.stray_responses == 2


# --- INVITE server --------------------------------------------------------------------------------

def test_invite_server_sends_100_after_200ms_and_absorbs_retransmissions() -> None:
    """The 100 Trying goes out at 200 ms; a retransmitted INVITE gets the last provisional."""
    layer = new_layer()
    inv = wire(request())
    layer.receive(inv, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    assert isinstance(event, RequestReceived) and event.request is inv and event.source == UA
    assert layer.pop_transmits() == []
    (sent,) = run(layer, 1.0)
    assert sent[0] == pytest.approx(0.2)
    assert sent[1].data.startswith(b"SIP/2.0 100 Trying") and sent[1].dest == UA
    layer.receive(inv, UA, "udp", 0.5)
    assert drain(layer) == []
    (again,) = layer.pop_transmits()
    assert again.data == sent[1].data
    layer.send_response(event.server_tx_id, make_response(inv, 180, to_tag="x"), 0.6)
    ringing = layer.pop_transmits()[0].data
    layer.receive(inv, UA, "udp", 0.7)
    assert layer.pop_transmits()[0].data == ringing
    assert layer.stats.absorbed_requests == 2


def test_invite_server_no_100_when_tu_answers_first() -> None:
    """A response from the TU within 200 ms cancels the automatic 100."""
    layer = new_layer()
    inv = wire(request())
    layer.receive(inv, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    layer.send_response(event.server_tx_id, make_response(inv, 180, to_tag="x"), 0.1)
    assert [t.data[:16] for t in layer.pop_transmits()] == [b"SIP/2.0 180 Ring"]
    assert layer.next_timer() is None


@pytest.mark.parametrize("delay,expected", [(0.0, 1), (None, 0)])
def test_invite_server_trying_delay_setting(delay: float | None, expected: int) -> None:
    """trying_delay=0 sends the 100 at once; None never sends it."""
    layer = new_layer(trying_delay=delay)
    layer.receive(wire(request()), UA, "udp", 0.0)
    immediate = layer.pop_transmits()
    assert len(immediate) == expected
    assert run(layer, 10.0) == []


def test_invite_server_non_2xx_timer_g_then_h() -> None:
    """Without ACK a 486 is re-sent at T1 doubling to T2 (G) until H (64*T1) gives up."""
    layer = new_layer(trying_delay=None)
    inv = wire(request())
    layer.receive(inv, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    busy = make_response(inv, 486, to_tag="x")
    layer.send_response(event.server_tx_id, busy, 0.0)
    layer.pop_transmits()
    sent = run(layer, 100.0)
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(t.data == busy.encode() for _, t in sent)
    assert drain(layer) == [AckNotReceived(event.server_tx_id, inv, busy)]


def test_invite_server_ack_confirms_then_timer_i() -> None:
    """The ACK of a 486 stops G and H; ACK copies are absorbed for T4 (timer I)."""
    layer = new_layer(trying_delay=None)
    inv = wire(request())
    layer.receive(inv, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    busy = make_response(inv, 486, to_tag="x")
    layer.send_response(event.server_tx_id, busy, 0.0)
    layer.pop_transmits()
    layer.receive(inv, UA, "udp", 0.2)  # INVITE copy in Completed: the 486 again
    assert [t.data for t in layer.pop_transmits()] == [busy.encode()]
    ack = wire(build_ack(inv, parsed_response(busy.encode())))
    layer.receive(ack, UA, "udp", 0.6)
    tx = layer.transaction(event.server_tx_id)
    assert tx is not None and state_of(tx) is TxState.CONFIRMED
    layer.receive(ack, UA, "udp", 0.7)
    assert drain(layer) == [] and layer.pop_transmits() == []
    assert layer.next_timer() == pytest.approx(5.6)
    assert run(layer, 10.0) == []
    assert layer.transaction(event.server_tx_id) is None


def test_invite_server_2xx_retransmitted_until_ack() -> None:
    """RFC 6026 Accepted: the 2xx is re-sent (§13.3.1.4) until the ACK, which goes to the TU."""
    layer = new_layer(trying_delay=None)
    inv = wire(request())
    layer.receive(inv, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    ok = make_response(inv, 200, to_tag="x")
    layer.send_response(event.server_tx_id, ok, 0.0)
    layer.pop_transmits()
    assert times(run(layer, 4.0)) == [0.5, 1.5, 3.5]
    layer.receive(inv, UA, "udp", 4.0)  # INVITE copy in Accepted: absorbed, not re-answered
    assert layer.pop_transmits() == [] and drain(layer) == []
    ack = wire(request("ACK", branch="z9hG4bKack", to_tag="x"))
    layer.receive(ack, UA, "udp", 4.1)
    assert drain(layer) == [AckReceived(ack, event.server_tx_id, UA, "udp")]
    assert run(layer, 100.0) == []
    assert drain(layer) == []  # timer L ended it quietly
    assert layer.transaction(event.server_tx_id) is None


def test_invite_server_2xx_without_ack_reports_ack_not_received() -> None:
    """A 2xx never ACKed is re-sent until timer L (64*T1), then AckNotReceived (send BYE)."""
    layer = new_layer(trying_delay=None)
    inv = wire(request())
    layer.receive(inv, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    ok = make_response(inv, 200, to_tag="x")
    layer.send_response(event.server_tx_id, ok, 0.0)
    layer.pop_transmits()
    sent = run(layer, 100.0)
    assert times(sent) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert drain(layer) == [AckNotReceived(event.server_tx_id, inv, ok)]


def test_invite_server_tcp_no_retransmission_and_zero_timer_i() -> None:
    """Over TCP: no G, no 2xx re-sends; H still applies; the ACK ends the transaction (I = 0)."""
    layer = new_layer(trying_delay=None)
    inv = wire(request(transport="TCP"))
    layer.receive(inv, UA, "tcp", 0.0)
    event = one(layer, RequestReceived)
    layer.send_response(event.server_tx_id, make_response(inv, 486, to_tag="x"), 0.0)
    (sent,) = layer.pop_transmits()
    assert sent.transport == "tcp" and sent.dest == UA and sent.fallback == ("192.0.2.20", 5060)
    assert layer.next_timer() == 32.0
    layer.receive(wire(build_ack(inv, parsed_response(sent.data))), UA, "tcp", 1.0)
    assert layer.transaction(event.server_tx_id) is None and layer.next_timer() is None
    # Timer H over TCP.
    inv2 = wire(request(transport="TCP", branch="z9hG4bKddd", cseq=2))
    layer.receive(inv2, UA, "tcp", 0.0)
    event2 = one(layer, RequestReceived)
    layer.send_response(event2.server_tx_id, make_response(inv2, 500, to_tag="y"), 0.0)
    layer.pop_transmits()
    assert run(layer, 100.0) == []
    assert isinstance(drain(layer)[0], AckNotReceived)
    # A 2xx over TCP is not re-sent either.
    inv3 = wire(request(transport="TCP", branch="z9hG4bKeee", cseq=3))
    layer.receive(inv3, UA, "tcp", 0.0)
    event3 = one(layer, RequestReceived)
    layer.send_response(event3.server_tx_id, make_response(inv3, 200, to_tag="z"), 0.0)
    layer.pop_transmits()
    assert run(layer, 100.0) == []


def test_ack_for_unknown_2xx_goes_to_the_tu() -> None:
    """An ACK matching nothing is still delivered: the dialog layer decides (§17.2.3)."""
    layer = new_layer()
    ack = wire(request("ACK", branch="z9hG4bKlone", to_tag="q"))
    layer.receive(ack, UA, "udp", 0.0)
    assert drain(layer) == [AckReceived(ack, None, UA, "udp")]


def test_send_response_errors() -> None:
    """Unknown transactions and a second final response are the caller's errors."""
    layer = new_layer()
    inv = wire(request())
    with pytest.raises(ValueError):
        layer.send_response("nope", make_response(inv, 200), 0.0)
    layer.receive(inv, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    layer.send_response(event.server_tx_id, make_response(inv, 404, to_tag="x"), 0.0)
    with pytest.raises(ValueError):
        layer.send_response(event.server_tx_id, make_response(inv, 200, to_tag="x"), 0.0)


# --- non-INVITE server ----------------------------------------------------------------------------

def test_non_invite_server_udp_states_and_timer_j() -> None:
    """Trying absorbs copies silently, Proceeding and Completed re-send; J (64*T1) ends it."""
    layer = new_layer()
    opts = wire(request("OPTIONS"))
    layer.receive(opts, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    layer.receive(opts, UA, "udp", 0.5)
    assert layer.pop_transmits() == [] and drain(layer) == []
    layer.send_response(event.server_tx_id, make_response(opts, 183, to_tag="x"), 0.6)
    provisional = layer.pop_transmits()[0].data
    layer.receive(opts, UA, "udp", 1.0)
    assert layer.pop_transmits()[0].data == provisional
    layer.send_response(event.server_tx_id, make_response(opts, 200, to_tag="x"), 1.1)
    final = layer.pop_transmits()[0].data
    layer.receive(opts, UA, "udp", 2.0)
    assert layer.pop_transmits()[0].data == final
    assert layer.next_timer() == pytest.approx(33.1)
    assert run(layer, 40.0) == []
    assert layer.transaction(event.server_tx_id) is None
    # After J a copy is a new request again.
    layer.receive(opts, UA, "udp", 41.0)
    assert isinstance(drain(layer)[0], RequestReceived)


def test_non_invite_server_tcp_timer_j_zero() -> None:
    """Over TCP the final response ends the transaction at once."""
    layer = new_layer()
    opts = wire(request("OPTIONS", transport="TCP"))
    layer.receive(opts, UA, "tcp", 0.0)
    event = one(layer, RequestReceived)
    layer.send_response(event.server_tx_id, make_response(opts, 200, to_tag="x"), 0.0)
    assert layer.transaction(event.server_tx_id) is None and layer.next_timer() is None


def test_server_matching_needs_branch_sent_by_and_method() -> None:
    """Same branch from another sent-by, or with another method, is another transaction."""
    layer = new_layer(detect_merged=False)
    layer.receive(wire(request("OPTIONS")), UA, "udp", 0.0)
    other = request("OPTIONS")
    other.headers.set("Via", "SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bKaaa")
    layer.receive(wire(other), ("192.0.2.99", 5060), "udp", 0.0)
    layer.receive(wire(request("INFO")), UA, "udp", 0.0)
    assert [type(e) for e in drain(layer)] == [RequestReceived] * 3


def test_rfc2543_requests_are_matched_without_branch() -> None:
    """A request without a z9hG4bK branch is matched on Call-ID, CSeq, From tag, URI and Via."""
    layer = new_layer()
    old = wire(request("OPTIONS", branch="1234"))
    layer.receive(old, UA, "udp", 0.0)
    layer.receive(old, UA, "udp", 0.5)
    assert len(drain(layer)) == 1 and layer.stats.absorbed_requests == 1
    strict = new_layer(rfc2543_matching=False)
    strict.receive(old, UA, "udp", 0.0)
    assert drain(strict) == [] and strict.stats.malformed == 1


# --- merged requests, CANCEL ----------------------------------------------------------------------

def test_merged_request_gets_482() -> None:
    """Same From tag, Call-ID and CSeq on another branch (a fork come back): 482 (§8.2.2.2)."""
    layer = new_layer(trying_delay=None)
    first = wire(request())
    layer.receive(first, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    merged = wire(request(branch="z9hG4bKfork"))
    layer.receive(merged, ("192.0.2.30", 5060), "udp", 0.1)
    merged_event = one(layer, MergedRequestDetected)
    assert merged_event.original_tx_id == event.server_tx_id
    (reply,) = layer.pop_transmits()
    answer = parsed_response(reply.data)
    assert answer.status == 482 and answer.to.tag
    layer.receive(merged, ("192.0.2.30", 5060), "udp", 0.2)  # its copy: 482 again
    assert layer.pop_transmits()[0].data == reply.data
    assert layer.stats.merged_requests == 1
    # In-dialog requests (To tag) are never merged.
    layer.receive(wire(request("INFO", to_tag="x", branch="z9hG4bK1")), UA, "udp", 0.3)
    layer.receive(wire(request("INFO", to_tag="x", branch="z9hG4bK2")), UA, "udp", 0.3)
    assert [type(e) for e in drain(layer)] == [RequestReceived, RequestReceived]


def test_cancel_received_names_the_invite() -> None:
    """A CANCEL with the INVITE's branch names that INVITE's server transaction (§9.2)."""
    layer = new_layer(trying_delay=None)
    inv = wire(request())
    layer.receive(inv, UA, "udp", 0.0)
    event = one(layer, RequestReceived)
    cancel = wire(build_cancel(inv))
    layer.receive(cancel, UA, "udp", 0.5)
    cancelled = one(layer, CancelReceived)
    assert cancelled.invite_tx_id == event.server_tx_id
    layer.send_response(cancelled.server_tx_id, make_response(cancel, 200), 0.6)
    layer.send_response(event.server_tx_id, make_response(inv, 487, to_tag="x"), 0.6)
    assert [parsed_response(t.data).status for t in layer.pop_transmits()] == [200, 487]
    stray = wire(build_cancel(request(branch="z9hG4bKnone", call_id="other")))
    layer.receive(stray, UA, "udp", 0.7)
    assert one(layer, CancelReceived).invite_tx_id is None


def test_build_cancel_fields() -> None:
    """CANCEL copies Request-URI, Call-ID, From, To, CSeq number, top Via and Route (§9.1)."""
    inv = request(routes=("<sip:p1.test;lr>", "<sip:p2.test;lr>"))
    cancel = wire(build_cancel(inv))
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert cancel.vias[0].branch == inv.vias[0].branch and len(cancel.vias) == 1
    assert (cancel.cseq.number, cancel.cseq.method) == (1, "CANCEL")
    assert cancel.headers.get_all("Route") == ["<sip:p1.test;lr>", "<sip:p2.test;lr>"]
    assert cancel.to.tag is None and cancel.from_.tag == "ft1"


def test_client_cancel_waits_for_a_provisional() -> None:
    """A CANCEL before any 1xx is held (§9.1) and sent when one arrives."""
    layer = new_layer()
    inv = request()
    tx = layer.send_request(inv, PEER, "udp", 0.0)
    layer.pop_transmits()
    cancel_tx = layer.cancel(tx.id, 0.1)
    assert cancel_tx is not None and state_of(cancel_tx) is TxState.PENDING
    assert layer.pop_transmits() == []
    assert layer.cancel(tx, 0.2) is cancel_tx
    layer.receive(response_to(inv, 180), PEER, "udp", 0.3)
    (sent,) = layer.pop_transmits()
    assert sent.data.startswith(b"CANCEL sip:bob@b.test") and state_of(cancel_tx) is TxState.TRYING
    cancel_req = cancel_tx.request
    layer.receive(response_to(cancel_req, 200), PEER, "udp", 0.4)
    layer.receive(response_to(inv, 487), PEER, "udp", 0.5)
    statuses = [e.response.status for e in drain(layer) if isinstance(e, ResponseReceived)]
    assert statuses == [180, 200, 487]
    assert layer.cancel(tx, 0.6) is None


def test_client_cancel_after_provisional_is_sent_at_once_and_dropped_on_final() -> None:
    """In Proceeding the CANCEL goes out at once; a pending one dies if a final comes first."""
    layer = new_layer()
    inv = request()
    tx = layer.send_request(inv, PEER, "udp", 0.0)
    layer.receive(response_to(inv, 100), PEER, "udp", 0.1)
    layer.pop_transmits()
    assert layer.cancel(tx, 0.2) is not None
    assert layer.pop_transmits()[0].data.startswith(b"CANCEL")
    inv2 = request(branch="z9hG4bKsecond", cseq=2)
    tx2 = layer.send_request(inv2, PEER, "udp", 0.0)
    pending = layer.cancel(tx2, 0.1)
    assert pending is not None
    layer.receive(response_to(inv2, 200), PEER, "udp", 0.2)
    assert state_of(pending) is TxState.TERMINATED
    assert all(not t.data.startswith(b"CANCEL") for t in layer.pop_transmits())


# --- transport errors, §18.1.1 -------------------------------------------------------------

def test_transport_error_ends_client_transaction() -> None:
    """§17.1.4: a transport failure ends the transaction and tells the TU."""
    layer = new_layer()
    req = request("OPTIONS", transport="TCP")
    tx = layer.send_request(req, PEER, "tcp", 0.0)
    layer.transport_failed(tx.id, "connection refused", 0.1)
    assert drain(layer) == [TransportFailed(tx.id, "connection refused", req)]
    assert layer.next_timer() is None
    layer.transport_failed(tx.id, "again", 0.2)  # an ended transaction: nothing
    assert drain(layer) == []


def test_transport_error_on_response_reports_send_failure() -> None:
    """§17.2.4: a response that cannot be sent ends the server transaction."""
    layer = new_layer()
    opts = wire(request("OPTIONS", transport="TCP"))
    layer.receive(opts, UA, "tcp", 0.0)
    event = one(layer, RequestReceived)
    ok = make_response(opts, 202, to_tag="x")
    layer.send_response(event.server_tx_id, make_response(opts, 100), 0.0)
    layer.transport_failed(event.server_tx_id, "reset", 0.1)
    failed = one(layer, ResponseSendFailed)
    assert failed.response.status == 100
    assert ok.status == 202


def test_large_request_moves_to_tcp_and_falls_back_to_udp() -> None:
    """A request over 1300 bytes goes over TCP with the Via rewritten (§18.1.1); when TCP fails
    it goes back to UDP with retransmissions."""
    layer = new_layer()
    req = request(body=b"v=0\r\n" + b"a=candidate:x\r\n" * 100)
    assert len(req.encode()) > 1300
    tx = layer.send_request(req, PEER, "udp", 0.0)
    (sent,) = layer.pop_transmits()
    assert sent.transport == "tcp" and tx.transport == "tcp"
    moved = parse(sent.data)
    assert moved.vias[0].transport == "TCP" and moved.vias[0].branch == "z9hG4bKaaa"
    assert moved.body == req.body
    assert layer.next_timer() == 32.0  # B only: no timer A on TCP
    layer.transport_failed(tx.id, "connection refused", 0.05)
    assert drain(layer) == []
    (retry,) = layer.pop_transmits()
    assert retry.transport == "udp" and retry.data == req.encode()
    assert times(run(layer, 1.0)) == [pytest.approx(0.55)]


def test_large_request_stays_on_udp_when_not_allowed() -> None:
    """With allow_tcp=False or tcp_threshold=None nothing changes."""
    body = b"a=x\r\n" * 400
    layer = new_layer()
    layer.send_request(request("MESSAGE", body=body), PEER, "udp", 0.0, allow_tcp=False)
    assert layer.pop_transmits()[0].transport == "udp"
    off = new_layer(tcp_threshold=None)
    off.send_request(request("MESSAGE", body=body), PEER, "udp", 0.0)
    assert off.pop_transmits()[0].transport == "udp"


# --- routing of responses ------------------------------------------------------------------

@pytest.mark.parametrize("via,transport,expected", [
    ("SIP/2.0/UDP h.test:5070;branch=z9hG4bK1;received=198.51.100.1;rport=40000", "udp",
     (("198.51.100.1", 40000), None)),
    ("SIP/2.0/UDP h.test:5070;branch=z9hG4bK1;rport", "udp", (("203.0.113.5", 3333), None)),
    ("SIP/2.0/UDP h.test:5070;branch=z9hG4bK1;received=198.51.100.1", "udp",
     (("198.51.100.1", 5070), None)),
    ("SIP/2.0/UDP h.test;branch=z9hG4bK1", "udp", (("h.test", 5060), None)),
    ("SIP/2.0/UDP h.test;branch=z9hG4bK1;maddr=239.1.1.1", "udp", (("239.1.1.1", 5060), None)),
    ("SIP/2.0/TCP h.test:5070;branch=z9hG4bK1;received=198.51.100.1", "tcp",
     (("203.0.113.5", 3333), ("198.51.100.1", 5070))),
    ("SIP/2.0/TLS h.test;branch=z9hG4bK1", "tls", (("203.0.113.5", 3333), ("h.test", 5061))),
])
def test_response_destination(via: str, transport: str,
                              expected: tuple[tuple[str, int], tuple[str, int] | None]) -> None:
    """§18.2.2 and RFC 3581: where a response goes, and the stream fallback."""
    req = request()
    req.headers.set("Via", via)
    assert response_destination(req.vias[0], ("203.0.113.5", 3333), transport) == expected


def test_malformed_header_is_counted_not_raised() -> None:
    """A message whose CSeq cannot be read is dropped and counted, never raised."""
    layer = new_layer()
    bad = request("OPTIONS")
    bad.headers.set("CSeq", "x OPTIONS")
    layer.receive(bad, UA, "udp", 0.0)
    resp = Response(200, None, [("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("CSeq", "nope")])
    layer.receive(resp, UA, "udp", 0.0)
    assert drain(layer) == [] and layer.stats.malformed == 2


def test_same_seed_same_bytes() -> None:
    """Two layers with the same seed produce byte-identical output for the same input."""
    outputs = []
    for _ in range(2):
        layer = new_layer()
        layer.receive(wire(request()), UA, "udp", 0.0)
        layer.receive(wire(request(branch="z9hG4bKfork")), UA, "udp", 0.0)
        outputs.append([t.data for t in layer.pop_transmits()])
    assert outputs[0] == outputs[1] and outputs[0]
