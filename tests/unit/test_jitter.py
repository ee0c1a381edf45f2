"""Adaptive jitter buffer under reordering, loss, duplication and jitter, on a fake clock."""

from __future__ import annotations

import random

import pytest

from media.jitter import Concealment, Frame, FrameKind, JitterBuffer, JitterBufferSettings
from media.rtp import RtpPacket

PTIME = 0.02


def _packet(seq: int, base_seq: int = 1000) -> RtpPacket:
    n = seq - base_seq
    return RtpPacket(0, seq % 65536, (5000 + 160 * n) % 2**32, 42, bytes([n % 251 + 1]) * 160)


def _decode(payload: bytes) -> bytes:
    return payload * 2  # 160 bytes -> 320 bytes of "PCM" whose content identifies the frame


def _buffer(**kwargs: object) -> JitterBuffer:
    return JitterBuffer(_decode, settings=JitterBufferSettings(**kwargs))  # type: ignore[arg-type]


def _run(
    buffer: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], ticks: int,
    phase: float = 0.005,
) -> list[Frame]:
    """Deliver packets by arrival time and pull one frame per 20 ms tick."""
    pending = sorted(arrivals, key=lambda a: a[0])
    frames = []
    i = 0
    for k in range(ticks):
        now = k * PTIME + phase
        while i < len(pending) and pending[i][0] <= now:
            buffer.put(pending[i][1], pending[i][0])
            i += 1
        frames.append(buffer.get(now))
    return frames


def _steady(count: int, start: int = 1000, delay: float = 0.0) -> list[tuple[float, RtpPacket]]:
    return [(n * PTIME + delay, _packet(start + n, start)) for n in range(count)]


def _audio_seqs(frames: list[Frame]) -> list[int]:
    return [f.sequence for f in frames if f.kind is FrameKind.AUDIO and f.sequence is not None]


def _quiet(**kwargs: object) -> JitterBuffer:
    """A buffer that never shrinks on its own (to observe one effect at a time)."""
    return _buffer(adapt_window=10_000, **kwargs)


# With the default 60 ms initial delay, frame n plays at tick n + 3 (t = 0.065 s + n x 20 ms).
END_50 = 53


def test_in_order_stream_plays_everything_after_initial_delay() -> None:
    """A clean stream plays every frame in order; only the initial delay is silence."""
    buffer = _quiet()
    frames = _run(buffer, _steady(100), 103)
    assert _audio_seqs(frames) == list(range(1000, 1100))
    first = next(i for i, f in enumerate(frames) if f.kind is FrameKind.AUDIO)
    assert first * PTIME == pytest.approx(0.06, abs=0.021)  # initial_delay
    stats = buffer.stats()
    assert stats.frames_lost == 0 and stats.packets_discarded == 0
    assert stats.jitter_buffer_emitted_count == 100
    assert frames[first].pcm == bytes([1]) * 320


def test_reordering_is_undone() -> None:
    """Pairs swapped in transit come out in sequence order, nothing concealed."""
    arrivals = _steady(100)
    for i in range(0, 100, 2):
        (t1, p1), (t2, p2) = arrivals[i], arrivals[i + 1]
        arrivals[i], arrivals[i + 1] = (t1, p2), (t2, p1)
    buffer = _buffer()
    frames = _run(buffer, arrivals, 110)
    assert _audio_seqs(frames) == list(range(1000, 1100))
    assert buffer.stats().frames_lost == 0


def test_clean_stream_shrinks_initial_delay_to_target() -> None:
    """With no jitter the 60 ms start shrinks toward the 20 ms target by skipping one frame."""
    buffer = _buffer()
    frames = _run(buffer, _steady(200), 203)
    seqs = _audio_seqs(frames)
    assert seqs == sorted(seqs) and len(seqs) >= 197
    stats = buffer.stats()
    assert stats.removed_samples_for_acceleration == 160 * (200 - len(seqs))
    assert stats.frames_lost == 0
    played = [i for i, f in enumerate(frames) if f.kind is FrameKind.AUDIO]
    assert not any(f.concealed for f in frames[played[0] : played[-1] + 1])
    assert len(frames) - 1 - played[-1] == 200 - len(seqs)  # the stream ends that much sooner


