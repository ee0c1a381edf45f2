"""Size limits of the parsers and the protocol answer each limit gets.

SIP: header lines and line length (513), start line (414), a stream's head and body (413),
the version (505), the URI scheme (416), a malformed request (400 whose reason says what is
wrong). SDP: lines, m= sections, candidates per section. RTCP: packets per compound.
"""

from __future__ import annotations

import pytest

from media.rtcp import MAX_COMPOUND_PACKETS, Bye, RtcpError, encode_compound, parse_rtcp
from sipua.message import (
    MAX_HEADER_LINE,
    MAX_HEADER_LINES,
    MAX_START_LINE,
    SipParseError,
    StreamParser,
    error_response,
    parse,
)
from sipua.sdp import MAX_SDP_CANDIDATES, MAX_SDP_LINES, MAX_SDP_MEDIA, SdpError, parse_sdp

HEAD = [
    "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1",
    "From: <sip:a@example.com>;tag=1",
    "To: <sip:b@example.com>",
    "Call-ID: limits@example.com",
    "CSeq: 1 OPTIONS",
]


def request(*extra: str, start: str = "OPTIONS sip:b@example.com SIP/2.0",
            body: bytes = b"") -> bytes:
    """An OPTIONS with the required headers, ``extra`` lines and a Content-Length."""
    lines = [start, *HEAD, *extra, f"Content-Length: {len(body)}"]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def status_of(data: bytes) -> tuple[int, str]:
    """Parse ``data``; the status and reason phrase of the answer to its error."""
    with pytest.raises(SipParseError) as info:
        message = parse(data)
        message.validate()
    response = error_response(info.value, to_tag="t")
    assert response is not None, info.value
    return response.status, response.reason


def test_header_line_count() -> None:
    """At the limit the request parses; one line more is answered 513 Message Too Large."""
    at_limit = request(*[f"X-H: {i}" for i in range(MAX_HEADER_LINES - len(HEAD) - 1)])
    assert len(parse(at_limit).headers.get_all("X-H")) == MAX_HEADER_LINES - len(HEAD) - 1
    over = request(*[f"X-H: {i}" for i in range(MAX_HEADER_LINES)])
    assert status_of(over) == (513, "Message Too Large")


def test_header_line_length() -> None:
    """A header line up to the limit parses; a longer one is answered 513."""
    fits = "X-Long: " + "a" * (MAX_HEADER_LINE - 8)
    assert parse(request(fits)).headers.get("X-Long") == "a" * (MAX_HEADER_LINE - 8)
    assert status_of(request(fits + "a"))[0] == 513


def test_request_uri_too_long() -> None:
    """A start line longer than the limit is 414 Request-URI Too Long (RFC 3261 §21.4.12)."""
    uri = "sip:" + "b" * MAX_START_LINE + "@example.com"
    assert status_of(request(start=f"OPTIONS {uri} SIP/2.0")) == (414, "Request-URI Too Long")


def test_version_and_scheme() -> None:
    """SIP/3.0 is 505 (RFC 3261 §21.5.6), an http: Request-URI 416 (§8.2.2.1)."""
    assert status_of(request(start="OPTIONS sip:b@example.com SIP/3.0"))[0] == 505
    assert status_of(request(start="OPTIONS http://example.com/ SIP/2.0"))[0] == 416


def test_bad_request_reason_names_the_problem() -> None:
    """A malformed request gets 400 with a reason phrase that says what is wrong."""
    status, reason = status_of(request("Max-Forwards: many"))
    assert status == 400 and reason.startswith("Bad Request (") and "Max-Forwards" in reason


def test_stream_head_without_end_is_bounded() -> None:
    """A stream that never ends its header block fails at max_size (413), it does not buffer
    without bound."""
    parser = StreamParser(max_size=4096)
    with pytest.raises(SipParseError) as info:
        for _ in range(100):
            parser.feed(b"X-Junk: " + b"a" * 100 + b"\r\n")
    assert info.value.status == 413
    assert parser.buffered <= 4096 + 110


def test_stream_content_length_over_limit() -> None:
    """A Content-Length that would exceed max_size is refused (413) before any body arrives,
    and the error still carries what is needed to answer it."""
    parser = StreamParser(max_size=4096)
    head = request().replace(b"Content-Length: 0", b"Content-Length: 999999999")
    with pytest.raises(SipParseError) as info:
        parser.feed(head)
    assert info.value.status == 413
    response = error_response(info.value)
    assert response is not None and response.status == 413


