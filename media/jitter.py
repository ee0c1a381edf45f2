"""Adaptive jitter buffer: reorders RTP packets and plays one frame per pull, concealing gaps.

The buffer is pulled once per frame period by the pacing clock (``get(now)``) and fed as packets
arrive (``put(packet, now)``). Frames are ordered by extended sequence number, so a constant
frame duration is assumed (the audio codecs here send continuously at the negotiated ptime).

Depth adapts to the network: the target delay follows the interarrival jitter (RFC 3550 A.8 in
seconds) within configured bounds. The buffer grows by holding playback when it runs dry (the
missing frame is concealed and waited for) and shrinks by skipping one frame when, over a whole
observation window, it never held less than two frames above the target.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from media import g711
from media.rtp import RtpPacket
from media.stats import Snapshot

logger = logging.getLogger(__name__)

_NO_DEPTH = 1 << 30


class Concealment(Enum):
    """What fills a frame that is missing at playout time."""

    REPEAT = "repeat"
    """The last frame again, attenuated a bit more each time, then silence."""
    SILENCE = "silence"
    """Silence at once."""


class FrameKind(Enum):
    """Where a played frame came from."""

    AUDIO = "audio"
    """Decoded from a received packet."""
    REPEATED = "repeated"
    """Concealment: the previous frame, attenuated."""
    SILENCE = "silence"
    """Concealment or buffering: zeros."""


@dataclass(frozen=True)
class JitterBufferSettings:
    """How the jitter buffer trades delay for smoothness."""

    min_delay: float = 0.02
    """Lowest target delay in seconds."""
    max_delay: float = 0.3
    """Highest target delay in seconds; a deeper buffer is drained at once."""
    initial_delay: float = 0.06
    """Delay before the first frame plays, in seconds, before any jitter is measured."""
    jitter_factor: float = 4.0
    """Target delay = one frame + jitter_factor x interarrival jitter (bounded as above)."""
    adapt_window: int = 50
    """Frames observed before the buffer may shrink by one frame."""
    concealment: Concealment = Concealment.REPEAT
    """How missing frames are filled."""
    attenuation: float = 0.5
    """Gain applied once more to each successive repeated frame."""
    max_repeats: int = 3
    """Repeated frames in a row before concealment turns to silence."""
    restart_after: float = 1.0
    """Seconds of empty buffer after which playout restarts with a fresh initial delay."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of PCM handed to the sink."""

    pcm: bytes
    kind: FrameKind
    sequence: int | None = None
    """RTP sequence number of an AUDIO frame."""
    timestamp: int | None = None
    """RTP timestamp of an AUDIO frame."""

    @property
    def concealed(self) -> bool:
        """True when the frame was not decoded from a packet."""
        return self.kind is not FrameKind.AUDIO


@dataclass(frozen=True)
class JitterBufferStats(Snapshot):
    """Jitter buffer figures, named after webrtc-stats where a name exists."""

    packets_received: int
    """Packets accepted into the buffer."""
    packets_duplicated: int
    """Duplicates dropped."""
    packets_discarded: int
    """Packets that arrived after their playout time, dropped."""
    frames_lost: int
    """Frames missing at playout while later ones were buffered (concealed, skipped)."""
    jitter_buffer_emitted_count: int
    """Frames played from packets."""
    concealed_samples: int
    concealment_events: int
    """Runs of consecutive concealed frames."""
    underruns: int
    """Pulls that found the buffer empty during playout (playback held, delay grows)."""
    removed_samples_for_acceleration: int
    """Samples skipped to shrink the buffer."""
    jitter: float
    """Interarrival jitter estimate in seconds."""
    jitter_buffer_target_delay: float
    """Current target delay in seconds."""
    jitter_buffer_delay: float
    """Delay held at the last pull in seconds (frames buffered x frame duration)."""