def test_duplicates_dropped_and_counted() -> None:
    """Every packet sent twice (one copy 30 ms later) plays once; the copies are counted."""
    arrivals = _steady(50) + [(t + 0.03, p) for t, p in _steady(50)]
    buffer = _buffer()
    frames = _run(buffer, arrivals, 60)
    assert _audio_seqs(frames) == list(range(1000, 1050))
    stats = buffer.stats()
    assert stats.packets_duplicated == 50 and stats.packets_received == 50
    assert stats.packets_discarded == 0


def test_loss_is_concealed_by_attenuated_repeat() -> None:
    """A lost packet plays as the previous frame at half level; the stream goes on."""
    arrivals = [a for a in _steady(50) if a[1].sequence != 1020]
    buffer = _quiet()
    frames = _run(buffer, arrivals, END_50)
    seqs = _audio_seqs(frames)
    assert 1020 not in seqs and seqs == [s for s in range(1000, 1050) if s != 1020]
    index = next(i for i, f in enumerate(frames) if f.sequence == 1019)
    concealed = frames[index + 1]
    assert concealed.kind is FrameKind.REPEATED
    assert concealed.pcm == bytes([10]) * 320  # frame 1019 carried 20, halved
    assert frames[index + 2].sequence == 1021
    stats = buffer.stats()
    assert stats.frames_lost == 1 and stats.concealment_events == 1
    assert stats.concealed_samples == 160


def test_burst_loss_turns_to_silence() -> None:
    """After max_repeats attenuated repeats, concealment is silence."""
    lost = set(range(1020, 1026))
    arrivals = [a for a in _steady(50) if a[1].sequence not in lost]
    frames = _run(_buffer(max_repeats=2), arrivals, 60)
    index = next(i for i, f in enumerate(frames) if f.sequence == 1019)
    kinds = [f.kind for f in frames[index + 1 : index + 7]]
    assert kinds == [FrameKind.REPEATED] * 2 + [FrameKind.SILENCE] * 4
    assert frames[index + 2].pcm == bytes([5]) * 320  # quarter level on the second repeat


def test_silence_concealment_mode() -> None:
    """With SILENCE concealment, a lost frame is zeros."""
    arrivals = [a for a in _steady(50) if a[1].sequence != 1020]
    frames = _run(_buffer(concealment=Concealment.SILENCE), arrivals, 60)
    index = next(i for i, f in enumerate(frames) if f.sequence == 1019)
    assert frames[index + 1].kind is FrameKind.SILENCE
    assert frames[index + 1].pcm == bytes(320)


def test_late_packet_discarded_and_counted() -> None:
    """A packet arriving after its playout time is dropped as late, not played out of order."""
    arrivals = _steady(50)
    t, p = arrivals[20]
    arrivals[20] = (t + 0.2, p)
    buffer = _buffer()
    frames = _run(buffer, arrivals, 60)
    seqs = _audio_seqs(frames)
    assert seqs == sorted(seqs) and 1020 not in seqs
    stats = buffer.stats()
    assert stats.packets_discarded == 1 and stats.frames_lost == 1


def test_sequence_wraparound() -> None:
    """Playout continues across sequence number 65535 -> 0."""
    arrivals = [(n * PTIME, _packet(65520 + n, 65520)) for n in range(40)]
    buffer = _buffer()
    frames = _run(buffer, arrivals, 50)
    seqs = _audio_seqs(frames)
    assert seqs == [(65520 + n) % 65536 for n in range(40)]


def test_target_grows_with_jitter_and_shrinks_back() -> None:
    """Heavy jitter raises the target delay; a calm network brings the buffer back down."""
    rng = random.Random(7)
    jittery = [(n * PTIME + rng.uniform(0, 0.08), _packet(1000 + n)) for n in range(500)]
    calm = [(n * PTIME, _packet(1000 + n)) for n in range(500, 2000)]
    buffer = _buffer()
    pending = sorted(jittery + calm, key=lambda a: a[0])
    high_target = 0.0
    i = 0
    played = []
    for k in range(2000):
        now = k * PTIME + 0.005
        while i < len(pending) and pending[i][0] <= now:
            buffer.put(pending[i][1], pending[i][0])
            i += 1
        played.append(buffer.get(now))
        if k == 500:
            high_target = buffer.stats().jitter_buffer_target_delay
            high_delay = buffer.stats().jitter_buffer_delay
    stats = buffer.stats()
    assert high_target >= 0.06
    assert high_delay >= 0.04
    assert stats.jitter_buffer_target_delay == pytest.approx(0.02, abs=0.005)
    assert stats.jitter_buffer_delay <= 0.06
    assert stats.removed_samples_for_acceleration > 0
    seqs = _audio_seqs(played)
    assert seqs == sorted(seqs)
    # Most of the jittery part still played: the buffer absorbed the jitter.
    assert sum(1 for s in seqs if s < 1500) > 450


