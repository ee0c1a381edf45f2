"""A virtual UDP network on a Twisted ``task.Clock``: hosts, NATs and impaired links.

Whole agents run on it unchanged: each :class:`VirtualHost` hands out a ``reactor`` with
``listenUDP``, ``callLater``, ``seconds`` and ``getDelayedCalls``, so adapter code written for an
injected reactor cannot tell it from the real one, while time is simulated and every random
choice (loss, jitter, duplication, ephemeral and NAT ports) comes from the seeded ``rng``.

Topology: the internet is one flat address space (use the RFC 5737 / RFC 3849 documentation
ranges); each NAT owns a LAN, its own address space (so private subnets may overlap), which may
hold hosts and further NATs. A datagram crosses the sender's uplink, is routed in its realm (to a
node there, or out through the realm's NAT), and crosses the receiver's downlink. Every crossing
is a ``clock.callLater``, so nothing is ever delivered from inside ``write()``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, cast

from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IReactorUDP,
    IUDPTransport,
)
from twisted.internet.protocol import AbstractDatagramProtocol
from zope.interface import classImplements  # type: ignore[import-untyped]

from .clock import advance, run_until

logger = logging.getLogger(__name__)

Endpoint = tuple[str, int]
"""An (ip, port) pair, the ip in canonical text form."""

_WILDCARD = {4: "0.0.0.0", 6: "::"}
_LOOPBACK = {4: "127.0.0.1", 6: "::1"}
_MAX_PAYLOAD = {4: 65507, 6: 65527}  # 65535 minus the IP and UDP headers


class Behaviour(StrEnum):
    """NAT mapping (RFC 4787 §4.1) and filtering (RFC 4787 §5) behaviours."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


BehaviourName = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]


