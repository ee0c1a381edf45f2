"""RTP statistics: receiver state (RFC 3550 A.1, A.3, A.8), sender counters, round-trip time.

The calculators are plain mutable objects fed with ``now``; snapshots are frozen dataclasses whose
``to_dict()`` uses webrtc-stats member names (``packetsReceived``, ``roundTripTime``, ...) so the
call report reads like a browser's ``getStats()``. Nothing here reads a clock: NTP timestamps are
computed from a wall-clock value the caller passes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from media.rtcp import ReportBlock

SEQ_MOD = 1 << 16
#: RFC 3550 A.1 defaults: a source is valid after MIN_SEQUENTIAL packets in sequence; jumps
#: larger than MAX_DROPOUT ahead or MAX_MISORDER behind are treated as a restart candidate.
MIN_SEQUENTIAL = 2
MAX_DROPOUT = 3000
MAX_MISORDER = 100

NTP_EPOCH_OFFSET = 2208988800
"""Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (the Unix epoch)."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


class Snapshot:
    """Mixin: ``to_dict()`` with camelCase (webrtc-stats) keys, nested snapshots included."""

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data, keys named as webrtc-stats names them."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, Snapshot):
                value = value.to_dict()
            out[_camel(field.name)] = value
        return out


# --- NTP time (RFC 3550 §4) ----------------------------------------------------------------------


def ntp_timestamp(wallclock: float) -> int:
    """The 64-bit NTP timestamp of a Unix wall-clock time in seconds."""
    seconds = wallclock + NTP_EPOCH_OFFSET
    whole = int(seconds)
    fraction = int((seconds - whole) * (1 << 32))
    return ((whole & 0xFFFFFFFF) << 32) | (fraction & 0xFFFFFFFF)


