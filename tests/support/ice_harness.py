"""An in-memory network for sans-IO ICE agents: it moves Transmits between agents on a literal
clock, with optional loss, delay and a static NAT rewrite of addresses, and answers STUN Binding
requests sent to a configured STUN server address. No sockets, no reactor: fully deterministic.

    net = Network(delay=0.005)
    a_bases = net.add_agent("a", agent_a, [("10.0.0.1", 5000)])
    ...
    net.run(until=2.0, stop=lambda: both_selected())
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from ice.agent import Agent, IceSettings
from ice.candidate import Address, AppData, LocalBase
from ice.events import IceEvent, PairSelected
from ice.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    StunError,
    decode,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    long_term_key,
    make_error,
    make_response,
    new_transaction_id,
)

E = TypeVar("E", bound=IceEvent)


@dataclass(frozen=True)
class Packet:
    """One datagram on the wire, as seen after NAT on the sending side."""

    sender: str
    data: bytes
    source: Address       # public source (after the sender's NAT)
    dest: Address
    sent_at: float


@dataclass
class _Host:
    name: str
    agent: Agent
    bases: list[LocalBase] = field(default_factory=list)
    events: list[IceEvent] = field(default_factory=list)
    received: list[AppData] = field(default_factory=list)


class Network:
    """Moves datagrams between agents with a delay; ``now`` is the literal clock."""

    def __init__(self, *, delay: float | Callable[[Packet], float] = 0.005,
                 loss: Callable[[Packet], bool] | None = None, start: float = 0.0) -> None:
        self.now = start
        self.delay = delay
        self.loss = loss
        self.hosts: dict[str, _Host] = {}
        self._routes: dict[Address, tuple[str, LocalBase]] = {}
        self._nat_out: dict[Address, Address] = {}
        self._nat_in: dict[Address, Address] = {}
        self.stun_servers: set[Address] = set()
        self.turn_servers: dict[Address, TurnServer] = {}
        self._relayed: dict[Address, TurnServer] = {}
        self._queue: list[tuple[float, int, Packet]] = []
        self._seq = itertools.count()
        self.sent: list[Packet] = []
        self.delivered: list[Packet] = []

    # --- topology ---------------------------------------------------------------------------
    def add_agent(self, name: str, agent: Agent, addresses: Iterable[Address],
                  component: int = 1) -> list[LocalBase]:
        """Register ``agent`` with one base (socket) per address for ``component``."""
        host = self.hosts.setdefault(name, _Host(name, agent))
        out = []
        for address in addresses:
            base = LocalBase(component, address)
            agent.add_base(base, self.now)
            host.bases.append(base)
            self._routes[address] = (name, base)
            out.append(base)
        return out

    def add_base(self, name: str, base: LocalBase, *, local_preference: int = 65535) -> None:
        """Give agent ``name`` one more socket, with its own local preference."""
        self.hosts[name].agent.add_base(base, self.now, local_preference=local_preference)
        self.hosts[name].bases.append(base)
        self._routes[base.address] = (name, base)

    def nat(self, private: Address, public: Address) -> None:
        """A static NAT binding: packets from ``private`` leave as ``public``; packets to
        ``public`` reach ``private``; ``private`` itself is unreachable from elsewhere."""
        self._nat_out[private] = public
        self._nat_in[public] = private

    def agent(self, name: str) -> Agent:
        return self.hosts[name].agent

    def events(self, name: str) -> list[IceEvent]:
        return self.hosts[name].events

    def received(self, name: str) -> list[AppData]:
        return self.hosts[name].received

    # --- moving packets ---------------------------------------------------------------------
    def flush(self) -> None:
        """Collect every agent's transmits and events."""
        for host in self.hosts.values():
            for tx in host.agent.pop_transmits():
                source = self._nat_out.get(tx.via.address, tx.via.address)
                packet = Packet(host.name, tx.data, source, tx.dest, self.now)
                self.sent.append(packet)
                if self.loss is not None and self.loss(packet):
                    continue
                delay = self.delay(packet) if callable(self.delay) else self.delay
                heapq.heappush(self._queue, (self.now + delay, next(self._seq), packet))
            while (event := host.agent.next_event()) is not None:
                host.events.append(event)

    def _deliver(self, packet: Packet) -> None:
        if packet.dest in self.stun_servers:
            self._stun_answer(packet)
            return
        if packet.dest in self.turn_servers:
            self.turn_servers[packet.dest].from_client(packet)
            return
        if packet.dest in self._relayed:
            self._relayed[packet.dest].from_peer(packet)
            return
        if packet.dest in self._nat_out:
            return  # a private address behind a NAT: unreachable from outside
        dest = self._nat_in.get(packet.dest, packet.dest)
        route = self._routes.get(dest)
        if route is None:
            return
        name, base = route
        self.delivered.append(packet)
        app = self.hosts[name].agent.receive(packet.data, packet.source, base, self.now)
        if app is not None:
            self.hosts[name].received.append(app)

    def _stun_answer(self, packet: Packet) -> None:
        try:
            request = decode(packet.data)
        except StunError:
            return
        if request.method != Method.BINDING or request.cls is not MessageClass.REQUEST:
            return
        response = make_response(request, MessageClass.SUCCESS,
                                  {Attr.XOR_MAPPED_ADDRESS: packet.source})
        back = Packet("stun", response.encode(fingerprint=True), packet.dest, packet.source,
                      self.now)
        delay = self.delay(back) if callable(self.delay) else self.delay
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), back))

    # --- the clock ---------------------------------------------------------------------------
    def next_time(self) -> float | None:
        times = [self._queue[0][0]] if self._queue else []
        for host in self.hosts.values():
            t = host.agent.next_timer()
            if t is not None:
                times.append(max(t, self.now))
        return min(times) if times else None

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance until ``stop()`` is true (returns True) or the clock reaches ``until``."""
        self.flush()
        while True:
            if stop is not None and stop():
                return True
            t = self.next_time()
            if t is None or t > until:
                self.now = max(self.now, until)
                return False
            self.now = t
            while self._queue and self._queue[0][0] <= self.now:
                _, _, packet = heapq.heappop(self._queue)
                self._deliver(packet)
                self.flush()
            for host in self.hosts.values():
                timer = host.agent.next_timer()
                if timer is not None and timer <= self.now:
                    host.agent.handle_timer(self.now)
            self.flush()

    def add_turn_server(self, address: Address, relay_ip: str) -> TurnServer:
        """A minimal TURN server at ``address`` relaying from ports of ``relay_ip``."""
        server = TurnServer(self, address, relay_ip)
        self.turn_servers[address] = server
        return server

    def push(self, packet: Packet) -> None:
        """Queue a packet built by a harness server (no loss applied)."""
        delay = self.delay(packet) if callable(self.delay) else self.delay
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), packet))

    def inject(self, name: str, data: bytes, source: Address, base: LocalBase) -> AppData | None:
        """Hand a datagram straight to an agent (for garbage and forged packets)."""
        app = self.hosts[name].agent.receive(data, source, base, self.now)
        self.flush()
        return app


def connect(net: Network, a: str, b: str, now: float | None = None) -> None:
    """Exchange descriptions (credentials, candidates, end-of-candidates) and start checks on
    both sides at the same instant, as a signalling channel would."""
    t = net.now if now is None else now
    first, second = net.agent(a), net.agent(b)
    for me, peer in ((first, second), (second, first)):
        me.set_remote_credentials(peer.local_ufrag, peer.local_pwd, lite=peer.settings.lite)
        for cand in peer.local_candidates:
            me.add_remote_candidate(cand, t)
        me.end_of_remote_candidates(t)
    first.start_checks(t)
    second.start_checks(t)
    net.flush()


def offer_answer(net: Network, offerer: str, answerer: str, answer_delay: float) -> None:
    """Signalling as a call does it: the answerer gets the offer and starts checks now; the
    offerer gets the answer ``answer_delay`` later, so the answerer's first checks may reach
    it before it knows the answerer's candidates (they make peer-reflexive ones)."""
    first, second = net.agent(offerer), net.agent(answerer)
    for me, peer in ((second, first), (first, second)):
        me.set_remote_credentials(peer.local_ufrag, peer.local_pwd, lite=peer.settings.lite)
        for cand in peer.local_candidates:
            me.add_remote_candidate(cand, net.now)
        me.end_of_remote_candidates(net.now)
        me.start_checks(net.now)
        net.flush()
        if me is second:
            net.run(net.now + answer_delay)


