"""The SIP transaction layer (RFC 3261 §17 as corrected by RFC 6026), sans-IO.

One :class:`TransactionLayer` holds every client and server transaction of a user agent. The
transport adapter feeds it parsed messages (:meth:`TransactionLayer.receive`) and transport
failures; the transaction user (dialogs, registration, the UA core) sends requests and responses
through it and reads its events. It never touches a socket or a clock: outputs are queued
(:meth:`~TransactionLayer.pop_transmits`, :meth:`~TransactionLayer.next_event`) and the owner
arms one timer at :meth:`~TransactionLayer.next_timer`.

What the layer does beyond the four state machines of §17:

- absorbs request retransmissions, re-sending the last response (§17.2.1, §17.2.2);
- sends 100 Trying for an INVITE when the TU has not answered within 200 ms (§17.2.1);
- generates the ACK of a non-2xx final response of an INVITE (§17.1.1.3);
- keeps INVITE transactions in RFC 6026's Accepted state after a 2xx, so that 2xx
  retransmissions reach the TU (client) and the server re-sends its 2xx until the ACK comes
  (§13.3.1.4), reporting :class:`AckNotReceived` otherwise;
- answers merged requests with 482 (§8.2.2.2);
- moves a request larger than the threshold from UDP to TCP (§18.1.1) and back to UDP when
  the TCP connection cannot be made (the peer may not listen on TCP at all);
- builds and schedules CANCEL (§9.1): never before a provisional response.
"""

from __future__ import annotations

import enum
import heapq
import logging
import random
from collections import deque
from dataclasses import dataclass, field

from sipua.message import (
    Headers,
    Request,
    Response,
    SipParseError,
    Via,
    make_response,
    new_tag,
    split_list,
)
from sipua.timers import (
    TimerSettings,
    next_interval,
    timer_a,
    timer_b,
    timer_d,
    timer_e,
    timer_f,
    timer_g,
    timer_h,
    timer_i,
    timer_j,
    timer_k,
    timer_l,
    timer_m,
)

__all__ = [
    "MAGIC_COOKIE", "AckNotReceived", "AckReceived", "Address", "CancelReceived",
    "ClientTransaction", "LayerStats", "MergedRequestDetected", "RequestReceived",
    "ResponseReceived", "ResponseSendFailed", "ServerTransaction", "SipTransmit",
    "TransactionEvent", "TransactionLayer", "TransactionSettings", "TransactionTimedOut",
    "TransportFailed", "TxState", "build_ack", "build_cancel", "default_port", "is_reliable",
    "replace_top_via", "response_destination",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]

#: RFC 3261 §8.1.1.7: branches of RFC 3261 agents start with this.
MAGIC_COOKIE = "z9hG4bK"

#: Seconds between two warnings about requests refused for overload (a flood must not flood
#: the log too); the count is in :attr:`LayerStats.overload_rejected`.
_OVERLOAD_LOG_INTERVAL = 10.0

_RELIABLE = frozenset({"tcp", "tls", "sctp", "tls-sctp", "ws", "wss"})


def is_reliable(transport: str) -> bool:
    """True for transports that retransmit by themselves (no SIP retransmissions, §17)."""
    return transport.lower() in _RELIABLE


def default_port(transport: str) -> int:
    """The port a SIP URI or Via without one means (RFC 3261 §19.1.2, §18.2.2)."""
    return 5061 if transport.lower() in ("tls", "tls-sctp", "wss") else 5060


def response_destination(via: Via, source: Address,
                         transport: str) -> tuple[Address, Address | None]:
    """Where a response to a request with top Via ``via`` goes: (destination, fallback).

    RFC 3261 §18.2.2 with RFC 3581 §4. On a stream transport the response goes back on the
    connection the request came on (keyed by ``source``); if that connection is gone the fallback
    is the ``received`` address and the sent-by port. On UDP: ``maddr`` first, then
    ``received``:``rport`` when rport is present, else ``received`` (or sent-by host) and the
    sent-by port.
    """
    t = transport.lower()
    port = via.port if via.port is not None else default_port(t)
    host = via.received or via.host
    if is_reliable(t):
        return source, (host, port)
    maddr = via.params.get("maddr")
    if maddr:
        return (maddr, port), None
    rport = via.rport
    if rport is True:  # RFC 3581 §4: present without value: the source port
        return (via.received or source[0], source[1]), None
    if isinstance(rport, int) and not isinstance(rport, bool):
        return (via.received or source[0], rport), None
    return (host, port), None


@dataclass(frozen=True)
class SipTransmit:
    """A message for the transport adapter to send."""

    data: bytes
    dest: Address
    transport: str
    #: The transaction to tell (:meth:`TransactionLayer.transport_failed`) if the send fails.
    tx_id: str | None = None
    #: For a response on a stream transport: where to connect if the connection at ``dest`` is
    #: gone (RFC 3261 §18.2.2).
    fallback: Address | None = None


