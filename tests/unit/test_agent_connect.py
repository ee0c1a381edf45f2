"""Two agents connecting through the in-memory harness: every nomination mode and role, lite,
peer-reflexive candidates, gathering, data both ways, and how fast it happens."""

from __future__ import annotations

import json

import pytest

from ice.agent import AgentState, IceError, IceSettings
from ice.candidate import CandidateType
from ice.events import (
    CandidateGathered,
    CheckSent,
    CheckSucceeded,
    GatheringCompleted,
    IceCompleted,
    LocalCandidateLearned,
    PairNominated,
    PairSelected,
    PairStateChanged,
    RemoteCandidateLearned,
)
from tests.support.ice_harness import (
    add_components,
    all_selected,
    both_selected,
    connect,
    of_type,
    offer_answer,
    selected_at,
    two_agents,
)


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
@pytest.mark.parametrize("a_controls", [True, False])
def test_connect_every_mode_and_role(nomination: str, a_controls: bool) -> None:
    """Both agents select the same path, complete, and carry data both ways over it."""
    settings = IceSettings(nomination=nomination)
    net = two_agents(a_controlling=a_controls, b_controlling=not a_controls, a=settings,
                     b=settings)
    connect(net, "a", "b")
    assert net.run(2.0, stop=both_selected(net))
    a, b = net.agent("a"), net.agent("b")
    pa, pb = a.selected_pair(1), b.selected_pair(1)
    assert pa is not None and pb is not None
    assert pa.local.address == pb.remote.address and pa.remote.address == pb.local.address
    assert pa.nominated and pb.nominated
    assert a.state is b.state is AgentState.COMPLETED
    assert len(of_type(net.events("a"), IceCompleted)) == 1
    controlling = a if a_controls else b
    use_candidate = [e.use_candidate for e in of_type(
        net.events("a" if a_controls else "b"), CheckSent)]
    if nomination == "aggressive":
        assert all(use_candidate)
    else:
        assert use_candidate[0] is False and use_candidate[-1] is True
    assert controlling.controlling
    # data both ways
    a.send(1, b"\x80hello from a", net.now)
    b.send(1, b"\x80hello from b", net.now)
    net.run(net.now + 0.1)
    assert [d.data for d in net.received("b")] == [b"\x80hello from a"]
    assert [d.data for d in net.received("a")] == [b"\x80hello from b"]
    assert net.received("a")[0].source == pa.remote.address


@pytest.mark.parametrize("nomination,limit", [("aggressive", 0.011), ("regular", 0.061)])
def test_connect_speed(nomination: str, limit: float) -> None:
    """With 5 ms one way, aggressive selects on both sides in one round trip; regular adds
    only the nominating check, paced by Ta (first check at once, no settle wait)."""
    settings = IceSettings(nomination=nomination)
    net = two_agents(a=settings, b=settings)
    connect(net, "a", "b")
    first = net.sent[0]
    assert first.sent_at == 0.0
    assert net.run(2.0, stop=both_selected(net))
    assert net.now <= limit


def test_one_side_lite() -> None:
    """A lite agent never sends checks, answers them, is controlled even when configured
    controlling, and the full peer takes control and nominates."""
    net = two_agents(a_controlling=True, b_controlling=False,
                     a=IceSettings(lite=True), b=IceSettings(nomination="regular"))
    connect(net, "a", "b")
    assert net.run(2.0, stop=both_selected(net))
    lite, full = net.agent("a"), net.agent("b")
    assert not lite.controlling and full.controlling
    assert not of_type(net.events("a"), CheckSent)
    assert [p.sender for p in net.sent].count("b") >= 2
    pair = lite.selected_pair(1)
    assert pair is not None and pair.remote.address == ("10.0.0.2", 2000)
    full.send(1, b"\x80x", net.now)
    lite.send(1, b"\x80y", net.now)
    net.run(net.now + 0.05)
    assert net.received("a")[0].data == b"\x80x" and net.received("b")[0].data == b"\x80y"


def test_peer_reflexive_both_kinds() -> None:
    """Agent a behind a NAT it does not know about (no STUN): b learns a remote prflx from a's
    request (RFC 8445 §7.3.1.3), a learns a local prflx from b's XOR-MAPPED-ADDRESS
    (§7.2.5.3.1), and the pair selected uses them."""
    net = two_agents()
    net.nat(("10.0.0.1", 1000), ("198.51.100.1", 61000))
    connect(net, "a", "b")
    assert net.run(3.0, stop=both_selected(net))
    remote_learned = of_type(net.events("b"), RemoteCandidateLearned)
    local_learned = of_type(net.events("a"), LocalCandidateLearned)
    assert remote_learned[0].candidate.address == ("198.51.100.1", 61000)
    assert remote_learned[0].candidate.type is CandidateType.PRFLX
    assert local_learned[0].candidate.address == ("198.51.100.1", 61000)
    pa, pb = net.agent("a").selected_pair(1), net.agent("b").selected_pair(1)
    assert pa is not None and pb is not None
    assert pa.local.type is CandidateType.PRFLX and pb.remote.type is CandidateType.PRFLX
    assert all(c.type is not CandidateType.PRFLX for c in net.agent("a").local_candidates)
    net.agent("b").send(1, b"\x80through the nat", net.now)
    net.run(net.now + 0.05)
    assert net.received("a")[-1].data == b"\x80through the nat"


