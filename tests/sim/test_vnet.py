"""The virtual network, observed from the outside by plain Twisted ``DatagramProtocol``s."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import cast

import pytest
from twisted.internet import error, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol

from .clock import advance, run_until
from .vnet import Behaviour, Link, Nat, VirtualHost, VirtualNetwork, VirtualPort

Endpoint = tuple[str, int]

NAT_IP = "198.51.100.1"
S1, S2, S3 = "203.0.113.10", "203.0.113.20", "203.0.113.30"


class Recorder(DatagramProtocol):
    """Keeps every datagram with its source and arrival time; can reply with the source seen."""

    def __init__(self, clock: task.Clock, *, echo: bool = False) -> None:
        self.clock = clock
        self.echo = echo
        self.received: list[tuple[bytes, Endpoint, float]] = []
        self.started = 0
        self.stopped = 0

    def startProtocol(self) -> None:
        self.started += 1

    def stopProtocol(self) -> None:
        self.stopped += 1

    def datagramReceived(self, datagram: bytes, addr: Endpoint) -> None:
        self.received.append((datagram, addr, self.clock.seconds()))
        if self.echo:
            # Twisted's IUDPTransport stubs confuse mypy (methods without self): use the class.
            cast(VirtualPort, self.transport).write(f"{addr[0]} {addr[1]}".encode(), addr)

    @property
    def sources(self) -> list[Endpoint]:
        return [src for _, src, _ in self.received]

    @property
    def payloads(self) -> list[bytes]:
        return [data for data, _, _ in self.received]


class World:
    """A network on a fresh clock, with helpers to bind recorders."""

    def __init__(self, seed: int = 1, **options: bool) -> None:
        self.clock = task.Clock()
        self.net = VirtualNetwork(self.clock, random.Random(seed), **options)

    def listen(
        self, host: VirtualHost, port: int = 0, interface: str = "", *, echo: bool = False,
    ) -> tuple[Recorder, VirtualPort]:
        proto = Recorder(self.clock, echo=echo)
        return proto, host.reactor.listenUDP(port, proto, interface=interface)

    def servers(self) -> tuple[VirtualHost, VirtualHost, VirtualHost]:
        return (self.net.add_host("s1", S1), self.net.add_host("s2", S2),
                self.net.add_host("s3", S3))


def nat_world(make: Callable[[VirtualNetwork], Nat]) -> tuple[World, Nat, VirtualHost]:
    world = World()
    nat = make(world.net)
    host = world.net.add_host("a", "192.168.1.10", behind=nat)
    return world, nat, host


def at(seconds: float) -> float:
    """An arrival time compared with tolerance (typed as the float it stands for)."""
    return cast(float, pytest.approx(seconds))


def mapped(port: VirtualPort) -> Endpoint:
    """The (ip, port) the last datagram arrived from at a recorder listening on ``port``."""
    proto = port.protocol
    assert isinstance(proto, Recorder)
    return proto.received[-1][1]


# --- RFC 4787 behaviours ---------------------------------------------------------------------


def test_port_restricted_cone_keeps_one_port_and_drops_unsolicited() -> None:
    """EIM+APDF: one public port for two destinations; only contacted ip:port pairs get in."""
    world, _, a = nat_world(lambda net: net.add_port_restricted_cone_nat("nat", NAT_IP))
    h1, h2, h3 = world.servers()
    ra, pa = world.listen(a, 5000)
    _, p1 = world.listen(h1, 3478)
    _, p1b = world.listen(h1, 3479)
    _, p2 = world.listen(h2, 3478)
    _, p3 = world.listen(h3, 3478)
    pa.write(b"to s1", (S1, 3478))
    pa.write(b"to s2", (S2, 3478))
    world.net.run(0.1)
    assert mapped(p1) == mapped(p2) == (NAT_IP, 5000)  # port preserved, same for both
    p1.write(b"reply", (NAT_IP, 5000))
    p1b.write(b"other port", (NAT_IP, 5000))
    p3.write(b"stranger", (NAT_IP, 5000))
    world.net.run(0.1)
    assert ra.received == [(b"reply", (S1, 3478), at(0.1))]
    assert world.net.drops["filtered"] == 2


def test_symmetric_nat_uses_a_port_per_destination() -> None:
    """APDM: each destination sees its own public port, and only it may use that port."""
    world, _, a = nat_world(lambda net: net.add_symmetric_nat("nat", NAT_IP))
    h1, h2, _ = world.servers()
    ra, pa = world.listen(a, 5000)
    _, p1 = world.listen(h1, 3478)
    _, p1b = world.listen(h1, 3479)
    _, p2 = world.listen(h2, 3478)
    pa.write(b"1", (S1, 3478))
    pa.write(b"1b", (S1, 3479))
    pa.write(b"2", (S2, 3478))
    world.net.run(0.1)
    ports = {mapped(p1)[1], mapped(p1b)[1], mapped(p2)[1]}
    assert len(ports) == 3
    assert mapped(p1) == (NAT_IP, 5000)  # the first binding keeps the port
    p2.write(b"via s1's binding", mapped(p1))
    p1.write(b"own binding", mapped(p1))
    world.net.run(0.1)
    assert ra.payloads == [b"own binding"]
    assert world.net.drops["filtered"] == 1


def test_address_dependent_mapping_shares_a_port_per_remote_ip() -> None:
    """ADM: two ports of one server share a binding; another server gets a new one."""
    world, _, a = nat_world(lambda net: net.add_nat(
        "nat", NAT_IP, mapping="address-dependent", filtering="address-dependent"))
    h1, h2, _ = world.servers()
    _, pa = world.listen(a, 5000)
    _, p1 = world.listen(h1, 3478)
    _, p1b = world.listen(h1, 3479)
    _, p2 = world.listen(h2, 3478)
    for dest in ((S1, 3478), (S1, 3479), (S2, 3478)):
        pa.write(b"x", dest)
    world.net.run(0.1)
    assert mapped(p1) == mapped(p1b)
    assert mapped(p2) != mapped(p1)


def test_full_cone_accepts_anyone_once_mapped() -> None:
    """EIM+EIF: after one outbound datagram, any outside host reaches the binding."""
    world, _, a = nat_world(lambda net: net.add_full_cone_nat("nat", NAT_IP))
    h1, _, h3 = world.servers()
    ra, pa = world.listen(a, 5000)
    _, p3 = world.listen(h3, 9)
    p3.write(b"too early", (NAT_IP, 5000))
    world.net.run(0.1)
    _, p1 = world.listen(h1, 3478)
    pa.write(b"open", (S1, 3478))
    world.net.run(0.1)
    p3.write(b"stranger", mapped(p1))
    world.net.run(0.1)
    assert ra.received == [(b"stranger", (S3, 9), at(0.2))]
    assert world.net.drops == {"no-mapping": 1}


def test_address_restricted_accepts_same_ip_other_port() -> None:
    """EIM+ADF: the contacted server may answer from any port; other servers may not."""
    world, _, a = nat_world(lambda net: net.add_restricted_cone_nat("nat", NAT_IP))
    h1, _, h3 = world.servers()
    ra, pa = world.listen(a, 5000)
    _, p1 = world.listen(h1, 3478)
    _, p1b = world.listen(h1, 3479)
    _, p3 = world.listen(h3, 3478)
    pa.write(b"open", (S1, 3478))
    world.net.run(0.1)
    p1b.write(b"other port", mapped(p1))
    p3.write(b"other ip", mapped(p1))
    world.net.run(0.1)
    assert ra.sources == [(S1, 3479)]
    assert world.net.drops["filtered"] == 1


def test_two_hosts_same_internal_port_get_distinct_public_ports() -> None:
    """Bindings of two LAN hosts using the same port cannot share the external port."""
    world, nat, a = nat_world(lambda net: net.add_port_restricted_cone_nat("nat", NAT_IP))
    b = world.net.add_host("b", "192.168.1.11", behind=nat)
    h1, _, _ = world.servers()
    ra, pa = world.listen(a, 5000)
    rb, pb = world.listen(b, 5000)
    r1, _ = world.listen(h1, 3478, echo=True)
    pa.write(b"a", (S1, 3478))
    pb.write(b"b", (S1, 3478))
    world.net.run(0.1)
    assert r1.sources[0] == (NAT_IP, 5000)
    assert r1.sources[1][0] == NAT_IP and r1.sources[1][1] != 5000
    assert ra.payloads == [f"{NAT_IP} 5000".encode()]  # each reply reaches its own host
    assert rb.payloads == [f"{NAT_IP} {r1.sources[1][1]}".encode()]
    assert [m.internal for m in nat.bindings()] == [("192.168.1.10", 5000), ("192.168.1.11", 5000)]


def test_port_range_without_preservation() -> None:
    """Without port preservation the external port is drawn from the configured range."""
    world, _, a = nat_world(lambda net: net.add_full_cone_nat(
        "nat", NAT_IP, port_preservation=False, port_range=(40000, 40009)))
    h1, _, _ = world.servers()
    _, pa = world.listen(a, 5000)
    r1, _ = world.listen(h1, 3478)
    pa.write(b"x", (S1, 3478))
    world.net.run(0.1)
    assert 40000 <= r1.sources[0][1] <= 40009


def test_hairpinning_translates_the_source() -> None:
    """A LAN host reaches another through the shared public address, seen as its public endpoint."""
    world, nat, a = nat_world(lambda net: net.add_full_cone_nat("nat", NAT_IP))
    b = world.net.add_host("b", "192.168.1.11", behind=nat)
    h1, _, _ = world.servers()
    ra, pa = world.listen(a, 5000)
    rb, pb = world.listen(b, 6000)
    world.listen(h1, 3478, echo=True)
    pa.write(b"what is my address", (S1, 3478))
    pb.write(b"what is my address", (S1, 3478))
    world.net.run(0.1)
    a_public = (NAT_IP, 5000)
    b_public = (NAT_IP, 6000)
    assert ra.payloads == [b"198.51.100.1 5000"] and rb.payloads == [b"198.51.100.1 6000"]
    pa.write(b"hello b", b_public)
    world.net.run(0.1)
    assert rb.received[-1][:2] == (b"hello b", a_public)
    assert any(r.verdict == "hairpin" for r in world.net.log)


def test_hairpinning_applies_the_target_filter() -> None:
    """Hairpinned datagrams pass the receiving binding's filter like outside ones."""
    world, nat, a = nat_world(lambda net: net.add_port_restricted_cone_nat("nat", NAT_IP))
    b = world.net.add_host("b", "192.168.1.11", behind=nat)
    h1, _, _ = world.servers()
    _, pa = world.listen(a, 5000)
    rb, pb = world.listen(b, 6000)
    world.listen(h1, 3478)
    pa.write(b"bind", (S1, 3478))
    pb.write(b"bind", (S1, 3478))
    world.net.run(0.1)
    pa.write(b"first", (NAT_IP, 6000))
    world.net.run(0.1)
    assert world.net.drops["filtered"] == 1
    pb.write(b"open for a", (NAT_IP, 5000))
    pa.write(b"second", (NAT_IP, 6000))
    world.net.run(0.1)
    assert rb.payloads == [b"second"]


