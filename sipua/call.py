"""A call: one INVITE session, one ICE agent and one media stream, on Twisted.

:class:`Call` is what users of :class:`sipua.useragent.UserAgent` hold. It builds the SDP offers
and answers (RFC 3264) with the ICE attributes of RFC 8839, runs the ICE agent's checks once the
other side's description is known (the offerer controls, unless the peer is lite), and sends
audio over the selected pair (``media.stream.IceMediaStream``). Peers without ICE, or whose SDP
was rewritten on the way (ICE mismatch, RFC 8839 §4.4), get plain RTP to the ``c=``/``m=``
address with symmetric-RTP latching (``UdpMediaStream`` over the same sockets).

In-dialog: hold and resume by re-INVITE (sendonly/recvonly), ICE restart by re-INVITE with new
credentials (media stays on the old pair until the new one is selected), and, after ICE completes
with regular nomination, the updated offer of RFC 5245 §9.1.3 with ``a=remote-candidates``; the
same kinds of offers from the peer are accepted whether they come as re-INVITE or UPDATE.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol

from ice.agent import Agent, AgentState, IceSettings
from ice.candidate import AppData, LocalBase
from ice.events import (
    ConsentLost,
    GatheringCompleted,
    IceCompleted,
    IceEvent,
    IceFailed,
    PairSelected,
    PairSnapshot,
)
from ice.faults import FaultSettings
from ice.turn import TurnSettings
from ice.udp import IceUdpTransport
from media.clock import PacingClock
from media.codecs import default_registry
from media.jitter import JitterBufferSettings
from media.quality import estimate_from_stats
from media.session import FirstPacketReceived, RtpSession, RtpSessionSettings
from media.sinks import AudioSink
from media.sources import AudioSource
from media.srtp import SUITES, SrtpContext, generate_key
from media.stream import IceMediaStream, MediaStream, StreamEvent, UdpMediaStream
from sipua.exitcodes import ExitCode
from sipua.report import CallReport, build_report
from sipua.sdp import (
    ANSWER_DIRECTION,
    PCMA,
    PCMU,
    AudioOffer,
    Codec,
    CryptoAttribute,
    IceAttributes,
    InlineKey,
    MediaDescription,
    SdpError,
    build_description,
    default_candidate,
    has_ice_mismatch,
    match_crypto_answer,
    negotiate_codecs,
    parse_sdp,
    select_crypto,
)
from sipua.session import (
    AnswerReceived,
    CallAnswered,
    CallConfirmed,
    CallEnded,
    CallFailed,
    CallProgressed,
    InviteSession,
    OfferReceived,
    OfferRejected,
    SessionError,
    SessionEvent,
    SessionManager,
)

if TYPE_CHECKING:
    from sipua.settings import IceConfig, IceFaults, Settings

__all__ = ["Call", "CallError", "CallHost", "CallOptions", "CallState", "MediaTimeout"]

log = logging.getLogger(__name__)

RFC5245_MIN_TA = 0.02
"""RFC 5245 §16.1: Ta is at least 20 ms when ICE runs for RTP."""


def _pacing(cfg: IceConfig) -> float:
    """Our Ta: the configured one, not below RFC 5245's floor in rfc5245 mode."""
    return max(cfg.ta, RFC5245_MIN_TA) if cfg.compat == "rfc5245" else cfg.ta


MAX_GLARE_RETRIES = 3
"""Times an offer refused with 491 Request Pending is sent again (RFC 3261 §14.1) before the
hold/resume/restart that made it reports failure."""


class CallError(Exception):
    """The call did not come about or broke: ``status`` (SIP) and ``code`` (the CLI exit code)."""

    def __init__(self, message: str, *, status: int | None = None,
                 code: ExitCode = ExitCode.FAILURE) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class MediaTimeout(CallError):
    """No media arrived in time."""

    def __init__(self, message: str, code: ExitCode = ExitCode.MEDIA_FAILED) -> None:
        super().__init__(message, code=code)


class CallState(enum.Enum):
    """The call as its user sees it."""

    CALLING = "calling"          # outgoing: preparing media, INVITE sent, no answer yet
    INCOMING = "incoming"        # incoming: ringing, not answered
    CONNECTING = "connecting"    # answered: ICE and media starting
    ACTIVE = "active"            # media arrived
    ENDED = "ended"


@dataclass(frozen=True)
class CallOptions:
    """Per-call choices that override the settings."""

    #: "regular" or "aggressive"; None = the account's, else ice.nomination.
    nomination: str | None = None
    #: Use ICE for this call; None = ice.enabled.
    ice: bool | None = None
    #: Offer rtcp-mux (one component); None = ice.rtcp_mux.
    rtcp_mux: bool | None = None
    #: Send the updated offer of RFC 5245 §9.1.3 after regular nomination; None = the setting.
    updated_offer: bool | None = None
    #: Method of the updated offer: "INVITE" or "UPDATE".
    updated_offer_method: str = "INVITE"
    #: SRTP: "off", "optional" or "mandatory"; None = media.srtp (docs/security.md).
    srtp: str | None = None
    #: Rewrites the body of the initial offer before it leaves (None: sent as built). For
    #: probing a peer only (`sipua probe` builds an ICE-mismatched offer with it).
    sdp_mangle: Callable[[bytes], bytes] | None = None


class CallHost(Protocol):
    """What a call needs of its user agent."""

    reactor: Any
    rng: random.Random
    clock: PacingClock
    settings: Settings

    @property
    def sessions(self) -> SessionManager:
        """The session manager of the user agent."""

    def flush(self) -> None:
        """Send what the session manager queued."""

    def media_addresses(self) -> list[str]:
        """Local IP addresses to bind media sockets on."""

    def emit(self, event: object) -> None:
        """Hand an event to the subscribers."""

    def call_ended(self, call: Call) -> None:
        """Forget a finished call."""


# --- sockets ----------------------------------------------------------------------------------

class _PortView:
    """One ICE socket seen as a UDP port by ``UdpMediaStream`` (plain RTP on ICE sockets)."""

    def __init__(self, transport: IceUdpTransport, base: LocalBase,
                 protocol: DatagramProtocol) -> None:
        self.transport = transport
        self.base = base
        self.protocol = protocol

    def getHost(self) -> Any:
        return _Host(self.base.address[0], self.base.address[1])

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.send_to(self.base, data, addr)

    def stopListening(self) -> None:
        """The ICE transport closes the socket with the call."""


