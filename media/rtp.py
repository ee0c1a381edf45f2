"""RTP data packets (RFC 3550 §5): parse and encode, fast enough for hundreds of calls per core.

Parsing is the peer's input, so anything malformed raises :class:`RtpError` and nothing else.
The header extension (RFC 3550 §5.3.1) is kept opaque: profile and data, re-encoded unchanged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
#: Fixed header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC (RFC 3550 §5.1).
_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
HEADER_SIZE = _HEADER.size
HEADER_STRUCT = _HEADER
"""The fixed header as a ``struct.Struct``, for receive paths that read the fields of a plain
packet (first octet 0x80: no padding, extension or CSRC) without building an RtpPacket."""
PLAIN_FIRST_OCTET = RTP_VERSION << 6
"""First octet of a plain packet: version 2, no padding, no extension, no CSRC."""

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


class RtpError(Exception):
    """A datagram that is not a valid RTP packet (the peer's fault: drop and count it)."""


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """An RTP header extension (RFC 3550 §5.3.1), kept as received."""

    profile: int
    """The 16-bit profile-defined identifier (0xBEDE for RFC 8285 one-byte headers)."""
    data: bytes
    """The extension body; its length is a multiple of 4 bytes."""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1); the version is always 2.

    Not frozen only because a frozen dataclass costs twice as much to build on the hot path;
    treat instances as values.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0
    """Number of padding octets at the end (RFC 3550 §5.1 P bit), 0 for none."""

    def encode(self) -> bytes:
        """The packet on the wire; raises ValueError when a field is out of range."""
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} not in 0..127")
        if len(self.csrc) > 15:
            raise ValueError("at most 15 CSRC identifiers")
        if not 0 <= self.padding <= 255:
            raise ValueError(f"padding {self.padding} not in 0..255")
        first = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding:
            first |= 0x20
        if self.extension is not None:
            first |= 0x10
        second = self.payload_type | (0x80 if self.marker else 0)
        try:
            head = _HEADER.pack(first, second, self.sequence, self.timestamp, self.ssrc)
        except struct.error as exc:
            raise ValueError(f"RTP field out of range: {exc}") from None
        if not self.csrc and self.extension is None and not self.padding:
            return head + self.payload
        parts = [head]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            data = self.extension.data
            if len(data) % 4:
                raise ValueError("RTP header extension length must be a multiple of 4")
            parts.append(_EXT_HEADER.pack(self.extension.profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def encode_rtp(
    payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes, marker: bool
) -> bytes:
    """A plain RTP packet (no CSRC, extension or padding) without building an object.

    The send path of every stream runs through here, so it skips the range checks of
    :meth:`RtpPacket.encode`: the caller keeps the fields in range.
    """
    return _HEADER.pack(0x80, (payload_type | 0x80) if marker else payload_type, sequence,
                        timestamp, ssrc) + payload


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP packet; raises only :class:`RtpError` on malformed input."""
    if len(data) < HEADER_SIZE:
        raise RtpError(f"RTP packet too short ({len(data)} bytes)")
    first, second, seq, ts, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {first >> 6}, expected 2")
    if first & 0x3F == 0:
        # Fast path: no padding, extension or CSRC, the usual audio packet.
        return RtpPacket(second & 0x7F, seq, ts, ssrc, data[HEADER_SIZE:], bool(second & 0x80))
    offset = HEADER_SIZE
    csrc: tuple[int, ...] = ()
    count = first & 0x0F
    if count:
        end = offset + 4 * count
        if len(data) < end:
            raise RtpError("RTP packet truncated in the CSRC list")
        csrc = struct.unpack_from(f"!{count}I", data, offset)
        offset = end
    extension = None
    if first & 0x10:
        if len(data) < offset + 4:
            raise RtpError("RTP packet truncated in the header extension")
        profile, words = _EXT_HEADER.unpack_from(data, offset)
        offset += 4
        end = offset + 4 * words
        if len(data) < end:
            raise RtpError("RTP header extension longer than the packet")
        extension = RtpExtension(profile, bytes(data[offset:end]))
        offset = end
    end = len(data)
    padding = 0
    if first & 0x20:
        # RFC 3550 §5.1: the last octet counts the padding, itself included.
        padding = data[-1]
        if padding == 0 or offset + padding > end:
            raise RtpError(f"invalid RTP padding length {padding}")
        end -= padding
    return RtpPacket(
        second & 0x7F, seq, ts, ssrc, bytes(data[offset:end]), bool(second & 0x80), csrc,
        extension, padding,
    )


def is_rtcp(data: bytes) -> bool:
    """True when a datagram on a multiplexed port is RTCP rather than RTP.

    RFC 5761 §4: RTCP packet types 192-223 occupy the marker bit and payload type field, where
    they read as payload types 64-95, which RTP therefore never uses when multiplexing.
    """
    return len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95
