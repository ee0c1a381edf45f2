"""SRTP calls (RFC 3711 with SDES keys, RFC 4568) between user agents on 127.0.0.1.

Each side plays a tone (alice 440 Hz, bob 660 Hz) and records what it receives. The wire is
tapped where the media stream hands datagrams to the ICE transport: what leaves must not be
the plain G.711 tone.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor

from media import g711
from media.rtp import parse_rtp
from media.sinks import MemorySink, dominant_frequency
from media.sources import Tone
from media.srtp import SrtpContext, generate_key
from media.stream import IceMediaStream
from sipua.call import Call, CallError, CallOptions
from sipua.sdp import parse_sdp
from sipua.settings import IceConfig, MediaConfig, Settings, UaSettings
from sipua.useragent import UserAgent

REACTOR: Any = global_reactor
A_TONE, B_TONE = 440.0, 660.0
PLAIN_PAYLOAD = 160  # 20 ms of G.711 at 8 kHz


def settings(srtp: str, *, ice: bool = True, mux: bool = True) -> Settings:
    """Loopback only, UDP, the given SRTP mode, RTCP reports every few hundred ms."""
    return Settings(ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",)),
                    ice=IceConfig(enabled=ice, rtcp_mux=mux),
                    media=MediaConfig(srtp=srtp, rtcp_interval=0.3))


async def sleep(seconds: float) -> None:
    await task.deferLater(REACTOR, seconds, lambda: None)


async def pair(a: Settings, b: Settings, seed: int = 7) -> tuple[UserAgent, UserAgent]:
    alice = UserAgent(a, REACTOR, rng=random.Random(seed))
    bob = UserAgent(b, REACTOR, rng=random.Random(seed + 100))
    await alice.start()
    await bob.start()
    return alice, bob


async def stop(*uas: UserAgent) -> None:
    """Stop the user agents side by side (each waits a short grace for its last BYE)."""
    await defer.gatherResults([ua.stop() for ua in uas])


def uri_of(ua: UserAgent) -> str:
    host, port = ua.local_address
    return f"sip:bob@{host}:{port}"


def tone_of(sink: MemorySink, seconds: float = 0.5) -> float:
    return dominant_frequency(sink.pcm[-int(16000 * seconds):], max_seconds=seconds)


def incoming_call(ua: UserAgent) -> Call:
    calls = [c for c in ua.calls.values() if c.direction == "incoming"]
    assert len(calls) == 1, ua.calls
    return calls[0]


async def connected(caller: UserAgent, callee: UserAgent, options: CallOptions | None = None
                    ) -> tuple[Call, Call, MemorySink, MemorySink]:
    heard_by_callee, heard_by_caller = MemorySink(), MemorySink()
    callee.auto_answer(source=Tone(B_TONE), sink=heard_by_callee)
    call = await caller.call(uri_of(callee), source=Tone(A_TONE), sink=heard_by_caller,
                             options=options)
    await call.media_flowing(timeout=5.0)
    other = incoming_call(callee)
    await other.media_flowing(timeout=5.0)
    return call, other, heard_by_caller, heard_by_callee


def tap(call: Call, edit: Any = None) -> list[bytes]:
    """Record (and optionally rewrite) every RTP/RTCP datagram the call's ICE stream sends."""
    stream = call.stream
    assert isinstance(stream, IceMediaStream)
    ice = stream.ice
    send = ice.send
    seen: list[bytes] = []

    def tapped(component: int, data: bytes) -> None:
        seen.append(data)
        for out in (edit(data) if edit is not None else [data]):
            send(component, out)
    stream.ice = _Shim(ice, tapped)
    return seen


class _Shim:
    """The ICE transport as the stream sees it, with ``send`` replaced."""

    def __init__(self, inner: Any, send: Any) -> None:
        self._inner = inner
        self.send = send

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def srtp_report(call: Call) -> dict[str, Any]:
    media = call.stats()["media"]
    assert media is not None
    srtp = media["srtp"]
    assert srtp is not None, "the call does not use SRTP"
    return dict(srtp)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
