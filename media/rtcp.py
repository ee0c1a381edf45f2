"""RTCP packets (RFC 3550 §6): SR, RR, SDES, BYE and compound packets; the report interval.

Parsing is the peer's input: malformed data raises :class:`RtcpError` and nothing else. Packet
types this module does not know (APP, feedback, XR) are kept as :class:`UnknownRtcp` so that a
compound packet still parses and re-encodes.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

RTCP_VERSION = 2
#: Packets in one compound datagram. A compound carries an SR or RR, an SDES and maybe a BYE or
#: feedback (RFC 3550 §6.1): a few. Thousands of 4-byte packets only cost time to walk.
MAX_COMPOUND_PACKETS = 64
_HEADER = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IQIII")
_REPORT = struct.Struct("!IIIIII")
_SSRC = struct.Struct("!I")


class RtcpError(Exception):
    """A datagram that is not valid RTCP (the peer's fault: drop and count it)."""


class PacketType(IntEnum):
    """RTCP packet types (RFC 3550 §12.1)."""

    SR = 200
    RR = 201
    SDES = 202
    BYE = 203
    APP = 204


class SdesType(IntEnum):
    """SDES item types (RFC 3550 §6.5)."""

    END = 0
    CNAME = 1
    NAME = 2
    EMAIL = 3
    PHONE = 4
    LOC = 5
    TOOL = 6
    NOTE = 7
    PRIV = 8


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report (RFC 3550 §6.4.1) about the source ``ssrc``."""

    ssrc: int
    fraction_lost: int
    """Fraction of packets lost since the previous report, in 1/256 units (0..255)."""
    packets_lost: int
    """Cumulative number of packets lost, a signed 24-bit value (duplicates can make it < 0)."""
    highest_sequence: int
    """Extended highest sequence number received (cycles << 16 | seq)."""
    jitter: int
    """Interarrival jitter in timestamp units (RFC 3550 A.8)."""
    lsr: int = 0
    """Middle 32 bits of the NTP timestamp of the last SR received from ``ssrc``, 0 if none."""
    dlsr: int = 0
    """Delay since that SR was received, in 1/65536 seconds."""

    def encode(self) -> bytes:
        """The 24-byte block; the loss count is clamped to its signed 24-bit range."""
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError(f"fraction_lost {self.fraction_lost} not in 0..255")
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost)) & 0xFFFFFF
        try:
            return _REPORT.pack(
                self.ssrc, (self.fraction_lost << 24) | lost, self.highest_sequence,
                self.jitter, self.lsr, self.dlsr,
            )
        except struct.error as exc:
            raise ValueError(f"report block field out of range: {exc}") from None

    @classmethod
    def decode(cls, data: bytes, offset: int) -> ReportBlock:
        """Read a block at ``offset``; the caller has checked that 24 bytes are there."""
        ssrc, word, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, offset)
        lost = word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, word >> 24, lost, highest, jitter, lsr, dlsr)


def _reports_body(reports: tuple[ReportBlock, ...]) -> bytes:
    if len(reports) > 31:
        raise ValueError("at most 31 report blocks per packet")
    return b"".join(r.encode() for r in reports)


def _frame(packet_type: int, count: int, body: bytes) -> bytes:
    """Add the common header (RFC 3550 §6.4.1); ``body`` is padded to 32 bits by the caller."""
    if len(body) % 4:
        raise ValueError("RTCP packet body must be a multiple of 4 bytes")
    words = (len(body) + 4) // 4 - 1
    if words > 0xFFFF:
        raise ValueError("RTCP packet too long")
    return _HEADER.pack((RTCP_VERSION << 6) | count, packet_type, words) + body


@dataclass(frozen=True, slots=True)
class SenderReport:
    """SR (RFC 3550 §6.4.1): sender information plus reception reports."""

    ssrc: int
    ntp_timestamp: int
    """64-bit NTP timestamp of the report (seconds since 1900 << 32 | fraction)."""
    rtp_timestamp: int
    """The RTP timestamp corresponding to the same instant."""
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""
    """Profile-specific extension after the report blocks, kept opaque."""

    def encode(self) -> bytes:
        """This packet on the wire."""
        try:
            info = _SR_INFO.pack(
                self.ssrc, self.ntp_timestamp, self.rtp_timestamp,
                self.packet_count & 0xFFFFFFFF, self.octet_count & 0xFFFFFFFF,
            )
        except struct.error as exc:
            raise ValueError(f"SR field out of range: {exc}") from None
        body = info + _reports_body(self.reports) + self.extension
        return _frame(PacketType.SR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RR (RFC 3550 §6.4.2): reception reports from a participant that did not send."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def encode(self) -> bytes:
        """This packet on the wire."""
        try:
            head = _SSRC.pack(self.ssrc)
        except struct.error as exc:
            raise ValueError(f"RR SSRC out of range: {exc}") from None
        body = head + _reports_body(self.reports) + self.extension
        return _frame(PacketType.RR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """The SDES items of one source (RFC 3550 §6.5)."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...]
    """(item type, value) pairs, in order; values are at most 255 bytes."""

    @property
    def cname(self) -> str | None:
        """The CNAME item decoded as UTF-8 (replacement characters for bad bytes), if any."""
        for kind, value in self.items:
            if kind == SdesType.CNAME:
                return value.decode("utf-8", "replace")
        return None

    def encode(self) -> bytes:
        """The chunk, null-terminated and padded to 32 bits (RFC 3550 §6.5)."""
        parts = [_SSRC.pack(self.ssrc)]
        for kind, value in self.items:
            if not 1 <= kind <= 255:
                raise ValueError(f"SDES item type {kind} not in 1..255")
            if len(value) > 255:
                raise ValueError("SDES item longer than 255 bytes")
            parts.append(bytes((kind, len(value))) + value)
        raw = b"".join(parts)
        # At least one null octet ends the item list, then pad to the next 32-bit boundary.
        return raw + bytes(4 - (len(raw) % 4))


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """SDES (RFC 3550 §6.5): one chunk per source."""

    chunks: tuple[SdesChunk, ...]

    def encode(self) -> bytes:
        """This packet on the wire."""
        if len(self.chunks) > 31:
            raise ValueError("at most 31 SDES chunks per packet")
        body = b"".join(c.encode() for c in self.chunks)
        return _frame(PacketType.SDES, len(self.chunks), body)


@dataclass(frozen=True, slots=True)
class Bye:
    """BYE (RFC 3550 §6.6): the sources are leaving, with an optional reason."""

    sources: tuple[int, ...]
    reason: bytes | None = None

    def encode(self) -> bytes:
        """This packet on the wire."""
        if len(self.sources) > 31:
            raise ValueError("at most 31 sources per BYE")
        body = b"".join(_SSRC.pack(s) for s in self.sources)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise ValueError("BYE reason longer than 255 bytes")
            body += bytes((len(self.reason),)) + self.reason
            body += bytes(-len(body) % 4)
        return _frame(PacketType.BYE, len(self.sources), body)


@dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """An RTCP packet of a type not interpreted here (APP, RTPFB, PSFB, XR, ...), kept whole."""

    packet_type: int
    count: int
    """The 5-bit count / subtype field of the header."""
    body: bytes

    def encode(self) -> bytes:
        """This packet on the wire."""
        if not 0 <= self.count <= 31:
            raise ValueError("RTCP count field not in 0..31")
        return _frame(self.packet_type, self.count, self.body)


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp


def encode_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """Concatenate packets into one compound datagram (RFC 3550 §6.1)."""
    return b"".join(p.encode() for p in packets)


def _parse_reports(body: bytes, offset: int, count: int) -> tuple[tuple[ReportBlock, ...], int]:
    end = offset + 24 * count
    if end > len(body):
        raise RtcpError("RTCP report blocks run past the packet")
    return tuple(ReportBlock.decode(body, offset + 24 * i) for i in range(count)), end


def _parse_sdes(body: bytes, count: int) -> SourceDescription:
    chunks = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(body):
            raise RtcpError("SDES chunk truncated")
        (ssrc,) = _SSRC.unpack_from(body, offset)
        offset += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if offset >= len(body):
                raise RtcpError("SDES item list not terminated")
            kind = body[offset]
            if kind == SdesType.END:
                # Skip the terminating null and the padding to the next 32-bit boundary.
                offset = (offset + 4) & ~3
                break
            if offset + 2 > len(body):
                raise RtcpError("SDES item truncated")
            length = body[offset + 1]
            end = offset + 2 + length
            if end > len(body):
                raise RtcpError("SDES item runs past the packet")
            items.append((kind, bytes(body[offset + 2 : end])))
            offset = end
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return SourceDescription(tuple(chunks))


def _parse_bye(body: bytes, count: int) -> Bye:
    end = 4 * count
    if end > len(body):
        raise RtcpError("BYE source list runs past the packet")
    sources = struct.unpack_from(f"!{count}I", body) if count else ()
    reason = None
    if end < len(body):
        length = body[end]
        if end + 1 + length > len(body):
            raise RtcpError("BYE reason runs past the packet")
        reason = bytes(body[end + 1 : end + 1 + length])
    return Bye(tuple(sources), reason)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP datagram; raises only :class:`RtcpError` on malformed input.

    RFC 3550 A.2 validity checks that do not reject legitimate reduced-size RTCP (RFC 5506) are
    applied: version 2 everywhere, lengths that add up to the datagram, padding only where its
    count fits the packet.
    """
    packets: list[RtcpPacket] = []
    offset = 0
    total = len(data)
    if total < 4:
        raise RtcpError(f"RTCP datagram too short ({total} bytes)")
    while offset < total:
        if offset + 4 > total:
            raise RtcpError("RTCP header truncated")
        first, ptype, words = _HEADER.unpack_from(data, offset)
        if first >> 6 != RTCP_VERSION:
            raise RtcpError(f"RTCP version {first >> 6}, expected 2")
        end = offset + 4 * (words + 1)
        if end > total:
            raise RtcpError("RTCP length field runs past the datagram")
        body_end = end
        if first & 0x20:
            pad = data[end - 1]
            if pad == 0 or offset + 4 + pad > end:
                raise RtcpError(f"invalid RTCP padding length {pad}")
            body_end = end - pad
        body = bytes(data[offset + 4 : body_end])
        count = first & 0x1F
        packets.append(_parse_one(ptype, count, body))
        offset = end
        if len(packets) >= MAX_COMPOUND_PACKETS and offset < total:
            raise RtcpError(f"more than {MAX_COMPOUND_PACKETS} packets in a compound")
    return packets


def _parse_one(ptype: int, count: int, body: bytes) -> RtcpPacket:
    if ptype == PacketType.SR:
        if len(body) < _SR_INFO.size:
            raise RtcpError("SR shorter than its sender information")
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
        reports, end = _parse_reports(body, _SR_INFO.size, count)
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, reports, body[end:])
    if ptype == PacketType.RR:
        if len(body) < 4:
            raise RtcpError("RR shorter than its SSRC")
        (ssrc,) = _SSRC.unpack_from(body)
        reports, end = _parse_reports(body, 4, count)
        return ReceiverReport(ssrc, reports, body[end:])
    if ptype == PacketType.SDES:
        return _parse_sdes(body, count)
    if ptype == PacketType.BYE:
        return _parse_bye(body, count)
    return UnknownRtcp(ptype, count, body)


# --- Transmission interval (RFC 3550 §6.3, A.7) -----------------------------------------------

RTCP_MIN_TIME = 5.0
"""Minimum report interval in seconds (RFC 3550 §6.2)."""
RTCP_SENDER_BW_FRACTION = 0.25
RTCP_RCVR_BW_FRACTION = 0.75
#: A.7: the randomisation in [0.5, 1.5] is divided by e - 3/2 so that timer reconsideration
#: does not lower the average rate below the target.
COMPENSATION = math.e - 1.5


def reduced_minimum_interval(session_bandwidth: float) -> float:
    """The reduced minimum (RFC 3550 §6.2): 360 / session bandwidth in kbit/s, in seconds.

    ``session_bandwidth`` is in octets per second.
    """
    if session_bandwidth <= 0:
        raise ValueError("session bandwidth must be positive")
    return 360.0 / (session_bandwidth * 8 / 1000)


def rtcp_interval(
    *,
    members: int,
    senders: int,
    rtcp_bandwidth: float,
    we_sent: bool,
    avg_rtcp_size: float,
    initial: bool,
    rng: random.Random,
    min_interval: float = RTCP_MIN_TIME,
) -> float:
    """The randomised interval until the next RTCP packet, in seconds (RFC 3550 A.7).

    ``rtcp_bandwidth`` is in octets per second (usually 5% of the session bandwidth) and
    ``avg_rtcp_size`` in octets including the UDP and IP headers. Pass
    :func:`reduced_minimum_interval` as ``min_interval`` to use the reduced minimum of §6.2.
    """
    if members < 1:
        raise ValueError("members counts this participant, so it is at least 1")
    if rtcp_bandwidth <= 0:
        raise ValueError("RTCP bandwidth must be positive")
    t_min = min_interval / 2 if initial else min_interval
    n = members
    bandwidth = rtcp_bandwidth
    # §6.3.1: senders share a quarter of the RTCP bandwidth when they are few.
    if 0 < senders <= members * RTCP_SENDER_BW_FRACTION:
        if we_sent:
            bandwidth *= RTCP_SENDER_BW_FRACTION
            n = senders
        else:
            bandwidth *= RTCP_RCVR_BW_FRACTION
            n -= senders
    t = max(avg_rtcp_size * n / bandwidth, t_min)
    return t * (rng.random() + 0.5) / COMPENSATION
