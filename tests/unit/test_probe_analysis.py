"""The probe's analysis (sipua/probe_analysis.py) on synthetic records with literal times: SDP
answers (full, lite, two components, no ICE), the peer's checks (pacing, nomination style,
USE-CANDIDATE while controlled), keepalive and consent intervals, the updated offer, restart
detection, role-conflict handling, ice-mismatch answers, and garbage that must come out as
"unknown", never as an exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ice.stun import Attr, Message, MessageClass, Method, encode_channel_data
from sipua.probe_analysis import (
    STATUSES,
    CallTrace,
    DatagramRecord,
    Finding,
    SipRecord,
    analyze_answer,
    analyze_call,
    analyze_mismatch,
    analyze_restart,
    analyze_role_conflict,
    analyze_wire,
    peer_software,
)

CALL_ID = "probe-call-1"
US = ("127.0.0.1", 40000)
PEER = ("127.0.0.1", 50000)
PEER_SIP = ("127.0.0.1", 5062)


def sdp(*, ufrag: str = "peerufrag", pwd: str = "p" * 24, lite: bool = False,
        mux: bool = True, port: int = 50000, ice: bool = True, extra: str = "",
        candidates: str | None = None) -> bytes:
    """An answer like the ones peers send; ``candidates`` replaces the default lines."""
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0"]
    if lite:
        lines.append("a=ice-lite")
    lines.append(f"m=audio {port} RTP/AVP 0")
    lines.append("a=rtpmap:0 PCMU/8000")
    if mux:
        lines.append("a=rtcp-mux")
    else:
        lines.append(f"a=rtcp:{port + 1} IN IP4 127.0.0.1")
    if ice:
        lines += [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}"]
        if candidates is None:
            lines.append(f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host")
            if not mux:
                lines.append(f"a=candidate:1 2 udp 2130706430 127.0.0.1 {port + 1} typ host")
        else:
            lines += candidates.splitlines()
    if extra:
        lines += extra.splitlines()
    return ("\r\n".join(lines) + "\r\n").encode()


def request(method: str, cseq: int, body: bytes = b"", *, call_id: str = CALL_ID,
            agent: str = "peer-ua/1.0") -> bytes:
    head = (f"{method} sip:bob@127.0.0.1:5062 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{cseq}{method}\r\n"
            f"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>;tag=b\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nUser-Agent: {agent}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def response(status: int, cseq: int, method: str = "INVITE", body: bytes = b"", *,
             call_id: str = CALL_ID, server: str = "peer-ua/1.0") -> bytes:
    head = (f"SIP/2.0 {status} Whatever\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{cseq}{method}\r\n"
            f"From: <sip:alice@127.0.0.1>;tag=a\r\nTo: <sip:bob@127.0.0.1>;tag=b\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nServer: {server}\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def stun(cls: MessageClass, tid: int, **attrs: Any) -> bytes:
    names = {"username": Attr.USERNAME, "controlling": Attr.ICE_CONTROLLING,
             "controlled": Attr.ICE_CONTROLLED, "use_candidate": Attr.USE_CANDIDATE,
             "error": Attr.ERROR_CODE, "software": Attr.SOFTWARE, "priority": Attr.PRIORITY}
    attributes: dict[int, Any] = {names[k]: v for k, v in attrs.items()}
    return Message(Method.BINDING, cls, tid.to_bytes(12, "big"), attributes).encode()


def inbound(at: float, data: bytes, *, local: tuple[str, int] = US,
            remote: tuple[str, int] = PEER) -> DatagramRecord:
    return DatagramRecord(at, False, local, remote, data)


def outbound(at: float, data: bytes) -> DatagramRecord:
    return DatagramRecord(at, True, US, PEER, data)


def base_sip(answer: bytes, *, at: float = 0.2) -> tuple[SipRecord, ...]:
    """Our INVITE at 0.0 (our ufrag "ourufrag") and the peer's 200 OK with ``answer``."""
    offer = sdp(ufrag="ourufrag", port=40000)
    return (SipRecord(0.0, True, request("INVITE", 1, offer)),
            SipRecord(at, False, response(200, 1, body=answer)))


def one(findings: list[Finding], key: str, step: str | None = None) -> Finding:
    found = [f for f in findings if f.key == key and (step is None or f.step == step)]
    assert len(found) == 1, (key, findings)
    return found[0]