@dataclass(frozen=True)
class _Host:
    host: str
    port: int


class _SocketReactor:
    """A reactor for ``UdpMediaStream`` whose ``listenUDP`` hands out the ICE sockets:
    component 1 first, then component 2."""

    def __init__(self, transport: IceUdpTransport, reactor: Any) -> None:
        self.transport = transport
        self.reactor = reactor
        self.ports: dict[int, _PortView] = {}

    def seconds(self) -> float:
        return float(self.reactor.seconds())

    def callLater(self, delay: float, f: Callable[..., object], *args: object,
                  **kw: object) -> Any:
        return self.reactor.callLater(delay, f, *args, **kw)

    def listenUDP(self, port: int, protocol: DatagramProtocol, interface: str = "",
                  maxPacketSize: int = 8192) -> _PortView:
        component = len(self.ports) + 1
        base = next(b for b in self.transport.bases if b.component == component)
        view = _PortView(self.transport, base, protocol)
        self.ports[component] = view
        return view

    def deliver(self, app: AppData) -> None:
        view = self.ports.get(app.component)
        if view is not None:
            view.protocol.datagramReceived(app.data, app.source)


# --- SDP helpers ------------------------------------------------------------------------------

def _our_codecs(names: tuple[str, ...], dtmf_pt: int) -> tuple[Codec, ...]:
    known = {"PCMU": PCMU, "PCMA": PCMA}
    out = [known[n.upper()] for n in names if n.upper() in known]
    return (*out, Codec(dtmf_pt, "telephone-event", fmtp="0-16"))


def _audio_codec(codecs: tuple[Codec, ...]) -> Codec | None:
    registry = default_registry()
    for codec in codecs:
        if codec.name.lower() != "telephone-event" and registry.get(codec.name) is not None:
            return codec
    return None


def _fault_settings(faults: IceFaults) -> FaultSettings:
    """The agent's fault filter settings from the [ice.faults] table."""
    return FaultSettings(
        drop_requests_in=faults.drop_requests_in, drop_requests_out=faults.drop_requests_out,
        drop_responses_in=faults.drop_responses_in,
        drop_responses_out=faults.drop_responses_out, drop_after=faults.drop_after,
        delay=faults.delay)


def _dtmf_pt(codecs: tuple[Codec, ...]) -> int | None:
    return next((c.payload_type for c in codecs if c.name.lower() == "telephone-event"), None)


@dataclass
class _Timings:
    """Moments of the call in reactor time."""

    started: float
    invite: float | None = None
    answered: float | None = None
    ice_completed: float | None = None
    first_rtp: float | None = None
    ended: float | None = None


@dataclass
class _Negotiated:
    """What the last offer/answer settled."""

    codec: Codec
    dtmf: int | None
    ptime: int
    remote: MediaDescription
    ice: bool
    rtcp_mux: bool
    directions: tuple[str, str] = ("sendrecv", "sendrecv")
    #: The peer's a=crypto line in use (RFC 4568), None for plain RTP.
    crypto: CryptoAttribute | None = None
    #: Our master key for that line.
    local_key: bytes | None = None


class _SrtpRefused(SdpError):
    """The description cannot be used because of SRTP; ``phrase`` is the 488's reason phrase."""

    def __init__(self, message: str, phrase: str) -> None:
        super().__init__(message)
        self.phrase = phrase


