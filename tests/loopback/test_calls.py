"""Calls between user agents on 127.0.0.1 with the real reactor: SIP, ICE and media together.

Each side plays a tone (alice 440 Hz, bob 660 Hz) and records what it receives; a call counts
only when each recording holds the other side's tone.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor

from ice.server_udp import listen_stun
from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone
from sipua.call import Call, CallError, CallOptions, CallState
from sipua.sdp import parse_sdp
from sipua.session import AnswerReceived, CallProgressed
from sipua.settings import Account, IceConfig, Settings, UaSettings
from sipua.useragent import UserAgent

REACTOR: Any = global_reactor
A_TONE, B_TONE = 440.0, 660.0


def settings(**ice: Any) -> Settings:
    """Loopback only, UDP, fast consent checks off the critical path."""
    return Settings(ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",)),
                    ice=IceConfig(**ice))


async def sleep(seconds: float) -> None:
    await task.deferLater(REACTOR, seconds, lambda: None)


async def pair(a: Settings | None = None, b: Settings | None = None, seed: int = 1
               ) -> tuple[UserAgent, UserAgent]:
    alice = UserAgent(a or settings(), REACTOR, rng=random.Random(seed))
    bob = UserAgent(b or settings(), REACTOR, rng=random.Random(seed + 100))
    await alice.start()
    await bob.start()
    return alice, bob


async def stop(*uas: UserAgent) -> None:
    for ua in uas:
        await ua.stop()


def uri_of(ua: UserAgent, user: str = "bob") -> str:
    host, port = ua.local_address
    return f"sip:{user}@{host}:{port}"


def tone_of(sink: MemorySink, seconds: float = 0.5) -> float:
    """The dominant frequency of the last ``seconds`` recorded."""
    return dominant_frequency(sink.pcm[-int(16000 * seconds):], max_seconds=seconds)


def incoming_call(ua: UserAgent) -> Call:
    calls = [c for c in ua.calls.values() if c.direction == "incoming"]
    assert len(calls) == 1, ua.calls
    return calls[0]


async def connected(caller: UserAgent, callee: UserAgent, *, options: CallOptions | None = None
                    ) -> tuple[Call, Call, MemorySink, MemorySink]:
    """caller calls callee (auto-answer); both sides have media; returns calls and sinks."""
    heard_by_callee, heard_by_caller = MemorySink(), MemorySink()
    callee.auto_answer(source=Tone(B_TONE), sink=heard_by_callee)
    call = await caller.call(uri_of(callee), source=Tone(A_TONE), sink=heard_by_caller,
                             options=options)
    await call.media_flowing(timeout=5.0)
    other = incoming_call(callee)
    await other.media_flowing(timeout=5.0)
    return call, other, heard_by_caller, heard_by_callee


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("mux", [True, False], ids=["rtcp-mux", "two-components"])
@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
@pytest.mark.parametrize("caller", ["alice", "bob"])
async def test_call_with_ice_carries_tones_both_ways(mux: bool, nomination: str,
                                                     caller: str) -> None:
    """A direct call with ICE: each component selected (rtcp-mux or a=rtcp), the offerer
    controls, each side hears the other's tone; the callee hangs up."""
    alice, bob = await pair(settings(rtcp_mux=mux, nomination=nomination),
                            settings(rtcp_mux=mux, nomination=nomination))
    first, second = (alice, bob) if caller == "alice" else (bob, alice)
    try:
        call, other, heard_by_caller, heard_by_callee = await connected(first, second)
        await sleep(0.8)
        assert abs(tone_of(heard_by_caller) - B_TONE) < 5
        assert abs(tone_of(heard_by_callee) - A_TONE) < 5
        for c, role in ((call, "controlling"), (other, "controlled")):
            report = c.stats()
            assert report["ice"]["used"] and report["ice"]["role"] == role
            assert report["ice"]["nomination"] == nomination
            selected = report["ice"]["selected"]
            assert sorted(selected) == (["1"] if mux else ["1", "2"])
            assert all(p is not None and p["nominated"] for p in selected.values())
            assert any(ch["result"] == "succeeded" and ch["rtt_ms"] is not None
                       for ch in report["ice"]["checks"])
            assert report["setup"]["invite_to_first_rtp_ms"] is not None
        if not mux:
            await sleep(0.6)  # RTCP (min interval 5 s, first report sooner) on component 2
        await other.hangup()
        await call.ended()
        assert call.ended_by == "remote" and other.ended_by == "local"
        assert call.state is CallState.ENDED and not first.calls and not second.calls
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_rtcp_mux_declined_by_the_answer_falls_back_to_two_components() -> None:
    """RFC 5761 §5.1.3: alice offers rtcp-mux and, as a fallback, candidates for the RTCP
    component with a=rtcp; bob (rtcp_mux off) declines: ICE selects both components, tones
    and RTCP flow. When the answer accepts, the second component is dropped (the test above)."""
    answers: list[bytes] = []
    invites: list[bytes] = []
    alice, bob = await pair(settings(), settings(rtcp_mux=False))
    alice.subscribe(lambda e: answers.append(e.sdp) if isinstance(e, AnswerReceived) else None)
    assert alice.transport is not None
    alice.transport.taps.append(
        lambda data, local, remote, outgoing, t: invites.append(data)
        if outgoing and data.startswith(b"INVITE ") else None)
    try:
        call, other, heard_by_alice, heard_by_bob = await connected(alice, bob)
        await sleep(0.8)
        assert abs(tone_of(heard_by_alice) - B_TONE) < 5
        assert abs(tone_of(heard_by_bob) - A_TONE) < 5
        offer = parse_sdp(invites[0].split(b"\r\n\r\n", 1)[1].decode()).audio
        assert offer.rtcp_mux and offer.rtcp is not None and offer.ice is not None
        assert {c.component for c in offer.ice.candidates} == {1, 2}
        answer = parse_sdp(answers[0].decode()).audio
        assert not answer.rtcp_mux
        for c in (call, other):
            selected = c.stats()["ice"]["selected"]
            assert sorted(selected) == ["1", "2"], selected
            assert all(p is not None for p in selected.values())
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_call_with_stun_server_and_report_json() -> None:
    """With the embedded STUN server configured, gathering asks it; the report is JSON with
    the SIP timeline, every check with its RTT and MOS."""
    stun: Any = listen_stun(REACTOR, 0, "127.0.0.1")
    server = f"127.0.0.1:{stun.getHost().port}"
    alice, bob = await pair(settings(stun_servers=(server,)), settings(stun_servers=(server,)))
    try:
        call, _other, _a, _b = await connected(alice, bob)
        await sleep(0.3)
        report = call.report()
        data = report.to_dict()
        assert [m["start_line"].split()[0] for m in data["sip"]["messages"]][:1] == ["INVITE"]
        assert any(m["start_line"] == "SIP/2.0 200 OK" for m in data["sip"]["messages"])
        assert data["quality"] is not None and 4.0 < data["mos"] <= 4.5
        assert data["media"]["session"]["inbound"]["packetsReceived"] > 5
        assert '"checks"' in report.to_json()
        events = [e.to_dict()["event"] for e in call.ice_events]
        assert "GatheringCompleted" in events and "IceCompleted" in events
        await call.hangup()
    finally:
        await stop(alice, bob)
        await stun.stopListening()


