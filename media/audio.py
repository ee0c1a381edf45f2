"""Live audio: the microphone as a source and the speaker as a sink, through pyaudio.

pyaudio is an optional dependency (the ``audio`` extra) and is imported only when a device is
opened, so the rest of the user agent runs on machines without PortAudio or a sound card. When
anything is missing — the module, the PortAudio library, a default device — a
:class:`AudioUnavailable` says what and how to fix it.

PortAudio runs its own thread: the device callback and the reactor's frame pulls meet in a
small locked buffer. ``read`` and ``write`` never block the reactor: the microphone pads with
silence when it is behind, the speaker plays silence when it runs dry, and both drop the oldest
audio beyond ``max_latency`` so that clock differences between the sound card and the pacing
clock cannot build up delay.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any

from media.sinks import SAMPLE_RATE, SAMPLE_WIDTH

logger = logging.getLogger(__name__)

__all__ = ["AudioUnavailable", "Microphone", "Speaker"]

INSTALL_HINT = ("install it with: pip install 'sipua[audio]' "
                "(PortAudio comes from: apt-get install libportaudio2)")


class AudioUnavailable(RuntimeError):
    """Live audio cannot be used here: no pyaudio, no PortAudio, or no device."""


def _pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as exc:  # the module, or libportaudio.so under it, is missing
        raise AudioUnavailable(f"live audio needs pyaudio ({exc}); {INSTALL_HINT}") from None
    return pyaudio


def _ratecv() -> Any:
    with warnings.catch_warnings():
        # Deprecated in 3.11-3.12 (PEP 594); audioop-lts provides it from 3.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    return audioop.ratecv


class _Buffer:
    """Bytes passed between PortAudio's thread and the reactor's, bounded."""

    def __init__(self, max_bytes: int) -> None:
        self._data = bytearray()
        self._lock = threading.Lock()
        self._max = max_bytes - max_bytes % SAMPLE_WIDTH
        self.dropped = 0
        """Bytes dropped because the reader fell behind."""
        self.short = 0
        """Bytes of silence given because the writer fell behind."""

    def put(self, data: bytes) -> None:
        with self._lock:
            self._data += data
            excess = len(self._data) - self._max
            if excess > 0:
                del self._data[:excess]
                self.dropped += excess

    def take(self, size: int) -> bytes:
        with self._lock:
            out = bytes(self._data[:size])
            del self._data[:size]
        if len(out) < size:
            self.short += size - len(out)
            out += bytes(size - len(out))
        return out


class _Device:
    """One PortAudio stream, opened at 8 kHz or at the device's own rate with resampling."""

    def __init__(self, kind: str, device: int | None, frames_per_buffer: int,
                 callback: Any) -> None:
        pyaudio = _pyaudio()
        self.kind = kind
        try:
            self._pa = pyaudio.PyAudio()
        except Exception as exc:  # PortAudio failed to initialise
            raise AudioUnavailable(f"PortAudio did not start ({exc}); {INSTALL_HINT}") from None
        try:
            info = (self._pa.get_default_input_device_info() if kind == "input"
                    else self._pa.get_default_output_device_info()) if device is None else \
                self._pa.get_device_info_by_index(device)
        except Exception as exc:  # no default device, bad index
            self._pa.terminate()
            raise AudioUnavailable(f"no usable audio {kind} device ({exc}); check that a sound "
                                   "card is present and not busy, or pick one with device=N"
                                   ) from None
        self.name = str(info.get("name", "?"))
        self._stream: Any = None
        last: Exception | None = None
        # 8 kHz first (ALSA's default device resamples); else the device's rate, converted here.
        for rate in dict.fromkeys((SAMPLE_RATE, int(info.get("defaultSampleRate", SAMPLE_RATE)))):
            try:
                self._stream = self._pa.open(
                    format=pyaudio.paInt16, channels=1, rate=rate,
                    input=kind == "input", output=kind == "output",
                    input_device_index=device if kind == "input" else None,
                    output_device_index=device if kind == "output" else None,
                    frames_per_buffer=frames_per_buffer * rate // SAMPLE_RATE,
                    stream_callback=callback)
                self.rate = rate
                break
            except Exception as exc:
                last = exc
        if self._stream is None:
            self._pa.terminate()
            raise AudioUnavailable(f"no usable audio {kind} device: {self.name} did not open "
                                   f"({last})") from None
        self.continue_flag = pyaudio.paContinue
        logger.info("audio %s: %s at %d Hz", kind, self.name, self.rate)

    def close(self) -> None:
        if self._stream is not None:
            try:
                self._stream.stop_stream()
                self._stream.close()
            finally:
                self._stream = None
                self._pa.terminate()


class Microphone:
    """The default (or ``device``-th) input device as an :class:`~media.sources.AudioSource`."""

    def __init__(self, device: int | None = None, *, frames_per_buffer: int = 160,
                 max_latency: float = 0.2) -> None:
        self._buffer = _Buffer(int(max_latency * SAMPLE_RATE) * SAMPLE_WIDTH)
        self._state: Any = None
        self._ratecv = _ratecv()
        self._device = _Device("input", device, frames_per_buffer, self._captured)

    def _captured(self, data: bytes | None, frames: int, time_info: Any,
                  status: int) -> tuple[None, int]:
        # PortAudio's thread.
        if data:
            if self._device.rate != SAMPLE_RATE:
                data, self._state = self._ratecv(data, SAMPLE_WIDTH, 1, self._device.rate,
                                                 SAMPLE_RATE, self._state)
            self._buffer.put(data)
        return None, self._device.continue_flag

    def read(self, samples: int) -> bytes:
        """The oldest captured ``samples`` samples, silence-padded when capture is behind."""
        return self._buffer.take(samples * SAMPLE_WIDTH)

    @property
    def dropped_samples(self) -> int:
        """Captured samples dropped because they were not read in time."""
        return self._buffer.dropped // SAMPLE_WIDTH

    def close(self) -> None:
        """Stop capturing and release the device."""
        self._device.close()


class Speaker:
    """The default (or ``device``-th) output device as an :class:`~media.sinks.AudioSink`."""

    def __init__(self, device: int | None = None, *, frames_per_buffer: int = 160,
                 max_latency: float = 0.2) -> None:
        self._buffer = _Buffer(int(max_latency * SAMPLE_RATE) * SAMPLE_WIDTH)
        self._state: Any = None
        self._ratecv = _ratecv()
        self._device = _Device("output", device, frames_per_buffer, self._wanted)

    def _wanted(self, data: bytes | None, frames: int, time_info: Any,
                status: int) -> tuple[bytes, int]:
        # PortAudio's thread: hand over ``frames`` frames at the device rate.
        rate = self._device.rate
        need = frames if rate == SAMPLE_RATE else -(-frames * SAMPLE_RATE // rate)
        pcm = self._buffer.take(need * SAMPLE_WIDTH)
        if rate != SAMPLE_RATE:
            pcm, self._state = self._ratecv(pcm, SAMPLE_WIDTH, 1, SAMPLE_RATE, rate, self._state)
            pcm = pcm[: frames * SAMPLE_WIDTH].ljust(frames * SAMPLE_WIDTH, b"\0")
        return pcm, self._device.continue_flag

    def write(self, pcm: bytes) -> None:
        """Queue received audio for the device."""
        self._buffer.put(pcm)

    @property
    def underrun_samples(self) -> int:
        """Samples of silence played because nothing was queued."""
        return self._buffer.short // SAMPLE_WIDTH

    def close(self) -> None:
        """Stop playing and release the device."""
        self._device.close()
