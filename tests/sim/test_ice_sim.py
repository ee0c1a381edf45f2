"""Whole ICE agents across NATs on the virtual network, in simulated seconds.

Each agent runs on its own :class:`~tests.sim.vnet.VirtualHost` through the unchanged Twisted
adapter (:class:`ice.udp.IceUdpTransport` with ``host.reactor``); a STUN server
(:func:`ice.server_udp.listen_stun`) and, where a scenario needs one, the small TURN server of
:mod:`tests.sim.turn_server` sit on public hosts. Descriptions are exchanged in-process, as a
signalling channel would, and checks start on both sides at the same instant.

Latency model: every public attachment (a NAT's outside, a public host) has 10 ms of delay in
each direction, LAN links have none. One way between two agents is therefore 20 ms and a round
trip 40 ms, to a server as to the other agent. Connect-time bounds below are built from that and the
pacing interval Ta = 50 ms.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.protocol import DatagramProtocol

from ice.agent import Agent, AppData, IceSettings
from ice.candidate import CandidateType
from ice.checklist import CandidatePair
from ice.events import (
    CheckSent,
    ConsentRefreshed,
    IceCompleted,
    IceEvent,
    IceFailed,
    IceRestarted,
    KeepaliveSent,
    PairSelected,
    RoleChanged,
)
from ice.server_udp import listen_stun
from ice.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    decode,
    decode_channel_data,
    encode_channel_data,
    long_term_key,
    new_transaction_id,
    verify_integrity,
)
from ice.turn import TurnSettings
from ice.udp import IceUdpTransport

from .turn_server import TurnServer
from .vnet import Link, Nat, VirtualHost, VirtualNetwork

STUN_IP = "203.0.113.1"
STUN = (STUN_IP, 3478)
TURN_IP = "203.0.113.2"
TURN = (TURN_IP, 3478)
TURN_USER, TURN_PASSWORD = "alice", "s3cret"
NAT_A_IP = "198.51.100.1"
NAT_B_IP = "198.51.100.2"
NAT_C_IP = "198.51.100.3"
PUB_A_IP = "192.0.2.10"
PUB_B_IP = "192.0.2.20"

ACCESS = Link(delay=0.010)
"""Delay of a public attachment, each way (see the module docstring)."""

RTP = b"\x80"
"""First byte of the test payloads: RTP per RFC 7983, so the agent hands them up as data."""


@pytest.fixture(autouse=True)
def _no_swallowed_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The adapter logs (and survives) an exception of the agent on a datagram, an event
    handler or a send: any such error fails the test."""
    caplog.set_level(logging.WARNING, logger="ice")
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(f"{r.name}: {r.getMessage()}\n{r.exc_text}" for r in errors)


