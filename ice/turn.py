"""TURN client over UDP (RFC 8656), sans-IO.

One :class:`TurnClient` holds one allocation on one server. It speaks only to the server: every
datagram it queues goes there, and it consumes what comes back (responses, Data indications,
ChannelData). Requests run through :class:`~ice.transaction.StunTransaction`, so retransmission
follows RFC 8489 §6.2.1. Long-term credentials (RFC 8489 §9.2): the first Allocate goes without
them, the 401 answer brings REALM and NONCE, and every later request carries USERNAME, REALM,
NONCE and MESSAGE-INTEGRITY; a 438 (Stale Nonce) answer is retried with the new nonce.

Timers kept: Refresh a minute before the allocation expires (half-way for short lifetimes),
CreatePermission every 4 minutes (permissions last 5 minutes, §9), ChannelBind 1 minute before a
binding's 10 minutes run out (§12). Closing sends Refresh with LIFETIME 0 (§7.3).
"""

from __future__ import annotations

import enum
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ice.stun import (
    Address,
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
    message_type,
    new_transaction_id,
    verify_integrity,
)
from ice.transaction import StunTransaction

__all__ = [
    "CHANNEL_LIFETIME",
    "CHANNEL_REFRESH",
    "PERMISSION_LIFETIME",
    "PERMISSION_REFRESH",
    "UDP_PROTOCOL",
    "AllocationFailed",
    "AllocationRefreshed",
    "AllocationReleased",
    "AllocationSucceeded",
    "ChannelBound",
    "PermissionCreated",
    "PermissionFailed",
    "TurnClient",
    "TurnEvent",
    "TurnSettings",
    "TurnState",
    "decode_channel_data",
    "encode_channel_data",
    "is_channel_data",
]

log = logging.getLogger(__name__)

UDP_PROTOCOL = 17  # REQUESTED-TRANSPORT value for UDP (RFC 8656 §18.11)
PERMISSION_LIFETIME = 300.0  # RFC 8656 §9
PERMISSION_REFRESH = 240.0  # refresh a minute before the permission lapses
CHANNEL_LIFETIME = 600.0  # RFC 8656 §12
CHANNEL_REFRESH = 540.0  # rebind a minute before the binding lapses
FIRST_CHANNEL = 0x4000  # RFC 8656 §12: 0x4000-0x4FFF
LAST_CHANNEL = 0x4FFF
MAX_NONCE_RETRIES = 3  # 438 answers in a row before giving up on a request
_DATA_INDICATION_TYPE = message_type(Method.DATA, MessageClass.INDICATION).to_bytes(2, "big")


@dataclass(frozen=True)
class TurnSettings:
    """Where and who to allocate as."""

    server: Address
    """The TURN server's UDP address."""
    username: str
    """Long-term credential user name (RFC 8489 §9.2)."""
    password: str = field(repr=False)
    """Long-term credential password (kept out of repr, hence out of logs)."""
    lifetime: int = 600
    """Requested allocation lifetime in seconds (RFC 8656 §7.2; the server may shorten it)."""
    software: str | None = None
    """SOFTWARE attribute to put in requests, or None for none."""


# --- events -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AllocationSucceeded:
    """The server gave us a relayed transport address."""

    relayed: Address
    mapped: Address
    lifetime: int


@dataclass(frozen=True)
class AllocationFailed:
    """Allocating, or keeping the allocation alive, failed; code None means no answer."""

    code: int | None
    reason: str


@dataclass(frozen=True)
class AllocationRefreshed:
    """A Refresh succeeded; the allocation now lives ``lifetime`` more seconds."""

    lifetime: int


@dataclass(frozen=True)
class PermissionCreated:
    """Peers at ``peer_ip`` may now reach us through the relay (RFC 8656 §9)."""

    peer_ip: str


@dataclass(frozen=True)
class PermissionFailed:
    """CreatePermission for ``peer_ip`` was refused or not answered."""

    peer_ip: str
    code: int | None
    reason: str