def test_hairpinning_can_be_disabled() -> None:
    """With hairpin=False a datagram to the NAT's own public address is dropped and counted."""
    world, nat, a = nat_world(lambda net: net.add_full_cone_nat("nat", NAT_IP, hairpin=False))
    b = world.net.add_host("b", "192.168.1.11", behind=nat)
    h1, _, _ = world.servers()
    _, pa = world.listen(a, 5000)
    rb, pb = world.listen(b, 6000)
    world.listen(h1, 3478)
    pb.write(b"bind", (S1, 3478))
    world.net.run(0.1)
    pa.write(b"hello b", (NAT_IP, 6000))
    world.net.run(0.1)
    assert rb.received == []
    assert world.net.drops == {"hairpin-disabled": 1}
    assert nat.drops == {"hairpin-disabled": 1}


def test_binding_expires_without_outbound_traffic() -> None:
    """A binding lives binding_timeout after the last outbound datagram, not after inbound ones."""
    world, nat, a = nat_world(lambda net: net.add_port_restricted_cone_nat(
        "nat", NAT_IP, binding_timeout=30.0))
    h1, _, _ = world.servers()
    ra, pa = world.listen(a, 5000)
    _, p1 = world.listen(h1, 3478)
    pa.write(b"open", (S1, 3478))
    world.net.run(29.0)
    p1.write(b"in time", (NAT_IP, 5000))
    world.net.run(1.5)
    p1.write(b"too late", (NAT_IP, 5000))
    world.net.run(0.1)
    assert ra.payloads == [b"in time"]
    assert world.net.drops == {"no-mapping": 1}
    assert nat.bindings() == []
    pa.write(b"again", (S1, 3478))
    world.net.run(0.1)
    assert [m.created for m in nat.bindings()] == [pytest.approx(30.6)]


