"""The ICE agent (RFC 8445), sans-IO: gathering, connectivity checks, nomination, selection,
keepalives (§11), consent freshness (RFC 7675) and ICE restart (§9).

The adapter owns the sockets: it registers each one with :meth:`Agent.add_base`, feeds every
datagram to :meth:`Agent.receive`, sends what :meth:`Agent.pop_transmits` returns, calls
:meth:`Agent.handle_timer` at :meth:`Agent.next_timer`, and reads :meth:`Agent.next_event`.

Speed matters here: the first check leaves at :meth:`Agent.start_checks` without waiting, a
triggered check answers the peer's check in the same call when the Ta slot is free, and regular
nomination does not wait for pairs that cannot do better than the best valid pair.

For testing other endpoints, :class:`IceSettings` also restricts the candidate types, can withhold
nomination, and runs the STUN traffic with the peer through an :mod:`ice.faults` filter (drops
and delays; delayed messages leave from :meth:`Agent.handle_timer`).
"""

from __future__ import annotations

import enum
import heapq
import logging
import math
import random
import string
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ice.candidate import (
    Address,
    AppData,
    Candidate,
    CandidateError,
    CandidateType,
    LocalBase,
    Transmit,
    candidate_priority,
    is_ipv6,
    normalize_ip,
)
from ice.checklist import CandidatePair, CheckList, CheckListState, PairState, can_pair
from ice.events import (
    AgentClosed,
    CandidateGathered,
    CheckFailed,
    CheckReceived,
    CheckSent,
    CheckSucceeded,
    ConsentLost,
    ConsentRefreshed,
    GatheringCompleted,
    GatheringStepFailed,
    IceCompleted,
    IceEvent,
    IceFailed,
    IceRestarted,
    KeepaliveSent,
    LocalCandidateLearned,
    PairNominated,
    PairSelected,
    RemoteCandidateLearned,
    RequestRejected,
    RoleChanged,
)
from ice.faults import FaultFilter, FaultSettings, stun_class
from ice.nomination import Nomination, best_nominated, regular_choice, use_candidate_on_every_check
from ice.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    StunError,
    decode,
    is_stun,
    make_error,
    make_response,
    new_transaction_id,
    short_term_key,
    verify_integrity,
)
from ice.transaction import StunTransaction
from ice.turn import (
    AllocationFailed,
    AllocationSucceeded,
    PermissionCreated,
    PermissionFailed,
    TurnClient,
    TurnSettings,
)

__all__ = [
    "Agent", "AgentState", "AppData", "CandidatePair", "IceError", "IceSettings", "LocalBase",
    "Transmit",
]

log = logging.getLogger(__name__)

_UFRAG_CHARS = string.ascii_letters + string.digits
_PWD_CHARS = string.ascii_letters + string.digits + "+/"
#: How long the id of an answered request is remembered, so that its retransmissions get an
#: answer but do not trigger a new check each (longer than a full STUN transaction).
_SEEN_REQUEST_TTL = 40.0
#: Remote candidates (signalled and peer-reflexive, every component) one agent keeps at most.
#: RFC 8445 fixes no number; an SDP with 10,000 candidates, or checks from 10,000 source ports,
#: must not make 10,000 candidates (pairs are capped apart by ``max_pairs``). Beyond it they
#: are dropped and counted in :attr:`Agent.remote_candidates_dropped`.
MAX_REMOTE_CANDIDATES = 100
#: RequestRejected events per second at most; further rejections are only counted
#: (:attr:`Agent.requests_rejected`), so a STUN flood cannot grow the event timeline.
MAX_REJECT_EVENTS = 10