@pytest_twisted.ensureDeferred
async def test_cancel_before_answer() -> None:
    """The caller hangs up while the callee rings: CANCEL, 487, both calls end."""
    alice, bob = await pair()
    progressed: list[Any] = []
    alice.subscribe(lambda e: progressed.append(e) if isinstance(e, CallProgressed) else None)
    try:
        bob.auto_answer(delay=30.0)
        call = await alice.call(uri_of(bob), source=Tone(A_TONE))
        for _ in range(100):
            if progressed:
                break
            await sleep(0.01)
        assert [p.status for p in progressed] == [180]
        other = incoming_call(bob)
        await call.hangup()
        await other.ended()
        assert call.end_reason is not None and "487" in call.end_reason
        assert other.ended_by == "remote" and other.end_reason == "CANCEL"
        with pytest.raises(CallError):
            await call.answered()
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_stop_right_after_hangup_still_delivers_a_lost_bye() -> None:
    """The caller hangs up and stops at once while the first copy of its BYE is lost: stop()
    waits for the BYE's retransmission to be answered before closing the socket, so the
    callee's call ends by the BYE and not never."""
    alice, bob = await pair()
    try:
        call, other, _, _ = await connected(alice, bob)
        assert bob.transport is not None
        deliver = bob.transport._datagram
        dropped: list[bytes] = []

        def lossy(data: bytes, source: Any) -> None:
            if data.startswith(b"BYE ") and not dropped:
                dropped.append(data)
                return
            deliver(data, source)

        bob.transport._datagram = lossy  # type: ignore[method-assign]
        await call.hangup()
        await alice.stop()
        assert dropped, "the first BYE should have been dropped"
        assert other.ended_by == "remote" and other.end_reason == "BYE", other.end_reason
    finally:
        await stop(bob)