@dataclass
class Peer:
    """One agent on its virtual host, with everything it reported."""

    name: str
    host: VirtualHost
    agent: Agent
    transport: IceUdpTransport
    events: list[IceEvent] = field(default_factory=list)
    received: list[tuple[float, AppData]] = field(default_factory=list)

    def selected(self, component: int = 1) -> CandidatePair:
        pair = self.agent.selected_pair(component)
        assert pair is not None, f"{self.name}: no selected pair for component {component}"
        return pair

    def of(self, kind: type[IceEvent]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def payloads(self, component: int = 1) -> list[bytes]:
        return [app.data for _, app in self.received if app.component == component]

    def timeline(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.events]


class World:
    """A virtual network with a STUN server (and optionally a TURN server) on the internet."""

    def __init__(self, seed: int, *, turn: bool = False, nonce_lifetime: float = 3600.0) -> None:
        self.seed = seed
        self.clock = task.Clock()
        self.net = VirtualNetwork(self.clock, random.Random(seed))
        stun_host = self.net.add_host("stun", STUN_IP, uplink=ACCESS, downlink=ACCESS)
        self.stun_port: Any = listen_stun(stun_host.reactor, STUN[1], STUN_IP)
        self.turn: TurnServer | None = None
        if turn:
            turn_host = self.net.add_host("turn", TURN_IP, uplink=ACCESS, downlink=ACCESS)
            self.turn = TurnServer(turn_host.reactor, TURN, {TURN_USER: TURN_PASSWORD},
                                   self.net.sub_rng("turn-server"),
                                   nonce_lifetime=nonce_lifetime)
        self._peer_seed = seed * 1000

    @property
    def now(self) -> float:
        return self.clock.seconds()

    # --- topology ------------------------------------------------------------------------------
    def nat(self, name: str, ip: str, kind: str, **options: Any) -> Nat:
        """A NAT on the internet behind a 10 ms access link."""
        add: Callable[..., Nat] = getattr(self.net, f"add_{kind}_nat")
        return add(name, ip, uplink=ACCESS, downlink=ACCESS, **options)

    def public_host(self, name: str, ip: str) -> VirtualHost:
        return self.net.add_host(name, ip, uplink=ACCESS, downlink=ACCESS)

    # --- agents --------------------------------------------------------------------------------
    def peer(self, name: str, host: VirtualHost, *, controlling: bool,
             nomination: str = "regular", lite: bool = False, use_turn: bool = False,
             components: int = 1, **settings: Any) -> Peer:
        """An agent bound on every address of ``host`` (not yet gathering)."""
        turn = (TurnSettings(TURN, TURN_USER, TURN_PASSWORD),) if use_turn else ()
        ice = IceSettings(nomination=nomination, lite=lite, stun_servers=(STUN,),
                          turn_servers=turn, **settings)
        self._peer_seed += 1
        agent = Agent(ice, controlling=controlling, rng=random.Random(self._peer_seed),
                      components=components)
        events: list[IceEvent] = []
        received: list[tuple[float, AppData]] = []
        transport = IceUdpTransport(agent, host.reactor, on_event=events.append,
                                    on_data=lambda app: received.append((self.now, app)))
        peer = Peer(name, host, agent, transport, events, received)
        transport.bind(list(host.addresses), components=components)
        return peer

    def gather(self, *peers: Peer, timeout: float = 10.0) -> None:
        for p in peers:
            p.agent.start_gathering(self.now)
            p.transport.poke()
        assert self.net.run_until(lambda: all(p.agent.gathering_complete for p in peers),
                                  timeout), "gathering did not complete"

    def exchange(self, a: Peer, b: Peer) -> None:
        """Signal each side's credentials and candidates to the other (with end-of-candidates)."""
        now = self.now
        for me, other in ((a, b), (b, a)):
            me.agent.set_remote_credentials(other.agent.local_ufrag, other.agent.local_pwd,
                                            lite=other.agent.settings.lite)
            for cand in other.agent.local_candidates:
                me.agent.add_remote_candidate(cand, now)
            me.agent.end_of_remote_candidates(now)
            me.transport.poke()

    def start(self, a: Peer, b: Peer) -> float:
        """Exchange descriptions and start checks on both sides at the same instant."""
        self.exchange(a, b)
        t0 = self.now
        for p in (a, b):
            p.agent.start_checks(t0)
            p.transport.poke()
        return t0

    def connect(self, a: Peer, b: Peer, *, timeout: float = 10.0) -> float:
        """:meth:`start`, then run until both sides completed and use the same path on every
        component; returns the simulated seconds that took (the clock stops at that instant).

        Under aggressive nomination an agent may first select one nominated pair and switch to
        a better one a round trip later: the call is connected when both ends agree."""
        t0 = self.start(a, b)
        done = self.net.run_until(lambda: agreed(a, b), timeout)
        assert done, (f"not connected after {timeout} s; "
                      f"failed: {[e.reason for p in (a, b) for e in p.of(IceFailed)]}\n"
                      + self.net.format_log(last=40))
        return self.now - t0

    def exchange_data(self, a: Peer, b: Peer, count: int = 10, *, tag: str = "",
                      at_least: float = 1.0) -> None:
        """Send ``count`` numbered payloads each way on every component over the selected
        pairs (one every 20 ms), let them land, and check what arrived: in order, nothing
        foreign, from the address each side selected as remote, and at least ``at_least`` of
        them (all of them by default)."""
        components = a.agent.components
        for n in range(count):
            for src, dst in ((a, b), (b, a)):
                for comp in range(1, components + 1):
                    src.transport.send(comp, _payload(tag, src, dst, comp, n))
            self.net.run(0.02)
        self.net.run(0.5)
        for src, dst in ((a, b), (b, a)):
            for comp in range(1, components + 1):
                want = [_payload(tag, src, dst, comp, n) for n in range(count)]
                prefix = _payload(tag, src, dst, comp, None)
                arrived = [(app.data, app.source) for _, app in dst.received
                           if app.component == comp and app.data.startswith(prefix)]
                got = [data for data, _ in arrived]
                assert got == [w for w in want if w in got], f"{dst.name} c{comp}: {got!r}"
                assert len(got) >= at_least * count, f"{dst.name} c{comp}: {got!r}"
                remote = dst.selected(comp).remote.address
                assert {source for _, source in arrived} == {remote}

    def close(self, *peers: Peer) -> None:
        """Close the agents (TURN allocations are released), then the servers."""
        for p in peers:
            p.transport.close()
        self.net.run(1.0)
        if self.turn is not None:
            assert not self.turn.allocations
            self.turn.close()
        self.stun_port.stopListening()
        self.net.run(1.0)


def _payload(tag: str, src: Peer, dst: Peer, component: int, n: int | None) -> bytes:
    text = f"{tag}{src.name}>{dst.name}/{component}#"
    return RTP + (text + str(n) + "." if n is not None else text).encode()


def kinds(pair: CandidatePair) -> tuple[str, str]:
    """(local type, remote type) of a pair."""
    return pair.local.type.value, pair.remote.type.value


def same_path(pa: CandidatePair | None, pb: CandidatePair | None) -> bool:
    """Both ends use one path: what each sends to is what the other knows as its own local
    address (after NAT translation: srflx/prflx addresses are the translated ones; a relayed
    candidate's address is the relay's)."""
    return (pa is not None and pb is not None and pa.remote.address == pb.local.address
            and pb.remote.address == pa.local.address)


def agreed(a: Peer, b: Peer) -> bool:
    """Both agents completed and selected the same path on every component."""
    return bool(a.of(IceCompleted) and b.of(IceCompleted)) and all(
        same_path(a.agent.selected_pair(c), b.agent.selected_pair(c))
        for c in range(1, a.agent.components + 1))


def relayed(pair: CandidatePair) -> bool:
    return CandidateType.RELAY in (pair.local.type, pair.remote.type)


def checks_after(peer: Peer, t: float) -> list[CheckSent]:
    return [e for e in peer.of(CheckSent) if e.at > t]


# --- topologies ---------------------------------------------------------------------------------
Topology = Callable[[World], tuple[VirtualHost, VirtualHost]]


def pub_pub(w: World) -> tuple[VirtualHost, VirtualHost]:
    """Both agents on public addresses."""
    return w.public_host("a", PUB_A_IP), w.public_host("b", PUB_B_IP)


def _behind(w: World, kind_a: str, kind_b: str, ip_a: str = "192.168.1.10",
            ip_b: str = "10.0.0.20", **nat: Any) -> tuple[VirtualHost, VirtualHost]:
    na = w.nat("nat-a", NAT_A_IP, kind_a, **nat)
    nb = w.nat("nat-b", NAT_B_IP, kind_b, **nat)
    return w.net.add_host("a", ip_a, behind=na), w.net.add_host("b", ip_b, behind=nb)


def port_restricted_both(w: World) -> tuple[VirtualHost, VirtualHost]:
    """Endpoint-independent mapping, address-and-port-dependent filtering on both sides."""
    return _behind(w, "port_restricted_cone", "port_restricted_cone")


def port_restricted_to_symmetric(w: World) -> tuple[VirtualHost, VirtualHost]:
    """a: endpoint-independent mapping; b: a new mapping (and port) per destination."""
    return _behind(w, "port_restricted_cone", "symmetric")


def full_cone_to_symmetric(w: World) -> tuple[VirtualHost, VirtualHost]:
    """a: endpoint-independent mapping and filtering; b: symmetric."""
    return _behind(w, "full_cone", "symmetric")


def symmetric_both(w: World) -> tuple[VirtualHost, VirtualHost]:
    """Address-and-port-dependent mapping and filtering on both sides."""
    return _behind(w, "symmetric", "symmetric")


def overlapping_subnets(w: World) -> tuple[VirtualHost, VirtualHost]:
    """Both hosts are 192.168.1.10, each behind its own port-restricted NAT."""
    return _behind(w, "port_restricted_cone", "port_restricted_cone", "192.168.1.10",
                   "192.168.1.10")


def one_nat_hairpin(w: World) -> tuple[VirtualHost, VirtualHost]:
    """Both hosts on one LAN behind one port-restricted NAT that hairpins."""
    nat = w.nat("nat", NAT_A_IP, "port_restricted_cone", hairpin=True)
    return (w.net.add_host("a", "192.168.1.10", behind=nat),
            w.net.add_host("b", "192.168.1.11", behind=nat))


def carrier_nat_hairpin(w: World) -> tuple[VirtualHost, VirtualHost]:
    """Two home NATs behind one carrier-grade NAT that hairpins: the host candidates cannot
    reach each other, the server-reflexive ones (both on the carrier's address) only through
    the hairpin."""
    cgn = w.nat("cgn", NAT_C_IP, "port_restricted_cone", hairpin=True)
    na = w.net.add_port_restricted_cone_nat("home-a", "100.64.0.1", behind=cgn)
    nb = w.net.add_port_restricted_cone_nat("home-b", "100.64.0.2", behind=cgn)
    return (w.net.add_host("a", "192.168.1.10", behind=na),
            w.net.add_host("b", "192.168.1.10", behind=nb))


@dataclass
class Run:
    """One connected call: the world, both agents and the connect time (simulated s)."""

    world: World
    a: Peer
    b: Peer
    connect_time: float


def connected(topology: Topology, seed: int = 1, *, turn: bool = False,
              nonce_lifetime: float = 3600.0, nomination: str = "regular",
              a_controlling: bool = True, b_controlling: bool = False, a_lite: bool = False,
              components: int = 1,
              **settings: Any) -> Run:
    """Build the topology, gather, connect (both sides agree on the path)."""
    w = World(seed, turn=turn, nonce_lifetime=nonce_lifetime)
    host_a, host_b = topology(w)
    a = w.peer("a", host_a, controlling=a_controlling, nomination=nomination, use_turn=turn,
               lite=a_lite, components=components, **settings)
    b = w.peer("b", host_b, controlling=b_controlling, nomination=nomination, use_turn=turn,
               components=components, **settings)
    w.gather(a, b)
    return Run(w, a, b, w.connect(a, b))


def assert_deterministic(first: Run, again: Callable[[], Run]) -> None:
    """The same seed again gives the same event timelines and the same packet log."""
    second = again()
    assert second.a.timeline() == first.a.timeline()
    assert second.b.timeline() == first.b.timeline()
    assert second.world.net.format_log() == first.world.net.format_log()
    assert second.connect_time == first.connect_time


# --- the NAT scenarios ---------------------------------------------------------------------------
RTT = 0.040  # between the agents, and from an agent to a server (see the module docstring)
TA = 0.050


@dataclass(frozen=True)
class Scenario:
    """A topology, what an engineer expects ICE to pick there, and how fast.

    Bounds are the physical minimum under this latency model (the Ta slots the agent must
    wait, plus round trips) with one Ta of margin. Aggressive nomination puts USE-CANDIDATE on
    the first successful check; regular nomination repeats the chosen pair's check in the next
    Ta slot, one more round trip."""

    topology: Topology
    expect_a: tuple[str, str] | None
    """(local, remote) candidate types of a's selected pair; None: a relayed pair."""
    expect_b: tuple[str, str] | None
    aggressive: float
    """Connect time bound under aggressive nomination, simulated seconds."""
    regular: float
    """Connect time bound under regular nomination, simulated seconds."""
    turn: bool = False


SCENARIOS = {
    # The host pair is first in the list and works: 1 RTT; regular: nomination at Ta, + 1 RTT.
    "pub-pub": Scenario(pub_pub, ("host", "host"), ("host", "host"),
                        aggressive=RTT + TA, regular=TA + RTT + TA),
    # The host pair goes nowhere; host->srflx leaves at Ta on both sides at once, so each NAT
    # has opened its filter for the other before the other's check arrives (a simultaneous
    # open): Ta + 1 RTT; regular: nomination at 2 Ta, + 1 RTT.
    "port-restricted-both": Scenario(port_restricted_both, ("srflx", "srflx"),
                                     ("srflx", "srflx"), aggressive=TA + RTT + TA,
                                     regular=2 * TA + RTT + TA),
    # a's checks die at b's symmetric NAT; b's check (at Ta) opens a new mapping that the full
    # cone lets in, a learns b as prflx and its triggered check (next slot, 2 Ta) passes b's
    # filter: 2 Ta + 1 RTT; regular: nomination at 3 Ta, + 1 RTT.
    "full-cone-to-symmetric": Scenario(full_cone_to_symmetric, ("srflx", "prflx"),
                                       ("prflx", "srflx"), aggressive=2 * TA + RTT + TA,
                                       regular=3 * TA + RTT + TA),
    # Both hosts are 192.168.1.10: the host pair stays on the sender's own LAN and leads
    # nowhere; otherwise as port-restricted-both.
    "overlapping-subnets": Scenario(overlapping_subnets, ("srflx", "srflx"), ("srflx", "srflx"),
                                    aggressive=TA + RTT + TA, regular=2 * TA + RTT + TA),
    # One LAN without delay: the host pair works at once and outranks the srflx pairs the
    # hairpin would carry; regular: nomination at Ta.
    "one-nat-hairpin": Scenario(one_nat_hairpin, ("host", "host"), ("host", "host"),
                                aggressive=TA, regular=TA + TA),
    # Only the carrier NAT's hairpin joins the srflx candidates (the host pair and the pairs
    # towards the inner NATs go nowhere); the inner links have no delay, so pacing is all
    # that counts: 2 Ta; regular: nomination at 3 Ta.
    "carrier-nat-hairpin": Scenario(carrier_nat_hairpin, ("srflx", "srflx"), ("srflx", "srflx"),
                                    aggressive=2 * TA + TA, regular=3 * TA + TA),
    # No direct path exists (the symmetric side's mapping towards the peer is not its srflx,
    # and the other NAT admits only what it sent to): relayed. The direct pairs come first
    # (5 Ta slots), then a check crosses the relay (2 RTT); regular: nomination one slot
    # later, + 2 RTT.
    "port-restricted-to-symmetric": Scenario(
        port_restricted_to_symmetric, None, None, aggressive=5 * TA + 2 * RTT + TA,
        regular=6 * TA + 4 * RTT + TA, turn=True),
    "symmetric-both-turn": Scenario(symmetric_both, None, None, aggressive=5 * TA + 2 * RTT + TA,
                                    regular=6 * TA + 4 * RTT + TA, turn=True),
}


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_nat_scenario(name: str, nomination: str) -> None:
    """Across each topology the agents select the path an engineer expects (direct whenever
    one exists, relayed only when none does), the same one on both ends, within the bound;
    data flows both ways over it, and the same seed replays the same timeline."""
    sc = SCENARIOS[name]

    def play() -> Run:
        run = connected(sc.topology, seed=7, turn=sc.turn, nomination=nomination)
        run.world.exchange_data(run.a, run.b)
        return run

    run = play()
    pa, pb = run.a.selected(), run.b.selected()
    if sc.expect_a is None:
        assert relayed(pa) and relayed(pb), (pa, pb)
    else:
        assert (kinds(pa), kinds(pb)) == (sc.expect_a, sc.expect_b)
    assert same_path(pa, pb)
    if sc.topology is carrier_nat_hairpin:
        looped = {r.packet for r in run.world.net.log if r.verdict == "hairpin"}
        assert looped and all(r.where == "cgn" for r in run.world.net.log if r.packet in looped
                              and r.verdict == "hairpin")
    bound = sc.regular if nomination == "regular" else sc.aggressive
    assert run.connect_time <= bound + 1e-9, run.connect_time
    assert_deterministic(run, play)
    run.world.close(run.a, run.b)
    assert not run.world.clock.getDelayedCalls()


@pytest.mark.parametrize("topology", [port_restricted_to_symmetric, symmetric_both],
                         ids=["port-restricted-to-symmetric", "symmetric-both"])
def test_no_direct_path_without_turn(topology: Topology) -> None:
    """The control for the relayed scenarios: without TURN the same topologies have no
    working pair, and both agents report failure once every check has timed out (RFC 8445
    §8.1.2; 7 transmissions with doubling RTO from 0.5 s take 39.5 s)."""
    w = World(3)
    host_a, host_b = topology(w)
    a = w.peer("a", host_a, controlling=True)
    b = w.peer("b", host_b, controlling=False)
    w.gather(a, b)
    t0 = w.start(a, b)
    assert w.net.run_until(lambda: bool(a.of(IceFailed) and b.of(IceFailed)), 60.0)
    assert a.agent.selected_pair(1) is None and b.agent.selected_pair(1) is None
    assert w.now - t0 < 45.0
    assert w.net.drops["filtered"] > 0


def test_turn_relay_details() -> None:
    """Through symmetric NATs on both sides the relay is reached with long-term credentials
    (a 401 first, then success), checks and data cross it, the selected relayed pair gets a
    channel, and closing the agents deallocates."""
    run = connected(symmetric_both, seed=11, turn=True)
    w, a, b = run.world, run.a, run.b
    server = w.turn
    assert server is not None
    assert server.stats["error:401"] == 2 and server.stats["allocate:ok"] == 2
    assert server.stats["permission:ok"] >= 2
    relayed_side = a if a.selected().local.type is CandidateType.RELAY else b
    w.exchange_data(a, b, 5)
    assert server.stats["channel:ok"] >= 1
    assert server.stats["relayed:in"] > 0 and server.stats["relayed:out"] > 0
    relay_address = relayed_side.selected().local.address
    allocation = next(x for x in server.allocations.values() if x.relayed == relay_address)
    assert list(allocation.channels.values()) == [relayed_side.selected().remote.address]
    for p in (a, b):
        p.transport.close()
    w.net.run(1.0)
    assert sorted(server.released) == sorted(
        c.address for p in (a, b) for c in p.agent.local_candidates
        if c.type is CandidateType.RELAY)
    assert not server.allocations


def test_long_relayed_call() -> None:
    """A 12-minute call through TURN with nonces that expire every 2 minutes: the client
    refreshes the allocation in use before its 600 s run out (after a 438 Stale Nonce and a
    retry with the new nonce, RFC 8489 §9.2.5), refreshes the permission every 4 minutes and
    the channel before its 10 minutes, so the relay, the pair and the data survive.

    The other agent's allocation is not in use: nothing but a permission refresh every 240 s
    crosses its symmetric NAT towards the server, whose binding lives 120 s, so the server
    sees that refresh from a new address and answers 437; losing it does not touch the call
    (RFC 8445 §8.3 lets an agent free candidates outside the selected pairs anyway)."""
    run = connected(symmetric_both, seed=29, turn=True, nonce_lifetime=120.0)
    w, a, b = run.world, run.a, run.b
    server = w.turn
    assert server is not None
    pa, pb = a.selected(), b.selected()
    user = pa if pa.local.type is CandidateType.RELAY else pb
    assert user.local.type is CandidateType.RELAY
    w.exchange_data(a, b, 3, tag="start")
    w.net.run(720.0)
    assert a.selected() is pa and b.selected() is pb
    assert server.stats["error:438"] >= 1
    assert server.stats["refresh:ok"] >= 1
    assert server.stats["channel:ok"] >= 2  # bound, then refreshed at 540 s
    in_use = [x for x in server.allocations.values() if x.relayed == user.local.address]
    assert len(in_use) == 1 and in_use[0].expires > w.now + 300
    assert in_use[0].permitted(user.remote.address[0], w.now)
    w.exchange_data(a, b, 3, tag="end")


LOSSY = Link(loss=0.025, delay=0.025)
"""Each access link: 25 ms and 2.5 % loss each way, so 50 ms and ~5 % loss agent to agent."""


def lossy_port_restricted(w: World) -> tuple[VirtualHost, VirtualHost]:
    na = w.net.add_port_restricted_cone_nat("nat-a", NAT_A_IP, uplink=LOSSY, downlink=LOSSY)
    nb = w.net.add_port_restricted_cone_nat("nat-b", NAT_B_IP, uplink=LOSSY, downlink=LOSSY)
    return (w.net.add_host("a", "192.168.1.10", behind=na),
            w.net.add_host("b", "10.0.0.20", behind=nb))


@pytest.mark.parametrize("seed", [1, 2, 6, 28])  # 1 and 28 lose a check on the way, 6 too

@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_loss_and_delay(nomination: str, seed: int) -> None:
    """5 % loss and 50 ms one way between port-restricted NATs: still the srflx pair, the same
    on both ends, within 1.5 s, and data gets through (minus what the link loses).

    Bound: without loss this takes about 2 Ta + 2 RTT (0.3 s at a 100 ms RTT); a lost check
    costs one RTO (0.5 s) before its retransmission, and two of the handful of datagrams on
    the critical path are rarely lost together at 5 %: 0.3 + 2 x 0.5 s, rounded up."""
    run = connected(lossy_port_restricted, seed=seed, nomination=nomination)
    pa, pb = run.a.selected(), run.b.selected()
    assert kinds(pa) == kinds(pb) == ("srflx", "srflx")
    assert run.connect_time < 1.5, run.connect_time
    run.world.exchange_data(run.a, run.b, 40, at_least=0.8)
    assert run.world.net.drops["loss"] > 0


def short_lived_nats(w: World) -> tuple[VirtualHost, VirtualHost]:
    """Port-restricted NATs whose bindings die after 20 s without outbound traffic."""
    return _behind(w, "port_restricted_cone", "port_restricted_cone", binding_timeout=20.0)


@pytest.mark.parametrize("mode", ["consent", "keepalive-only"])
def test_short_nat_binding_timeout_kept_alive(mode: str) -> None:
    """A 60 s idle call across NATs that forget a binding after 20 s: consent checks (every
    4-6 s, RFC 7675) or, with consent off, keepalives (Binding indications every 15 s, RFC 8445
    §11) keep both bindings alive, so data still flows at the end, over the bindings and the
    pair of the start, and no new check was needed."""
    settings: dict[str, Any] = {} if mode == "consent" else {"consent_interval": 0.0}
    run = connected(short_lived_nats, seed=5, **settings)
    w, a, b = run.world, run.a, run.b
    t_connected = w.now
    pa, pb = a.selected(), b.selected()
    w.net.run(60.0)
    assert a.selected() is pa and b.selected() is pb
    for p in (a, b):
        assert len(p.of(PairSelected)) == 1
        assert not [e for e in checks_after(p, t_connected) if not e.retransmission]
        if mode == "consent":
            assert len(p.of(ConsentRefreshed)) >= 60 / 6
        else:
            assert not p.of(ConsentRefreshed)
            assert len(p.of(KeepaliveSent)) >= 60 // 15
    for nat, pair in ((w.net.nats["nat-a"], pa), (w.net.nats["nat-b"], pb)):
        binding = next(m for m in nat.bindings() if m.internal == pair.base.address)
        assert binding.created < t_connected  # the same binding all along
        assert (nat.public_address, binding.external_port) == pair.local.address
    w.exchange_data(a, b)


def test_short_nat_binding_timeout_control() -> None:
    """The control: with keepalives only every 30 s (and no consent) the same NATs forget
    the bindings after 20 s of silence, and data from the peer is dropped there."""
    run = connected(short_lived_nats, seed=5, consent_interval=0.0, keepalive_interval=30.0)
    w, a, b = run.world, run.a, run.b
    w.net.run(25.0)
    before = len(b.received)
    a.transport.send(1, RTP + b"lost")
    w.net.run(1.0)
    assert len(b.received) == before
    assert w.net.nats["nat-b"].drops["no-mapping"] + w.net.nats["nat-b"].drops["filtered"] > 0


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
@pytest.mark.parametrize("controlling", [True, False], ids=["both-controlling",
                                                            "both-controlled"])
def test_role_conflict_across_nats(controlling: bool, nomination: str) -> None:
    """Both agents claim the same role across port-restricted NATs: the 487 repair of RFC 8445
    §7.3.1.1 / §7.2.5.1 leaves the larger tie-breaker controlling and the smaller controlled,
    one agent changes its role once, and they select the same srflx pair and carry data."""
    def play() -> Run:
        run = connected(port_restricted_both, seed=13, nomination=nomination,
                        a_controlling=controlling, b_controlling=controlling)
        run.world.exchange_data(run.a, run.b)
        return run

    run = play()
    a, b = run.a, run.b
    winner, loser = (a, b) if a.agent.tie_breaker > b.agent.tie_breaker else (b, a)
    assert winner.agent.controlling and not loser.agent.controlling
    changed = a.of(RoleChanged) + b.of(RoleChanged)
    assert len(changed) == 1
    assert changed[0] in (loser if controlling else winner).of(RoleChanged)
    assert kinds(a.selected()) == kinds(b.selected()) == ("srflx", "srflx")
    assert same_path(a.selected(), b.selected())
    assert run.connect_time < 0.5
    assert_deterministic(run, play)


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_restart_mid_stream(nomination: str) -> None:
    """ICE restart (RFC 8445 §9) during a stream of data every 20 ms: both agents take new
    credentials, the new descriptions cross the signalling 100 ms later, and until the new
    session selects its pair the data keeps flowing, without a gap, on the old one; afterwards
    on the new one."""
    run = connected(port_restricted_both, seed=17, nomination=nomination)
    w, a, b = run.world, run.a, run.b
    old = {a.name: a.selected(), b.name: b.selected()}
    ufrags = (a.agent.local_ufrag, b.agent.local_ufrag)
    used: dict[str, list[tuple[float, CandidatePair]]] = {a.name: [], b.name: []}
    t_restart = t_signalled = math.inf
    n = 0
    while n < 200:
        if n == 10:
            t_restart = w.now
            for p in (a, b):
                p.agent.restart(w.now)
                p.transport.poke()
        if n == 15:
            t_signalled = w.start(a, b)
        for src, dst in ((a, b), (b, a)):
            used[src.name].append((w.now, src.selected()))
            src.transport.send(1, _payload("r", src, dst, 1, n))
        n += 1
        w.net.run(0.02)
        if n > 40 and all(len(p.of(PairSelected)) == 2 for p in (a, b)):
            break
    w.net.run(0.5)
    for p in (a, b):
        assert len(p.of(IceRestarted)) == 1
        selections = p.of(PairSelected)
        assert len(selections) == 2 and selections[1].at > t_signalled
        new = p.selected()
        assert new is not old[p.name]
        t_new = selections[1].at
        assert all(pair is old[p.name] for t, pair in used[p.name] if t < t_new)
        assert all(pair is new for t, pair in used[p.name] if t >= t_new)
        assert any(t_restart <= t < t_new for t, _ in used[p.name])
    assert (a.agent.local_ufrag, b.agent.local_ufrag) != ufrags
    for src, dst in ((a, b), (b, a)):
        prefix = _payload("r", src, dst, 1, None)
        got = [d for d in dst.payloads() if d.startswith(prefix)]
        assert got == [_payload("r", src, dst, 1, i) for i in range(n)]
    assert same_path(a.selected(), b.selected())


def lite_server(w: World) -> tuple[VirtualHost, VirtualHost]:
    """a: a public host (the lite agent, a server); b: behind a symmetric NAT."""
    nb = w.nat("nat-b", NAT_B_IP, "symmetric")
    return w.public_host("a", PUB_A_IP), w.net.add_host("b", "10.0.0.20", behind=nb)


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_lite_server_behind_symmetric_nat(nomination: str) -> None:
    """A lite agent on a public address (configured controlling, so it must give up the role,
    RFC 8445 §6.1.1) and a full agent behind a symmetric NAT: the full agent controls, its
    check opens the path, the lite side learns it as prflx, and data flows."""
    run = connected(lite_server, seed=19, nomination=nomination, a_controlling=True,
                    a_lite=True, b_controlling=False)
    a, b = run.a, run.b
    assert not a.agent.controlling and b.agent.controlling
    assert not a.of(CheckSent)
    assert kinds(a.selected()) == ("host", "prflx")
    assert kinds(b.selected()) == ("prflx", "host")
    assert run.connect_time <= 2 * RTT + TA
    run.world.exchange_data(a, b)


@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_two_components(nomination: str) -> None:
    """RTP and RTCP (components 1 and 2) across port-restricted NATs: each component gets its
    own srflx pair, both ends agree on each, and data flows on both."""
    run = connected(port_restricted_both, seed=23, nomination=nomination, components=2)
    a, b = run.a, run.b
    for comp in (1, 2):
        assert kinds(a.selected(comp)) == kinds(b.selected(comp)) == ("srflx", "srflx")
        assert a.selected(comp).component == comp
    assert a.selected(1).local.address != a.selected(2).local.address
    assert run.connect_time < 0.5
    run.world.exchange_data(a, b)


# --- the test TURN server itself ------------------------------------------------------------------
class _Raw(DatagramProtocol):
    """A bare UDP endpoint on a virtual host: keeps what arrives."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.got.append((datagram, (addr[0], addr[1])))

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        transport: Any = self.transport
        transport.write(data, dest)


def test_turn_server_protocol() -> None:
    """The TURN server used above follows RFC 8656 / RFC 8489 §9.2 where the agent's client
    would not notice a lax server: 401 with realm and nonce, 401 for a wrong password, 438 for
    an old nonce, 442 for TCP, answers signed with the long-term key, 437 for a second
    Allocate, permissions by IP, ChannelData both ways, nothing relayed without a permission,
    and a Refresh with LIFETIME 0 closes the relay port."""
    w = World(31, turn=True)
    server = w.turn
    assert server is not None
    client_host = w.public_host("client", PUB_A_IP)
    peer_host = w.public_host("peer", PUB_B_IP)
    client, peer = _Raw(), _Raw()
    client_host.reactor.listenUDP(5000, client, interface=PUB_A_IP)
    peer_host.reactor.listenUDP(6000, peer, interface=PUB_B_IP)
    rng = random.Random(1)

    def ask(method: int, attributes: Mapping[Attr, Any], *, key: bytes | None = None,
            nonce: str | None = None, username: str = TURN_USER) -> Message:
        attrs: dict[int, Any] = {int(k): v for k, v in attributes.items()}
        if key is not None:
            attrs.update({Attr.USERNAME: username, Attr.REALM: "sim.test", Attr.NONCE: nonce})
        msg = Message(method, MessageClass.REQUEST, new_transaction_id(rng), attrs)
        client.got.clear()
        client.send(msg.encode(integrity_key=key, fingerprint=True), TURN)
        w.net.run(0.1)
        assert len(client.got) == 1
        answer = decode(client.got[0][0])
        assert answer.transaction_id == msg.transaction_id
        return answer

    def code(answer: Message) -> int | None:
        error = answer.get(Attr.ERROR_CODE)
        return None if error is None else int(error[0])

    udp = {Attr.REQUESTED_TRANSPORT: 17}
    challenge = ask(Method.ALLOCATE, udp)
    assert code(challenge) == 401 and challenge.get(Attr.REALM) == "sim.test"
    nonce = challenge.get(Attr.NONCE)
    key = long_term_key(TURN_USER, "sim.test", TURN_PASSWORD)
    wrong = long_term_key(TURN_USER, "sim.test", "guess")
    assert code(ask(Method.ALLOCATE, udp, key=wrong, nonce=nonce)) == 401
    assert code(ask(Method.ALLOCATE, udp, key=key, nonce="old")) == 438
    assert code(ask(Method.ALLOCATE, {Attr.REQUESTED_TRANSPORT: 6}, key=key, nonce=nonce)) == 442
    ok = ask(Method.ALLOCATE, udp, key=key, nonce=nonce)
    assert ok.cls is MessageClass.SUCCESS and verify_integrity(ok, key)
    relayed = ok.get(Attr.XOR_RELAYED_ADDRESS)
    assert ok.get(Attr.XOR_MAPPED_ADDRESS) == (PUB_A_IP, 5000) and ok.get(Attr.LIFETIME) == 600
    assert code(ask(Method.ALLOCATE, udp, key=key, nonce=nonce)) == 437
    # No permission yet: the peer's datagram is dropped, and so is a Send indication.
    peer.send(b"early", relayed)
    send = Message(Method.SEND, MessageClass.INDICATION, new_transaction_id(rng),
                   {Attr.XOR_PEER_ADDRESS: (PUB_B_IP, 6000), Attr.DATA: b"hello"})
    client.got.clear()
    client.send(send.encode(), TURN)
    w.net.run(0.1)
    assert not client.got and not peer.got
    perm = ask(Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: (PUB_B_IP, 1)}, key=key,
               nonce=nonce)
    assert perm.cls is MessageClass.SUCCESS and verify_integrity(perm, key)
    client.send(send.encode(), TURN)  # the permission is for the IP: any port may be reached
    peer.send(b"to client", relayed)
    w.net.run(0.1)
    assert peer.got == [(b"hello", relayed)]
    data = decode(client.got[-1][0])
    assert data.method == Method.DATA and data.get(Attr.DATA) == b"to client"
    assert data.get(Attr.XOR_PEER_ADDRESS) == (PUB_B_IP, 6000)
    bind = ask(Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: 0x4001,
                                     Attr.XOR_PEER_ADDRESS: (PUB_B_IP, 6000)},
               key=key, nonce=nonce)
    assert bind.cls is MessageClass.SUCCESS
    assert code(ask(Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: 0x4001,
                                          Attr.XOR_PEER_ADDRESS: (PUB_B_IP, 6001)},
                    key=key, nonce=nonce)) == 400
    client.got.clear()
    client.send(encode_channel_data(0x4001, b"via channel"), TURN)
    peer.send(b"back", relayed)
    w.net.run(0.1)
    assert peer.got[-1] == (b"via channel", relayed)
    assert decode_channel_data(client.got[-1][0]) == (0x4001, b"back")
    gone = ask(Method.REFRESH, {Attr.LIFETIME: 0}, key=key, nonce=nonce)
    assert gone.cls is MessageClass.SUCCESS and server.released == [relayed]
    w.net.run(0.1)
    peer.send(b"late", relayed)
    w.net.run(0.1)
    assert w.net.hosts["turn"].drops["port-unreachable"] == 1
    assert code(ask(Method.REFRESH, {Attr.LIFETIME: 600}, key=key, nonce=nonce)) == 437
