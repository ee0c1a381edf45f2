"""Audio sources and sinks: tone, silence, WAV play and record, echo, mixing, tone detection."""

from __future__ import annotations

import array
import math
import sys
import wave
from pathlib import Path

import pytest

from media import g711
from media.sinks import MemorySink, MixedRecorder, NullSink, Tee, WavSink, dominant_frequency
from media.sources import Echo, RecordingSource, Silence, Tone, WavFormatError, WavSource


def _values(pcm: bytes) -> list[int]:
    data = array.array("h")
    data.frombytes(pcm)
    if sys.byteorder == "big":
        data.byteswap()
    return list(data)


def _pcm(values: list[int]) -> bytes:
    data = array.array("h", values)
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def _write_wav(path: Path, pcm: bytes, rate: int = 8000, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def test_silence() -> None:
    """Silence is zeros of the requested length."""
    assert Silence().read(160) == bytes(320)


@pytest.mark.parametrize("freq", [440, 1000, 350.5])
def test_tone_frequency_and_level(freq: float) -> None:
    """A tone has its frequency and the requested peak level."""
    tone = Tone(freq, amplitude=0.25)
    pcm = b"".join(tone.read(160) for _ in range(50))
    assert dominant_frequency(pcm) == pytest.approx(freq, abs=0.5)
    assert max(_values(pcm)) == pytest.approx(0.25 * 32767, rel=0.01)


def test_tone_phase_continuous_across_reads() -> None:
    """Reading in odd chunk sizes gives the same samples as one long read."""
    whole = Tone(440).read(1000)
    tone = Tone(440)
    pieces = b"".join(tone.read(n) for n in (1, 7, 160, 199, 233, 400))
    assert pieces == whole
    expected = [round(0.5 * 32767 * math.sin(2 * math.pi * 440 * n / 8000)) for n in range(1000)]
    assert _values(whole) == expected


def test_tone_rejects_bad_parameters() -> None:
    """Frequencies at or above Nyquist, or amplitudes beyond full scale, are refused."""
    with pytest.raises(ValueError):
        Tone(4000)
    with pytest.raises(ValueError):
        Tone(440, amplitude=1.5)


def test_wav_source_once_then_silence(tmp_path: Path) -> None:
    """A file plays once, then silence, and says it finished."""
    path = tmp_path / "in.wav"
    _write_wav(path, _pcm(list(range(1, 251))))
    source = WavSource(path)
    assert source.duration_samples == 250
    first = source.read(160)
    assert _values(first) == list(range(1, 161)) and not source.finished
    second = source.read(160)
    assert _values(second) == list(range(161, 251)) + [0] * 70
    assert source.finished and source.read(160) == bytes(320)


def test_wav_source_looped(tmp_path: Path) -> None:
    """A looped file wraps around seamlessly."""
    path = tmp_path / "in.wav"
    _write_wav(path, _pcm([1, 2, 3]))
    source = WavSource(path, loop=True)
    assert _values(source.read(8)) == [1, 2, 3, 1, 2, 3, 1, 2]
    assert not source.finished


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (8000, 2)])
def test_wav_source_wrong_format(tmp_path: Path, rate: int, channels: int) -> None:
    """Other rates or channel counts give a clear error naming the file and the fix."""
    path = tmp_path / "wide.wav"
    _write_wav(path, bytes(400), rate=rate, channels=channels)
    with pytest.raises(WavFormatError, match="8000 Hz mono 16-bit"):
        WavSource(path)


def test_wav_source_not_a_wav(tmp_path: Path) -> None:
    """A file that is not a WAV is a WavFormatError, not a crash."""
    path = tmp_path / "junk.wav"
    path.write_bytes(b"not a wav file at all")
    with pytest.raises(WavFormatError):
        WavSource(path)


def test_wav_sink_records_playable_file(tmp_path: Path) -> None:
    """What is written reads back from the WAV file with a correct header."""
    path = tmp_path / "out.wav"
    tone = Tone(440)
    frames = [tone.read(160) for _ in range(25)]
    with WavSink(path) as sink:
        for frame in frames:
            sink.write(frame)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        assert wav.getnframes() == 25 * 160
        assert wav.readframes(wav.getnframes()) == b"".join(frames)
    assert WavSource(path).read(160) == frames[0]
    with pytest.raises(ValueError):
        sink.write(frames[0])


def test_memory_null_and_tee() -> None:
    """Tee copies to every sink; memory keeps, null counts."""
    memory, null = MemorySink(), NullSink()
    tee = Tee(memory, null)
    tee.write(b"\x01\x00" * 10)
    tee.close()
    assert memory.pcm == b"\x01\x00" * 10 and memory.samples == 10 and memory.closed
    assert null.samples == 10


def test_echo_returns_what_arrived() -> None:
    """Echo plays back received audio in order, then silence; its backlog is bounded."""
    echo = Echo(max_samples=4)
    assert echo.read(2) == bytes(4)
    echo.write(_pcm([1, 2, 3]))
    assert _values(echo.read(2)) == [1, 2]
    assert _values(echo.read(2)) == [3, 0]
    echo.write(_pcm([1, 2, 3, 4, 5, 6]))
    assert echo.dropped_samples == 2
    assert _values(echo.read(4)) == [3, 4, 5, 6]


def test_recording_source_records_sent_direction() -> None:
    """Wrapping a source records exactly what it produced (per-direction recording)."""
    sink = MemorySink()
    source = RecordingSource(Tone(300), sink)
    sent = source.read(160) + source.read(160)
    assert sink.pcm == sent


def test_mixed_recorder_aligns_and_sums() -> None:
    """Both directions are summed sample by sample, with clipping."""
    out = MemorySink()
    mixer = MixedRecorder(out)
    mixer.outgoing.write(_pcm([100, 200, 30000]))
    assert out.pcm == b""  # waits for the other direction
    mixer.incoming.write(_pcm([1, 2, 30000, 7]))
    assert _values(out.pcm) == [101, 202, 32767]
    mixer.close()
    assert _values(out.pcm) == [101, 202, 32767, 7] and out.closed


def test_mixed_recorder_one_direction_silent() -> None:
    """When one side stops (hold), the other is written mixed with silence after max_skew."""
    out = MemorySink()
    mixer = MixedRecorder(out, max_skew=160)
    for _ in range(3):
        mixer.outgoing.write(_pcm([5] * 160))
    assert out.samples == 320 and set(_values(out.pcm)) == {5}


def test_mixed_tones_identified_by_candidates() -> None:
    """Two tones mixed are both found among candidates; the louder one wins."""
    out = MemorySink()
    mixer = MixedRecorder(out)
    loud, quiet = Tone(440, 0.5), Tone(1000, 0.1)
    for _ in range(25):
        mixer.outgoing.write(loud.read(160))
        mixer.incoming.write(quiet.read(160))
    assert dominant_frequency(out.pcm, candidates=[350, 440, 1000]) == 440


def test_dominant_frequency_survives_g711() -> None:
    """A tone through µ-law still measures within 1 Hz; silence gives 0."""
    pcm = Tone(697, 0.3).read(8000)
    back = g711.ulaw_decode(g711.ulaw_encode(pcm))
    assert dominant_frequency(back) == pytest.approx(697, abs=1)
    assert dominant_frequency(bytes(1600)) == 0.0
