"""Audio end to end: calls between two user agents on 127.0.0.1 with the real reactor, checked
by what the far side recorded (tone frequency, cross-correlation with a WAV, DTMF events).

Each call goes through SIP, ICE and the media stack exactly as in use; only the content of the
recordings decides whether the audio arrived.
"""

from __future__ import annotations

import array
import math
import random
import sys
import warnings
import wave
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task

from media.dtmf import DtmfReceived
from media.sinks import MemorySink, dominant_frequency
from media.sources import Silence, Tone, WavSource
from sipua.call import Call
from sipua.settings import IceConfig, Settings, UaSettings
from sipua.useragent import UserAgent

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

REACTOR: Any = global_reactor
A_TONE, B_TONE = 440.0, 660.0
RATE = 8000
FRAME = 160


def settings() -> Settings:
    """Loopback only, UDP."""
    return Settings(ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",)),
                    ice=IceConfig())


async def sleep(seconds: float) -> None:
    await task.deferLater(REACTOR, seconds, lambda: None)


async def start_pair(seed: int) -> tuple[UserAgent, UserAgent]:
    alice = UserAgent(settings(), REACTOR, rng=random.Random(seed))
    bob = UserAgent(settings(), REACTOR, rng=random.Random(seed + 100))
    await alice.start()
    await bob.start()
    return alice, bob


def uri_of(ua: UserAgent) -> str:
    host, port = ua.local_address
    return f"sip:bob@{host}:{port}"


def incoming_call(ua: UserAgent) -> Call:
    calls = [c for c in ua.calls.values() if c.direction == "incoming"]
    assert len(calls) == 1, ua.calls
    return calls[0]


async def connect(alice: UserAgent, bob: UserAgent, *, a_source: Any, b_source: Any,
                  a_sink: MemorySink, b_sink: MemorySink) -> tuple[Call, Call]:
    """alice calls bob (auto-answer); returns both calls once media flows each way."""
    bob.auto_answer(source=b_source, sink=b_sink)
    call = await alice.call(uri_of(bob), source=a_source, sink=a_sink)
    await call.media_flowing(timeout=5.0)
    other = incoming_call(bob)
    await other.media_flowing(timeout=5.0)
    return call, other


def samples(pcm: bytes) -> array.array[int]:
    values = array.array("h")
    values.frombytes(pcm)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def chirp(seconds: float, start_hz: float = 300.0, end_hz: float = 3000.0) -> bytes:
    """A linear sweep: no two stretches of it look alike, so a match has one place."""
    count = int(RATE * seconds)
    rate = (end_hz - start_hz) / seconds
    values = array.array("h", (
        round(12000 * math.sin(2 * math.pi * (start_hz * t + rate * t * t / 2)))
        for t in (i / RATE for i in range(count))))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


def correlation(a: bytes, b: bytes) -> float:
    """Normalised cross-correlation of two equally long 16-bit fragments at lag 0."""
    x, y = samples(a), samples(b)
    dot = sum(p * q for p, q in zip(x, y, strict=True))
    norm = math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
    return dot / norm if norm else 0.0


def find(reference: bytes, recording: bytes) -> tuple[int, float]:
    """Where ``reference`` best matches inside ``recording`` (sample offset) and how well."""
    offset, _factor = audioop.findfit(recording, reference)
    size = len(reference)
    return offset, correlation(reference, recording[2 * offset: 2 * offset + size])