def add_components(net: Network, name: str, ip: str, port: int, components: int) -> None:
    """Give agent ``name`` one socket per component at ``ip``, ports ``port``, ``port + 1``..."""
    agent = net.agent(name)
    for component in range(1, components + 1):
        net.add_agent(name, agent, [(ip, port + component - 1)], component=component)


def selected_at(net: Network, name: str, component: int) -> float | None:
    """When agent ``name`` first selected a pair for ``component`` (None if it did not)."""
    return next((e.at for e in net.events(name)
                 if isinstance(e, PairSelected) and e.component == component), None)


def all_selected(net: Network, components: int) -> Callable[[], bool]:
    """A stop condition: every agent has a selected pair for every component."""
    return lambda: all(h.agent.selected_pair(c) is not None for h in net.hosts.values()
                       for c in range(1, components + 1))


def two_agents(
    *, a_controlling: bool = True, b_controlling: bool = False, a: IceSettings | None = None,
    b: IceSettings | None = None, a_tie: int | None = None, b_tie: int | None = None,
    delay: float | Callable[[Packet], float] = 0.005,
    loss: Callable[[Packet], bool] | None = None,
    a_addresses: Iterable[Address] = (("10.0.0.1", 1000),),
    b_addresses: Iterable[Address] = (("10.0.0.2", 2000),), seed: int = 1,
    components: int = 1,
) -> Network:
    """A network with agents "a" and "b" (one component), not yet connected."""
    net = Network(delay=delay, loss=loss)
    agent_a = Agent(a or IceSettings(), controlling=a_controlling, rng=random.Random(seed),
                    tie_breaker=a_tie, components=components)
    agent_b = Agent(b or IceSettings(), controlling=b_controlling,
                    rng=random.Random(seed + 1000), tie_breaker=b_tie, components=components)
    net.add_agent("a", agent_a, a_addresses)
    net.add_agent("b", agent_b, b_addresses)
    return net


