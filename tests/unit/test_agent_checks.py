"""Connectivity checks in detail: retransmission and timeout, role conflicts both ways, request
validation, garbage, switching under aggressive nomination, restart, keepalive and consent."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ice.agent import Agent, IceError, IceSettings
from ice.candidate import LocalBase
from ice.events import (
    CheckFailed,
    CheckSent,
    CheckSucceeded,
    ConsentLost,
    ConsentRefreshed,
    IceFailed,
    IceRestarted,
    KeepaliveSent,
    PairSelected,
    RequestRejected,
    RoleChanged,
)
from ice.stun import Attr, Message, MessageClass, Method, decode, short_term_key
from tests.support.ice_harness import Network, Packet, both_selected, connect, of_type, two_agents


def describe(net: Network, a: str, b: str) -> None:
    """Exchange credentials and candidates both ways without starting checks."""
    for me, peer in ((net.agent(a), net.agent(b)), (net.agent(b), net.agent(a))):
        me.set_remote_credentials(peer.local_ufrag, peer.local_pwd)
        for cand in peer.local_candidates:
            me.add_remote_candidate(cand, net.now)
        me.end_of_remote_candidates(net.now)


def test_retransmission_and_timeout() -> None:
    """An unanswered check is retransmitted with doubling RTO (500 ms first, RFC 8445 §14.3)
    and fails after Rc transmissions and the final wait; with no other pair ICE fails."""
    net = two_agents(loss=lambda p: p.sender == "a")
    describe(net, "a", "b")
    net.agent("a").start_checks(0.0)
    net.run(60.0)
    sent = of_type(net.events("a"), CheckSent)
    assert [round(e.at, 3) for e in sent] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [e.retransmission for e in sent] == [False] + [True] * 6
    assert len({e.transaction_id for e in sent}) == 1
    failed = of_type(net.events("a"), CheckFailed)
    assert len(failed) == 1 and failed[0].reason == "timeout"
    assert failed[0].at == pytest.approx(39.5)
    ice_failed = of_type(net.events("a"), IceFailed)
    assert len(ice_failed) == 1 and ice_failed[0].at == pytest.approx(39.5)


def test_lost_first_check_recovered_by_peer_check() -> None:
    """The first check dies (a closed NAT); the peer's check triggers a new one at once, so the
    connection does not wait for the 500 ms retransmission."""
    dropped: list[Packet] = []

    def lose_first(p: Packet) -> bool:
        if p.sender == "a" and not dropped:
            dropped.append(p)
            return True
        return False

    settings_ = IceSettings(nomination="aggressive")
    net = two_agents(a=settings_, b=settings_, loss=lose_first)
    describe(net, "a", "b")
    net.agent("a").start_checks(0.0)
    net.agent("b").start_checks(0.02)
    assert net.run(2.0, stop=both_selected(net))
    assert dropped and net.now < 0.1


@pytest.mark.parametrize("roles", ["controlling", "controlled"])
def test_role_conflict_resolved_by_receiver(roles: str) -> None:
    """RFC 8445 §7.3.1.1 as the receiver: both controlling, the receiver with the smaller
    tie-breaker becomes controlled; both controlled, the one with the larger becomes
    controlling. No 487 is needed and they connect."""
    both = roles == "controlling"
    a_tie, b_tie = (10**6, 5) if both else (5, 10**6)
    net = two_agents(a_controlling=both, b_controlling=both, a_tie=a_tie, b_tie=b_tie)
    describe(net, "a", "b")
    net.agent("a").start_checks(0.0)
    net.run(0.004)
    net.agent("b").start_checks(net.now)  # b answers a's first check before checking itself
    assert net.run(3.0, stop=both_selected(net))
    changes = of_type(net.events("b"), RoleChanged)
    assert len(changes) == 1 and changes[0].controlling is not both
    assert not of_type(net.events("a"), RoleChanged)
    assert net.agent("a").controlling is not net.agent("b").controlling
    assert not [e for e in of_type(net.events("b"), RequestRejected) if e.code == 487]


@pytest.mark.parametrize("roles", ["controlling", "controlled"])
def test_role_conflict_resolved_by_487(roles: str) -> None:
    """RFC 8445 §7.2.5.1 as the sender: the receiver keeps its role and answers 487; the sender
    switches, retries the pair as a triggered check, and they connect."""
    both = roles == "controlling"
    a_tie, b_tie = (5, 10**6) if both else (10**6, 5)
    net = two_agents(a_controlling=both, b_controlling=both, a_tie=a_tie, b_tie=b_tie)
    describe(net, "a", "b")
    net.agent("a").start_checks(0.0)
    net.run(0.0065)  # the 487 reaches a before any check of b
    net.agent("b").start_checks(net.now)
    assert net.run(3.0, stop=both_selected(net))
    rejected = of_type(net.events("b"), RequestRejected)
    assert [e.code for e in rejected] == [487]
    changes = of_type(net.events("a"), RoleChanged)
    assert len(changes) == 1 and changes[0].reason == "487 role conflict"
    assert changes[0].controlling is not both
    assert "487" in [e.reason for e in of_type(net.events("a"), CheckFailed)]
    assert net.agent("a").controlling is not net.agent("b").controlling


@pytest.mark.parametrize("both", [True, False])
def test_role_conflict_simultaneous(both: bool) -> None:
    """Both start at once with the same role: exactly one agent ends up switching and the
    pair is selected on both sides."""
    net = two_agents(a_controlling=both, b_controlling=both, seed=7)
    connect(net, "a", "b")
    assert net.run(3.0, stop=both_selected(net))
    assert net.agent("a").controlling is not net.agent("b").controlling


def _request(agent_b: Agent, agent_a: Agent, *, key: bytes | None, username: str | None,
             extra: dict[int, object] | None = None) -> bytes:
    attrs: dict[int, object] = {}
    if username is not None:
        attrs[Attr.USERNAME] = username
    attrs[Attr.PRIORITY] = 1845501695
    attrs[Attr.ICE_CONTROLLING] = 42
    attrs.update(extra or {})
    msg = Message(Method.BINDING, MessageClass.REQUEST, b"0123456789ab", attrs)
    return msg.encode(integrity_key=key, fingerprint=True)


@pytest.mark.parametrize("case,code", [
    ("wrong password", 401), ("wrong ufrag", 401), ("no username", 400),
    ("no integrity", 400), ("unknown attribute", 420),
])
def test_bad_requests_rejected_without_state_change(case: str, code: int) -> None:
    """Bad integrity gets 401, missing USERNAME/MESSAGE-INTEGRITY 400, an unknown
    comprehension-required attribute 420; nothing is learned, paired or triggered."""
    net = two_agents()
    describe(net, "a", "b")
    a, b = net.agent("a"), net.agent("b")
    good_key = short_term_key(a.local_pwd)
    username = f"{a.local_ufrag}:{b.local_ufrag}"
    data = {
        "wrong password": _request(b, a, key=b"nope", username=username),
        "wrong ufrag": _request(b, a, key=good_key, username=f"zzzz:{b.local_ufrag}"),
        "no username": _request(b, a, key=good_key, username=None),
        "no integrity": _request(b, a, key=None, username=username),
        "unknown attribute": _request(b, a, key=good_key, username=username,
                                      extra={0x7F01: b"\x00\x00\x00\x00"}),
    }[case]
    pairs_before = [(p.remote.address, p.state) for p in a.checklist.pairs]
    base = net.hosts["a"].bases[0]
    assert net.inject("a", data, ("192.0.2.7", 7777), base) is None
    answers = a.pop_transmits()
    sent = [p for p in net.sent if p.dest == ("192.0.2.7", 7777)]
    assert not answers and len(sent) == 1
    reply = decode(sent[0].data)
    assert reply.cls is MessageClass.ERROR and reply.get(Attr.ERROR_CODE)[0] == code
    assert [(p.remote.address, p.state) for p in a.checklist.pairs] == pairs_before
    assert all(c.address != ("192.0.2.7", 7777) for c in a.remote_candidates)
    kinds = {type(e).__name__ for e in net.events("a")}
    assert "RequestRejected" in kinds and "RemoteCandidateLearned" not in kinds
    assert "PairStateChanged" not in kinds and "RoleChanged" not in kinds


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120) | st.binary(max_size=80).map(
    lambda b: b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"x" * 12 + b))
def test_garbage_never_raises(data: bytes) -> None:
    """Any bytes fed to receive() are consumed or returned as data, never an exception."""
    agent = Agent(IceSettings(), controlling=True, rng=random.Random(3))
    base = LocalBase(1, ("10.0.0.1", 1000))
    agent.add_base(base, 0.0)
    agent.set_remote_credentials("ufrag", "p" * 22)
    result = agent.receive(data, ("10.0.0.9", 9), base, 0.0)
    assert result is None or result.data == data
    agent.handle_timer(0.0)


def test_controlled_switches_under_aggressive_nomination() -> None:
    """The controlled agent first selects the pair nominated first (a fast, low-priority path),
    then switches to the higher-priority one when it is nominated later (RFC 5245 §8.1.1.2)."""
    def slow_high(p: Packet) -> float:
        return 0.1 if ("10.0.0.1", 1000) in (p.source, p.dest) else 0.005

    settings_ = IceSettings(nomination="aggressive")
    net = two_agents(a=settings_, b=settings_, delay=slow_high,
                     a_addresses=(("10.0.0.1", 1000),))
    net.add_base("a", LocalBase(1, ("10.0.1.1", 1001)), local_preference=100)
    connect(net, "a", "b")
    net.run(2.0)
    selections = of_type(net.events("b"), PairSelected)
    assert [s.pair.remote_address for s in selections] == [("10.0.1.1", 1001),
                                                            ("10.0.0.1", 1000)]
    assert selections[0].at < 0.1 < selections[1].at
    final_a, final_b = net.agent("a").selected_pair(1), net.agent("b").selected_pair(1)
    assert final_a is not None and final_b is not None
    assert final_a.local.address == ("10.0.0.1", 1000) == final_b.remote.address


def test_restart_keeps_old_pair_until_new_selection() -> None:
    """ICE restart (RFC 8445 §9): new credentials, fresh checks; data keeps flowing on the old
    pair meanwhile, and the new session selects its own pair."""
    net = two_agents()
    connect(net, "a", "b")
    assert net.run(2.0, stop=both_selected(net))
    a, b = net.agent("a"), net.agent("b")
    old_ufrag = a.local_ufrag
    a.restart(net.now)
    b.restart(net.now)
    assert a.local_ufrag != old_ufrag and a.selected_pair(1) is not None
    a.send(1, b"\x80during restart", net.now)
    net.run(net.now + 0.05)
    assert net.received("b")[-1].data == b"\x80during restart"
    assert of_type(net.events("a"), IceRestarted)[0].ufrag == a.local_ufrag
    before = len(of_type(net.events("a"), PairSelected))
    connect(net, "a", "b")
    net.run(net.now + 2.0)
    assert len(of_type(net.events("a"), PairSelected)) == before + 1
    assert len(of_type(net.events("b"), PairSelected)) == before + 1
    sent = of_type(net.events("a"), CheckSent)
    assert sent[-1].at > of_type(net.events("a"), IceRestarted)[0].at
    b.send(1, b"\x80after restart", net.now)
    net.run(net.now + 0.05)
    assert net.received("a")[-1].data == b"\x80after restart"


def test_consent_checks_timing() -> None:
    """Consent checks about every 5 s (randomized 0.8-1.2, RFC 7675 §5.1) refresh consent on
    both sides; they keep the pair busy, so no keepalive indication is needed."""
    net = two_agents()
    connect(net, "a", "b")
    assert net.run(2.0, stop=both_selected(net))
    start = net.now
    net.run(start + 31.0)
    for name in ("a", "b"):
        refreshed = of_type(net.events(name), ConsentRefreshed)
        times = [start] + [e.at for e in refreshed]
        gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
        assert 5 <= len(refreshed) <= 8
        assert all(3.9 <= g <= 6.1 for g in gaps), gaps
        assert not of_type(net.events(name), KeepaliveSent)
        assert not of_type(net.events(name), ConsentLost)


def test_keepalive_when_idle() -> None:
    """With consent checks off, a Binding indication goes out after 15 s of silence on the
    selected pair (RFC 8445 §11); sending data postpones it."""
    settings_ = IceSettings(consent_interval=0.0)
    net = two_agents(a=settings_, b=settings_)
    connect(net, "a", "b")
    assert net.run(2.0, stop=both_selected(net))
    a = net.agent("a")
    net.run(10.0)
    a.send(1, b"\x80x", net.now)
    net.run(40.5)
    kept = of_type(net.events("a"), KeepaliveSent)
    assert [round(e.at, 3) for e in kept] == [25.0, 40.0]
    indications = [p for p in net.sent if p.sender == "a" and p.sent_at >= 25.0]
    msg = decode(indications[0].data)
    assert msg.cls is MessageClass.INDICATION and msg.method == Method.BINDING
    assert not of_type(net.events("a"), ConsentLost)


def test_consent_lost() -> None:
    """No consent response for 30 s: ConsentLost, and the agent stops sending."""
    net = two_agents()
    connect(net, "a", "b")
    assert net.run(2.0, stop=both_selected(net))
    selected_at = net.now
    net.loss = lambda p: p.sender == "b"
    net.run(selected_at + 40.0)
    lost = of_type(net.events("a"), ConsentLost)
    assert len(lost) == 1
    last_refresh = max([e.at for e in of_type(net.events("a"), ConsentRefreshed)]
                       + [selected_at])
    assert lost[0].at == pytest.approx(last_refresh + 30.0, abs=0.02)
    a = net.agent("a")
    assert not a.can_send(1)
    with pytest.raises(IceError):
        a.send(1, b"\x80x", net.now)
    count = len([p for p in net.sent if p.sender == "a"])
    net.run(net.now + 20.0)
    assert len([p for p in net.sent if p.sender == "a"]) == count


@pytest.mark.parametrize("case", ["bad integrity", "wrong source", "good"])
def test_responses_matched_by_id_source_and_integrity(case: str) -> None:
    """A response must carry the peer's MESSAGE-INTEGRITY (else it is ignored) and come from
    where the request went (else the pair fails, RFC 8445 §7.2.5.2.1)."""
    net = two_agents(loss=lambda p: True)
    describe(net, "a", "b")
    a, b = net.agent("a"), net.agent("b")
    a.start_checks(0.0)
    net.flush()
    request = decode(net.sent[0].data)
    source = ("10.0.0.99", 2000) if case == "wrong source" else ("10.0.0.2", 2000)
    key = b"wrong" if case == "bad integrity" else short_term_key(b.local_pwd)
    response = Message(Method.BINDING, MessageClass.SUCCESS, request.transaction_id,
                       {Attr.XOR_MAPPED_ADDRESS: ("10.0.0.1", 1000)})
    net.inject("a", response.encode(integrity_key=key, fingerprint=True), source,
               net.hosts["a"].bases[0])
    pair = a.checklist.pairs[0]
    expected = {"bad integrity": "in-progress", "wrong source": "failed",
                "good": "succeeded"}[case]
    if case == "good":
        # The check succeeded and made a valid pair; with regular nomination the controlling
        # side may already be re-checking it with USE-CANDIDATE (in progress again).
        assert pair.valid_pair is not None and pair.valid_pair.valid
        assert [e.transaction_id for e in of_type(net.events("a"), CheckSucceeded)] == [
            request.transaction_id.hex()]
    else:
        assert pair.state.value == expected
    failed = of_type(net.events("a"), CheckFailed)
    assert [e.reason for e in failed] == (["asymmetric"] if case == "wrong source" else [])


@pytest.mark.parametrize(("proposed", "expected"), [(None, 0.015), (0.01, 0.015),
                                                    (0.05, 0.05), (30.0, 1.0)])
def test_checks_paced_at_the_higher_of_both_proposals(proposed: float | None,
                                                      expected: float) -> None:
    """RFC 8445 §14.2: with the peer's a=ice-pacing the ordinary checks go out every
    max(ours, theirs); no proposal keeps ours; an absurd one is capped at a second."""
    net = two_agents(loss=lambda p: True,  # nothing arrives: only ordinary, paced checks
                     a_addresses=[("10.0.0.1", 1000), ("10.0.1.1", 1001), ("10.0.2.1", 1002)])
    describe(net, "a", "b")
    agent = net.agent("a")
    agent.set_remote_pacing(proposed)
    assert agent.ta == pytest.approx(expected)
    agent.start_checks(0.0)
    net.run(2.5 * expected)
    firsts = [e.at for e in of_type(net.events("a"), CheckSent) if not e.retransmission]
    assert len(firsts) >= 2
    assert [round(b - a, 6) for a, b in itertools.pairwise(firsts[:3])] == \
        [pytest.approx(expected)] * (min(3, len(firsts)) - 1)