@dataclass(frozen=True)
class ChannelBound:
    """Data to and from ``peer`` may now use ChannelData on ``channel`` (RFC 8656 §12)."""

    peer: Address
    channel: int


@dataclass(frozen=True)
class AllocationReleased:
    """The client is closed; the allocation is gone (or never was)."""


TurnEvent = (AllocationSucceeded | AllocationFailed | AllocationRefreshed | PermissionCreated
             | PermissionFailed | ChannelBound | AllocationReleased)


class TurnState(enum.Enum):
    """Life of the allocation."""

    IDLE = "idle"
    ALLOCATING = "allocating"
    ALLOCATED = "allocated"
    RELEASING = "releasing"
    RELEASED = "released"
    FAILED = "failed"


class _Kind(enum.Enum):
    ALLOCATE = "Allocate"
    REFRESH = "Refresh"
    RELEASE = "Refresh(0)"
    PERMISSION = "CreatePermission"
    CHANNEL = "ChannelBind"


@dataclass
class _Request:
    """What an outstanding request is for, and how to send it again."""

    kind: _Kind
    method: Method
    attributes: dict[int, Any]
    transaction: StunTransaction
    authenticated: bool
    nonce_retries: int = 0
    peer_ip: str | None = None
    channel: int | None = None


@dataclass
class _Permission:
    refresh_at: float | None = None  # None: not sent yet (waiting for the allocation) or pending
    pending: bool = False
    created: bool = False


@dataclass
class _Channel:
    number: int
    peer: Address
    refresh_at: float | None = None
    pending: bool = False
    bound: bool = False


