"""The embedded registrar and proxy (RFC 3261 §10.3, §16), sans-IO.

:class:`Registrar` consumes the transaction layer's events and queues *actions* for its adapter
(:mod:`sipua.registrar_server`): responses in server transactions, requests to forward in new
client transactions, CANCELs of forwarded INVITEs and stateless sends (the ACK of a 2xx).

Registrar (§10.3): REGISTER is authenticated with Digest (qop=auth, MD5) against a users file
(:func:`parse_users`); nonces are stateless (an HMAC over the issue time and a random salt, keyed
by a secret drawn from the rng) and expire after ``nonce_lifetime`` (then ``stale=true``).
Bindings are kept per user with an expiry each; ``Contact: *`` with ``Expires: 0`` removes them
all; too short a lifetime gets 423 with Min-Expires; the 200 lists every current binding. The
address a REGISTER came from (received/rport) is stored with each binding, and requests for that
contact are sent there, not to the Contact: that is what gets them through the UA's NAT.

Proxy (§16, transaction-stateful): a request for a user of ours goes to the best binding (highest
q, then most recent; no forking), with Max-Forwards decremented, our Via on top and, for an
initial INVITE, our Record-Route (two when the transport changes, RFC 5658), so in-dialog requests
come back through us; our own Route entries are removed (loose routing, §16.4). Responses go
back without our Via; CANCEL is answered and passed on; the ACK of a 2xx is forwarded
statelessly. 404 for unknown users, 480 for users without a binding, 483 when Max-Forwards is 0,
408/503 when the next hop does not answer; OPTIONS without a user part is answered 200.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import heapq
import hmac
import ipaddress
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipua.auth import make_challenge, parse_authorization, verify_authorization
from sipua.message import (
    NameAddr,
    Request,
    Response,
    SipParseError,
    make_response,
    new_branch,
    new_tag,
)
from sipua.transaction import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionEvent,
    TransactionTimedOut,
    TransportFailed,
    default_port,
)
from sipua.uri import SipUri

__all__ = [
    "Address", "AuthenticationFailed", "Binding", "BindingRegistered", "BindingRemoved",
    "CancelForwarded", "ForwardRequest", "Registrar", "RegistrarAction", "RegistrarEvent",
    "RegistrarSettings", "RequestForwarded", "RequestRejected", "SendResponse", "SendStateless",
    "parse_users",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, UPDATE, INFO, MESSAGE, NOTIFY, REFER"
#: RFC 3261 §16.6 step 11: Timer C, how long a forwarded INVITE may stay without a final answer.
TIMER_C = 180.0
#: How long a forwarded INVITE is remembered after its final response, to pass on 2xx
#: retransmissions (64*T1, like timer M of RFC 6026).
_LINGER = 32.0
#: Contacts of requests we passed on (for NAT-aware in-dialog routing), newest kept.
_MAX_FLOWS = 4096


def parse_users(text: str) -> dict[str, str]:
    """Read a users file: one ``user:password`` per line; ``#`` starts a comment line; blank
    lines are skipped; the password is everything after the first ``:``.

    Raises ValueError naming the line for anything else.
    """
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, password = line.partition(":")
        user = user.strip()
        if not colon or not user or not password:
            raise ValueError(f"line {number}: expected 'user:password'")
        if any(c in user for c in " \t@;<>\""):
            raise ValueError(f"line {number}: bad user name {user!r}")
        users[user] = password
    return users


@dataclass(frozen=True)
class RegistrarSettings:
    """Policy of the embedded registrar and proxy."""

    #: The domain served ("lab.test"); None serves every domain (users are matched by name).
    domain: str | None = None
    #: Digest realm; None = ``domain``, else the host of the To URI.
    realm: str | None = None
    #: Shortest binding lifetime accepted, in seconds (shorter: 423, §10.3 step 7).
    min_expires: int = 10
    #: Longest lifetime granted, in seconds (longer requests are cut down).
    max_expires: int = 3600
    #: Lifetime when the REGISTER names none, in seconds.
    default_expires: int = 3600
    #: Seconds a nonce stays valid; older ones are answered with stale=true.
    nonce_lifetime: float = 300.0
    #: Challenge (407) initial INVITEs from our own users.
    authenticate_invites: bool = False
    #: Most bindings per user; more are refused with 403.
    max_contacts: int = 10


# --- actions for the adapter -----------------------------------------------------------------

@dataclass(frozen=True)
class SendResponse:
    """Send ``response`` in server transaction ``server_tx_id``."""

    server_tx_id: str
    response: Response


@dataclass(frozen=True)
class ForwardRequest:
    """Send ``request`` in a new client transaction to ``dest`` over ``transport``;
    ``branch`` (its top Via branch) names it in :class:`CancelForwarded`."""

    request: Request
    dest: Address
    transport: str
    branch: str


@dataclass(frozen=True)
class CancelForwarded:
    """CANCEL the forwarded INVITE of ``branch`` (RFC 3261 §16.10)."""

    branch: str


@dataclass(frozen=True)
class SendStateless:
    """Send ``message`` outside any transaction (the ACK of a 2xx, §16.11)."""

    message: Request | Response
    dest: Address
    transport: str


RegistrarAction = SendResponse | ForwardRequest | CancelForwarded | SendStateless


# --- events -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Event:
    def to_dict(self) -> dict[str, Any]:
        """``{"event": ClassName, field: value...}`` with plain JSON types."""
        out: dict[str, Any] = {"event": type(self).__name__}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, tuple):
                value = f"{value[0]}:{value[1]}"
            out[item.name] = value
        return out


@dataclass(frozen=True)
class BindingRegistered(_Event):
    """A contact was bound or refreshed."""

    user: str
    contact: str
    expires: int
    source: Address
    transport: str
    at: float


@dataclass(frozen=True)
class BindingRemoved(_Event):
    """A contact was unregistered ("unregistered") or lapsed ("expired")."""

    user: str
    contact: str
    reason: str
    at: float


@dataclass(frozen=True)
class AuthenticationFailed(_Event):
    """Credentials were sent and were wrong (or for another user)."""

    user: str
    source: Address
    at: float


@dataclass(frozen=True)
class RequestForwarded(_Event):
    """A request was proxied to ``dest``."""

    method: str
    uri: str
    dest: Address
    transport: str
    at: float


@dataclass(frozen=True)
class RequestRejected(_Event):
    """A request was answered with an error by the registrar/proxy itself."""

    method: str
    uri: str
    status: int
    at: float


RegistrarEvent = (BindingRegistered | BindingRemoved | AuthenticationFailed | RequestForwarded
                  | RequestRejected)


@dataclass(frozen=True)
class Binding:
    """One contact of a user (RFC 3261 §10.3) and where its REGISTER came from."""

    user: str
    uri: SipUri
    expires_at: float
    #: received:rport of the REGISTER (or the TCP/TLS connection's remote address).
    source: Address
    transport: str
    call_id: str
    cseq: int
    q: float
    registered_at: float


class _Phase(enum.Enum):
    """Where a forwarded request stands."""

    WAITING = "waiting"
    ANSWERED = "answered"


@dataclass
class _Forward:
    server_tx_id: str
    method: str
    branch: str
    dest: Address
    transport: str
    phase: _Phase
    deadline: float


def _contact_key(uri: SipUri) -> tuple[str | None, str, int]:
    transport = uri.transport
    return uri.user, uri.host.lower(), uri.port or default_port(transport)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Registrar:
    """The registrar/proxy core; see the module docstring.

    ``local_addresses`` maps each transport we listen on to the (host, port) to show in Via and
    Record-Route; the adapter sets it once listening (:meth:`set_local_addresses`).
    """

    def __init__(self, settings: RegistrarSettings, users: Mapping[str, str],
                 rng: random.Random, local_addresses: Mapping[str, Address] | None = None
                 ) -> None:
        self.settings = settings
        self.users = dict(users)
        self._rng = rng
        self._secret = rng.getrandbits(256).to_bytes(32, "big")
        self._local: dict[str, Address] = dict(local_addresses or {})
        self._bindings: dict[str, list[Binding]] = {}
        #: (expires_at, user) of bindings set, a heap; entries of replaced bindings are stale
        #: and skipped: the next expiry costs O(log n), not a scan of every binding per event.
        self._expiry: list[tuple[float, str]] = []
        #: Bindings by contact key, for routing requests to a contact without a scan.
        self._contacts: dict[tuple[str | None, str, int], Binding] = {}
        self._forwards: dict[str, _Forward] = {}
        self._by_server_tx: dict[str, str] = {}
        self._flows: OrderedDict[tuple[str | None, str, int], tuple[Address, str]] = \
            OrderedDict()
        self._actions: list[RegistrarAction] = []
        self._events: deque[RegistrarEvent] = deque()

    # --- outputs --------------------------------------------------------------------------------

    def pop_transmits(self) -> list[RegistrarAction]:
        """Actions for the adapter, oldest first."""
        out, self._actions = self._actions, []
        return out

    def next_event(self) -> RegistrarEvent | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    def _live_expiry(self, entry: tuple[float, str]) -> bool:
        return any(b.expires_at == entry[0] for b in self._bindings.get(entry[1], ()))

    def next_timer(self) -> float | None:
        """The next binding expiry or forwarding deadline."""
        heap = self._expiry
        while heap and not self._live_expiry(heap[0]):
            heapq.heappop(heap)
        deadlines = [f.deadline for f in self._forwards.values()]
        if heap:
            deadlines.append(heap[0][0])
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Drop lapsed bindings; CANCEL INVITEs past timer C; forget finished forwards."""
        due: set[str] = set()
        while self._expiry and self._expiry[0][0] <= now:
            due.add(heapq.heappop(self._expiry)[1])
        for user in sorted(due):
            bindings = self._bindings.get(user, [])
            keep = []
            for binding in bindings:
                if binding.expires_at <= now:
                    self._events.append(BindingRemoved(user, str(binding.uri), "expired", now))
                else:
                    keep.append(binding)
            if len(keep) != len(bindings):
                self._set_bindings(user, keep)
        for branch, forward in list(self._forwards.items()):
            if forward.deadline > now:
                continue
            if forward.phase is _Phase.WAITING and forward.method == "INVITE":
                log.info("INVITE %s: timer C fired, cancelling", branch)
                self._actions.append(CancelForwarded(branch))
                forward.phase = _Phase.ANSWERED
                forward.deadline = now + _LINGER
                continue
            self._forget(branch)

    # --- views ----------------------------------------------------------------------------------

    def set_local_addresses(self, addresses: Mapping[str, Address]) -> None:
        """Our (host, port) per transport, for Via and Record-Route."""
        self._local = dict(addresses)

    def bindings(self, user: str, now: float | None = None) -> list[Binding]:
        """Current bindings of ``user`` (those not lapsed at ``now`` when given)."""
        found = self._bindings.get(user, [])
        return [b for b in found if now is None or b.expires_at > now]

    # --- input ----------------------------------------------------------------------------------

    def handle(self, event: TransactionEvent, now: float) -> None:
        """Feed one transaction-layer event; others than those below are ignored."""
        try:
            if isinstance(event, RequestReceived):
                self._request(event, now)
            elif isinstance(event, ResponseReceived):
                self._response(event.response, now)
            elif isinstance(event, CancelReceived):
                self._cancel(event, now)
            elif isinstance(event, AckReceived):
                self._ack(event.request, now)
            elif isinstance(event, TransactionTimedOut | TransportFailed):
                self._no_answer(event, now)
        except SipParseError as exc:
            # The peer's fault: answer 400 when we can, never raise into the adapter.
            log.info("bad message: %s", exc)
            if isinstance(event, RequestReceived):
                self._reply(event, 400, now, reason=f"Bad Request ({exc.reason[:60]})")

    # --- requests -------------------------------------------------------------------------------

    def _reply(self, event: RequestReceived, status: int, now: float, *,
               reason: str | None = None, headers: list[tuple[str, str]] | None = None
               ) -> Response:
        response = make_response(event.request, status, reason, to_tag=new_tag(self._rng))
        for name, value in headers or []:
            response.headers.add(name, value)
        self._actions.append(SendResponse(event.server_tx_id, response))
        if status >= 300:
            self._events.append(RequestRejected(event.request.method, str(event.request.uri),
                                                status, now))
        return response

    def _request(self, event: RequestReceived, now: float) -> None:
        request = event.request
        request.validate()
        if request.method == "REGISTER":
            self._register(event, now)
            return
        if request.max_forwards == 0:
            if request.method == "OPTIONS" and self._is_ours(request.uri, request):
                self._reply(event, 200, now, headers=[("Allow", ALLOW)])
            else:
                self._reply(event, 483, now)  # §16.3 step 3
            return
        forwarded = request.copy()
        self._pop_own_routes(forwarded)
        if forwarded.method == "OPTIONS" and not forwarded.routes and forwarded.uri.user is None \
                and self._is_ours(forwarded.uri, forwarded):
            self._reply(event, 200, now, headers=[("Allow", ALLOW), ("Accept", "application/sdp")])
            return
        initial = request.to.tag is None
        if (initial and request.method == "INVITE" and self.settings.authenticate_invites
                and not self._invite_authorized(event, now)):
            return
        self._remember_flow(request, event.source, event.transport)
        target = self._target(event, forwarded, now)
        if target is None:
            return
        dest, transport = target
        if initial and request.method == "INVITE":
            self._record_route(forwarded, event.transport, transport)
        self._forward(event, forwarded, dest, transport, now)

    def _target(self, event: RequestReceived, request: Request, now: float
                ) -> tuple[Address, str] | None:
        """§16.5: where the request goes; answers the request itself when nowhere."""
        if request.routes:  # a Route beyond us: the next hop is its URI (loose routing)
            uri = request.routes[0].uri
            return self._direct(event, uri, now)
        uri = request.uri
        known = self._known_contact(uri, now)
        if known is not None:
            return known
        if request.to.tag is None and self._is_ours(uri, request):
            user = uri.user
            if user is None or user not in self.users:
                self._reply(event, 404, now)
                return None
            bindings = self.bindings(user, now)
            if not bindings:
                self._reply(event, 480, now)
                return None
            best = max(bindings, key=lambda b: (b.q, b.registered_at))
            request.uri = best.uri.with_()
            return best.source, best.transport
        return self._direct(event, uri, now)

    def _direct(self, event: RequestReceived, uri: SipUri, now: float
                ) -> tuple[Address, str] | None:
        """Send to the host and port of ``uri`` itself (an IP literal: the core has no DNS)."""
        if not _is_ip(uri.host):
            self._reply(event, 404 if event.request.to.tag is None else 481, now)
            return None
        transport = uri.transport
        if transport not in self._local:
            self._reply(event, 503, now, reason="Service Unavailable (transport not served)")
            return None
        return (uri.host, uri.port or default_port(transport)), transport

    def _known_contact(self, uri: SipUri, now: float) -> tuple[Address, str] | None:
        """NAT-aware routing: a registered contact (or one seen in a request we passed on)
        is reached at the address its requests came from."""
        key = _contact_key(uri)
        binding = self._contacts.get(key)
        if binding is not None and binding.expires_at > now:
            return binding.source, binding.transport
        return self._flows.get(key)

    def _remember_flow(self, request: Request, source: Address, transport: str) -> None:
        try:
            contacts = request.contacts
        except SipParseError:
            return
        for contact in contacts:
            key = _contact_key(contact.uri)
            self._flows[key] = (source, transport)
            self._flows.move_to_end(key)
        while len(self._flows) > _MAX_FLOWS:
            self._flows.popitem(last=False)

    def _is_ours(self, uri: SipUri, request: Request) -> bool:
        """The Request-URI names our domain, or one of our own addresses."""
        host = uri.host.lower()
        for transport, (local_host, port) in self._local.items():
            if host == local_host.lower() and (uri.port or default_port(uri.transport)) in (
                    port, default_port(transport)):
                return True
        if self.settings.domain is None:
            return not _is_ip(host) or not self._local
        return host == self.settings.domain.lower()

    def _is_own_route(self, uri: SipUri) -> bool:
        host = uri.host.lower()
        for local_host, port in self._local.values():
            if host == local_host.lower() and (uri.port or default_port(uri.transport)) == port:
                return True
        return False

    def _pop_own_routes(self, request: Request) -> None:
        """§16.4: remove the Route entries naming us (our Record-Route, loose routing)."""
        routes = request.routes
        count = 0
        while count < len(routes) and self._is_own_route(routes[count].uri):
            count += 1
        if count:
            request.routes = routes[count:]

    def _rr_uri(self, transport: str) -> str:
        host, port = self._local[transport]
        shown = f"[{host}]" if ":" in host else host
        suffix = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{shown}:{port}{suffix};lr>"

    def _record_route(self, request: Request, inbound: str, outbound: str) -> None:
        """§16.6 step 4; RFC 5658 double Record-Route when the transport changes: the entry
        facing the callee ends on top, the one facing the caller below it."""
        request.headers.add("Record-Route", self._rr_uri(inbound), first=True)
        if outbound != inbound:
            request.headers.add("Record-Route", self._rr_uri(outbound), first=True)

    def _via(self, transport: str, branch: str) -> str:
        host, port = self._local[transport]
        shown = f"[{host}]" if ":" in host else host
        return f"SIP/2.0/{transport.upper()} {shown}:{port};branch={branch};rport"

    def _forward(self, event: RequestReceived, request: Request, dest: Address, transport: str,
                 now: float) -> None:
        """§16.6: Max-Forwards minus one, our Via on top, a client transaction."""
        if transport not in self._local:
            self._reply(event, 503, now, reason="Service Unavailable (transport not served)")
            return
        request.max_forwards = _max_forwards(event.request) - 1
        branch = new_branch(self._rng)
        request.headers.add("Via", self._via(transport, branch), first=True)
        deadline = now + (TIMER_C if request.method == "INVITE" else 64 * 0.5 + 1)
        self._forwards[branch] = _Forward(event.server_tx_id, request.method, branch, dest,
                                          transport, _Phase.WAITING, deadline)
        self._by_server_tx[event.server_tx_id] = branch
        self._actions.append(ForwardRequest(request, dest, transport, branch))
        self._events.append(RequestForwarded(request.method, str(request.uri), dest, transport,
                                             now))

    # --- responses, CANCEL, ACK -----------------------------------------------------------------

    def _response(self, response: Response, now: float) -> None:
        """§16.7: pass the response back without our Via."""
        vias = response.vias
        branch = vias[0].branch if vias else None
        forward = self._forwards.get(branch or "")
        if forward is None or len(vias) < 2:
            return
        status = response.status
        if status == 100:
            return  # §16.7 step 3: never forwarded
        if forward.phase is _Phase.ANSWERED and not (forward.method == "INVITE"
                                                      and 200 <= status < 300):
            return
        out = response.copy()
        out.vias = vias[1:]
        if status >= 200:
            if forward.phase is _Phase.WAITING and 200 <= status < 300:
                self._remember_flow_of_response(out, forward)
            forward.phase = _Phase.ANSWERED
            forward.deadline = now + (_LINGER if forward.method == "INVITE" else 0.0)
        self._actions.append(SendResponse(forward.server_tx_id, out))
        if status >= 200 and forward.method != "INVITE":
            self._forget(branch or "")

    def _remember_flow_of_response(self, response: Response, forward: _Forward) -> None:
        try:
            contacts = response.contacts
        except SipParseError:
            return
        for contact in contacts:
            key = _contact_key(contact.uri)
            self._flows.setdefault(key, (forward.dest, forward.transport))

    def _no_answer(self, event: TransactionTimedOut | TransportFailed, now: float) -> None:
        """§16.7 step 6 (timer B/F: 408) and §16.9 (transport error: 503)."""
        vias = event.request.vias
        branch = vias[0].branch if vias else None
        forward = self._forwards.get(branch or "")
        if forward is None or forward.phase is not _Phase.WAITING:
            return
        status = 408 if isinstance(event, TransactionTimedOut) else 503
        self._forget(branch or "")
        original = event.request.copy()
        original.vias = original.vias[1:]
        response = make_response(original, status, to_tag=new_tag(self._rng))
        self._actions.append(SendResponse(forward.server_tx_id, response))
        self._events.append(RequestRejected(forward.method, str(event.request.uri), status, now))

    def _cancel(self, event: CancelReceived, now: float) -> None:
        """§16.10: answer the CANCEL; CANCEL the forwarded INVITE if it is still pending."""
        request = event.request
        status = 200 if event.invite_tx_id is not None else 481
        response = make_response(request, status, to_tag=new_tag(self._rng))
        self._actions.append(SendResponse(event.server_tx_id, response))
        if event.invite_tx_id is None:
            return
        branch = self._by_server_tx.get(event.invite_tx_id)
        forward = self._forwards.get(branch or "")
        if forward is not None and forward.phase is _Phase.WAITING:
            self._actions.append(CancelForwarded(forward.branch))

    def _ack(self, request: Request, now: float) -> None:
        """The ACK of a 2xx is a request of its own: route it like an in-dialog request."""
        ack = request.copy()
        if ack.max_forwards == 0:
            return
        self._pop_own_routes(ack)
        uri = ack.routes[0].uri if ack.routes else ack.uri
        target = self._known_contact(uri, now) if not ack.routes else None
        if target is None:
            if not _is_ip(uri.host) or uri.transport not in self._local:
                log.info("ACK for %s: nowhere to send it", ack.uri)
                return
            target = ((uri.host, uri.port or default_port(uri.transport)), uri.transport)
        dest, transport = target
        if transport not in self._local:
            return
        ack.max_forwards = _max_forwards(request) - 1
        ack.headers.add("Via", self._via(transport, new_branch(self._rng)), first=True)
        self._actions.append(SendStateless(ack, dest, transport))

    def _forget(self, branch: str) -> None:
        forward = self._forwards.pop(branch, None)
        if forward is not None and self._by_server_tx.get(forward.server_tx_id) == branch:
            del self._by_server_tx[forward.server_tx_id]

    # --- registrar ------------------------------------------------------------------------------

    def _realm(self, request: Request) -> str:
        s = self.settings
        return s.realm or s.domain or request.to.uri.host

    def _nonce(self, now: float) -> str:
        issued = int(now * 1000)
        salt = self._rng.getrandbits(32)
        text = f"{issued:x}.{salt:08x}"
        mac = hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{text}.{mac}"

    def _nonce_fresh(self, nonce: str, now: float) -> bool:
        issued_text, _, rest = nonce.partition(".")
        salt, _, mac = rest.partition(".")
        text = f"{issued_text}.{salt}"
        expected = hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:24]
        if not hmac.compare_digest(expected, mac):
            return False
        try:
            issued = int(issued_text, 16) / 1000
        except ValueError:
            return False
        return -1.0 <= now - issued <= self.settings.nonce_lifetime

    def _check_digest(self, event: RequestReceived, header: str, user: str | None,
                      now: float) -> str:
        """"ok", "missing", "stale" or "bad" for the credentials of ``header`` (our realm)."""
        request = event.request
        realm = self._realm(request)
        for value in request.headers.get_all(header):
            try:
                fields = parse_authorization(value)
            except SipParseError:
                return "bad"
            if fields["realm"] != realm:
                continue
            username = fields["username"]
            password = self.users.get(username)
            if password is None or (user is not None and username != user):
                self._events.append(AuthenticationFailed(username, event.source, now))
                return "bad"
            if not verify_authorization(fields, request.method, password, realm=realm):
                self._events.append(AuthenticationFailed(username, event.source, now))
                return "bad"
            return "ok" if self._nonce_fresh(fields["nonce"], now) else "stale"
        return "missing"

    def _challenge(self, event: RequestReceived, status: int, verdict: str, now: float) -> None:
        header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        value = make_challenge(self._realm(event.request), self._nonce(now),
                               stale=verdict == "stale")
        response = make_response(event.request, status, to_tag=new_tag(self._rng))
        response.headers.add(header, value)
        self._actions.append(SendResponse(event.server_tx_id, response))

    def _invite_authorized(self, event: RequestReceived, now: float) -> bool:
        """Optional 407 for initial INVITEs whose From is one of our users."""
        user = event.request.from_.uri.user
        if user is None or user not in self.users:
            return True
        verdict = self._check_digest(event, "Proxy-Authorization", user, now)
        if verdict == "ok":
            return True
        self._challenge(event, 407, verdict, now)
        return False

    def _register(self, event: RequestReceived, now: float) -> None:
        """RFC 3261 §10.3."""
        request = event.request
        s = self.settings
        if s.domain is not None and request.uri.host.lower() != s.domain.lower() \
                and not self._is_own_route(request.uri):
            self._reply(event, 404, now, reason="Not Found (domain not served here)")
            return
        user = request.to.uri.user
        verdict = self._check_digest(event, "Authorization", user, now)
        if verdict != "ok":
            self._challenge(event, 401, verdict, now)
            return
        assert user is not None
        if request.contact_star:
            if request.expires != 0:
                self._reply(event, 400, now, reason="Bad Request (Contact: * needs Expires: 0)")
                return
            for binding in self._bindings.get(user, []):
                self._events.append(BindingRemoved(user, str(binding.uri), "unregistered", now))
            self._set_bindings(user, [])
            self._reply_bindings(event, user, now)
            return
        updated = {_contact_key(b.uri): b for b in self.bindings(user, now)}
        changes: list[tuple[NameAddr, int]] = []
        for contact in request.contacts:
            expires = self._expires_of(contact, request)
            if 0 < expires < s.min_expires:
                self._reply(event, 423, now, headers=[("Min-Expires", str(s.min_expires))])
                return
            changes.append((contact, min(expires, s.max_expires)))
        call_id, cseq = request.call_id, request.cseq.number
        for contact, expires in changes:
            key = _contact_key(contact.uri)
            existing = updated.get(key)
            if existing is not None and existing.call_id == call_id and cseq <= existing.cseq:
                self._reply(event, 500, now, reason="Server Internal Error (out-of-order "
                            "REGISTER)")
                return
            if expires == 0:
                if existing is not None:
                    del updated[key]
                    self._events.append(BindingRemoved(user, str(existing.uri), "unregistered",
                                                       now))
                continue
            q = _q_of(contact)
            updated[key] = Binding(user, contact.uri.with_(), now + expires, event.source,
                                   event.transport, call_id, cseq, q,
                                   existing.registered_at if existing is not None else now)
        if len(updated) > s.max_contacts:
            self._reply(event, 403, now, reason="Forbidden (too many contacts)")
            return
        self._set_bindings(user, list(updated.values()))
        for contact, expires in changes:
            if expires > 0:
                self._events.append(BindingRegistered(user, str(contact.uri), expires,
                                                      event.source, event.transport, now))
        self._reply_bindings(event, user, now)

    def _expires_of(self, contact: NameAddr, request: Request) -> int:
        raw = contact.params.get("expires")
        if raw is not None and raw.strip().isdigit():
            return int(raw)
        header = request.expires
        return header if header is not None else self.settings.default_expires

    def _reply_bindings(self, event: RequestReceived, user: str, now: float) -> None:
        """§10.3 step 8: 200 with every current binding and its remaining lifetime."""
        response = make_response(event.request, 200, to_tag=new_tag(self._rng))
        for binding in self.bindings(user, now):
            remaining = max(1, int(binding.expires_at - now + 0.5))
            response.headers.add("Contact", f"<{binding.uri}>;expires={remaining}")
        self._actions.append(SendResponse(event.server_tx_id, response))

    def _set_bindings(self, user: str, bindings: list[Binding]) -> None:
        for old in self._bindings.get(user, ()):
            key = _contact_key(old.uri)
            if self._contacts.get(key) is old:
                del self._contacts[key]
        if bindings:
            self._bindings[user] = bindings
        else:
            self._bindings.pop(user, None)
        for binding in bindings:
            self._contacts[_contact_key(binding.uri)] = binding
            heapq.heappush(self._expiry, (binding.expires_at, user))
        if len(self._expiry) > 4 * len(self._contacts) + 1024:
            self._expiry = [e for e in self._expiry if self._live_expiry(e)]
            heapq.heapify(self._expiry)


def _max_forwards(request: Request) -> int:
    value = request.max_forwards
    return 70 if value is None else value


def _q_of(contact: NameAddr) -> float:
    raw = contact.params.get("q")
    try:
        return float(raw) if raw is not None else 1.0
    except ValueError:
        return 1.0