class JitterBuffer:
    """Reorders packets, drops duplicates and late ones, and conceals what is missing."""

    def __init__(
        self,
        decode: Callable[[bytes], bytes],
        *,
        frame_samples: int = 160,
        sample_rate: int = 8000,
        clock_rate: int = 8000,
        settings: JitterBufferSettings | None = None,
    ) -> None:
        if frame_samples <= 0 or sample_rate <= 0 or clock_rate <= 0:
            raise ValueError("frame size and rates must be positive")
        self._decode = decode
        self._settings = settings or JitterBufferSettings()
        s = self._settings
        if not 0 <= s.min_delay <= s.max_delay or s.max_delay <= 0:
            raise ValueError("need 0 <= min_delay <= max_delay and max_delay > 0")
        self._frame_samples = frame_samples
        self._frame_duration = frame_samples / sample_rate
        self._clock_rate = clock_rate
        self._silence = bytes(2 * frame_samples)
        self._max_frames = max(1, math.ceil(s.max_delay / self._frame_duration))
        self._capacity = 4 * self._max_frames + 8
        self._frames: dict[int, tuple[RtpPacket, bool]] = {}  # ext seq -> (packet, silent)
        # Frames given up as lost, remembered for a while: a packet behind the playout point is
        # late if its frame was lost, a duplicate if it was played (or skipped).
        self._lost_set: set[int] = set()
        self._lost_order: deque[int] = deque()
        self._highest: int | None = None
        self._next: int | None = None
        self._start_at: float | None = None
        self._last_pcm: bytes | None = None
        self._repeats = 0
        self._concealing = False
        self._empty_since: float | None = None
        self._window_min = _NO_DEPTH
        self._window_count = 0
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._depth = 0
        # Counters.
        self._received = 0
        self._duplicated = 0
        self._discarded = 0
        self._lost = 0
        self._emitted = 0
        self._concealed = 0
        self._concealment_events = 0
        self._underruns = 0
        self._removed = 0

    # --- input -----------------------------------------------------------------------------

    def _extend(self, seq: int) -> int:
        if self._highest is None:
            return seq
        delta = ((seq - self._highest) + 0x8000) % 0x10000 - 0x8000
        return self._highest + delta

    def put(self, packet: RtpPacket, now: float, *, silent: bool = False) -> None:
        """Take in one packet of this stream at arrival time ``now``.

        ``silent`` marks a packet of the stream that carries no audio for this buffer (an RFC
        4733 event replacing audio): it keeps its place in the sequence and plays as silence,
        so it is not mistaken for a loss.
        """
        ext = self._extend(packet.sequence)
        if self._highest is not None and ext < self._highest - self._capacity - 100:
            # Far behind anything plausible for a late packet: the sender restarted its
            # sequence numbers. Start over from this packet.
            logger.debug("sequence jump to %d: jitter buffer restarts", packet.sequence)
            self.reset()
            ext = packet.sequence
        if self._next is not None and ext < self._next:
            if ext in self._lost_set:
                self._discarded += 1
            else:
                self._duplicated += 1
            return
        if ext in self._frames:
            self._duplicated += 1
            return
        if not silent:
            # Event packets repeat one timestamp, which would read as jitter.
            self._update_jitter(packet.timestamp, now)
        self._received += 1
        self._frames[ext] = (packet, silent)
        if self._highest is None or ext > self._highest:
            self._highest = ext
        if self._start_at is None:
            self._start_at = now + max(self._settings.initial_delay, self.target_delay)
        if len(self._frames) > self._capacity:
            # Nobody is pulling, or far too deep: forget the oldest.
            oldest = min(self._frames)
            del self._frames[oldest]
            self._removed += self._frame_samples
            if self._next is not None and self._next <= oldest:
                self._next = oldest + 1

    def _update_jitter(self, timestamp: int, now: float) -> None:
        # RFC 3550 A.8, kept in seconds.
        transit = now - timestamp / self._clock_rate
        if self._last_transit is not None:
            d = transit - self._last_transit
            wrap = (1 << 32) / self._clock_rate
            if abs(d) > wrap / 2:
                d -= math.copysign(wrap, d)
            self._jitter += (abs(d) - self._jitter) / 16.0
        self._last_transit = transit

    # --- output ----------------------------------------------------------------------------

    @property
    def target_delay(self) -> float:
        """The delay the buffer aims for, in seconds."""
        s = self._settings
        wanted = self._frame_duration + s.jitter_factor * self._jitter
        return min(s.max_delay, max(s.min_delay, wanted))

    def _target_frames(self) -> int:
        return max(1, round(self.target_delay / self._frame_duration))

    def get(self, now: float) -> Frame:
        """The frame to play at ``now``: audio, or concealment when it is missing or late."""
        if self._next is None:
            if not self._frames or self._start_at is None or now < self._start_at - 1e-9:
                return Frame(self._silence, FrameKind.SILENCE)
            self._next = min(self._frames)
            self._window_min = _NO_DEPTH
            self._window_count = 0
        assert self._highest is not None
        depth = self._highest - self._next + 1
        self._depth = depth if depth > 0 else 0
        self._adapt(depth)
        entry = self._frames.pop(self._next, None)
        if entry is not None:
            return self._play(*entry)
        if depth > 0:
            # Later frames are here, so this one is lost (or hopelessly late): conceal, move on.
            self._lost += 1
            self._remember_lost(self._next)
            self._next += 1
            self._empty_since = None
            return self._conceal()
        # Empty: hold playback so the late frame can still be played (the delay grows).
        self._underruns += 1
        if self._empty_since is None:
            self._empty_since = now
        elif now - self._empty_since >= self._settings.restart_after:
            logger.debug("jitter buffer empty since %.3f: playout restarts", self._empty_since)
            self._next = None
            self._start_at = None
            self._empty_since = None
        return self._conceal()

    def _adapt(self, depth: int) -> None:
        if depth > self._max_frames + 1 and self._next in self._frames:
            self._skip()  # far too deep: drain at once
            return
        self._window_min = min(self._window_min, depth)
        self._window_count += 1
        if self._window_count < self._settings.adapt_window:
            return
        shrink = self._window_min >= self._target_frames() + 2
        self._window_min = _NO_DEPTH
        self._window_count = 0
        if shrink and self._next in self._frames:
            self._skip()

    def _skip(self) -> None:
        assert self._next is not None
        del self._frames[self._next]
        self._next += 1
        self._removed += self._frame_samples

    def _remember_lost(self, ext: int) -> None:
        self._lost_set.add(ext)
        self._lost_order.append(ext)
        if len(self._lost_order) > 256:
            self._lost_set.discard(self._lost_order.popleft())

    def _play(self, packet: RtpPacket, silent: bool) -> Frame:
        assert self._next is not None
        self._next += 1
        self._empty_since = None
        self._repeats = 0
        self._concealing = False
        if silent:
            self._last_pcm = None
            return Frame(self._silence, FrameKind.SILENCE, packet.sequence, packet.timestamp)
        pcm = self._decode(packet.payload)
        self._last_pcm = pcm
        self._emitted += 1
        return Frame(pcm, FrameKind.AUDIO, packet.sequence, packet.timestamp)

    def _conceal(self) -> Frame:
        s = self._settings
        if not self._concealing:
            self._concealing = True
            self._concealment_events += 1
        self._concealed += self._frame_samples
        last = self._last_pcm
        repeat = s.concealment is Concealment.REPEAT and self._repeats < s.max_repeats
        if repeat and last is not None:
            self._repeats += 1
            return Frame(g711.scale(last, s.attenuation**self._repeats), FrameKind.REPEATED)
        return Frame(self._silence, FrameKind.SILENCE)

    def reset(self) -> None:
        """Forget every packet and the playout position (a new source), keeping the counters."""
        self._frames.clear()
        self._lost_set.clear()
        self._lost_order.clear()
        self._highest = None
        self._next = None
        self._start_at = None
        self._last_pcm = None
        self._repeats = 0
        self._concealing = False
        self._empty_since = None
        self._last_transit = None

    @property
    def playing(self) -> bool:
        """True once playout has started (the initial delay has passed)."""
        return self._next is not None

    def stats(self) -> JitterBufferStats:
        """The current figures."""
        return JitterBufferStats(
            packets_received=self._received,
            packets_duplicated=self._duplicated,
            packets_discarded=self._discarded,
            frames_lost=self._lost,
            jitter_buffer_emitted_count=self._emitted,
            concealed_samples=self._concealed,
            concealment_events=self._concealment_events,
            underruns=self._underruns,
            removed_samples_for_acceleration=self._removed,
            jitter=self._jitter,
            jitter_buffer_target_delay=self.target_delay,
            jitter_buffer_delay=self._depth * self._frame_duration,
        )