@pytest.mark.parametrize("ice,mux", [(True, True), (True, False), (False, True)],
                         ids=["ice-rtcp-mux", "ice-two-components", "no-ice"])
async def test_mandatory_both_sides_carries_tones_encrypted(ice: bool, mux: bool) -> None:
    """Both mandatory: RTP/SAVP offered and answered with a=crypto, tones both ways, SRTCP
    too (on component 2 without rtcp-mux), and what goes on the wire is SRTP (the tag makes it
    10 octets longer; it is not the G.711 tone)."""
    alice, bob = await pair(settings("mandatory", ice=ice, mux=mux),
                            settings("mandatory", ice=ice, mux=mux))
    try:
        call, other, heard_by_caller, heard_by_callee = await connected(alice, bob)
        assert call.session is not None and call.session.local_sdp is not None
        offer = parse_sdp(call.session.local_sdp.decode()).audio
        answer = parse_sdp((call.session.remote_sdp or b"").decode()).audio
        assert offer.proto == "RTP/SAVP" and answer.proto == "RTP/SAVP"
        assert [c.suite for c in offer.crypto] == ["AES_CM_128_HMAC_SHA1_80",
                                                   "AES_CM_128_HMAC_SHA1_32"]
        assert len(answer.crypto) == 1 and answer.crypto[0].tag == 1
        assert answer.crypto[0].key != offer.crypto[0].key  # the answerer's own key
        if ice:
            wire = tap(call)
        await sleep(0.8)
        assert abs(tone_of(heard_by_caller) - B_TONE) < 5
        assert abs(tone_of(heard_by_callee) - A_TONE) < 5
        for c in (call, other):
            report = srtp_report(c)
            assert report["suite"] == "AES_CM_128_HMAC_SHA1_80"
            assert report["rtp_unprotected"] > 20 and report["rtp_protected"] > 20
            assert report["rtcp_unprotected"] >= 1 and report["rtcp_protected"] >= 1
            assert report["auth_failures"] == 0 and report["replays"] == 0
            media = c.stats()["media"]
            assert media["session"]["rtcpPacketsReceived"] == report["rtcp_unprotected"]
            assert media["session"]["rtcpPacketsMalformed"] == 0
        if ice:
            rtp = [d for d in wire if len(d) == 12 + PLAIN_PAYLOAD + 10]
            assert len(rtp) >= 25
            assert all(parse_rtp(d).payload_type == 0 for d in rtp)  # the header stays plain
            ciphertext = b"".join(parse_rtp(d).payload[:PLAIN_PAYLOAD] for d in rtp[-25:])
            pcm = g711.ulaw_decode(ciphertext)
            assert abs(dominant_frequency(pcm, max_seconds=0.5) - A_TONE) > 5
        await other.hangup()
        await call.ended()
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
@pytest.mark.parametrize("caller_mode,callee_mode,phrase", [
    ("mandatory", "off", "no SRTP"), ("off", "mandatory", "SRTP required")])