def check(at: float, tid: int, *, role: str = "controlled", use: bool = False,
          username: str = "ourufrag:peerufrag", tie: int = 5) -> DatagramRecord:
    attrs: dict[str, Any] = {"username": username, role: tie, "priority": 100}
    if use:
        attrs["use_candidate"] = True
    return inbound(at, stun(MessageClass.REQUEST, tid, **attrs))


# --- the answer -------------------------------------------------------------------------------

def test_full_agent_answer_with_mux_and_options() -> None:
    """A full agent's answer: ICE yes ("full"), host and srflx on component 1, rtcp-mux,
    ice2 in a=ice-options, its a=ice-pacing, long enough credentials, c=/m= on a candidate,
    end-of-candidates."""
    answer = sdp(candidates="a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\n"
                            "a=candidate:2 1 udp 1694498815 192.0.2.1 50000 typ srflx "
                            "raddr 127.0.0.1 rport 50000",
                 extra="a=ice-options:ice2\na=ice-pacing:25\na=end-of-candidates")
    found = analyze_answer(answer)
    assert one(found, "ice").status == "yes" and one(found, "ice").value == "full"
    assert one(found, "ice.lite").status == "no"
    assert one(found, "candidates").value == {"1": {"host": 1, "srflx": 1}}
    assert one(found, "rtcp_mux").status == "yes"
    assert one(found, "a_rtcp").status == "n/a"
    assert one(found, "ice.options").value == ["ice2"]
    assert one(found, "ice.pacing").status == "yes" and one(found, "ice.pacing").value == 25
    assert one(found, "credentials").status == "yes"
    assert one(found, "credentials").value == {"ufrag": 9, "pwd": 24}
    assert one(found, "default_candidate").status == "yes"
    assert one(found, "default_candidate").value["type"] == "host"
    assert one(found, "end_of_candidates").status == "yes"
    assert any("a=candidate" in e for e in one(found, "candidates").evidence)


def test_lite_two_component_answer_and_short_credentials() -> None:
    """a=ice-lite, two components with a=rtcp, a 3-character ufrag (RFC 8839 §5.4 wants 4)."""
    found = analyze_answer(sdp(lite=True, mux=False, ufrag="abc"))
    assert one(found, "ice").value == "lite"
    assert one(found, "ice.lite").status == "yes"
    assert one(found, "candidates").value == {"1": {"host": 1}, "2": {"host": 1}}
    assert one(found, "rtcp_mux").status == "no"
    assert one(found, "a_rtcp").status == "yes" and one(found, "a_rtcp").value == \
        "127.0.0.1:50001"
    assert one(found, "credentials").status == "no"
    assert one(found, "ice.options").status == "no"
    assert one(found, "ice.pacing").status == "no"
    assert one(found, "end_of_candidates").status == "no"


def test_answer_without_ice() -> None:
    """No ICE attributes: ICE "no"/"none", the ICE-only questions are n/a."""
    found = analyze_answer(sdp(ice=False))
    assert one(found, "ice").status == "no" and one(found, "ice").value == "none"
    for key in ("ice.lite", "candidates", "credentials", "default_candidate"):
        assert one(found, key).status == "n/a"


def test_default_candidate_off_the_candidates_is_reported() -> None:
    """c=/m= that is none of the candidates (an ALG rewrote it): default_candidate "no"."""
    answer = sdp(port=50000, candidates="a=candidate:1 1 udp 2130706431 127.0.0.1 50010 "
                                        "typ host")
    assert one(analyze_answer(answer), "default_candidate").status == "no"


# --- the wire -----------------------------------------------------------------------------------

def test_full_controlled_peer_checks_pacing_and_rtp() -> None:
    """A controlled full peer: first check 100 ms after the 2xx, 20 ms pacing (retransmissions
    not counted), no USE-CANDIDATE, ICE-CONTROLLED, SOFTWARE, no RTP before our nomination."""
    records = (check(0.30, 1), check(0.32, 2), check(0.34, 3), check(0.50, 1),
               inbound(0.31, stun(MessageClass.SUCCESS, 99, software="peer-stack 2")),
               outbound(0.45, stun(MessageClass.REQUEST, 98, username="peerufrag:ourufrag",
                                   controlling=9, use_candidate=True)),
               inbound(0.60, b"\x80\x00" + bytes(30)))
    trace = CallTrace(0.0, base_sip(sdp()), records, CALL_ID, frozenset({US}), 0.55)
    found = analyze_wire(trace)
    assert one(found, "checks.sent").status == "yes" and one(found, "checks.sent").value == 3
    assert one(found, "checks.first").value == 100.0
    assert one(found, "checks.pacing").value == 20.0
    assert one(found, "checks.use_candidate_when_controlled").status == "no"
    assert one(found, "checks.role").status == "yes"
    assert one(found, "software").value == ["peer-stack 2"]
    rtp = one(found, "rtp_before_ice")
    assert rtp.status == "no" and rtp.value["first_nomination_ms"] == 450.0


