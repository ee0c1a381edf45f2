"""Packet capture of what the user agent sends and receives, as a classic pcap file.

The user agent sees datagrams (and SIP messages on TCP/TLS flows), not frames, so each one is
written with a made-up Ethernet and IPv4 (or IPv6) and UDP header around it, addressed with the
real local and remote addresses and ports. Wireshark then decodes SIP, STUN, TURN and RTP as it
would on the wire (RTP needs "Decode As" or the ``rtp_udp`` heuristic, as on any capture).

The format is libpcap's classic one (magic ``0xa1b2c3d4``, version 2.4, microsecond time,
link type 1 = Ethernet). :func:`pcap_header` and :func:`pcap_record` are pure functions over
bytes; :class:`PcapWriter` puts them in a file; :func:`read_pcap` reads such a file back (for
tests and tools, it understands what this module writes).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "LINKTYPE_ETHERNET", "CapturedPacket", "PacketCapture", "PcapError", "PcapWriter",
    "pcap_header", "pcap_record", "read_pcap",
]

Address = tuple[str, int]

MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535
#: Largest UDP payload that fits an IPv4 packet (65535 - 20 - 8); longer data is truncated.
MAX_PAYLOAD = 65507
_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_UDP = 17
# Locally administered MAC addresses (bit 1 of the first octet set): never a real card's.
_MAC_LOCAL = bytes.fromhex("020000000001")
_MAC_REMOTE = bytes.fromhex("020000000002")


class PcapError(ValueError):
    """The bytes are not a capture this module can read."""


@dataclass(frozen=True)
class CapturedPacket:
    """One record read back: time, addresses and the UDP payload."""

    at: float
    source: Address
    dest: Address
    payload: bytes


def pcap_header(snaplen: int = SNAPLEN) -> bytes:
    """The 24-byte global header: classic pcap, microseconds, Ethernet."""
    return struct.pack("<IHHiIII", MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _udp(source: Address, dest: Address, payload: bytes, pseudo: bytes) -> bytes:
    length = 8 + len(payload)
    header = struct.pack("!HHHH", source[1], dest[1], length, 0)
    checksum = _checksum(pseudo + header + payload) or 0xFFFF  # RFC 768: 0 means "none"
    return struct.pack("!HHHH", source[1], dest[1], length, checksum) + payload


def frame(payload: bytes, source: Address, dest: Address, *, outgoing: bool = True) -> bytes:
    """Ethernet + IP + UDP around ``payload``, from ``source`` to ``dest``.

    Both addresses must be of the same family; an IPv4-mapped IPv6 address counts as IPv4.
    """
    src_ip = _ip(source[0])
    dst_ip = _ip(dest[0])
    if src_ip.version != dst_ip.version:
        raise ValueError(f"mixed address families: {source[0]} -> {dest[0]}")
    payload = payload[:MAX_PAYLOAD]
    macs = (_MAC_REMOTE + _MAC_LOCAL) if outgoing else (_MAC_LOCAL + _MAC_REMOTE)
    if src_ip.version == 4:
        length = 20 + 8 + len(payload)
        pseudo = src_ip.packed + dst_ip.packed + struct.pack("!BBH", 0, _UDP, 8 + len(payload))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, 0, 0x4000, 64, _UDP, 0,
                         src_ip.packed, dst_ip.packed)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        return macs + struct.pack("!H", _ETH_IPV4) + ip + _udp(source, dest, payload, pseudo)
    udp_length = 8 + len(payload)
    pseudo = src_ip.packed + dst_ip.packed + struct.pack("!IxxxB", udp_length, _UDP)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, udp_length, _UDP, 64, src_ip.packed,
                      dst_ip.packed)
    return macs + struct.pack("!H", _ETH_IPV6) + ip6 + _udp(source, dest, payload, pseudo)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def pcap_record(payload: bytes, source: Address, dest: Address, at: float, *,
                outgoing: bool = True) -> bytes:
    """One record: the 16-byte record header and the made-up frame."""
    data = frame(payload, source, dest, outgoing=outgoing)
    seconds = int(at)
    micros = min(999_999, round((at - seconds) * 1_000_000))
    return struct.pack("<IIII", seconds, micros, len(data), len(data)) + data


class PcapWriter:
    """Appends records to a pcap file; ``write`` never raises on a packet it cannot frame
    (a capture must not break a call): such packets are counted in :attr:`skipped`."""

    def __init__(self, target: str | Path | BinaryIO) -> None:
        if isinstance(target, str | Path):
            self._file: BinaryIO = open(target, "wb")  # noqa: SIM115 - closed in close()
            self._owned = True
        else:
            self._file = target
            self._owned = False
        self._file.write(pcap_header())
        self.packets = 0
        self.skipped = 0

    def write(self, payload: bytes, source: Address, dest: Address, at: float, *,
              outgoing: bool = True) -> None:
        """Add one datagram seen at ``at`` (seconds since the epoch)."""
        try:
            record = pcap_record(payload, source, dest, at, outgoing=outgoing)
        except ValueError:
            self.skipped += 1
            return
        self._file.write(record)
        self._file.flush()
        self.packets += 1

    def close(self) -> None:
        """Flush, and close the file if this writer opened it."""
        self._file.flush()
        if self._owned:
            self._file.close()


class PacketCapture:
    """Writes what one user agent sends and receives to a pcap file: SIP through the taps of its
    :class:`~sipua.transport.SipTransport`, ICE/TURN/RTP through the process-wide taps of
    :mod:`ice.udp`. ``clock`` gives the time of each packet (``reactor.seconds``)."""

    def __init__(self, target: str | Path | BinaryIO, clock: Callable[[], float]) -> None:
        self.writer = PcapWriter(target)
        self.clock = clock
        self._sip: list[Any] = []
        self._attached_udp = False

    def sip_tap(self, data: bytes, local: Address, remote: Address, outgoing: bool,
                transport: str) -> None:
        """A SIP message (over TCP/TLS written as one UDP datagram, readable all the same)."""
        self.datagram_tap(data, local, remote, outgoing)

    def datagram_tap(self, data: bytes, local: Address, remote: Address,
                     outgoing: bool) -> None:
        """A datagram on an ICE socket (STUN, TURN, RTP, RTCP)."""
        source, dest = (local, remote) if outgoing else (remote, local)
        self.writer.write(data, source, dest, self.clock(), outgoing=outgoing)

    def attach(self, sip_transport: Any = None) -> None:
        """Start capturing: the given SIP transport (if any) and every ICE socket."""
        from ice import udp

        if sip_transport is not None:
            sip_transport.taps.append(self.sip_tap)
            self._sip.append(sip_transport)
        if not self._attached_udp:
            udp.add_tap(self.datagram_tap)
            self._attached_udp = True

    def close(self) -> None:
        """Stop capturing and close the file."""
        from ice import udp

        for transport in self._sip:
            if self.sip_tap in transport.taps:
                transport.taps.remove(self.sip_tap)
        self._sip.clear()
        if self._attached_udp:
            udp.remove_tap(self.datagram_tap)
            self._attached_udp = False
        self.writer.close()


def read_pcap(data: bytes) -> Iterator[CapturedPacket]:
    """The UDP datagrams of a classic little-endian Ethernet capture (what this module writes).

    Raises :class:`PcapError` on anything else or on a truncated file.
    """
    if len(data) < 24:
        raise PcapError("shorter than a pcap header")
    magic, major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from(
        "<IHHiIII", data)
    if magic != MAGIC or major != 2:
        raise PcapError("not a classic little-endian pcap file")
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"link type {linktype}, expected Ethernet")
    offset = 24
    while offset < len(data):
        if offset + 16 > len(data):
            raise PcapError("truncated record header")
        seconds, micros, included, _original = struct.unpack_from("<IIII", data, offset)
        offset += 16
        body = data[offset:offset + included]
        if len(body) != included:
            raise PcapError("truncated record")
        offset += included
        yield _parse_frame(body, seconds + micros / 1_000_000)


def _parse_frame(body: bytes, at: float) -> CapturedPacket:
    if len(body) < 14:
        raise PcapError("frame shorter than an Ethernet header")
    (ethertype,) = struct.unpack_from("!H", body, 12)
    if ethertype == _ETH_IPV4:
        if len(body) < 14 + 20 + 8:
            raise PcapError("truncated IPv4 packet")
        ihl = (body[14] & 0x0F) * 4
        src: str = str(ipaddress.IPv4Address(body[26:30]))
        dst: str = str(ipaddress.IPv4Address(body[30:34]))
        udp_at = 14 + ihl
    elif ethertype == _ETH_IPV6:
        if len(body) < 14 + 40 + 8:
            raise PcapError("truncated IPv6 packet")
        src = str(ipaddress.IPv6Address(body[22:38]))
        dst = str(ipaddress.IPv6Address(body[38:54]))
        udp_at = 54
    else:
        raise PcapError(f"ethertype {ethertype:#06x} is not IP")
    if len(body) < udp_at + 8:
        raise PcapError("truncated UDP header")
    sport, dport, length = struct.unpack_from("!HHH", body, udp_at)
    payload = body[udp_at + 8:udp_at + length]
    if length < 8 or len(payload) != length - 8:
        raise PcapError("UDP length does not match the frame")
    return CapturedPacket(at, (src, sport), (dst, dport), payload)