def test_outbound_keepalives_hold_the_binding() -> None:
    """Outbound datagrams every 20 s keep a 30 s binding open for minutes."""
    world, _, a = nat_world(lambda net: net.add_port_restricted_cone_nat(
        "nat", NAT_IP, binding_timeout=30.0))
    h1, _, _ = world.servers()
    ra, pa = world.listen(a, 5000)
    _, p1 = world.listen(h1, 3478)
    for _ in range(10):
        pa.write(b"keepalive", (S1, 3478))
        world.net.run(20.0)
    p1.write(b"still open", (NAT_IP, 5000))
    world.net.run(0.1)
    assert ra.payloads == [b"still open"]


@pytest.mark.parametrize(("inbound_refresh", "expected"), [(False, 2), (True, 6)])
def test_inbound_refresh_is_optional(inbound_refresh: bool, expected: int) -> None:
    """Only with inbound_refresh do inbound datagrams alone keep a binding alive.

    The binding opens at 0 s with a 30 s timeout; pushes come in at 1, 21, 41, ... s.
    """
    world, _, a = nat_world(lambda net: net.add_full_cone_nat(
        "nat", NAT_IP, binding_timeout=30.0, inbound_refresh=inbound_refresh))
    h1, _, _ = world.servers()
    ra, pa = world.listen(a, 5000)
    _, p1 = world.listen(h1, 3478)
    pa.write(b"open", (S1, 3478))
    world.net.run(1.0)
    for _ in range(6):
        p1.write(b"push", (NAT_IP, 5000))
        world.net.run(20.0)
    assert len(ra.received) == expected