def test_target_bounded_by_max_delay() -> None:
    """Jitter beyond reason still keeps the target within max_delay."""
    rng = random.Random(3)
    arrivals = [(n * PTIME + rng.uniform(0, 2.0), _packet(1000 + n)) for n in range(300)]
    buffer = _buffer(max_delay=0.2)
    _run(buffer, arrivals, 400)
    assert buffer.stats().jitter_buffer_target_delay == pytest.approx(0.2)


def test_underrun_holds_then_plays_late_frames() -> None:
    """A 100 ms stall with no packets at all holds playback; the stalled frames still play."""
    arrivals = [(t + (0.1 if 1020 <= p.sequence < 1025 else 0.0), p) for t, p in _steady(60)]
    arrivals = [(max(t, 0.5) if 1020 <= p.sequence < 1030 else t, p) for t, p in arrivals]
    buffer = _buffer()
    frames = _run(buffer, arrivals, 90)
    assert _audio_seqs(frames) == list(range(1000, 1060))
    stats = buffer.stats()
    assert stats.underruns > 0 and stats.frames_lost == 0


def test_restart_after_long_silence() -> None:
    """After the sender pauses for seconds, playout restarts with a fresh initial delay."""
    arrivals = _steady(20) + [(3.0 + n * PTIME, _packet(1020 + n)) for n in range(20)]
    buffer = _buffer(restart_after=1.0)
    frames = _run(buffer, arrivals, 200)
    assert _audio_seqs(frames) == list(range(1000, 1040))
    resumed = next(i for i, f in enumerate(frames) if f.sequence == 1020)
    assert resumed * PTIME + 0.005 >= 3.0 + 0.06 - 1e-9
    assert frames[resumed - 1].kind is FrameKind.SILENCE


def test_silent_packets_keep_their_place() -> None:
    """Event packets marked silent play as silence and are not counted as lost."""
    buffer = _quiet()
    pending = _steady(40)
    frames = []
    i = 0
    for k in range(43):
        now = k * PTIME + 0.005
        while i < len(pending) and pending[i][0] <= now:
            t, p = pending[i]
            buffer.put(p, t, silent=1010 <= p.sequence < 1015)
            i += 1
        frames.append(buffer.get(now))
    kinds = {f.sequence: f.kind for f in frames if f.sequence is not None}
    assert [kinds[s] for s in range(1009, 1016)] == (
        [FrameKind.AUDIO] + [FrameKind.SILENCE] * 5 + [FrameKind.AUDIO]
    )
    stats = buffer.stats()
    assert stats.frames_lost == 0 and stats.concealed_samples == 0


def test_sequence_restart_far_behind_resets() -> None:
    """A sender that restarts its sequence numbers far behind is followed, not dropped as late."""
    arrivals = _steady(30) + [(0.6 + n * PTIME, _packet(10 + n, 10)) for n in range(30)]
    buffer = _buffer()
    frames = _run(buffer, arrivals, 80)
    seqs = _audio_seqs(frames)
    old = [s for s in seqs if s >= 1000]
    assert old == list(range(1000, 1000 + len(old))) and len(old) >= 25
    assert seqs[len(old):] == list(range(10, 10 + len(seqs) - len(old)))
    assert seqs[-1] == 39


def test_nothing_before_first_packet() -> None:
    """Pulling an empty buffer gives silence frames of the right size and counts nothing."""
    buffer = _buffer()
    frame = buffer.get(1.0)
    assert frame.kind is FrameKind.SILENCE and frame.pcm == bytes(320) and frame.concealed
    assert buffer.stats().concealed_samples == 0 and not buffer.playing