def test_lite_peer_sends_no_checks_and_early_rtp_is_seen() -> None:
    """A lite peer sends no checks (pacing and role n/a); its RTP before completion is "yes"."""
    trace = CallTrace(0.0, base_sip(sdp(lite=True)), (inbound(0.25, b"\x80" + bytes(20)),),
                      CALL_ID, frozenset({US}), 0.4)
    found = analyze_call(trace)
    assert one(found, "ice").value == "lite"
    assert one(found, "checks.sent").status == "no"
    assert one(found, "checks.pacing").status == "n/a"
    assert one(found, "checks.role").status == "n/a"
    assert one(found, "rtp_before_ice").status == "yes"


def test_use_candidate_while_controlled_is_flagged() -> None:
    """A controlled peer that puts USE-CANDIDATE on its checks is reported ("yes", count)."""
    trace = CallTrace(0.0, base_sip(sdp()), (check(0.3, 1, use=True), check(0.4, 2)),
                      CALL_ID, frozenset({US}), 0.5)
    finding = one(analyze_wire(trace), "checks.use_candidate_when_controlled")
    assert finding.status == "yes" and finding.value == 1
    assert "USE-CANDIDATE" in finding.evidence[0]


def test_regular_and_aggressive_nomination() -> None:
    """Controlling checks: one without USE-CANDIDATE, our success, then one with it is
    regular; USE-CANDIDATE on every check from the first is aggressive."""
    regular = (check(0.3, 1, role="controlling"),
               outbound(0.31, stun(MessageClass.SUCCESS, 1)),
               check(0.4, 2, role="controlling", use=True))
    trace = CallTrace(0.0, base_sip(sdp()), regular, CALL_ID, frozenset({US}), 0.5)
    nomination = one(analyze_wire(trace, peer_role="controlling"), "nomination")
    assert nomination.value["style"] == "regular" and nomination.status == "yes"
    assert nomination.value["first_use_candidate_ms"] == 400.0
    aggressive = (check(0.3, 1, role="controlling", use=True),
                  check(0.32, 2, role="controlling", use=True))
    trace = CallTrace(0.0, base_sip(sdp()), aggressive, CALL_ID, frozenset({US}), 0.5)
    assert one(analyze_wire(trace, peer_role="controlling"),
               "nomination").value["style"] == "aggressive"


def test_keepalive_and_consent_intervals() -> None:
    """After completion: consent requests on the selected pair every ~1 s (median), one
    keepalive indication only ("unknown": fewer than two); checks before completion and on
    other pairs do not count as consent, consent checks do not count as checks."""
    other = ("127.0.0.1", 50002)
    records = (check(0.3, 1), check(1.5, 10), check(2.5, 11), check(3.6, 12),
               inbound(2.0, stun(MessageClass.REQUEST, 13, username="o:p"), remote=other),
               inbound(2.2, stun(MessageClass.INDICATION, 20)))
    trace = CallTrace(0.0, base_sip(sdp()), records, CALL_ID, frozenset({US}), 0.5,
                      selected=((US, PEER),))
    found = analyze_wire(trace)
    consent = one(found, "consent")
    assert consent.status == "yes"
    assert consent.value["count"] == 3 and consent.value["median_interval_ms"] == 1050.0
    keepalive = one(found, "keepalive")
    assert keepalive.status == "unknown" and keepalive.value["count"] == 1
    assert one(found, "checks.sent").value == 1  # consent checks are not connectivity checks