def test_nested_nat_and_overlapping_private_subnets() -> None:
    """Carrier-grade NAT in front of a home NAT, and a second LAN reusing the same subnet."""
    world = World()
    cgn = world.net.add_port_restricted_cone_nat("cgn", "198.51.100.50")
    home = world.net.add_port_restricted_cone_nat("home", "100.64.0.2", behind=cgn)
    other = world.net.add_port_restricted_cone_nat("other", "198.51.100.60")
    a = world.net.add_host("a", "192.168.1.10", behind=home)
    b = world.net.add_host("b", "192.168.1.10", behind=other)
    h1, _, _ = world.servers()
    ra, pa = world.listen(a, 5000)
    rb, pb = world.listen(b, 5000)
    r1, _ = world.listen(h1, 3478, echo=True)
    pa.write(b"a", (S1, 3478))
    pb.write(b"b", (S1, 3478))
    world.net.run(0.1)
    assert sorted(r1.sources) == [("198.51.100.50", 5000), ("198.51.100.60", 5000)]
    assert ra.payloads == [b"198.51.100.50 5000"]
    assert rb.payloads == [b"198.51.100.60 5000"]


# --- link impairments ------------------------------------------------------------------------


def blast(world: World, link: Link, count: int, gap: float = 0.001) -> tuple[Recorder, float]:
    """Send ``count`` numbered datagrams over a's uplink ``link``, ``gap`` s apart; run 1 s more."""
    a = world.net.add_host("a", S1, uplink=link)
    b = world.net.add_host("b", S2)
    _, pa = world.listen(a, 5000)
    rb, _ = world.listen(b, 6000)
    start = world.clock.seconds()

    def send(i: int) -> None:
        pa.write(i.to_bytes(4, "big"), (S2, 6000))
        if i + 1 < count:
            world.clock.callLater(gap, send, i + 1)

    send(0)
    world.net.run(count * gap + 1.0)
    return rb, start


