"""A small TURN server (RFC 8656, UDP only) for whole agents on the virtual network.

Enough of the protocol for a relayed ICE path, done correctly rather than leniently, so that a
client bug shows up as a failure here: long-term credentials (RFC 8489 §9.2: 401 with REALM and
NONCE, MESSAGE-INTEGRITY checked on every request and put on every answer, 438 for an expired
nonce), Allocate, Refresh (LIFETIME 0 deallocates), CreatePermission, ChannelBind, Send and Data
indications and ChannelData. Permissions and channels expire (§9, §12), allocations too (§7).

It binds through an injected reactor (a :class:`~tests.sim.vnet.VirtualHost`'s ``reactor``), one
port for the server and one relay port per allocation, so that its traffic crosses the virtual
network like anyone else's. Every random value (nonces) comes from the ``rng`` given.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.protocol import DatagramProtocol

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
    is_stun,
    long_term_key,
    make_error,
    make_response,
    new_transaction_id,
    verify_integrity,
)

__all__ = ["Allocation", "TurnServer"]

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]

UDP = 17  # REQUESTED-TRANSPORT for UDP (RFC 8656 §18.11)
DEFAULT_LIFETIME = 600  # RFC 8656 §7.2
PERMISSION_LIFETIME = 300.0  # RFC 8656 §9
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12


@dataclass
class Allocation:
    """One allocation, keyed by the client's transport address (the 5-tuple over UDP)."""

    client: Endpoint
    username: str
    key: bytes
    relayed: Endpoint
    port: Any
    """The relay socket (an ``IListeningPort``)."""
    expires: float
    allocate_tid: bytes
    """Transaction id of the Allocate that created it: a retransmission gets success again."""
    permissions: dict[str, float] = field(default_factory=dict)
    """Peer IP -> expiry (RFC 8656 §9: permissions are per IP address, any port)."""
    channels: dict[int, Endpoint] = field(default_factory=dict)
    channel_expiry: dict[int, float] = field(default_factory=dict)

    def permitted(self, ip: str, now: float) -> bool:
        return now < self.permissions.get(ip, -1.0)

    def channel_of(self, peer: Endpoint, now: float) -> int | None:
        for number, bound in self.channels.items():
            if bound == peer and now < self.channel_expiry[number]:
                return number
        return None


class _ServerProtocol(DatagramProtocol):
    def __init__(self, server: TurnServer) -> None:
        self.server = server

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.server.from_client(datagram, (str(addr[0]), int(addr[1])))


class _RelayProtocol(DatagramProtocol):
    def __init__(self, server: TurnServer, client: Endpoint) -> None:
        self.server = server
        self.client = client

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.server.from_peer(self.client, datagram, (str(addr[0]), int(addr[1])))