def test_gathering_srflx_and_redundancy() -> None:
    """STUN gives a srflx candidate for a NATed base; without NAT it equals the host address and
    is dropped as redundant (RFC 8445 §5.1.3); gathering then completes."""
    stun = ("192.0.2.100", 3478)
    settings = IceSettings(stun_servers=(stun,))
    net = two_agents(a=settings, b=settings)
    net.stun_servers.add(stun)
    net.nat(("10.0.0.1", 1000), ("198.51.100.1", 61000))
    for name in ("a", "b"):
        net.agent(name).start_gathering(net.now)
        assert not net.agent(name).gathering_complete
    net.run(1.0, stop=lambda: all(h.agent.gathering_complete for h in net.hosts.values()))
    types_a = [(c.type, c.address) for c in net.agent("a").local_candidates]
    assert types_a == [(CandidateType.HOST, ("10.0.0.1", 1000)),
                       (CandidateType.SRFLX, ("198.51.100.1", 61000))]
    assert [c.type for c in net.agent("b").local_candidates] == [CandidateType.HOST]
    srflx = net.agent("a").local_candidates[1]
    assert srflx.related == ("10.0.0.1", 1000) and srflx.priority < 2130706431
    assert len(of_type(net.events("a"), CandidateGathered)) == 2
    assert of_type(net.events("b"), GatheringCompleted)[0].candidates == 1
    # and the NATed agent connects through its srflx address
    connect(net, "a", "b")
    assert net.run(net.now + 2.0, stop=both_selected(net))
    pair = net.agent("a").selected_pair(1)
    assert pair is not None and pair.local.type is CandidateType.SRFLX


def test_gathering_without_answer_times_out() -> None:
    """A silent STUN server: gathering completes at gather_timeout with host candidates only."""
    settings = IceSettings(stun_servers=(("192.0.2.200", 3478),), gather_timeout=2.0)
    net = two_agents(a=settings)
    net.agent("a").start_gathering(0.0)
    net.run(10.0, stop=lambda: net.agent("a").gathering_complete)
    assert net.now == pytest.approx(2.0)
    assert [c.type for c in net.agent("a").local_candidates] == [CandidateType.HOST]


def test_send_without_pair_raises() -> None:
    """send() before any selection is the caller's error."""
    net = two_agents()
    with pytest.raises(IceError):
        net.agent("a").send(1, b"x", 0.0)
    assert not net.agent("a").can_send(1)


def test_trickled_candidate_after_start() -> None:
    """A remote candidate added after checks began (no candidates at start) is paired and
    checked at once, and the agents connect."""
    net = two_agents(a=IceSettings(nomination="aggressive"))
    a, b = net.agent("a"), net.agent("b")
    a.set_remote_credentials(b.local_ufrag, b.local_pwd)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    a.start_checks(0.0)
    b.start_checks(0.0)
    net.run(0.5)
    assert not net.sent and a.selected_pair(1) is None
    a.add_remote_candidate(b.local_candidates[0], net.now)
    net.flush()
    assert [e.at for e in of_type(net.events("a"), CheckSent)] == [0.5]
    a.end_of_remote_candidates(net.now)
    assert net.run(net.now + 1.0, stop=both_selected(net))
    assert of_type(net.events("a"), PairNominated)
    assert of_type(net.events("a"), RemoteCandidateLearned) == []


def test_events_are_json_and_replayable() -> None:
    """Every event serialises to JSON, carries its time, and selection is in the stream."""
    net = two_agents()
    connect(net, "a", "b")
    net.run(1.0, stop=both_selected(net))
    events = net.events("a")
    text = json.dumps([e.to_dict() for e in events])
    assert '"event": "PairSelected"' in text
    times = [e.at for e in events]
    assert times == sorted(times)
    selected = of_type(events, PairSelected)[-1]
    assert selected.pair.key.startswith("host:10.0.0.1:1000->host:10.0.0.2:2000")


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_both_behind_nat_does_not_wait_for_hopeless_pairs(nomination: str) -> None:
    """Both agents behind NATs with srflx candidates: the host pairs never answer, yet the
    controlling agent nominates the srflx path within the settle time instead of waiting for
    their 39.5 s timeout."""
    stun = ("192.0.2.100", 3478)
    settings = IceSettings(stun_servers=(stun,), nomination=nomination)
    net = two_agents(a=settings, b=settings)
    net.stun_servers.add(stun)
    net.nat(("10.0.0.1", 1000), ("198.51.100.1", 61000))
    net.nat(("10.0.0.2", 2000), ("203.0.113.2", 62000))
    for name in ("a", "b"):
        net.agent(name).start_gathering(net.now)
    net.run(1.0, stop=lambda: all(h.agent.gathering_complete for h in net.hosts.values()))
    start = net.now
    connect(net, "a", "b")
    assert net.run(start + 2.0, stop=both_selected(net))
    elapsed = net.now - start
    assert elapsed < (0.08 if nomination == "aggressive" else 0.16), elapsed
    pa = net.agent("a").selected_pair(1)
    assert pa is not None and pa.remote.address == ("203.0.113.2", 62000)