def test_loss_ratio_is_as_configured_and_deterministic() -> None:
    """30 % loss loses about 300 of 1000 datagrams; the same seed loses exactly the same ones."""
    received = []
    for _ in range(2):
        world = World(seed=42)
        rb, _ = blast(world, Link(loss=0.3), 1000)
        assert 250 <= 1000 - len(rb.received) <= 350
        assert world.net.drops["loss"] == 1000 - len(rb.received)
        received.append(rb.payloads)
    assert received[0] == received[1]
    other, _ = blast(World(seed=43), Link(loss=0.3), 1000)
    assert other.payloads != received[0]


def test_delay_adds_up_over_uplink_and_downlink() -> None:
    """One-way delay is the sender's uplink delay plus the receiver's downlink delay."""
    world = World()
    a = world.net.add_host("a", S1, uplink=Link(delay=0.05))
    b = world.net.add_host("b", S2, downlink=Link(delay=0.02))
    _, pa = world.listen(a, 5000)
    rb, _ = world.listen(b, 6000)
    pa.write(b"x", (S2, 6000))
    world.net.run(0.069)
    assert rb.received == []
    world.net.run(0.002)
    assert rb.received == [(b"x", (S1, 5000), at(0.07))]


def test_jitter_reorders_within_bounds() -> None:
    """Uniform jitter delays each datagram by delay..delay+jitter, which reorders them."""
    world = World(seed=3)
    rb, _ = blast(world, Link(delay=0.01, jitter=0.05), 50)
    order = [int.from_bytes(p, "big") for p in rb.payloads]
    assert sorted(order) == list(range(50))
    assert order != sorted(order)
    for data, _, at in rb.received:
        latency = at - int.from_bytes(data, "big") * 0.001
        assert 0.01 - 1e-9 <= latency < 0.06


def test_no_jitter_keeps_order() -> None:
    """Without jitter datagrams arrive in the order they were sent, all at the same delay."""
    rb, _ = blast(World(), Link(delay=0.03), 50)
    assert [int.from_bytes(p, "big") for p in rb.payloads] == list(range(50))


def test_duplication() -> None:
    """duplicate=0.2 delivers about a fifth of the datagrams twice, the count logged exactly."""
    world = World(seed=5)
    rb, _ = blast(world, Link(duplicate=0.2), 500)
    dups = sum(1 for r in world.net.log if r.verdict == "duplicated")
    assert 70 <= dups <= 130
    assert len(rb.received) == 500 + dups
    assert set(rb.payloads) == {i.to_bytes(4, "big") for i in range(500)}
    assert max(rb.payloads.count(p) for p in set(rb.payloads)) == 2


