"""INVITE sessions (sipua/session.py) of two user agents wired through their transaction layers.

Messages travel as bytes between the layers (encoded, parsed again) on a fake clock: literal
``now`` floats, seeded rngs. Timers follow RFC 3261 Table 4 (T1 = 0.5 s: timer B and L at 32 s).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from sipua.auth import DigestClient, DigestCredentials, make_challenge
from sipua.message import Request, Response, make_response, parse
from sipua.session import (
    AnswerReceived,
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallFailed,
    CallProgressed,
    IncomingCall,
    InviteSession,
    OfferReceived,
    OfferRejected,
    OfferState,
    SessionError,
    SessionEvent,
    SessionManager,
    SessionSettings,
    SessionState,
)
from sipua.transaction import SipTransmit, TransactionLayer, TransactionSettings

E = TypeVar("E")
ALICE = ("192.0.2.1", 5060)
BOB = ("192.0.2.2", 5062)
OFFER = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n" \
        b"m=audio 4000 RTP/AVP 0\r\n"
ANSWER = OFFER.replace(b"192.0.2.1", b"192.0.2.2").replace(b"4000", b"5000")


class Ua:
    """One user agent: a transaction layer and a session manager at ``address``."""

    def __init__(self, name: str, address: tuple[str, int], seed: int) -> None:
        rng = random.Random(seed)
        self.name = name
        self.address = address
        self.layer = TransactionLayer(rng, TransactionSettings(trying_delay=0.2))
        self.sessions = SessionManager(self.layer, rng, SessionSettings(user_agent=name))
        self.sessions.set_local_address("udp", address)
        self.events: list[SessionEvent] = []
        self.unrouted: list[Any] = []

    def drain(self, now: float) -> None:
        while (event := self.layer.next_event()) is not None:
            if not self.sessions.receive(event, now):
                self.unrouted.append(event)
        while (session_event := self.sessions.next_event()) is not None:
            self.events.append(session_event)

    def take(self, kind: type[E]) -> list[E]:
        """Events of ``kind`` seen so far (and forget them)."""
        found: list[E] = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return found


class Net:
    """Delivers every transmit to the layer at its destination until nothing moves."""

    def __init__(self, *uas: Ua) -> None:
        self.uas = {ua.address: ua for ua in uas}
        self.now = 0.0
        self.drop: Callable[[Ua, bytes], bool] = lambda src, data: False
        self.wire: list[tuple[str, bytes]] = []
        self.lost: list[SipTransmit] = []

    def run(self, now: float | None = None) -> None:
        if now is not None:
            self.now = now
        for _ in range(100):
            moved = False
            for ua in self.uas.values():
                ua.drain(self.now)
                for transmit in ua.layer.pop_transmits():
                    moved = True
                    self.wire.append((ua.name, transmit.data))
                    peer = self.uas.get(transmit.dest)
                    if peer is None or self.drop(ua, transmit.data):
                        self.lost.append(transmit)
                        continue
                    peer.layer.receive(parse(transmit.data), ua.address, "udp", self.now)
            if not moved:
                return
        raise AssertionError("the network never went quiet")

    def advance(self, until: float, step: float = 0.25) -> None:
        """Fire timers up to ``until``, one step at a time."""
        while self.now < until:
            self.now = min(until, self.now + step)
            for ua in self.uas.values():
                deadline = ua.layer.next_timer()
                if deadline is not None and deadline <= self.now:
                    ua.layer.handle_timer(self.now)
            self.run()

    def sent_by(self, name: str, start: str) -> list[bytes]:
        return [data for who, data in self.wire if who == name and data.startswith(
            start.encode())]


def state(session: InviteSession) -> SessionState:
    """The state, read through a call (mypy keeps narrowing attribute reads otherwise)."""
    return session.state


def setup() -> tuple[Ua, Ua, Net]:
    alice, bob = Ua("alice", ALICE, 1), Ua("bob", BOB, 2)
    return alice, bob, Net(alice, bob)


def call(alice: Ua, bob: Ua, net: Net, offer: bytes | None = OFFER
         ) -> tuple[InviteSession, InviteSession]:
    """Alice calls bob; returns both sessions after bob saw the INVITE."""
    session = alice.sessions.invite(f"sip:bob@{BOB[0]}:{BOB[1]}", local="<sip:alice@a.test>",
                                    offer=offer, now=net.now)
    net.run()
    incoming = bob.take(IncomingCall)
    assert len(incoming) == 1
    found = bob.sessions.session(incoming[0].session_id)
    assert found is not None
    return session, found


def established(alice: Ua, bob: Ua, net: Net) -> tuple[InviteSession, InviteSession]:
    out, inc = call(alice, bob, net)
    inc.ring(net.now)
    net.run()
    inc.accept(ANSWER, net.now)
    net.run()
    alice.events.clear()
    bob.events.clear()
    return out, inc


def test_basic_call_ring_answer_ack_and_caller_hangs_up() -> None:
    """INVITE with offer, 180 (early dialog), 200 with answer, ACK; BYE from the caller."""
    alice, bob, net = setup()
    out, inc = call(alice, bob, net)
    assert bob.events == [] and inc.remote_sdp == OFFER
    assert inc.offer_state is OfferState.REMOTE_OFFER
    inc.ring(net.now)
    net.run()
    progressed = alice.take(CallProgressed)
    assert [p.status for p in progressed] == [180]
    assert out.state is SessionState.PROCEEDING and len(out.early) == 1
    inc.accept(ANSWER, net.now + 1)
    net.run(net.now + 1)
    assert [type(e) for e in alice.events] == [CallAnswered, AnswerReceived]
    assert alice.take(AnswerReceived)[0].sdp == ANSWER
    assert bob.take(CallConfirmed) and inc.state is SessionState.CONFIRMED
    assert state(out) is SessionState.CONFIRMED and out.dialog is not None
    assert out.dialog.remote_tag == inc.local_tag
    ack = net.sent_by("alice", "ACK")
    assert len(ack) == 1 and b"CSeq: 1 ACK" in ack[0]
    out.hangup(net.now)
    net.run()
    assert alice.take(CallEnded)[0].by == "local"
    ended = bob.take(CallEnded)
    assert ended[0].by == "remote" and ended[0].reason == "BYE"
    assert state(out) is SessionState.ENDED and state(inc) is SessionState.ENDED
    assert alice.sessions.sessions == {} and bob.sessions.sessions == {}
    assert [r.start_line.split()[0] for r in out.messages] == [
        "INVITE", "SIP/2.0", "SIP/2.0", "ACK", "BYE", "SIP/2.0"]


def test_callee_hangs_up() -> None:
    """BYE from the UAS ends both sides; the caller learns it was the remote side."""
    alice, bob, net = setup()
    out, inc = established(alice, bob, net)
    inc.hangup(net.now)
    net.run()
    assert alice.take(CallEnded)[0].by == "remote"
    assert bob.take(CallEnded)[0].by == "local"
    assert out.state is SessionState.ENDED and inc.state is SessionState.ENDED


def test_rejected_call_fails_with_status() -> None:
    """A final non-2xx is CallFailed with its status; the layer ACKs it by itself."""
    alice, bob, net = setup()
    out, inc = call(alice, bob, net)
    inc.reject(486, net.now)
    net.run()
    failed = alice.take(CallFailed)
    assert [(f.status, f.reason) for f in failed] == [(486, "Busy Here")]
    assert out.state is SessionState.ENDED and out.final_status == 486
    assert bob.take(CallEnded)[0].reason == "rejected with 486"


def test_cancel_after_ringing_gets_487() -> None:
    """CANCEL before the answer: the callee answers 487 and both sides end."""
    alice, bob, net = setup()
    out, inc = call(alice, bob, net)
    inc.ring(net.now)
    net.run()
    out.hangup(net.now)
    assert out.state is SessionState.CANCELLING
    net.run()
    assert bob.take(CallEnded)[0].reason == "CANCEL"
    ended = alice.take(CallEnded)
    assert ended[0].by == "local" and "487" in ended[0].reason
    assert alice.take(CallFailed) == []
    assert inc.final_status == 487 and state(out) is SessionState.ENDED


def test_cancel_before_any_provisional_waits_for_100() -> None:
    """RFC 3261 §9.1: the CANCEL leaves only after a provisional response (100 at 0.2 s)."""
    alice, bob, net = setup()
    out, _inc = call(alice, bob, net)
    out.cancel(net.now)
    net.run()
    assert net.sent_by("alice", "CANCEL") == []
    net.advance(0.5)
    assert len(net.sent_by("alice", "CANCEL")) == 1
    assert bob.take(CallEnded)[0].reason == "CANCEL"
    assert out.state is SessionState.ENDED


def test_2xx_after_cancel_is_acked_and_byed() -> None:
    """A 200 that crosses our CANCEL establishes the session; it is ACKed and ended by BYE."""
    alice, bob, net = setup()
    out, inc = call(alice, bob, net)
    inc.ring(net.now)
    net.run()
    out.cancel(net.now)
    inc.accept(ANSWER, net.now)  # before the CANCEL is delivered
    net.run()
    assert len(net.sent_by("alice", "ACK")) == 1
    assert len(net.sent_by("alice", "BYE")) == 1
    assert alice.take(CallEnded)[0].reason == "cancelled (answered first)"
    assert bob.take(CallEnded)[0].by == "remote"


def test_invite_without_offer_gets_offer_in_200_and_answer_in_ack() -> None:
    """RFC 3264 §5 late offer: the UAS offers in 200, the UAC answers in the ACK."""
    alice, bob, net = setup()
    out, inc = call(alice, bob, net, offer=None)
    assert inc.offer_state is OfferState.STABLE
    inc.accept(ANSWER, net.now)
    net.run()
    offer = alice.take(OfferReceived)
    assert [(o.method, o.sdp) for o in offer] == [("INVITE", ANSWER)]
    assert net.sent_by("alice", "ACK") == []  # the ACK waits for the answer
    out.answer(OFFER, net.now)
    net.run()
    answer = bob.take(AnswerReceived)
    assert [(a.method, a.sdp) for a in answer] == [("ACK", OFFER)]
    assert inc.state is SessionState.CONFIRMED and inc.offer_state is OfferState.STABLE


def test_missing_ack_ends_the_call_with_bye() -> None:
    """RFC 3261 §13.3.1.4: no ACK within 64*T1 (timer L): the UAS sends BYE."""
    alice, bob, net = setup()
    _out, inc = call(alice, bob, net)
    net.drop = lambda src, data: data.startswith(b"ACK")
    inc.accept(ANSWER, net.now)
    net.run()
    assert inc.state is SessionState.ACCEPTED
    net.advance(33.0, step=0.5)
    ended = bob.take(CallEnded)
    assert [(e.by, e.reason) for e in ended] == [("local", "no ACK")]
    assert len(net.sent_by("bob", "BYE")) == 1
    assert alice.take(CallEnded)[0].by == "remote"
    # Every 2xx retransmission was ACKed again (RFC 3261 §13.2.2.4).
    assert len(net.sent_by("alice", "ACK")) > 3


def test_reinvite_and_update_carry_offers() -> None:
    """In-dialog offers by re-INVITE and by UPDATE (RFC 3311) are answered by the owner."""
    alice, bob, net = setup()
    out, inc = established(alice, bob, net)
    hold = OFFER + b"a=sendonly\r\n"
    out.reinvite(hold, net.now)
    net.run()
    offer = bob.take(OfferReceived)
    assert [(o.method, o.sdp) for o in offer] == [("INVITE", hold)]
    inc.answer(ANSWER + b"a=recvonly\r\n", net.now)
    net.run()
    answer = alice.take(AnswerReceived)
    assert [(a.method, a.sdp) for a in answer] == [("INVITE", ANSWER + b"a=recvonly\r\n")]
    assert len(net.sent_by("alice", "ACK")) == 2
    inc.update(ANSWER, net.now)
    net.run()
    offer = alice.take(OfferReceived)
    assert [o.method for o in offer] == ["UPDATE"]
    out.answer(OFFER, net.now)
    net.run()
    assert [a.method for a in bob.take(AnswerReceived)] == ["UPDATE"]
    assert out.offer_state is OfferState.STABLE and inc.offer_state is OfferState.STABLE
    assert out.state is SessionState.CONFIRMED and inc.state is SessionState.CONFIRMED


def test_unacceptable_offer_gets_488_and_the_session_stays() -> None:
    """The owner refuses an offer with 488; the previous session goes on (RFC 3261 §14.1)."""
    alice, bob, net = setup()
    out, inc = established(alice, bob, net)
    out.reinvite(b"v=0 garbage", net.now)
    net.run()
    bob.take(OfferReceived)
    inc.reject_offer(488, net.now)
    net.run()
    rejected = alice.take(OfferRejected)
    assert [(r.status, r.method, r.retry_after) for r in rejected] == [(488, "INVITE", None)]
    assert out.state is SessionState.CONFIRMED and out.can_offer()
    with pytest.raises(SessionError):
        inc.answer(ANSWER, net.now)


def test_glare_gets_491_both_ways_with_the_section_14_waits() -> None:
    """Two re-INVITEs cross: each side answers 491; the Call-ID owner waits 2.1-4 s, the
    other 0-2 s (RFC 3261 §14.1)."""
    alice, bob, net = setup()
    out, inc = established(alice, bob, net)
    out.reinvite(OFFER, net.now)
    inc.reinvite(ANSWER, net.now)
    with pytest.raises(SessionError):
        out.update(OFFER, net.now)
    net.run()
    a = alice.take(OfferRejected)
    b = bob.take(OfferRejected)
    assert [r.status for r in a] == [491] and [r.status for r in b] == [491]
    assert a[0].retry_after is not None and 2.1 <= a[0].retry_after <= 4.0
    assert b[0].retry_after is not None and 0.0 <= b[0].retry_after <= 2.0
    assert out.can_offer() and inc.can_offer()


def test_forked_second_2xx_gets_ack_and_bye() -> None:
    """Forking: the first 2xx wins; a 2xx from another branch is ACKed and ended with BYE."""
    alice, bob, net = setup()
    out, inc = call(alice, bob, net)
    invite_at_bob = inc.invite
    assert invite_at_bob is not None
    inc.accept(ANSWER, net.now)
    net.run()
    other = make_response(invite_at_bob, 200, to_tag="fork2")
    other.headers.add("Contact", "<sip:carol@192.0.2.3:5064>")
    other.headers.add("Content-Type", "application/sdp")
    other.body = ANSWER
    alice.layer.receive(parse(other.encode()), BOB, "udp", net.now)
    net.run()
    acks = [d for d in net.sent_by("alice", "ACK") if b"tag=fork2" in d]
    byes = [d for d in net.sent_by("alice", "BYE") if b"tag=fork2" in d]
    assert len(acks) == 1 and len(byes) == 1
    assert b"sip:carol@192.0.2.3:5064" in byes[0].split(b"\r\n")[0]
    assert out.state is SessionState.CONFIRMED and out.dialog is not None
    assert out.dialog.remote_tag == inc.local_tag
    assert alice.take(CallEnded) == []


def test_unanswered_invite_times_out_as_408() -> None:
    """Timer B (64*T1 = 32 s) without any response: CallFailed(408)."""
    alice = Ua("alice", ALICE, 1)
    net = Net(alice)
    out = alice.sessions.invite("sip:nobody@192.0.2.99", local="<sip:alice@a.test>",
                                offer=OFFER, now=0.0)
    net.run()
    net.advance(33.0, step=0.5)
    failed = alice.take(CallFailed)
    assert [(f.status, f.reason) for f in failed] == [(408, "Request Timeout")]
    assert out.state is SessionState.ENDED


def _request(method: str, to_tag: str | None = None, extra: list[tuple[str, str]] | None = None
             ) -> Request:
    to = "<sip:bob@b.test>" + (f";tag={to_tag}" if to_tag else "")
    headers = [("Via", f"SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bK{method}1;rport"),
               ("From", "<sip:alice@a.test>;tag=x1"), ("To", to), ("Call-ID", "cid-1"),
               ("CSeq", f"7 {method}"), ("Contact", f"<sip:alice@{ALICE[0]}>"),
               *(extra or [])]
    return Request(method, f"sip:bob@{BOB[0]}:{BOB[1]}", headers)


def _answer_of(bob: Ua, request: Request) -> Response:
    bob.layer.receive(parse(request.encode()), ALICE, "udp", 0.0)
    bob.drain(0.0)
    responses = [parse(t.data) for t in bob.layer.pop_transmits()]
    assert len(responses) == 1 and isinstance(responses[0], Response)
    return responses[0]


@pytest.mark.parametrize("method,to_tag,extra,status", [
    ("OPTIONS", None, [], 200),
    ("OPTIONS", "t1", [], 200),
    ("BYE", "nosuchtag", [], 481),
    ("UPDATE", "nosuchtag", [], 481),
    ("MESSAGE", None, [], 405),
    ("INVITE", None, [("Require", "100rel")], 420),
    ("INVITE", None, [("Content-Type", "text/plain")], 415),
])
def test_requests_no_session_owns(method: str, to_tag: str | None,
                                  extra: list[tuple[str, str]], status: int) -> None:
    """OPTIONS is answered by the UA (in or out of a dialog), unknown dialogs get 481,
    unknown methods 405 with Allow, unsupported extensions 420 and unknown bodies 415."""
    bob = Ua("bob", BOB, 2)
    request = _request(method, to_tag, extra)
    if method == "INVITE" and extra[0][0] == "Content-Type":
        request.body = b"hello"
    response = _answer_of(bob, request)
    assert response.status == status
    if status in (200, 405):
        assert "BYE" in response.headers.get_all("Allow")
    if status == 420:
        assert response.headers.get("Unsupported") == "100rel"
    assert bob.take(IncomingCall) == []


def test_options_inside_a_dialog_is_answered() -> None:
    """An in-dialog OPTIONS (a keepalive) gets 200 with our capabilities."""
    alice, bob, net = setup()
    out, _inc = established(alice, bob, net)
    assert out.dialog is not None
    out._in_dialog("OPTIONS", out.dialog, "options", net.now)
    net.run()
    answers = [d for d in net.sent_by("bob", "SIP/2.0 200") if b"OPTIONS\r\n" in d]
    assert len(answers) == 1 and b"Accept: application/sdp" in answers[0]
    assert answers[0].count(b"Allow:") == 1


def test_invite_challenge_is_answered_with_credentials() -> None:
    """407 to INVITE: re-sent with Proxy-Authorization, CSeq 2 and a new branch (§22.2)."""
    alice = Ua("alice", ALICE, 1)
    credentials = DigestClient(DigestCredentials("alice", "secret"), random.Random(5))
    out = alice.sessions.invite(f"sip:bob@{BOB[0]}:{BOB[1]}", local="<sip:alice@a.test>",
                                offer=OFFER, now=0.0, credentials=credentials)
    first = parse(alice.layer.pop_transmits()[0].data)
    assert isinstance(first, Request)
    challenge = make_response(first, 407, to_tag="p1")
    challenge.headers.add("Proxy-Authenticate", make_challenge("a.test", "n0nce"))
    alice.layer.receive(parse(challenge.encode()), BOB, "udp", 0.1)
    alice.drain(0.1)
    sent = [parse(t.data) for t in alice.layer.pop_transmits()]
    invites = [m for m in sent if isinstance(m, Request) and m.method == "INVITE"]
    assert len(invites) == 1
    again = invites[0]
    assert again.cseq.number == 2 and again.vias[0].branch != first.vias[0].branch
    assert 'username="alice"' in (again.headers.get("Proxy-Authorization") or "")
    assert again.call_id == first.call_id and again.from_.tag == first.from_.tag
    assert alice.take(CallFailed) == [] and out.state is SessionState.CALLING