def test_two_components_unfreeze_and_complete_together() -> None:
    """RTP and RTCP components: component 2 starts frozen and is unfrozen by component 1's
    success on the same foundation; ICE completes only when both are selected."""
    net = two_agents(a_addresses=(), b_addresses=(), seed=5, components=2)
    for name, ip in (("a", "10.0.0.1"), ("b", "10.0.0.2")):
        agent = net.hosts[name].agent
        net.add_agent(name, agent, [(ip, 1000)], component=1)
        net.add_agent(name, agent, [(ip, 1001)], component=2)
    connect(net, "a", "b")
    assert net.run(2.0, stop=lambda: all(
        h.agent.selected_pair(c) is not None for h in net.hosts.values() for c in (1, 2)))
    events = net.events("a")
    first_comp2 = next(e for e in events if isinstance(e, CheckSent) and e.pair.component == 2)
    unfrozen = [e for e in of_type(events, PairStateChanged)
                if e.pair.component == 2 and e.new == "waiting"]
    assert unfrozen and unfrozen[0].cause == "foundation succeeded"
    assert first_comp2.at >= unfrozen[0].at
    completed = of_type(events, IceCompleted)
    selected = of_type(events, PairSelected)
    assert len(completed) == 1 and completed[0].at == max(s.at for s in selected)
    assert {s.component for s in selected} == {1, 2}


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_two_components_behind_nat_complete_within_one_ta(nomination: str) -> None:
    """Both agents behind NATs, RTP and RTCP: the host pairs never answer, the srflx path does.
    Component 2 follows component 1 on the same path within one Ta plus one round trip on
    both sides: its pair is unfrozen by component 1's success and, once valid, nominated at
    once instead of waiting for its own hopeless higher-priority host pair."""
    stun = ("192.0.2.100", 3478)
    settings = IceSettings(stun_servers=(stun,), nomination=nomination, ta=0.02)
    net = two_agents(a=settings, b=settings, a_addresses=(), b_addresses=(), components=2,
                     delay=0.005, seed=5)
    net.stun_servers.add(stun)
    for name, ip, public, port in (("a", "10.0.0.1", "198.51.100.1", 61000),
                                   ("b", "10.0.0.2", "203.0.113.2", 62000)):
        add_components(net, name, ip, 1000, 2)
        net.nat((ip, 1000), (public, port))
        net.nat((ip, 1001), (public, port + 1))
        net.agent(name).start_gathering(net.now)
    net.run(1.0, stop=lambda: all(h.agent.gathering_complete for h in net.hosts.values()))
    start = net.now
    connect(net, "a", "b")
    assert net.run(start + 2.0, stop=all_selected(net, 2))
    for name in ("a", "b"):
        first, second = selected_at(net, name, 1), selected_at(net, name, 2)
        assert first is not None and second is not None
        assert second - first <= 0.02 + 0.01 + 1e-9, (name, first - start, second - start)
        pairs = [net.agent(name).selected_pair(c) for c in (1, 2)]
        assert all(p is not None and p.local.type is CandidateType.SRFLX for p in pairs)


def test_two_components_offer_answer_order_within_one_ta() -> None:
    """As in a call: the answerer's checks reach the offerer before the answer does. Component
    2's pairs still wait, Frozen, for component 1's success (RFC 8445 §6.1.2.6), and component
    2 is selected within one Ta plus one round trip of component 1 on both sides."""
    settings = IceSettings(ta=0.02)
    net = two_agents(a=settings, b=settings, a_addresses=(), b_addresses=(), components=2,
                     delay=0.0003, seed=5)
    add_components(net, "a", "127.0.0.1", 1000, 2)
    add_components(net, "b", "127.0.0.2", 1000, 2)
    offer_answer(net, "a", "b", answer_delay=0.0006)
    assert net.run(2.0, stop=all_selected(net, 2))
    for name in ("a", "b"):
        events = net.events(name)
        success = next(e.at for e in of_type(events, CheckSucceeded) if e.pair.component == 1)
        checks = [e for e in of_type(events, CheckSent) if e.pair.component == 2]
        assert checks and checks[0].at >= success
        first, second = selected_at(net, name, 1), selected_at(net, name, 2)
        assert first is not None and second is not None
        assert second - first <= 0.02 + 0.0006 + 1e-9, (name, first, second)


def test_both_lite() -> None:
    """Two lite agents send no checks; each selects its best pair at start (RFC 8445 §6.1.1)."""
    lite = IceSettings(lite=True)
    net = two_agents(a=lite, b=lite)
    connect(net, "a", "b")
    a, b = net.agent("a"), net.agent("b")
    assert a.controlling and not b.controlling
    pa, pb = a.selected_pair(1), b.selected_pair(1)
    assert pa is not None and pb is not None and pa.remote.address == pb.local.address
    assert not of_type(net.events("a"), CheckSent) and not of_type(net.events("b"), CheckSent)