class Call:
    """One call (module docstring). Create it through :class:`sipua.useragent.UserAgent`."""

    def __init__(self, host: CallHost, *, direction: str, source: AudioSource | None = None,
                 sink: AudioSink | None = None, options: CallOptions | None = None,
                 account_nomination: str | None = None) -> None:
        self.host = host
        self.reactor = host.reactor
        self.rng = host.rng
        #: "outgoing" or "incoming".
        self.direction = direction
        self.source = source
        self.sink = sink
        self.options = options or CallOptions()
        settings = host.settings
        self._ice_cfg = settings.ice
        self._media_cfg = settings.media
        self.use_ice = self.options.ice if self.options.ice is not None else self._ice_cfg.enabled
        self.nomination = (self.options.nomination or account_nomination
                           or self._ice_cfg.nomination)
        self.rtcp_mux = (self.options.rtcp_mux if self.options.rtcp_mux is not None
                         else self._ice_cfg.rtcp_mux)
        #: SRTP mode of this call (docs/security.md).
        self.srtp_mode = self.options.srtp or self._media_cfg.srtp
        if self.srtp_mode not in ("off", "optional", "mandatory"):
            raise ValueError(f"srtp must be off, optional or mandatory, not {self.srtp_mode!r}")
        self._srtp: SrtpContext | None = None
        self._srtp_tag = 1
        self._offered_crypto: tuple[CryptoAttribute, ...] = ()
        self._proto: str | None = None
        self.state = CallState.CALLING if direction == "outgoing" else CallState.INCOMING
        self.session: InviteSession | None = None
        self.agent: Agent | None = None
        self.transport: IceUdpTransport | None = None
        self.stream: MediaStream | None = None
        self._plain_reactor: _SocketReactor | None = None
        self.negotiated: _Negotiated | None = None
        self.timings = _Timings(self.reactor.seconds())
        #: Every event of the call (session, ICE, media), in order, for the report.
        self.events: list[object] = []
        self.ice_events: list[IceEvent] = []
        self.status: int | None = None
        self.end_reason: str | None = None
        self.ended_by: str | None = None
        #: Why we hang up, when not on the user's command (consent lost, ICE failed).
        self._local_reason: str | None = None
        self.failure: CallError | None = None
        self._sdp_id = self.rng.getrandbits(31)
        self._sdp_version = 0
        self._held = False
        self._remote_held = False
        self._updated_offer_sent = False
        self._restarting = False
        self._gathered = _Latch()
        self._answered = _Latch()
        self._flowing = _Latch()
        self._ended = _Latch()
        self._offer_done: _Latch | None = None
        #: Sends our last offer again (a fresh SDP version) after a 491; None when there is none.
        self._offer_again: Callable[[_Latch], object] | None = None
        self._glare_retries = 0
        self._glare_timer: Any = None
        self._components = 1
        #: Offered rtcp-mux with an RTCP component as fallback, until the answer settles it.
        self._mux_fallback = False
        self._initial_role: str | None = None  # the ICE role the agent started in
        self._final_stats: dict[str, Any] | None = None

    # --- state ------------------------------------------------------------------------------------
    def _set_state(self, new: CallState, cause: str) -> None:
        if new is not self.state:
            log.info("call %s: %s -> %s (%s)", self.id, self.state.value, new.value, cause)
            self.state = new

    @property
    def id(self) -> str:
        """The session id, or "new" before the INVITE."""
        return self.session.id if self.session is not None else "new"

    @property
    def call_id(self) -> str | None:
        """The SIP Call-ID."""
        return self.session.call_id if self.session is not None else None

    @property
    def active(self) -> bool:
        """Not ended."""
        return self.state is not CallState.ENDED

    def _now(self) -> float:
        return float(self.reactor.seconds())

    def _record(self, event: object) -> None:
        self.events.append(event)
        self.host.emit(event)

    # --- media preparation ------------------------------------------------------------------------
    def _ice_settings(self) -> IceSettings:
        cfg = self._ice_cfg
        stun = cfg.stun_addresses() if "srflx" in cfg.candidate_types else ()
        turn = tuple(TurnSettings((t.host, t.port), t.username, t.password)
                     for t in cfg.turn_servers
                     if t.transport == "udp" and not t.secure and "relay" in cfg.candidate_types)
        return IceSettings(
            nomination=self.nomination, ta=_pacing(cfg), lite=cfg.lite, stun_servers=stun,
            turn_servers=turn, keepalive_interval=cfg.keepalive_interval,
            consent_interval=cfg.consent_interval, consent_timeout=cfg.consent_timeout,
            software=self.host.settings.ua.user_agent, candidate_types=cfg.candidate_types,
            faults=_fault_settings(cfg.faults) if cfg.faults.active else None,
            withhold_nomination=cfg.faults.withhold_nomination)

    def _bind(self, *, controlling: bool, components: int, gather: bool) -> None:
        """Open the media sockets (one per address and component) and start gathering.

        ``controlling`` is the RFC 8445 §6.1.1 role (the offerer controls); ice.role may force
        the other one, and ice.tie_breaker fix the tie-breaker, for testing a peer's role
        conflict handling (§7.3.1.1 still repairs a conflict)."""
        self._components = components
        role = self._ice_cfg.role
        if role != "auto":
            controlling = role == "controlling"
        self.agent = Agent(self._ice_settings(), controlling=controlling, rng=self.rng,
                           components=components, tie_breaker=self._ice_cfg.tie_breaker)
        self._initial_role = "controlling" if self.agent.controlling else "controlled"
        self.transport = IceUdpTransport(self.agent, self.reactor, on_event=self._on_ice_event,
                                        on_data=self._on_data)
        addresses = self.host.media_addresses()
        self.transport.bind(addresses[:1] if not gather else addresses, components=components)
        if gather:
            self.agent.start_gathering(self._now())
            self.transport.poke()
        if not gather or self.agent.gathering_complete:
            self._gathered.fire(None)

    def _local_description(self, *, direction: str = "sendrecv", answer_to: _Negotiated |
                           None = None, ice: bool | None = None, ice_mismatch: bool = False,
                           updated: bool = False, remote_candidates: bool = False,
                           as_offer: bool | None = None) -> bytes:
        """Our SDP: candidates and the default candidate in c=/m=/a=rtcp (RFC 8839 §4.2).

        ``as_offer`` says whether this is an offer; by default it is when ``answer_to`` is None
        (a re-offer passes the negotiated values and ``as_offer=True``).
        """
        assert self.agent is not None and self.transport is not None
        use_ice = self.use_ice if ice is None else ice
        agent = self.agent
        if answer_to is not None:
            codecs: tuple[Codec, ...] = (answer_to.codec,)
            if answer_to.dtmf is not None:
                codecs += (Codec(answer_to.dtmf, "telephone-event", fmtp="0-16"),)
        else:
            codecs = _our_codecs(self._media_cfg.codecs, self._media_cfg.dtmf_payload_type)
        candidates = agent.local_candidates if use_ice else []
        defaults: dict[int, tuple[str, int]] = {}
        selected_remote: tuple[tuple[int, tuple[str, int]], ...] = ()
        for component in range(1, self._components + 1):
            pair = agent.selected_pair(component) if updated else None
            if pair is not None:
                defaults[component] = pair.local.address
                selected_remote += ((component, pair.remote.address),)
                continue
            chosen = default_candidate(candidates, component) if use_ice else None
            if chosen is not None:
                defaults[component] = chosen.address
            else:
                base = next(b for b in self.transport.bases if b.component == component)
                defaults[component] = base.address
        if updated:
            # RFC 5245 §9.1.3: only the candidates of the selected pairs.
            candidates = [c for c in candidates if c.address in defaults.values()]
        attrs = None
        if use_ice:
            attrs = IceAttributes(agent.local_ufrag, agent.local_pwd, tuple(candidates),
                                  lite=self._ice_cfg.lite, end_of_candidates=True,
                                  remote_candidates=selected_remote if remote_candidates else (),
                                  # RFC 8445 §10, RFC 8839 §5.6
                                  options=("ice2",) if self._ice_cfg.compat == "rfc8445" else (),
                                  # RFC 8445 §14.2: a Ta other than 50 ms is proposed
                                  pacing=max(1, round(agent.settings.ta * 1000)))
        mux = self._components == 1 or self._mux_fallback
        is_offer = answer_to is None if as_offer is None else as_offer
        proto, crypto = (self._crypto_offer() if is_offer or answer_to is None
                         else self._crypto_answer(answer_to))
        offer = AudioOffer(
            connection=defaults[1][0], port=defaults[1][1], codecs=codecs,
            ptime=self._media_cfg.ptime, direction=direction,
            rtcp=None if self._components == 1 else defaults[2], rtcp_mux=mux and (
                answer_to is None or answer_to.rtcp_mux), ice=attrs, proto=proto,
            crypto=crypto)
        self._sdp_version += 1
        desc = build_description(offer, session_id=self._sdp_id,
                                 session_version=self._sdp_version, ice_mismatch=ice_mismatch)
        return desc.encode().encode()

    def _negotiate(self, sdp: bytes, *, offer: bool) -> _Negotiated:
        """Read the peer's description; raises SdpError when we cannot use it."""
        desc = parse_sdp(sdp.decode("utf-8", "replace"))
        audio = desc.audio
        ours = _our_codecs(self._media_cfg.codecs, self._media_cfg.dtmf_payload_type)
        usable = negotiate_codecs(audio.codecs, ours) if offer else tuple(
            c for c in audio.codecs if any(o.same_format(c) for o in ours))
        codec = _audio_codec(usable)
        if codec is None:
            raise SdpError("no common audio codec")
        ice = (self.use_ice and audio.ice is not None and not audio.ice_mismatch
               and not has_ice_mismatch(audio))
        crypto, local_key = self._negotiate_srtp(audio, offer=offer)
        return _Negotiated(codec=codec, dtmf=_dtmf_pt(usable),
                           ptime=audio.ptime or self._media_cfg.ptime, remote=audio, ice=ice,
                           # Answering, ice.rtcp_mux = false declines multiplexing
                           # (RFC 5761 §5.1.1); an answer's a=rtcp-mux is the peer's decision.
                           rtcp_mux=audio.rtcp_mux and (self.rtcp_mux or not offer),
                           crypto=crypto, local_key=local_key)

    # --- SRTP (RFC 4568, docs/security.md) --------------------------------------------------------
    def _crypto_offer(self) -> tuple[str, tuple[CryptoAttribute, ...]]:
        """Profile and a=crypto lines of an offer: every suite with a fresh key each, or, once
        SRTP runs, the suite and key in use (RFC 4568 §7.1.4: keys kept across re-offers)."""
        ctx = self._srtp
        if ctx is not None:
            lines: tuple[CryptoAttribute, ...] = (
                CryptoAttribute(self._srtp_tag, ctx.suite.name, (InlineKey(ctx.local_key),)),)
        elif self.srtp_mode == "off":
            lines = ()
        else:
            lines = tuple(CryptoAttribute(tag, name, (InlineKey(generate_key(self.rng, name)),))
                          for tag, name in enumerate(SUITES, start=1))
        self._offered_crypto = lines
        if self._proto is None:
            # RFC 4568 §7.1.1: RTP/SAVP when SRTP is required; RTP/AVP with a=crypto is the
            # best-effort form many user agents use (not standardised).
            self._proto = "RTP/SAVP" if self.srtp_mode == "mandatory" else "RTP/AVP"
        return self._proto, lines

    def _crypto_answer(self, neg: _Negotiated) -> tuple[str, tuple[CryptoAttribute, ...]]:
        """Profile and a=crypto line of an answer: the offered line's tag and suite with our
        own key (RFC 4568 §7.1.2)."""
        self._proto = "RTP/SAVP" if neg.remote.secure else "RTP/AVP"
        if neg.crypto is None or neg.local_key is None:
            return self._proto, ()
        return self._proto, (CryptoAttribute(neg.crypto.tag, neg.crypto.suite,
                                             (InlineKey(neg.local_key),)),)

    def _negotiate_srtp(self, audio: MediaDescription, *, offer: bool
                        ) -> tuple[CryptoAttribute | None, bytes | None]:
        """The peer's a=crypto line to use and our key for it; raises :class:`_SrtpRefused`
        where docs/security.md says 488 (or, for an answer, ending the call)."""
        mode = self.srtp_mode
        active = self._srtp is not None
        if audio.secure and audio.proto.upper() != "RTP/SAVP":
            raise _SrtpRefused(f"unsupported secure profile {audio.proto}",
                               "Not Acceptable Here (profile)")
        if offer:
            if audio.secure and mode == "off":
                raise _SrtpRefused("RTP/SAVP offered and media.srtp is off",
                                   "Not Acceptable Here (no SRTP)")
            chosen = (select_crypto(audio.crypto) if mode != "off" or audio.secure else None)
            if chosen is None:
                if audio.secure or mode == "mandatory":
                    raise _SrtpRefused("no a=crypto line we support (RFC 4568)",
                                       "Not Acceptable Here (SRTP required)")
                if active:
                    raise _SrtpRefused("a new offer without SRTP in an SRTP call",
                                       "Not Acceptable Here (SRTP required)")
                return None, None
            ctx = self._srtp
            if ctx is not None and ctx.suite.name == chosen.suite:
                return chosen, ctx.local_key  # keep our key (RFC 4568 §7.1.4)
            return chosen, generate_key(self.rng, chosen.suite)
        chosen = match_crypto_answer(self._offered_crypto, audio.crypto)
        if chosen is None:
            if audio.secure or mode == "mandatory" or active:
                raise _SrtpRefused("the answer accepted none of our a=crypto lines",
                                   "SRTP refused")
            return None, None
        local = next(c.key for c in self._offered_crypto if c.tag == chosen.tag)
        return chosen, local

    def _apply_srtp(self, neg: _Negotiated) -> None:
        """Key the stream with what the offer/answer settled; a new key of the peer on a later
        offer or answer replaces the inbound key (RFC 4568 §7.1.4)."""
        crypto, local = neg.crypto, neg.local_key
        if crypto is None or local is None:
            return
        mki = crypto.keys[0].mki_bytes
        self._srtp_tag = crypto.tag  # later offers repeat the line in use
        ctx = self._srtp
        if ctx is not None and ctx.suite.name == crypto.suite and ctx.local_key == local:
            ctx.update_remote(crypto.key, mki)
            return
        ctx = SrtpContext(crypto.suite, local, crypto.key, remote_mki=mki)
        log.info("call %s: SRTP %s", self.id, crypto.suite)
        self._srtp = ctx
        if self.stream is not None:
            self.stream.session.set_srtp(ctx)

    def _feed_remote_ice(self, media: MediaDescription, now: float) -> None:
        """Remote credentials and candidates; checks start now (RFC 8445 §6.1.4)."""
        assert self.agent is not None and self.transport is not None and media.ice is not None
        agent = self.agent
        attrs = media.ice
        if agent.remote_ufrag is not None and (agent.remote_ufrag, agent.remote_pwd) != (
                attrs.ufrag, attrs.pwd):
            log.info("call %s: remote ICE credentials changed: ICE restart", self.id)
            if not self._restarting:
                agent.restart(now)
        fresh = agent.remote_ufrag is None
        agent.set_remote_pacing(attrs.pacing / 1000 if attrs.pacing else None)
        if fresh:
            agent.set_remote_credentials(attrs.ufrag, attrs.pwd, lite=attrs.lite)
        for candidate in attrs.candidates:
            agent.add_remote_candidate(candidate, now)
        if fresh:
            agent.end_of_remote_candidates(now)
            if agent.state is not AgentState.CLOSED:
                agent.start_checks(now)
        self._restarting = False
        self.transport.poke()

    def _start_media(self, neg: _Negotiated) -> None:
        """Create and start the RTP stream over ICE or plain UDP."""
        if self.stream is not None:
            return
        assert self.transport is not None
        now = self._now()
        codec = default_registry().create(neg.codec.name, neg.codec.payload_type)
        session = RtpSession(codec, self.rng, now, RtpSessionSettings(
            ptime=neg.ptime, dtmf_payload_type=neg.dtmf,
            rtcp_min_interval=self._media_cfg.rtcp_interval,
            jitter_buffer=JitterBufferSettings(
                min_delay=self._media_cfg.jitter_min_ms / 1000,
                max_delay=self._media_cfg.jitter_max_ms / 1000)))
        mux = self._components == 1
        stream: MediaStream
        if neg.ice:
            stream = IceMediaStream(session, self.transport, self.host.clock, component=1,
                                    rtcp_mux=mux, source=self.source, sink=self.sink,
                                    on_event=self._on_stream_event)
        else:
            shim = _SocketReactor(self.transport, self.reactor)
            self._plain_reactor = shim
            remote = neg.remote
            stream = UdpMediaStream(
                session, self.host.clock, local=self.transport.bases[0].address,
                remote=remote.default_address,
                remote_rtcp=None if mux else remote.default_rtcp_address, rtcp_mux=mux,
                symmetric=self._media_cfg.symmetric_rtp_latching, reactor=shim,  # type: ignore[arg-type]
                source=self.source, sink=self.sink, on_event=self._on_stream_event)
        self.stream = stream
        self._apply_srtp(neg)
        self._apply_directions(neg)
        stream.start()

    def _apply_directions(self, neg: _Negotiated) -> None:
        """Send only when both descriptions allow it and we are not holding (RFC 3264 §6.1)."""
        self.negotiated = neg
        stream = self.stream
        if stream is None:
            return
        local, remote = neg.directions
        send = (local in ("sendrecv", "sendonly") and remote in ("sendrecv", "recvonly")
                and not self._held)
        if send:
            stream.resume()
        else:
            stream.hold()

    # --- outgoing ---------------------------------------------------------------------------------
    async def dial(self, target: str, *, local: str, dest: tuple[str, int] | None,
                   transport: str, credentials: Any = None,
                   outbound_proxy: tuple[str, int] | None = None) -> Call:
        """Prepare media, then send the INVITE with our offer."""
        # RFC 5761 §5.1.3: an ICE offer of rtcp-mux also carries the RTCP component, dropped
        # once the answer accepts multiplexing, so that a peer that declines it (baresip,
        # linphone) still gets a working RTCP component instead of a failed call.
        self._mux_fallback = self.use_ice and self.rtcp_mux
        self._bind(controlling=True, components=2 if self.use_ice else 1, gather=self.use_ice)
        await self._gathered.wait()
        if self.state is CallState.ENDED:
            raise CallError("the call was hung up before it started")
        if self.use_ice and self.agent is not None and not self.agent.local_candidates:
            # ice.candidate_types left nothing: a relay-only call whose TURN allocation failed.
            types = ", ".join(self._ice_cfg.candidate_types)
            if self.transport is not None:
                self.transport.close()
            self._set_state(CallState.ENDED, "no ICE candidates")
            raise CallError(f"no ICE candidates to offer: none of the allowed types ({types}) "
                            f"was gathered (see ice.candidate_types and the STUN/TURN servers)",
                            code=ExitCode.ICE_FAILED)
        offer = self._local_description()
        if self.options.sdp_mangle is not None:
            offer = self.options.sdp_mangle(offer)
        now = self._now()
        self.timings.invite = now
        self.session = self.host.sessions.invite(
            target, local=local, now=now, dest=dest, offer=offer, transport=transport,
            credentials=credentials, outbound_proxy=outbound_proxy)
        self.host.flush()
        return self

    # --- incoming ---------------------------------------------------------------------------------
    def incoming(self, session: InviteSession, offer: bytes | None) -> None:
        """A new incoming session: check the offer, ring, prepare media."""
        self.session = session
        now = self._now()
        self.timings.invite = now
        components = 1 if self.rtcp_mux else 2
        ice_ok = self.use_ice
        if offer is not None:
            try:
                neg = self._negotiate(offer, offer=True)
            except SdpError as exc:
                log.info("call %s: offer refused: %s", self.id, exc)
                self._refuse(488, f"offer refused: {exc}",
                             exc.phrase if isinstance(exc, _SrtpRefused) else None)
                return
            self.negotiated = neg
            components = 1 if neg.rtcp_mux else 2
            ice_ok = neg.ice
        session.ring(now)
        self.host.flush()
        self._bind(controlling=offer is None, components=components, gather=ice_ok)

    def _refuse(self, status: int, reason: str, phrase: str | None = None) -> None:
        assert self.session is not None
        self.session.reject(status, self._now(), reason=phrase)
        self.host.flush()

    async def accept(self) -> None:
        """Answer with 200 OK once candidates are gathered; ICE checks start right away."""
        await self._gathered.wait()
        session = self.session
        if session is None or self.state is not CallState.INCOMING:
            return
        now = self._now()
        neg = self.negotiated
        if neg is None:
            sdp = self._local_description()  # offerless INVITE: our offer in the 2xx
        else:
            media = neg.remote
            mismatch = self.use_ice and media.ice is not None and not neg.ice
            neg.directions = (ANSWER_DIRECTION.get(media.direction, "sendrecv"), media.direction)
            sdp = self._local_description(direction=neg.directions[0], answer_to=neg,
                                          ice=neg.ice, ice_mismatch=mismatch)
        try:
            session.accept(sdp, now)
        except SessionError as exc:
            log.info("call %s: cannot accept: %s", self.id, exc)
            return
        self.host.flush()
        if neg is not None:
            self._start_media(neg)
            if neg.ice:
                self._feed_remote_ice(neg.remote, now)

    def answer(self) -> Deferred[None]:
        """Answer an incoming call (:meth:`accept` as a Deferred); set :attr:`source` and
        :attr:`sink` first."""
        return Deferred.fromCoroutine(self.accept())

    def reject(self, status: int = 486) -> None:
        """Refuse an incoming call that is still ringing."""
        if self.session is not None and self.state is CallState.INCOMING:
            self._refuse(status, f"rejected with {status}")

    # --- session events ---------------------------------------------------------------------------
    def session_event(self, event: SessionEvent) -> None:
        """Feed one event of our session (called by the user agent)."""
        self._record(event)
        now = event.at
        if isinstance(event, CallProgressed):
            return
        if isinstance(event, CallAnswered):
            self.status = event.status
            self.timings.answered = now
            self._set_state(CallState.CONNECTING, f"{event.status}")
            if not self._answered.called:
                self._answered.fire(self)
        elif isinstance(event, CallConfirmed):
            return
        elif isinstance(event, AnswerReceived):
            self._on_answer(event)
        elif isinstance(event, OfferReceived):
            self._on_offer(event)
        elif isinstance(event, OfferRejected):
            log.info("call %s: our %s offer refused (%d)", self.id, event.method, event.status)
            if (event.retry_after is not None and self._offer_again is not None
                    and self._offer_done is not None and not self._offer_done.called
                    and self._glare_retries < MAX_GLARE_RETRIES and self.active):
                # RFC 3261 §14.1: after a 491 the offer is tried again once the randomized
                # wait is over (the other side's offer, if any, has been answered by then).
                self._glare_retries += 1
                log.info("call %s: glare: offering again in %.2f s (try %d of %d)", self.id,
                         event.retry_after, self._glare_retries, MAX_GLARE_RETRIES)
                self._glare_timer = self.reactor.callLater(event.retry_after,
                                                           self._offer_after_glare)
                return
            self._restarting = False
            self._offer_again = None
            if self._offer_done is not None and not self._offer_done.called:
                self._offer_done.fire(False)
        elif isinstance(event, CallFailed):
            self.status = event.status
            code = ExitCode.NO_ANSWER if event.status in (408, 503) else ExitCode.CALL_REJECTED
            self._finish("remote", f"{event.status} {event.reason}",
                         CallError(f"call failed: {event.status} {event.reason}",
                                   status=event.status, code=code))
        elif isinstance(event, CallEnded):
            error = None
            if not self._answered.called:
                error = CallError(f"call ended before it was answered ({event.reason})",
                                  status=self.status, code=ExitCode.CALL_REJECTED)
            reason = event.reason
            if event.by == "local" and self._local_reason is not None:
                reason = self._local_reason  # our BYE/CANCEL: say why we sent it
            self._finish(event.by, reason, error)

    def _on_answer(self, event: AnswerReceived) -> None:
        try:
            neg = self._negotiate(event.sdp, offer=False)
        except SdpError as exc:
            log.warning("call %s: unusable answer: %s", self.id, exc)
            if not event.early:
                self._hangup_now(f"unusable answer: {exc}")
            return
        media = neg.remote
        neg.directions = (self._offered_direction(), media.direction)
        first = self.stream is None
        if self._mux_fallback:
            self._mux_fallback = False
            if neg.rtcp_mux and self.transport is not None:
                self.transport.drop_component(2)
                self._components = 1
            else:
                log.info("call %s: rtcp-mux declined: RTCP on component 2", self.id)
        if first:
            self._start_media(neg)
        else:
            neg.ice = self.negotiated.ice if self.negotiated is not None else neg.ice
            self._apply_srtp(neg)
            self._apply_directions(neg)
        if neg.ice and media.ice is not None:
            self._feed_remote_ice(media, event.at)
        if self._offer_done is not None and not self._offer_done.called:
            self._offer_done.fire(True)

    def _offered_direction(self) -> str:
        return "sendonly" if self._held else "sendrecv"

    def _on_offer(self, event: OfferReceived) -> None:
        session = self.session
        assert session is not None
        try:
            neg = self._negotiate(event.sdp, offer=True)
        except SdpError as exc:
            log.info("call %s: %s offer refused: %s", self.id, event.method, exc)
            session.reject_offer(488, event.at)
            return
        media = neg.remote
        previous = self.negotiated
        if previous is not None:
            neg.ice = previous.ice and neg.ice
            neg.codec, neg.dtmf = previous.codec, previous.dtmf
            if not any(c.same_format(previous.codec) for c in media.codecs):
                session.reject_offer(488, event.at)
                return
        self._remote_held = media.direction in ("sendonly", "inactive")
        local_dir = ANSWER_DIRECTION.get(media.direction, "sendrecv")
        if self._held:
            # We hold the peer: we receive nothing, whatever it offers (RFC 3264 §6.1, §8.4).
            local_dir = {"sendrecv": "sendonly", "recvonly": "inactive"}.get(local_dir, local_dir)
        neg.directions = (local_dir, media.direction)
        restart = (neg.ice and self.agent is not None and media.ice is not None
                   and self.agent.remote_ufrag is not None
                   and (self.agent.remote_ufrag, self.agent.remote_pwd)
                   != (media.ice.ufrag, media.ice.pwd))
        if restart:
            assert self.agent is not None
            log.info("call %s: ICE restart asked by the peer (%s)", self.id, event.method)
            self.agent.restart(event.at)
            self._restarting = True
        sdp = self._local_description(direction=local_dir, answer_to=neg, ice=neg.ice,
                                      updated=not restart and self._ice_done())
        session.answer(sdp, event.at)
        if self.stream is None:
            self._start_media(neg)
        else:
            self._apply_srtp(neg)
            self._apply_directions(neg)
        if neg.ice and media.ice is not None:
            self._feed_remote_ice(media, event.at)

    def _ice_done(self) -> bool:
        return self.agent is not None and self.agent.state is AgentState.COMPLETED

    # --- ICE and media events ---------------------------------------------------------------------
    def _on_ice_event(self, event: IceEvent) -> None:
        self.ice_events.append(event)
        self._record(event)
        stream = self.stream
        if isinstance(stream, IceMediaStream):
            stream.ice_event_received(event)
        if isinstance(event, GatheringCompleted) and not self._gathered.called:
            self._gathered.fire(None)
        elif isinstance(event, IceCompleted):
            if self.timings.ice_completed is None:
                self.timings.ice_completed = event.at
            self.reactor.callLater(0, self._maybe_updated_offer)
        elif (isinstance(event, IceFailed) and self.negotiated is not None
              and self.negotiated.ice and self.active):
            self._fail_media(f"ICE failed: {event.reason}", ExitCode.ICE_FAILED)
        elif isinstance(event, ConsentLost) and self.active:
            # RFC 7675 §5.1: without consent no media may be sent; a call that cannot send
            # is over, so hang up (the BYE may still get through over the signalling path).
            self._fail_media(f"ICE consent lost on component {event.component}",
                             ExitCode.MEDIA_FAILED)

    def _on_data(self, app: AppData) -> None:
        stream = self.stream
        if isinstance(stream, IceMediaStream):
            stream.app_data_received(app)
        elif self._plain_reactor is not None:
            self._plain_reactor.deliver(app)

    def _on_stream_event(self, event: StreamEvent) -> None:
        self._record(event)
        if isinstance(event, FirstPacketReceived):
            self.timings.first_rtp = self._now()
            self._set_state(CallState.ACTIVE, "first RTP received")
            if not self._flowing.called:
                self._flowing.fire(self)

    def _fail_media(self, reason: str, code: ExitCode) -> None:
        self.failure = CallError(reason, code=code)
        self._local_reason = reason
        if not self._flowing.called:
            self._flowing.fail(self.failure)
        self._hangup_now(reason)

    def _maybe_updated_offer(self) -> None:
        """RFC 5245 §9.1.3: the controlling agent re-offers the selected candidates when they
        are not the defaults, so that middleboxes on the path see the addresses in use; after
        aggressive nomination too (an RFC 5245 peer such as linphone keeps sending RTP to our
        default candidate until it gets that offer)."""
        agent, session = self.agent, self.session
        wanted = (self.options.updated_offer if self.options.updated_offer is not None
                  else self._ice_cfg.send_updated_offer or self._ice_cfg.compat == "rfc5245")
        if (not wanted or agent is None or session is None or self._updated_offer_sent
                or not agent.controlling or not self.active
                or agent.remote_lite or not session.can_offer()):
            return
        defaults = {c: default_candidate(agent.local_candidates, c)
                    for c in range(1, self._components + 1)}
        differs = False
        for component, default in defaults.items():
            pair = agent.selected_pair(component)
            if pair is not None and (default is None or pair.local.address != default.address):
                differs = True
        if not differs:
            return
        self._updated_offer_sent = True
        log.info("call %s: selected pair differs from the default: updated offer by %s",
                 self.id, self.options.updated_offer_method)
        self._send_updated_offer()

    def _send_updated_offer(self, done: _Latch | None = None) -> Deferred[bool]:
        sdp = self._local_description(direction=self._offered_direction(), updated=True,
                                      remote_candidates=True)
        return self._send_offer(sdp, self.options.updated_offer_method,
                                self._send_updated_offer, done)

    # --- commands ---------------------------------------------------------------------------------
    def answered(self) -> Deferred[Call]:
        """Fires when the call is answered; fails with :class:`CallError` otherwise."""
        return self._answered.wait()

    def media_flowing(self, timeout: float = 10.0) -> Deferred[Call]:
        """Fires once a pair is selected (or the plain path is set) and the first RTP arrived;
        fails with :class:`CallError` if the call ends or after ``timeout`` seconds."""
        d = self._flowing.wait()
        if self._flowing.called:
            return d
        d.addTimeout(timeout, self.reactor)

        def timed_out(failure: Any) -> Any:
            if failure.check(defer.TimeoutError):
                ice_failed = (self.negotiated is not None and self.negotiated.ice
                              and self.agent is not None
                              and self.agent.state is not AgentState.COMPLETED)
                raise MediaTimeout(
                    f"no media within {timeout:g} s"
                    + (" (ICE did not complete)" if ice_failed else ""),
                    ExitCode.ICE_FAILED if ice_failed else ExitCode.MEDIA_FAILED)
            return failure
        return d.addErrback(timed_out)

    def ended(self) -> Deferred[Call]:
        """Fires when the call is over."""
        return self._ended.wait()

    def hangup(self) -> Deferred[Call]:
        """End the call (CANCEL, decline or BYE); fires when it has ended locally."""
        self._hangup_now("hangup")
        return self.ended()

    def _hangup_now(self, reason: str) -> None:
        session = self.session
        if session is not None and not session.ended:
            try:
                session.hangup(self._now())
            except SessionError as exc:
                log.info("call %s: hangup: %s", self.id, exc)
            self.host.flush()
        if session is None or session.ended:
            self._finish("local", reason, None)

    def hold(self) -> Deferred[bool]:
        """Put the peer on hold by re-INVITE with a=sendonly; fires True when answered."""
        self._held = True
        return self._reoffer()

    def resume(self) -> Deferred[bool]:
        """Take the call off hold (a=sendrecv)."""
        self._held = False
        return self._reoffer()

    def restart_ice(self) -> Deferred[bool]:
        """ICE restart (RFC 8445 §9) by re-INVITE with new credentials; media goes on over the
        old pair until the new checks select one."""
        if self.agent is None or self.negotiated is None or not self.negotiated.ice:
            return defer.fail(CallError("the call does not use ICE"))
        if self.session is None or not self.session.can_offer():
            # Checked before the agent changes its credentials: a restart the peer never
            # hears of would leave the two agents with different ones.
            return defer.fail(CallError("an offer is already outstanding"))
        self.agent.restart(self._now())
        self._restarting = True
        return self._reoffer()

    def _offer_after_glare(self) -> None:
        self._glare_timer = None
        done, again = self._offer_done, self._offer_again
        if done is None or done.called or again is None:
            return
        if not self.active or self.session is None:
            done.fire(False)
            return
        if not self.session.can_offer():
            # The peer's own offer is still being answered: wait once more.
            self._glare_timer = self.reactor.callLater(0.5, self._offer_after_glare)
            return
        again(done)

    def _reoffer(self, done: _Latch | None = None) -> Deferred[bool]:
        if self.negotiated is None or self.session is None:
            return defer.fail(CallError("the call is not established"))
        # RFC 5245 §9.1.2.2: once ICE has completed, later offers carry the selected
        # candidates and a=remote-candidates (not after a restart: new credentials, all
        # candidates).
        settled = self.negotiated.ice and self._ice_done() and not self._restarting
        sdp = self._local_description(direction=self._offered_direction(),
                                      answer_to=self.negotiated, ice=self.negotiated.ice,
                                      updated=settled, remote_candidates=settled, as_offer=True)
        return self._send_offer(sdp, "INVITE", self._reoffer, done)

    def _send_offer(self, sdp: bytes, method: str,
                    again: Callable[[_Latch], object] | None = None,
                    done: _Latch | None = None) -> Deferred[bool]:
        """Send an offer by ``method``; ``again(latch)`` sends it anew after a 491 (None: not
        retried), and ``done`` is the latch of the offer being retried (None for a new one)."""
        session = self.session
        assert session is not None
        if not session.can_offer():
            return defer.fail(CallError("an offer is already outstanding"))
        if done is None:
            done = _Latch()
            self._glare_retries = 0
        self._offer_done = done
        self._offer_again = again
        now = self._now()
        if method == "UPDATE":
            session.update(sdp, now)
        else:
            session.reinvite(sdp, now)
        self.host.flush()
        if self.negotiated is not None and self.stream is not None:
            self.negotiated.directions = (self._offered_direction(),
                                          self.negotiated.directions[1])
            self._apply_directions(self.negotiated)
        return done.wait()

    def send_dtmf(self, digits: str) -> None:
        """RFC 4733 events on the media stream."""
        if self.stream is None:
            raise CallError("no media stream yet")
        self.stream.send_dtmf(digits)

    # --- ending -----------------------------------------------------------------------------------
    def _finish(self, by: str, reason: str, error: CallError | None) -> None:
        if self.state is CallState.ENDED:
            return
        self.ended_by = by
        self.end_reason = reason
        self.timings.ended = self._now()
        self._set_state(CallState.ENDED, reason)
        if error is not None and self.failure is None:
            self.failure = error
        failure = error or CallError(f"call ended ({reason})", status=self.status,
                                     code=ExitCode.MEDIA_FAILED)
        if not self._answered.called:
            self._answered.fail(failure)
        if not self._flowing.called:
            self._flowing.fail(failure)
        if self._glare_timer is not None and self._glare_timer.active():
            self._glare_timer.cancel()
        self._glare_timer = None
        if self._offer_done is not None and not self._offer_done.called:
            self._offer_done.fire(False)
        self._final_stats = self._stats_now()
        self.host.call_ended(self)
        d = self._release()
        d.addBoth(lambda _: self._ended.fire(self))

    def _release(self) -> Deferred[None]:
        waits: list[Deferred[Any]] = []
        if self.stream is not None:
            waits.append(self.stream.close(self.end_reason))
        if self.transport is not None:
            self.transport.close()
        done: Deferred[Any] = defer.gatherResults(waits, consumeErrors=True)
        return done.addBoth(lambda _: None)

    # --- statistics -------------------------------------------------------------------------------
    def _stats_now(self) -> dict[str, Any] | None:
        if self.stream is None:
            return None
        stats = self.stream.stats()
        out: dict[str, Any] = {"stream": stats.to_dict()}
        srtp = self.stream.session.srtp
        out["srtp"] = srtp.stats().to_dict() if srtp is not None else None
        neg = self.negotiated
        quality = estimate_from_stats(stats.session, (neg.ptime if neg else 20) / 1000)
        out["quality"] = quality.to_dict() if quality is not None else None
        return out

    def stats(self) -> dict[str, Any]:
        """The call report as a dict (SIP timeline, ICE checks, selected pairs, media, MOS)."""
        return self.report().to_dict()

    def _ice_knobs(self) -> dict[str, Any]:
        """The ICE test knobs of this call for the report: the role the agent started in, its
        tie-breaker, the compat mode and, when faults are configured, their counters."""
        agent, cfg = self.agent, self._ice_cfg
        knobs: dict[str, Any] = {
            "initial_role": self._initial_role,
            "tie_breaker": agent.tie_breaker if agent is not None else None,
            "compat": cfg.compat,
        }
        if cfg.faults.active:
            counters = (agent.faults.counters() if agent is not None and agent.faults
                        else {"dropped_in": 0, "dropped_out": 0, "delayed": 0})
            knobs["faults"] = {"settings": dataclasses.asdict(cfg.faults), **counters}
        return knobs

    def report(self) -> CallReport:
        """The call report (see :mod:`sipua.report`)."""
        media = self._stats_now() if self.state is not CallState.ENDED else self._final_stats
        selected: dict[int, PairSnapshot | None] = {}
        for event in self.ice_events:  # the last selection per component, also after close
            if isinstance(event, PairSelected):
                selected[event.component] = event.pair
        if self.agent is not None and self.agent.state is not AgentState.CLOSED:
            for component in range(1, self._components + 1):
                pair = self.agent.selected_pair(component)
                selected[component] = pair.snapshot() if pair is not None else None
        t = self.timings
        neg = self.negotiated
        return build_report(
            call_id=self.call_id, direction=self.direction, state=self.state.value,
            status=self.status, ended_by=self.ended_by, end_reason=self.end_reason,
            messages=list(self.session.messages) if self.session else [],
            ice_events=list(self.ice_events), selected=selected,
            media=media,
            codec=neg.codec.name if neg else None, ice=bool(neg and neg.ice),
            nomination=self.nomination,
            role=("controlling" if self.agent.controlling else "controlled")
            if self.agent is not None and neg is not None and neg.ice else None,
            ice_knobs=self._ice_knobs() if neg is not None and neg.ice else None,
            timings={"start": t.started, "invite": t.invite, "answered": t.answered,
                     "ice_completed": t.ice_completed, "first_rtp": t.first_rtp,
                     "ended": t.ended},
            error=str(self.failure) if self.failure else None)

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.direction} {self.state.value}>"


class _Latch:
    """A one-shot result that any number of waiters can await, before or after it came
    (a failure nobody awaits is not reported as an unhandled Deferred error)."""

    def __init__(self) -> None:
        self.called = False
        self._value: Any = None
        self._error: Exception | None = None
        self._waiters: list[Deferred[Any]] = []

    def fire(self, value: Any) -> None:
        if not self.called:
            self.called = True
            self._value = value
            self._release()

    def fail(self, error: Exception) -> None:
        if not self.called:
            self.called = True
            self._error = error
            self._release()

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._deliver(d)

    def _deliver(self, d: Deferred[Any]) -> None:
        if self._error is not None:
            d.errback(self._error)
        else:
            d.callback(self._value)

    def wait(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.called:
            self._deliver(d)
        else:
            self._waiters.append(d)
        return d
