"""Bounds that keep floods from growing state: each limit holds, and the peer gets the answer
the limit promises (503 + Retry-After, 486, 403, a dropped and counted packet)."""

from __future__ import annotations

import random
import types
from typing import Any

import pytest
from twisted.internet import task

from ice.agent import MAX_REJECT_EVENTS, MAX_REMOTE_CANDIDATES, Agent, IceSettings
from ice.candidate import Candidate, CandidateType, LocalBase
from ice.events import RemoteCandidateLearned, RequestRejected
from ice.stun import Attr, Message, MessageClass, Method, short_term_key
from media.clock import PacingClock
from media.codecs import default_registry
from media.jitter import JitterBuffer
from media.rtp import encode_rtp
from media.session import RtpSession, RtpSessionSettings, SsrcChanged
from media.stream import MAX_EVENTS_PER_SECOND, UdpMediaStream
from sipua.auth import DigestClient, DigestCredentials
from sipua.message import Request, Response, parse
from sipua.registrar import Registrar, RegistrarSettings, SendResponse
from sipua.session import IncomingCall, SessionManager, SessionSettings
from sipua.settings import SettingError, UaSettings
from sipua.transaction import (
    RequestReceived,
    TransactionLayer,
    TransactionSettings,
    TransportFailed,
)

PEER = ("192.0.2.10", 5060)
US = ("192.0.2.1", 5060)