class TurnClient:
    """A sans-IO TURN client for one allocation over UDP (RFC 8656)."""

    def __init__(self, settings: TurnSettings, rng: random.Random, *, rto: float = 0.5) -> None:
        self.settings = settings
        self.relayed_address: Address | None = None
        self.mapped_address: Address | None = None
        #: Malformed datagrams from the server that were dropped.
        self.malformed = 0
        #: Responses to authenticated requests dropped for a missing or wrong
        #: MESSAGE-INTEGRITY (RFC 8489 §9.2.5).
        self.unauthenticated = 0
        self._rng = rng
        self._rto = rto
        self._state = TurnState.IDLE
        self._realm: str | None = None
        self._nonce: str | None = None
        self._key: bytes | None = None
        self._lifetime = 0
        self._expires_at: float | None = None
        self._refresh_at: float | None = None
        self._requests: dict[bytes, _Request] = {}
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[Address, _Channel] = {}
        self._channel_peers: dict[int, Address] = {}
        self._next_channel = FIRST_CHANNEL
        self._transmits: list[tuple[bytes, Address]] = []
        self._events: deque[TurnEvent] = deque()

    # --- queries ------------------------------------------------------------------------------

    @property
    def state(self) -> TurnState:
        """Where the allocation stands."""
        return self._state

    @property
    def expires_at(self) -> float | None:
        """When the current allocation lapses without a refresh."""
        return self._expires_at

    def channel_for(self, peer: Address) -> int | None:
        """The channel number bound (confirmed) to ``peer``, if any."""
        channel = self._channels.get(peer)
        return channel.number if channel is not None and channel.bound else None

    def has_permission(self, peer_ip: str) -> bool:
        """A CreatePermission (or ChannelBind) for ``peer_ip`` has succeeded."""
        permission = self._permissions.get(peer_ip)
        return permission is not None and permission.created

    # --- commands -----------------------------------------------------------------------------

    def allocate(self, now: float) -> None:
        """Send the first Allocate (RFC 8656 §7.1), without credentials."""
        if self._state is not TurnState.IDLE:
            raise ValueError(f"allocate() in state {self._state.value}")
        self._set_state(TurnState.ALLOCATING, "allocate()")
        attributes: dict[int, Any] = {
            Attr.REQUESTED_TRANSPORT: UDP_PROTOCOL,
            Attr.LIFETIME: self.settings.lifetime,
        }
        self._request(_Kind.ALLOCATE, Method.ALLOCATE, attributes, now)

    def create_permission(self, peer_ip: str, now: float) -> None:
        """Install a permission for ``peer_ip`` and keep it refreshed (RFC 8656 §9).

        Before the allocation exists the request is held and sent once it does.
        """
        if peer_ip in self._permissions:
            return
        if self._state in (TurnState.FAILED, TurnState.RELEASING, TurnState.RELEASED):
            self._events.append(PermissionFailed(peer_ip, None, "no allocation"))
            return
        self._permissions[peer_ip] = _Permission()
        if self._state is TurnState.ALLOCATED:
            self._send_permission(peer_ip, now)

    def bind_channel(self, peer: Address, now: float) -> None:
        """Bind the next free channel number to ``peer`` and keep it bound (RFC 8656 §12)."""
        if peer in self._channels:
            return
        if self._state in (TurnState.FAILED, TurnState.RELEASING, TurnState.RELEASED):
            return
        if self._next_channel > LAST_CHANNEL:
            raise ValueError("all TURN channel numbers are in use")
        channel = _Channel(self._next_channel, peer)
        self._next_channel += 1
        self._channels[peer] = channel
        self._channel_peers[channel.number] = peer
        if self._state is TurnState.ALLOCATED:
            self._send_channel_bind(channel, now)

    def send(self, peer: Address, data: bytes, now: float) -> None:
        """Relay ``data`` to ``peer``: ChannelData if a channel is bound, else a Send indication
        (RFC 8656 §11, §12.4). Dropped when there is no allocation."""
        if self._state is not TurnState.ALLOCATED:
            log.debug("no allocation: dropping %d bytes for %s", len(data), peer)
            return
        channel = self._channels.get(peer)
        if channel is not None and channel.bound:
            self._transmits.append((encode_channel_data(channel.number, data),
                                    self.settings.server))
            return
        indication = Message(Method.SEND, MessageClass.INDICATION,
                             new_transaction_id(self._rng),
                             {Attr.XOR_PEER_ADDRESS: peer, Attr.DATA: data})
        self._transmits.append((indication.encode(), self.settings.server))

    def close(self, now: float) -> None:
        """Deallocate: Refresh with LIFETIME 0 (RFC 8656 §7.3); AllocationReleased follows."""
        if self._state in (TurnState.RELEASING, TurnState.RELEASED):
            return
        had_allocation = self._state is TurnState.ALLOCATED
        for request in self._requests.values():
            request.transaction.cancel()
        self._requests.clear()
        self._refresh_at = None
        self._permissions.clear()
        self._channels.clear()
        self._channel_peers.clear()
        if had_allocation:
            self._set_state(TurnState.RELEASING, "close()")
            self._request(_Kind.RELEASE, Method.REFRESH, {Attr.LIFETIME: 0}, now)
        else:
            self._released("close() without an allocation")

    # --- input --------------------------------------------------------------------------------

    def handles(self, data: bytes, source: Address) -> bool:
        """True if the datagram is for this client: ChannelData from the server, or STUN from the
        server that answers one of our requests or is a Data indication."""
        if source != self.settings.server:
            return False
        if is_channel_data(data):
            return True
        return is_stun(data) and (bytes(data[8:20]) in self._requests
                                  or data[:2] == _DATA_INDICATION_TYPE)

    def receive(self, data: bytes, source: Address, now: float) -> tuple[Address, bytes] | None:
        """Consume a datagram from the server; (peer, payload) when it carries peer data."""
        if source != self.settings.server:
            return None
        if is_channel_data(data):
            try:
                number, payload = decode_channel_data(data)
            except StunError as exc:
                self._malformed(exc)
                return None
            peer = self._channel_peers.get(number)
            return (peer, payload) if peer is not None else None
        if not is_stun(data):
            return None
        try:
            message = decode(data)
        except StunError as exc:
            self._malformed(exc)
            return None
        if message.cls is MessageClass.INDICATION:
            if message.method == Method.DATA:
                peer = message.get(Attr.XOR_PEER_ADDRESS)
                payload = message.get(Attr.DATA)
                if peer is not None and payload is not None:
                    return peer, payload
            return None
        if message.cls is not MessageClass.REQUEST:
            self._on_response(message, now)
        return None

    def next_timer(self) -> float | None:
        """The earliest deadline: a retransmission, a refresh or the allocation's expiry."""
        times = [t for r in self._requests.values()
                 if (t := r.transaction.next_timer()) is not None]
        if self._refresh_at is not None:
            times.append(self._refresh_at)
        if self._state is TurnState.ALLOCATED and self._expires_at is not None:
            times.append(self._expires_at)
        times.extend(p.refresh_at for p in self._permissions.values()
                     if p.refresh_at is not None)
        times.extend(c.refresh_at for c in self._channels.values() if c.refresh_at is not None)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, and send the refreshes that are due."""
        for tid, request in list(self._requests.items()):
            if self._requests.get(tid) is not request:
                continue
            data = request.transaction.handle_timer(now)
            if data is not None:
                self._transmits.append((data, self.settings.server))
            elif request.transaction.timed_out:
                del self._requests[tid]
                self._on_failure(request, None, "timeout", now)
        if self._state is not TurnState.ALLOCATED:
            return
        if self._expires_at is not None and now >= self._expires_at:
            self._fail(None, "allocation expired")
            return
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            self._request(_Kind.REFRESH, Method.REFRESH,
                          {Attr.LIFETIME: self.settings.lifetime}, now)
        for peer_ip, permission in list(self._permissions.items()):
            if permission.refresh_at is not None and now >= permission.refresh_at:
                self._send_permission(peer_ip, now)
        for bound in list(self._channels.values()):
            if bound.refresh_at is not None and now >= bound.refresh_at:
                self._send_channel_bind(bound, now)

    # --- output -------------------------------------------------------------------------------

    def pop_transmits(self) -> list[tuple[bytes, Address]]:
        """Datagrams to send, all to the server."""
        out, self._transmits = self._transmits, []
        return out

    def next_event(self) -> TurnEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    # --- requests -----------------------------------------------------------------------------

    def _request(self, kind: _Kind, method: Method, attributes: dict[int, Any], now: float,
                 *, nonce_retries: int = 0, peer_ip: str | None = None,
                 channel: int | None = None) -> None:
        """Build, queue and track one request, authenticated once we know realm and nonce."""
        message = Message(method, MessageClass.REQUEST, new_transaction_id(self._rng),
                          dict(attributes))
        authenticated = self._key is not None
        if self.settings.software:
            message.attributes[Attr.SOFTWARE] = self.settings.software
        if authenticated:
            # RFC 8489 §9.2.4: USERNAME, REALM, NONCE, then MESSAGE-INTEGRITY.
            message.attributes[Attr.USERNAME] = self.settings.username
            message.attributes[Attr.REALM] = self._realm
            message.attributes[Attr.NONCE] = self._nonce
        data = message.encode(integrity_key=self._key, fingerprint=True)
        transaction = StunTransaction(message, data, self.settings.server, now, rto=self._rto)
        self._requests[message.transaction_id] = _Request(
            kind, method, attributes, transaction, authenticated, nonce_retries, peer_ip, channel)
        self._transmits.append((data, self.settings.server))
        log.debug("%s sent (%s)", kind.value, "authenticated" if authenticated else "anonymous")

    def _send_permission(self, peer_ip: str, now: float) -> None:
        permission = self._permissions[peer_ip]
        permission.refresh_at = None
        permission.pending = True
        self._request(_Kind.PERMISSION, Method.CREATE_PERMISSION,
                      {Attr.XOR_PEER_ADDRESS: (peer_ip, 0)}, now, peer_ip=peer_ip)

    def _send_channel_bind(self, channel: _Channel, now: float) -> None:
        channel.refresh_at = None
        channel.pending = True
        self._request(_Kind.CHANNEL, Method.CHANNEL_BIND,
                      {Attr.CHANNEL_NUMBER: channel.number, Attr.XOR_PEER_ADDRESS: channel.peer},
                      now, channel=channel.number)

    def _on_response(self, message: Message, now: float) -> None:
        request = self._requests.get(message.transaction_id)
        if request is None:
            return  # a late duplicate, or not ours
        if (self._key is not None and Attr.MESSAGE_INTEGRITY in message.attributes
                and not verify_integrity(message, self._key)):
            # RFC 8489 §9.2.5: a response failing the check is discarded as if never received.
            log.warning("%s response with bad MESSAGE-INTEGRITY dropped", request.kind.value)
            self.unauthenticated += 1
            return
        if (request.authenticated and message.cls is MessageClass.SUCCESS
                and Attr.MESSAGE_INTEGRITY not in message.attributes):
            # RFC 8489 §9.2.5: the success response to an authenticated request must prove it
            # comes from the server that shares our key; one without MESSAGE-INTEGRITY could
            # come from anyone who saw the request (a forged relayed address, lifetime, ...).
            # Error responses without it are still taken: they can only end what an on-path
            # attacker could end by dropping packets, and servers do not sign every error.
            log.warning("%s success response without MESSAGE-INTEGRITY dropped",
                        request.kind.value)
            self.unauthenticated += 1
            return
        del self._requests[message.transaction_id]
        request.transaction.complete()
        if message.cls is MessageClass.SUCCESS:
            self._on_success(request, message, now)
            return
        code, reason = message.get(Attr.ERROR_CODE, (None, "error response without ERROR-CODE"))
        if code == 401 and not request.authenticated:
            # RFC 8656 §7.2 / RFC 8489 §9.2.3: take REALM and NONCE, then retry with credentials.
            realm, nonce = message.get(Attr.REALM), message.get(Attr.NONCE)
            if realm is not None and nonce is not None:
                self._realm, self._nonce = realm, nonce
                self._key = long_term_key(self.settings.username, realm, self.settings.password)
                self._retry(request, now, request.nonce_retries)
                return
        elif code == 438 and request.nonce_retries < MAX_NONCE_RETRIES:
            # RFC 8489 §9.2.5: Stale Nonce: retry with the nonce (and realm) just received.
            nonce = message.get(Attr.NONCE)
            if nonce is not None:
                self._nonce = nonce
                realm = message.get(Attr.REALM)
                if realm is not None and realm != self._realm:
                    self._realm = realm
                    self._key = long_term_key(self.settings.username, realm,
                                              self.settings.password)
                self._retry(request, now, request.nonce_retries + 1)
                return
        elif code == 300:
            # RFC 8656 §7.2 / RFC 8489 §10: ALTERNATE-SERVER; not followed, reported.
            alternate = message.get(Attr.ALTERNATE_SERVER)
            reason = f"{reason} (alternate server {alternate})" if alternate else reason
        self._on_failure(request, code, reason, now)

    def _retry(self, request: _Request, now: float, nonce_retries: int) -> None:
        self._request(request.kind, request.method, request.attributes, now,
                      nonce_retries=nonce_retries, peer_ip=request.peer_ip,
                      channel=request.channel)

    def _on_success(self, request: _Request, message: Message, now: float) -> None:
        kind = request.kind
        if kind is _Kind.ALLOCATE:
            relayed = message.get(Attr.XOR_RELAYED_ADDRESS)
            if relayed is None:
                self._fail(None, "Allocate success without XOR-RELAYED-ADDRESS")
                return
            self.relayed_address = relayed
            self.mapped_address = message.get(Attr.XOR_MAPPED_ADDRESS)
            lifetime = int(message.get(Attr.LIFETIME, self.settings.lifetime))
            self._set_state(TurnState.ALLOCATED, f"relayed {relayed[0]}:{relayed[1]}")
            self._schedule_refresh(lifetime, now)
            mapped = self.mapped_address if self.mapped_address is not None else ("", 0)
            self._events.append(AllocationSucceeded(relayed, mapped, lifetime))
            # Requests held while allocating.
            for peer_ip, permission in list(self._permissions.items()):
                if not permission.pending and permission.refresh_at is None:
                    self._send_permission(peer_ip, now)
            for held in list(self._channels.values()):
                if not held.pending and held.refresh_at is None:
                    self._send_channel_bind(held, now)
        elif kind is _Kind.REFRESH:
            lifetime = int(message.get(Attr.LIFETIME, self.settings.lifetime))
            self._schedule_refresh(lifetime, now)
            self._events.append(AllocationRefreshed(lifetime))
        elif kind is _Kind.RELEASE:
            self._released("deallocated")
        elif kind is _Kind.PERMISSION:
            self._permission_installed(request.peer_ip or "", now)
        elif kind is _Kind.CHANNEL:
            peer = self._channel_peers.get(request.channel or 0)
            channel = self._channels.get(peer) if peer is not None else None
            if channel is None:
                return
            first = not channel.bound
            channel.bound = True
            channel.pending = False
            channel.refresh_at = now + CHANNEL_REFRESH
            # RFC 8656 §12: a ChannelBind also installs or refreshes the peer's permission.
            self._permission_installed(channel.peer[0], now)
            if first:
                self._events.append(ChannelBound(channel.peer, channel.number))

    def _permission_installed(self, peer_ip: str, now: float) -> None:
        permission = self._permissions.setdefault(peer_ip, _Permission())
        permission.pending = False
        permission.refresh_at = now + PERMISSION_REFRESH
        if not permission.created:
            permission.created = True
            self._events.append(PermissionCreated(peer_ip))

    def _on_failure(self, request: _Request, code: int | None, reason: str, now: float) -> None:
        kind = request.kind
        log.info("%s failed: %s %s", kind.value, code, reason)
        if (kind is _Kind.REFRESH and code is None and self._state is TurnState.ALLOCATED
                and self._expires_at is not None and now < self._expires_at):
            # The server did not answer one Refresh (Rc transmissions, ~40 s): the allocation
            # still has time left, so ask again rather than give up a working relay over a
            # passing outage; it fails when it expires (handle_timer).
            log.info("Refresh unanswered; retrying before the allocation expires in %.0f s",
                     self._expires_at - now)
            self._refresh_at = now
            return
        if kind in (_Kind.ALLOCATE, _Kind.REFRESH):
            if self._state in (TurnState.ALLOCATING, TurnState.ALLOCATED):
                self._fail(code, reason)
        elif kind is _Kind.RELEASE:
            self._released(f"deallocation answered {code} {reason}")
        elif kind is _Kind.PERMISSION:
            peer_ip = request.peer_ip or ""
            if self._permissions.pop(peer_ip, None) is not None:
                self._events.append(PermissionFailed(peer_ip, code, reason))
        elif kind is _Kind.CHANNEL:
            peer = self._channel_peers.pop(request.channel or 0, None)
            if peer is not None:
                self._channels.pop(peer, None)

    def _schedule_refresh(self, lifetime: int, now: float) -> None:
        # RFC 8656 §7.3: refresh before expiry; a minute ahead, or half-way for short lifetimes.
        self._lifetime = lifetime
        self._expires_at = now + lifetime
        self._refresh_at = now + (lifetime - 60 if lifetime > 120 else lifetime / 2)

    def _fail(self, code: int | None, reason: str) -> None:
        for request in self._requests.values():
            request.transaction.cancel()
        self._requests.clear()
        self._refresh_at = None
        for permission in self._permissions.values():
            permission.refresh_at = None
        for channel in self._channels.values():
            channel.refresh_at = None
        self._set_state(TurnState.FAILED, reason)
        self._events.append(AllocationFailed(code, reason))

    def _released(self, cause: str) -> None:
        self._expires_at = None
        self._set_state(TurnState.RELEASED, cause)
        self._events.append(AllocationReleased())

    def _malformed(self, exc: StunError) -> None:
        self.malformed += 1
        log.debug("malformed datagram from the TURN server dropped: %s", exc)

    def _set_state(self, new: TurnState, cause: str) -> None:
        log.info("TURN %s:%s: %s -> %s (%s)", self.settings.server[0], self.settings.server[1],
                 self._state.value, new.value, cause)
        self._state = new