def test_link_down_and_up() -> None:
    """A cut link loses traffic both ways, in flight too; restored, it carries traffic again."""
    world = World()
    a = world.net.add_host("a", S1, uplink=Link(delay=1.0))
    b = world.net.add_host("b", S2)
    ra, pa = world.listen(a, 5000)
    rb, pb = world.listen(b, 6000)
    pa.write(b"in flight", (S2, 6000))
    world.net.run(0.5)
    a.link_down()
    pa.write(b"while down", (S2, 6000))
    pb.write(b"towards a", (S1, 5000))
    world.net.run(0.2)
    a.link_up()
    world.net.run(1.0)
    assert rb.received == [] and ra.received == []
    assert world.net.drops == {"link-down": 3}
    pa.write(b"back", (S2, 6000))
    pb.write(b"back", (S1, 5000))
    world.net.run(1.1)
    assert rb.payloads == [b"back"] and ra.payloads == [b"back"]


def test_nat_link_down_cuts_the_lan_from_the_internet_only() -> None:
    """With the NAT's uplink cut, LAN hosts still reach each other but not the internet."""
    world, nat, a = nat_world(lambda net: net.add_full_cone_nat("nat", NAT_IP))
    b = world.net.add_host("b", "192.168.1.11", behind=nat)
    h1, _, _ = world.servers()
    _, pa = world.listen(a, 5000)
    rb, _ = world.listen(b, 6000)
    r1, _ = world.listen(h1, 3478)
    nat.link_down()
    pa.write(b"out", (S1, 3478))
    pa.write(b"lan", ("192.168.1.11", 6000))
    world.net.run(0.1)
    assert r1.received == []
    assert rb.payloads == [b"lan"]
    assert nat.drops == {"link-down": 1}


def test_same_seed_gives_identical_packet_log() -> None:
    """An impaired scenario run twice with one seed logs identical packets; another seed differs."""

    def scenario(seed: int) -> list[str]:
        world = World(seed=seed)
        nat1 = world.net.add_port_restricted_cone_nat("nat1", NAT_IP,
                                                      uplink=Link(loss=0.1, jitter=0.02))
        nat2 = world.net.add_symmetric_nat("nat2", "198.51.100.2",
                                           downlink=Link(delay=0.01, duplicate=0.1))
        a = world.net.add_host("a", "10.0.0.2", behind=nat1)
        b = world.net.add_host("b", "10.0.0.2", behind=nat2, uplink=Link(jitter=0.03))
        h1, _, _ = world.servers()
        world.listen(h1, 3478, echo=True)
        _, pa = world.listen(a)
        _, pb = world.listen(b)
        for i in range(200):
            world.clock.callLater(i * 0.01, pa.write, b"a%d" % i, (S1, 3478))
            world.clock.callLater(i * 0.01, pb.write, b"b%d" % i, (S1, 3478))
        world.net.run(3.0)
        assert world.net.delivered > 300
        return [str(record) for record in world.net.log]

    first = scenario(7)
    assert first == scenario(7)
    assert first != scenario(8)


# --- the reactor and ports -------------------------------------------------------------------


def test_reactor_api() -> None:
    """The host reactor binds like Twisted's and delegates time to the shared clock."""
    world = World()
    a = world.net.add_host("a", "192.168.1.10")
    assert IReactorUDP.providedBy(a.reactor) and IReactorTime.providedBy(a.reactor)
    proto, port = world.listen(a)
    bound = port.getHost()
    assert isinstance(bound, IPv4Address) and bound.host == "0.0.0.0"
    assert 32768 <= bound.port <= 60999
    assert proto.started == 1 and proto.transport is port
    _, fixed = world.listen(a, 5000, "192.168.1.10")
    assert fixed.getHost() == IPv4Address("UDP", "192.168.1.10", 5000)
    with pytest.raises(error.CannotListenError):
        world.listen(a, 5000, "192.168.1.10")
    with pytest.raises(error.CannotListenError):
        world.listen(a, 5000)  # the wildcard overlaps the bound address
    with pytest.raises(error.CannotListenError):
        world.listen(a, 5001, "192.168.1.99")
    seen: list[float] = []
    call = a.reactor.callLater(2.0, lambda: seen.append(a.reactor.seconds()))
    assert call in world.clock.getDelayedCalls() and call in a.reactor.getDelayedCalls()
    world.net.run(2.0)
    assert seen == [2.0]