@dataclass(frozen=True)
class IceSettings:
    """Settings of one ICE agent."""

    #: How the controlling agent nominates: "regular" (RFC 8445 §8.1.1) or "aggressive"
    #: (USE-CANDIDATE on every check, RFC 5245 §8.1.1.2).
    nomination: str = "regular"
    #: Pacing interval Ta between ordinary checks (RFC 8445 §14.2: 50 ms by default, "MAY use
    #: another value based on the characteristics of the associated data", proposed to the
    #: peer, never below 5 ms for all agents together). 15 ms: a STUN check is smaller than
    #: the RTP packet an audio call sends every 20 ms, so checks add less load than the call
    #: itself; and the working pair, often the second in priority order behind a host pair
    #: that cannot connect across NATs, starts 15 ms in rather than 20 or 50. RFC 5245 §16.1
    #: put the floor at 20 ms for RTP: callers wanting that set 0.02 (``ice.compat =
    #: "rfc5245"`` does).
    ta: float = 0.015
    #: Send a check that answers the peer's check, and the nominating check, at once instead of
    #: waiting for the next Ta slot. RFC 5245 §7.2.1.4 retransmits an in-progress check at once
    #: when the peer's check arrives, "to facilitate rapid completion of ICE when both agents
    #: are behind NAT"; these checks are bounded by the peer's own pacing. False gives strict
    #: RFC 8445 pacing of every check.
    fast_checks: bool = True
    #: ICE-lite (RFC 8445 §2.5): host candidates only, answers checks, never sends them.
    lite: bool = False
    #: STUN servers for server-reflexive candidates (RFC 8445 §5.1.1.2).
    stun_servers: tuple[Address, ...] = ()
    #: TURN servers for relayed candidates (RFC 8656), one allocation per base and server.
    turn_servers: tuple[TurnSettings, ...] = ()
    #: Send a Binding indication on a selected pair idle this long (RFC 8445 §11, Tr).
    keepalive_interval: float = 15.0
    #: Mean interval of consent checks, randomized 0.8-1.2 (RFC 7675 §5.1); 0 disables them.
    consent_interval: float = 5.0
    #: Consent is lost after this long without a consent response (RFC 7675 §5.1).
    consent_timeout: float = 30.0
    #: Most pairs in the check list (RFC 8445 §6.1.2.5).
    max_pairs: int = 100
    #: Lower bound of the checks' RTO; the RFC's is 500 ms (RFC 8445 §14.3).
    rto: float = 0.5
    #: Transmissions of one check before it times out (Rc, RFC 8489 §6.2.1).
    check_transmissions: int = 7
    #: Controlling, regular nomination: longest wait after the first valid pair of a component
    #: for a better pair before nominating the best valid one.
    nomination_settle: float = 0.05
    #: SOFTWARE attribute in requests and responses, or None.
    software: str | None = None
    #: Gathering is declared complete after this long even if servers did not answer.
    gather_timeout: float = 5.0
    #: Cap of the retransmission interval of the Binding requests that gather srflx
    #: candidates; None: plain doubling (RFC 8489 §6.2.1). gather_timeout cuts the doubling
    #: schedule after 4 sends (0, 0.5, 1.5, 3.5 s), so on a path losing 30 % each way (49 %
    #: per exchange) a side misses its srflx candidate 7 % of the time and, without trickle
    #: ICE, a call through two NATs fails. Capped at 0.5 s the requests fill the window
    #: (10 sends by 4.5 s): 0.1 %. The requests stop once answered or at the deadline.
    gather_max_rto: float | None = 0.5
    #: Candidate types to gather, offer and check from: any of "host", "srflx", "relay". The
    #: host sockets stay the bases of srflx candidates; with neither "host" nor "srflx" no
    #: check leaves a host socket (relay only).
    candidate_types: tuple[str, ...] = ("host", "srflx", "relay")
    #: Fault injection on the STUN traffic with the peer (:mod:`ice.faults`); None: none.
    faults: FaultSettings | None = None
    #: As the controlling agent, never nominate: checks run and succeed, but no USE-CANDIDATE
    #: is sent, so the peer never completes (a test knob).
    withhold_nomination: bool = False

    def __post_init__(self) -> None:
        if self.nomination not in ("regular", "aggressive"):
            raise ValueError(f"nomination must be 'regular' or 'aggressive', not "
                             f"{self.nomination!r}")
        for name in ("ta", "rto", "keepalive_interval", "consent_timeout", "gather_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.consent_interval < 0 or self.nomination_settle < 0:
            raise ValueError("consent_interval and nomination_settle must not be negative")
        if self.max_pairs < 1 or self.check_transmissions < 1:
            raise ValueError("max_pairs and check_transmissions must be at least 1")
        if self.gather_max_rto is not None and not self.gather_max_rto > 0:
            raise ValueError("gather_max_rto must be positive (or None)")
        kinds = ("host", "srflx", "relay")
        if not self.candidate_types or any(t not in kinds for t in self.candidate_types):
            raise ValueError(f"candidate_types must be some of {kinds}, not "
                             f"{self.candidate_types!r}")


class IceError(RuntimeError):
    """The caller asked for something the agent cannot do now (send without a usable pair)."""


class AgentState(enum.Enum):
    """The agent as a whole."""

    NEW = "new"              # created; gathering and credentials may be under way
    CHECKING = "checking"    # start_checks() called, not every component selected yet
    COMPLETED = "completed"  # every component has a selected pair
    FAILED = "failed"        # a component cannot get a pair
    CLOSED = "closed"        # close() called


@dataclass(eq=False)
class _Check:
    """One outgoing connectivity or consent check."""

    pair: CandidatePair
    transaction: StunTransaction
    key: bytes                  # the remote password: responses must carry it
    priority: int               # the PRIORITY sent (for a local prflx candidate)
    use_candidate: bool
    controlling: bool           # the role it was sent in (487 handling)
    triggered: bool
    last_sent: float
    consent: bool = False
    cancelled: bool = False
    keep_until: float = math.inf


@dataclass(eq=False)
class _GatherStep:
    """One Binding request to a STUN server from one base (RFC 8445 §5.1.1.2)."""

    base: LocalBase
    server: Address
    transaction: StunTransaction


@dataclass(eq=False)
class _Relay:
    """One TURN allocation from one base."""

    base: LocalBase
    settings: TurnSettings
    client: TurnClient
    server: Address
    candidate: Candidate | None = None
    done: bool = False
    permissions: set[str] = field(default_factory=set)
    requested: set[str] = field(default_factory=set)
    channels: set[Address] = field(default_factory=set)


@dataclass(eq=False)
class _Consent:
    """Consent freshness (RFC 7675) and keepalive (RFC 8445 §11) state of a selected pair."""

    pair: CandidatePair
    username: str
    key: bytes
    next_check: float
    expires: float
    last_sent: float
    lost: bool = False


def _path_of(pair: CandidatePair) -> str:
    """The pair's foundation, except that a peer-reflexive remote candidate counts by its IP.

    Each peer-reflexive candidate gets a foundation of its own (RFC 8445 §7.3.1.3), so the
    RTP and RTCP checks that came in through one NAT would never share a foundation; what
    they share is the NAT's address."""
    if pair.remote.type is CandidateType.PRFLX:
        return f"{pair.base.foundation}:prflx {pair.remote.address[0]}"
    return pair.foundation


class Agent:
    """One ICE agent for one data stream with ``components`` components (RFC 8445)."""

    def __init__(self, settings: IceSettings, *, controlling: bool, rng: random.Random,
                 components: int = 1, tie_breaker: int | None = None) -> None:
        if not 1 <= components <= 256:
            raise ValueError("components must be in 1..256")
        self.settings = settings
        self._rng = rng
        self.components = components
        self._nomination = Nomination(settings.nomination)
        self._configured_controlling = controlling
        # RFC 8445 §6.1.1: a lite agent is controlled unless both are lite.
        self._controlling = controlling and not settings.lite
        self.tie_breaker = rng.getrandbits(64) if tie_breaker is None else tie_breaker
        self.local_ufrag = self._random_text(_UFRAG_CHARS, 8)
        self.local_pwd = self._random_text(_PWD_CHARS, 24)
        self.state = AgentState.NEW
        self._events: list[IceEvent] = []
        self._event_pos = 0
        #: Remote candidates not kept: :data:`MAX_REMOTE_CANDIDATES` were known.
        self.remote_candidates_dropped = 0
        #: STUN requests answered with an error (bad, unauthenticated, role conflict aside).
        self.requests_rejected = 0
        self._reject_window = -1
        self._reject_events = 0
        self._transmits: list[Transmit] = []
        # local side
        self._bases: dict[LocalBase, int] = {}          # base -> local preference
        self._host: dict[LocalBase, Candidate] = {}
        self._socket_of: dict[Candidate, LocalBase] = {}
        self._local: list[Candidate] = []
        self._foundations: dict[tuple[str, str, str], str] = {}
        self._gathering_started = False
        self._gathering_done = False
        self._gather_deadline: float | None = None
        self._gather_steps: dict[bytes, _GatherStep] = {}
        self._relays: list[_Relay] = []
        self._relay_of: dict[Candidate, _Relay] = {}
        # credentials of a previous session, answered until it is replaced (§9)
        self._old_credentials: dict[str, str] = {}
        self._seen_requests: dict[bytes, float] = {}
        # data path that survives a restart
        self._selected: dict[int, CandidatePair] = {}
        self._consent: dict[int, _Consent] = {}
        self._closed = False
        #: Fault injection (None when off); its counters go into the call report.
        self.faults = (FaultFilter(settings.faults, rng)
                       if settings.faults is not None and settings.faults.active else None)
        # STUN held back by faults.delay: (due, sequence, local, dest, data)
        self._delayed: list[tuple[float, int, Candidate, Address, bytes]] = []
        self._delayed_seq = 0
        self._new_session()

    # --- session state (reset by restart) ----------------------------------------------------
    def _new_session(self) -> None:
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.remote_lite = False
        self.ta = self.settings.ta
        """The pacing interval in use: ours, or the peer's when it proposed a longer one."""
        self._remote: list[Candidate] = []
        self._end_of_remote = False
        self._started = False
        self.checklist = CheckList(self._events, max_pairs=self.settings.max_pairs)
        self._triggered: deque[tuple[CandidatePair, bool]] = deque()
        self._checks: dict[bytes, _Check] = {}
        self._valid: list[CandidatePair] = []
        self._first_valid_at: dict[int, float] = {}
        self._nominating: dict[int, CandidatePair] = {}
        self._nomination_failed: set[CandidatePair] = set()
        self._session_selected: set[int] = set()
        self._settle_deadline: float | None = None
        self._last_check_at: float | None = None
        self._failed = False
        self._local = [c for c in self._local if c.type is not CandidateType.PRFLX]

    def _random_text(self, alphabet: str, length: int) -> str:
        return "".join(self._rng.choice(alphabet) for _ in range(length))

    # --- public properties -------------------------------------------------------------------
    @property
    def controlling(self) -> bool:
        """The current role (it changes when a role conflict is repaired)."""
        return self._controlling

    @property
    def gathering_complete(self) -> bool:
        return self._gathering_done

    @property
    def local_candidates(self) -> list[Candidate]:
        """Candidates to signal: host, server-reflexive and relayed (not peer-reflexive), those
        of the types in :attr:`IceSettings.candidate_types`."""
        kinds = self.settings.candidate_types
        return [c for c in self._local
                if c.type is not CandidateType.PRFLX and c.type.value in kinds]

    def _checks_from(self, local: Candidate) -> bool:
        """Whether checks may leave from ``local``: a relayed candidate always, a host socket
        unless only relayed candidates are allowed."""
        kinds = self.settings.candidate_types
        return local.type is not CandidateType.HOST or "host" in kinds or "srflx" in kinds

    @property
    def remote_candidates(self) -> list[Candidate]:
        return list(self._remote)

    @property
    def valid_pairs(self) -> list[CandidatePair]:
        """The valid list of the current session (RFC 8445 §7.2.5.3.2)."""
        return list(self._valid)

    def selected_pair(self, component: int) -> CandidatePair | None:
        """The pair carrying ``component``'s data, or None."""
        return self._selected.get(component)

    def can_send(self, component: int) -> bool:
        """A pair is selected for ``component`` and consent for it has not been lost."""
        consent = self._consent.get(component)
        return component in self._selected and not (consent is not None and consent.lost)

    # --- events, transmits, state -------------------------------------------------------------
    def next_event(self) -> IceEvent | None:
        if self._event_pos >= len(self._events):
            if self._events:
                self._events.clear()
                self._event_pos = 0
            return None
        event = self._events[self._event_pos]
        self._event_pos += 1
        return event

    def pop_transmits(self) -> list[Transmit]:
        out, self._transmits = self._transmits, []
        return out

    def _set_state(self, new: AgentState, cause: str) -> None:
        if self.state is not new:
            log.info("agent %s: %s -> %s (%s)", self.local_ufrag, self.state.value, new.value,
                     cause)
            self.state = new

    def _set_role(self, controlling: bool, reason: str, now: float) -> None:
        if controlling == self._controlling:
            return
        log.info("agent %s: role -> %s (%s)", self.local_ufrag,
                 "controlling" if controlling else "controlled", reason)
        self._controlling = controlling
        self.checklist.recompute_priorities(controlling)
        for pair in self._valid:
            pair.compute_priority(controlling)
        self._nominating.clear()
        self._events.append(RoleChanged(at=now, controlling=controlling, reason=reason))

    # --- local candidates and gathering -------------------------------------------------------
    def _foundation(self, kind: str, base_ip: str, server_ip: str = "") -> str:
        """RFC 8445 §5.1.1.3: same type, base IP, server and transport -> same foundation."""
        key = (kind, base_ip, server_ip)
        found = self._foundations.get(key)
        if found is None:
            found = str(len(self._foundations) + 1)
            self._foundations[key] = found
        return found

    def _add_local(self, candidate: Candidate, socket: LocalBase, now: float) -> bool:
        """Add a gathered candidate unless redundant (RFC 8445 §5.1.3: same address, same base)."""
        for known in self._local:
            if known.address == candidate.address and self._socket_of[known] == socket:
                log.debug("redundant candidate %s", candidate.to_sdp())
                return False
        self._local.append(candidate)
        self._socket_of[candidate] = socket
        if candidate.type is not CandidateType.PRFLX:
            self._events.append(CandidateGathered(at=now, candidate=candidate))
        return True

    def add_base(self, base: LocalBase, now: float, *, local_preference: int = 65535) -> None:
        """Register a socket; its host candidate is added at once (RFC 8445 §5.1.1.1)."""
        if base in self._bases:
            return
        if not 1 <= base.component <= self.components:
            raise ValueError(f"component {base.component} outside 1..{self.components}")
        address = (normalize_ip(base.address[0]), base.address[1])
        self._bases[base] = local_preference
        host = Candidate(
            foundation=self._foundation("host", address[0]), component=base.component,
            transport="udp",
            priority=candidate_priority(CandidateType.HOST.preference, local_preference,
                                        base.component),
            address=address, type=CandidateType.HOST,
        )
        self._host[base] = host
        self._add_local(host, base, now)
        if self._gathering_started:
            self._gather_from(base, now)
            self._gathering_done = False
        self._pair_new_base(host, now)

    def start_gathering(self, now: float) -> None:
        """Server-reflexive candidates from every base via the STUN servers, relayed ones via
        the TURN servers (a lite agent has host candidates only)."""
        if self._gathering_started:
            return
        self._gathering_started = True
        self._gather_deadline = now + self.settings.gather_timeout
        for base in list(self._bases):
            self._gather_from(base, now)
        self._check_gathering(now)

    def _gather_from(self, base: LocalBase, now: float) -> None:
        if self.settings.lite:
            return
        v6 = is_ipv6(base.address)
        kinds = self.settings.candidate_types
        for server in self.settings.stun_servers if "srflx" in kinds else ():
            if is_ipv6(server) != v6:
                continue
            request = Message(Method.BINDING, MessageClass.REQUEST,
                              new_transaction_id(self._rng), {})
            if self.settings.software:
                request.attributes[Attr.SOFTWARE] = self.settings.software
            data = request.encode(fingerprint=True)
            cap = self.settings.gather_max_rto
            # Enough sends to span the gathering window at the capped interval.
            sends = 7 if cap is None else max(7, int(self.settings.gather_timeout / cap))
            tx = StunTransaction(request, data, server, now, rto=self.settings.rto,
                                 max_rto=cap, max_transmissions=sends)
            self._gather_steps[tx.transaction_id] = _GatherStep(base, server, tx)
            self._transmits.append(Transmit(data, server, base))
        for turn in self.settings.turn_servers if "relay" in kinds else ():
            if is_ipv6(turn.server) != v6:
                continue
            client = TurnClient(turn, self._rng, rto=self.settings.rto)
            relay = _Relay(base=base, settings=turn, client=client, server=turn.server)
            self._relays.append(relay)
            client.allocate(now)
            self._drain_relay(relay, now)

    def _check_gathering(self, now: float) -> None:
        if self._gathering_done or not self._gathering_started:
            return
        pending = any(not s.transaction.done for s in self._gather_steps.values()) or any(
            not r.done for r in self._relays)
        timed_out = self._gather_deadline is not None and now >= self._gather_deadline
        if pending and not timed_out:
            return
        if timed_out:
            for step in list(self._gather_steps.values()):
                if not step.transaction.done:
                    step.transaction.cancel()
                    self._events.append(GatheringStepFailed(
                        at=now, kind="stun", server=step.server, base=step.base.address,
                        reason="gathering timeout"))
            self._gather_steps.clear()
            for relay in self._relays:
                if not relay.done:
                    relay.done = True
                    self._events.append(GatheringStepFailed(
                        at=now, kind="turn", server=relay.server, base=relay.base.address,
                        reason="gathering timeout"))
        self._gathering_done = True
        self._events.append(GatheringCompleted(at=now, candidates=len(self.local_candidates)))

    def _on_gather_response(self, step: _GatherStep, msg: Message, source: Address,
                            now: float) -> None:
        if not step.transaction.matches(msg, source):
            return
        step.transaction.complete()
        del self._gather_steps[msg.transaction_id]
        mapped = msg.get(Attr.XOR_MAPPED_ADDRESS) or msg.get(Attr.MAPPED_ADDRESS)
        if msg.cls is MessageClass.SUCCESS and mapped is not None:
            self._add_srflx(step.base, step.server, mapped, now)
        else:
            error = msg.get(Attr.ERROR_CODE)
            self._events.append(GatheringStepFailed(
                at=now, kind="stun", server=step.server, base=step.base.address,
                reason=f"{error[0]} {error[1]}" if error else "no mapped address"))
        self._check_gathering(now)

    def _add_srflx(self, base: LocalBase, server: Address, mapped: Address, now: float) -> None:
        try:
            mapped = (normalize_ip(mapped[0]), mapped[1])
        except CandidateError:
            return
        host = self._host[base]
        srflx = Candidate(
            foundation=self._foundation("srflx", host.address[0], server[0]),
            component=base.component, transport="udp",
            priority=candidate_priority(CandidateType.SRFLX.preference, self._bases[base],
                                        base.component),
            address=mapped, type=CandidateType.SRFLX, related=host.address,
        )
        self._add_local(srflx, base, now)

    # --- TURN ------------------------------------------------------------------------------------
    def _drain_relay(self, relay: _Relay, now: float) -> None:
        for data, dest in relay.client.pop_transmits():
            self._transmits.append(Transmit(data, dest, relay.base))
        while (event := relay.client.next_event()) is not None:
            if isinstance(event, AllocationSucceeded):
                self._on_allocation(relay, event, now)
            elif isinstance(event, AllocationFailed):
                if not relay.done:
                    relay.done = True
                    self._events.append(GatheringStepFailed(
                        at=now, kind="turn", server=relay.server, base=relay.base.address,
                        reason=f"{event.code} {event.reason}"))
                    self._check_gathering(now)
            elif isinstance(event, PermissionCreated):
                relay.permissions.add(event.peer_ip)
            elif isinstance(event, PermissionFailed):
                log.info("TURN permission for %s failed: %s %s", event.peer_ip, event.code,
                         event.reason)
            else:
                log.debug("TURN %s: %s", relay.server, event)

    def _on_allocation(self, relay: _Relay, event: AllocationSucceeded, now: float) -> None:
        if relay.candidate is not None or relay.done:
            return
        relay.done = True
        base = relay.base
        host = self._host[base]
        try:
            relayed = (normalize_ip(event.relayed[0]), event.relayed[1])
            mapped = (normalize_ip(event.mapped[0]), event.mapped[1])
        except CandidateError:
            return
        candidate = Candidate(
            foundation=self._foundation("relay", host.address[0], relay.server[0]),
            component=base.component, transport="udp",
            priority=candidate_priority(CandidateType.RELAY.preference, self._bases[base],
                                        base.component),
            address=relayed, type=CandidateType.RELAY, related=mapped,
        )
        relay.candidate = candidate
        self._relay_of[candidate] = relay
        self._add_local(candidate, base, now)
        self._add_srflx(base, relay.server, mapped, now)
        self._pair_new_base(candidate, now)
        self._check_gathering(now)

    def _ensure_permission(self, relay: _Relay, ip: str, now: float) -> None:
        if ip not in relay.requested:
            relay.requested.add(ip)
            relay.client.create_permission(ip, now)
            self._drain_relay(relay, now)

    # --- remote side ---------------------------------------------------------------------------
    def set_remote_credentials(self, ufrag: str, pwd: str, *, lite: bool = False) -> None:
        """The peer's ice-ufrag/ice-pwd (RFC 8839) and whether it is lite."""
        if not ufrag or not pwd:
            raise ValueError("remote ufrag and pwd must not be empty")
        self.remote_ufrag, self.remote_pwd, self.remote_lite = ufrag, pwd, lite

    MAX_REMOTE_PACING = 1.0
    """A peer's proposed Ta is honoured up to this (seconds): beyond it checks would outlast
    any call set-up timer."""

    def set_remote_pacing(self, ta: float | None) -> None:
        """The Ta the peer proposed (``a=ice-pacing``), None when it proposed none.

        RFC 8445 §14.2: both agents use the higher of the proposed values. A peer that proposes
        nothing is taken at our value, not at the RFC's 50 ms default: RFC 5245 (which most SIP
        endpoints follow) has no way to propose one.
        """
        if ta is None or not ta > 0:
            self.ta = self.settings.ta
            return
        self.ta = max(self.settings.ta, min(ta, self.MAX_REMOTE_PACING))
        if self.ta != self.settings.ta:
            log.info("pacing checks every %.0f ms, as the peer proposed", self.ta * 1e3)

    def add_remote_candidate(self, candidate: Candidate, now: float) -> None:
        """Add a remote candidate, before or after checks began (trickle-ready)."""
        if candidate.transport != "udp" or not 1 <= candidate.component <= self.components:
            log.info("ignoring unusable remote candidate %s", candidate.to_sdp())
            return
        try:
            address = (normalize_ip(candidate.address[0]), candidate.address[1])
        except CandidateError:
            log.info("ignoring remote candidate with a name: %s", candidate.to_sdp())
            return
        if address != candidate.address:
            candidate = Candidate(candidate.foundation, candidate.component, candidate.transport,
                                  candidate.priority, address, candidate.type, candidate.related,
                                  candidate.extensions)
        for i, known in enumerate(self._remote):
            if known.address == address and known.component == candidate.component:
                if known.type is CandidateType.PRFLX:
                    # The signalled candidate replaces the peer-reflexive one (RFC 8838 §11).
                    self._remote[i] = candidate
                    for pair in self.checklist.pairs + self._valid:
                        if pair.remote is known:
                            pair.remote = candidate
                return
        if len(self._remote) >= MAX_REMOTE_CANDIDATES:
            self.remote_candidates_dropped += 1
            log.info("ignoring remote candidate %s: %d known", candidate.to_sdp(),
                     len(self._remote))
            return
        self._remote.append(candidate)
        bases = [c for c in self._local
                 if c.type in (CandidateType.HOST, CandidateType.RELAY) and self._checks_from(c)]
        added = self.checklist.add_pairs(bases, [candidate], self._controlling, now,
                                         started=self._started)
        self._request_permissions(added, now)
        self._pump(now)

    def _pair_new_base(self, base: Candidate, now: float) -> None:
        if not self._remote or not self._checks_from(base):
            return
        added = self.checklist.add_pairs([base], self._remote, self._controlling, now,
                                         started=self._started)
        self._request_permissions(added, now)
        self._pump(now)

    def _request_permissions(self, pairs: list[CandidatePair], now: float) -> None:
        for pair in pairs:
            relay = self._relay_of.get(pair.base)
            if relay is not None:
                self._ensure_permission(relay, pair.remote.address[0], now)

    def end_of_remote_candidates(self, now: float) -> None:
        """The peer has signalled all its candidates (RFC 8838 end-of-candidates)."""
        self._end_of_remote = True
        self._check_failure(now)

    def start_checks(self, now: float) -> None:
        """Begin connectivity checks; the first one leaves now (no initial wait)."""
        if self._closed:
            raise IceError("agent closed")
        if self.remote_ufrag is None or self.remote_pwd is None:
            raise IceError("set_remote_credentials() first")
        if self._started:
            return
        self._started = True
        self._set_state(AgentState.CHECKING, "start_checks")
        if self.faults is not None:
            self.faults.start(now)
        # RFC 8445 §6.1.1: facing a lite peer the full agent controls; two lite agents keep the
        # roles they were given.
        if self.settings.lite and self.remote_lite:
            self._set_role(self._configured_controlling, "both agents lite", now)
        elif self.remote_lite and not self.settings.lite:
            self._set_role(True, "peer is lite", now)
        if self.settings.lite:
            if self.remote_lite:
                self._both_lite(now)
            return
        self.checklist.initial_states(now)
        self._pump(now)

    def _both_lite(self, now: float) -> None:
        """Both agents lite (RFC 8445 §6.1.1): no checks; each component uses its best pair."""
        for component in range(1, self.components + 1):
            pairs = self.checklist.component_pairs(component)
            if not pairs:
                continue
            pair = pairs[0]
            self.checklist.set_state(pair, PairState.SUCCEEDED, "both lite", now)
            pair.valid = pair.nominated = True
            pair.valid_pair = pair
            self._valid.append(pair)
            self._update_selection(component, now)

    # --- receiving ------------------------------------------------------------------------------
    def receive(self, data: bytes, source: Address, via: LocalBase,
                now: float) -> AppData | None:
        """Feed one datagram received on the socket ``via``.

        STUN (checks, responses, indications, STUN/TURN server answers) is consumed and gives
        None; anything else is returned as AppData, unwrapped from TURN when relayed. Never
        raises on the peer's input."""
        for relay in self._relays:
            if relay.base == via and relay.server == source and relay.client.handles(
                    data, source):
                try:
                    got = relay.client.receive(data, source, now)
                except (StunError, ValueError) as exc:
                    log.debug("bad TURN message from %s: %s", source, exc)
                    got = None
                self._drain_relay(relay, now)
                if got is None or relay.candidate is None:
                    return None
                peer, payload = got
                return self._receive_on(payload, peer, relay.candidate, now)
        host = self._host.get(via)
        if host is None:
            return None if is_stun(data) else AppData(via.component, data, source)
        return self._receive_on(data, source, host, now)

    def _receive_on(self, data: bytes, source: Address, local: Candidate,
                    now: float) -> AppData | None:
        """A datagram that arrived at the local base candidate ``local`` (host or relayed)."""
        if not is_stun(data):
            return AppData(local.component, data, source)
        try:
            msg = decode(data)
            source = (normalize_ip(source[0]), source[1])
        except (StunError, CandidateError) as exc:
            log.debug("dropping bad STUN from %s: %s", source, exc)
            return None
        if self._closed:
            return None
        if (self.faults is not None and msg.transaction_id not in self._gather_steps
                and self.faults.drop_incoming(msg.cls, now)):
            return None  # fault injection (never on a STUN server's answer)
        if msg.cls is not MessageClass.INDICATION and Attr.FINGERPRINT not in msg.attributes \
                and msg.transaction_id not in self._gather_steps:
            # RFC 8445 §7, RFC 8489 §7.3: checks carry FINGERPRINT; without it the message is
            # not a check of ours (or a forgery that skipped it): silently discarded.
            log.debug("dropping STUN without FINGERPRINT from %s", source)
            return None
        if msg.cls is MessageClass.REQUEST:
            self._on_request(msg, source, local, now)
        elif msg.cls in (MessageClass.SUCCESS, MessageClass.ERROR):
            step = self._gather_steps.get(msg.transaction_id)
            if step is not None:
                self._on_gather_response(step, msg, source, now)
            else:
                self._on_response(msg, source, local, now)
        # Indications (keepalives) need nothing: their arrival is the point.
        self._pump(now)
        return None

    def _send_from(self, local: Candidate, dest: Address, data: bytes, now: float) -> None:
        """Send STUN to the peer from a base candidate, through the fault filter if any."""
        cls = stun_class(data) if self.faults is not None else None
        if self.faults is not None and cls is not None:
            delay = self.faults.outgoing(cls, now)
            if delay is None:
                return
            if delay > 0:
                self._delayed_seq += 1
                heapq.heappush(self._delayed, (now + delay, self._delayed_seq, local, dest, data))
                return
        self._deliver(local, dest, data, now)

    def _deliver(self, local: Candidate, dest: Address, data: bytes, now: float) -> None:
        """Send from a base candidate: a socket directly, or through its TURN relay."""
        relay = self._relay_of.get(local)
        if relay is not None:
            relay.client.send(dest, data, now)
            self._drain_relay(relay, now)
        else:
            self._transmits.append(Transmit(data, dest, self._socket_of[local]))

    def _reject(self, msg: Message, source: Address, local: Candidate, code: int, reason: str,
                now: float, extra: dict[int, Any] | None = None) -> None:
        """An error answer that changes no state (RFC 8489 §6.3.1, §9.1.3).

        Every rejection is counted; only the first :data:`MAX_REJECT_EVENTS` of each second
        become events, so a flood of bad requests cannot grow the call's timeline."""
        self.requests_rejected += 1
        window = int(now)
        if window != self._reject_window:
            self._reject_window, self._reject_events = window, 0
        if self._reject_events < MAX_REJECT_EVENTS:
            self._reject_events += 1
            self._events.append(RequestRejected(at=now, source=source, code=code, reason=reason))
        response = make_error(msg, code, reason, extra)
        self._send_from(local, source, response.encode(fingerprint=True), now)

    def _on_request(self, msg: Message, source: Address, local: Candidate, now: float) -> None:
        if msg.method != Method.BINDING:
            self._reject(msg, source, local, 400, "Bad Request", now)
            return
        unknown = msg.unknown_comprehension_required()
        if unknown:
            self._reject(msg, source, local, 420, "Unknown Attribute", now,
                         {Attr.UNKNOWN_ATTRIBUTES: tuple(unknown)})
            return
        username = msg.get(Attr.USERNAME)
        has_integrity = msg.get(Attr.MESSAGE_INTEGRITY) is not None or msg.get(
            Attr.MESSAGE_INTEGRITY_SHA256) is not None
        if not isinstance(username, str) or not has_integrity:
            self._reject(msg, source, local, 400, "Bad Request", now)
            return
        ufrag, colon, _ = username.partition(":")
        if ufrag == self.local_ufrag:
            pwd, old = self.local_pwd, False
        elif ufrag in self._old_credentials:
            pwd, old = self._old_credentials[ufrag], True
        else:
            self._reject(msg, source, local, 401, "Unauthorized", now)
            return
        key = short_term_key(pwd)
        if not colon or not verify_integrity(msg, key):
            self._reject(msg, source, local, 401, "Unauthorized", now)
            return
        priority = msg.get(Attr.PRIORITY)
        if not isinstance(priority, int) or not 1 <= priority < 2**31:
            self._reject(msg, source, local, 400, "Bad Request", now)
            return
        if old:
            # A check or consent request of the previous session: answer, change nothing.
            self._answer(msg, source, local, key, now)
            return
        # RFC 8445 §7.3.1.1: role conflicts (a lite agent keeps its role).
        if not self.settings.lite:
            peer_controlling = msg.get(Attr.ICE_CONTROLLING)
            peer_controlled = msg.get(Attr.ICE_CONTROLLED)
            if self._controlling and isinstance(peer_controlling, int):
                if self.tie_breaker >= peer_controlling:
                    self._conflict(msg, source, local, key, now)
                    return
                self._set_role(False, "peer controlling with a larger tie-breaker", now)
            elif not self._controlling and isinstance(peer_controlled, int):
                if self.tie_breaker >= peer_controlled:
                    self._set_role(True, "peer controlled with a smaller tie-breaker", now)
                else:
                    self._conflict(msg, source, local, key, now)
                    return
        self._answer(msg, source, local, key, now)
        use_candidate = msg.get(Attr.USE_CANDIDATE) is True
        retransmission = msg.transaction_id in self._seen_requests
        self._remember_request(msg.transaction_id, now)
        remote = self._remote_for(source, local, priority, now)
        if remote is None:
            return  # answered, but no room to learn another peer-reflexive candidate
        pair = self.checklist.find(local, source)
        if self.settings.lite:
            pair = self._lite_pair(pair, local, remote, now)
        elif not retransmission:
            pair = self._triggered_check(pair, local, remote, now)
        if pair is None:
            return
        self._events.append(CheckReceived(
            at=now, pair=pair.snapshot(), transaction_id=msg.transaction_id.hex(),
            use_candidate=use_candidate, response=200))
        if use_candidate and not self._controlling:
            self._nominated_by_peer(pair, now)

    def _answer(self, msg: Message, source: Address, local: Candidate, key: bytes,
                now: float) -> None:
        attributes: dict[int, Any] = {Attr.XOR_MAPPED_ADDRESS: source}
        if self.settings.software:
            attributes[Attr.SOFTWARE] = self.settings.software
        response = make_response(msg, MessageClass.SUCCESS, attributes)
        self._send_from(local, source, response.encode(integrity_key=key, fingerprint=True), now)
        self._touch(local, source, now)

    def _conflict(self, msg: Message, source: Address, local: Candidate, key: bytes,
                  now: float) -> None:
        """RFC 8445 §7.3.1.1: answer 487 (with integrity) and keep the role."""
        self._events.append(RequestRejected(at=now, source=source, code=487,
                                            reason="Role Conflict"))
        response = make_error(msg, 487, "Role Conflict")
        self._send_from(local, source, response.encode(integrity_key=key, fingerprint=True), now)

    def _remember_request(self, tid: bytes, now: float) -> None:
        if len(self._seen_requests) > 512:
            self._seen_requests = {t: e for t, e in self._seen_requests.items() if e > now}
        self._seen_requests.setdefault(tid, now + _SEEN_REQUEST_TTL)

    def _remote_for(self, source: Address, local: Candidate, priority: int,
                    now: float) -> Candidate | None:
        """The remote candidate at ``source``, or a new peer-reflexive one (RFC 8445 §7.3.1.3);
        None when :data:`MAX_REMOTE_CANDIDATES` are known already (counted, not learned)."""
        for cand in self._remote:
            if cand.address == source and cand.component == local.component:
                return cand
        if len(self._remote) >= MAX_REMOTE_CANDIDATES:
            self.remote_candidates_dropped += 1
            log.debug("peer-reflexive candidate %s not learned: %d known", source,
                      len(self._remote))
            return None
        prflx = Candidate(
            foundation=self._random_text(_UFRAG_CHARS, 10), component=local.component,
            transport="udp", priority=priority, address=source, type=CandidateType.PRFLX,
        )
        self._remote.append(prflx)
        self._events.append(RemoteCandidateLearned(at=now, candidate=prflx))
        return prflx

    def _new_pair(self, local: Candidate, remote: Candidate, now: float) -> CandidatePair:
        pair = CandidatePair(local=local, remote=remote, base=local)
        pair.compute_priority(self._controlling)
        self.checklist.add_pair(pair, now)
        self._request_permissions([pair], now)
        return pair

    def _triggered_check(self, pair: CandidatePair | None, local: Candidate, remote: Candidate,
                         now: float) -> CandidatePair | None:
        """RFC 8445 §7.3.1.4."""
        if not can_pair(local, remote) or not self._checks_from(local):
            return pair
        if pair is None:
            pair = self._new_pair(local, remote, now)
            pair.peer_check_at = now
            self.checklist.set_state(pair, PairState.WAITING, "triggered (new pair)", now)
            self._triggered.append((pair, False))
            self._send_triggered_now(pair, False, now)
            return pair
        if pair.state is PairState.SUCCEEDED:
            return pair
        pair.peer_check_at = now
        if pair.state is PairState.IN_PROGRESS and self.settings.fast_checks:
            # RFC 5245 §7.2.1.4: retransmit the check in progress at once (same transaction):
            # the peer's check just opened its NAT towards us, so this copy can get through.
            for check in self._checks.values():
                if check.pair is pair and not check.cancelled and not check.consent:
                    self._send_from(pair.base, pair.remote.address, check.transaction.data, now)
                    self._events.append(CheckSent(
                        at=now, pair=pair.snapshot(),
                        transaction_id=check.transaction.transaction_id.hex(),
                        use_candidate=check.use_candidate, retransmission=True, triggered=True))
            return pair
        if pair.state is PairState.IN_PROGRESS:
            # Stop retransmitting but still accept its response; a new check goes first.
            for check in self._checks.values():
                if check.pair is pair and not check.cancelled and not check.consent:
                    check.cancelled = True
                    check.keep_until = now + _SEEN_REQUEST_TTL
                    check.transaction.cancel()
        self.checklist.set_state(pair, PairState.WAITING, "triggered", now)
        if all(p is not pair for p, _ in self._triggered):
            self._triggered.append((pair, False))
        self._send_triggered_now(pair, False, now)
        return pair

    def _send_triggered_now(self, pair: CandidatePair, nominate: bool, now: float) -> None:
        """With ``fast_checks``, send a queued triggered check now rather than in the next Ta
        slot (see :attr:`IceSettings.fast_checks`)."""
        if not self.settings.fast_checks or not self._can_check() or not self._eligible(pair):
            return
        allowed = (PairState.WAITING, PairState.FROZEN, PairState.FAILED)
        if pair.state not in allowed and not (nominate and pair.state is PairState.SUCCEEDED):
            return
        for index, (queued, _) in enumerate(self._triggered):
            if queued is pair:
                del self._triggered[index]
                break
        every = use_candidate_on_every_check(self._nomination, self._controlling)
        self._send_check(pair, now, use_candidate=nominate or self._may_nominate(pair, every),
                         triggered=True)

    def _may_nominate(self, pair: CandidatePair, every: bool) -> bool:
        """Aggressive nomination: USE-CANDIDATE on every check, except on pairs below the one
        already selected for the component, so that a late check on a worse path (a relay)
        cannot make the controlled side switch down to it."""
        if not every or self.settings.withhold_nomination:
            return False
        selected = self._selected.get(pair.component)
        return selected is None or pair.priority >= selected.priority

    def _lite_pair(self, pair: CandidatePair | None, local: Candidate, remote: Candidate,
                   now: float) -> CandidatePair | None:
        """A lite agent validates a pair by the peer's check itself (RFC 8445 §7.3.1.5)."""
        if not can_pair(local, remote):
            return pair
        if pair is None:
            pair = self._new_pair(local, remote, now)
        if not pair.valid:
            self.checklist.set_state(pair, PairState.SUCCEEDED, "lite: check received", now)
            pair.valid = True
            pair.valid_pair = pair
            self._valid.append(pair)
        return pair

    def _nominated_by_peer(self, pair: CandidatePair, now: float) -> None:
        """RFC 8445 §7.3.1.5: USE-CANDIDATE received by the controlled agent."""
        if pair.state is PairState.SUCCEEDED and pair.valid_pair is not None:
            self._nominate(pair.valid_pair, now)
        else:
            pair.nominate_on_success = True

    def _nominate(self, valid: CandidatePair, now: float) -> None:
        if not valid.nominated:
            valid.nominated = True
            self._events.append(PairNominated(at=now, pair=valid.snapshot()))
        self._update_selection(valid.component, now)

    # --- responses ------------------------------------------------------------------------------
    def _on_response(self, msg: Message, source: Address, local: Candidate, now: float) -> None:
        check = self._checks.get(msg.transaction_id)
        if check is None:
            return
        has_integrity = msg.get(Attr.MESSAGE_INTEGRITY) is not None or msg.get(
            Attr.MESSAGE_INTEGRITY_SHA256) is not None
        error = msg.get(Attr.ERROR_CODE) if msg.cls is MessageClass.ERROR else None
        code = error[0] if isinstance(error, tuple) else None
        if has_integrity:
            if not verify_integrity(msg, check.key):
                log.debug("response %s with bad integrity dropped", msg.transaction_id.hex())
                return
        elif msg.cls is MessageClass.SUCCESS or code not in (400, 401, 420):
            return  # RFC 8489 §9.1.4: only some errors may come without integrity
        pair = check.pair
        del self._checks[msg.transaction_id]
        check.transaction.complete()
        if check.consent:
            self._on_consent_response(check, msg, source, local, now)
            return
        # RFC 8445 §7.2.5.2.1: the response must come from where the request went, to where
        # it came from.
        if source != pair.remote.address or local != pair.base:
            self._fail(check, "asymmetric", now)
            return
        if msg.cls is MessageClass.ERROR:
            if code == 487:
                self._on_role_conflict_response(check, now)
            else:
                self._fail(check, str(code), now)
            return
        mapped = msg.get(Attr.XOR_MAPPED_ADDRESS) or msg.get(Attr.MAPPED_ADDRESS)
        if mapped is None:
            self._fail(check, "no mapped address", now)
            return
        try:
            mapped = (normalize_ip(mapped[0]), mapped[1])
        except CandidateError:
            self._fail(check, "bad mapped address", now)
            return
        self._on_success(check, mapped, now)

    def _on_role_conflict_response(self, check: _Check, now: float) -> None:
        """RFC 8445 §7.2.5.1: switch to the role opposite to the one the request claimed (once),
        then retry the pair as a triggered check."""
        if check.controlling == self._controlling:
            self._set_role(not check.controlling, "487 role conflict", now)
        pair = check.pair
        self._events.append(CheckFailed(at=now, pair=pair.snapshot(),
                                        transaction_id=check.transaction.transaction_id.hex(),
                                        reason="487"))
        if pair in self.checklist.pairs:
            self.checklist.set_state(pair, PairState.WAITING, "487 role conflict", now)
            if all(p is not pair for p, _ in self._triggered):
                self._triggered.append((pair, False))

    def _fail(self, check: _Check, reason: str, now: float) -> None:
        pair = check.pair
        self._events.append(CheckFailed(at=now, pair=pair.snapshot(),
                                        transaction_id=check.transaction.transaction_id.hex(),
                                        reason=reason))
        if check.cancelled and pair.state is not PairState.IN_PROGRESS:
            return
        if any(c.pair is pair and not c.cancelled for c in self._checks.values()):
            return  # another check of this pair is still running
        if pair.state is PairState.SUCCEEDED and not check.use_candidate:
            return
        self.checklist.set_state(pair, PairState.FAILED, reason, now)
        component = pair.component
        nominating = self._nominating.get(component)
        if nominating is not None and nominating.valid_pair is not None and check.use_candidate \
                and pair is nominating:
            # Regular nomination failed: try the next valid pair (RFC 8445 §8.1.1).
            self._nomination_failed.add(nominating.valid_pair)
            del self._nominating[component]
        self._check_failure(now)

    def _on_success(self, check: _Check, mapped: Address, now: float) -> None:
        pair = check.pair
        component = pair.component
        # RFC 8445 §7.2.5.3.1: a mapped address we do not know is a local prflx candidate.
        local = None
        for cand in self._local:
            if cand.address == mapped and cand.component == component:
                local = cand
                break
        socket = self._socket_of[pair.base]
        if local is None:
            local = Candidate(
                foundation=self._foundation("prflx", self._host[socket].address[0]),
                component=component, transport="udp", priority=check.priority,
                address=mapped, type=CandidateType.PRFLX, related=pair.base.address,
            )
            self._add_local(local, socket, now)
            self._events.append(LocalCandidateLearned(at=now, candidate=local))
        # RFC 8445 §7.2.5.3.2: the valid pair.
        valid: CandidatePair | None = None
        if local == pair.local:
            valid = pair
        else:
            for known in self.checklist.pairs + self._valid:
                if known.local == local and known.remote.address == pair.remote.address:
                    valid = known
                    break
            if valid is None:
                valid = CandidatePair(local=local, remote=pair.remote, base=pair.base,
                                      state=PairState.SUCCEEDED)
                valid.compute_priority(self._controlling)
        if not valid.valid:
            valid.valid = True
            self._valid.append(valid)
        pair.valid_pair = valid
        valid.rtt = now - check.last_sent
        self.checklist.set_state(pair, PairState.SUCCEEDED, "success response", now)
        # Stop other checks of this pair that would add nothing.
        for other in list(self._checks.values()):
            if other.pair is pair and not other.consent and (
                    other.use_candidate <= check.use_candidate):
                other.transaction.cancel()
                del self._checks[other.transaction.transaction_id]
        self._events.append(CheckSucceeded(
            at=now, pair=pair.snapshot(), transaction_id=check.transaction.transaction_id.hex(),
            rtt=round(now - check.last_sent, 6), valid=valid.snapshot(),
            use_candidate=check.use_candidate))
        # RFC 8445 §7.2.5.3.3: unfreeze the pairs of the same foundation.
        self.checklist.unfreeze_foundation(pair.foundation, now)
        self._first_valid_at.setdefault(component, now)
        # RFC 8445 §7.2.5.3.4: nomination.
        if check.use_candidate and check.controlling and self._controlling:
            if self._nominating.get(component) is pair:
                del self._nominating[component]
            self._nominate(valid, now)
        elif not self._controlling and pair.nominate_on_success:
            pair.nominate_on_success = False
            self._nominate(valid, now)
        self._touch(pair.base, pair.remote.address, now)

    # --- selection, completion and failure -----------------------------------------------------
    def _update_selection(self, component: int, now: float) -> None:
        best = best_nominated(p for p in self._valid if p.component == component)
        if best is None:
            return
        current = self._selected.get(component)
        if current is best and component in self._session_selected:
            return
        if current is not None and component in self._session_selected and \
                best.priority <= current.priority:
            return
        self._selected[component] = best
        self._session_selected.add(component)
        interval = self.settings.consent_interval
        self._consent[component] = _Consent(
            pair=best, username=f"{self.remote_ufrag or ''}:{self.local_ufrag}",
            key=short_term_key(self.remote_pwd or ""),
            next_check=now + interval * self._rng.uniform(0.8, 1.2) if interval else math.inf,
            expires=now + self.settings.consent_timeout, last_sent=now,
        )
        self._events.append(PairSelected(at=now, component=component, pair=best.snapshot()))
        log.info("agent %s: component %d selected %r", self.local_ufrag, component, best)
        # RFC 8445 §8.1.2: no more ordinary checks for this component; lower-priority checks in
        # progress stop retransmitting.
        stopped = self.checklist.remove_pending(component, best.priority, now)
        for check in list(self._checks.values()):
            if check.pair in stopped and not check.consent:
                check.transaction.cancel()
                check.cancelled = True
                check.keep_until = now + _SEEN_REQUEST_TTL
        relay = self._relay_of.get(best.base)
        if relay is not None and best.remote.address not in relay.channels:
            relay.channels.add(best.remote.address)
            relay.client.bind_channel(best.remote.address, now)
            self._drain_relay(relay, now)
        if len(self._session_selected) == self.components:
            self.checklist.set_list_state(CheckListState.COMPLETED, "every component selected")
            if self.state is not AgentState.COMPLETED:
                self._set_state(AgentState.COMPLETED, "every component selected")
                self._events.append(IceCompleted(at=now))

    def _check_failure(self, now: float) -> None:
        """RFC 8445 §8.1.2 / RFC 8838: with all remote candidates known, a component whose pairs
        all failed and that has no usable valid pair has failed, and so has ICE."""
        if (self._failed or not self._started or not self._end_of_remote or self.settings.lite
                or self._closed):
            return
        for component in range(1, self.components + 1):
            if component in self._session_selected:
                continue
            if self.checklist.pending(component) or any(
                    p.component == component for p, _ in self._triggered):
                continue
            if any(c.pair.component == component and not c.consent and not c.cancelled
                   for c in self._checks.values()):
                continue
            usable = [p for p in self._valid
                      if p.component == component and p not in self._nomination_failed]
            if usable:
                continue
            self._failed = True
            self.checklist.set_list_state(CheckListState.FAILED, f"component {component}")
            if component not in self._selected:
                self._set_state(AgentState.FAILED, f"component {component} has no pair")
            reason = f"component {component}: all pairs failed" if self.checklist.component_pairs(
                component) else f"component {component}: no candidate pairs"
            self._events.append(IceFailed(at=now, reason=reason))
            return

    # --- checks ---------------------------------------------------------------------------------
    def _can_check(self) -> bool:
        return (self._started and not self.settings.lite and not self._closed
                and not self._failed and self.remote_pwd is not None)

    def _eligible(self, pair: CandidatePair) -> bool:
        relay = self._relay_of.get(pair.base)
        return relay is None or pair.remote.address[0] in relay.permissions

    def _pump(self, now: float) -> None:
        """Nominate if due, then send one check if the Ta slot is free."""
        if not self._can_check():
            return
        if (self._controlling and self._nomination is Nomination.REGULAR
                and not self.settings.withhold_nomination):
            self._update_nomination(now)
        if self._last_check_at is None or now >= self._last_check_at + self.ta - 1e-9:
            item = self._next_check(now)
            if item is not None:
                pair, use_candidate, triggered = item
                self._send_check(pair, now, use_candidate=use_candidate, triggered=triggered)
        self._check_failure(now)

    def _next_check(self, now: float) -> tuple[CandidatePair, bool, bool] | None:
        every = use_candidate_on_every_check(self._nomination, self._controlling)
        skipped: list[tuple[CandidatePair, bool]] = []
        found: tuple[CandidatePair, bool, bool] | None = None
        while self._triggered:
            pair, nominate = self._triggered.popleft()
            if pair not in self.checklist.pairs:
                continue
            if pair.state is PairState.SUCCEEDED and not nominate:
                continue
            if not self._eligible(pair):
                skipped.append((pair, nominate))
                continue
            found = (pair, nominate or self._may_nominate(pair, every), True)
            break
        self._triggered.extendleft(reversed(skipped))
        if found is not None:
            return found
        ordinary = self.checklist.next_waiting(now)
        if ordinary is not None and not self._eligible(ordinary):
            ordinary = next((p for p in self.checklist.pairs
                             if p.state is PairState.WAITING and self._eligible(p)), None)
        if ordinary is None:
            return None
        return ordinary, self._may_nominate(ordinary, every), False

    def _has_check_work(self) -> bool:
        if any(self._eligible(p) for p, _ in self._triggered):
            return True
        busy = {p.foundation for p in self.checklist.pairs
                if p.state in (PairState.WAITING, PairState.IN_PROGRESS)}
        return any(
            (p.state is PairState.WAITING and self._eligible(p))
            or (p.state is PairState.FROZEN and p.foundation not in busy)
            for p in self.checklist.pairs)

    def _check_rto(self) -> float:
        """RFC 8445 §14.3: RTO = MAX(floor, Ta * (Waiting + In-Progress pairs))."""
        active = sum(1 for p in self.checklist.pairs
                     if p.state in (PairState.WAITING, PairState.IN_PROGRESS))
        return max(self.settings.rto, self.ta * active)

    def _send_check(self, pair: CandidatePair, now: float, *, use_candidate: bool,
                    triggered: bool) -> None:
        """RFC 8445 §7.2.2: a Binding request with PRIORITY, the role and, maybe,
        USE-CANDIDATE, authenticated with the peer's password."""
        assert self.remote_ufrag is not None and self.remote_pwd is not None
        local_pref = (pair.base.priority >> 8) & 0xFFFF
        priority = candidate_priority(CandidateType.PRFLX.preference, local_pref, pair.component)
        attributes: dict[int, Any] = {
            Attr.USERNAME: f"{self.remote_ufrag}:{self.local_ufrag}",
            Attr.PRIORITY: priority,
        }
        use_candidate = use_candidate and not self.settings.withhold_nomination
        if self._controlling:
            attributes[Attr.ICE_CONTROLLING] = self.tie_breaker
            if use_candidate:
                attributes[Attr.USE_CANDIDATE] = True
        else:
            attributes[Attr.ICE_CONTROLLED] = self.tie_breaker
            use_candidate = False
        if self.settings.software:
            attributes[Attr.SOFTWARE] = self.settings.software
        request = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(self._rng),
                          attributes)
        key = short_term_key(self.remote_pwd)
        data = request.encode(integrity_key=key, fingerprint=True)
        tx = StunTransaction(request, data, pair.remote.address, now, rto=self._check_rto(),
                             max_transmissions=self.settings.check_transmissions)
        check = _Check(pair=pair, transaction=tx, key=key, priority=priority,
                       use_candidate=use_candidate, controlling=self._controlling,
                       triggered=triggered, last_sent=now)
        self._checks[tx.transaction_id] = check
        self.checklist.set_state(pair, PairState.IN_PROGRESS, "check sent", now)
        if pair.first_check_at is None:
            pair.first_check_at = now
        self._send_from(pair.base, pair.remote.address, data, now)
        self._touch(pair.base, pair.remote.address, now)
        self._last_check_at = now
        self._events.append(CheckSent(
            at=now, pair=pair.snapshot(), transaction_id=tx.transaction_id.hex(),
            use_candidate=use_candidate, retransmission=False, triggered=triggered))

    def _update_nomination(self, now: float) -> None:
        """Controlling agent, regular nomination (RFC 8445 §8.1.1)."""
        self._settle_deadline = None
        for component in range(1, self.components + 1):
            if component in self._session_selected or component in self._nominating:
                continue
            valid = [p for p in self._valid if p.component == component
                     and p not in self._nomination_failed]
            choice, deadline = regular_choice(
                valid, self.checklist.component_pairs(component),
                self._first_valid_at.get(component), now, self.settings.nomination_settle,
                self._proven(component, valid))
            if choice is not None:
                origin = self._origin_of(choice)
                if origin is None:
                    self._nomination_failed.add(choice)
                    continue
                log.info("agent %s: nominating %r", self.local_ufrag, choice)
                self._nominating[component] = origin
                self._triggered.appendleft((origin, True))
                self._send_triggered_now(origin, True, now)
            elif deadline is not None:
                self._settle_deadline = deadline if self._settle_deadline is None else min(
                    deadline, self._settle_deadline)

    def _proven(self, component: int, valid: list[CandidatePair]) -> list[CandidatePair]:
        """The valid pairs of ``component`` on the path of a pair already nominated (or being
        nominated) for another component in this session: same foundation, see
        :func:`_path_of`."""
        if not valid or self.components == 1:
            return []
        paths = {_path_of(p) for c, p in self._nominating.items() if c != component}
        for other in self._session_selected:
            origin = self._origin_of(self._selected[other]) if other != component else None
            if origin is not None:
                paths.add(_path_of(origin))
        if not paths:
            return []
        proven = []
        for pair in valid:
            origin = self._origin_of(pair)
            if origin is not None and _path_of(origin) in paths:
                proven.append(pair)
        return proven

    def _origin_of(self, valid: CandidatePair) -> CandidatePair | None:
        """The check-list pair whose check produced ``valid`` (repeated with USE-CANDIDATE)."""
        for pair in self.checklist.pairs:
            if pair.valid_pair is valid:
                return pair
        return None

    def _touch(self, base: Candidate, remote: Address, now: float) -> None:
        """Something was sent on a path: a selected pair on it is not idle (RFC 8445 §11)."""
        for consent in self._consent.values():
            if consent.pair.base == base and consent.pair.remote.address == remote:
                consent.last_sent = now

    # --- consent freshness and keepalives ---------------------------------------------------
    def _send_consent(self, component: int, consent: _Consent, now: float) -> None:
        pair = consent.pair
        local_pref = (pair.base.priority >> 8) & 0xFFFF
        priority = candidate_priority(CandidateType.PRFLX.preference, local_pref, component)
        attributes: dict[int, Any] = {Attr.USERNAME: consent.username, Attr.PRIORITY: priority}
        if self._controlling:
            attributes[Attr.ICE_CONTROLLING] = self.tie_breaker
        else:
            attributes[Attr.ICE_CONTROLLED] = self.tie_breaker
        request = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(self._rng),
                          attributes)
        data = request.encode(integrity_key=consent.key, fingerprint=True)
        tx = StunTransaction(request, data, pair.remote.address, now, rto=self.settings.rto,
                             max_transmissions=self.settings.check_transmissions)
        self._checks[tx.transaction_id] = _Check(
            pair=pair, transaction=tx, key=consent.key, priority=priority, use_candidate=False,
            controlling=self._controlling, triggered=False, last_sent=now, consent=True)
        self._send_from(pair.base, pair.remote.address, data, now)
        consent.last_sent = now

    def _on_consent_response(self, check: _Check, msg: Message, source: Address,
                             local: Candidate, now: float) -> None:
        for component, consent in self._consent.items():
            if consent.pair is not check.pair:
                continue
            symmetric = source == check.pair.remote.address and local == check.pair.base
            if msg.cls is MessageClass.SUCCESS and symmetric and not consent.lost:
                consent.expires = now + self.settings.consent_timeout
                self._events.append(ConsentRefreshed(
                    at=now, component=component, rtt=round(now - check.last_sent, 6)))

    def _consent_timers(self, now: float) -> None:
        for component, consent in self._consent.items():
            if consent.lost:
                continue
            if now >= consent.expires and not self.settings.lite and self.settings.consent_interval:
                consent.lost = True
                log.warning("agent %s: consent lost on component %d", self.local_ufrag, component)
                self._events.append(ConsentLost(at=now, component=component,
                                                pair=consent.pair.snapshot()))
                for tid, check in list(self._checks.items()):
                    if check.consent and check.pair is consent.pair:
                        check.transaction.cancel()
                        del self._checks[tid]
                continue
            if now >= consent.next_check and not self.settings.lite:
                self._send_consent(component, consent, now)
                consent.next_check = now + self.settings.consent_interval * self._rng.uniform(
                    0.8, 1.2)
            if now >= consent.last_sent + self.settings.keepalive_interval:
                # RFC 8445 §11: a Binding indication; no answer expected.
                indication = Message(Method.BINDING, MessageClass.INDICATION,
                                     new_transaction_id(self._rng), {})
                self._send_from(consent.pair.base, consent.pair.remote.address,
                                indication.encode(fingerprint=True), now)
                consent.last_sent = now
                self._events.append(KeepaliveSent(at=now, component=component))

    # --- data ----------------------------------------------------------------------------------
    def send(self, component: int, data: bytes, now: float) -> None:
        """Send application data over the selected pair (through TURN for a relayed one)."""
        pair = self._selected.get(component)
        if pair is None:
            raise IceError(f"no selected pair for component {component}")
        consent = self._consent.get(component)
        if consent is not None:
            if consent.lost:
                raise IceError(f"consent lost on component {component}")
            consent.last_sent = now
        self._deliver(pair.base, pair.remote.address, data, now)  # media: never faulted

    # --- restart and close ------------------------------------------------------------------------
    def restart(self, now: float) -> None:
        """ICE restart (RFC 8445 §9): new local credentials and check lists; the selected pairs
        keep carrying data until the new session selects its own."""
        if self._closed:
            raise IceError("agent closed")
        for check in self._checks.values():
            if not check.consent:
                check.transaction.cancel()
        consents = {tid: c for tid, c in self._checks.items() if c.consent}
        self._old_credentials = {self.local_ufrag: self.local_pwd}
        self.local_ufrag = self._random_text(_UFRAG_CHARS, 8)
        self.local_pwd = self._random_text(_PWD_CHARS, 24)
        self._new_session()
        self._checks = consents
        if self.state is not AgentState.NEW:
            self._set_state(AgentState.NEW, "restart")
        self._events.append(IceRestarted(at=now, ufrag=self.local_ufrag))

    def drop_component(self, component: int, now: float) -> None:
        """Forget the highest component before the checks start.

        RFC 5761 §5.1.3: an offer of rtcp-mux still carries candidates for the RTCP component,
        in case the answer declines multiplexing; when it accepts, that component is not used:
        its gathering stops, its candidates are withdrawn and its TURN allocations released
        (their deallocation requests are queued now). The adapter closes its sockets after.
        """
        if component != self.components or component < 2:
            raise IceError(f"only the highest component ({self.components}) can be dropped")
        if self._started:
            raise IceError("components can only be dropped before the checks start")
        for tid, step in list(self._gather_steps.items()):
            if step.base.component == component:
                step.transaction.cancel()
                del self._gather_steps[tid]
        for relay in [r for r in self._relays if r.base.component == component]:
            relay.client.close(now)
            self._drain_relay(relay, now)
            self._relays.remove(relay)
        self._local = [c for c in self._local if c.component != component]
        for base in [b for b in self._bases if b.component == component]:
            del self._bases[base]
            self._host.pop(base, None)
        self._socket_of = {c: b for c, b in self._socket_of.items()
                           if c.component != component}
        self._relay_of = {c: r for c, r in self._relay_of.items() if c.component != component}
        self.components = component - 1
        self._check_gathering(now)

    def close(self, now: float) -> None:
        """Stop everything and release the TURN allocations."""
        if self._closed:
            return
        self._closed = True
        for check in self._checks.values():
            check.transaction.cancel()
        self._checks.clear()
        for step in self._gather_steps.values():
            step.transaction.cancel()
        self._gather_steps.clear()
        self._triggered.clear()
        self._consent.clear()
        self._delayed.clear()
        self._selected.clear()
        for relay in self._relays:
            relay.client.close(now)
            self._drain_relay(relay, now)
        self._set_state(AgentState.CLOSED, "close")
        self._events.append(AgentClosed(at=now))

    # --- timers -----------------------------------------------------------------------------------
    def next_timer(self) -> float | None:
        times: list[float] = []
        for relay in self._relays:
            t = relay.client.next_timer()
            if t is not None:
                times.append(t)
        if self._closed:
            return min(times) if times else None
        if self._delayed:
            times.append(self._delayed[0][0])
        for check in self._checks.values():
            if check.cancelled:
                continue
            t = check.transaction.next_timer()
            if t is not None:
                times.append(t)
        for step in self._gather_steps.values():
            t = step.transaction.next_timer()
            if t is not None:
                times.append(t)
        if self._gathering_started and not self._gathering_done and \
                self._gather_deadline is not None:
            times.append(self._gather_deadline)
        if self._can_check():
            if self._settle_deadline is not None:
                times.append(self._settle_deadline)
            if self._has_check_work():
                times.append(self._last_check_at + self.ta
                             if self._last_check_at is not None else 0.0)
        for consent in self._consent.values():
            if consent.lost:
                continue
            if not self.settings.lite and self.settings.consent_interval:
                times.append(min(consent.next_check, consent.expires))
            times.append(consent.last_sent + self.settings.keepalive_interval)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for relay in self._relays:
            relay.client.handle_timer(now)
            self._drain_relay(relay, now)
        if self._closed:
            return
        while self._delayed and self._delayed[0][0] <= now:
            _, _, local, dest, held = heapq.heappop(self._delayed)
            self._deliver(local, dest, held, now)
        for tid, check in list(self._checks.items()):
            if check.cancelled:
                if now >= check.keep_until:
                    del self._checks[tid]
                continue
            data = check.transaction.handle_timer(now)
            if data is not None:
                self._send_from(check.pair.base, check.pair.remote.address, data, now)
                check.last_sent = now
                if not check.consent:
                    self._events.append(CheckSent(
                        at=now, pair=check.pair.snapshot(), transaction_id=tid.hex(),
                        use_candidate=check.use_candidate, retransmission=True,
                        triggered=check.triggered))
            elif check.transaction.timed_out:
                del self._checks[tid]
                if not check.consent:
                    self._fail(check, "timeout", now)
        for tid, step in list(self._gather_steps.items()):
            data = step.transaction.handle_timer(now)
            if data is not None:
                self._transmits.append(Transmit(data, step.server, step.base))
            elif step.transaction.timed_out:
                del self._gather_steps[tid]
                self._events.append(GatheringStepFailed(
                    at=now, kind="stun", server=step.server, base=step.base.address,
                    reason="timeout"))
        self._check_gathering(now)
        self._pump(now)
        self._consent_timers(now)