@dataclass(frozen=True)
class TransactionSettings:
    """Behaviour of the transaction layer beyond the timer values."""

    #: T1, T2, T4 and timer D (RFC 3261 Table 4).
    timers: TimerSettings = field(default_factory=TimerSettings)
    #: Seconds after which an INVITE server transaction sends 100 Trying if the TU has sent no
    #: response yet (RFC 3261 §17.2.1: 200 ms); 0 sends it at once; None never sends it.
    trying_delay: float | None = 0.2
    #: A request over UDP larger than this many bytes goes over TCP when the caller allows it
    #: (RFC 3261 §18.1.1: 1300); None never switches.
    tcp_threshold: int | None = 1300
    #: Re-send a 2xx to INVITE until its ACK arrives (RFC 3261 §13.3.1.4), on unreliable
    #: transports; off when the TU retransmits 2xx itself.
    retransmit_2xx: bool = True
    #: Answer merged requests with 482 Loop Detected (RFC 3261 §8.2.2.2).
    detect_merged: bool = True
    #: Match requests without a z9hG4bK branch the RFC 2543 way (§17.2.3); off drops them.
    rfc2543_matching: bool = True
    #: Live server transactions at most. A new request beyond it is answered 503 Service
    #: Unavailable with Retry-After, statelessly, and opens no transaction (RFC 3261 §21.5.4):
    #: a flood of valid-looking requests costs a parse and an answer, never memory.
    max_server_transactions: int = 10000
    #: Live server transactions opened by one source address (IP and port) at most; beyond it
    #: that source gets the same 503. One flooding socket cannot take the whole table from
    #: everyone else (a non-INVITE transaction lives 64*T1 = 32 s over UDP, §17.2.2).
    max_server_transactions_per_source: int = 1000
    #: Live client transactions at most; a request the TU sends beyond it fails at once with
    #: :class:`TransportFailed` (the TU acts as on 503, §17.1.4) and opens no transaction.
    max_client_transactions: int = 10000
    #: Seconds in the Retry-After header of that 503 (RFC 3261 §20.33).
    overload_retry_after: int = 5

    def __post_init__(self) -> None:
        if self.trying_delay is not None and self.trying_delay < 0:
            raise ValueError("trying_delay must not be negative")
        if self.tcp_threshold is not None and self.tcp_threshold < 1:
            raise ValueError("tcp_threshold must be positive")
        if min(self.max_server_transactions, self.max_client_transactions,
               self.max_server_transactions_per_source) < 1:
            raise ValueError("transaction limits must be at least 1")
        if self.overload_retry_after < 0:
            raise ValueError("overload_retry_after must not be negative")


class TxState(enum.Enum):
    """States of the four transaction machines (RFC 3261 Figures 5-8, RFC 6026 Figures 4-5)."""

    #: A CANCEL built before the INVITE had a provisional response; sent when one comes (§9.1).
    PENDING = "pending"
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


# --- events -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestReceived:
    """A new request (not a retransmission) opened server transaction ``server_tx_id``."""

    request: Request
    server_tx_id: str
    source: Address
    transport: str


@dataclass(frozen=True)
class CancelReceived:
    """A CANCEL opened ``server_tx_id``; ``invite_tx_id`` is the INVITE it matches (§9.2).

    None means no INVITE transaction matches: the TU answers 481. Otherwise the TU answers the
    CANCEL with 200 and, if the INVITE has no final response yet, the INVITE with 487.
    """

    request: Request
    server_tx_id: str
    invite_tx_id: str | None
    source: Address
    transport: str


@dataclass(frozen=True)
class AckReceived:
    """An ACK for a 2xx (a request of its own, §17.2.3), for the dialog layer.

    ``server_tx_id`` names the Accepted INVITE transaction whose 2xx it acknowledges, when known.
    """

    request: Request
    server_tx_id: str | None
    source: Address
    transport: str


@dataclass(frozen=True)
class ResponseReceived:
    """A response for client transaction ``client_tx_id``: provisional, final, or a later 2xx."""

    response: Response
    client_tx_id: str


@dataclass(frozen=True)
class TransactionTimedOut:
    """Timer B or F fired: no final response came (RFC 3261 §8.1.3.1: act as on 408)."""

    client_tx_id: str
    request: Request


@dataclass(frozen=True)
class TransportFailed:
    """The request of ``client_tx_id`` could not be sent (§17.1.4: act as on 503)."""

    client_tx_id: str
    reason: str
    request: Request


@dataclass(frozen=True)
class ResponseSendFailed:
    """A response of ``server_tx_id`` could not be sent, not even to the fallback (§17.2.4)."""

    server_tx_id: str
    reason: str
    response: Response


@dataclass(frozen=True)
class AckNotReceived:
    """An INVITE server transaction gave up waiting for the ACK of ``response``.

    Timer H for a non-2xx final (§17.2.1); timer L for a 2xx (§13.3.1.4: the session should then
    be ended with BYE).
    """

    server_tx_id: str
    request: Request
    response: Response


@dataclass(frozen=True)
class MergedRequestDetected:
    """A request merged with ``original_tx_id`` (same From tag, Call-ID, CSeq): 482 sent.

    RFC 3261 §8.2.2.2; the TU sees no RequestReceived for it.
    """

    request: Request
    server_tx_id: str
    original_tx_id: str


TransactionEvent = (RequestReceived | CancelReceived | AckReceived | ResponseReceived
                    | TransactionTimedOut | TransportFailed | ResponseSendFailed | AckNotReceived
                    | MergedRequestDetected)


@dataclass
class LayerStats:
    """Counters of what the layer dropped or repeated (peer faults are counted, not raised)."""

    #: Responses that matched no client transaction (RFC 3261 §18.1.2: dropped).
    stray_responses: int = 0
    #: Requests that were retransmissions of an existing server transaction.
    absorbed_requests: int = 0
    #: Responses that were retransmissions absorbed by a client transaction.
    absorbed_responses: int = 0
    #: Requests and responses re-sent by timers A, E, G and the 2xx timer, and on retransmissions.
    retransmissions: int = 0
    #: Requests answered with 482 (§8.2.2.2).
    merged_requests: int = 0
    #: Messages dropped because a header the layer needs could not be read.
    malformed: int = 0
    #: New requests answered 503 statelessly: ``max_server_transactions`` were live (in all,
    #: or from that source).
    overload_rejected: int = 0
    #: Requests of the TU failed at once: ``max_client_transactions`` were live.
    overload_failed: int = 0