class TurnServer:
    """Serves TURN on UDP ``address`` of a host; relays from ports on the same address."""

    def __init__(self, reactor: Any, address: Endpoint, users: Mapping[str, str],
                 rng: random.Random, *, realm: str = "sim.test", max_lifetime: int = 3600,
                 nonce_lifetime: float = 3600.0) -> None:
        self.reactor = reactor
        self.address = address
        self.users = dict(users)
        self.realm = realm
        self.max_lifetime = max_lifetime
        self.nonce_lifetime = nonce_lifetime
        self._rng = rng
        self._nonce = ""
        self._nonce_expires = -1.0
        self.allocations: dict[Endpoint, Allocation] = {}
        """Live allocations by client transport address."""
        self.released: list[Endpoint] = []
        """Relayed addresses deallocated by a Refresh with LIFETIME 0, in order."""
        self.stats: Counter[str] = Counter()
        """Requests answered by kind and outcome, relayed datagrams, drops by reason."""
        self.port = reactor.listenUDP(address[1], _ServerProtocol(self), interface=address[0])

    # --- time and nonces -------------------------------------------------------------------------
    def _now(self) -> float:
        return float(self.reactor.seconds())

    def _current_nonce(self, now: float) -> str:
        if now >= self._nonce_expires:
            self._nonce = new_transaction_id(self._rng).hex()
            self._nonce_expires = now + self.nonce_lifetime
        return self._nonce

    def _allocation(self, client: Endpoint, now: float) -> Allocation | None:
        allocation = self.allocations.get(client)
        if allocation is not None and now >= allocation.expires:
            self._remove(allocation, "expired")
            return None
        return allocation

    def _remove(self, allocation: Allocation, why: str) -> None:
        log.debug("TURN allocation %s of %s removed (%s)", allocation.relayed,
                  allocation.client, why)
        del self.allocations[allocation.client]
        allocation.port.stopListening()

    # --- from clients ----------------------------------------------------------------------------
    def from_client(self, data: bytes, client: Endpoint) -> None:
        """A datagram on the server port: a request, a Send indication or ChannelData."""
        now = self._now()
        if is_channel_data(data):
            self._channel_data(data, client, now)
            return
        if not is_stun(data):
            self.stats["dropped:not-stun"] += 1
            return
        try:
            msg = decode(data)
        except StunError:
            self.stats["dropped:malformed"] += 1
            return
        if msg.cls is MessageClass.INDICATION:
            if msg.method == Method.SEND:
                self._send_indication(msg, client, now)
            return
        if msg.cls is not MessageClass.REQUEST:
            return
        key = self._authenticate(msg, client, now)
        if key is None:
            return
        handlers: dict[int, Callable[[Message, Endpoint, bytes, float], None]] = {
            Method.ALLOCATE: self._allocate, Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
        }
        handler = handlers.get(msg.method)
        if handler is None:
            self._error(msg, client, 400, "Bad Request", key)
            return
        handler(msg, client, key, now)

    def _authenticate(self, msg: Message, client: Endpoint, now: float) -> bytes | None:
        """RFC 8489 §9.2.4: the long-term credential checks, in the RFC's order."""
        nonce = self._current_nonce(now)
        challenge: dict[int, Any] = {Attr.REALM: self.realm, Attr.NONCE: nonce}
        if Attr.MESSAGE_INTEGRITY not in msg.attributes:
            self._error(msg, client, 401, "Unauthorized", None, challenge)
            return None
        username, realm, their_nonce = (msg.get(Attr.USERNAME), msg.get(Attr.REALM),
                                        msg.get(Attr.NONCE))
        if not isinstance(username, str) or not isinstance(realm, str) or \
                not isinstance(their_nonce, str):
            self._error(msg, client, 400, "Bad Request", None)
            return None
        if their_nonce != nonce:
            self._error(msg, client, 438, "Stale Nonce", None, challenge)
            return None
        password = self.users.get(username)
        if password is None or realm != self.realm:
            self._error(msg, client, 401, "Unauthorized", None, challenge)
            return None
        key = long_term_key(username, self.realm, password)
        if not verify_integrity(msg, key):
            self._error(msg, client, 401, "Unauthorized", None, challenge)
            return None
        allocation = self.allocations.get(client)
        if allocation is not None and allocation.username != username:
            # RFC 8656 §5: requests on an allocation must use the credentials that made it.
            self._error(msg, client, 441, "Wrong Credentials", key)
            return None
        return key

    def _allocate(self, msg: Message, client: Endpoint, key: bytes, now: float) -> None:
        allocation = self._allocation(client, now)
        if allocation is not None:
            if allocation.allocate_tid == msg.transaction_id:  # a retransmission (§7.2)
                self._allocated(msg, allocation, key, now)
            else:
                self._error(msg, client, 437, "Allocation Mismatch", key)
            return
        transport = msg.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            self._error(msg, client, 400, "Bad Request", key)
            return
        if transport != UDP:
            self._error(msg, client, 442, "Unsupported Transport Protocol", key)
            return
        lifetime = self._lifetime(msg)
        port = self.reactor.listenUDP(0, _RelayProtocol(self, client), interface=self.address[0])
        relayed = (self.address[0], int(port.getHost().port))
        username = msg.get(Attr.USERNAME)
        assert isinstance(username, str)
        allocation = Allocation(client=client, username=username, key=key, relayed=relayed,
                                port=port, expires=now + lifetime,
                                allocate_tid=msg.transaction_id)
        self.allocations[client] = allocation
        self._allocated(msg, allocation, key, now)

    def _allocated(self, msg: Message, allocation: Allocation, key: bytes, now: float) -> None:
        self.stats["allocate:ok"] += 1
        self._success(msg, allocation.client, key, {
            Attr.XOR_RELAYED_ADDRESS: allocation.relayed,
            Attr.XOR_MAPPED_ADDRESS: allocation.client,
            Attr.LIFETIME: max(0, int(allocation.expires - now)),
        })

    def _lifetime(self, msg: Message) -> int:
        asked = msg.get(Attr.LIFETIME)
        # RFC 8656 §7.2: the server may lower the requested lifetime, never below the default.
        wanted = DEFAULT_LIFETIME if not isinstance(asked, int) else max(asked, DEFAULT_LIFETIME)
        return min(wanted, self.max_lifetime)

    def _refresh(self, msg: Message, client: Endpoint, key: bytes, now: float) -> None:
        allocation = self._allocation(client, now)
        if allocation is None:
            self._error(msg, client, 437, "Allocation Mismatch", key)
            return
        if msg.get(Attr.LIFETIME) == 0:  # RFC 8656 §7.3: deallocate
            self._remove(allocation, "refresh with lifetime 0")
            self.released.append(allocation.relayed)
            self.stats["refresh:released"] += 1
            self._success(msg, client, key, {Attr.LIFETIME: 0})
            return
        lifetime = self._lifetime(msg)
        allocation.expires = now + lifetime
        self.stats["refresh:ok"] += 1
        self._success(msg, client, key, {Attr.LIFETIME: lifetime})

    def _create_permission(self, msg: Message, client: Endpoint, key: bytes, now: float) -> None:
        allocation = self._allocation(client, now)
        if allocation is None:
            self._error(msg, client, 437, "Allocation Mismatch", key)
            return
        peer = msg.get(Attr.XOR_PEER_ADDRESS)
        if peer is None:
            self._error(msg, client, 400, "Bad Request", key)
            return
        allocation.permissions[peer[0]] = now + PERMISSION_LIFETIME
        self.stats["permission:ok"] += 1
        self._success(msg, client, key, {})

    def _channel_bind(self, msg: Message, client: Endpoint, key: bytes, now: float) -> None:
        allocation = self._allocation(client, now)
        if allocation is None:
            self._error(msg, client, 437, "Allocation Mismatch", key)
            return
        number, peer = msg.get(Attr.CHANNEL_NUMBER), msg.get(Attr.XOR_PEER_ADDRESS)
        if not isinstance(number, int) or peer is None or not 0x4000 <= number <= 0x4FFF:
            self._error(msg, client, 400, "Bad Request", key)
            return
        peer = (str(peer[0]), int(peer[1]))
        # RFC 8656 §12.2: a number is bound to one peer and a peer to one number.
        bound_peer = allocation.channels.get(number)
        if now >= allocation.channel_expiry.get(number, -1.0):
            bound_peer = None
        other = allocation.channel_of(peer, now)
        if (bound_peer is not None and bound_peer != peer) or (other not in (None, number)):
            self._error(msg, client, 400, "Bad Request", key)
            return
        allocation.channels[number] = peer
        allocation.channel_expiry[number] = now + CHANNEL_LIFETIME
        allocation.permissions[peer[0]] = now + PERMISSION_LIFETIME
        self.stats["channel:ok"] += 1
        self._success(msg, client, key, {})

    def _send_indication(self, msg: Message, client: Endpoint, now: float) -> None:
        allocation = self._allocation(client, now)
        peer, payload = msg.get(Attr.XOR_PEER_ADDRESS), msg.get(Attr.DATA)
        if allocation is None or peer is None or payload is None:
            self.stats["dropped:bad-send"] += 1
            return
        if not allocation.permitted(peer[0], now):
            self.stats["dropped:no-permission"] += 1
            return
        self.stats["relayed:out"] += 1
        allocation.port.write(payload, (peer[0], peer[1]))

    def _channel_data(self, data: bytes, client: Endpoint, now: float) -> None:
        allocation = self._allocation(client, now)
        try:
            number, payload = decode_channel_data(data)
        except StunError:
            self.stats["dropped:malformed"] += 1
            return
        if allocation is None or now >= allocation.channel_expiry.get(number, -1.0):
            self.stats["dropped:no-channel"] += 1
            return
        peer = allocation.channels[number]
        if not allocation.permitted(peer[0], now):
            self.stats["dropped:no-permission"] += 1
            return
        self.stats["relayed:out"] += 1
        allocation.port.write(payload, peer)

    # --- from peers ------------------------------------------------------------------------------
    def from_peer(self, client: Endpoint, data: bytes, peer: Endpoint) -> None:
        """A datagram on a relay port: to the client if the peer has a permission (§10.3)."""
        now = self._now()
        allocation = self._allocation(client, now)
        if allocation is None or not allocation.permitted(peer[0], now):
            self.stats["dropped:no-permission"] += 1
            return
        self.stats["relayed:in"] += 1
        number = allocation.channel_of(peer, now)
        if number is not None:
            self.port.write(encode_channel_data(number, data), client)
            return
        indication = Message(Method.DATA, MessageClass.INDICATION,
                             new_transaction_id(self._rng),
                             {Attr.XOR_PEER_ADDRESS: peer, Attr.DATA: data})
        self.port.write(indication.encode(fingerprint=True), client)

    # --- answers ---------------------------------------------------------------------------------
    def _success(self, msg: Message, client: Endpoint, key: bytes,
                 attributes: dict[int, Any]) -> None:
        response = make_response(msg, MessageClass.SUCCESS, attributes)
        self.port.write(response.encode(integrity_key=key, fingerprint=True), client)

    def _error(self, msg: Message, client: Endpoint, code: int, reason: str, key: bytes | None,
               extra: dict[int, Any] | None = None) -> None:
        self.stats[f"error:{code}"] += 1
        response = make_error(msg, code, reason, extra)
        self.port.write(response.encode(integrity_key=key, fingerprint=True), client)

    def close(self) -> None:
        """Close the server port and every relay port."""
        for allocation in list(self.allocations.values()):
            self._remove(allocation, "server closed")
        self.port.stopListening()
