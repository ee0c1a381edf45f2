"""The two ways a datagram reaches a plain-UDP media stream's RTP port agree.

The shared socket poller hands RTP-port datagrams straight to ``UdpMediaStream._rtp_datagram``
(the hot path); Twisted's own reading, where there is no poller, goes through the port's
protocol (``_Receiver.datagramReceived`` and ``_datagram``). The same packets fed through each
must leave the stream in the same state: latching, counters, events, what it sends.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from media.clock import PacingClock
from media.codecs import G711Codec
from media.rtcp import ReceiverReport
from media.session import RtpSession, RtpSessionSettings
from media.srtp import SrtpContext, generate_key
from media.stream import UdpMediaStream
from tests.adapters.test_media_stream import FakeUdpReactor, run

SUITE = "AES_CM_128_HMAC_SHA1_80"
SDP_REMOTE = ("192.0.2.7", 40000)
NAT = ("203.0.113.5", 61000)
OTHER = ("198.51.100.66", 5004)
#: A source as Twisted reports one over IPv6: (host, port, flowinfo, scope_id).
NAT6 = ("2001:db8::5", 61000, 0, 0)
SETTINGS = RtpSessionSettings(rtcp_min_interval=0.5)

Datagram = tuple[bytes, tuple[Any, ...]]


def _session(seed: int, key: tuple[bytes, bytes] | None) -> RtpSession:
    session = RtpSession(G711Codec("PCMU", 0), random.Random(seed), 0.0, SETTINGS)
    if key is not None:
        session.set_srtp(SrtpContext(SUITE, key[0], key[1]))
    return session


def _plain() -> tuple[list[Datagram], Any]:
    """Garbage, RTCP before latching, valid RTP from a NAT, then RTP from a stranger."""
    peer = _session(99, None)
    rtp = [peer.send_frame(bytes(320), 0.02 * i) for i in range(6)]
    rtcp = ReceiverReport(ssrc=peer.ssrc).encode()
    return [(b"\x80\x00garbage", NAT), (rtcp, NAT), (rtp[0], NAT), (rtp[1], NAT),
            (rtp[2], OTHER), (rtp[3], NAT), (rtp[4], OTHER), (rtp[5], NAT)], None


def _secure() -> tuple[list[Datagram], Any]:
    """SRTP: a forged packet (wrong key) must not latch; the peer's authenticated one does;
    afterwards a genuine copy from elsewhere is refused."""
    ours, theirs = generate_key(random.Random(1)), generate_key(random.Random(2))
    peer = _session(99, (theirs, ours))
    forger = _session(98, (generate_key(random.Random(3)), generate_key(random.Random(4))))
    genuine = [peer.send_frame(bytes(320), 0.02 * i) for i in range(4)]
    return [(forger.send_frame(bytes(320), 0.0), OTHER), (genuine[0], NAT),
            (genuine[1], NAT), (genuine[1], OTHER), (genuine[2], OTHER),
            (genuine[3], NAT)], (ours, theirs)


def _ipv6() -> tuple[list[Datagram], Any]:
    """IPv6 sources arrive as 4-tuples: the stream latches onto (host, port)."""
    peer = _session(99, None)
    return [(peer.send_frame(bytes(320), 0.02 * i), NAT6) for i in range(3)], None


def _outcome(packets: list[Datagram], key: Any, *, remote: bool, closed: bool,
             deliver: Callable[[UdpMediaStream, Any, bytes, tuple[Any, ...]], None]
             ) -> dict[str, Any]:
    reactor = FakeUdpReactor()
    events: list[Any] = []
    session = _session(1, key)
    stream = UdpMediaStream(session, PacingClock(reactor),
                            remote=SDP_REMOTE if remote else None, reactor=reactor,
                            on_event=events.append)
    stream.start()
    port = reactor.ports[0]
    run(reactor, 0.05)
    if closed:
        stream.close()
    for data, source in packets:
        deliver(stream, port, data, source)
        run(reactor, 0.02)
    return {"stats": stream.stats(), "latched": stream.latched,
            "destination": stream.destination, "events": events,
            "sent_to": [addr for _, addr in port.written], "errors": stream.receive_errors}


def _poller(stream: UdpMediaStream, port: Any, data: bytes, source: tuple[Any, ...]) -> None:
    stream._rtp_datagram(data, source)


def _twisted(stream: UdpMediaStream, port: Any, data: bytes, source: tuple[Any, ...]) -> None:
    port.protocol.datagramReceived(data, source)


@pytest.mark.parametrize("scenario", [_plain, _secure, _ipv6], ids=["plain", "srtp", "ipv6"])
@pytest.mark.parametrize("remote, closed", [(True, False), (False, False), (True, True)],
                         ids=["active", "no-remote", "closed"])
def test_poller_and_twisted_paths_agree(scenario: Callable[[], tuple[list[Datagram], Any]],
                                        remote: bool, closed: bool) -> None:
    """Latching, counters, events and destinations are the same whichever path the RTP
    port's datagrams take."""
    packets, key = scenario()
    by_poller = _outcome(packets, key, remote=remote, closed=closed, deliver=_poller)
    by_twisted = _outcome(packets, key, remote=remote, closed=closed, deliver=_twisted)
    assert by_poller == by_twisted
    assert by_poller["errors"] == 0


def test_the_scenarios_exercise_what_they_name() -> None:
    """The plain scenario latches onto the NAT and refuses the stranger; the SRTP one latches
    only onto the authenticated source; without a remote nothing counts but the path-less."""
    plain = _outcome(*_plain(), remote=True, closed=False, deliver=_twisted)
    assert plain["latched"] and plain["destination"] == NAT
    assert plain["stats"].session.packets_from_unexpected_source == 2
    packets, key = _secure()
    secure = _outcome(packets, key, remote=True, closed=False, deliver=_poller)
    assert secure["latched"] and secure["destination"] == NAT
    assert secure["stats"].session.packets_from_unexpected_source == 2
    ipv6 = _outcome(*_ipv6(), remote=True, closed=False, deliver=_poller)
    assert ipv6["destination"] == NAT6[:2]
    idle = _outcome(*_plain(), remote=False, closed=False, deliver=_poller)
    assert idle["stats"].packets_without_path == len(_plain()[0]) and not idle["latched"]