# --- transactions -----------------------------------------------------------------------------

class _Timers(dict[str, float]):
    """A transaction's deadlines by timer name; each one set is pushed on the layer's heap too,
    so that finding the next deadline costs O(log n), not a scan of every transaction (a flood
    keeps thousands alive). Entries removed or replaced here go stale in the heap and are
    skipped when they surface."""

    __slots__ = ("_heap", "_tx_id")

    def __init__(self, heap: list[tuple[float, str, str]], tx_id: str) -> None:
        super().__init__()
        self._heap = heap
        self._tx_id = tx_id

    def __setitem__(self, name: str, deadline: float) -> None:
        super().__setitem__(name, deadline)
        heapq.heappush(self._heap, (deadline, self._tx_id, name))


class _Transaction:
    """What client and server transactions share: identity, state, timers."""

    def __init__(self, tx_id: str, request: Request, transport: str) -> None:
        self.id = tx_id
        self.request = request
        self.method = request.method
        self.transport = transport.lower()
        self.reliable = is_reliable(self.transport)
        self.state = TxState.TRYING
        #: Absolute deadlines by timer name ("A", "B", ..., "100", "2xx").
        self.timers: dict[str, float] = {}
        #: The current retransmission interval of the running A/E/G/2xx timer.
        self.interval = 0.0

    @property
    def is_invite(self) -> bool:
        """An INVITE transaction (the other three machines are the non-INVITE kind)."""
        return self.method == "INVITE"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.state.value}>"


class ClientTransaction(_Transaction):
    """A request we sent and the responses it gets (RFC 3261 §17.1)."""

    def __init__(self, tx_id: str, request: Request, dest: Address, transport: str,
                 data: bytes) -> None:
        super().__init__(tx_id, request, transport)
        self.dest: Address = dest
        self.data = data
        self.key: tuple[str, str] = ("", "")
        #: The request as the TU gave it, when §18.1.1 moved it from UDP to TCP.
        self.udp_original: Request | None = None
        #: The ACK sent for a non-2xx final response (§17.1.1.3), re-sent on its retransmissions.
        self.ack_data: bytes | None = None
        #: The CANCEL waiting for a provisional response of this INVITE (§9.1).
        self.pending_cancel: ClientTransaction | None = None
        #: For a CANCEL: the INVITE transaction it cancels.
        self.cancels: ClientTransaction | None = None
        self.provisional_seen = False


class ServerTransaction(_Transaction):
    """A request we received and the responses the TU sends for it (RFC 3261 §17.2)."""

    def __init__(self, tx_id: str, request: Request, source: Address, transport: str,
                 dest: Address, fallback: Address | None) -> None:
        super().__init__(tx_id, request, transport)
        self.source: Address = source
        self.dest: Address = dest
        self.fallback: Address | None = fallback
        self.key: tuple[object, ...] = ()
        self.merged_key: tuple[object, ...] | None = None
        self.dialog_key: tuple[object, ...] | None = None
        self.last_response: Response | None = None
        self.last_data: bytes | None = None


# --- message helpers --------------------------------------------------------------------------

def _top_via_raw(message: Request | Response) -> str:
    vias = message.headers.get_all("Via")
    if not vias:
        raise ValueError("the message has no Via")
    return vias[0]


