"""What a remote endpoint did on the wire during `sipua probe`, turned into findings.

The probe (:mod:`sipua.probe`) places calls and records every SIP message and every datagram of
its media sockets with a timestamp. This module reads those records and nothing else: it parses
the SIP messages (:mod:`sipua.message`), the SDP bodies (:mod:`sipua.sdp`) and the STUN
messages (:mod:`ice.stun`), and answers questions about the peer: is it a full or a lite ICE
agent, what does it offer, how does it pace and nominate its checks, does it keep the pair alive
and refresh consent, does it restart ICE, how does it resolve a role conflict, what does it do
with an offer whose default candidate matches no candidate.

Each answer is a :class:`Finding` with a ``status`` ("yes", "no", "unknown", "n/a"), a
``value`` and the ``evidence``: the SDP lines or STUN messages it rests on, with their times
relative to the call's start. Input is untrusted (it came from the network): malformed
records are skipped, and a question whose records cannot be read is answered "unknown", never
with an exception.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ice.stun import Attr, MessageClass, Method, StunError, decode, decode_channel_data
from sipua.message import Request, Response, SipParseError, parse
from sipua.sdp import MediaDescription, SdpError, has_ice_mismatch, parse_sdp

__all__ = [
    "STATUSES", "CallTrace", "DatagramRecord", "Finding", "ProbeReport", "SipRecord",
    "analyze_answer", "analyze_call", "analyze_mismatch", "analyze_restart",
    "analyze_role_conflict", "analyze_wire", "peer_software",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]
#: What a finding's status may be.
STATUSES = ("yes", "no", "unknown", "n/a")
#: Evidence lines kept per finding (the JSON report stays readable).
MAX_EVIDENCE = 8
#: Seconds after our ICE completion during which the peer's Binding requests still count as
#: connectivity checks (a controlled peer learns of the nomination only then); later ones
#: are consent checks.
CHECK_GRACE = 0.25
#: SDP attributes quoted as evidence for the answer's ICE findings.
_SDP_EVIDENCE = ("m=", "c=", "a=ice-", "a=candidate", "a=rtcp", "a=end-of-candidates",
                 "a=remote-candidates")


# --- records ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SipRecord:
    """One SIP message as it left (``outgoing``) or reached the probing user agent."""

    at: float
    outgoing: bool
    data: bytes


@dataclass(frozen=True)
class DatagramRecord:
    """One datagram on a media socket: ``local`` is our socket, ``remote`` the other end."""

    at: float
    outgoing: bool
    local: Address
    remote: Address
    data: bytes


@dataclass(frozen=True)
class CallTrace:
    """What one probe call saw. The datagrams may include other sockets' traffic: only those
    on ``sockets`` (the call's media sockets) count; SIP counts only with ``call_id``."""

    #: When the probe step started (times in evidence are relative to it).
    started: float
    sip: tuple[SipRecord, ...] = ()
    datagrams: tuple[DatagramRecord, ...] = ()
    #: The SIP Call-ID of the call (None: every SIP record belongs to it).
    call_id: str | None = None
    #: Our media sockets (None: every datagram belongs to the call).
    sockets: frozenset[Address] | None = None
    #: When our agent had a selected pair on every component (None: never).
    ice_completed_at: float | None = None
    #: The selected pairs at the end, (local, remote) per component.
    selected: tuple[tuple[Address, Address], ...] = ()
    #: Our tie-breaker (role-conflict calls).
    tie_breaker: int | None = None


@dataclass(frozen=True)
class Finding:
    """One question about the peer and what the records answer."""

    #: Which probe step asked: "call", "restart", "role-conflict-win", ...
    step: str
    #: A stable identifier within the step, e.g. "ice.lite".
    key: str
    #: The question in words.
    question: str
    #: "yes", "no", "unknown" or "n/a".
    status: str
    #: What was seen (JSON types only).
    value: Any = None
    #: The SDP lines or messages it rests on, with times.
    evidence: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"step": self.step, "key": self.key, "question": self.question,
                "status": self.status, "value": self.value, "evidence": list(self.evidence)}