def _request(method: str, n: int, *, to_tag: str | None = None, contact: bool = True,
             cseq_method: str | None = None) -> Request:
    """Request number ``n`` of a flood: its own branch, Call-ID and From tag."""
    to = "<sip:bob@b.test>" + (f";tag={to_tag}" if to_tag else "")
    headers = [
        ("Via", f"SIP/2.0/UDP {PEER[0]}:{PEER[1]};branch=z9hG4bKflood{n};rport"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:x@a.test>;tag=f{n}"),
        ("To", to),
        ("Call-ID", f"flood-{n}"),
        ("CSeq", f"1 {cseq_method or method}"),
    ]
    if contact:
        headers.append(("Contact", f"<sip:x@{PEER[0]}:{PEER[1]}>"))
    return parse(Request(method, "sip:bob@b.test", headers).encode())  # type: ignore[return-value]


def _responses(layer: TransactionLayer) -> list[Response]:
    out = []
    for transmit in layer.pop_transmits():
        message = parse(transmit.data)
        assert isinstance(message, Response)
        out.append(message)
    return out


# --- SIP transaction layer ------------------------------------------------------------------

def test_server_transactions_beyond_the_limit_get_503_with_retry_after() -> None:
    """RFC 3261 §21.5.4: once ``max_server_transactions`` are live, a new request is answered
    503 with Retry-After, opens no transaction and reaches no TU; it is counted."""
    layer = TransactionLayer(random.Random(1), TransactionSettings(
        max_server_transactions=5, overload_retry_after=7))
    for n in range(5):
        layer.receive(_request("OPTIONS", n), PEER, "udp", 0.0)
    assert len(layer.transactions()) == 5
    assert _responses(layer) == []
    for n in range(5, 105):
        layer.receive(_request("OPTIONS", n), PEER, "udp", 0.0)
    answers = _responses(layer)
    assert len(answers) == 100
    assert {r.status for r in answers} == {503}
    assert {r.headers.get("Retry-After") for r in answers} == {"7"}
    assert len(layer.transactions()) == 5
    assert layer.stats.overload_rejected == 100
    events = []
    while (event := layer.next_event()) is not None:
        events.append(event)
    assert len(events) == 5 and all(isinstance(e, RequestReceived) for e in events)


def test_one_source_cannot_take_the_whole_table() -> None:
    """Beyond ``max_server_transactions_per_source`` from one address, that source gets 503
    while another source still opens transactions; the count drops as they end."""
    layer = TransactionLayer(random.Random(1), TransactionSettings(
        max_server_transactions=100, max_server_transactions_per_source=4))
    for n in range(10):
        layer.receive(_request("OPTIONS", n), PEER, "udp", 0.0)
    assert len(layer.transactions()) == 4 and layer.stats.overload_rejected == 6
    other = ("192.0.2.11", 5060)
    layer.receive(_request("OPTIONS", 50), other, "udp", 0.0)
    assert len(layer.transactions()) == 5 and layer.stats.overload_rejected == 6
    assert [r.status for r in _responses(layer)] == [503] * 6
    layer.close()
    assert layer._per_source == {}


def test_retransmissions_and_acks_are_not_refused_at_the_limit() -> None:
    """A retransmission of a live request is still absorbed (not 503), and an ACK, which gets
    no response, is never answered 503."""
    layer = TransactionLayer(random.Random(1), TransactionSettings(max_server_transactions=1))
    first = _request("INVITE", 1)
    layer.receive(first, PEER, "udp", 0.0)
    layer.pop_transmits()
    layer.receive(_request("INVITE", 1), PEER, "udp", 0.1)
    assert layer.stats.absorbed_requests == 1 and layer.stats.overload_rejected == 0
    layer.receive(_request("ACK", 2, to_tag="t", cseq_method="ACK"), PEER, "udp", 0.2)
    assert [r.status for r in _responses(layer)] == []
    assert layer.stats.overload_rejected == 0


def test_room_comes_back_when_transactions_end() -> None:
    """The limit counts live transactions: once timer J has ended them, new requests open
    transactions again."""
    layer = TransactionLayer(random.Random(1), TransactionSettings(max_server_transactions=2))
    for n in range(2):
        layer.receive(_request("OPTIONS", n), PEER, "udp", 0.0)
    while (event := layer.next_event()) is not None:
        assert isinstance(event, RequestReceived)
        layer.send_response(event.server_tx_id, Response(200, "OK", [
            ("Via", event.request.headers.get("Via") or ""), ("CSeq", "1 OPTIONS"),
            ("Call-ID", event.request.call_id), ("From", event.request.headers.get("From")
                                                  or ""), ("To", "<sip:bob@b.test>;tag=t")]),
            0.0)
    layer.receive(_request("OPTIONS", 9), PEER, "udp", 1.0)
    assert layer.stats.overload_rejected == 1
    deadline = layer.next_timer()
    assert deadline == pytest.approx(32.0)  # timer J = 64*T1 on UDP
    layer.handle_timer(32.0)
    assert layer.transactions() == []
    layer.receive(_request("OPTIONS", 10), PEER, "udp", 33.0)
    assert len(layer.transactions()) == 1 and layer.stats.overload_rejected == 1


def test_client_transactions_beyond_the_limit_fail_at_once() -> None:
    """A request the TU sends beyond ``max_client_transactions`` is not sent: the layer reports
    TransportFailed (the TU acts as on 503, RFC 3261 §17.1.4) and keeps no state."""
    layer = TransactionLayer(random.Random(1), TransactionSettings(max_client_transactions=3))
    for n in range(3):
        layer.send_request(_request("OPTIONS", n), PEER, "udp", 0.0)
    assert len(layer.pop_transmits()) == 3
    tx = layer.send_request(_request("OPTIONS", 3), PEER, "udp", 0.0)
    assert layer.pop_transmits() == []
    assert layer.transaction(tx.id) is None and len(layer.transactions()) == 3
    event = layer.next_event()
    assert isinstance(event, TransportFailed) and event.client_tx_id == tx.id
    assert event.reason == "too many transactions"
    assert layer.stats.overload_failed == 1


def test_next_timer_stays_exact_with_thousands_of_transactions() -> None:
    """The deadline heap gives the same answer as a scan, and stale entries left by timers
    that were cancelled (B on a final response) do not pile up without bound."""
    layer = TransactionLayer(random.Random(1), TransactionSettings(
        max_server_transactions_per_source=5000))
    for n in range(3000):
        layer.receive(_request("OPTIONS", n), PEER, "udp", n * 0.001)
    assert layer.next_timer() is None  # Trying waits for the TU: no timer yet (§17.2.2)
    for n in range(3000):
        tx = layer.send_request(_request("INVITE", 10_000 + n), PEER, "udp", 0.0)
        response = Response(486, "Busy Here", [
            ("Via", tx.request.headers.get("Via") or ""), ("CSeq", "1 INVITE"),
            ("Call-ID", tx.request.call_id), ("From", tx.request.headers.get("From") or ""),
            ("To", "<sip:bob@b.test>;tag=t")])
        layer.receive(parse(response.encode()), PEER, "udp", 0.01)
    expected = min(d for tx in layer.transactions() for d in tx.timers.values())
    assert layer.next_timer() == expected
    assert len(layer._heap) <= 4 * len(layer.transactions()) + 1024
    layer.handle_timer(100.0)
    assert len(layer.transactions()) == 3000  # the server ones, still waiting for the TU
    assert layer.next_timer() is None and layer._heap == []


def test_ua_settings_limits_are_checked() -> None:
    """max_calls and max_transactions are validated like every setting."""
    assert UaSettings().max_calls == 200 and UaSettings().max_transactions == 10000
    with pytest.raises(SettingError):
        UaSettings(max_calls=-1)
    with pytest.raises(SettingError):
        UaSettings(max_transactions=0)


# --- INVITE sessions ------------------------------------------------------------------------

def test_incoming_calls_beyond_max_sessions_get_486() -> None:
    """Beyond ``max_sessions`` live sessions a new INVITE is answered 486 Busy Here: no
    session, no IncomingCall event; it is counted in ``refused_busy``."""
    rng = random.Random(2)
    layer = TransactionLayer(rng, TransactionSettings(trying_delay=None))
    manager = SessionManager(layer, rng, SessionSettings(max_sessions=3))
    manager.set_local_address("udp", US)
    for n in range(10):
        layer.receive(_request("INVITE", n), PEER, "udp", 0.0)
        while (event := layer.next_event()) is not None:
            manager.receive(event, 0.0)
    incoming = []
    while (session_event := manager.next_event()) is not None:
        incoming.append(session_event)
    assert len(incoming) == 3 and all(isinstance(e, IncomingCall) for e in incoming)
    assert len(manager.sessions) == 3 and manager.refused_busy == 7
    assert [r.status for r in _responses(layer)] == [486] * 7


def test_session_maps_are_pruned_of_ended_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many short calls (each refused by the owner) leave no lasting trace: past the pruning
    size, entries whose transactions the layer has ended are dropped (the size is lowered from
    4096 here to keep the test fast)."""
    monkeypatch.setattr("sipua.session._PRUNE_AT", 64)
    rng = random.Random(3)
    layer = TransactionLayer(rng, TransactionSettings(trying_delay=None))
    manager = SessionManager(layer, rng, SessionSettings())
    manager.set_local_address("udp", US)

    def one_call(n: int, now: float) -> None:
        layer.receive(_request("INVITE", n), PEER, "udp", now)
        while (event := layer.next_event()) is not None:
            manager.receive(event, now)
        while (session_event := manager.next_event()) is not None:
            if isinstance(session_event, IncomingCall):
                session = manager.session(session_event.session_id)
                assert session is not None
                session.reject(486, now)
        layer.pop_transmits()

    for n in range(100):
        one_call(n, 0.0)
    assert len(manager._by_server_tx) == 100  # all still live: nothing to prune yet
    layer.handle_timer(40.0)  # timer H: every INVITE server transaction has ended
    assert layer.transactions() == []
    for n in range(100, 140):
        one_call(n, 41.0)
    assert len(manager._by_server_tx) <= 40 and manager.sessions == {}
    assert len(layer.transactions()) == 40


# --- registrar ------------------------------------------------------------------------------

def _register(core: Registrar, user: str, contacts: list[str], n: int) -> Response:
    """REGISTER with digest (challenge, then credentials); the final response."""
    def build(cseq: int) -> Request:
        headers = [("Via", f"SIP/2.0/UDP {PEER[0]}:{PEER[1]};branch=z9hG4bKr{n}{cseq}"),
                   ("Max-Forwards", "70"), ("From", f"<sip:{user}@example.org>;tag=f"),
                   ("To", f"<sip:{user}@example.org>"), ("Call-ID", f"reg-{user}"),
                   ("CSeq", f"{cseq} REGISTER"), ("Expires", "600")]
        headers += [("Contact", c) for c in contacts]
        return Request("REGISTER", "sip:example.org", headers)

    def final(request: Request, tx: str) -> Response:
        core.handle(RequestReceived(request, tx, PEER, "udp"), 0.0)
        (action,) = core.pop_transmits()
        assert isinstance(action, SendResponse)
        return action.response

    challenge = final(build(n * 2), f"a{n}")
    if challenge.status != 401:
        return challenge
    client = DigestClient(DigestCredentials(user, "pw"), random.Random(9))
    second = build(n * 2 + 1)
    for name, value in client.handle_challenge(challenge, "REGISTER", "sip:example.org"):
        second.headers.add(name, value)
    return final(second, f"b{n}")


def test_registrar_bounds_bindings_per_aor_and_aors_by_users() -> None:
    """More contacts than ``max_contacts`` for one AOR get 403 and no binding; AORs are bounded
    by the users file: an unknown user never gets past the challenge, so holds no binding."""
    core = Registrar(RegistrarSettings(domain="example.org", max_contacts=2),
                     {"alice": "pw"}, random.Random(3), {"udp": US})
    ok = _register(core, "alice", ["<sip:a1@192.0.2.10>", "<sip:a2@192.0.2.10>"], 1)
    assert ok.status == 200
    refused = _register(core, "alice", ["<sip:a3@192.0.2.10>"], 2)
    assert refused.status == 403 and len(core.bindings("alice")) == 2
    for n in range(50):
        assert _register(core, f"mallory{n}", ["<sip:m@192.0.2.66>"], 10 + n).status == 401
    assert core.bindings("mallory0") == [] and set(core._bindings) == {"alice"}


# --- ICE --------------------------------------------------------------------------------------

def _agent() -> tuple[Agent, LocalBase]:
    agent = Agent(IceSettings(max_pairs=100), controlling=False, rng=random.Random(4))
    base = LocalBase(1, ("10.0.0.1", 1000))
    agent.add_base(base, 0.0)
    agent.set_remote_credentials("rufrag", "r" * 22)
    return agent, base


def test_remote_candidates_from_sdp_are_capped() -> None:
    """An offer with 10,000 candidates keeps MAX_REMOTE_CANDIDATES of them and at most
    max_pairs pairs; the rest are dropped and counted."""
    agent, _ = _agent()
    for n in range(10_000):
        agent.add_remote_candidate(Candidate(
            f"f{n}", 1, "udp", 2_000_000_000 - n, ("192.0.2.50", 10_000 + n % 50_000),
            CandidateType.HOST), 0.0)
    assert len(agent.remote_candidates) == MAX_REMOTE_CANDIDATES
    assert agent.remote_candidates_dropped == 10_000 - MAX_REMOTE_CANDIDATES
    assert len(agent.checklist.pairs) <= 100


def test_peer_reflexive_learning_is_capped() -> None:
    """Authenticated checks from 1,000 source ports answer each (RFC 8445 §7.3) but learn
    at most MAX_REMOTE_CANDIDATES peer-reflexive candidates; the others are counted."""
    agent, base = _agent()
    key = short_term_key(agent.local_pwd)
    for n in range(1000):
        msg = Message(Method.BINDING, MessageClass.REQUEST, n.to_bytes(12, "big"), {
            Attr.USERNAME: f"{agent.local_ufrag}:rufrag", Attr.PRIORITY: 1845501695,
            Attr.ICE_CONTROLLING: 42})
        agent.receive(msg.encode(integrity_key=key, fingerprint=True),
                      ("198.51.100.9", 20_000 + n), base, 0.0)
    answers = agent.pop_transmits()
    assert sum(1 for t in answers if t.dest[0] == "198.51.100.9") >= 1000
    assert len(agent.remote_candidates) == MAX_REMOTE_CANDIDATES
    assert agent.remote_candidates_dropped == 1000 - MAX_REMOTE_CANDIDATES
    learned = []
    while (event := agent.next_event()) is not None:
        if isinstance(event, RemoteCandidateLearned):
            learned.append(event)
    assert len(learned) == MAX_REMOTE_CANDIDATES
    assert len(agent.checklist.pairs) <= 100


def test_unauthenticated_stun_flood_is_answered_counted_and_not_logged_per_packet() -> None:
    """10,000 Binding requests with a random USERNAME and no MESSAGE-INTEGRITY over 2 s: each
    gets its 400, all are counted, but at most MAX_REJECT_EVENTS events per second reach the
    call's timeline."""
    agent, base = _agent()
    rng = random.Random(5)
    for n in range(10_000):
        msg = Message(Method.BINDING, MessageClass.REQUEST, rng.randbytes(12), {
            Attr.USERNAME: f"{rng.getrandbits(32):08x}:x", Attr.PRIORITY: 1})
        agent.receive(msg.encode(fingerprint=True), ("198.51.100.9", 30_000), base,
                      n * 0.0002)
    assert len(agent.pop_transmits()) == 10_000
    assert agent.requests_rejected == 10_000
    rejected = []
    while (event := agent.next_event()) is not None:
        if isinstance(event, RequestRejected):
            rejected.append(event)
    assert len(rejected) == 2 * MAX_REJECT_EVENTS
    assert agent.remote_candidates == []


# --- media ------------------------------------------------------------------------------------

def test_rtp_from_unexpected_sources_is_dropped_and_counted() -> None:
    """Once the selected pair fixes the peer's address, RTP with random SSRCs from elsewhere is
    dropped before parsing and counted; the peer's own stream is untouched."""
    codec = default_registry().create("PCMU")
    session = RtpSession(codec, random.Random(1), 0.0, RtpSessionSettings())
    peer = ("192.0.2.2", 5000)
    session.set_expected_source(peer)
    rng = random.Random(6)
    for n in range(5000):
        data = encode_rtp(0, n & 0xFFFF, n * 160, rng.getrandbits(32), bytes(160), False)
        session.receive(data, ("203.0.113.5", 40_000 + n % 1000), n * 0.0002)
    for n in range(10):
        data = encode_rtp(0, n, n * 160, 0x1234, bytes(160), False)
        session.receive(data, peer, 1.0 + n * 0.02)
    stats = session.stats()
    assert stats.packets_from_unexpected_source == 5000
    assert session.remote_ssrc == 0x1234


def test_jitter_buffer_holds_a_bounded_number_of_frames() -> None:
    """A sender that floods random sequence numbers and nobody pulling: the buffer keeps at
    most its capacity (4 x max delay in frames + 8)."""
    buffer = JitterBuffer(lambda payload: payload * 2)
    rng = random.Random(7)
    for n in range(20_000):
        buffer.put_payload(rng.getrandbits(16), rng.getrandbits(32), bytes(160), n * 0.0001)
    assert len(buffer._frames) <= buffer._capacity
    assert buffer._capacity < 100


def test_ssrc_changes_keep_bounded_state() -> None:
    """A source that changes SSRC on every packet (from the expected address) leaves a bounded
    set of retired SSRCs behind."""
    codec = default_registry().create("PCMU")
    session = RtpSession(codec, random.Random(1), 0.0, RtpSessionSettings())
    peer = ("192.0.2.2", 5000)
    for n in range(2000):
        data = encode_rtp(0, n, n * 160, 100 + n, bytes(160), False)
        session.receive(data, peer, n * 0.001)
        while session.next_event() is not None:
            pass
    assert len(session._retired) <= 8
    assert session.remote_ssrc == 100 + 1999


class _Port:
    """A UDP port that only records (no socket)."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def getHost(self) -> Any:
        return types.SimpleNamespace(host="127.0.0.1", port=30000)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        pass

    def stopListening(self) -> None:
        pass


class _Reactor(task.Clock):
    """A fake clock that can 'listen' on UDP."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[_Port] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> _Port:
        self.ports.append(_Port(protocol))
        return self.ports[-1]


def test_peer_driven_stream_events_are_rate_limited() -> None:
    """A peer that changes SSRC on every packet for 2 s: the stream passes on at most
    MAX_EVENTS_PER_SECOND SsrcChanged events per second to the call, and counts the rest."""
    reactor = _Reactor()
    events: list[object] = []
    session = RtpSession(default_registry().create("PCMU"), random.Random(1), 0.0,
                         RtpSessionSettings())
    stream = UdpMediaStream(session, PacingClock(reactor), remote=("192.0.2.2", 5000),
                            reactor=reactor, symmetric=False, on_event=events.append)
    (port,) = reactor.ports
    for n in range(200):
        reactor.advance(0.01)
        port.protocol.datagramReceived(
            encode_rtp(0, n, n * 160, 1000 + n, bytes(160), False), ("192.0.2.2", 5000))
    changed = [e for e in events if isinstance(e, SsrcChanged)]
    assert 0 < len(changed) <= 3 * MAX_EVENTS_PER_SECOND
    assert stream.events_suppressed >= 199 - len(changed)
    assert session.remote_ssrc == 1199
    stream.close()