@pytest_twisted.ensureDeferred
async def test_stop_in_the_turn_a_bye_arrives_still_answers_it() -> None:
    """The callee hangs up; the caller stops as soon as its call has ended, in the same reactor
    turn as the BYE's arrival: the 200 OK to the BYE still goes out, so the callee's BYE
    transaction completes instead of retransmitting into a closed port."""
    alice, bob = await pair()
    try:
        call, other, _, _ = await connected(alice, bob)
        await other.hangup()
        await call.ended()
        await alice.stop()
        assert bob.transport is not None
        for _ in range(50):
            if not bob.transport.layer.awaiting_final():
                break
            await sleep(0.01)
        assert bob.transport.layer.awaiting_final() == []
    finally:
        await stop(bob)


@pytest_twisted.ensureDeferred
async def test_a_call_by_host_name_leaves_no_timer_after_stop() -> None:
    """Calling sip:bob@localhost:PORT goes through the RFC 3263 resolver (twisted.names, which
    re-reads resolv.conf every 60 s); after stop() none of its timers is left."""
    alice, bob = await pair()
    try:
        bob.auto_answer(source=Tone(B_TONE))
        port = bob.local_address[1]
        call = await alice.call(f"sip:bob@localhost:{port}", source=Tone(A_TONE))
        await call.answered()
        await call.hangup()
    finally:
        await stop(alice, bob)
    left = [c for c in REACTOR.getDelayedCalls()
            if "maybeParseConfig" in repr(c) or "CacheResolver" in repr(c)]
    assert left == []