def test_updated_offer_after_ice() -> None:
    """A re-INVITE from the peer with a=remote-candidates 300 ms after completion: "yes",
    method and delay; without one: "no"."""
    reoffer = sdp(extra="a=remote-candidates:1 127.0.0.1 40000")
    sip = (*base_sip(sdp()), SipRecord(0.8, False, request("INVITE", 7, reoffer)))
    trace = CallTrace(0.0, sip, (), CALL_ID, frozenset({US}), 0.5)
    finding = one(analyze_wire(trace), "updated_offer")
    assert finding.status == "yes"
    assert finding.value == {"method": "INVITE", "after_ice_ms": 300.0}
    plain = CallTrace(0.0, base_sip(sdp()), (), CALL_ID, frozenset({US}), 0.5)
    assert one(analyze_wire(plain), "updated_offer").status == "no"


def test_other_calls_and_sockets_are_ignored() -> None:
    """SIP of another Call-ID and datagrams on another socket do not count."""
    stranger = SipRecord(0.3, False, request("INVITE", 9, sdp(extra="a=remote-candidates:1 "
                                                                    "1.2.3.4 5"),
                                             call_id="other"))
    records = (check(0.3, 1, use=True),)
    elsewhere = tuple(DatagramRecord(r.at, r.outgoing, ("127.0.0.1", 1), r.remote, r.data)
                      for r in records)
    trace = CallTrace(0.0, (*base_sip(sdp()), stranger), elsewhere, CALL_ID,
                      frozenset({US}), 0.5)
    found = analyze_wire(trace)
    assert one(found, "updated_offer").status == "no"
    assert one(found, "checks.sent").status == "no"


def test_checks_relayed_through_turn_are_unwrapped() -> None:
    """A check inside ChannelData from the TURN server still counts as the peer's check."""
    inner = stun(MessageClass.REQUEST, 5, username="ourufrag:peerufrag", controlled=3)
    record = inbound(0.3, encode_channel_data(0x4000, inner), remote=("10.0.0.1", 3478))
    trace = CallTrace(0.0, base_sip(sdp()), (record,), CALL_ID, frozenset({US}), 0.5)
    finding = one(analyze_wire(trace), "checks.sent")
    assert finding.value == 1 and "via TURN" in finding.evidence[0]


# --- restart ------------------------------------------------------------------------------------

def restart_sip(answer_ufrag: str) -> tuple[SipRecord, ...]:
    return (*base_sip(sdp(ufrag="peerufrag")),
            SipRecord(5.0, True, request("INVITE", 2, sdp(ufrag="newours", port=40000))),
            SipRecord(5.1, False, response(200, 2, body=sdp(ufrag=answer_ufrag,
                                                             pwd="q" * 24))))


def test_restart_with_new_credentials_and_checks() -> None:
    """The answer to our restart has new credentials and the peer checks with our new ufrag
    350 ms after our offer."""
    trace = CallTrace(0.0, restart_sip("peernew"),
                      (check(5.35, 40, username="newours:peernew"),), CALL_ID,
                      frozenset({US}), 0.5)
    found = analyze_restart(trace)
    assert one(found, "restart.answered").status == "yes"
    assert one(found, "restart.new_credentials").status == "yes"
    assert one(found, "restart.new_credentials").value == {"before": "peerufrag",
                                                           "after": "peernew"}
    checks = one(found, "restart.checks")
    assert checks.status == "yes" and checks.value["first_after_offer_ms"] == 350.0


def test_restart_answered_with_old_credentials() -> None:
    """An answer that keeps its old ufrag/pwd and no checks with our new ufrag: both "no"."""
    records = (SipRecord(0.0, True, request("INVITE", 1, sdp(ufrag="ourufrag"))),
               SipRecord(0.2, False, response(200, 1, body=sdp(ufrag="same", pwd="s" * 24))),
               SipRecord(5.0, True, request("INVITE", 2, sdp(ufrag="newours"))),
               SipRecord(5.1, False, response(200, 2, body=sdp(ufrag="same", pwd="s" * 24))))
    trace = CallTrace(0.0, records, (check(5.3, 41, username="ourufrag:same"),), CALL_ID,
                      frozenset({US}), 0.5)
    found = analyze_restart(trace)
    assert one(found, "restart.new_credentials").status == "no"
    assert one(found, "restart.checks").status == "no"


def test_restart_refused() -> None:
    """A 488 to the restart re-INVITE: restart.answered "no" with the status."""
    records = (*base_sip(sdp()),
               SipRecord(5.0, True, request("INVITE", 2, sdp(ufrag="newours"))),
               SipRecord(5.1, False, response(488, 2)))
    finding = one(analyze_restart(CallTrace(0.0, records, (), CALL_ID)), "restart.answered")
    assert finding.status == "no" and finding.value == 488


