"""Where received (or sent) audio goes: WAV files, memory, nowhere, or a mix of both directions.

Sinks take 16-bit little-endian mono PCM through ``write(pcm)``; they are pure apart from file
writes, and never look at a clock: whoever pulls frames paces them. :func:`dominant_frequency`
checks a recording by content (a tone survives G.711, loss concealment and delay).
"""

from __future__ import annotations

import array
import math
import sys
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from media import g711

SAMPLE_RATE = 8000
SAMPLE_WIDTH = 2


class AudioSink(Protocol):
    """Consumes PCM frames: 16-bit little-endian mono at 8 kHz unless stated otherwise."""

    def write(self, pcm: bytes) -> None:
        """Take one frame (any whole number of samples)."""
        ...

    def close(self) -> None:
        """Flush and release what the sink holds; further writes are errors or ignored."""
        ...


class NullSink:
    """Discards audio, counting the samples."""

    def __init__(self) -> None:
        self.samples = 0

    def write(self, pcm: bytes) -> None:
        """Count and drop."""
        self.samples += len(pcm) // SAMPLE_WIDTH

    def close(self) -> None:
        """Nothing to release."""


class MemorySink:
    """Keeps everything in memory (tests, analysis)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.closed = False

    def write(self, pcm: bytes) -> None:
        """Append."""
        self._data += pcm

    @property
    def pcm(self) -> bytes:
        """Everything written so far."""
        return bytes(self._data)

    @property
    def samples(self) -> int:
        """Samples written so far."""
        return len(self._data) // SAMPLE_WIDTH

    def close(self) -> None:
        """Mark closed; the data stays readable."""
        self.closed = True


class WavSink:
    """Records to a 16-bit mono WAV file; the header's length is fixed on :meth:`close`."""

    def __init__(self, path: str | Path, sample_rate: int = SAMPLE_RATE) -> None:
        self.path = Path(path)
        self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 (closed in close())
        self._wav.setnchannels(1)
        self._wav.setsampwidth(SAMPLE_WIDTH)
        self._wav.setframerate(sample_rate)
        self._closed = False
        self.samples = 0

    def write(self, pcm: bytes) -> None:
        """Append one frame to the file."""
        if self._closed:
            raise ValueError(f"WAV sink {self.path} is closed")
        if len(pcm) % SAMPLE_WIDTH:
            raise ValueError("16-bit PCM must have an even length")
        # writeframesraw: the header is patched once on close, not after every frame.
        self._wav.writeframesraw(pcm)
        self.samples += len(pcm) // SAMPLE_WIDTH

    def close(self) -> None:
        """Write the final header and close the file (idempotent)."""
        if not self._closed:
            self._closed = True
            self._wav.close()

    def __enter__(self) -> WavSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Tee:
    """Writes every frame to several sinks."""

    def __init__(self, *sinks: AudioSink) -> None:
        self.sinks = sinks

    def write(self, pcm: bytes) -> None:
        """Forward to each sink."""
        for sink in self.sinks:
            sink.write(pcm)

    def close(self) -> None:
        """Close each sink."""
        for sink in self.sinks:
            sink.close()


class _Direction:
    """One input of a :class:`MixedRecorder`."""

    def __init__(self, owner: MixedRecorder, index: int) -> None:
        self._owner = owner
        self._index = index

    def write(self, pcm: bytes) -> None:
        """Feed this direction."""
        self._owner._feed(self._index, pcm)

    def close(self) -> None:
        """Closing one direction closes the recorder (both directions end together)."""
        self._owner.close()


