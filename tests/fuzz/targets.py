"""One fuzz target per parser layer, shared by the hypothesis tests and the atheris harnesses.

A target takes arbitrary bytes and feeds them to the layer's parser the way a peer's datagram or
stream would reach it. The contract it checks is the one in docs/security.md: the parser either
succeeds or raises exactly the layer's error (``SipParseError``, ``SdpError``, ``StunError``,
``RtpError``, ``RtcpError``, ``DtmfError``); a sans-IO core fed the bytes (ICE agent, TURN client)
raises nothing at all. Anything else propagates, and that is the finding.

The seeds are valid messages of each layer: structure-aware mutations start from them so that
the fuzzer reaches past the first length or magic-cookie check.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ice.agent import Agent, IceSettings
from ice.candidate import LocalBase
from ice.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    StunError,
    decode,
    decode_channel_data,
    encode_channel_data,
    short_term_key,
    verify_integrity,
)
from ice.turn import TurnClient, TurnSettings
from media.dtmf import DtmfError, DtmfReceiver, TelephoneEvent, parse_telephone_event
from media.rtcp import (
    Bye,
    ReportBlock,
    RtcpError,
    SdesChunk,
    SenderReport,
    SourceDescription,
    encode_compound,
    parse_rtcp,
)
from media.rtp import RtpError, RtpPacket, parse_rtp
from sipua.auth import parse_authorization, parse_challenges
from sipua.message import SipParseError, StreamParser, error_response, parse
from sipua.sdp import (
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    SdpError,
    default_candidate,
    has_ice_mismatch,
    negotiate_codecs,
    parse_sdp,
    select_crypto,
)
from sipua.uri import parse_uri

# ----------------------------------------------------------------------------------------------
# Seeds: one or more valid messages per layer

SIP_SDP = (
    "v=0\r\n"
    "o=- 1 1 IN IP4 192.0.2.1\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.1\r\n"
    "t=0 0\r\n"
    "a=ice-ufrag:abcd\r\n"
    "a=ice-pwd:0123456789abcdefghijkl\r\n"
    "a=ice-options:trickle\r\n"
    "m=audio 4000 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=rtcp:4001\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80"
    " inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\n"
    "a=candidate:1 1 udp 2130706431 192.0.2.1 4000 typ host\r\n"
    "a=candidate:2 1 udp 1694498815 198.51.100.7 40000 typ srflx raddr 192.0.2.1 rport 4000\r\n"
    "a=candidate:3 2 udp 2130706430 192.0.2.1 4001 typ host\r\n"
    "a=end-of-candidates\r\n"
    "a=sendrecv\r\n"
)

SIP_INVITE = (
    "INVITE sip:bob@example.com;transport=udp SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: \"Bob\" <sip:bob@example.com>\r\n"
    "From: Alice <sip:alice@example.com>;tag=1928301774\r\n"
    "Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@192.0.2.1:5060;ob>;expires=60\r\n"
    "Route: <sip:proxy.example.com;lr>\r\n"
    "Supported: replaces, 100rel\r\n"
    "Authorization: Digest username=\"alice\", realm=\"example.com\", nonce=\"abc\","
    " uri=\"sip:bob@example.com\", response=\"0123456789abcdef0123456789abcdef\","
    " algorithm=MD5, cnonce=\"xyz\", qop=auth, nc=00000001\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SIP_SDP)}\r\n"
    "\r\n" + SIP_SDP
).encode()

SIP_RESPONSE = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;received=198.51.100.7"
    b";rport=4444\r\n"
    b"To: <sip:alice@example.com>;tag=8321234356\r\n"
    b"From: <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"WWW-Authenticate: Digest realm=\"example.com\","
    b" nonce=\"ea9c8e88df84f1cec4341ae6cbe5a359\","
    b" algorithm=SHA-256, qop=\"auth,auth-int\", opaque=\"\", stale=FALSE\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

SIP_SEEDS = (SIP_INVITE, SIP_RESPONSE)
SDP_SEEDS = (SIP_SDP.encode(),)

ICE_PWD = "0123456789abcdefghijkl"
ICE_UFRAG = "abcd"
_TID = bytes(range(12))


def _stun_seeds() -> tuple[bytes, ...]:
    key = short_term_key(ICE_PWD)
    check = Message(Method.BINDING, MessageClass.REQUEST, _TID, {
        Attr.USERNAME: f"{ICE_UFRAG}:efgh", Attr.PRIORITY: 1845501695,
        Attr.ICE_CONTROLLING: 0x0102030405060708, Attr.USE_CANDIDATE: True,
    }).encode(integrity_key=key, fingerprint=True)
    success = Message(Method.BINDING, MessageClass.SUCCESS, _TID, {
        Attr.XOR_MAPPED_ADDRESS: ("198.51.100.7", 40000),
    }).encode(integrity_key=key, fingerprint=True)
    error = Message(Method.BINDING, MessageClass.ERROR, _TID, {
        Attr.ERROR_CODE: (420, "Unknown Attribute"), Attr.UNKNOWN_ATTRIBUTES: (0x7F01, 0x0030),
    }).encode(fingerprint=True)
    allocate = Message(Method.ALLOCATE, MessageClass.SUCCESS, _TID, {
        Attr.XOR_RELAYED_ADDRESS: ("203.0.113.5", 50000),
        Attr.XOR_MAPPED_ADDRESS: ("2001:db8::1", 40000), Attr.LIFETIME: 600,
    }).encode(integrity_key=key, fingerprint=True)
    data = Message(Method.DATA, MessageClass.INDICATION, _TID, {
        Attr.XOR_PEER_ADDRESS: ("192.0.2.9", 5000), Attr.DATA: b"\x80\x00hello",
    }).encode()
    return check, success, error, allocate, data


STUN_SEEDS = _stun_seeds()
TURN_SEEDS = (encode_channel_data(0x4001, b"\x80\x00\x00\x01payload"),
              encode_channel_data(0x4FFF, b"", pad=True), *STUN_SEEDS[3:])

RTP_SEEDS = (
    RtpPacket(0, 1, 160, 0x11223344, b"\xff" * 160).encode(),
    RtpPacket(101, 7, 320, 5, b"\x01\x8a\x03\x20", True, (1, 2), None, 4).encode(),
)


def _rtcp_seed() -> bytes:
    block = ReportBlock(ssrc=2, fraction_lost=3, packets_lost=4, highest_sequence=5, jitter=6,
                        lsr=7, dlsr=8)
    return encode_compound([
        SenderReport(1, 0x0102030405060708, 160, 10, 1600, (block,)),
        SourceDescription((SdesChunk(1, ((1, b"alice@example.com"), (6, b"sipua"))),)),
        Bye((1,), b"hangup"),
    ])


RTCP_SEEDS = (_rtcp_seed(),)
DTMF_SEEDS = (TelephoneEvent(5, True, 10, 800).encode(), TelephoneEvent(11, False, 0, 0).encode())

# ----------------------------------------------------------------------------------------------
# Targets


def sip(data: bytes) -> None:
    """A datagram, then the same bytes as a stream in two pieces; every typed header read."""
    try:
        message = parse(data)
        message.validate()
        message.contact_star  # noqa: B018
        message.routes  # noqa: B018
        message.record_routes  # noqa: B018
        message.expires  # noqa: B018
        message.mime_type  # noqa: B018
        message.encode()
    except SipParseError as exc:
        error_response(exc, to_tag="x")  # building the 400 must not fail either
    half = len(data) // 2
    stream = StreamParser(max_size=4096)
    try:
        for piece in (data[:half], data[half:]):
            for message in stream.feed(piece):
                message.validate()
    except SipParseError:
        pass


def sip_headers(data: bytes) -> None:
    """URI and digest header values, which the UA parses on its own paths."""
    text = data.decode("utf-8", "surrogateescape")
    for call in (parse_uri, parse_challenges, parse_authorization):
        try:
            call(text)
        except SipParseError:
            pass


def sdp(data: bytes) -> None:
    """An SDP body as a call reads it (decoded text): parse, pick the audio stream, match its
    codecs with ours, look for an ICE mismatch, the default candidates and a crypto line."""
    try:
        audio = parse_sdp(data.decode("utf-8", "replace")).audio
    except SdpError:
        return
    negotiate_codecs(audio.codecs, (PCMU, PCMA, TELEPHONE_EVENT))
    has_ice_mismatch(audio)
    select_crypto(audio.crypto)
    if audio.ice is not None:
        for component in (1, 2):
            default_candidate(audio.ice.candidates, component)


def stun(data: bytes) -> None:
    """Decode, then everything a receiver reads of a message: integrity, unknown attributes."""
    try:
        message = decode(data)
    except StunError:
        return
    verify_integrity(message, short_term_key(ICE_PWD))
    message.unknown_comprehension_required()
    for attr in list(message.attributes):
        message.get(attr)


def turn(data: bytes) -> None:
    """ChannelData framing, then the TURN client fed the bytes from its server (never raises)."""
    try:
        decode_channel_data(data)
    except StunError:
        pass
    server = ("203.0.113.1", 3478)
    client = TurnClient(TurnSettings(server, "user", "pass"), random.Random(1))
    client.allocate(0.0)
    client.receive(data, server, 0.1)
    client.pop_transmits()
    client.handle_timer(1.0)


_BASE = LocalBase(1, ("192.0.2.1", 4000))


def ice(data: bytes) -> None:
    """An ICE agent with a session under way fed the bytes on its base (never raises)."""
    agent = Agent(IceSettings(), controlling=False, rng=random.Random(2))
    agent.local_ufrag, agent.local_pwd = ICE_UFRAG, ICE_PWD
    agent.add_base(_BASE, 0.0)
    agent.set_remote_credentials("efgh", "p" * 22)
    agent.receive(data, ("198.51.100.7", 40000), _BASE, 0.0)
    agent.pop_transmits()
    agent.handle_timer(0.05)


def rtp(data: bytes) -> None:
    """One RTP packet."""
    try:
        parse_rtp(data)
    except RtpError:
        pass


def rtcp(data: bytes) -> None:
    """A compound RTCP datagram, and the CNAME a receiver reads of it."""
    try:
        packets = parse_rtcp(data)
    except RtcpError:
        return
    for packet in packets:
        if isinstance(packet, SourceDescription):
            for chunk in packet.chunks:
                chunk.cname  # noqa: B018


def dtmf(data: bytes) -> None:
    """A telephone-event payload, alone and through the receiver."""
    receiver = DtmfReceiver()
    try:
        parse_telephone_event(data)
        receiver.receive(160, data, 0.0)
        receiver.handle_timer(1.0)
    except DtmfError:
        pass


TARGETS: dict[str, tuple[Callable[[bytes], None], tuple[bytes, ...]]] = {
    "sip": (sip, SIP_SEEDS),
    "sip_headers": (sip_headers, (b"Digest realm=\"x\", nonce=\"y\"", b"sip:a@b;lr?x=y")),
    "sdp": (sdp, SDP_SEEDS),
    "stun": (stun, STUN_SEEDS),
    "turn": (turn, TURN_SEEDS),
    "ice": (ice, STUN_SEEDS[:3]),
    "rtp": (rtp, RTP_SEEDS),
    "rtcp": (rtcp, RTCP_SEEDS),
    "dtmf": (dtmf, DTMF_SEEDS),
}