def both_selected(net: Network, component: int = 1) -> Callable[[], bool]:
    """A stop condition: both agents have a selected pair for ``component``."""
    return lambda: all(h.agent.selected_pair(component) is not None for h in net.hosts.values())


def of_type(events: Iterable[IceEvent], kind: type[E]) -> list[E]:
    """The events of one class, in order."""
    return [e for e in events if isinstance(e, kind)]


class TurnServer:
    """Just enough TURN (RFC 8656) for the agent's relay paths: a 401 with realm and nonce, then
    Allocate, CreatePermission, ChannelBind and Refresh succeed (credentials are not checked);
    Send indications and ChannelData go out from the relayed address to permitted peers, and
    what permitted peers send to it comes back as Data indications or ChannelData."""

    def __init__(self, net: Network, address: Address, relay_ip: str) -> None:
        self.net = net
        self.address = address
        self.relay_ip = relay_ip
        self._next_port = 50000
        self.allocations: dict[Address, Address] = {}      # client -> relayed
        self._client_of: dict[Address, Address] = {}       # relayed -> client
        self.permissions: dict[Address, set[str]] = {}     # relayed -> peer IPs
        self.channels: dict[Address, dict[int, Address]] = {}
        self.released: list[Address] = []

    PASSWORD = "pass"
    """Every user's password: success responses are signed with it (RFC 8489 §9.2.4)."""

    def _reply(self, message: Message, dest: Address, username: str | None = None) -> None:
        key = (long_term_key(username, "harness", self.PASSWORD)
               if username is not None and message.cls is MessageClass.SUCCESS else None)
        self.net.push(Packet("turn", message.encode(integrity_key=key, fingerprint=True),
                             self.address, dest, self.net.now))

    def from_client(self, packet: Packet) -> None:
        client = packet.source
        relayed = self.allocations.get(client)
        if is_channel_data(packet.data):
            if relayed is None:
                return
            number, payload = decode_channel_data(packet.data)
            peer = self.channels.get(relayed, {}).get(number)
            if peer is not None:
                self.net.push(Packet("turn", payload, relayed, peer, self.net.now))
            return
        try:
            msg = decode(packet.data)
        except StunError:
            return
        if msg.cls is MessageClass.INDICATION and msg.method == Method.SEND:
            peer = msg.get(Attr.XOR_PEER_ADDRESS)
            if relayed is not None and peer is not None and peer[0] in self.permissions[relayed]:
                self.net.push(Packet("turn", msg.get(Attr.DATA, b""), relayed, peer,
                                     self.net.now))
            return
        if msg.cls is not MessageClass.REQUEST:
            return
        if msg.get(Attr.USERNAME) is None:
            self._reply(make_error(msg, 401, "Unauthorized",
                                   {Attr.REALM: "harness", Attr.NONCE: "n0nce"}), client)
            return
        attrs: dict[int, object] = {}
        if msg.method == Method.ALLOCATE:
            if relayed is None:
                relayed = (self.relay_ip, self._next_port)
                self._next_port += 1
                self.allocations[client] = relayed
                self._client_of[relayed] = client
                self.permissions[relayed] = set()
                self.channels[relayed] = {}
                self.net._relayed[relayed] = self
            attrs = {Attr.XOR_RELAYED_ADDRESS: relayed, Attr.XOR_MAPPED_ADDRESS: client,
                     Attr.LIFETIME: 600}
        elif relayed is None:
            self._reply(make_error(msg, 437, "Allocation Mismatch"), client)
            return
        elif msg.method == Method.CREATE_PERMISSION:
            self.permissions[relayed].add(msg.get(Attr.XOR_PEER_ADDRESS)[0])
        elif msg.method == Method.CHANNEL_BIND:
            peer = msg.get(Attr.XOR_PEER_ADDRESS)
            self.channels[relayed][msg.get(Attr.CHANNEL_NUMBER)] = peer
            self.permissions[relayed].add(peer[0])
        elif msg.method == Method.REFRESH:
            lifetime = msg.get(Attr.LIFETIME, 600)
            attrs = {Attr.LIFETIME: lifetime}
            if lifetime == 0:
                self.released.append(relayed)
        self._reply(make_response(msg, MessageClass.SUCCESS, attrs), client,
                    msg.get(Attr.USERNAME))

    def from_peer(self, packet: Packet) -> None:
        relayed = packet.dest
        client = self._client_of[relayed]
        if packet.source[0] not in self.permissions[relayed] or relayed in self.released:
            return
        for number, peer in self.channels[relayed].items():
            if peer == packet.source:
                self.net.push(Packet("turn", encode_channel_data(number, packet.data),
                                     self.address, client, self.net.now))
                return
        indication = Message(Method.DATA, MessageClass.INDICATION,
                             new_transaction_id(random.Random(len(packet.data))),
                             {Attr.XOR_PEER_ADDRESS: packet.source, Attr.DATA: packet.data})
        self.net.push(Packet("turn", indication.encode(), self.address, client, self.net.now))