@dataclass(frozen=True)
class Link:
    """Impairments applied to every datagram crossing one direction of a node's attachment."""

    loss: float = 0.0
    """Probability that a datagram is lost."""
    delay: float = 0.0
    """Fixed one-way delay, in seconds."""
    jitter: float = 0.0
    """Extra delay drawn uniformly from [0, jitter) seconds per datagram; reorders datagrams."""
    duplicate: float = 0.0
    """Probability that a datagram arrives twice (each copy with its own jitter)."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Link.{name} is a probability in [0, 1], got {value!r}")
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if value < 0.0:
                raise ValueError(f"Link.{name} must not be negative, got {value!r}")


@dataclass(frozen=True)
class Packet:
    """One datagram in flight; duplicates and NAT translations keep the ``id``."""

    id: int
    src: Endpoint
    dst: Endpoint
    data: bytes


def _fmt(endpoint: Endpoint) -> str:
    ip, port = endpoint
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True)
class PacketRecord:
    """One line of the packet log: what happened to datagram ``packet`` at node ``where``.

    ``verdict`` is ``sent``, ``nat-out``, ``nat-in``, ``hairpin`` (addresses as translated
    there), ``duplicated``, ``delivered`` or ``dropped:<reason>``.
    """

    time: float
    packet: int
    where: str
    src: Endpoint
    dst: Endpoint
    size: int
    verdict: str

    def __str__(self) -> str:
        return (
            f"{self.time:12.6f} #{self.packet:<5} {self.where:<12} "
            f"{_fmt(self.src)} -> {_fmt(self.dst)} {self.size}B {self.verdict}"
        )


def _invalid_address(address: object, message: str) -> error.InvalidAddressError:
    return error.InvalidAddressError(address, message)  # type: ignore[no-untyped-call]


def _cannot_listen(interface: str, port: int, cause: Exception) -> error.CannotListenError:
    return error.CannotListenError(interface, port, cause)  # type: ignore[no-untyped-call]


def _ip(text: str) -> tuple[str, int]:
    """Canonical text and version of an IP literal; ValueError for anything else."""
    parsed = ipaddress.ip_address(text)
    return str(parsed), parsed.version


class _Realm:
    """One address space: the internet, or the LAN behind one NAT."""

    def __init__(self, net: VirtualNetwork, name: str, gateway: Nat | None) -> None:
        self.net = net
        self.name = name
        self.gateway = gateway
        self.nodes: dict[str, Node] = {}

    def attach(self, address: str, node: Node) -> None:
        if address in self.nodes:
            owner = self.nodes[address].name
            raise ValueError(f"{address} is already used by {owner} in {self.name}")
        self.nodes[address] = node

    def route(self, packet: Packet, *, from_gateway: bool = False) -> None:
        node = self.nodes.get(packet.dst[0])
        if node is not None:
            node.receive(packet)
        elif self.gateway is not None and not from_gateway:
            self.gateway.outbound(packet)
        else:
            self.net.drop(packet, self.name, "no-route")


class Node:
    """Something attached to a realm through a link: a host, or a NAT's outside interface."""

    def __init__(
        self, net: VirtualNetwork, name: str, realm: _Realm, uplink: Link | None,
        downlink: Link | None,
    ) -> None:
        self.net = net
        self.name = name
        self.realm = realm
        self.uplink: Link = uplink or Link()
        """Impairments on datagrams this node sends into its realm (replace to reconfigure)."""
        self.downlink: Link = downlink or Link()
        """Impairments on datagrams reaching this node from its realm."""
        self.is_up = True
        """False while the link is cut: datagrams in either direction, in flight too, are lost."""
        self._cuts = 0  # a datagram in flight across a cut is lost even if the link is back
        self.drops: Counter[str] = Counter()
        """Datagrams dropped at this node, by reason."""
        self._rng_up = net.sub_rng(f"{name}/uplink")
        self._rng_down = net.sub_rng(f"{name}/downlink")

    def link_down(self) -> None:
        """Cut the link (both directions) until :meth:`link_up`; datagrams in flight are lost."""
        self.is_up = False
        self._cuts += 1

    def link_up(self) -> None:
        """Restore the link."""
        self.is_up = True

    def receive(self, packet: Packet) -> None:
        """A datagram for this node leaves its realm: it crosses the downlink, then arrives."""
        self._cross(self.downlink, self._rng_down, packet, self.handle)

    def transmit(self, packet: Packet) -> None:
        """Send a datagram into this node's realm over the uplink."""
        self._cross(self.uplink, self._rng_up, packet, self.realm.route)

    def handle(self, packet: Packet) -> None:
        raise NotImplementedError

    def _cross(
        self, link: Link, rng: random.Random, packet: Packet, then: Callable[[Packet], None],
    ) -> None:
        if not self.is_up:
            self.net.drop(packet, self.name, "link-down", self)
            return
        # Draw only for the impairments in use, so an unimpaired link consumes no randomness.
        if link.loss and rng.random() < link.loss:
            self.net.drop(packet, self.name, "loss", self)
            return
        copies = 2 if link.duplicate and rng.random() < link.duplicate else 1
        if copies == 2:
            self.net.record(packet, self.name, "duplicated")
        for _ in range(copies):
            delay = link.delay + (rng.uniform(0.0, link.jitter) if link.jitter else 0.0)
            self.net.clock.callLater(delay, self._arrive, packet, then, self._cuts)

    def _arrive(self, packet: Packet, then: Callable[[Packet], None], cuts: int) -> None:
        if not self.is_up or cuts != self._cuts:
            self.net.drop(packet, self.name, "link-down", self)
        else:
            then(packet)


# ---------------------------------------------------------------------------------------------
# Hosts, their ports and their reactor