@pytest_twisted.ensureDeferred
async def test_tones_cross_both_ways_and_reports_are_clean() -> None:
    """alice plays 440 Hz and bob 660 Hz: each recording is dominated by the other's tone (a
    few Hz at most off), no packet is lost on loopback and the report estimates a good MOS."""
    alice, bob = await start_pair(11)
    heard_by_alice, heard_by_bob = MemorySink(), MemorySink()
    try:
        call, other = await connect(alice, bob, a_source=Tone(A_TONE), b_source=Tone(B_TONE),
                                    a_sink=heard_by_alice, b_sink=heard_by_bob)
        await sleep(1.5)
        # Skip the jitter buffer's start; one second of steady audio.
        for sink, tone in ((heard_by_alice, B_TONE), (heard_by_bob, A_TONE)):
            assert sink.samples > RATE
            got = dominant_frequency(sink.pcm[-2 * RATE:], max_seconds=1.0)
            assert abs(got - tone) < 3, (got, tone)
            other_tone = A_TONE if tone == B_TONE else B_TONE
            assert dominant_frequency(sink.pcm[-2 * RATE:],
                                      candidates=(tone, other_tone)) == tone
        for c in (call, other):
            report = c.stats()
            inbound = report["media"]["session"]["inbound"]
            assert inbound["packetsReceived"] >= 60
            assert inbound["packetsLost"] == 0
            assert report["mos"] is not None and report["mos"] > 4.0
        await call.hangup()
        await other.ended()
    finally:
        await alice.stop()
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_wav_played_one_way_is_recorded_at_the_other_end(tmp_path: Path) -> None:
    """alice plays a 2.5 s WAV (a 300-3000 Hz sweep) once; bob's recording holds it: each
    quarter second of the file is found in the recording with a correlation above 0.95 (G.711
    costs little), at one delay that stays within the jitter buffer's few frames, in order."""
    wav_path = tmp_path / "sweep.wav"
    original = chirp(2.5)
    with wave.open(str(wav_path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(original)
    alice, bob = await start_pair(21)
    heard_by_alice, heard_by_bob = MemorySink(), MemorySink()
    source = WavSource(wav_path, loop=False)
    try:
        call, other = await connect(alice, bob, a_source=source, b_source=Silence(),
                                    a_sink=heard_by_alice, b_sink=heard_by_bob)
        await sleep(3.0)
        assert source.finished
        recording = heard_by_bob.pcm
        # The file starts as soon as alice's pair is selected, possibly before bob accepts
        # media: match from half a second in, in quarter-second pieces.
        piece = RATE // 4
        lags: list[int] = []
        poor = 0
        for start in range(RATE // 2, 2 * RATE + 1, piece):
            reference = original[2 * start: 2 * (start + piece)]
            offset, corr = find(reference, recording)
            lags.append(offset - start)
            # G.711 keeps a clean copy well above 0.99; a piece across a frame the jitter
            # buffer dropped to shrink (or held to grow) matches less well, but still.
            assert corr > 0.8, (start, offset, corr)
            poor += corr < 0.99
        assert other.stream is not None
        stats = other.stream.stats().session.jitter_buffer
        skips = stats.removed_samples_for_acceleration // FRAME
        holds = stats.underruns
        assert poor <= skips + holds, (lags, poor, stats)
        # One delay, changed only by whole frames the buffer dropped or held as it adapted,
        # never more than the initial playout delay and a few frames.
        assert all(d % FRAME == 0 for d in (lag - lags[0] for lag in lags)), lags
        assert max(lags) - min(lags) <= FRAME * (skips + holds), (lags, stats)
        assert min(lags) >= -0.3 * RATE and max(lags) <= 0.3 * RATE, lags
        # Alice heard silence.
        assert audioop.rms(heard_by_alice.pcm[-RATE:], 2) < 50
        await call.hangup()
        await other.ended()
    finally:
        await alice.stop()
        await bob.stop()


@pytest_twisted.ensureDeferred
async def test_dtmf_digits_arrive_as_events() -> None:
    """alice sends "159#*" during the call (RFC 4733): bob's call reports exactly those
    digits as DtmfReceived events, in order, each about the default 100 ms long; the tone
    carries on around them."""
    alice, bob = await start_pair(31)
    heard_by_alice, heard_by_bob = MemorySink(), MemorySink()
    try:
        call, other = await connect(alice, bob, a_source=Tone(A_TONE), b_source=Tone(B_TONE),
                                    a_sink=heard_by_alice, b_sink=heard_by_bob)
        await sleep(0.3)
        call.send_dtmf("159#*")
        await sleep(1.5)
        digits = [e for e in other.events if isinstance(e, DtmfReceived)]
        assert "".join(d.digit for d in digits) == "159#*"
        assert all(0.08 <= d.duration <= 0.14 for d in digits), digits
        assert not [e for e in call.events if isinstance(e, DtmfReceived)]
        sent = call.stats()["media"]["session"]["outbound"]["packetsSent"]
        assert sent > 60
        assert abs(dominant_frequency(heard_by_bob.pcm[-RATE:], max_seconds=0.5)
                   - A_TONE) < 3
        await call.hangup()
        await other.ended()
    finally:
        await alice.stop()
        await bob.stop()
