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
        # ext seq -> (payload, sequence, timestamp, silent): fields, not packets, so the
        # receive path need not build an RtpPacket per datagram.
        self._frames: dict[int, tuple[bytes, int, int, bool]] = {}
        self._wrap = (1 << 32) / clock_rate
        """RTP timestamp period in seconds (for the jitter estimate across a wrap)."""
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
        # What the last pull played (for get()'s Frame).
        self._played_kind = FrameKind.SILENCE
        self._played_seq: int | None = None
        self._played_ts: int | None = None
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
        highest = self._highest
        if highest is None:
            return seq
        return highest + ((seq - highest + 0x8000) & 0xFFFF) - 0x8000

    def put(self, packet: RtpPacket, now: float, *, silent: bool = False) -> None:
        """Take in one packet of this stream at arrival time ``now``.

        ``silent`` marks a packet of the stream that carries no audio for this buffer (an RFC
        4733 event replacing audio): it keeps its place in the sequence and plays as silence,
        so it is not mistaken for a loss.
        """
        self.put_payload(packet.sequence, packet.timestamp, packet.payload, now, silent=silent)

    def put_payload(self, sequence: int, timestamp: int, payload: bytes, now: float, *,
                    silent: bool = False) -> None:
        """:meth:`put` from the packet's fields (the receive path's way: no packet object)."""
        highest = self._highest
        if highest is None:
            ext = sequence
        else:
            ext = highest + ((sequence - highest + 0x8000) & 0xFFFF) - 0x8000
            if ext < highest - self._capacity - 100:
                # Far behind anything plausible for a late packet: the sender restarted its
                # sequence numbers. Start over from this packet.
                logger.debug("sequence jump to %d: jitter buffer restarts", sequence)
                self.reset()
                ext = sequence
                highest = None
        nxt = self._next
        if nxt is not None and ext < nxt:
            if ext in self._lost_set:
                self._discarded += 1
            else:
                self._duplicated += 1
            return
        frames = self._frames
        if ext in frames:
            self._duplicated += 1
            return
        if not silent:
            # Event packets repeat one timestamp, which would read as jitter.
            # RFC 3550 A.8, kept in seconds.
            transit = now - timestamp / self._clock_rate
            last = self._last_transit
            if last is not None:
                d = transit - last
                if d < 0:
                    d = -d
                if d > self._wrap / 2:
                    d = abs(d - self._wrap)
                self._jitter += (d - self._jitter) / 16.0
            self._last_transit = transit
        self._received += 1
        frames[ext] = (payload, sequence, timestamp, silent)
        if highest is None or ext > highest:
            self._highest = ext
        if self._start_at is None:
            self._start_at = now + max(self._settings.initial_delay, self.target_delay)
        if len(frames) > self._capacity:
            # Nobody is pulling, or far too deep: forget the oldest.
            oldest = min(frames)
            del frames[oldest]
            self._removed += self._frame_samples
            if nxt is not None and nxt <= oldest:
                self._next = oldest + 1

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
        pcm = self.get_pcm(now)
        return Frame(pcm, self._played_kind, self._played_seq, self._played_ts)

    def get_pcm(self, now: float) -> bytes:
        """The PCM :meth:`get` would play at ``now``, without the :class:`Frame` around it (the
        pacing path's way: one object less per frame). What it was is kept for :meth:`get`."""
        nxt = self._next
        frames = self._frames
        if nxt is None:
            if not frames or self._start_at is None or now < self._start_at - 1e-9:
                return self._played(self._silence, FrameKind.SILENCE)
            nxt = self._next = min(frames)
            self._window_min = _NO_DEPTH
            self._window_count = 0
        assert self._highest is not None
        depth = self._highest - nxt + 1
        self._depth = depth if depth > 0 else 0
        # Adaptation (see _adapt); the usual tick only counts the window.
        if depth > self._max_frames + 1 and nxt in frames:
            self._skip()  # far too deep: drain at once
            nxt = self._next
        else:
            self._window_min = min(self._window_min, depth)
            self._window_count += 1
            if self._window_count >= self._settings.adapt_window:
                shrink = self._window_min >= self._target_frames() + 2
                self._window_min = _NO_DEPTH
                self._window_count = 0
                if shrink and nxt in frames:
                    self._skip()
                    nxt = self._next
        assert nxt is not None
        entry = frames.pop(nxt, None)
        if entry is not None:
            payload, sequence, timestamp, silent = entry
            self._next = nxt + 1
            self._empty_since = None
            self._repeats = 0
            self._concealing = False
            if silent:
                self._last_pcm = None
                return self._played(self._silence, FrameKind.SILENCE, sequence, timestamp)
            pcm = self._decode(payload)
            self._last_pcm = pcm
            self._emitted += 1
            self._played_kind = FrameKind.AUDIO
            self._played_seq = sequence
            self._played_ts = timestamp
            return pcm
        if depth > 0:
            # Later frames are here, so this one is lost (or hopelessly late): conceal, move on.
            self._lost += 1
            self._remember_lost(nxt)
            self._next = nxt + 1
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

    def _played(self, pcm: bytes, kind: FrameKind, sequence: int | None = None,
                timestamp: int | None = None) -> bytes:
        self._played_kind = kind
        self._played_seq = sequence
        self._played_ts = timestamp
        return pcm

    def _conceal(self) -> bytes:
        s = self._settings
        if not self._concealing:
            self._concealing = True
            self._concealment_events += 1
        self._concealed += self._frame_samples
        last = self._last_pcm
        repeat = s.concealment is Concealment.REPEAT and self._repeats < s.max_repeats
        if repeat and last is not None:
            self._repeats += 1
            return self._played(g711.scale(last, s.attenuation**self._repeats),
                                FrameKind.REPEATED)
        return self._played(self._silence, FrameKind.SILENCE)

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