def ntp_to_unix(ntp: int) -> float:
    """The Unix time of a 64-bit NTP timestamp (era 0)."""
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR field format (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def round_trip_time(arrival_ntp: int, lsr: int, dlsr: int) -> float | None:
    """RTT in seconds from a report block (RFC 3550 §6.4.1): A - LSR - DLSR.

    ``arrival_ntp`` is the full NTP timestamp of the report's arrival; ``lsr`` and ``dlsr`` come
    from the block. None when the peer has not received an SR yet (LSR 0) or the result is
    negative (a bogus DLSR).
    """
    if lsr == 0:
        return None
    value = (ntp_middle32(arrival_ntp) - lsr - dlsr) & 0xFFFFFFFF
    if value & 0x80000000:
        return None
    return value / 65536.0


# --- Snapshots -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundRtpStats(Snapshot):
    """What we received from one remote source (webrtc-stats RTCInboundRtpStreamStats)."""

    ssrc: int
    packets_received: int
    packets_lost: int
    """Cumulative loss: expected minus received (RFC 3550 A.3); negative with duplicates."""
    fraction_lost: float
    """Loss over the last report interval, 0..1 (RFC 3550 A.3)."""
    jitter: float
    """Interarrival jitter in seconds (RFC 3550 A.8)."""
    bytes_received: int
    """Payload octets received (headers and padding excluded)."""
    header_bytes_received: int
    highest_sequence: int
    """Extended highest sequence number received."""
    last_packet_received_timestamp: float | None
    """``now`` of the last packet, in the caller's timebase."""


@dataclass(frozen=True)
class OutboundRtpStats(Snapshot):
    """What we sent (webrtc-stats RTCOutboundRtpStreamStats)."""

    ssrc: int
    packets_sent: int
    bytes_sent: int
    """Payload octets sent (headers excluded)."""
    header_bytes_sent: int


@dataclass(frozen=True)
class RemoteInboundRtpStats(Snapshot):
    """What the peer reports receiving from us, from its RR/SR blocks (RTCRemoteInboundRtp...)."""

    ssrc: int
    packets_lost: int
    fraction_lost: float
    jitter: float
    """Jitter the peer measured on our stream, in seconds."""
    round_trip_time: float | None
    """The latest RTT in seconds, None until an RTT could be computed."""
    total_round_trip_time: float
    round_trip_time_measurements: int
    reports_received: int


@dataclass(frozen=True)
class RemoteOutboundRtpStats(Snapshot):
    """What the peer reports sending, from its SR (RTCRemoteOutboundRtpStreamStats)."""

    ssrc: int
    packets_sent: int
    bytes_sent: int
    remote_timestamp: float
    """The peer's wall-clock time of its last SR (Unix seconds)."""
    reports_sent: int


# --- Calculators ---------------------------------------------------------------------------------


class ReceiverStatistics:
    """Per-source reception state of RFC 3550 A.1 (validation), A.3 (loss) and A.8 (jitter).

    One deviation from A.1: when probation ends, the packets received during probation count as
    received and the base sequence is the first of them, so a lossless stream reports exactly
    the packets its sender sent.
    """

    def __init__(
        self,
        ssrc: int,
        clock_rate: int,
        *,
        min_sequential: int = MIN_SEQUENTIAL,
        max_dropout: int = MAX_DROPOUT,
        max_misorder: int = MAX_MISORDER,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError("clock rate must be positive")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._min_sequential = max(1, min_sequential)
        self._max_dropout = max_dropout
        self._max_misorder = max_misorder
        self._base_seq = 0
        self._max_seq = 0
        self._bad_seq = SEQ_MOD + 1
        self._cycles = 0
        self._received = 0
        self._received_prior = 0
        self._expected_prior = 0
        self._probation = self._min_sequential
        self._probation_bytes = 0
        self._probation_header_bytes = 0
        self._started = False
        self._jitter = 0.0
        self._last_transit: float | None = None
        self._bytes = 0
        self._header_bytes = 0
        self._last_arrival: float | None = None
        self._last_fraction = 0
        # Last SR from this source: LSR value and its arrival time (for DLSR).
        self._lsr = 0
        self._lsr_arrival = 0.0

    @property
    def valid(self) -> bool:
        """True once the source has passed probation (RFC 3550 A.1)."""
        return self._probation == 0

    def _init_seq(self, seq: int) -> None:
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = SEQ_MOD + 1
        self._cycles = 0
        self._received = 0
        self._received_prior = 0
        self._expected_prior = 0

    def update(
        self, seq: int, rtp_timestamp: int, now: float, payload_size: int, header_size: int = 12
    ) -> bool:
        """Account for one packet; False when A.1 judges it invalid (probation or a jump).

        Jitter is updated only for packets that count, with ``now`` in seconds converted to
        timestamp units (RFC 3550 A.8).
        """
        if not self._started:
            self._started = True
            self._init_seq(seq)
            self._max_seq = (seq - 1) % SEQ_MOD
            self._probation = self._min_sequential
        # RFC 3550 A.8: J += (|D(i-1, i)| - J) / 16, in timestamp units, for every packet.
        transit = now * self.clock_rate - rtp_timestamp
        if self._last_transit is not None:
            d = transit - self._last_transit
            # A timestamp wrap shifts transit by 2**32: fold the difference back.
            d = (d + (1 << 31)) % (1 << 32) - (1 << 31)
            self._jitter += (abs(d) - self._jitter) / 16.0
        self._last_transit = transit
        self._last_arrival = now
        in_probation = self._probation > 0
        valid = self._update_seq(seq)
        if in_probation:
            if not valid:
                self._probation_bytes += payload_size
                self._probation_header_bytes += header_size
                return False
            # Probation just ended: its earlier packets count too (see the class docstring).
            self._bytes += self._probation_bytes
            self._header_bytes += self._probation_header_bytes
            self._probation_bytes = self._probation_header_bytes = 0
        elif not valid:
            return False
        self._bytes += payload_size
        self._header_bytes += header_size
        return True

    def _update_seq(self, seq: int) -> bool:
        udelta = (seq - self._max_seq) % SEQ_MOD
        if self._probation:
            # A.1: a source becomes valid after MIN_SEQUENTIAL packets in sequence.
            if udelta == 1:
                self._probation -= 1
                self._max_seq = seq
                if self._probation == 0:
                    count = self._min_sequential
                    self._init_seq(seq)
                    self._base_seq = (seq - count + 1) % SEQ_MOD
                    if self._base_seq > seq:
                        # Probation straddled a wrap: the base lies in the cycle before zero.
                        self._base_seq -= SEQ_MOD
                    self._received = count
                    return True
            else:
                self._probation = self._min_sequential - 1
                self._max_seq = seq
                self._probation_bytes = self._probation_header_bytes = 0
            return False
        if udelta < self._max_dropout:
            if seq < self._max_seq:
                self._cycles += SEQ_MOD  # wrapped
            self._max_seq = seq
        elif udelta <= SEQ_MOD - self._max_misorder:
            # A very large jump: accept it as a restart only if the next packet follows it.
            if seq == self._bad_seq:
                self._init_seq(seq)
            else:
                self._bad_seq = (seq + 1) % SEQ_MOD
                return False
        # else: a duplicate or a reordered packet, counted as received (A.3).
        self._received += 1
        return True

    @property
    def extended_max(self) -> int:
        """The extended highest sequence number received (A.3)."""
        return self._cycles + self._max_seq

    @property
    def expected(self) -> int:
        """Packets expected so far (A.3)."""
        if not self.valid:
            return 0
        return self.extended_max - self._base_seq + 1

    @property
    def received(self) -> int:
        """Packets counted as received (duplicates included, A.3)."""
        return self._received

    @property
    def lost(self) -> int:
        """Cumulative packets lost (A.3), clamped to the signed 24-bit range of a report."""
        return max(-0x800000, min(0x7FFFFF, self.expected - self._received))

    @property
    def jitter(self) -> float:
        """Interarrival jitter in timestamp units (A.8)."""
        return self._jitter

    def sender_report_received(self, ntp: int, now: float) -> None:
        """Remember an SR from this source so that our next report carries LSR/DLSR."""
        self._lsr = ntp_middle32(ntp)
        self._lsr_arrival = now

    def report_block(self, now: float) -> ReportBlock:
        """A reception report for this source; closes the A.3 loss interval."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        self._expected_prior = expected
        received_interval = self._received - self._received_prior
        self._received_prior = self._received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        self._last_fraction = fraction
        dlsr = 0
        if self._lsr:
            dlsr = min(0xFFFFFFFF, max(0, int((now - self._lsr_arrival) * 65536)))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=self.lost,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=min(0xFFFFFFFF, int(self._jitter)),
            lsr=self._lsr,
            dlsr=dlsr,
        )

    def snapshot(self) -> InboundRtpStats:
        """The current figures as a frozen snapshot."""
        return InboundRtpStats(
            ssrc=self.ssrc,
            packets_received=self._received if self.valid else 0,
            packets_lost=self.lost if self.valid else 0,
            fraction_lost=self._last_fraction / 256.0,
            jitter=self._jitter / self.clock_rate,
            bytes_received=self._bytes,
            header_bytes_received=self._header_bytes,
            highest_sequence=self.extended_max if self.valid else 0,
            last_packet_received_timestamp=self._last_arrival,
        )


class SenderStatistics:
    """Counters of what we sent, for the SR sender information (RFC 3550 §6.4.1)."""

    def __init__(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.packets = 0
        self.octets = 0
        """Payload octets sent (the SR's sender's octet count)."""
        self.header_octets = 0

    def sent(self, payload_size: int, header_size: int = 12) -> None:
        """Count one RTP packet."""
        self.packets += 1
        self.octets += payload_size
        self.header_octets += header_size

    def snapshot(self) -> OutboundRtpStats:
        """The current figures as a frozen snapshot."""
        return OutboundRtpStats(self.ssrc, self.packets, self.octets, self.header_octets)


class RemoteReceiverStatistics:
    """What the peer tells us about our stream in its report blocks, with the RTT we derive."""

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._block: ReportBlock | None = None
        self._rtt: float | None = None
        self._rtt_total = 0.0
        self._rtt_count = 0
        self._reports = 0

    def report_received(self, block: ReportBlock, arrival_ntp: int) -> float | None:
        """Take in a report block about our SSRC; returns the RTT it yields, if any."""
        self._block = block
        self._reports += 1
        rtt = round_trip_time(arrival_ntp, block.lsr, block.dlsr)
        if rtt is not None:
            self._rtt = rtt
            self._rtt_total += rtt
            self._rtt_count += 1
        return rtt

    @property
    def round_trip_time(self) -> float | None:
        """The latest RTT in seconds."""
        return self._rtt

    def snapshot(self) -> RemoteInboundRtpStats | None:
        """The current figures, None before the first report."""
        block = self._block
        if block is None:
            return None
        return RemoteInboundRtpStats(
            ssrc=self.ssrc,
            packets_lost=block.packets_lost,
            fraction_lost=block.fraction_lost / 256.0,
            jitter=block.jitter / self.clock_rate,
            round_trip_time=self._rtt,
            total_round_trip_time=self._rtt_total,
            round_trip_time_measurements=self._rtt_count,
            reports_received=self._reports,
        )