@pytest_twisted.ensureDeferred
async def test_call_ends_when_ice_consent_is_lost() -> None:
    """RFC 7675 §5.1: bob stops answering (and sending) STUN 0.5 s after his checks start, a
    path cut as alice sees it; alice's consent expires after consent_timeout and her call
    hangs up by itself, saying why."""
    from sipua.settings import IceFaults

    # bob's own consent outlasts alice's, so that she is the one to notice first.
    alice, bob = await pair(settings(consent_interval=0.2, consent_timeout=1.0),
                            settings(consent_interval=0.2, consent_timeout=4.0,
                                     faults=IceFaults(drop_after=0.5)))
    try:
        call, other, _, _ = await connected(alice, bob)
        ended = call.ended()
        ended.addTimeout(5.0, REACTOR)
        await ended
        assert call.ended_by == "local", call.ended_by
        assert call.end_reason is not None and "consent lost" in call.end_reason
        await other.ended()
        assert other.ended_by == "remote"
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_hold_and_resume_by_reinvite() -> None:
    """Hold: sendonly offer, recvonly answer, neither side sends; resume: tones again."""
    alice, bob = await pair()
    try:
        call, other, heard_by_alice, heard_by_bob = await connected(alice, bob)
        assert await call.hold() is True
        assert call.stream is not None and other.stream is not None
        assert call.stream.held and other.stream.held
        assert other.negotiated is not None and other.negotiated.directions == (
            "recvonly", "sendonly")
        await sleep(0.2)
        sent = other.stream.stats().session.outbound.packets_sent
        await sleep(0.3)
        assert other.stream.stats().session.outbound.packets_sent == sent
        assert await call.resume() is True
        assert not call.stream.held and not other.stream.held
        await sleep(0.8)
        assert other.stream.stats().session.outbound.packets_sent > sent + 20
        assert abs(tone_of(heard_by_alice) - B_TONE) < 5
        assert abs(tone_of(heard_by_bob) - A_TONE) < 5
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_crossing_reinvites_are_both_retried_after_491() -> None:
    """Glare: both sides put the call on hold in the same instant; their re-INVITEs cross and
    each is refused with 491. Each side offers again after its RFC 3261 §14.1 wait (the
    Call-ID owner 2.1-4 s, the other 0-2 s) and both holds succeed."""
    alice, bob = await pair()
    try:
        call, other, _heard_by_alice, _heard_by_bob = await connected(alice, bob)
        mine, theirs = call.hold(), other.hold()
        assert call._glare_retries == 0
        results = await defer.gatherResults([mine, theirs])
        assert results == [True, True]
        assert call._glare_retries == 1 and other._glare_retries == 1
        assert call.stream is not None and other.stream is not None
        assert call.stream.held and other.stream.held
        assert call.negotiated is not None and other.negotiated is not None
        assert "inactive" in (call.negotiated.directions + other.negotiated.directions)
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_ice_restart_keeps_media_flowing() -> None:
    """ICE restart by re-INVITE: new credentials on both sides, media keeps arriving during
    the restart, a pair is selected again."""
    alice, bob = await pair()
    try:
        call, other, _heard_by_alice, heard_by_bob = await connected(alice, bob)
        assert call.agent is not None and other.agent is not None
        old = (call.agent.local_ufrag, other.agent.local_ufrag)
        before = len(heard_by_bob.pcm)
        assert await call.restart_ice() is True
        await sleep(0.5)
        assert (call.agent.local_ufrag, other.agent.local_ufrag) != old
        assert other.agent.remote_ufrag == call.agent.local_ufrag
        assert call.agent.selected_pair(1) is not None
        assert len(heard_by_bob.pcm) - before > 16000 * 0.3
        restarts = [e for e in call.ice_events if type(e).__name__ == "IceRestarted"]
        assert len(restarts) == 1
        completed = [e for e in call.ice_events if type(e).__name__ == "IceCompleted"]
        assert len(completed) == 2
        assert abs(tone_of(heard_by_bob) - A_TONE) < 5
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("method", ["INVITE", "UPDATE"])
async def test_updated_offer_with_remote_candidates_does_not_restart(method: str) -> None:
    """The RFC 5245 §9.1.3 updated offer (selected candidates, a=remote-candidates) by
    re-INVITE or UPDATE is answered without an ICE restart."""
    alice, bob = await pair()
    try:
        call, other, _a, heard_by_bob = await connected(alice, bob)
        assert call.agent is not None and other.agent is not None
        creds = (call.agent.local_ufrag, other.agent.local_ufrag)
        sdp = call._local_description(updated=True, remote_candidates=True)
        assert parse_sdp(sdp.decode()).audio.ice is not None
        assert parse_sdp(sdp.decode()).audio.ice.remote_candidates  # type: ignore[union-attr]
        assert await call._send_offer(sdp, method) is True
        answers = [e for e in call.events if isinstance(e, AnswerReceived)]
        assert answers[-1].method == method
        before = len(heard_by_bob.pcm)
        await sleep(0.3)
        assert (call.agent.local_ufrag, other.agent.local_ufrag) == creds
        assert not [e for e in other.ice_events if type(e).__name__ == "IceRestarted"]
        assert len(heard_by_bob.pcm) > before
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("caller", ["with-ice", "without-ice"])
async def test_peer_without_ice_gets_plain_rtp(caller: str) -> None:
    """A peer with ICE off: plain RTP to c=/m= (symmetric latching), tones both ways."""
    plain = settings(enabled=False)
    alice, bob = await pair(settings(), plain)
    first, second = (alice, bob) if caller == "with-ice" else (bob, alice)
    try:
        call, other, heard_by_caller, heard_by_callee = await connected(first, second)
        await sleep(0.8)
        assert call.negotiated is not None and not call.negotiated.ice
        assert other.negotiated is not None and not other.negotiated.ice
        assert abs(tone_of(heard_by_caller) - B_TONE) < 5
        assert abs(tone_of(heard_by_callee) - A_TONE) < 5
        assert call.stats()["ice"]["used"] is False
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_ice_mismatch_is_answered_with_plain_rtp() -> None:
    """An offer whose c=/m= is not among its candidates (rewritten by an ALG): the answer has
    a=ice-mismatch and no ICE, and the call uses plain RTP (RFC 8839 §4.4)."""
    alice, bob = await pair()
    try:
        bob.auto_answer(source=Tone(B_TONE))
        call = await alice.call(uri_of(bob), source=Tone(A_TONE),
                                options=CallOptions(ice=True))
        await call.media_flowing(timeout=5.0)
        await call.hangup()
        # Now a rewritten offer: same candidates, another c= address.
        assert call.session is not None and call.session.local_sdp is not None
        offer = call.session.local_sdp.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 127.0.0.9")
        session = alice.sessions.invite(uri_of(bob), local=alice.aor, offer=offer,
                                        now=REACTOR.seconds())
        alice.flush()
        answer: list[AnswerReceived] = []
        seen = alice._dispatch

        def spy(event: Any) -> None:
            if isinstance(event, AnswerReceived) and event.session_id == session.id:
                answer.append(event)
            seen(event)
        alice._dispatch = spy  # type: ignore[method-assign]
        for _ in range(100):
            if answer:
                break
            await sleep(0.01)
        text = answer[0].sdp.decode()
        assert "a=ice-mismatch" in text and "a=candidate" not in text
        other = incoming_call(bob)
        assert other.negotiated is not None and not other.negotiated.ice
        session.hangup(REACTOR.seconds())
        alice.flush()
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_auto_answer_declines_with_a_code() -> None:
    """auto_answer(code=486) refuses: the caller's call fails with that status."""
    alice, bob = await pair()
    try:
        bob.auto_answer(code=486)
        call = await alice.call(uri_of(bob))
        with pytest.raises(CallError) as info:
            await call.answered()
        assert info.value.status == 486 and call.status == 486
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_auto_answer_caps_concurrent_calls() -> None:
    """max_calls=1: a second call while the first is up gets 486 Busy Here."""
    alice, bob = await pair()
    try:
        bob.auto_answer(source=Tone(B_TONE), max_calls=1)
        first = await alice.call(uri_of(bob), source=Tone(A_TONE))
        await first.media_flowing(timeout=5.0)
        second = await alice.call(uri_of(bob))
        with pytest.raises(CallError) as info:
            await second.answered()
        assert info.value.status == 486
        assert first.state is CallState.ACTIVE
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_auto_answer_after_a_delay_and_hangs_up_after_duration() -> None:
    """delay rings first; duration hangs up from the callee side."""
    alice, bob = await pair()
    try:
        bob.auto_answer(delay=0.3, duration=0.5, source=Tone(B_TONE))
        call = await alice.call(uri_of(bob), source=Tone(A_TONE))
        await call.answered()
        t = call.timings
        assert t.answered is not None and t.invite is not None
        assert t.answered - t.invite >= 0.29
        await call.ended()
        assert call.ended_by == "remote"
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred
async def test_call_through_the_embedded_registrar_by_aor() -> None:
    """alice and bob register with the embedded registrar/proxy and call by address-of-record
    (digest on REGISTER)."""
    from sipua.registrar import RegistrarSettings
    from sipua.registrar_server import RegistrarServer
    from sipua.transport import TransportSettings

    server = RegistrarServer(RegistrarSettings(domain="lab.test"),
                             {"alice": "apw", "bob": "bpw"},
                             TransportSettings(host="127.0.0.1", port=0, transports=("udp",)),
                             reactor=REACTOR, rng=random.Random(7))
    server.start()
    registrar = f"127.0.0.1:{server.addresses()['udp'][1]}"

    def account(user: str, password: str) -> Settings:
        base = settings()
        return dataclasses.replace(base, accounts=(Account(
            name=user, uri=f"sip:{user}@lab.test", password=password, registrar=registrar),))
    alice, bob = await pair(account("alice", "apw"), account("bob", "bpw"))
    try:
        await alice.register()
        await bob.register()
        heard_by_bob, heard_by_alice = MemorySink(), MemorySink()
        bob.auto_answer(source=Tone(B_TONE), sink=heard_by_bob)
        call = await alice.call("sip:bob@lab.test", source=Tone(A_TONE), sink=heard_by_alice)
        await call.media_flowing(timeout=5.0)
        await sleep(0.8)
        assert abs(tone_of(heard_by_alice) - B_TONE) < 5
        assert abs(tone_of(heard_by_bob) - A_TONE) < 5
        await call.hangup()
        other = bob.finished[-1] if bob.finished else incoming_call(bob)
        await other.ended()
        assert other.ended_by == "remote"
    finally:
        await stop(alice, bob)
        await server.stop()