def test_content_length_beyond_datagram() -> None:
    """Over UDP a Content-Length larger than the body is a 400, never a wait or a crash."""
    data = request().replace(b"Content-Length: 0", b"Content-Length: 4294967296")
    assert status_of(data)[0] == 400


SDP_HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


def sdp(media: int = 1, candidates: int = 0, extra: int = 0) -> str:
    """An SDP with ``media`` audio sections, each with ``candidates`` host candidates."""
    out = [SDP_HEAD, "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\n"]
    out += [f"a=x-{i}:{i}\r\n" for i in range(extra)]
    for m in range(media):
        out.append(f"m=audio {4000 + 2 * m} RTP/AVP 0\r\n")
        out += [f"a=candidate:{i} 1 udp 2130706431 192.0.2.1 {10000 + i} typ host\r\n"
                for i in range(candidates)]
    return "".join(out)


def test_sdp_line_limit() -> None:
    """A body longer than MAX_SDP_LINES lines is refused with SdpError."""
    parse_sdp(sdp(extra=MAX_SDP_LINES - 20))
    with pytest.raises(SdpError, match="lines"):
        parse_sdp(sdp(extra=MAX_SDP_LINES))


def test_sdp_media_limit() -> None:
    """MAX_SDP_MEDIA m= sections parse; one more is refused."""
    assert len(parse_sdp(sdp(media=MAX_SDP_MEDIA)).media) == MAX_SDP_MEDIA
    with pytest.raises(SdpError, match="m= sections"):
        parse_sdp(sdp(media=MAX_SDP_MEDIA + 1))


def test_sdp_candidates_capped() -> None:
    """Candidates beyond MAX_SDP_CANDIDATES per section are ignored, not an error."""
    media = parse_sdp(sdp(candidates=MAX_SDP_CANDIDATES + 40)).media[0]
    assert media.ice is not None and len(media.ice.candidates) == MAX_SDP_CANDIDATES


def test_rtcp_compound_packet_limit() -> None:
    """A compound of MAX_COMPOUND_PACKETS packets parses; a longer one raises RtcpError."""
    bye = Bye((1,))
    assert len(parse_rtcp(encode_compound([bye] * MAX_COMPOUND_PACKETS))) == MAX_COMPOUND_PACKETS
    with pytest.raises(RtcpError, match="packets in a compound"):
        parse_rtcp(encode_compound([bye] * (MAX_COMPOUND_PACKETS + 1)))


@pytest.mark.parametrize("method", ["OPTIONS", "MESSAGE", "INVITE"])
def test_unsupported_require_gets_420_for_any_request(method: str) -> None:
    """RFC 3261 §8.2.2.3: a Require outside our Supported is answered 420 with Unsupported
    for every request (ACK and CANCEL aside), not only for a new INVITE."""
    from tests.unit.test_session import BOB, Ua, _answer_of, _request

    bob = Ua("bob", BOB, 2)
    response = _answer_of(bob, _request(method, None, [("Require", "foo, timer")]))
    assert response.status == 420
    assert response.headers.get_all("Unsupported") in (["foo, timer"], ["foo", "timer"])


def test_unsupported_require_in_a_dialog_keeps_the_call() -> None:
    """A re-INVITE requiring an unknown extension gets 420 and changes nothing: the session
    stays confirmed and a BYE afterwards ends it as usual."""
    from sipua.message import parse_via
    from tests.unit.test_session import ALICE, established, setup

    alice, bob, net = setup()
    out, inc = established(alice, bob, net)
    assert out.dialog is not None
    state_before = inc.state
    reinvite = out.dialog.new_request(
        "INVITE", via=parse_via(f"SIP/2.0/UDP {ALICE[0]}:{ALICE[1]};branch=z9hG4bKreq1"),
        headers=[("Require", "foo")])
    bob.layer.receive(parse(reinvite.encode()), ALICE, "udp", net.now)
    bob.drain(net.now)
    replies = [parse(t.data) for t in bob.layer.pop_transmits()]
    assert [(r.status, r.headers.get("Unsupported")) for r in replies] == [  # type: ignore[union-attr]
        (420, "foo")]
    assert inc.state is state_before
    out.hangup(net.now)
    net.run()
    assert inc.state.value == "ended"
