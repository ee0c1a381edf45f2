"""G.711 µ-law / A-law conversion and the codec registry."""

from __future__ import annotations

import array
import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media import g711
from media.codecs import CodecInfo, G711Codec, default_registry


def _pcm(values: list[int]) -> bytes:
    data = array.array("h", values)
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def _values(pcm: bytes) -> list[int]:
    data = array.array("h")
    data.frombytes(pcm)
    if sys.byteorder == "big":
        data.byteswap()
    return list(data)


samples = st.lists(st.integers(-32768, 32767), max_size=400)


def _max_error(value: int, law: str) -> int:
    """Quantisation bound: one step of the value's segment (codes truncate), plus the
    flooring of negative values when 16-bit PCM is shifted down to 14 (µ) or 13 (A) bits."""
    magnitude = abs(value)
    if law == "ulaw":
        # µ-law segments double with the biased magnitude (|x| + 132 in 16-bit units); the
        # first has steps of 8.
        step = 8
        edge = 132 * 2
        while magnitude + 132 >= edge and step < 1024:
            step *= 2
            edge *= 2
        return step + 3
    else:
        step = 16
        edge = 512
        while magnitude >= edge and step < 1024:
            step *= 2
            edge *= 2
        return step + 7


@given(samples)
def test_ulaw_round_trip_error_bounded(values: list[int]) -> None:
    """µ-law round trips stay within one quantisation step of the segment."""
    decoded = _values(g711.ulaw_decode(g711.ulaw_encode(_pcm(values))))
    assert len(decoded) == len(values)
    for original, back in zip(values, decoded, strict=True):
        assert abs(original - back) <= _max_error(original, "ulaw")


@given(samples)
def test_alaw_round_trip_error_bounded(values: list[int]) -> None:
    """A-law round trips stay within one quantisation step of the segment."""
    decoded = _values(g711.alaw_decode(g711.alaw_encode(_pcm(values))))
    assert len(decoded) == len(values)
    for original, back in zip(values, decoded, strict=True):
        assert abs(original - back) <= _max_error(original, "alaw")


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_every_sample_value_within_bound(law: str) -> None:
    """All 65536 sample values round trip within the bound (exhaustive, one C call each way)."""
    encode, decode = {"ulaw": (g711.ulaw_encode, g711.ulaw_decode),
                      "alaw": (g711.alaw_encode, g711.alaw_decode)}[law]
    values = list(range(-32768, 32768))
    back = _values(decode(encode(_pcm(values))))
    assert all(abs(v - b) <= _max_error(v, law) for v, b in zip(values, back, strict=True))


@given(st.binary(max_size=300))
def test_encoded_bytes_are_a_fixed_point(data: bytes) -> None:
    """Decoding then encoding any G.711 byte gives the same byte back (µ-law 0x7f/0xff aside)."""
    alaw = g711.alaw_encode(g711.alaw_decode(data))
    assert alaw == data
    ulaw = g711.ulaw_encode(g711.ulaw_decode(data))
    # µ-law has two zeros (0x7f and 0xff): both decode to 0, which encodes as 0xff.
    assert ulaw == data.replace(b"\x7f", b"\xff")


def test_known_code_words() -> None:
    """Silence is 0xff in µ-law and 0xd5 in A-law (ITU-T G.711 tables)."""
    assert g711.ulaw_encode(bytes(4)) == b"\xff\xff"
    assert g711.alaw_encode(bytes(4)) == b"\xd5\xd5"
    assert _values(g711.ulaw_decode(b"\x00\x80")) == [-32124, 32124]
    assert _values(g711.alaw_decode(b"\x55\xd5")) == [-8, 8]


def test_sine_snr() -> None:
    """A full-scale-ish sine keeps an SNR above 30 dB through either law."""
    values = [round(12000 * math.sin(2 * math.pi * 440 * n / 8000)) for n in range(8000)]
    for encode, decode in ((g711.ulaw_encode, g711.ulaw_decode),
                           (g711.alaw_encode, g711.alaw_decode)):
        back = _values(decode(encode(_pcm(values))))
        noise = sum((a - b) ** 2 for a, b in zip(values, back, strict=True))
        signal = sum(a * a for a in values)
        assert 10 * math.log10(signal / noise) > 30


def test_odd_length_rejected() -> None:
    """Half a sample is the caller's fault."""
    with pytest.raises(ValueError):
        g711.ulaw_encode(b"\x00")


def test_scale_and_mix() -> None:
    """Attenuation halves samples; mixing adds and clips."""
    assert _values(g711.scale(_pcm([1000, -1000]), 0.5)) == [500, -500]
    assert _values(g711.mix(_pcm([30000, 5]), _pcm([30000, 6]))) == [32767, 11]
    assert g711.rms(bytes(320)) == 0


def test_registry_has_static_g711() -> None:
    """PCMU is 0 and PCMA is 8 (RFC 3551 Table 4), found by name in any case or by number."""
    registry = default_registry()
    pcmu = registry.create("pcmu")
    assert (pcmu.name, pcmu.payload_type, pcmu.clock_rate, pcmu.channels) == ("PCMU", 0, 8000, 1)
    assert pcmu.rtpmap() == "PCMU/8000" and pcmu.fmtp() is None
    assert pcmu.samples_per_frame(20) == 160 and pcmu.timestamp_increment(160) == 160
    info = registry.by_static_payload_type(8)
    assert info is not None and info.name == "PCMA"
    assert registry.names() == ["PCMU", "PCMA"]


def test_codec_encode_decode_sizes() -> None:
    """One payload byte per sample and back."""
    codec = default_registry().create("PCMA")
    payload = codec.encode(bytes(320))
    assert len(payload) == 160 and len(codec.decode(payload)) == 320


def test_registry_plugs_in_a_dynamic_codec() -> None:
    """A codec with a dynamic payload type registers and is created with the negotiated PT."""
    registry = default_registry()
    registry.register(CodecInfo("L16X", 8000, 1, None, lambda pt: G711Codec("PCMU", pt)))
    assert registry.create("L16X", 96).payload_type == 96
    with pytest.raises(ValueError):
        registry.create("L16X")
    with pytest.raises(ValueError):
        registry.create("opus-not-here")


def test_deprecation_warning_silenced() -> None:
    """Importing the G.711 module does not leak audioop's DeprecationWarning."""
    import importlib
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(g711)
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
