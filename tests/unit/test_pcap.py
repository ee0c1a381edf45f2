"""The pcap writer (sipua/pcap.py) and the packet taps of the SIP and ICE transports."""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock

from ice import udp
from ice.agent import Agent, IceSettings
from ice.udp import IceUdpTransport
from sipua.message import parse
from sipua.pcap import (
    CapturedPacket,
    PacketCapture,
    PcapError,
    PcapWriter,
    frame,
    pcap_header,
    pcap_record,
    read_pcap,
)
from sipua.transport import SipTransport, TransportSettings

A4 = ("192.0.2.1", 5060)
B4 = ("198.51.100.7", 40000)
A6 = ("2001:db8::1", 5060)
B6 = ("2001:db8::2", 5062)
OPTIONS = (b"OPTIONS sip:bob@198.51.100.7 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 198.51.100.7:40000;branch=z9hG4bKabc\r\n"
           b"From: <sip:alice@192.0.2.1>;tag=1\r\nTo: <sip:bob@198.51.100.7>\r\n"
           b"Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def _ones_complement_ok(data: bytes) -> bool:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_global_header_is_classic_ethernet_pcap() -> None:
    """Magic a1b2c3d4 little-endian, version 2.4, snaplen 65535, link type 1 (Ethernet)."""
    header = pcap_header()
    assert len(header) == 24
    assert struct.unpack("<IHHiIII", header) == (0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def test_ipv4_frame_has_valid_header_and_udp_checksums() -> None:
    """Ethernet type 0x0800; the IPv4 header sums to 0xffff; the UDP checksum over the pseudo
    header verifies; ports and payload are where Wireshark looks for them."""
    data = frame(b"hello", A4, B4)
    assert data[12:14] == b"\x08\x00"
    ip = data[14:34]
    assert ip[0] == 0x45 and ip[9] == 17 and _ones_complement_ok(ip)
    assert struct.unpack("!H", ip[2:4])[0] == 20 + 8 + 5
    udp_part = data[34:]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, len(udp_part))
    assert _ones_complement_ok(pseudo + udp_part)
    assert struct.unpack("!HH", udp_part[:4]) == (5060, 40000)
    assert udp_part[8:] == b"hello"


def test_ipv6_frame_has_valid_udp_checksum() -> None:
    """IPv6 (type 0x86dd, next header 17): the mandatory UDP checksum verifies."""
    data = frame(b"x" * 33, A6, B6)
    assert data[12:14] == b"\x86\xdd" and data[20] == 17
    ip6 = data[14:54]
    udp_part = data[54:]
    pseudo = ip6[8:40] + struct.pack("!IxxxB", len(udp_part), 17)
    assert _ones_complement_ok(pseudo + udp_part)


def test_mixed_families_are_refused_and_the_writer_skips_them() -> None:
    """A v4 source with a v6 destination cannot be framed: ValueError from frame(), a counted
    skip (not an exception) from the writer."""
    with pytest.raises(ValueError, match="mixed"):
        frame(b"x", A4, B6)
    out = io.BytesIO()
    writer = PcapWriter(out)
    writer.write(b"x", A4, B6, 1.0)
    writer.write(b"y", ("::ffff:192.0.2.9", 1), B4, 2.0)  # v4-mapped counts as IPv4
    assert (writer.packets, writer.skipped) == (1, 1)
    (packet,) = read_pcap(out.getvalue())
    assert packet.source == ("192.0.2.9", 1)


def test_records_read_back_with_time_and_direction() -> None:
    """What the writer wrote reads back in order with microsecond times, both families."""
    out = io.BytesIO()
    writer = PcapWriter(out)
    writer.write(OPTIONS, A4, B4, 1700000000.25)
    writer.write(b"\x00\x01rest", B6, A6, 1700000001.000001, outgoing=False)
    packets = list(read_pcap(out.getvalue()))
    assert packets == [
        CapturedPacket(1700000000.25, A4, B4, OPTIONS),
        CapturedPacket(1700000001.000001, B6, A6, b"\x00\x01rest"),
    ]
    assert parse(packets[0].payload).start_line().startswith("OPTIONS")


@given(payload=st.binary(max_size=1500), sport=st.integers(0, 65535),
       dport=st.integers(0, 65535), v6=st.booleans(),
       at=st.integers(0, 2**32 - 1).map(lambda s: s + 0.5))
def test_round_trip_property(payload: bytes, sport: int, dport: int, v6: bool,
                             at: float) -> None:
    """Any payload, ports and time survive a write and a read."""
    src, dst = (("2001:db8::a", sport), ("2001:db8::b", dport)) if v6 else \
        (("10.0.0.1", sport), ("10.0.0.2", dport))
    (packet,) = read_pcap(pcap_header() + pcap_record(payload, src, dst, at))
    assert packet == CapturedPacket(at, src, dst, payload)


@given(st.binary(max_size=200))
def test_garbage_raises_only_pcap_error(data: bytes) -> None:
    """Arbitrary bytes (after a valid header, or alone) raise PcapError or read as records."""
    for blob in (data, pcap_header() + data):
        try:
            list(read_pcap(blob))
        except PcapError:
            pass


def test_tcpdump_reads_the_file(tmp_path: Path) -> None:
    """libpcap (through tcpdump) reads the capture and decodes IP/UDP on the given ports."""
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        pytest.skip("tcpdump is not installed")
    path = tmp_path / "x.pcap"
    writer = PcapWriter(path)
    writer.write(OPTIONS, A4, B4, 1700000000.0)
    writer.write(b"\x80\x00\x00\x01" + bytes(168), B4, A4, 1700000000.02)
    writer.close()
    done = subprocess.run([tcpdump, "-nn", "-r", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    assert "192.0.2.1.5060 > 198.51.100.7.40000" in lines[0]
    assert "198.51.100.7.40000 > 192.0.2.1.5060" in lines[1]


# --- the taps ------------------------------------------------------------------------------


class _Port:
    """A fake UDP port that records writes."""

    def __init__(self, port: int, protocol: Any, interface: str) -> None:
        self.port, self.protocol, self.interface = port or 40000, protocol, interface
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def getHost(self) -> IPv4Address:
        """The bound address."""
        return IPv4Address("UDP", self.interface, self.port)

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        """Record."""
        self.written.append((data, addr))

    def stopListening(self) -> None:
        """Nothing to close."""


class _Reactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.ports: list[_Port] = []

    def listenUDP(self, port: int, protocol: Any, interface: str = "",
                  maxPacketSize: int = 8192) -> _Port:
        udp_port = _Port(port, protocol, interface)
        protocol.makeConnection(udp_port)
        self.ports.append(udp_port)
        return udp_port


def test_sip_transport_taps_see_sent_and_received_messages() -> None:
    """A request received on UDP and the 400 sent back both reach the tap, with local and
    remote addresses and direction; a failing tap does not stop the transport."""
    reactor = _Reactor()
    sip = SipTransport(TransportSettings(host="192.0.2.1", port=5060, transports=("udp",)),
                       reactor=reactor, rng=random.Random(1))
    sip.start()
    seen: list[tuple[bytes, tuple[str, int], tuple[str, int], bool, str]] = []

    def broken(*_: Any) -> None:
        raise RuntimeError("tap bug")

    sip.taps.append(broken)
    sip.taps.append(lambda *a: seen.append(a))
    bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
    reactor.ports[0].protocol.datagramReceived(bad, B4)
    assert [(s[1], s[2], s[3], s[4]) for s in seen] == [(A4, B4, False, "udp"),
                                                         (A4, B4, True, "udp")]
    assert seen[0][0] == bad and seen[1][0].startswith(b"SIP/2.0 400")
    assert reactor.ports[0].written[0][0] == seen[1][0]


def test_ice_taps_see_stun_requests_and_stop_when_removed() -> None:
    """Gathering towards a STUN server sends a Binding request that the module-level tap
    sees; a datagram received on the base is seen too; after remove_tap nothing more is."""
    reactor = _Reactor()
    agent = Agent(IceSettings(stun_servers=(("192.0.2.99", 3478),)), controlling=True,
                  rng=random.Random(2))
    transport = IceUdpTransport(agent, reactor)
    seen: list[tuple[bytes, tuple[str, int], tuple[str, int], bool]] = []

    def tap(data: bytes, local: tuple[str, int], remote: tuple[str, int],
            outgoing: bool) -> None:
        seen.append((data, local, remote, outgoing))

    udp.add_tap(tap)
    try:
        (base,) = transport.bind(["192.0.2.1"])
        agent.start_gathering(transport.now())
        transport.poke()
        assert seen and seen[0][1:] == (base.address, ("192.0.2.99", 3478), True)
        assert seen[0][0][:2] == b"\x00\x01"  # a Binding request
        transport.datagram_received(base, b"\x80" + bytes(11), ("192.0.2.50", 9))
        assert seen[-1][1:] == (base.address, ("192.0.2.50", 9), False)
    finally:
        udp.remove_tap(tap)
    count = len(seen)
    transport.datagram_received(base, b"\x80" + bytes(11), ("192.0.2.50", 9))
    assert len(seen) == count
    transport.close()


def test_packet_capture_writes_both_kinds_and_detaches(tmp_path: Path) -> None:
    """PacketCapture on a SIP transport writes SIP with local -> remote for sent messages and
    remote -> local for received ones, then detaches everything on close."""
    reactor = _Reactor()
    reactor.advance(1700000000.0)
    sip = SipTransport(TransportSettings(host="192.0.2.1", port=5060, transports=("udp",)),
                       reactor=reactor, rng=random.Random(1))
    sip.start()
    capture = PacketCapture(tmp_path / "c.pcap", reactor.seconds)
    capture.attach(sip)
    capture.datagram_tap(b"\x80\x00rtp", ("192.0.2.1", 40000), ("192.0.2.2", 40002), True)
    bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
    reactor.ports[0].protocol.datagramReceived(bad, B4)
    capture.close()
    assert sip.taps == [] and capture.datagram_tap not in udp._taps
    packets = list(read_pcap((tmp_path / "c.pcap").read_bytes()))
    assert [(p.source, p.dest) for p in packets] == [
        (("192.0.2.1", 40000), ("192.0.2.2", 40002)), (B4, A4), (A4, B4)]
    assert all(p.at == 1700000000.0 for p in packets)