# --- role conflict -----------------------------------------------------------------------------

def our_check(at: float, tid: int, tie: int) -> DatagramRecord:
    return outbound(at, stun(MessageClass.REQUEST, tid, username="peerufrag:ourufrag",
                             controlled=tie))


def test_role_conflict_we_win_peer_answers_487() -> None:
    """Our tie-breaker is the largest: the controlled peer must answer 487 (RFC 8445
    §7.3.1.1); it did, and the call connected."""
    tie = 2**64 - 1
    records = (our_check(0.3, 1, tie),
               inbound(0.31, stun(MessageClass.ERROR, 1, error=(487, "Role Conflict"))),
               check(0.32, 2, tie=77), outbound(0.33, stun(MessageClass.SUCCESS, 2)))
    trace = CallTrace(0.0, base_sip(sdp()), records, CALL_ID, frozenset({US}), 0.6,
                      tie_breaker=tie)
    found = analyze_role_conflict(trace, "role-conflict-win")
    assert one(found, "our_role").status == "yes"
    assert one(found, "487").status == "yes"
    assert one(found, "487").value == {"count": 1, "unmatched": 0, "to_our_controlled": 1,
                                       "to_our_controlling": 0}
    assert one(found, "responses.match").status == "yes"
    assert one(found, "switched").status == "no"
    verdict = one(found, "as_rfc")
    assert verdict.status == "yes" and verdict.value["expected"] == "487"
    assert verdict.value["their_tie_breaker"] == 77
    assert one(found, "connected").status == "yes"


def test_role_conflict_we_lose_peer_switches_and_nominates() -> None:
    """Our tie-breaker is 0: the peer must take the controlling role; it switches after its
    first check and nominates regularly; the call connects."""
    records = (our_check(0.3, 1, 0), check(0.31, 2, tie=77),
               check(0.40, 3, role="controlling", tie=77),
               outbound(0.41, stun(MessageClass.SUCCESS, 3)),
               check(0.50, 4, role="controlling", tie=77, use=True))
    trace = CallTrace(0.0, base_sip(sdp()), records, CALL_ID, frozenset({US}), 0.6,
                      tie_breaker=0)
    found = analyze_role_conflict(trace, "role-conflict-lose")
    assert one(found, "switched").status == "yes"
    assert one(found, "487").status == "no"
    assert one(found, "as_rfc").status == "yes"
    assert one(found, "as_rfc").value["expected"] == "switch"
    assert one(found, "nomination").value["style"] == "regular"
    assert one(found, "updated_offer").status == "no"  # asked once it controls


def test_role_conflict_ignored_is_not_as_the_rfc_says() -> None:
    """Peer with the smaller tie-breaker neither answers 487 nor switches, and nothing
    connects: as_rfc "no", connected "no"."""
    tie = 2**64 - 1
    records = (our_check(0.3, 1, tie), check(0.31, 2, tie=77))
    trace = CallTrace(0.0, base_sip(sdp()), records, CALL_ID, frozenset({US}), None,
                      tie_breaker=tie)
    found = analyze_role_conflict(trace)
    assert one(found, "as_rfc").status == "no"
    assert one(found, "connected").status == "no"


# --- ice-mismatch ------------------------------------------------------------------------------

def mismatch_trace(answer: bytes, status: int = 200,
                   records: tuple[DatagramRecord, ...] = ()) -> CallTrace:
    sip = (SipRecord(0.0, True, request("INVITE", 1, sdp(ufrag="ourufrag", port=40002))),
           SipRecord(0.2, False, response(status, 1, body=answer)))
    return CallTrace(0.0, sip, records, CALL_ID, frozenset({US}), None)


def test_mismatch_answered_with_ice_mismatch() -> None:
    """a=ice-mismatch in the answer: "yes"; no checks: falls back to no ICE."""
    found = analyze_mismatch(mismatch_trace(sdp(extra="a=ice-mismatch", candidates="")))
    assert one(found, "ice_mismatch").status == "yes"
    assert any("ice-mismatch" in e for e in one(found, "ice_mismatch").evidence)
    assert one(found, "no_ice").status == "yes"