class VirtualPort:
    """A bound UDP socket: what ``listenUDP`` returns and what the protocol gets as transport."""

    def __init__(
        self, host: VirtualHost, protocol: AbstractDatagramProtocol, version: int,
        ip: str | None, port: int, maxPacketSize: int,
    ) -> None:
        self.host = host
        self.protocol = protocol
        self.version = version
        self.ip = ip
        """The bound address, or None when bound to the wildcard."""
        self.port = port
        self.maxPacketSize = maxPacketSize
        self.connected = True
        """Bound (until the deferred close of :meth:`stopListening` has run)."""
        self.reading = True
        """Datagrams are delivered (False from :meth:`stopListening` on)."""
        self._closing: defer.Deferred[None] | None = None

    def __repr__(self) -> str:
        ip = self.ip or _WILDCARD[self.version]
        return f"<VirtualPort {self.host.name} {_fmt((ip, self.port))}>"

    def getHost(self) -> IPv4Address | IPv6Address:
        """The bound address, like a real socket's: the wildcard address when bound to it."""
        ip = self.ip or _WILDCARD[self.version]
        if self.version == 4:
            return IPv4Address("UDP", ip, self.port)
        return IPv6Address("UDP", ip, self.port)

    def write(self, datagram: bytes, addr: tuple[str, int] | None = None) -> None:
        """Send ``datagram`` to ``addr``; errors mirror Twisted's ``udp.Port.write``."""
        if addr is None:
            raise _invalid_address(addr, "connected mode is not simulated")
        ip_text, port = addr[0], addr[1]
        try:
            ip, version = _ip(ip_text)
        except ValueError:
            raise _invalid_address(
                ip_text, "write() only accepts IP addresses, not hostnames",
            ) from None
        if version != self.version:
            message = f"IPv{self.version} port, IPv{version} address"
            raise _invalid_address(ip_text, message)
        if not 0 < port < 65536:
            raise _invalid_address(ip_text, f"bad port {port!r}")
        if len(datagram) > _MAX_PAYLOAD[version]:
            raise error.MessageLengthError("message too long")
        self.host.send(self, bytes(datagram), (ip, port))

    def stopListening(self) -> defer.Deferred[None] | None:
        """Stop delivering now; unbind and call ``doStop`` on the next turn, as Twisted does."""
        self.reading = False
        if not self.connected or self._closing is not None:
            return self._closing
        self._closing = defer.Deferred()
        self.host.net.clock.callLater(0, self._connection_lost)
        return self._closing

    def loseConnection(self) -> None:
        """Alias of :meth:`stopListening`."""
        self.stopListening()

    def startListening(self) -> None:
        """Already listening from ``listenUDP`` on (part of IListeningPort)."""

    def connect(self, host: str, port: int) -> None:
        """Connected UDP is not simulated."""
        raise NotImplementedError("connected UDP is not simulated")

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Broadcast is not simulated; accepted for API compatibility."""

    def getBroadcastAllowed(self) -> bool:
        return False

    def _connection_lost(self) -> None:
        self.connected = False
        self.host.unbind(self)
        self.protocol.doStop()  # type: ignore[no-untyped-call]
        if self._closing is not None:
            closing, self._closing = self._closing, None
            closing.callback(None)


class VirtualReactor:
    """The part of a Twisted reactor that UDP adapters use, bound to one virtual host.

    Time goes to the network's shared ``Clock``; ``listenUDP`` binds on the host.
    """

    def __init__(self, host: VirtualHost) -> None:
        self.host = host
        self.clock = host.net.clock

    def listenUDP(
        self, port: int, protocol: AbstractDatagramProtocol, interface: str = "",
        maxPacketSize: int = 8192,
    ) -> VirtualPort:
        """Bind ``protocol`` on ``interface`` (``""`` = IPv4 wildcard) and ``port`` (0: ephemeral).

        Raises ``CannotListenError`` for an address the host does not have or a port in use.
        """
        return self.host.bind(port, protocol, interface, maxPacketSize)

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object,
    ) -> IDelayedCall:
        return self.clock.callLater(delay, callable, *args, **kw)

    def seconds(self) -> float:
        return self.clock.seconds()

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return self.clock.getDelayedCalls()


classImplements(VirtualReactor, IReactorUDP, IReactorTime)
classImplements(VirtualPort, IListeningPort, IUDPTransport)


class VirtualHost(Node):
    """A host with one or more addresses in one realm, and the loopback addresses."""

    def __init__(
        self, net: VirtualNetwork, name: str, addresses: tuple[str, ...], realm: _Realm,
        nat: Nat | None, uplink: Link | None, downlink: Link | None,
        ephemeral_ports: tuple[int, int],
    ) -> None:
        super().__init__(net, name, realm, uplink, downlink)
        self.addresses = addresses
        self.nat = nat
        """The NAT this host is behind, or None on the internet."""
        self.ephemeral_ports = ephemeral_ports
        self.reactor = VirtualReactor(self)
        """Pass this as ``reactor=`` to code under test."""
        self.ports: dict[tuple[int, str | None, int], VirtualPort] = {}
        """Bound ports by (IP version, address or None for the wildcard, port)."""
        self._rng_ports = net.sub_rng(f"{name}/ports")

    def __repr__(self) -> str:
        return f"<VirtualHost {self.name} {', '.join(self.addresses)}>"

    @property
    def address(self) -> str:
        """The first (primary) address."""
        return self.addresses[0]

    def _local(self, ip: str) -> bool:
        return ip in self.addresses or ip in _LOOPBACK.values()

    def _free(self, version: int, ip: str | None, port: int) -> bool:
        if ip is None:  # the wildcard conflicts with every address on that port
            return not any(v == version and p == port for (v, _, p) in self.ports)
        return (version, ip, port) not in self.ports and (version, None, port) not in self.ports

    def bind(
        self, port: int, protocol: AbstractDatagramProtocol, interface: str, maxPacketSize: int,
    ) -> VirtualPort:
        if interface == "":
            interface = _WILDCARD[4]
        try:
            ip, version = _ip(interface)
        except ValueError:
            cause = ValueError("not an IP address")
            raise _cannot_listen(interface, port, cause) from None
        bound: str | None = None if ip == _WILDCARD[version] else ip
        if bound is not None and not self._local(bound):
            raise _cannot_listen(interface, port, OSError("address not available"))
        if port == 0:
            port = self._ephemeral(version, bound, interface)
        elif not 0 < port < 65536:
            raise _cannot_listen(interface, port, ValueError("bad port"))
        elif not self._free(version, bound, port):
            raise _cannot_listen(interface, port, OSError("address already in use"))
        vport = VirtualPort(self, protocol, version, bound, port, maxPacketSize)
        self.ports[(version, bound, port)] = vport
        protocol.makeConnection(cast(IUDPTransport, vport))
        return vport

    def _ephemeral(self, version: int, bound: str | None, interface: str) -> int:
        low, high = self.ephemeral_ports
        for _ in range(64):  # random like Linux, from the host's own seeded stream
            port = self._rng_ports.randint(low, high)
            if self._free(version, bound, port):
                return port
        for port in range(low, high + 1):
            if self._free(version, bound, port):
                return port
        raise _cannot_listen(interface, 0, OSError("no ephemeral port left"))

    def unbind(self, vport: VirtualPort) -> None:
        key = (vport.version, vport.ip, vport.port)
        if self.ports.get(key) is vport:
            del self.ports[key]

    def send(self, vport: VirtualPort, data: bytes, dst: Endpoint) -> None:
        version = vport.version
        if vport.ip is not None:
            src_ip = vport.ip
        elif dst[0] == _LOOPBACK[version]:
            src_ip = dst[0]
        else:
            candidates = [a for a in self.addresses if _ip(a)[1] == version]
            if not candidates:
                packet = self.net.new_packet((_WILDCARD[version], vport.port), dst, data)
                self.net.drop(packet, self.name, "no-route", self)
                return
            src_ip = candidates[0]
        packet = self.net.new_packet((src_ip, vport.port), dst, data)
        self.net.record(packet, self.name, "sent")
        if not vport.reading:
            self.net.drop(packet, self.name, "port-closed", self)
        elif self._local(dst[0]):  # loopback and own addresses never touch the link
            self.net.clock.callLater(0, self.handle, packet)
        elif src_ip in _LOOPBACK.values():
            self.net.drop(packet, self.name, "no-route", self)
        else:
            self.transmit(packet)

    def handle(self, packet: Packet) -> None:
        ip, port = packet.dst
        version = _ip(ip)[1]
        vport = self.ports.get((version, ip, port)) or self.ports.get((version, None, port))
        if vport is None or not vport.reading:
            self.net.drop(packet, self.name, "port-unreachable", self)
            return
        if len(packet.data) > vport.maxPacketSize:
            self.net.drop(packet, self.name, "too-large", self)
            return
        self.net.record(packet, self.name, "delivered")
        self.net.delivered += 1
        try:
            vport.protocol.datagramReceived(packet.data, packet.src)
        except Exception as exc:
            self.net.errors.append(exc)
            if self.net.raise_protocol_errors:
                raise
            logger.exception("%s: datagramReceived raised on %r", self.name, vport)


# ---------------------------------------------------------------------------------------------
# NAT


@dataclass
class Mapping:
    """One NAT binding: an internal endpoint seen outside as (public address, external port)."""

    internal: Endpoint
    external_port: int
    key: tuple[Endpoint, str | None, int | None]
    created: float
    last_active: float
    """Last refresh; the binding lives until ``last_active + binding_timeout``."""
    permissions: dict[Endpoint, float] = field(default_factory=dict)
    """Remote endpoints the internal one sent to through this binding, with the last time."""


class Nat(Node):
    """A NAT with RFC 4787 mapping and filtering behaviours, hairpinning and binding expiry.

    Each binding owns a distinct external port, so an inbound datagram finds its binding by the
    destination port alone, then passes the filter of that binding.
    """

    def __init__(
        self, net: VirtualNetwork, name: str, public_address: str, realm: _Realm, *,
        mapping: Behaviour, filtering: Behaviour, hairpin: bool, binding_timeout: float,
        inbound_refresh: bool, port_preservation: bool, port_range: tuple[int, int],
        uplink: Link | None, downlink: Link | None,
    ) -> None:
        super().__init__(net, name, realm, uplink, downlink)
        self.public_address = public_address
        self.version = _ip(public_address)[1]
        self.mapping = mapping
        self.filtering = filtering
        self.hairpin = hairpin
        self.binding_timeout = binding_timeout
        self.inbound_refresh = inbound_refresh
        self.port_preservation = port_preservation
        self.port_range = port_range
        self.lan = _Realm(net, f"{name}/lan", gateway=self)
        """The address space behind this NAT."""
        self._by_key: dict[tuple[Endpoint, str | None, int | None], Mapping] = {}
        self._by_port: dict[int, Mapping] = {}
        self._rng_ports = net.sub_rng(f"{name}/nat-ports")

    def __repr__(self) -> str:
        return (
            f"<Nat {self.name} {self.public_address} mapping={self.mapping} "
            f"filtering={self.filtering} hairpin={self.hairpin}>"
        )

    def bindings(self) -> list[Mapping]:
        """The bindings alive now, oldest first."""
        now = self.net.clock.seconds()
        return sorted(
            (m for m in self._by_port.values() if self._alive(m, now)), key=lambda m: m.created,
        )

    def _alive(self, m: Mapping, now: float) -> bool:
        return now < m.last_active + self.binding_timeout

    def _key(self, internal: Endpoint, remote: Endpoint) -> tuple[Endpoint, str | None, int | None]:
        # RFC 4787 §4.1: what, besides the internal endpoint, selects the binding.
        if self.mapping is Behaviour.ENDPOINT_INDEPENDENT:
            return (internal, None, None)
        if self.mapping is Behaviour.ADDRESS_DEPENDENT:
            return (internal, remote[0], None)
        return (internal, remote[0], remote[1])

    def _forget(self, m: Mapping) -> None:
        self._by_key.pop(m.key, None)
        if self._by_port.get(m.external_port) is m:
            del self._by_port[m.external_port]

    def _port_free(self, port: int, now: float) -> bool:
        m = self._by_port.get(port)
        if m is not None and not self._alive(m, now):
            self._forget(m)
            m = None
        return m is None

    def _allocate(self, internal_port: int, now: float) -> int | None:
        low, high = self.port_range
        # RFC 4787 §4.2.1: keep the internal port when possible ("port preservation").
        if (
            self.port_preservation
            and low <= internal_port <= high
            and self._port_free(internal_port, now)
        ):
            return internal_port
        for _ in range(64):
            port = self._rng_ports.randint(low, high)
            if self._port_free(port, now):
                return port
        for port in range(low, high + 1):
            if self._port_free(port, now):
                return port
        return None

    def outbound(self, packet: Packet) -> None:
        """A datagram from the LAN to an address outside it: translate the source, forward."""
        now = self.net.clock.seconds()
        dst_ip = packet.dst[0]
        if _ip(dst_ip)[1] != self.version:
            self.net.drop(packet, self.name, "no-route", self)
            return
        hairpinning = dst_ip == self.public_address
        if hairpinning and not self.hairpin:
            self.net.drop(packet, self.name, "hairpin-disabled", self)
            return
        key = self._key(packet.src, packet.dst)
        m = self._by_key.get(key)
        if m is not None and not self._alive(m, now):
            self._forget(m)
            m = None
        if m is None:
            port = self._allocate(packet.src[1], now)
            if port is None:
                self.net.drop(packet, self.name, "ports-exhausted", self)
                return
            m = Mapping(packet.src, port, key, created=now, last_active=now)
            self._by_key[key] = m
            self._by_port[port] = m
            logger.debug("%s: new binding %s -> %s", self.name, _fmt(packet.src),
                         _fmt((self.public_address, port)))
        m.last_active = now  # RFC 4787 §4.3: outbound traffic refreshes the binding
        m.permissions[packet.dst] = now
        translated = dataclasses.replace(packet, src=(self.public_address, m.external_port))
        if hairpinning:
            # RFC 4787 §6 (REQ-9): loop back inside, the source being the sender's external
            # endpoint; the target binding's filter applies as for any outside sender.
            self.net.record(translated, self.name, "hairpin")
            self.inbound(translated)
        else:
            self.net.record(translated, self.name, "nat-out")
            self.transmit(translated)

    def handle(self, packet: Packet) -> None:
        """A datagram from outside reached the public address (after the downlink)."""
        self.inbound(packet)

    def inbound(self, packet: Packet) -> None:
        now = self.net.clock.seconds()
        m = self._by_port.get(packet.dst[1])
        if m is not None and not self._alive(m, now):
            self._forget(m)
            m = None
        if m is None:
            self.net.drop(packet, self.name, "no-mapping", self)
            return
        if not self._permits(m, packet.src, now):
            self.net.drop(packet, self.name, "filtered", self)
            return
        if self.inbound_refresh:
            m.last_active = now
            if packet.src in m.permissions:
                m.permissions[packet.src] = now
        translated = dataclasses.replace(packet, dst=m.internal)
        self.net.record(translated, self.name, "nat-in")
        self.lan.route(translated, from_gateway=True)

    def _permits(self, m: Mapping, src: Endpoint, now: float) -> bool:
        # RFC 4787 §5: which outside senders may use a binding.
        if self.filtering is Behaviour.ENDPOINT_INDEPENDENT:
            return True
        live = [ep for ep, t in m.permissions.items() if now < t + self.binding_timeout]
        if self.filtering is Behaviour.ADDRESS_DEPENDENT:
            return any(ep[0] == src[0] for ep in live)
        return src in live


# ---------------------------------------------------------------------------------------------
# The network


class VirtualNetwork:
    """The whole simulated world: one internet, NATs with their LANs, hosts, one clock."""

    def __init__(
        self, clock: task.Clock, rng: random.Random, *, log_packets: bool = True,
        raise_protocol_errors: bool = True,
    ) -> None:
        """``rng`` seeds every random choice; ``log_packets`` keeps :attr:`log`.

        With ``raise_protocol_errors`` an exception from ``datagramReceived`` propagates out of
        the clock (the test fails where the bug is); without it, it is logged and kept in
        :attr:`errors`, as Twisted's reactor would log it and carry on.
        """
        self.clock = clock
        self.log_packets = log_packets
        self.raise_protocol_errors = raise_protocol_errors
        self._seed = rng.getrandbits(64)
        self.internet = _Realm(self, "internet", gateway=None)
        self.hosts: dict[str, VirtualHost] = {}
        self.nats: dict[str, Nat] = {}
        self.drops: Counter[str] = Counter()
        """Every dropped datagram, by reason."""
        self.delivered = 0
        """Datagrams handed to a protocol."""
        self.log: list[PacketRecord] = []
        """What happened to each datagram, in order (when ``log_packets``)."""
        self.errors: list[Exception] = []
        """Exceptions raised by protocols' ``datagramReceived``."""
        self._next_id = 0

    def sub_rng(self, label: str) -> random.Random:
        """An independent stream per use (per link, per port allocator), all from the seed.

        Separate streams keep one link's loss pattern unchanged when traffic elsewhere changes.
        """
        return random.Random(f"{self._seed}/{label}")

    def _names_check(self, name: str) -> None:
        if name in self.hosts or name in self.nats:
            raise ValueError(f"name {name!r} is already used")

    def add_host(
        self, name: str, address: str | Sequence[str], *, behind: Nat | None = None,
        uplink: Link | None = None, downlink: Link | None = None,
        ephemeral_ports: tuple[int, int] = (32768, 60999),
    ) -> VirtualHost:
        """A host on the internet, or in the LAN of ``behind``, with one or more addresses."""
        self._names_check(name)
        texts = [address] if isinstance(address, str) else list(address)
        if not texts:
            raise ValueError("a host needs at least one address")
        addresses = []
        for text in texts:
            ip, _ = _ip(text)
            parsed = ipaddress.ip_address(ip)
            if parsed.is_loopback or parsed.is_unspecified or parsed.is_multicast:
                raise ValueError(f"{ip} cannot be a host address (loopback is implicit)")
            addresses.append(ip)
        realm = behind.lan if behind is not None else self.internet
        host = VirtualHost(self, name, tuple(addresses), realm, behind, uplink, downlink,
                           ephemeral_ports)
        for ip in addresses:
            realm.attach(ip, host)
        self.hosts[name] = host
        return host

    def add_nat(
        self, name: str, public_address: str, *,
        mapping: Behaviour | BehaviourName, filtering: Behaviour | BehaviourName,
        hairpin: bool = True, binding_timeout: float = 120.0, inbound_refresh: bool = False,
        port_preservation: bool = True, port_range: tuple[int, int] = (1024, 65535),
        behind: Nat | None = None, uplink: Link | None = None, downlink: Link | None = None,
    ) -> Nat:
        """A NAT whose outside is ``public_address`` on the internet (or in ``behind``'s LAN).

        ``binding_timeout``: seconds a binding and each of its permissions live after the last
        outbound datagram (and inbound too with ``inbound_refresh``). RFC 4787 §4.3 asks for at
        least 120 s. ``port_preservation``: reuse the internal port as external port when free;
        otherwise ports are drawn from ``port_range``.
        """
        self._names_check(name)
        ip, _ = _ip(public_address)
        if binding_timeout <= 0:
            raise ValueError(f"binding_timeout must be positive, got {binding_timeout!r}")
        low, high = port_range
        if not 0 < low <= high < 65536:
            raise ValueError(f"bad port range {port_range!r}")
        realm = behind.lan if behind is not None else self.internet
        nat = Nat(
            self, name, ip, realm, mapping=Behaviour(mapping), filtering=Behaviour(filtering),
            hairpin=hairpin, binding_timeout=binding_timeout, inbound_refresh=inbound_refresh,
            port_preservation=port_preservation, port_range=port_range, uplink=uplink,
            downlink=downlink,
        )
        realm.attach(ip, nat)
        self.nats[name] = nat
        return nat

    def add_full_cone_nat(self, name: str, public_address: str, **options: Any) -> Nat:
        """Endpoint-independent mapping and filtering (RFC 4787 §4.1, §5)."""
        return self.add_nat(name, public_address, mapping=Behaviour.ENDPOINT_INDEPENDENT,
                            filtering=Behaviour.ENDPOINT_INDEPENDENT, **options)

    def add_restricted_cone_nat(self, name: str, public_address: str, **options: Any) -> Nat:
        """Endpoint-independent mapping, address-dependent filtering."""
        return self.add_nat(name, public_address, mapping=Behaviour.ENDPOINT_INDEPENDENT,
                            filtering=Behaviour.ADDRESS_DEPENDENT, **options)

    def add_port_restricted_cone_nat(self, name: str, public_address: str, **options: Any) -> Nat:
        """Endpoint-independent mapping, address-and-port-dependent filtering."""
        return self.add_nat(name, public_address, mapping=Behaviour.ENDPOINT_INDEPENDENT,
                            filtering=Behaviour.ADDRESS_AND_PORT_DEPENDENT, **options)

    def add_symmetric_nat(self, name: str, public_address: str, **options: Any) -> Nat:
        """Address-and-port-dependent mapping and filtering."""
        return self.add_nat(name, public_address, mapping=Behaviour.ADDRESS_AND_PORT_DEPENDENT,
                            filtering=Behaviour.ADDRESS_AND_PORT_DEPENDENT, **options)

    def new_packet(self, src: Endpoint, dst: Endpoint, data: bytes) -> Packet:
        self._next_id += 1
        return Packet(self._next_id, src, dst, data)

    def record(self, packet: Packet, where: str, verdict: str) -> None:
        if self.log_packets:
            self.log.append(PacketRecord(self.clock.seconds(), packet.id, where, packet.src,
                                         packet.dst, len(packet.data), verdict))

    def drop(self, packet: Packet, where: str, reason: str, node: Node | None = None) -> None:
        self.drops[reason] += 1
        if node is not None:
            node.drops[reason] += 1
        self.record(packet, where, f"dropped:{reason}")
        logger.debug("%s: dropped %s -> %s (%s)", where, _fmt(packet.src), _fmt(packet.dst),
                     reason)

    def format_log(self, last: int | None = None) -> str:
        """The packet log as text, one datagram step a line (the ``last`` lines only if given)."""
        records = self.log if last is None else self.log[-last:]
        return "\n".join(str(r) for r in records)

    def run(self, seconds: float, step: float | None = None) -> None:
        """:func:`advance` the network's clock."""
        advance(self.clock, seconds, step)

    def run_until(
        self, predicate: Callable[[], bool], timeout: float, step: float | None = None,
    ) -> bool:
        """:func:`run_until` on the network's clock."""
        return run_until(self.clock, predicate, timeout, step)