def test_stop_listening_is_deferred_like_twisted() -> None:
    """stopListening stops delivery at once, and unbinds and calls doStop on the next turn."""
    world = World()
    a = world.net.add_host("a", S1)
    b = world.net.add_host("b", S2)
    proto, port = world.listen(a, 5000)
    _, pb = world.listen(b, 6000)
    d = port.stopListening()
    assert d is not None
    fired: list[object] = []
    d.addCallback(fired.append)
    assert proto.stopped == 0 and fired == []
    pb.write(b"late", (S1, 5000))
    world.net.run(0.0)
    assert proto.stopped == 1 and fired == [None]
    assert proto.received == [] and world.net.drops == {"port-unreachable": 1}
    again, _ = world.listen(a, 5000)  # the port is free again
    assert again.started == 1


def test_delivery_is_never_reentrant() -> None:
    """write() returns before anything is delivered, even on a zero-delay path."""
    world = World()
    a = world.net.add_host("a", S1)
    b = world.net.add_host("b", S2)
    _, pa = world.listen(a, 5000)
    rb, _ = world.listen(b, 6000)
    pa.write(b"x", (S2, 6000))
    assert rb.received == []
    advance(world.clock, 0)
    assert rb.received == [(b"x", (S1, 5000), 0.0)]


def test_write_rejects_what_twisted_rejects() -> None:
    """Hostnames, the other address family and oversized datagrams raise Twisted's errors."""
    world = World()
    a = world.net.add_host("a", S1)
    _, pa = world.listen(a, 5000)
    with pytest.raises(error.InvalidAddressError):
        pa.write(b"x", ("stun.example.com", 3478))
    with pytest.raises(error.InvalidAddressError):
        pa.write(b"x", ("2001:db8::1", 3478))
    with pytest.raises(error.MessageLengthError):
        pa.write(b"x" * 65508, (S2, 3478))


def test_drop_reasons_are_counted_and_logged() -> None:
    """No route, closed port and oversize datagrams each have a counter and a log line."""
    world = World()
    a = world.net.add_host("a", S1)
    b = world.net.add_host("b", S2)
    _, pa = world.listen(a, 5000)
    rb = Recorder(world.clock)
    b.reactor.listenUDP(6000, rb, maxPacketSize=100)
    pa.write(b"x", ("203.0.113.99", 1))
    pa.write(b"x", ("192.168.1.1", 1))
    pa.write(b"x", (S2, 7000))
    pa.write(b"x" * 101, (S2, 6000))
    world.net.run(0.1)
    assert rb.received == []
    assert world.net.drops == {"no-route": 2, "port-unreachable": 1, "too-large": 1}
    assert "dropped:too-large" in world.net.format_log(last=1)
    assert world.net.format_log().count("\n") == len(world.net.log) - 1


def test_loopback_stays_on_the_host() -> None:
    """Datagrams to 127.0.0.1 or to the host's own address never touch the (cut) link."""
    world = World()
    a = world.net.add_host("a", S1)
    a.link_down()
    r1, p1 = world.listen(a, 5000, "127.0.0.1")
    r2, p2 = world.listen(a, 5001)
    p1.write(b"lo", ("127.0.0.1", 5000))
    p2.write(b"self", (S1, 5001))
    world.net.run(0.0)
    assert r1.received == [(b"lo", ("127.0.0.1", 5000), 0.0)]
    assert r2.received == [(b"self", (S1, 5001), 0.0)]