def test_mismatch_not_noticed_or_rejected() -> None:
    """An answer with ICE and checks: mismatch not noticed; a 488: answered "no"."""
    found = analyze_mismatch(mismatch_trace(sdp(), records=(check(0.3, 1),)))
    assert one(found, "ice_mismatch").status == "no"
    assert one(found, "ice_mismatch").value == "answered with ICE (mismatch not noticed)"
    assert one(found, "no_ice").status == "no"
    rejected = analyze_mismatch(mismatch_trace(b"", status=488))
    assert one(rejected, "answered").status == "no" and one(rejected, "answered").value == 488


def test_peer_software_from_server_header() -> None:
    """The peer's Server header of the 2xx names it."""
    trace = CallTrace(0.0, base_sip(sdp()), (), CALL_ID)
    assert peer_software([trace]) == "peer-ua/1.0"


# --- garbage ------------------------------------------------------------------------------------

def test_missing_answer_is_unknown() -> None:
    """No 2xx at all: the answer questions are "unknown", not an exception."""
    found = analyze_call(CallTrace(0.0, (SipRecord(0.0, True, b"garbage"),), (), CALL_ID))
    assert one(found, "sdp").status == "unknown"
    assert analyze_answer(b"not sdp")[0].status == "unknown"


@settings(max_examples=60, deadline=None)
@given(sip=st.lists(st.tuples(st.floats(0, 10), st.booleans(), st.binary(max_size=300)),
                    max_size=5),
       grams=st.lists(st.tuples(st.floats(0, 10), st.booleans(),
                                st.one_of(st.binary(max_size=80),
                                          st.binary(min_size=20, max_size=80).map(
                                              lambda b: b"\x00\x01\x00\x00\x21\x12\xa4\x42"
                                              + b[8:]))), max_size=8),
       body=st.one_of(st.none(), st.binary(max_size=200), st.text(max_size=200)))
def test_garbage_gives_findings_never_exceptions(
        sip: list[tuple[float, bool, bytes]], grams: list[tuple[float, bool, bytes]],
        body: bytes | str | None) -> None:
    """Random SIP records, datagrams (some with a STUN header) and SDP bodies: every analysis
    returns findings with valid statuses."""
    trace = CallTrace(0.0, tuple(SipRecord(*s) for s in sip),
                      tuple(DatagramRecord(a, o, US, PEER, d) for a, o, d in grams), None,
                      None, 1.0, tie_breaker=3)
    results = [*analyze_call(trace), *analyze_restart(trace), *analyze_role_conflict(trace),
               *analyze_mismatch(trace), *analyze_answer(body),
               *analyze_wire(trace, peer_role="controlling")]
    assert results
    assert all(f.status in STATUSES for f in results)
    peer_software([trace])


def test_challenged_invite_and_stun_server_software() -> None:
    """A proxy challenges the INVITE (407) and the 2xx answers the authenticated one: the
    answer is still found, for the call and for the mismatch step; SOFTWARE of a STUN server
    answering our gathering request is not the peer's."""
    offer = sdp(ufrag="ourufrag", port=40000)
    sip = (SipRecord(0.0, True, request("INVITE", 1, offer)),
           SipRecord(0.01, False, response(407, 1, server="proxy/5")),
           SipRecord(0.02, True, request("INVITE", 2, offer)),
           SipRecord(0.2, False, response(200, 2, body=sdp(extra="a=ice-mismatch"))))
    records = (DatagramRecord(0.0, True, US, ("10.0.0.1", 3478),
                              stun(MessageClass.REQUEST, 60)),
               inbound(0.01, stun(MessageClass.SUCCESS, 60, software="stun-server 1"),
                       remote=("10.0.0.1", 3478)),
               inbound(0.3, stun(MessageClass.SUCCESS, 61, software="peer 1")))
    trace = CallTrace(0.0, sip, records, CALL_ID, frozenset({US}), 0.5)
    found = analyze_call(trace)
    assert one(found, "ice").status == "yes"
    assert one(found, "checks.first").status == "n/a"
    assert one(found, "software").value == ["peer 1"]
    assert one(analyze_mismatch(trace), "ice_mismatch").status == "yes"
    assert peer_software([trace]) == "peer-ua/1.0"


