"""The audio codec interface and a registry of the codecs this user agent can negotiate.

A codec turns 16-bit little-endian mono PCM at its ``sample_rate`` into RTP payloads and back.
Stateful codecs (Opus, G.722) get one instance per stream from the registry's factory, which is
also how a dynamic payload type reaches them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from media import g711


class Codec(Protocol):
    """What the RTP session needs from a codec."""

    @property
    def name(self) -> str:
        """The encoding name of the SDP rtpmap (``PCMU``)."""
        ...

    @property
    def payload_type(self) -> int:
        """The RTP payload type used for this stream."""
        ...

    @property
    def clock_rate(self) -> int:
        """RTP timestamp units per second (the rtpmap rate)."""
        ...

    @property
    def sample_rate(self) -> int:
        """Rate of the linear PCM this codec takes and gives (differs for G.722)."""
        ...

    @property
    def channels(self) -> int:
        """Audio channels of the PCM."""
        ...

    def encode(self, pcm: bytes) -> bytes:
        """One RTP payload from one frame of PCM."""
        ...

    def decode(self, payload: bytes) -> bytes:
        """PCM from one RTP payload."""
        ...

    def samples_per_frame(self, ptime_ms: int) -> int:
        """PCM samples per channel in a frame of ``ptime_ms`` milliseconds."""
        ...

    def timestamp_increment(self, samples: int) -> int:
        """RTP timestamp units covered by ``samples`` PCM samples."""
        ...

    def rtpmap(self) -> str:
        """The SDP ``a=rtpmap`` value after the payload type (``PCMU/8000``)."""
        ...

    def fmtp(self) -> str | None:
        """The SDP ``a=fmtp`` parameters, or None."""
        ...


@dataclass(frozen=True)
class G711Codec:
    """G.711 µ-law (PCMU) or A-law (PCMA), RFC 3551 §4.5.14: 8 kHz, one byte per sample."""

    name: str
    """``PCMU`` or ``PCMA``."""
    payload_type: int
    """0 for PCMU, 8 for PCMA (RFC 3551 Table 4)."""
    clock_rate: int = 8000
    """RTP clock rate, equal to the sampling rate."""
    sample_rate: int = 8000
    """Linear PCM rate."""
    channels: int = 1
    """Mono."""

    def __post_init__(self) -> None:
        if self.name not in ("PCMU", "PCMA"):
            raise ValueError(f"G.711 codec name must be PCMU or PCMA, not {self.name!r}")

    def encode(self, pcm: bytes) -> bytes:
        """One byte per 16-bit sample."""
        if self.name == "PCMU":
            return g711.ulaw_encode(pcm)
        return g711.alaw_encode(pcm)

    def decode(self, payload: bytes) -> bytes:
        """Two bytes of PCM per payload byte."""
        if self.name == "PCMU":
            return g711.ulaw_decode(payload)
        return g711.alaw_decode(payload)

    def samples_per_frame(self, ptime_ms: int) -> int:
        """8 samples per millisecond."""
        return self.sample_rate * ptime_ms // 1000

    def timestamp_increment(self, samples: int) -> int:
        """One timestamp unit per sample."""
        return samples

    def rtpmap(self) -> str:
        """``PCMU/8000`` or ``PCMA/8000``."""
        return f"{self.name}/{self.clock_rate}"

    def fmtp(self) -> str | None:
        """G.711 has no format parameters."""
        return None


CodecFactory = Callable[[int], Codec]
"""Builds a codec instance for a stream, given the payload type negotiated for it."""


@dataclass(frozen=True)
class CodecInfo:
    """A registry entry: what SDP negotiation matches on, and how to build an instance."""

    name: str
    """Encoding name as in the rtpmap (matched case-insensitively, RFC 4855 §3)."""
    clock_rate: int
    """RTP clock rate of the rtpmap."""
    channels: int
    """Channels of the rtpmap (1 when absent)."""
    static_payload_type: int | None
    """The RFC 3551 static payload type, or None for a dynamic one."""
    factory: CodecFactory
    """Builds a codec for a payload type."""


class CodecRegistry:
    """Codecs by name and static payload type, in preference order."""

    def __init__(self) -> None:
        self._by_name: dict[str, CodecInfo] = {}

    def register(self, info: CodecInfo) -> None:
        """Add or replace a codec; later registrations come later in preference."""
        self._by_name[info.name.upper()] = info

    def get(self, name: str) -> CodecInfo | None:
        """The entry for an encoding name, any case."""
        return self._by_name.get(name.upper())

    def by_static_payload_type(self, payload_type: int) -> CodecInfo | None:
        """The entry with this static payload type (an offer may omit its rtpmap)."""
        for info in self._by_name.values():
            if info.static_payload_type == payload_type:
                return info
        return None

    def names(self) -> list[str]:
        """Registered encoding names in preference order."""
        return [info.name for info in self._by_name.values()]

    def create(self, name: str, payload_type: int | None = None) -> Codec:
        """A codec instance; ``payload_type`` defaults to the static one."""
        info = self.get(name)
        if info is None:
            raise ValueError(f"unknown codec {name!r}; known: {', '.join(self.names())}")
        if payload_type is None:
            if info.static_payload_type is None:
                raise ValueError(f"codec {info.name} needs a dynamic payload type")
            payload_type = info.static_payload_type
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} not in 0..127")
        return info.factory(payload_type)


def default_registry() -> CodecRegistry:
    """A new registry holding PCMU and PCMA."""
    registry = CodecRegistry()
    registry.register(CodecInfo("PCMU", 8000, 1, 0, lambda pt: G711Codec("PCMU", pt)))
    registry.register(CodecInfo("PCMA", 8000, 1, 8, lambda pt: G711Codec("PCMA", pt)))
    return registry


TELEPHONE_EVENT = "telephone-event"
"""Encoding name of RFC 4733 events (DTMF), negotiated beside the audio codec."""
TELEPHONE_EVENT_FMTP = "0-16"
"""The events we send and understand: DTMF 0-9, *, #, A-D and flash (RFC 4733 §3.2)."""