def test_ipv6_hosts() -> None:
    """IPv6 hosts on the internet exchange datagrams with IPv6 addresses and (host, port) tuples."""
    world = World()
    a = world.net.add_host("a", ["203.0.113.5", "2001:db8::5"])
    b = world.net.add_host("b", "2001:db8::6")
    _, pa = world.listen(a, 5000, "::")
    rb, pb = world.listen(b, 6000, "2001:db8::6")
    assert pa.getHost() == IPv6Address("UDP", "::", 5000)
    pa.write(b"v6", ("2001:db8:0:0::6", 6000))
    world.net.run(0.0)
    assert rb.received == [(b"v6", ("2001:db8::5", 5000), 0.0)]
    assert pb.getHost() == IPv6Address("UDP", "2001:db8::6", 6000)


def test_protocol_errors_raise_or_are_kept() -> None:
    """A datagramReceived exception fails the test by default, or is kept like Twisted logs it."""

    class Broken(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Endpoint) -> None:
            raise RuntimeError("bug")

    for strict in (True, False):
        world = World(raise_protocol_errors=strict)
        a = world.net.add_host("a", S1)
        b = world.net.add_host("b", S2)
        _, pa = world.listen(a, 5000)
        b.reactor.listenUDP(6000, Broken())
        pa.write(b"x", (S2, 6000))
        if strict:
            with pytest.raises(RuntimeError, match="bug"):
                world.net.run(0.0)
        else:
            world.net.run(0.0)
            assert [str(e) for e in world.net.errors] == ["bug"]


def test_bad_topology_is_rejected() -> None:
    """Reused names or addresses and invalid settings raise ValueError."""
    world = World()
    nat = world.net.add_full_cone_nat("nat", NAT_IP)
    world.net.add_host("a", "192.168.1.10", behind=nat)
    world.net.add_host("a2", "192.168.1.10")  # other realm: fine
    with pytest.raises(ValueError, match="already used"):
        world.net.add_host("a", "192.168.1.11", behind=nat)
    with pytest.raises(ValueError, match="already used"):
        world.net.add_host("b", "192.168.1.10", behind=nat)
    with pytest.raises(ValueError):
        world.net.add_host("c", "127.0.0.1")
    with pytest.raises(ValueError):
        world.net.add_nat("n2", "198.51.100.9", mapping="sticky",  # type: ignore[arg-type]
                           filtering="address-dependent")
    with pytest.raises(ValueError):
        Link(loss=1.5)
    assert nat.mapping is Behaviour.ENDPOINT_INDEPENDENT


# --- clock helpers ---------------------------------------------------------------------------


def test_advance_runs_chained_calls_on_time() -> None:
    """advance() runs a chain of 10 ms timers at their exact times; one Clock jump would not."""

    def chain(clock: task.Clock, times: list[float]) -> None:
        times.append(clock.seconds())
        if len(times) < 100:
            clock.callLater(0.01, chain, clock, times)

    clock = task.Clock()
    times: list[float] = []
    clock.callLater(0.01, chain, clock, times)
    advance(clock, 1.5)
    assert times == pytest.approx([0.01 * (i + 1) for i in range(100)])
    assert clock.seconds() == 1.5

    jumpy = task.Clock()
    late: list[float] = []
    jumpy.callLater(0.01, chain, jumpy, late)
    jumpy.advance(1.0)
    assert late == [1.0]


def test_run_until_stops_when_true_or_times_out() -> None:
    """run_until stops at the first instant the predicate holds, or returns False at the timeout."""
    clock = task.Clock()
    flag: list[bool] = []
    clock.callLater(2.5, flag.append, True)
    assert run_until(clock, lambda: bool(flag), timeout=10.0)
    assert clock.seconds() == 2.5
    assert not run_until(clock, lambda: False, timeout=1.0, step=0.1)
    assert clock.seconds() == pytest.approx(3.5)