def test_consent_window_ends_at_the_restart() -> None:
    """Checks after our restart re-INVITE (new credentials, same sockets) are not consent
    checks: the window ends at the restart offer."""
    records = (check(1.5, 10), check(2.5, 11), check(5.35, 40, username="newours:peernew"))
    trace = CallTrace(0.0, restart_sip("peernew"), records, CALL_ID, frozenset({US}), 0.5,
                      selected=((US, PEER),))
    consent = one(analyze_wire(trace), "consent")
    assert consent.value == {"count": 2, "median_interval_ms": 1000.0, "window_s": 4.5}


def test_keepalive_interval_per_component() -> None:
    """Two components keep their own pairs alive 15 s apart, a few ms from each other: the
    interval is 15 s per flow, not the gap between the components."""
    rtcp_local, rtcp_remote = ("127.0.0.1", 40001), ("127.0.0.1", 50001)
    records = tuple(
        inbound(at, stun(MessageClass.INDICATION, tid), local=local, remote=remote)
        for at, tid, local, remote in ((15.0, 1, US, PEER), (15.01, 2, rtcp_local, rtcp_remote),
                                       (30.0, 3, US, PEER),
                                       (30.4, 4, rtcp_local, rtcp_remote)))
    trace = CallTrace(0.0, base_sip(sdp()), records, CALL_ID,
                      frozenset({US, rtcp_local}), 0.5)
    keepalive = one(analyze_wire(trace), "keepalive")
    assert keepalive.status == "yes"
    assert keepalive.value["count"] == 4 and keepalive.value["median_interval_ms"] == 15195.0


def test_numeric_looking_credentials_are_read_as_written() -> None:
    """A ufrag such as 200e2443 (hex that looks like a float) keeps its 8 characters, and a
    restart to another numeric-looking ufrag is still told apart."""
    found = analyze_answer(sdp(ufrag="200e2443"))
    assert one(found, "credentials").value == {"ufrag": 8, "pwd": 24}
    records = (*base_sip(sdp(ufrag="100e1")),
               SipRecord(5.0, True, request("INVITE", 2, sdp(ufrag="300e2", port=40000))),
               SipRecord(5.1, False, response(200, 2, body=sdp(ufrag="400e3", pwd="q" * 24))))
    restart = analyze_restart(CallTrace(0.0, records, (), CALL_ID))
    assert one(restart, "restart.new_credentials").value == {"before": "100e1",
                                                             "after": "400e3"}


def test_our_updated_offer_answered_or_not() -> None:
    """Our re-INVITE with a=remote-candidates: answered 200 after 40 ms is "yes"; left
    without a final response (a 100 only) is "no"; none sent is "n/a"."""
    ours = sdp(ufrag="ourufrag", port=40000, extra="a=remote-candidates:1 127.0.0.1 50000")
    sent = SipRecord(0.6, True, request("INVITE", 2, ours))
    answered = (*base_sip(sdp()), sent, SipRecord(0.64, False, response(200, 2, body=sdp())))
    finding = one(analyze_wire(CallTrace(0.0, answered, (), CALL_ID, None, 0.5)),
                  "updated_offer_answered")
    assert finding.status == "yes" and finding.value == {"status": 200, "after_ms": 40.0}
    pending = (*base_sip(sdp()), sent, SipRecord(0.61, False, response(100, 2)))
    finding = one(analyze_wire(CallTrace(0.0, pending, (), CALL_ID, None, 0.5)),
                  "updated_offer_answered")
    assert finding.status == "no"
    none = one(analyze_wire(CallTrace(0.0, base_sip(sdp()), (), CALL_ID, None, 0.5)),
               "updated_offer_answered")
    assert none.status == "n/a"


def test_responses_with_foreign_transaction_ids() -> None:
    """A 487 whose transaction ID is none of our requests' (seen from a deployed UA) is
    counted as unmatched and makes responses.match "no"."""
    tie = 2**64 - 1
    records = (our_check(0.3, 1, tie),
               inbound(0.31, stun(MessageClass.ERROR, 555, error=(487, "Role Conflict"))),
               check(0.32, 2, tie=77))
    trace = CallTrace(0.0, base_sip(sdp()), records, CALL_ID, frozenset({US}), None,
                      tie_breaker=tie)
    found = analyze_role_conflict(trace)
    assert one(found, "487").value["unmatched"] == 1
    match = one(found, "responses.match")
    assert match.status == "no" and match.value == {"responses": 1, "unmatched": 1}
    assert one(found, "as_rfc").status == "no"  # an unusable 487 resolves nothing
