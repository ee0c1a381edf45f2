"""Where sent audio comes from: tone, silence, WAV files, echo of what arrives.

Sources are pulled one frame at a time with ``read(samples)`` and return 16-bit little-endian
mono PCM at 8 kHz; they are pure (no clocks), so the pacing clock alone decides when audio
flows. WAV files are read whole when opened, so the pacing path does no disk I/O.
"""

from __future__ import annotations

import array
import math
import sys
import wave
from pathlib import Path
from typing import Protocol

from media.sinks import SAMPLE_RATE, SAMPLE_WIDTH, AudioSink


class AudioSource(Protocol):
    """Produces PCM frames: 16-bit little-endian mono at 8 kHz."""

    def read(self, samples: int) -> bytes:
        """Exactly ``samples`` samples (silence when there is nothing to play)."""
        ...


class WavFormatError(ValueError):
    """A WAV file this user agent cannot play as it is (the user's fault: convert it)."""


def _to_le(values: array.array[int]) -> bytes:
    if sys.byteorder == "big":
        values.byteswap()
    return values.tobytes()


class Silence:
    """Zeros."""

    def read(self, samples: int) -> bytes:
        """``samples`` samples of silence."""
        return bytes(SAMPLE_WIDTH * samples)


class Tone:
    """A sine tone, phase-continuous across reads.

    For whole-hertz frequencies one exact period of the sample sequence is precomputed
    (rate / gcd(freq, rate) samples), so reading is slicing; other frequencies are computed
    per read.
    """

    def __init__(self, freq: float, amplitude: float = 0.5, sample_rate: int = SAMPLE_RATE) -> None:
        if not 0 < freq < sample_rate / 2:
            raise ValueError(f"tone frequency must be in (0, {sample_rate / 2}) Hz, got {freq}")
        if not 0 <= amplitude <= 1:
            raise ValueError(f"amplitude is a fraction of full scale in [0, 1], got {amplitude}")
        self.freq = freq
        self.amplitude = amplitude
        self.sample_rate = sample_rate
        self._peak = amplitude * 32767
        self._position = 0
        self._period: bytes | None = None
        if float(freq).is_integer():
            length = sample_rate // math.gcd(int(freq), sample_rate)
            self._period = self._render(0, length)

    def _render(self, start: int, count: int) -> bytes:
        w = 2 * math.pi * self.freq / self.sample_rate
        peak = self._peak
        values = array.array("h", (round(peak * math.sin(w * (start + i))) for i in range(count)))
        return _to_le(values)

    def read(self, samples: int) -> bytes:
        """The next ``samples`` samples of the tone."""
        period = self._period
        if period is None:
            out = self._render(self._position, samples)
            self._position += samples
            return out
        length = len(period) // SAMPLE_WIDTH
        start = self._position % length
        self._position = (start + samples) % length
        need = SAMPLE_WIDTH * samples
        offset = SAMPLE_WIDTH * start
        chunk = period[offset : offset + need]
        if len(chunk) == need:
            return chunk
        parts = [chunk]
        have = len(chunk)
        while have < need:
            piece = period[: need - have]
            parts.append(piece)
            have += len(piece)
        return b"".join(parts)


class WavSource:
    """Plays a WAV file once (then silence) or looped.

    The file must be 8 kHz, mono, 16-bit PCM: convert others first, e.g.
    ``sox in.wav -r 8000 -c 1 -b 16 out.wav``.
    """

    def __init__(self, path: str | Path, loop: bool = False) -> None:
        self.path = Path(path)
        self.loop = loop
        try:
            with wave.open(str(self.path), "rb") as wav:
                channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
                if (channels, width, rate) != (1, SAMPLE_WIDTH, SAMPLE_RATE):
                    raise WavFormatError(
                        f"{self.path}: need 8000 Hz mono 16-bit PCM, got {rate} Hz, "
                        f"{channels} channel(s), {8 * width}-bit "
                        f"(convert with: sox {self.path} -r 8000 -c 1 -b 16 out.wav)"
                    )
                self._data = wav.readframes(wav.getnframes())
        except (wave.Error, EOFError) as exc:
            raise WavFormatError(f"{self.path}: not a PCM WAV file ({exc})") from None
        self._position = 0
        self.finished = False
        """True once a non-looping file has played to its end."""

    @property
    def duration_samples(self) -> int:
        """Length of the file in samples."""
        return len(self._data) // SAMPLE_WIDTH

    def read(self, samples: int) -> bytes:
        """The next ``samples`` samples; silence after the end unless looping."""
        need = SAMPLE_WIDTH * samples
        data = self._data
        if not data:
            self.finished = True
            return bytes(need)
        parts = []
        have = 0
        while have < need:
            if self._position >= len(data):
                if not self.loop:
                    self.finished = True
                    parts.append(bytes(need - have))
                    break
                self._position = 0
            piece = data[self._position : self._position + need - have]
            self._position += len(piece)
            have += len(piece)
            parts.append(piece)
        if self._position >= len(data) and not self.loop:
            self.finished = True
        return b"".join(parts)


class Echo:
    """Sends back what arrives: write received PCM into it, read it out as the source.

    Up to ``max_samples`` are held; beyond that the oldest audio is dropped, so a source that
    is read slower than it is fed cannot grow without bound.
    """

    def __init__(self, max_samples: int = SAMPLE_RATE) -> None:
        self._buffer = bytearray()
        self._max = SAMPLE_WIDTH * max_samples
        self.dropped_samples = 0

    def write(self, pcm: bytes) -> None:
        """Feed received audio."""
        self._buffer += pcm
        excess = len(self._buffer) - self._max
        if excess > 0:
            excess += excess % SAMPLE_WIDTH
            del self._buffer[:excess]
            self.dropped_samples += excess // SAMPLE_WIDTH

    def close(self) -> None:
        """Nothing to release."""

    def read(self, samples: int) -> bytes:
        """What arrived, in order; silence while nothing is waiting."""
        need = SAMPLE_WIDTH * samples
        out = bytes(self._buffer[:need])
        del self._buffer[:need]
        return out.ljust(need, b"\0")


class RecordingSource:
    """Wraps a source and copies what it produces to a sink (records the sent direction)."""

    def __init__(self, source: AudioSource, sink: AudioSink) -> None:
        self.source = source
        self.sink = sink

    def read(self, samples: int) -> bytes:
        """Read from the wrapped source and record it."""
        pcm = self.source.read(samples)
        self.sink.write(pcm)
        return pcm