def _base_request(method: str, invite: Request, to_value: str) -> Request:
    """ACK and CANCEL share their shape: §17.1.1.3 and §9.1."""
    headers: list[tuple[str, str]] = [
        ("Via", _top_via_raw(invite)),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("From") or ""),
        ("To", to_value),
        ("Call-ID", invite.headers.get("Call-ID") or ""),
        ("CSeq", f"{invite.cseq.number} {method}"),
    ]
    headers.extend(("Route", route) for route in invite.headers.get_all("Route"))
    return Request(method, invite.uri, headers)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response, part of the INVITE transaction (RFC 3261 §17.1.1.3).

    Same Request-URI, Call-ID, From, CSeq number and top Via (hence branch) as the INVITE, the
    To of the response (with its tag), and the INVITE's Route headers.
    """
    return _base_request("ACK", invite, response.headers.get("To") or "")


def build_cancel(invite: Request) -> Request:
    """A CANCEL for ``invite`` (RFC 3261 §9.1): same Request-URI, Call-ID, To, From, CSeq number,
    a single Via equal to the INVITE's top Via, and the INVITE's Route headers."""
    return _base_request("CANCEL", invite, invite.headers.get("To") or "")


def replace_top_via(message: Request | Response, via: Via) -> None:
    """Put ``via`` in place of the top Via of ``message``, leaving every other line as it was."""
    items = message.headers.items()
    for position, (name, value) in enumerate(items):
        if name == "Via":
            parts = split_list(value)
            parts[0] = str(via)
            items[position] = (name, ", ".join(parts))
            break
    else:
        raise ValueError("the message has no Via")
    message.headers = Headers(items)


def _with_via_transport(request: Request, transport: str) -> Request:
    """A copy of ``request`` whose top Via names ``transport`` (RFC 3261 §18.1.1)."""
    copy = request.copy()
    replace_top_via(copy, request.vias[0].with_(transport=transport.upper()))
    return copy


def _branch(via: Via) -> str | None:
    branch = via.branch
    return branch if branch and branch.startswith(MAGIC_COOKIE) else None


# --- the layer --------------------------------------------------------------------------------

class TransactionLayer:
    """Every transaction of one user agent; see the module docstring."""

    def __init__(self, rng: random.Random, settings: TransactionSettings | None = None) -> None:
        self.settings = settings if settings is not None else TransactionSettings()
        self.stats = LayerStats()
        self._rng = rng
        self._timers = self.settings.timers
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._servers: dict[tuple[object, ...], ServerTransaction] = {}
        self._by_id: dict[str, ClientTransaction | ServerTransaction] = {}
        self._merged: dict[tuple[object, ...], ServerTransaction] = {}
        self._accepted: dict[tuple[object, ...], ServerTransaction] = {}
        self._transmits: list[SipTransmit] = []
        self._events: deque[TransactionEvent] = deque()
        self._serial = 0
        #: (deadline, transaction id, timer name) of every timer set; stale ones skipped lazily.
        self._heap: list[tuple[float, str, str]] = []
        #: Live server transactions per source address.
        self._per_source: dict[Address, int] = {}
        self._overload_logged_at = float("-inf")

    # --- outputs ------------------------------------------------------------------------------

    def pop_transmits(self) -> list[SipTransmit]:
        """Messages to send, oldest first."""
        out, self._transmits = self._transmits, []
        return out

    def next_event(self) -> TransactionEvent | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    def _live(self, entry: tuple[float, str, str]) -> bool:
        tx = self._by_id.get(entry[1])
        return tx is not None and tx.timers.get(entry[2]) == entry[0]

    def next_timer(self) -> float | None:
        """The earliest deadline of any transaction timer, or None."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        if len(heap) > 4 * len(self._by_id) + 1024:
            # Timers cancelled early (B and F on a final response) linger until their deadline.
            self._heap = [entry for entry in heap if self._live(entry)]
            heapq.heapify(self._heap)
            for tx in self._by_id.values():
                if isinstance(tx.timers, _Timers):
                    tx.timers._heap = self._heap
            heap = self._heap
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> None:
        """Fire every timer due at ``now``, in deadline order."""
        for _ in range(1_000_000):  # bounded: every firing ends a timer or moves it later
            heap = self._heap
            if not heap or heap[0][0] > now:
                return
            deadline, tx_id, name = heapq.heappop(heap)
            tx = self._by_id.get(tx_id)
            if tx is None or tx.timers.get(name) != deadline:
                continue  # ended or rescheduled by an earlier firing
            del tx.timers[name]
            if isinstance(tx, ClientTransaction):
                self._client_timer(tx, name, now)
            else:
                self._server_timer(tx, name, now)

    # --- lookups ------------------------------------------------------------------------------

    def transaction(self, tx_id: str) -> ClientTransaction | ServerTransaction | None:
        """The live transaction with this id, or None once it has terminated."""
        return self._by_id.get(tx_id)

    def transactions(self) -> list[ClientTransaction | ServerTransaction]:
        """Every live transaction."""
        return list(self._by_id.values())

    def awaiting_final(self) -> list[ClientTransaction]:
        """Client transactions still waiting for a final response (a BYE or an un-REGISTER
        being retransmitted): a shutdown that closed the transport now would lose them."""
        waiting = (TxState.PENDING, TxState.CALLING, TxState.TRYING, TxState.PROCEEDING)
        return [tx for tx in self._by_id.values()
                if isinstance(tx, ClientTransaction) and tx.state in waiting]

    # --- inputs: from the transport ------------------------------------------------------------

    def receive(self, message: Request | Response, source: Address, transport: str,
                now: float) -> None:
        """A parsed message from the transport adapter (which has set received/rport, §18.2.1)."""
        try:
            if isinstance(message, Response):
                self._receive_response(message, now)
            else:
                self._receive_request(message, source, transport.lower(), now)
        except SipParseError as exc:
            self.stats.malformed += 1
            log.info("dropped a message with a bad header from %s: %s", source, exc)

    def transport_failed(self, tx_id: str, reason: str, now: float) -> None:
        """Sending for transaction ``tx_id`` failed (connection refused, reset, unreachable).

        RFC 3261 §17.1.4 and §17.2.4: the transaction ends and the TU learns of it. A request
        moved to TCP by §18.1.1 first goes back to UDP if no response has come yet.
        """
        tx = self._by_id.get(tx_id)
        if tx is None or tx.state is TxState.TERMINATED:
            return
        if isinstance(tx, ServerTransaction):
            response = tx.last_response
            self._set_state(tx, TxState.TERMINATED, f"transport error: {reason}")
            if response is not None:
                self._events.append(ResponseSendFailed(tx.id, reason, response))
            return
        if tx.udp_original is not None and tx.state in (TxState.CALLING, TxState.TRYING):
            self._fall_back_to_udp(tx, reason, now)
            return
        if tx.state in (TxState.COMPLETED, TxState.ACCEPTED):
            return  # a failed ACK re-send: the TU already has its final response
        request = tx.request
        self._set_state(tx, TxState.TERMINATED, f"transport error: {reason}")
        self._events.append(TransportFailed(tx.id, reason, request))

    # --- inputs: from the TU -------------------------------------------------------------------

    def send_request(self, request: Request, dest: Address, transport: str, now: float, *,
                     allow_tcp: bool = True) -> ClientTransaction:
        """Start a client transaction for ``request`` (any method but ACK) to ``dest``.

        The request's top Via must carry a z9hG4bK branch (§8.1.1.7); the layer changes nothing
        but the Via transport when §18.1.1 moves a large request from UDP to TCP, which it does
        only when ``allow_tcp`` (the destination was not explicitly UDP-only).
        """
        if request.method == "ACK":
            raise ValueError("ACK is not sent in a transaction: use send_stateless")
        if len(self._clients) >= self.settings.max_client_transactions:
            return self._refuse_client(request, dest, transport)
        if request.method == "CANCEL":
            invite = self._clients.get((self._client_branch(request), "INVITE"))
            tx = self._new_client(request, dest, transport)
            tx.cancels = invite
            self._start_client(tx, now)
            return tx
        tx = self._new_client(request, dest, transport)
        threshold = self.settings.tcp_threshold
        if (tx.transport == "udp" and allow_tcp and threshold is not None
                and len(tx.data) > threshold):
            switched = _with_via_transport(request, "TCP")
            log.info("%s: %d bytes > %d, sending over TCP (RFC 3261 §18.1.1)", tx.id,
                     len(tx.data), threshold)
            tx.udp_original = request
            tx.request = switched
            tx.data = switched.encode()
            tx.transport = "tcp"
            tx.reliable = True
        self._start_client(tx, now)
        return tx

    def cancel(self, invite_tx: str | ClientTransaction, now: float) -> ClientTransaction | None:
        """CANCEL the INVITE of ``invite_tx`` (RFC 3261 §9.1).

        Returns the CANCEL's client transaction, or None when there is nothing left to cancel
        (a final response has arrived or the transaction has ended). Before any provisional
        response the CANCEL is held in the Pending state and sent when one arrives; if a final
        response comes first, it is dropped unsent.
        """
        tx = self._by_id.get(invite_tx) if isinstance(invite_tx, str) else invite_tx
        if not isinstance(tx, ClientTransaction) or not tx.is_invite:
            raise ValueError(f"{invite_tx!r} is not a live INVITE client transaction")
        if tx.state not in (TxState.CALLING, TxState.PROCEEDING):
            return None
        if tx.pending_cancel is not None:
            return tx.pending_cancel
        existing = self._clients.get((tx.key[0], "CANCEL"))
        if existing is not None:
            return existing
        request = build_cancel(tx.request)
        cancel_tx = self._new_client(request, tx.dest, tx.transport)
        cancel_tx.cancels = tx
        if tx.state is TxState.CALLING:
            self._set_state(cancel_tx, TxState.PENDING, "INVITE has no provisional response yet")
            tx.pending_cancel = cancel_tx
            self._register(cancel_tx)
            log.debug("%s: held until a provisional response (RFC 3261 §9.1)", cancel_tx.id)
        else:
            self._start_client(cancel_tx, now)
        return cancel_tx

    def send_response(self, server_tx: str | ServerTransaction, response: Response,
                      now: float) -> None:
        """Send ``response`` in server transaction ``server_tx`` (RFC 3261 §17.2).

        Raises ValueError for an unknown or ended transaction and for a response the state does
        not allow (a second final, except further 2xx to an INVITE in the Accepted state).
        """
        tx = self._by_id.get(server_tx) if isinstance(server_tx, str) else server_tx
        if not isinstance(tx, ServerTransaction) or tx.state is TxState.TERMINATED:
            raise ValueError(f"no live server transaction {server_tx!r}")
        if tx.method == "ACK":
            raise ValueError("ACK gets no response")
        status = response.status
        if tx.state is TxState.ACCEPTED and 200 <= status < 300:
            self._send_response_data(tx, response)  # RFC 6026 §8.7: TU's 2xx pass through
            return
        if tx.state not in (TxState.TRYING, TxState.PROCEEDING):
            raise ValueError(f"{tx.id} is {tx.state.value}: it takes no more responses")
        tx.timers.pop("100", None)
        self._send_response_data(tx, response)
        t = self._timers
        if status < 200:
            if tx.state is TxState.TRYING:
                self._set_state(tx, TxState.PROCEEDING, f"sent {status}")
            return
        if not tx.is_invite:
            self._set_state(tx, TxState.COMPLETED, f"sent {status}")
            self._arm_or_end(tx, "J", timer_j(t, tx.reliable), now)
            return
        if status < 300:
            # RFC 6026 §8.5-8.7: Accepted, not Terminated, so retransmitted INVITEs are absorbed.
            self._set_state(tx, TxState.ACCEPTED, f"sent {status}")
            tx.timers["L"] = now + timer_l(t)
            tx.dialog_key = self._dialog_key(tx.request, response)
            if tx.dialog_key is not None:
                self._accepted[tx.dialog_key] = tx
            if self.settings.retransmit_2xx and not tx.reliable:
                tx.interval = timer_g(t)
                tx.timers["2xx"] = now + tx.interval
            return
        self._set_state(tx, TxState.COMPLETED, f"sent {status}")
        if not tx.reliable:
            tx.interval = timer_g(t)
            tx.timers["G"] = now + tx.interval
        tx.timers["H"] = now + timer_h(t)

    def send_stateless(self, message: Request | Response, dest: Address,
                       transport: str) -> None:
        """Send outside any transaction: the ACK of a 2xx (§13.2.2.4), a stateless response."""
        self._transmits.append(SipTransmit(message.encode(), dest, transport.lower()))

    # --- client side ---------------------------------------------------------------------------

    @staticmethod
    def _client_branch(request: Request) -> str:
        vias = request.vias
        if not vias or not vias[0].branch or not vias[0].branch.startswith(MAGIC_COOKIE):
            raise ValueError("the request needs a top Via with a z9hG4bK branch (§8.1.1.7)")
        return vias[0].branch

    def _new_client(self, request: Request, dest: Address, transport: str) -> ClientTransaction:
        branch = self._client_branch(request)
        key = (branch, request.method)
        if key in self._clients:
            raise ValueError(f"a {request.method} transaction with branch {branch} exists")
        tx = ClientTransaction(f"{request.method}/{branch}", request, dest, transport,
                               request.encode())
        tx.key = key
        return tx

    def _register(self, tx: ClientTransaction) -> None:
        self._clients[tx.key] = tx
        self._by_id[tx.id] = tx
        if not isinstance(tx.timers, _Timers):
            tx.timers = _Timers(self._heap, tx.id)

    def _refuse_client(self, request: Request, dest: Address,
                       transport: str) -> ClientTransaction:
        """``max_client_transactions`` are live: fail the request at once, keep no state."""
        tx = self._new_client(request, dest, transport)
        tx.state = TxState.TERMINATED
        self.stats.overload_failed += 1
        log.warning("%s not sent: %d client transactions live", tx.id, len(self._clients))
        self._events.append(TransportFailed(tx.id, "too many transactions", request))
        return tx

    def _start_client(self, tx: ClientTransaction, now: float) -> None:
        """Send the request and start A/B (INVITE) or E/F (others)."""
        self._register(tx)
        t = self._timers
        if tx.is_invite:
            self._set_state(tx, TxState.CALLING, "request sent")
            if not tx.reliable:
                tx.interval = timer_a(t)
                tx.timers["A"] = now + tx.interval
            tx.timers["B"] = now + timer_b(t)
        else:
            self._set_state(tx, TxState.TRYING, "request sent")
            if not tx.reliable:
                tx.interval = timer_e(t)
                tx.timers["E"] = now + tx.interval
            tx.timers["F"] = now + timer_f(t)
        self._transmits.append(SipTransmit(tx.data, tx.dest, tx.transport, tx.id))

    def _fall_back_to_udp(self, tx: ClientTransaction, reason: str, now: float) -> None:
        original = tx.udp_original
        assert original is not None
        log.info("%s: TCP failed (%s), retrying over UDP", tx.id, reason)
        tx.udp_original = None
        tx.request = original
        tx.data = original.encode()
        tx.transport = "udp"
        tx.reliable = False
        tx.timers.clear()
        self._start_client(tx, now)

    def _receive_response(self, response: Response, now: float) -> None:
        vias = response.vias
        branch = _branch(vias[0]) if vias else None
        tx = self._clients.get((branch, response.cseq.method)) if branch else None
        if tx is None or tx.state is TxState.PENDING:
            self.stats.stray_responses += 1
            log.debug("stray %d response (branch %s) dropped", response.status, branch)
            return
        status = response.status
        if tx.is_invite:
            self._invite_client_response(tx, response, status, now)
        else:
            self._non_invite_client_response(tx, response, status, now)

    def _invite_client_response(self, tx: ClientTransaction, response: Response, status: int,
                                now: float) -> None:
        t = self._timers
        if tx.state in (TxState.CALLING, TxState.PROCEEDING):
            tx.timers.pop("A", None)
            tx.timers.pop("B", None)
            tx.udp_original = None  # an answer came: no going back to UDP
            if status < 200:
                if tx.state is TxState.CALLING:
                    self._set_state(tx, TxState.PROCEEDING, f"received {status}")
                self._events.append(ResponseReceived(response, tx.id))
                self._release_cancel(tx, now)
                return
            if status < 300:
                # RFC 6026 §8.4: Accepted, so that 2xx retransmissions and forks reach the TU.
                self._set_state(tx, TxState.ACCEPTED, f"received {status}")
                tx.timers["M"] = now + timer_m(t)
                self._events.append(ResponseReceived(response, tx.id))
                self._drop_pending_cancel(tx)
                return
            # §17.1.1.3: the transaction itself ACKs a non-2xx final response.
            tx.ack_data = build_ack(tx.request, response).encode()
            self._transmits.append(SipTransmit(tx.ack_data, tx.dest, tx.transport, tx.id))
            self._set_state(tx, TxState.COMPLETED, f"received {status}")
            self._events.append(ResponseReceived(response, tx.id))
            self._drop_pending_cancel(tx)
            self._arm_or_end(tx, "D", timer_d(t, tx.reliable), now)
            return
        if tx.state is TxState.ACCEPTED and 200 <= status < 300:
            self._events.append(ResponseReceived(response, tx.id))  # RFC 6026 §8.4
            return
        if tx.state is TxState.COMPLETED and status >= 300 and tx.ack_data is not None:
            self.stats.absorbed_responses += 1
            self.stats.retransmissions += 1
            self._transmits.append(SipTransmit(tx.ack_data, tx.dest, tx.transport, tx.id))
            return
        self.stats.absorbed_responses += 1

    def _non_invite_client_response(self, tx: ClientTransaction, response: Response,
                                    status: int, now: float) -> None:
        if tx.state not in (TxState.TRYING, TxState.PROCEEDING):
            self.stats.absorbed_responses += 1  # §17.1.2.2: Completed absorbs retransmissions
            return
        tx.udp_original = None
        if status < 200:
            if tx.state is TxState.TRYING:
                self._set_state(tx, TxState.PROCEEDING, f"received {status}")
            self._events.append(ResponseReceived(response, tx.id))
            return
        tx.timers.pop("E", None)
        tx.timers.pop("F", None)
        self._set_state(tx, TxState.COMPLETED, f"received {status}")
        self._events.append(ResponseReceived(response, tx.id))
        self._arm_or_end(tx, "K", timer_k(self._timers, tx.reliable), now)

    def _release_cancel(self, invite: ClientTransaction, now: float) -> None:
        cancel_tx = invite.pending_cancel
        if cancel_tx is None:
            return
        invite.pending_cancel = None
        log.debug("%s: provisional response came, sending CANCEL", invite.id)
        self._start_client(cancel_tx, now)

    def _drop_pending_cancel(self, invite: ClientTransaction) -> None:
        cancel_tx = invite.pending_cancel
        if cancel_tx is None:
            return
        invite.pending_cancel = None
        self._set_state(cancel_tx, TxState.TERMINATED, "INVITE got a final response first")

    def _client_timer(self, tx: ClientTransaction, name: str, now: float) -> None:
        t = self._timers
        if name in ("A", "E"):
            # §17.1.1.2: A doubles; §17.1.2.2: E doubles up to T2, and is T2 in Proceeding.
            if name == "A":
                tx.interval = next_interval(tx.interval, t, capped=False)
            elif tx.state is TxState.PROCEEDING:
                tx.interval = t.t2
            else:
                tx.interval = next_interval(tx.interval, t, capped=True)
            tx.timers[name] = now + tx.interval
            self.stats.retransmissions += 1
            self._transmits.append(SipTransmit(tx.data, tx.dest, tx.transport, tx.id))
            return
        if name in ("B", "F"):
            request = tx.request
            self._set_state(tx, TxState.TERMINATED, f"timer {name} fired")
            self._drop_pending_cancel(tx)
            self._events.append(TransactionTimedOut(tx.id, request))
            return
        # D, K, M: the wait for retransmissions is over.
        self._set_state(tx, TxState.TERMINATED, f"timer {name} fired")

    # --- server side ---------------------------------------------------------------------------

    def _server_key(self, request: Request, method: str) -> tuple[object, ...] | None:
        """§17.2.3: branch + sent-by + method (ACK matches INVITE); RFC 2543 fallback."""
        via = request.vias[0]
        branch = _branch(via)
        if branch is not None:
            return ("3261", branch, via.host.lower(), via.port, method)
        if not self.settings.rfc2543_matching:
            return None
        # RFC 2543 (§17.2.3): Request-URI, From tag, Call-ID, CSeq number and top Via. The To tag
        # is left out: the INVITE has none and its ACK carries the response's.
        return ("2543", str(request.uri), request.from_.tag, request.call_id,
                request.cseq.number, via.host.lower(), via.port, via.branch, method)

    def _receive_request(self, request: Request, source: Address, transport: str,
                         now: float) -> None:
        vias = request.vias
        if not vias:
            self.stats.malformed += 1
            log.info("request from %s without Via dropped", source)
            return
        method = request.method
        key = self._server_key(request, "INVITE" if method == "ACK" else method)
        if key is None:
            self.stats.malformed += 1
            log.info("request from %s without a z9hG4bK branch dropped", source)
            return
        tx = self._servers.get(key)
        if method == "ACK":
            self._receive_ack(request, tx, source, transport, now)
            return
        if tx is not None:
            self._retransmitted_request(tx)
            return
        if (len(self._servers) >= self.settings.max_server_transactions
                or self._per_source.get(source, 0)
                >= self.settings.max_server_transactions_per_source):
            self._refuse_server(request, source, transport, now)
            return
        tx = self._new_server(request, key, source, transport)
        if tx.is_invite:
            self._set_state(tx, TxState.PROCEEDING, "INVITE received")
        if self.settings.detect_merged and self._reject_merged(tx, now):
            return
        if tx.is_invite:
            delay = self.settings.trying_delay
            if delay == 0:
                self._send_trying(tx)
            elif delay is not None:
                tx.timers["100"] = now + delay
        if method == "CANCEL":
            invite = self._servers.get((*key[:-1], "INVITE"))
            self._events.append(CancelReceived(request, tx.id, invite.id if invite else None,
                                               source, transport))
        else:
            self._events.append(RequestReceived(request, tx.id, source, transport))

    def _new_server(self, request: Request, key: tuple[object, ...], source: Address,
                    transport: str) -> ServerTransaction:
        self._serial += 1
        dest, fallback = response_destination(request.vias[0], source, transport)
        branch = request.vias[0].branch or "-"
        tx = ServerTransaction(f"{request.method}/{branch}#{self._serial}", request, source,
                               transport, dest, fallback)
        tx.key = key
        tx.timers = _Timers(self._heap, tx.id)
        self._servers[key] = tx
        self._by_id[tx.id] = tx
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return tx

    def _refuse_server(self, request: Request, source: Address, transport: str,
                       now: float) -> None:
        """RFC 3261 §21.5.4: 503 with Retry-After, sent without opening a transaction (a
        retransmission of the request gets another one)."""
        self.stats.overload_rejected += 1
        if now >= self._overload_logged_at + _OVERLOAD_LOG_INTERVAL:
            self._overload_logged_at = now
            log.warning("%d server transactions live (%d from %s): answering 503 (%d so far)",
                        len(self._servers), self._per_source.get(source, 0), source,
                        self.stats.overload_rejected)
        response = make_response(request, 503, to_tag=new_tag(self._rng))
        response.headers.add("Retry-After", str(self.settings.overload_retry_after))
        dest, fallback = response_destination(request.vias[0], source, transport)
        self._transmits.append(SipTransmit(response.encode(), dest, transport, None, fallback))

    def _reject_merged(self, tx: ServerTransaction, now: float) -> bool:
        """§8.2.2.2: same From tag, Call-ID and CSeq as a live transaction, other branch: 482."""
        request = tx.request
        from_tag = request.from_.tag
        if request.to.tag is not None or from_tag is None:
            return False
        merged_key = (from_tag, request.call_id, request.cseq.number, request.cseq.method)
        original = self._merged.get(merged_key)
        if original is None or original.state is TxState.TERMINATED:
            tx.merged_key = merged_key
            self._merged[merged_key] = tx
            return False
        self.stats.merged_requests += 1
        log.info("%s merged with %s: 482", tx.id, original.id)
        self._events.append(MergedRequestDetected(request, tx.id, original.id))
        self.send_response(tx, make_response(request, 482, to_tag=new_tag(self._rng)), now)
        return True

    def _retransmitted_request(self, tx: ServerTransaction) -> None:
        """§17.2.1, §17.2.2: re-send the last response; Trying/Accepted/Confirmed absorb."""
        self.stats.absorbed_requests += 1
        if tx.state in (TxState.PROCEEDING, TxState.COMPLETED) and tx.last_data is not None:
            self.stats.retransmissions += 1
            self._emit_response(tx, tx.last_data)

    def _receive_ack(self, ack: Request, tx: ServerTransaction | None, source: Address,
                     transport: str, now: float) -> None:
        if tx is not None and tx.state is TxState.COMPLETED:
            # §17.2.1: the ACK of our non-2xx final.
            tx.timers.pop("G", None)
            tx.timers.pop("H", None)
            self._set_state(tx, TxState.CONFIRMED, "ACK received")
            self._arm_or_end(tx, "I", timer_i(self._timers, tx.reliable), now)
            return
        if tx is not None and tx.state is TxState.CONFIRMED:
            self.stats.absorbed_requests += 1
            return
        if tx is None or tx.state is not TxState.ACCEPTED:
            # An ACK for a 2xx has a branch of its own (§17.2.3): find the 2xx by dialog.
            dialog_key = self._dialog_key(ack, None)
            tx = self._accepted.get(dialog_key) if dialog_key is not None else None
        if tx is not None and tx.state is TxState.ACCEPTED:
            tx.timers.pop("2xx", None)
            if tx.dialog_key is not None:
                self._accepted.pop(tx.dialog_key, None)
        self._events.append(AckReceived(ack, tx.id if tx is not None else None, source,
                                        transport))

    @staticmethod
    def _dialog_key(request: Request, response: Response | None) -> tuple[object, ...] | None:
        to_tag = response.to.tag if response is not None else request.to.tag
        if to_tag is None:
            return None
        return (request.call_id, request.cseq.number, request.from_.tag, to_tag)

    def _send_trying(self, tx: ServerTransaction) -> None:
        # §8.2.6.1: make_response copies Timestamp into a 100.
        self._send_response_data(tx, make_response(tx.request, 100))

    def _send_response_data(self, tx: ServerTransaction, response: Response) -> None:
        tx.last_response = response
        tx.last_data = response.encode()
        self._emit_response(tx, tx.last_data)

    def _emit_response(self, tx: ServerTransaction, data: bytes) -> None:
        self._transmits.append(SipTransmit(data, tx.dest, tx.transport, tx.id, tx.fallback))

    def _server_timer(self, tx: ServerTransaction, name: str, now: float) -> None:
        t = self._timers
        if name == "100":
            if tx.state is TxState.PROCEEDING and tx.last_response is None:
                self._send_trying(tx)
            return
        if name in ("G", "2xx"):
            # §17.2.1 (G) and §13.3.1.4 (2xx): doubling up to T2.
            tx.interval = next_interval(tx.interval, t, capped=True)
            tx.timers[name] = now + tx.interval
            if tx.last_data is not None:
                self.stats.retransmissions += 1
                self._emit_response(tx, tx.last_data)
            return
        if name in ("H", "L"):
            response = tx.last_response
            unacked = name == "H" or "2xx" in tx.timers or (
                tx.dialog_key is not None and self._accepted.get(tx.dialog_key) is tx)
            self._set_state(tx, TxState.TERMINATED, f"timer {name} fired")
            if unacked and response is not None and (name == "H" or self.settings.retransmit_2xx):
                self._events.append(AckNotReceived(tx.id, tx.request, response))
            return
        # I, J: the wait for retransmissions is over.
        self._set_state(tx, TxState.TERMINATED, f"timer {name} fired")

    # --- shared ----------------------------------------------------------------------------------

    def _arm_or_end(self, tx: ClientTransaction | ServerTransaction, name: str, duration: float,
                    now: float) -> None:
        """Timers D, I, J, K are zero on reliable transports: terminate at once."""
        if duration <= 0:
            self._set_state(tx, TxState.TERMINATED, f"timer {name} is 0 on {tx.transport}")
        else:
            tx.timers[name] = now + duration

    def _set_state(self, tx: ClientTransaction | ServerTransaction, new: TxState,
                   cause: str) -> None:
        """The one place a transaction changes state; terminated ones are forgotten."""
        old = tx.state
        if old is new:
            return
        log.debug("%s: %s -> %s (%s)", tx.id, old.value, new.value, cause)
        tx.state = new
        if new is TxState.TERMINATED:
            tx.timers.clear()
            self._forget(tx)

    def _forget(self, tx: ClientTransaction | ServerTransaction) -> None:
        if self._by_id.get(tx.id) is tx:
            del self._by_id[tx.id]
        if isinstance(tx, ClientTransaction):
            if self._clients.get(tx.key) is tx:
                del self._clients[tx.key]
            if tx.cancels is not None and tx.cancels.pending_cancel is tx:
                tx.cancels.pending_cancel = None
            return
        if self._servers.get(tx.key) is tx:
            del self._servers[tx.key]
            left = self._per_source.get(tx.source, 1) - 1
            if left > 0:
                self._per_source[tx.source] = left
            else:
                self._per_source.pop(tx.source, None)
        if tx.merged_key is not None and self._merged.get(tx.merged_key) is tx:
            del self._merged[tx.merged_key]
        if tx.dialog_key is not None and self._accepted.get(tx.dialog_key) is tx:
            del self._accepted[tx.dialog_key]

    def close(self) -> list[str]:
        """Terminate every transaction without events (shutdown); returns their ids."""
        ids = list(self._by_id)
        for tx in list(self._by_id.values()):
            self._set_state(tx, TxState.TERMINATED, "layer closed")
        return ids

    def __repr__(self) -> str:
        return f"<TransactionLayer {len(self._by_id)} transactions>"