class MixedRecorder:
    """Mixes the sent and received directions sample by sample into one sink.

    Write the outgoing audio to :attr:`outgoing` and the incoming to :attr:`incoming`. Samples
    are aligned by count; when one direction falls silent (hold) for more than ``max_skew``
    samples, the other is written mixed with silence so the recording does not stall.
    """

    def __init__(self, sink: AudioSink, *, max_skew: int = SAMPLE_RATE) -> None:
        self.sink = sink
        self._max_skew = max_skew * SAMPLE_WIDTH
        self._buffers = (bytearray(), bytearray())
        self.outgoing: AudioSink = _Direction(self, 0)
        self.incoming: AudioSink = _Direction(self, 1)
        self._closed = False

    def _feed(self, index: int, pcm: bytes) -> None:
        if self._closed:
            return
        if len(pcm) % SAMPLE_WIDTH:
            raise ValueError("16-bit PCM must have an even length")
        self._buffers[index].extend(pcm)
        a, b = self._buffers
        both = min(len(a), len(b))
        if both:
            self._emit(both)
        excess = max(len(a), len(b)) - self._max_skew
        if excess > 0:
            self._emit(excess)

    def _emit(self, size: int) -> None:
        a, b = self._buffers
        left = bytes(a[:size]).ljust(size, b"\0")
        right = bytes(b[:size]).ljust(size, b"\0")
        del a[:size]
        del b[:size]
        self.sink.write(g711.mix(left, right))

    def close(self) -> None:
        """Write what is left (padded with silence) and close the sink."""
        if self._closed:
            return
        self._closed = True
        rest = max(len(self._buffers[0]), len(self._buffers[1]))
        if rest:
            self._emit(rest)
        self.sink.close()


# --- Analysis ------------------------------------------------------------------------------------


def _samples(pcm: bytes) -> array.array[int]:
    values = array.array("h")
    values.frombytes(pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH])
    if sys.byteorder == "big":
        values.byteswap()
    return values


def _goertzel_power(samples: Sequence[float], freq: float, rate: int) -> float:
    coeff = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def dominant_frequency(
    pcm: bytes,
    rate: int = SAMPLE_RATE,
    candidates: Sequence[float] | None = None,
    *,
    max_seconds: float = 1.0,
) -> float:
    """The strongest frequency in 16-bit PCM, in Hz (0.0 for silence).

    With ``candidates``, the one with the most energy (Goertzel) is returned. Without, a
    zero-crossing count gives a first estimate that a Goertzel scan around it refines to a
    fraction of a hertz for a clean tone. Only the first ``max_seconds`` are analysed.
    """
    raw = _samples(pcm)[: int(rate * max_seconds)]
    if len(raw) < 16:
        return 0.0
    mean = sum(raw) / len(raw)
    samples = [x - mean for x in raw]
    if candidates is not None:
        if not candidates:
            raise ValueError("candidates must not be empty")
        return max(candidates, key=lambda f: _goertzel_power(samples, f, rate))
    level = math.sqrt(sum(x * x for x in samples) / len(samples))
    if level < 1.0:
        return 0.0
    # Rising crossings with hysteresis, so quantisation noise near zero does not count.
    threshold = 0.3 * level
    crossings = 0
    armed = False
    first = last = 0
    for i, x in enumerate(samples):
        if x < -threshold:
            armed = True
        elif x > threshold and armed:
            armed = False
            if crossings == 0:
                first = i
            last = i
            crossings += 1
    if crossings < 2:
        return 0.0
    estimate = (crossings - 1) * rate / (last - first)
    # Refine on a grid of 0.5% steps over +-5%, then a parabola through the best three.
    step = max(0.25, estimate * 0.005)
    grid = [estimate + k * step for k in range(-10, 11) if 0 < estimate + k * step < rate / 2]
    powers = [_goertzel_power(samples, f, rate) for f in grid]
    best = max(range(len(grid)), key=powers.__getitem__)
    if 0 < best < len(grid) - 1:
        p0, p1, p2 = powers[best - 1], powers[best], powers[best + 1]
        denom = p0 - 2 * p1 + p2
        if denom:
            return grid[best] + 0.5 * (p0 - p2) / denom * step
    return grid[best]