@dataclass(frozen=True)
class ProbeReport:
    """The whole probe: who answered, every finding, the call timings and the exit code."""

    uri: str
    #: The peer's User-Agent or Server header (None: none seen).
    peer: str | None
    findings: tuple[Finding, ...]
    #: Per step: setup times in milliseconds and the call's outcome.
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    exit_code: int = 0
    message: str = "ok"

    def finding(self, step: str, key: str) -> Finding | None:
        """The finding of ``step`` named ``key`` (None: not asked)."""
        return next((f for f in self.findings if f.step == step and f.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        """One JSON object (``sipua probe --json``)."""
        return {"uri": self.uri, "peer": self.peer, "exit_code": self.exit_code,
                "message": self.message, "timings": self.timings,
                "findings": [f.to_dict() for f in self.findings]}


# --- decoding -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Sip:
    at: float
    outgoing: bool
    msg: Request | Response


@dataclass(frozen=True)
class _Stun:
    """A STUN message of the peer exchange (unwrapped from TURN when relayed)."""

    at: float
    outgoing: bool
    local: Address
    remote: Address
    method: int
    cls: MessageClass
    tid: bytes
    attributes: dict[int, Any]
    relayed: bool


@dataclass(frozen=True)
class _Media:
    at: float
    outgoing: bool
    remote: Address
    rtcp: bool


def _sip_messages(trace: CallTrace) -> list[_Sip]:
    out: list[_Sip] = []
    for record in trace.sip:
        try:
            msg = parse(bytes(record.data))
            if trace.call_id is not None and msg.call_id != trace.call_id:
                continue
            msg.cseq  # noqa: B018 -- a bad CSeq is found here, not later
        except (SipParseError, TypeError, ValueError):
            continue
        out.append(_Sip(record.at, record.outgoing, msg))
    return out


def _address(value: Any) -> Address:
    return (str(value[0]), int(value[1]))


def _unwrap(data: bytes, remote: Address) -> tuple[bytes, Address, bool]:
    """The peer datagram inside a TURN Data/Send indication or ChannelData (RFC 8656 §11,
    §12), else the datagram itself."""
    if data and 64 <= data[0] <= 79:
        try:
            _, inner = decode_channel_data(data)
        except (StunError, ValueError):
            return data, remote, False
        return inner, remote, True
    return data, remote, False


def _datagrams(trace: CallTrace) -> tuple[list[_Stun], list[_Media]]:
    stun: list[_Stun] = []
    media: list[_Media] = []
    for record in trace.datagrams:
        if trace.sockets is not None and _address(record.local) not in trace.sockets:
            continue
        data, remote, relayed = _unwrap(bytes(record.data), record.remote)
        if not data:
            continue
        first = data[0]
        if first <= 3:
            try:
                msg = decode(data)
            except (StunError, ValueError, IndexError):
                continue
            if msg.method in (Method.SEND, Method.DATA) and Attr.DATA in msg.attributes:
                inner = msg.attributes[Attr.DATA]
                peer = msg.attributes.get(Attr.XOR_PEER_ADDRESS, remote)
                try:
                    msg = decode(bytes(inner))
                except (StunError, ValueError, IndexError):
                    if isinstance(inner, bytes) and inner and 128 <= inner[0] <= 191:
                        media.append(_Media(record.at, record.outgoing, _address(peer),
                                            len(inner) > 1 and 192 <= inner[1] <= 223))
                    continue
                remote, relayed = peer, True
            if msg.method != Method.BINDING:
                continue
            stun.append(_Stun(record.at, record.outgoing, _address(record.local),
                              _address(remote),
                              int(msg.method), msg.cls, msg.transaction_id,
                              dict(msg.attributes), relayed))
        elif 128 <= first <= 191 and len(data) >= 8:
            media.append(_Media(record.at, record.outgoing, _address(remote),
                                192 <= data[1] <= 223))
    return stun, media


def _is_stun_server_exchange(m: _Stun) -> bool:
    """A Binding with a STUN server (gathering): no USERNAME on the request, and its answers."""
    return m.cls in (MessageClass.REQUEST, MessageClass.INDICATION) and \
        Attr.USERNAME not in m.attributes and Attr.ICE_CONTROLLING not in m.attributes \
        and Attr.ICE_CONTROLLED not in m.attributes and m.outgoing


def _server_transactions(stun: Sequence[_Stun]) -> set[bytes]:
    """Transaction ids of our Binding requests to STUN servers (their answers are not the
    peer's)."""
    return {m.tid for m in stun if _is_stun_server_exchange(m)}


def _peer_checks(stun: Sequence[_Stun]) -> list[_Stun]:
    """The peer's connectivity checks (incoming Binding requests), first transmissions only."""
    seen: set[bytes] = set()
    out = []
    for m in stun:
        if m.outgoing or m.cls is not MessageClass.REQUEST or m.tid in seen:
            continue
        seen.add(m.tid)
        out.append(m)
    return out


# --- formatting -----------------------------------------------------------------------------

def _addr(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _t(at: float, origin: float) -> str:
    return f"{at - origin:+.3f} s"


_CLASS_NAMES = {MessageClass.REQUEST: "request", MessageClass.INDICATION: "indication",
                MessageClass.SUCCESS: "success", MessageClass.ERROR: "error"}


def _describe(m: _Stun, origin: float) -> str:
    arrow = "->" if m.outgoing else "<-"
    parts = [_t(m.at, origin), arrow, f"Binding {_CLASS_NAMES.get(m.cls, str(m.cls))}",
             f"{_addr(m.local)} {'to' if m.outgoing else 'from'} {_addr(m.remote)}"]
    if m.relayed:
        parts.append("(via TURN)")
    parts.append(f"tid={m.tid.hex()[:12]}")
    attrs = m.attributes
    if Attr.USE_CANDIDATE in attrs:
        parts.append("USE-CANDIDATE")
    if Attr.ICE_CONTROLLING in attrs:
        parts.append(f"ICE-CONTROLLING={attrs[Attr.ICE_CONTROLLING]}")
    if Attr.ICE_CONTROLLED in attrs:
        parts.append(f"ICE-CONTROLLED={attrs[Attr.ICE_CONTROLLED]}")
    if Attr.USERNAME in attrs:
        parts.append(f"USERNAME={attrs[Attr.USERNAME]}")
    if Attr.ERROR_CODE in attrs:
        code = attrs[Attr.ERROR_CODE]
        parts.append(f"ERROR-CODE={code[0]} {code[1]}" if isinstance(code, tuple) else
                     f"ERROR-CODE={code}")
    return " ".join(str(p) for p in parts)


def _evidence(items: Iterable[str]) -> tuple[str, ...]:
    out = list(items)
    if len(out) > MAX_EVIDENCE:
        out = [*out[:MAX_EVIDENCE - 1], f"... {len(out) - MAX_EVIDENCE + 1} more"]
    return tuple(out)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _median_interval(times: Sequence[float]) -> float | None:
    if len(times) < 2:
        return None
    return float(statistics.median(b - a for a, b in itertools.pairwise(times)))


def _median_per_flow(items: Sequence[_Stun]) -> float | None:
    """Median interval between messages of the same flow (local, remote): each component
    keeps its own pair alive, so the two streams must not be interleaved."""
    flows: dict[tuple[Address, Address], list[float]] = {}
    for m in items:
        flows.setdefault((m.local, m.remote), []).append(m.at)
    gaps = [b - a for times in flows.values() for a, b in itertools.pairwise(times)]
    return float(statistics.median(gaps)) if gaps else None


def _sdp_lines(sdp: str) -> list[str]:
    return [line.strip() for line in sdp.replace("\r\n", "\n").split("\n")
            if line.strip().startswith(_SDP_EVIDENCE)]


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def _guarded(step: str, what: str, make: Callable[[], list[Finding]]) -> list[Finding]:
    """Run one analysis; records that break it give one "unknown" finding instead."""
    try:
        return make()
    except Exception as exc:  # untrusted input must never stop the report
        log.info("probe analysis of %s failed: %r", what, exc)
        return [Finding(step, what, f"{what} (records unreadable)", "unknown", None,
                        (f"{type(exc).__name__}: {exc}",))]


# --- SIP helpers -----------------------------------------------------------------------------

def _is_invite_response(s: _Sip) -> bool:
    return isinstance(s.msg, Response) and s.msg.cseq.method == "INVITE"


def _first_answer(messages: Sequence[_Sip]) -> _Sip | None:
    """The first incoming 2xx to one of our INVITEs: the answer that set the call up (after
    any digest challenge, the INVITE went again with a higher CSeq)."""
    return next((s for s in messages if not s.outgoing and _is_invite_response(s)
                 and isinstance(s.msg, Response) and 200 <= s.msg.status < 300), None)


#: Digest challenges (RFC 3261 §22.2): the request goes again with credentials.
_CHALLENGES = (401, 407)


def _final_response(messages: Sequence[_Sip], request: _Sip) -> _Sip | None:
    """The final response to ``request`` or, when it was challenged, to its authenticated
    repetition (same method, higher CSeq)."""
    number = request.msg.cseq.number
    method = request.msg.cseq.method
    finals = [s for s in messages if s.outgoing != request.outgoing
              and isinstance(s.msg, Response) and s.msg.cseq.number >= number
              and s.msg.cseq.method == method and s.msg.status >= 200]
    settled = [s for s in finals if isinstance(s.msg, Response)
               and s.msg.status not in _CHALLENGES]
    return settled[0] if settled else (finals[0] if finals else None)


def _audio(body: bytes) -> MediaDescription:
    return parse_sdp(_text(body)).audio


def peer_software(traces: Iterable[CallTrace]) -> str | None:
    """The peer's Server header of a 2xx to our INVITE, else the User-Agent of one of its
    requests, else any Server header but a 100's (a proxy's hop-by-hop answer)."""
    ranked: list[tuple[int, str]] = []
    for trace in traces:
        for s in _sip_messages(trace):
            if s.outgoing:
                continue
            msg = s.msg
            if isinstance(msg, Response):
                # Some UAs name themselves in User-Agent on responses too.
                value = msg.headers.get("Server") or msg.headers.get("User-Agent")
                if value and msg.status != 100:
                    rank = 0 if 200 <= msg.status < 300 and msg.cseq.method == "INVITE" else 2
                    ranked.append((rank, value))
            else:
                value = msg.headers.get("User-Agent")
                if value:
                    ranked.append((1, value))
    return min(ranked, key=lambda r: r[0])[1] if ranked else None


# --- 1. the answer's SDP ----------------------------------------------------------------------

def analyze_answer(sdp: bytes | str | None, step: str = "call") -> list[Finding]:
    """The ICE part of the peer's answer (RFC 8839 §5): full or lite, candidates per
    component and type, rtcp-mux, ice-options, credential lengths, the default candidate,
    a=rtcp and a=end-of-candidates."""
    return _guarded(step, "answer", lambda: _answer(sdp, step))


def _answer(sdp: bytes | str | None, step: str) -> list[Finding]:
    def f(key: str, question: str, status: str, value: Any = None,
          evidence: Iterable[str] = ()) -> Finding:
        return Finding(step, key, question, status, value, _evidence(evidence))

    if sdp is None:
        return [f("sdp", "answer carries SDP", "unknown", None, ("no answer with a body",))]
    text = sdp.decode("utf-8", "replace") if isinstance(sdp, bytes) else sdp
    try:
        audio = parse_sdp(text).audio
    except SdpError as exc:
        return [f("sdp", "answer carries usable SDP", "unknown", None, (str(exc),))]
    lines = _sdp_lines(text)
    ice = audio.ice
    out: list[Finding] = []
    ice_lines = [x for x in lines if x.startswith(("a=ice-", "a=candidate"))]
    out.append(f("ice", "answers with ICE (a=ice-ufrag/pwd)", "yes" if ice else "no",
                 ("lite" if ice.lite else "full") if ice else "none", ice_lines[:3]))
    if ice is None:
        for key, question in (("ice.lite", "ICE lite (a=ice-lite)"),
                              ("candidates", "candidates offered"),
                              ("ice.options", "a=ice-options"),
                              ("ice.pacing", "a=ice-pacing (RFC 8839 §5.5)"),
                              ("credentials", "ufrag and pwd long enough (RFC 8839 §5.4)"),
                              ("default_candidate", "c=/m= is one of the candidates"),
                              ("end_of_candidates", "a=end-of-candidates")):
            out.append(f(key, question, "n/a"))
    else:
        out.append(f("ice.lite", "ICE lite (a=ice-lite)", "yes" if ice.lite else "no",
                     ice.lite, [x for x in text.splitlines() if "ice-lite" in x][:1]))
        per: dict[str, dict[str, int]] = {}
        for c in ice.candidates:
            counts = per.setdefault(str(c.component), {})
            counts[c.type.value] = counts.get(c.type.value, 0) + 1
        out.append(f("candidates", "candidates offered (per component and type)",
                     "yes" if ice.candidates else "no", per,
                     [x for x in lines if x.startswith("a=candidate")]))
        options = list(ice.options)
        out.append(f("ice.options", "a=ice-options (ice2, trickle)",
                     "yes" if options else "no", options,
                     [x for x in lines if x.startswith("a=ice-options")]))
        out.append(f("ice.pacing", "a=ice-pacing (RFC 8839 §5.5)",
                     "yes" if ice.pacing else "no", ice.pacing,
                     [x for x in lines if x.startswith("a=ice-pacing")]))
        ufrag, pwd = _raw_credentials(text) or (ice.ufrag, ice.pwd)
        ok = len(ufrag) >= 4 and len(pwd) >= 22
        out.append(f("credentials", "ufrag and pwd long enough (RFC 8839 §5.4)",
                     "yes" if ok else "no", {"ufrag": len(ufrag), "pwd": len(pwd)},
                     [x for x in lines if x.startswith(("a=ice-ufrag", "a=ice-pwd"))]))
        default = f"{_addr(audio.default_address)}"
        matching = next((c for c in ice.candidates if c.component == 1
                         and (c.address[0], c.address[1]) == audio.default_address), None)
        mismatch = has_ice_mismatch(audio)
        out.append(f("default_candidate", "c=/m= is one of the candidates",
                     "no" if mismatch else ("yes" if matching else "unknown"),
                     {"address": default, "type": matching.type.value if matching else None},
                     [x for x in lines if x.startswith(("m=", "c="))]))
        out.append(f("end_of_candidates", "a=end-of-candidates",
                     "yes" if ice.end_of_candidates else "no", ice.end_of_candidates))
    out.append(f("rtcp_mux", "a=rtcp-mux (one component)", "yes" if audio.rtcp_mux else "no",
                 audio.rtcp_mux, [x for x in text.splitlines() if "rtcp-mux" in x][:1]))
    rtcp_lines = [x for x in lines if x.startswith("a=rtcp:")]
    if audio.rtcp_mux:
        out.append(f("a_rtcp", "a=rtcp (RFC 3605) for the second component", "n/a",
                     None, rtcp_lines))
    else:
        out.append(f("a_rtcp", "a=rtcp (RFC 3605) for the second component",
                     "yes" if audio.rtcp is not None else "no",
                     _addr(audio.rtcp) if audio.rtcp is not None else None, rtcp_lines))
    out.append(f("ice_mismatch", "a=ice-mismatch in the answer",
                 "yes" if audio.ice_mismatch else "no", audio.ice_mismatch))
    return out


# --- 1. what the peer did on the wire ---------------------------------------------------------

def _role(m: _Stun) -> str | None:
    if Attr.ICE_CONTROLLING in m.attributes:
        return "controlling"
    if Attr.ICE_CONTROLLED in m.attributes:
        return "controlled"
    return None


def _responses_match(stun: Sequence[_Stun], origin: float, step: str) -> Finding:
    """RFC 8489 §6.3.1.1: a response carries the transaction ID of its request; one that
    matches none of ours cannot be used (our check is never answered)."""
    question = "its STUN responses carry our requests' transaction IDs"
    sent = {m.tid for m in stun if m.outgoing and m.cls is MessageClass.REQUEST}
    responses = [m for m in stun if not m.outgoing
                 and m.cls in (MessageClass.SUCCESS, MessageClass.ERROR)]
    stray = [m for m in responses if m.tid not in sent]
    if not responses:
        return Finding(step, "responses.match", question, "n/a", {"responses": 0})
    return Finding(step, "responses.match", question, "no" if stray else "yes",
                   {"responses": len(responses), "unmatched": len(stray)},
                   _evidence(_describe(m, origin) for m in stray[:4]))


def _nomination(stun: Sequence[_Stun], origin: float, step: str) -> Finding:
    """How the peer nominates while it claims the controlling role (RFC 8445 §8.1.1 regular:
    a check without, then one with USE-CANDIDATE on a pair that worked; RFC 5245 §8.1.1.2
    aggressive: USE-CANDIDATE on every check)."""
    question = "nomination style while controlling"
    controlling = [m for m in _peer_checks(stun) if _role(m) == "controlling"]
    if not controlling:
        return Finding(step, "nomination", question, "n/a", None,
                       ("the peer sent no check as the controlling agent",))
    flagged = [m for m in controlling if Attr.USE_CANDIDATE in m.attributes]
    if not flagged:
        return Finding(step, "nomination", question, "unknown",
                       {"style": "none seen", "checks": len(controlling)},
                       _evidence(_describe(m, origin) for m in controlling))
    first = flagged[0]
    before = [m for m in controlling if m.at < first.at]
    answered = any(m.outgoing and m.cls is MessageClass.SUCCESS and m.at <= first.at
                   for m in stun)
    style = "aggressive" if (not before or len(flagged) == len(controlling)) else (
        "regular" if answered else "unknown")
    return Finding(step, "nomination", question, "yes" if style != "unknown" else "unknown",
                   {"style": style, "checks": len(controlling), "use_candidate": len(flagged),
                    "first_use_candidate_ms": _ms(first.at - origin)},
                   _evidence([*(_describe(m, origin) for m in before[-3:]),
                              _describe(first, origin)]))


def analyze_wire(trace: CallTrace, step: str = "call", *, peer_role: str = "controlled"
                 ) -> list[Finding]:
    """The peer's checks (full agents send them, lite ones do not, RFC 8445 §2.5), their
    pacing, USE-CANDIDATE while controlled, its role attribute, SOFTWARE, RTP before ICE
    completed, the updated offer (RFC 5245 §9.1.3), keepalives (RFC 8445 §11) and consent
    checks (RFC 7675 §5.1). ``peer_role`` is the role the peer should have."""
    return _guarded(step, "wire", lambda: _wire(trace, step, peer_role))


def _wire(trace: CallTrace, step: str, peer_role: str) -> list[Finding]:
    origin = trace.started
    messages = _sip_messages(trace)
    stun, media = _datagrams(trace)
    answer = _first_answer(messages)
    answered_at = answer.at if answer is not None else None
    # The checking phase: consent checks on the selected pair come later (RFC 7675 §5.1).
    checks = [m for m in _peer_checks(stun) if trace.ice_completed_at is None
              or m.at <= trace.ice_completed_at + CHECK_GRACE]
    out: list[Finding] = []

    def f(key: str, question: str, status: str, value: Any = None,
          evidence: Iterable[str] = ()) -> None:
        out.append(Finding(step, key, question, status, value, _evidence(evidence)))

    f("checks.sent", "sends connectivity checks (a full agent)", "yes" if checks else "no",
      len(checks), (_describe(m, origin) for m in checks[:4]))
    if checks and answered_at is not None:
        f("checks.first", "first check after the 2xx (ms)", "yes",
          _ms(checks[0].at - answered_at),
          (f"{_t(answered_at, origin)} <- 2xx with the answer", _describe(checks[0], origin)))
    else:
        f("checks.first", "first check after the 2xx (ms)", "n/a" if not checks else "unknown")
    pacing = _median_interval([m.at for m in checks])
    f("checks.pacing", "median interval between its new checks (ms)",
      "yes" if pacing is not None else ("n/a" if not checks else "unknown"), _ms(pacing),
      (_describe(m, origin) for m in checks[:4]))
    in_role = [m for m in checks if _role(m) == peer_role]
    if peer_role == "controlled":
        flagged = [m for m in in_role if Attr.USE_CANDIDATE in m.attributes]
        f("checks.use_candidate_when_controlled",
          "puts USE-CANDIDATE on checks while controlled (it should not)",
          ("yes" if flagged else "no") if in_role else "n/a", len(flagged),
          (_describe(m, origin) for m in flagged))
    roles = Counter(r for r in (_role(m) for m in checks) if r is not None)
    if roles:
        f("checks.role", f"role attribute of its checks is {peer_role}",
          "yes" if set(roles) == {peer_role} else "no", dict(roles),
          (_describe(m, origin) for m in checks[:2]))
    else:
        f("checks.role", f"role attribute of its checks is {peer_role}", "n/a", {})
    if peer_role == "controlling":
        out.append(_nomination(stun, origin, step))
    out.append(_responses_match(stun, origin, step))
    servers = _server_transactions(stun)
    software = sorted({str(m.attributes[Attr.SOFTWARE]) for m in stun
                       if not m.outgoing and Attr.SOFTWARE in m.attributes
                       and m.tid not in servers})
    f("software", "SOFTWARE in its STUN messages", "yes" if software else "no", software)
    # RTP before ICE completed (RFC 8445 §12.1 lets it wait; many RFC 5245 UAs do not). No
    # agent can have completed before the first nomination (a USE-CANDIDATE check, ours or
    # its own): that is the reference, not our own completion, which a controlled peer may
    # reach a round trip earlier.
    rtp_in = [m for m in media if not m.outgoing and not m.rtcp]
    nominations = [m for m in stun if m.cls is MessageClass.REQUEST
                   and Attr.USE_CANDIDATE in m.attributes and m.tid not in servers]
    question = "sends RTP before ICE completed (before any nomination)"
    if not rtp_in:
        f("rtp_before_ice", question, "unknown", None, ("no RTP from the peer",))
    elif not nominations:
        f("rtp_before_ice", question, "yes", {"first_rtp_ms": _ms(rtp_in[0].at - origin)},
          (f"{_t(rtp_in[0].at, origin)} <- first RTP from {_addr(rtp_in[0].remote)}; no "
           f"nomination seen",))
    else:
        nominated = nominations[0]
        early = rtp_in[0].at < nominated.at
        f("rtp_before_ice", question, "yes" if early else "no",
          {"first_rtp_ms": _ms(rtp_in[0].at - origin),
           "first_nomination_ms": _ms(nominated.at - origin),
           "ice_completed_here_ms": _ms(trace.ice_completed_at - origin)
           if trace.ice_completed_at is not None else None},
          (f"{_t(rtp_in[0].at, origin)} <- first RTP from {_addr(rtp_in[0].remote)}",
           _describe(nominated, origin)))
    out.extend(_updated_offer(messages, trace, step))
    out.append(_updated_offer_answered(messages, trace, step))
    out.extend(_after_completion(stun, trace, step, messages))
    return out


def _updated_offer(messages: Sequence[_Sip], trace: CallTrace, step: str) -> list[Finding]:
    """RFC 5245 §9.1.3: an offer from the peer with a=remote-candidates after ICE completed."""
    origin = trace.started
    offers = [s for s in messages if not s.outgoing and isinstance(s.msg, Request)
              and s.msg.method in ("INVITE", "UPDATE") and s.msg.body]
    question = "sends an updated offer (a=remote-candidates) after ICE"
    evidence = []
    for s in offers:
        assert isinstance(s.msg, Request)
        body = _text(s.msg.body)
        if "a=remote-candidates" in body:
            evidence.append(f"{_t(s.at, origin)} <- {s.msg.method} with "
                            + "; ".join(x for x in _sdp_lines(body)
                                        if x.startswith(("a=remote-candidates", "c="))))
            base = trace.ice_completed_at if trace.ice_completed_at is not None else origin
            return [Finding(step, "updated_offer", question, "yes",
                            {"method": s.msg.method, "after_ice_ms": _ms(s.at - base)},
                            _evidence(evidence))]
        evidence.append(f"{_t(s.at, origin)} <- {s.msg.method} without a=remote-candidates")
    return [Finding(step, "updated_offer", question, "no", None, _evidence(evidence))]


def _updated_offer_answered(messages: Sequence[_Sip], trace: CallTrace, step: str
                            ) -> Finding:
    """Our own updated offer (RFC 5245 §9.1.3, sent when we control and the selected pair is
    not the default): does the peer answer it, and how fast?"""
    origin = trace.started
    question = "answers our updated offer (a=remote-candidates) with 2xx"
    ours = next((s for s in messages if s.outgoing and isinstance(s.msg, Request)
                 and s.msg.method in ("INVITE", "UPDATE")
                 and "a=remote-candidates" in _text(s.msg.body)), None)
    if ours is None:
        return Finding(step, "updated_offer_answered", question, "n/a", None,
                       ("we sent no updated offer (the selected pairs were the defaults)",))
    assert isinstance(ours.msg, Request)
    sent = f"{_t(ours.at, origin)} -> {ours.msg.method} with a=remote-candidates"
    response = _final_response(messages, ours)
    if response is None or not isinstance(response.msg, Response):
        return Finding(step, "updated_offer_answered", question, "no", None,
                       (sent, "no final response while the call lasted"))
    status = response.msg.status
    return Finding(step, "updated_offer_answered", question,
                   "yes" if 200 <= status < 300 else "no",
                   {"status": status, "after_ms": _ms(response.at - ours.at)},
                   (sent, f"{_t(response.at, origin)} <- {status}"))


def _restart_offer(messages: Sequence[_Sip]) -> tuple[_Sip | None, _Sip | None]:
    """(our first offer, our first later offer with other ICE credentials: a restart)."""
    invites = [s for s in messages if s.outgoing and isinstance(s.msg, Request)
               and s.msg.method == "INVITE" and s.msg.body]
    if not invites:
        return None, None
    initial = _ufrag_pwd(invites[0].msg.body)
    restart = next((s for s in invites[1:] if _ufrag_pwd(s.msg.body) not in (None, initial)),
                   None)
    return invites[0], restart


def _after_completion(stun: Sequence[_Stun], trace: CallTrace, step: str,
                      messages: Sequence[_Sip]) -> list[Finding]:
    """Keepalive indications (RFC 8445 §11) and consent requests (RFC 7675 §5.1) from the peer
    once ICE completed here and until an ICE restart, on the selected pairs when known."""
    origin = trace.started
    if trace.ice_completed_at is None:
        return [Finding(step, "keepalive", "Binding indications (keepalive) interval (ms)",
                        "n/a", None, ("ICE did not complete",)),
                Finding(step, "consent", "consent checks on the selected pair interval (ms)",
                        "n/a", None,
                        ("ICE did not complete",))]
    _, restart = _restart_offer(messages)
    last = max((r.at for r in trace.datagrams), default=trace.ice_completed_at)
    end = restart.at if restart is not None else last
    after = [m for m in stun if not m.outgoing
             and trace.ice_completed_at + CHECK_GRACE < m.at <= end]
    selected = {(tuple(a), tuple(b)) for a, b in trace.selected}
    indications = [m for m in after if m.cls is MessageClass.INDICATION]
    requests = [m for m in _peer_checks(after)
                if not selected or (m.local, m.remote) in selected]
    window = round(max(0.0, end - trace.ice_completed_at), 1)
    out = []
    for key, question, items in (
            ("keepalive", "Binding indications (keepalive) interval (ms)", indications),
            ("consent", "consent checks on the selected pair interval (ms)", requests)):
        median = _median_per_flow(items)
        out.append(Finding(step, key, question, "yes" if median is not None else "unknown",
                           {"count": len(items), "median_interval_ms": _ms(median),
                            "window_s": window},
                           _evidence(_describe(m, origin) for m in items)))
    return out


def analyze_call(trace: CallTrace, step: str = "call") -> list[Finding]:
    """Step 1: the answer's SDP and the wire, the peer being the controlled answerer."""
    messages = _sip_messages(trace)
    answer = _first_answer(messages)
    body = answer.msg.body if answer is not None and answer.msg.body else None
    return [*analyze_answer(body, step), *analyze_wire(trace, step)]


# --- 2. ICE restart -----------------------------------------------------------------------------

def _raw_credentials(text: str) -> tuple[str, str] | None:
    """a=ice-ufrag/a=ice-pwd as written: of the first m=audio section, else the session's.

    Read from the text, not from the parsed description: a generic SDP grammar may take a
    ufrag such as ``200e2443`` for a number (RFC 8839 §5.4 allows any ice-char)."""
    found: dict[str, dict[str, str]] = {"session": {}, "audio": {}}
    where: str | None = "session"
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            where = "audio" if line.startswith("m=audio") and not found["audio"] else None
            continue
        for name in ("ice-ufrag", "ice-pwd"):
            if where is not None and line.startswith(f"a={name}:"):
                found[where].setdefault(name, line.split(":", 1)[1].strip())
    ufrag = found["audio"].get("ice-ufrag") or found["session"].get("ice-ufrag")
    pwd = found["audio"].get("ice-pwd") or found["session"].get("ice-pwd")
    return (ufrag, pwd) if ufrag and pwd else None


def _ufrag_pwd(body: bytes) -> tuple[str, str] | None:
    return _raw_credentials(_text(body))


def analyze_restart(trace: CallTrace, step: str = "restart") -> list[Finding]:
    """RFC 8445 §9, RFC 8839 §4.4.1.1.1: our re-INVITE with new credentials; does the answer
    carry new ones too, and do the peer's checks start again with our new ufrag?"""
    return _guarded(step, "restart", lambda: _restart(trace, step))


def _restart(trace: CallTrace, step: str) -> list[Finding]:
    origin = trace.started
    messages = _sip_messages(trace)
    first, restart = _restart_offer(messages)
    first_answer = _first_answer(messages)
    if first is None or first_answer is None:
        return [Finding(step, "restart", "ICE restart answered", "unknown", None,
                        ("no initial offer/answer recorded",))]
    if restart is None:
        return [Finding(step, "restart", "ICE restart answered", "unknown", None,
                        ("no re-INVITE with new credentials was sent",))]
    ours = _ufrag_pwd(restart.msg.body)
    assert ours is not None
    response = _final_response(messages, restart)
    out: list[Finding] = []
    offer_line = f"{_t(restart.at, origin)} -> re-INVITE with a=ice-ufrag:{ours[0]}"
    if response is None or not isinstance(response.msg, Response):
        return [Finding(step, "restart.answered", "restart re-INVITE answered with 2xx",
                        "no", None, (offer_line, "no final response"))]
    status = response.msg.status
    out.append(Finding(step, "restart.answered", "restart re-INVITE answered with 2xx",
                       "yes" if 200 <= status < 300 else "no", status,
                       (offer_line, f"{_t(response.at, origin)} <- {status}")))
    if not 200 <= status < 300:
        return out
    before = _ufrag_pwd(first_answer.msg.body) if first_answer.msg.body else None
    after = _ufrag_pwd(response.msg.body) if response.msg.body else None
    if after is None:
        out.append(Finding(step, "restart.new_credentials", "answer has new ufrag/pwd",
                           "unknown", None, ("the answer has no ICE credentials",)))
    else:
        new = before is None or (after[0] != before[0] and after[1] != before[1])
        out.append(Finding(step, "restart.new_credentials", "answer has new ufrag/pwd",
                           "yes" if new else "no",
                           {"before": before[0] if before else None, "after": after[0]},
                           (f"before: a=ice-ufrag:{before[0] if before else '?'}",
                            f"after: a=ice-ufrag:{after[0]}")))
    stun, _ = _datagrams(trace)
    fresh = [m for m in _peer_checks(stun) if m.at >= restart.at
             and str(m.attributes.get(Attr.USERNAME, "")).startswith(f"{ours[0]}:")]
    out.append(Finding(step, "restart.checks", "its checks start again with our new ufrag",
                       "yes" if fresh else "no",
                       {"count": len(fresh),
                        "first_after_offer_ms": _ms(fresh[0].at - restart.at) if fresh
                        else None},
                       _evidence(_describe(m, origin) for m in fresh[:3])))
    return out


# --- 3. role conflict -----------------------------------------------------------------------

def analyze_role_conflict(trace: CallTrace, step: str = "role-conflict") -> list[Finding]:
    """RFC 8445 §7.3.1.1: we offered claiming the controlled role with ``trace.tie_breaker``,
    so both agents are controlled. A controlled agent receiving ICE-CONTROLLED switches to
    controlling when its tie-breaker is larger or equal, else answers 487 (Role Conflict)."""
    return _guarded(step, "role_conflict", lambda: _role_conflict(trace, step))


def _role_conflict(trace: CallTrace, step: str) -> list[Finding]:
    origin = trace.started
    stun, _ = _datagrams(trace)
    checks = _peer_checks(stun)
    ours = [m for m in stun if m.outgoing and m.cls is MessageClass.REQUEST
            and not _is_stun_server_exchange(m)]
    errors = [m for m in stun if not m.outgoing and m.cls is MessageClass.ERROR
              and isinstance(m.attributes.get(Attr.ERROR_CODE), tuple)
              and m.attributes[Attr.ERROR_CODE][0] == 487]
    ours_487 = [m for m in stun if m.outgoing and m.cls is MessageClass.ERROR
                and isinstance(m.attributes.get(Attr.ERROR_CODE), tuple)
                and m.attributes[Attr.ERROR_CODE][0] == 487]
    theirs: int | None = None
    for m in checks:
        value = m.attributes.get(Attr.ICE_CONTROLLED, m.attributes.get(Attr.ICE_CONTROLLING))
        if isinstance(value, int):
            theirs = value
            break
    switched = [m for m in checks if _role(m) == "controlling"]
    out: list[Finding] = []
    claimed = Counter(r for r in (_role(m) for m in ours) if r is not None)
    out.append(_responses_match(stun, origin, step))
    out.append(Finding(step, "our_role", "we claimed the controlled role",
                       "yes" if "controlled" in claimed else "unknown",
                       {"tie_breaker": trace.tie_breaker, "claims": dict(claimed)},
                       _evidence(_describe(m, origin) for m in ours[:1])))
    claimed_by = {m.tid: _role(m) for m in ours}
    stray = [m for m in errors if m.tid not in claimed_by]
    out.append(Finding(step, "487", "answers our checks with 487 (Role Conflict)",
                       "yes" if errors else "no",
                       {"count": len(errors), "unmatched": len(stray),
                        "to_our_controlled": sum(1 for m in errors
                                                 if claimed_by.get(m.tid) == "controlled"),
                        "to_our_controlling": sum(1 for m in errors
                                                  if claimed_by.get(m.tid) == "controlling")},
                       _evidence(_describe(m, origin) for m in errors[:3])))
    out.append(Finding(step, "switched", "switches to the controlling role",
                       "yes" if switched else "no",
                       {"first_ms": _ms(switched[0].at - origin) if switched else None,
                        "after_our_487": bool(ours_487)},
                       _evidence([*(_describe(m, origin) for m in ours_487[:1]),
                                  *(_describe(m, origin) for m in switched[:2])])))
    # What RFC 8445 §7.3.1.1 asks of it when our check arrives.
    expected: str | None = None
    if theirs is not None and trace.tie_breaker is not None:
        expected = "switch" if theirs >= trace.tie_breaker else "487"
    if expected is None:
        verdict = "unknown"
    elif expected == "487":
        # Only a 487 that answers one of our checks counts (RFC 8489 §6.3.1.1).
        usable = len(errors) > len(stray)
        verdict = "yes" if usable or (not switched and trace.ice_completed_at is not None) \
            else "no"
    else:
        verdict = "yes" if switched else "no"
    out.append(Finding(step, "as_rfc", "resolves the conflict as RFC 8445 §7.3.1.1 says",
                       verdict, {"expected": expected, "their_tie_breaker": theirs,
                                 "our_tie_breaker": trace.tie_breaker}))
    out.append(Finding(step, "connected", "the call still connects (ICE completed)",
                       "yes" if trace.ice_completed_at is not None else "no",
                       _ms(trace.ice_completed_at - origin)
                       if trace.ice_completed_at is not None else None))
    out.append(_nomination(stun, origin, step))
    if switched:
        # In control now, an RFC 5245 peer re-offers the selected candidates (§9.1.3).
        out.extend(_updated_offer(_sip_messages(trace), trace, step))
    return out


# --- 4. ice-mismatch --------------------------------------------------------------------------

def analyze_mismatch(trace: CallTrace, step: str = "mismatch") -> list[Finding]:
    """RFC 8839 §4.4.1.1 / RFC 5245 §5.1: our offer's default candidate matched no
    a=candidate; the answerer should answer a=ice-mismatch and use no ICE."""
    return _guarded(step, "mismatch", lambda: _mismatch(trace, step))


def _mismatch(trace: CallTrace, step: str) -> list[Finding]:
    origin = trace.started
    messages = _sip_messages(trace)
    invite = next((s for s in messages if s.outgoing and isinstance(s.msg, Request)
                   and s.msg.method == "INVITE"), None)
    response = _final_response(messages, invite) if invite is not None else None
    offer_lines = _sdp_lines(_text(invite.msg.body))[:2] if invite is not None else []
    if response is None or not isinstance(response.msg, Response):
        return [Finding(step, "answered", "answers the mismatched offer", "unknown", None,
                        ("no final response",))]
    status = response.msg.status
    if not 200 <= status < 300:
        return [Finding(step, "answered", "answers the mismatched offer", "no", status,
                        (*offer_lines, f"{_t(response.at, origin)} <- {status}"))]
    body = response.msg.body
    try:
        audio = _audio(body)
    except SdpError as exc:
        return [Finding(step, "answered", "answers the mismatched offer", "unknown", status,
                        (str(exc),))]
    lines = [x for x in _sdp_lines(_text(body)) if not x.startswith("a=candidate")]
    attr = [x for x in _text(body).splitlines() if "ice-mismatch" in x]
    stun, _ = _datagrams(trace)
    checks = _peer_checks(stun)
    if audio.ice_mismatch:
        behaviour = "a=ice-mismatch"
    elif audio.ice is None:
        behaviour = "answered without ICE"
    else:
        behaviour = "answered with ICE (mismatch not noticed)"
    return [
        Finding(step, "answered", "answers the mismatched offer", "yes", status),
        Finding(step, "ice_mismatch", "answers a=ice-mismatch", "yes" if audio.ice_mismatch
                else "no", behaviour, _evidence([*offer_lines, *attr, *lines[:3]])),
        Finding(step, "no_ice", "falls back to no ICE (no checks)",
                "yes" if not checks and (audio.ice is None or audio.ice_mismatch) else "no",
                {"checks": len(checks)},
                _evidence(_describe(m, origin) for m in checks[:3])),
    ]