async def test_mandatory_against_off_is_refused_with_488(caller_mode: str, callee_mode: str,
                                                         phrase: str) -> None:
    """One side mandatory, the other off: the callee answers 488 and the caller's call fails
    with a CallError that says why."""
    alice, bob = await pair(settings(caller_mode), settings(callee_mode))
    try:
        bob.auto_answer(source=Tone(B_TONE))
        call = await alice.call(uri_of(bob), source=Tone(A_TONE))
        with pytest.raises(CallError) as info:
            await call.answered()
        assert info.value.status == 488 and call.status == 488
        assert phrase in str(info.value)
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
@pytest.mark.parametrize("callee_mode", ["optional", "mandatory"])
async def test_optional_offer_gets_srtp_on_rtp_avp(callee_mode: str) -> None:
    """An optional caller's best-effort offer (RTP/AVP with a=crypto) is answered with crypto
    by an optional or a mandatory callee, so the call runs SRTP."""
    alice, bob = await pair(settings("optional"), settings(callee_mode))
    try:
        call, other, heard_by_caller, heard_by_callee = await connected(alice, bob)
        assert call.session is not None and call.session.local_sdp is not None
        offer = parse_sdp(call.session.local_sdp.decode()).audio
        assert offer.proto == "RTP/AVP" and offer.crypto
        await sleep(0.5)
        assert abs(tone_of(heard_by_caller, 0.3) - B_TONE) < 5
        assert abs(tone_of(heard_by_callee, 0.3) - A_TONE) < 5
        assert srtp_report(call)["rtp_unprotected"] > 0
        assert srtp_report(other)["rtp_unprotected"] > 0
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_optional_against_off_falls_back_to_rtp() -> None:
    """Optional caller, callee off: the crypto lines are ignored, the answer has none, and the
    call carries plain RTP."""
    alice, bob = await pair(settings("optional"), settings("off"))
    try:
        call, other, heard_by_caller, _ = await connected(alice, bob)
        answer = parse_sdp((call.session.remote_sdp or b"").decode()).audio  # type: ignore[union-attr]
        assert answer.proto == "RTP/AVP" and not answer.crypto
        await sleep(0.4)
        assert abs(tone_of(heard_by_caller, 0.3) - B_TONE) < 5
        for c in (call, other):
            media = c.stats()["media"]
            assert media is not None and media["srtp"] is None
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_tampered_and_replayed_packets_are_counted_and_dropped() -> None:
    """Packets altered on the way fail authentication, copies fail the replay check; both are
    counted and dropped, and the call goes on with the tone intact."""
    alice, bob = await pair(settings("mandatory"), settings("mandatory"))
    try:
        call, other, _, heard_by_callee = await connected(alice, bob)
        sent = [0]

        def edit(data: bytes) -> list[bytes]:
            sent[0] += 1
            if len(data) < 100:  # SRTCP: pass through
                return [data]
            if sent[0] % 10 == 0:
                spoiled = bytearray(data)
                spoiled[40] ^= 0x01
                return [bytes(spoiled)]
            if sent[0] % 10 == 5:
                return [data, data]  # a replayed copy
            return [data]
        tap(call, edit)
        await sleep(1.0)
        report = srtp_report(other)
        assert report["auth_failures"] >= 3
        assert report["replays"] >= 3
        assert abs(tone_of(heard_by_callee, 0.3) - A_TONE) < 5
        assert other.active and call.active
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
@pytest.mark.parametrize("mode", ["mandatory", "off"])
async def test_media_from_an_unknown_address_is_dropped(mode: str) -> None:
    """RTP sent to the media port from an address that is no remote candidate of the peer is
    dropped and counted as from an unexpected source, before SRTP looks at it (so it cannot
    use up replay-window entries nor count as an authentication failure)."""
    alice, bob = await pair(settings(mode), settings(mode))
    try:
        _, other, _, heard_by_callee = await connected(alice, bob)
        selected = other.stats()["ice"]["selected"]["1"]
        host, port = selected["local_address"].rsplit(":", 1)
        before = other.stream.stats().session.packets_from_unexpected_source  # type: ignore[union-attr]
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            stranger.bind(("127.0.0.1", 0))
            packet = bytes([0x80, 0x00, 0x12, 0x34]) + bytes(8) + bytes(PLAIN_PAYLOAD + 10)
            for _ in range(5):
                stranger.sendto(packet, (host, int(port)))
            await sleep(0.3)
        finally:
            stranger.close()
        after = other.stream.stats().session.packets_from_unexpected_source  # type: ignore[union-attr]
        assert after - before == 5
        if mode == "mandatory":
            assert srtp_report(other)["auth_failures"] == 0
        assert abs(tone_of(heard_by_callee, 0.2) - A_TONE) < 5
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_reinvite_keeps_keys_and_media_goes_on() -> None:
    """Hold and resume by re-INVITE: the re-offer repeats the suite and key in use, the answer
    keeps its key, and the SRTP context (with its rollover state) is the same one after."""
    alice, bob = await pair(settings("mandatory"), settings("mandatory"))
    try:
        call, other, heard_by_caller, heard_by_callee = await connected(alice, bob)
        contexts = (call.stream.session.srtp, other.stream.session.srtp)  # type: ignore[union-attr]
        assert await call.hold() is True
        assert call.session is not None and call.session.local_sdp is not None
        reoffer = parse_sdp(call.session.local_sdp.decode()).audio
        assert len(reoffer.crypto) == 1
        assert contexts[0] is not None and reoffer.crypto[0].key == contexts[0].local_key
        assert await call.resume() is True
        await sleep(0.6)
        assert (call.stream.session.srtp, other.stream.session.srtp) == contexts  # type: ignore[union-attr]
        for c in (call, other):
            assert srtp_report(c)["remote_key_changes"] == 0
        assert abs(tone_of(heard_by_caller, 0.3) - B_TONE) < 5
        assert abs(tone_of(heard_by_callee, 0.3) - A_TONE) < 5
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_per_call_option_overrides_the_setting() -> None:
    """CallOptions(srtp="mandatory") on a UA whose setting is off offers RTP/SAVP; an optional
    callee accepts it."""
    alice, bob = await pair(settings("off"), settings("optional"))
    try:
        call, other, _, _ = await connected(alice, bob, CallOptions(srtp="mandatory"))
        assert srtp_report(call)["suite"] == "AES_CM_128_HMAC_SHA1_80"
        assert srtp_report(other)["suite"] == "AES_CM_128_HMAC_SHA1_80"
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_new_key_in_a_reoffer_replaces_the_inbound_key() -> None:
    """RFC 4568 §7.1.4: the callee re-offers (hold, then resume) with a new key of its own; the
    caller takes it for what it receives, and the callee's tone still decodes."""
    alice, bob = await pair(settings("mandatory"), settings("mandatory"))
    try:
        call, other, heard_by_caller, _ = await connected(alice, bob)
        old = other.stream.session.srtp  # type: ignore[union-attr]
        assert old is not None
        fresh = SrtpContext(old.suite.name, generate_key(random.Random(99)), old.remote_key)
        other._srtp = fresh  # what a peer that re-keys does: a new outbound key...
        other.stream.session.set_srtp(fresh)  # type: ignore[union-attr]
        assert await other.hold() is True  # ...announced in its next offer
        assert await other.resume() is True
        await sleep(0.6)
        report = srtp_report(call)
        assert report["remote_key_changes"] == 1
        assert call.stream.session.srtp.remote_key == fresh.local_key  # type: ignore[union-attr]
        assert abs(tone_of(heard_by_caller, 0.3) - B_TONE) < 5
    finally:
        await stop(alice, bob)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_mandatory_caller_ends_a_call_answered_without_crypto(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that answers the RTP/SAVP offer without a=crypto (here: an answerer made to
    leave its line out) gets ACK and BYE; the caller's call ends saying why."""
    monkeypatch.setattr(Call, "_crypto_answer", lambda self, neg: ("RTP/SAVP", ()))
    alice, bob = await pair(settings("mandatory"), settings("optional"))
    try:
        bob.auto_answer(source=Tone(B_TONE))
        call = await alice.call(uri_of(bob), source=Tone(A_TONE))
        await call.answered()
        with pytest.raises(CallError):
            await call.media_flowing(timeout=3.0)
        await call.ended()
        assert call.ended_by == "local"
        assert call.end_reason is not None and "a=crypto" in call.end_reason
    finally:
        await stop(alice, bob)
