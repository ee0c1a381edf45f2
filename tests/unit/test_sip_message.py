"""SIP messages: parsing, typed views, serialisation, responses and stream framing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipua.message import (
    CSeq,
    Headers,
    Message,
    NameAddr,
    Request,
    Response,
    SipParseError,
    StreamParser,
    Via,
    error_response,
    make_response,
    new_branch,
    new_call_id,
    new_tag,
    parse,
    parse_name_addr,
    parse_via,
    reason_phrase,
)
from sipua.uri import SipUri, parse_uri

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


def invite(extra: str = "", body: bytes = SDP, length: int | None = None) -> bytes:
    """A small valid INVITE, with extra header lines and a body."""
    cl = len(body) if length is None else length
    return (
        "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n"
        "Max-Forwards: 70\r\n"
        "To: Bob <sip:bob@biloxi.example.com>\r\n"
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        "CSeq: 314159 INVITE\r\n"
        "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        f"{extra}"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {cl}\r\n\r\n"
    ).encode() + body


def content(message: Message) -> tuple[str, list[tuple[str, str]], bytes]:
    """What a message says, Content-Length aside (it is recomputed on encode)."""
    items = [(n, v) for n, v in message.headers.items() if n != "Content-Length"]
    return message.start_line(), items, message.body


def test_parse_request_basics() -> None:
    """Start line, raw headers, typed views and body of a plain INVITE."""
    message = parse(invite())
    assert isinstance(message, Request)
    assert message.method == "INVITE"
    assert message.uri == parse_uri("sip:bob@biloxi.example.com")
    assert message.vias[0].branch == "z9hG4bK776asdhds"
    assert message.vias[0].transport == "UDP"
    assert message.from_.tag == "1928301774"
    assert message.from_.display == "Alice"
    assert message.to.tag is None
    assert message.to.display == "Bob"
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert message.cseq == CSeq(314159, "INVITE")
    assert message.max_forwards == 70
    assert message.content_type == "application/sdp"
    assert message.mime_type == "application/sdp"
    assert message.body == SDP
    assert message.encode() == invite()


def test_parse_response() -> None:
    """A status line with a multi-word reason phrase."""
    data = (b"SIP/2.0 180 Ringing Loudly\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
            b"To: <sip:b@h>;tag=9\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\n"
            b"CSeq: 2 INVITE\r\nContent-Length: 0\r\n\r\n")
    message = parse(data)
    assert isinstance(message, Response)
    assert (message.status, message.reason) == (180, "Ringing Loudly")
    assert message.to.tag == "9"
    assert message.max_forwards is None


def test_compact_forms_expanded() -> None:
    """Compact header names read as their long forms, and are written long."""
    data = (b"OPTIONS sip:b@h SIP/2.0\r\nv: SIP/2.0/TCP h:5070;branch=z9hG4bKc\r\n"
            b"t: <sip:b@h>\r\nf: <sip:a@h>;tag=1\r\ni: cid\r\nCSeq: 1 OPTIONS\r\n"
            b"m: <sip:a@h>\r\nk: path, gruu\r\nc: text/plain\r\ns: hi\r\no: presence\r\n"
            b"u: dialog\r\nr: <sip:c@h>\r\nb: <sip:d@h>\r\nx: 1800\r\ny: abc\r\ne: gzip\r\n"
            b"l: 2\r\n\r\nhi")
    message = parse(data)
    assert message.vias[0].port == 5070
    assert message.call_id == "cid"
    assert message.headers.get_all("Supported") == ["path", "gruu"]
    for name, value in [("Subject", "hi"), ("Event", "presence"), ("Allow-Events", "dialog"),
                        ("Refer-To", "<sip:c@h>"), ("Referred-By", "<sip:d@h>"),
                        ("Session-Expires", "1800"), ("Identity", "abc"),
                        ("Content-Encoding", "gzip"), ("Content-Type", "text/plain")]:
        assert message.headers.get(name) == value
    encoded = message.encode()
    assert b"\r\nCall-ID: cid\r\n" in encoded
    assert b"\r\ni:" not in encoded
    assert message.body == b"hi"


def test_header_names_case_insensitive() -> None:
    """Header lookups ignore case; odd spellings of known names are canonicalised."""
    message = parse(invite("cALL-info: <http://x>;purpose=icon\r\nX-Custom-Thing: Keep  As Is\r\n"))
    assert message.headers.get("CALL-ID") == message.call_id
    assert message.headers.get("call-info") == "<http://x>;purpose=icon"
    assert ("Call-Info", "<http://x>;purpose=icon") in message.headers.items()
    assert ("X-Custom-Thing", "Keep  As Is") in message.headers.items()


def test_line_folding() -> None:
    """Continuation lines join their header with one space (RFC 3261 §7.3.1)."""
    message = parse(invite("Subject: I know you're there,\r\n    pick up the phone\r\n"
                           "\t and talk to me!\r\n"))
    assert message.headers.get("Subject") == \
        "I know you're there, pick up the phone and talk to me!"


def test_multiple_values_across_and_within_headers() -> None:
    """List headers split on commas (outside quotes and <>) and across repeated lines."""
    message = parse(invite(
        'Route: <sip:p1.example.com;lr>, "Proxy, Two" <sip:p2.example.com;lr>\r\n'
        "Route: <sip:p3.example.com;lr>\r\n"
        "Via: SIP/2.0/TCP [2001:db8::9]:5061;branch=z9hG4bK2;received=2001:db8::10, "
        "SIP/2.0/UDP 192.0.2.3;branch=z9hG4bK3;rport=5066\r\n"
        "Allow: INVITE,ACK , BYE\r\nAllow: OPTIONS\r\n"))
    hosts = [r.uri.host for r in message.routes]
    assert hosts == ["p1.example.com", "p2.example.com", "p3.example.com"]
    assert message.routes[1].display == "Proxy, Two"
    assert message.headers.get_all("Allow") == ["INVITE", "ACK", "BYE", "OPTIONS"]
    vias = message.vias
    assert len(vias) == 3
    assert (vias[1].host, vias[1].port, vias[1].received) == ("2001:db8::9", 5061, "2001:db8::10")
    assert vias[2].rport == 5066
    assert vias[0].rport is None


def test_never_split_authentication_headers() -> None:
    """WWW-Authenticate and friends keep their commas."""
    value = 'Digest realm="a", nonce="b", qop="auth,auth-int"'
    headers = Headers([("WWW-Authenticate", value), ("Date", "Sat, 13 Nov 2010 23:29:00 GMT")])
    assert headers.get_all("www-authenticate") == [value]
    assert headers.get_all("date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]


def test_quoted_display_with_escapes() -> None:
    """Quoted display names keep escaped quotes and backslashes (RFC 3261 §25.1)."""
    addr = parse_name_addr(r'"Bob \"The Builder\" \\o/" <sip:bob@h>;tag=7')
    assert addr.display == 'Bob "The Builder" \\o/'
    assert addr.tag == "7"
    assert parse_name_addr(str(addr)) == addr


def test_addr_spec_parameters_belong_to_header() -> None:
    """Without <>, parameters after the URI are header parameters (RFC 3261 §20.10)."""
    addr = parse_name_addr("sip:alice@atlanta.com;tag=88;transport=tcp")
    assert addr.uri.params == {}
    assert addr.params == {"tag": "88", "transport": "tcp"}
    inside = parse_name_addr("<sip:alice@atlanta.com;transport=tcp>;tag=88")
    assert inside.uri.params == {"transport": "tcp"}
    assert inside.params == {"tag": "88"}
    assert str(addr) == "<sip:alice@atlanta.com>;tag=88;transport=tcp"


def test_display_without_space_and_token_display() -> None:
    """'caller<sip:...>' and unquoted multi-word display names are valid."""
    assert parse_name_addr("caller<sip:caller@example.com>;tag=3").display == "caller"
    assert parse_name_addr("Bob  Smith <sip:b@h>").display == "Bob  Smith"


def test_contact_star_and_params() -> None:
    """Contact: * reads as no contacts; contact parameters are kept."""
    data = invite().replace(b"INVITE sip:", b"REGISTER sip:").replace(
        b"CSeq: 314159 INVITE", b"CSeq: 1 REGISTER").replace(
        b"Contact: <sip:alice@pc33.atlanta.example.com>", b"Contact: *\r\nExpires: 0")
    message = parse(data)
    assert message.contact_star
    assert message.contacts == []
    assert message.expires == 0
    other = parse(invite().replace(b"Contact: <sip:alice@pc33.atlanta.example.com>",
                                   b'Contact: <sip:a@h>;expires=60;q=0.5;+sip.instance="<u:1>"'))
    assert other.contacts[0].params == {"expires": "60", "q": "0.5", "+sip.instance": '"<u:1>"'}


def test_unknown_headers_and_multipart_body_verbatim() -> None:
    """Unknown headers and a multipart body pass through byte for byte."""
    body = (b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1--\r\n")
    data = invite("X-Weird-Header: ;;,,<<\"\"' odd\r\nMIME-Version: 1.0\r\n",
                  body).replace(b"application/sdp\r\nContent-Length",
                                b'multipart/mixed;boundary="b1"\r\nContent-Length')
    message = parse(data)
    assert message.body == body
    assert message.headers.get("x-weird-header") == "X-Weird-Header: ;;,,<<\"\"' odd"[16:]
    assert message.encode() == data


def test_datagram_content_length_rules() -> None:
    """RFC 3261 §18.3: short body is 400, extra bytes dropped, absent means the rest."""
    with pytest.raises(SipParseError) as info:
        parse(invite(length=len(SDP) + 10))
    assert info.value.status == 400
    assert info.value.partial["Call-ID"] == "a84b4c76e66710@pc33.atlanta.example.com"
    assert parse(invite(body=SDP + b"garbage", length=len(SDP))).body == SDP
    no_length = invite().replace(f"Content-Length: {len(SDP)}\r\n".encode(), b"")
    assert parse(no_length).body == SDP


@pytest.mark.parametrize("header", ["To", "From", "CSeq", "Call-ID", "Via"])
def test_missing_required_header_is_400(header: str) -> None:
    """A request without To, From, CSeq, Call-ID or Via is answered with 400."""
    lines = [line for line in invite().split(b"\r\n") if not line.startswith(header.encode())]
    with pytest.raises(SipParseError) as info:
        parse(b"\r\n".join(lines))
    assert info.value.status == 400


def test_missing_max_forwards_tolerated() -> None:
    """Without Max-Forwards a request parses and reads 70 (RFC 3261 §8.1.1.6)."""
    message = parse(invite().replace(b"Max-Forwards: 70\r\n", b""))
    assert message.max_forwards == 70


def test_cseq_method_mismatch_is_400() -> None:
    """CSeq naming another method than the request line is a 400."""
    with pytest.raises(SipParseError) as info:
        parse(invite().replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 ACK"))
    assert info.value.status == 400


def test_bad_version_is_505_and_keeps_partial() -> None:
    """SIP/7.0 gets 505 and the error still carries what is needed to answer."""
    with pytest.raises(SipParseError) as info:
        parse(invite().replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1))
    assert info.value.status == 505
    response = error_response(info.value, to_tag="x1")
    assert response is not None
    assert response.status == 505
    assert response.to.tag == "x1"
    assert response.vias[0].branch == "z9hG4bK776asdhds"


def test_unsupported_request_uri_scheme_is_416() -> None:
    """An unknown Request-URI scheme is a 416 (RFC 3261 §8.2.2.1)."""
    with pytest.raises(SipParseError) as info:
        parse(invite().replace(b"INVITE sip:bob@biloxi.example.com", b"INVITE foo:bob@x", 1))
    assert info.value.status == 416


def test_error_response_needs_routing_headers() -> None:
    """Without the headers a response needs, error_response gives None."""
    assert error_response(SipParseError("junk")) is None


def test_encode_always_writes_correct_content_length() -> None:
    """encode() writes one Content-Length matching the body, whatever the headers said."""
    request = Request("MESSAGE", "sip:bob@h", [
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("From", "<sip:a@h>;tag=1"),
        ("To", "<sip:bob@h>"), ("Call-ID", "x"), ("CSeq", "1 MESSAGE"),
        ("Content-Length", "999"), ("l", "5")], b"hello!")
    data = request.encode()
    assert data.count(b"Content-Length") == 1
    assert b"Content-Length: 6\r\n\r\nhello!" in data
    assert Response(200).encode().endswith(b"Content-Length: 0\r\n\r\n")


def test_make_response_rfc3261_8_2_6() -> None:
    """A response copies every Via, From, To (plus tag), Call-ID and CSeq."""
    request = parse(invite("Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp\r\n"
                           "Timestamp: 54\r\n"))
    assert isinstance(request, Request)
    response = make_response(request, 180, to_tag="abc")
    assert response.reason == "Ringing"
    assert [v.branch for v in response.vias] == ["z9hG4bK776asdhds", "z9hG4bKp"]
    assert response.to.tag == "abc"
    assert response.from_.tag == "1928301774"
    assert (response.call_id, response.cseq) == (request.call_id, request.cseq)
    assert response.body == b""
    assert "Timestamp" not in response.headers
    trying = make_response(request, 100)
    assert trying.to.tag is None
    assert trying.headers.get("Timestamp") == "54"
    retagged = parse(invite().replace(b"To: Bob <sip:bob@biloxi.example.com>",
                                      b"To: <sip:bob@b>;tag=old"))
    assert isinstance(retagged, Request)
    tagged = make_response(retagged, 200, to_tag="new")
    assert tagged.to.tag == "old"


def test_reason_phrases() -> None:
    """Known codes have their phrase; unknown ones fall back to their class."""
    assert reason_phrase(200) == "OK"
    assert reason_phrase(481) == "Call/Transaction Does Not Exist"
    assert reason_phrase(499) == "Client Error"
    assert Response(503).reason == "Service Unavailable"


def test_generators_use_the_rng() -> None:
    """Branch, tag and Call-ID come from the injected rng: same seed, same values."""
    def draw(rng: random.Random) -> list[str]:
        return [new_branch(rng), new_tag(rng), new_tag(rng), new_call_id(rng, "h"),
                new_call_id(rng)]

    first, second = draw(random.Random(7)), draw(random.Random(7))
    assert first == second
    assert first[0].startswith("z9hG4bK")
    assert len(first[0]) >= 7 + 16
    assert first[1] != first[2]
    assert first[3].endswith("@h")
    assert "@" not in first[4]


def test_header_changes_invalidate_typed_cache() -> None:
    """Typed views follow header changes and setters write headers."""
    message = parse(invite())
    assert message.vias[0].branch == "z9hG4bK776asdhds"
    message.headers.add("Via", "SIP/2.0/TCP p.example.com;branch=z9hG4bKnew", first=True)
    assert message.vias[0].branch == "z9hG4bKnew"
    top = message.vias[0].with_(params={**message.vias[0].params, "received": "192.0.2.9"})
    message.vias = [top, *message.vias[1:]]
    assert parse(message.encode()).vias[0].received == "192.0.2.9"
    message.to = message.to.with_tag("t1")
    message.max_forwards = 69
    message.headers.remove("contact")
    again = parse(message.encode())
    assert again.to.tag == "t1"
    assert again.max_forwards == 69
    assert again.contacts == []
    message.headers.set("Route", "<sip:a@b;lr>")
    assert [str(r) for r in message.routes] == ["<sip:a@b;lr>"]


def test_copy_is_independent() -> None:
    """copy() shares no header state with the original."""
    message = parse(invite())
    other = message.copy()
    other.headers.set("Call-ID", "changed")
    assert message.call_id != other.call_id == "changed"
    assert content(parse(message.encode())) == content(message)


def test_via_forms() -> None:
    """Via with LWS around separators, IPv6 sent-by and rport flag."""
    via = parse_via("SIP / 2.0 / UDP first.example.com: 4000;ttl=16 ;maddr=224.2.0.1"
                    ";branch=z9hG4bKa")
    assert (via.transport, via.host, via.port) == ("UDP", "first.example.com", 4000)
    assert via.params["maddr"] == "224.2.0.1"
    six = parse_via("SIP/2.0/TLS [2001:db8::1];rport;branch=z9hG4bKb")
    assert six.host == "2001:db8::1"
    assert six.rport is True
    assert str(six) == "SIP/2.0/TLS [2001:db8::1];rport;branch=z9hG4bKb"
    for bad in ("SIP/2.0 host", "SIP/2.0/UDP", "HTTP/2.0/UDP h", "SIP/2.0/UDP h:99999",
                "SIP/2.0/UDP h;branch=a b", "SIP/2.0/UDP h;rport=x"):
        with pytest.raises(SipParseError):
            v = parse_via(bad)
            v.rport  # noqa: B018


def test_stream_parser_split_and_concatenated() -> None:
    """Messages split at every byte or glued together come out whole and in order."""
    one, two = invite(), invite(body=b"", length=0)
    parser = StreamParser()
    out: list[Request | Response] = []
    for byte in one:
        out.extend(parser.feed(bytes([byte])))
    assert [m.body for m in out] == [SDP]
    assert [m.body for m in parser.feed(one + two + one)] == [SDP, b"", SDP]
    assert parser.buffered == 0


def test_stream_parser_keepalives() -> None:
    """CRLFCRLF between messages counts as a ping, a lone CRLF as a pong (RFC 5626 §4.4.1)."""
    parser = StreamParser()
    assert parser.feed(b"\r\n\r\n") == []
    assert parser.feed(b"\r\n") == []
    assert parser.feed(b"\r\n" + invite()) != []
    assert parser.pings == 2
    assert parser.feed(b"\r\n") == []
    assert parser.feed(invite()) != []
    assert parser.pongs == 1


def test_stream_parser_errors() -> None:
    """Missing Content-Length on a stream and oversized messages raise SipParseError."""
    with pytest.raises(SipParseError):
        StreamParser().feed(invite().replace(f"Content-Length: {len(SDP)}\r\n".encode(), b""))
    with pytest.raises(SipParseError) as info:
        StreamParser(max_size=200).feed(invite())
    assert info.value.status == 413
    with pytest.raises(SipParseError) as info:
        StreamParser(max_size=100).feed(b"INVITE " + b"x" * 200)
    assert info.value.status == 413


# -- hypothesis round trips ---------------------------------------------------------------------

_TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
                 min_size=1, max_size=10)
_URI_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()", min_size=1, max_size=10)
_HOST = st.from_regex(r"[a-z]([a-z0-9\-]{0,7}[a-z0-9])?(\.[a-z][a-z0-9]{0,5}){0,2}",
                      fullmatch=True)
_VALUE = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                 max_size=30).map(str.strip)


@st.composite
def sip_uri(draw: st.DrawFn) -> SipUri:
    """A sip: URI with user, host, port and parameters."""
    return SipUri("sip", draw(st.none() | _URI_TOKEN), None, draw(_HOST),
                  draw(st.none() | st.integers(1, 65535)),
                  draw(st.dictionaries(_URI_TOKEN, st.none() | _URI_TOKEN, max_size=2)))


@st.composite
def name_addr(draw: st.DrawFn) -> NameAddr:
    """A From/To/Contact value."""
    display = draw(st.none() | st.text(st.characters(blacklist_categories=("Cs", "Cc")),
                                       max_size=12))
    params = draw(st.dictionaries(_TOKEN.map(str.lower), st.none() | _TOKEN, max_size=2))
    return NameAddr(draw(sip_uri()), display, params)


@st.composite
def messages(draw: st.DrawFn) -> Request | Response:
    """Requests and responses with the required headers, extensions and a body."""
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER", "FOO-BAR"]))
    vias = draw(st.lists(st.builds(
        lambda t, h, p, b: Via(t, h, p, {"branch": "z9hG4bK" + b}),
        st.sampled_from(["UDP", "TCP", "TLS"]), _HOST, st.none() | st.integers(1, 65535),
        _TOKEN), min_size=1, max_size=3))
    items = [("Via", str(v)) for v in vias]
    items += [("From", str(draw(name_addr()))), ("To", str(draw(name_addr()))),
              ("Call-ID", draw(_TOKEN)),
              ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}")]
    items += [("X-" + draw(_TOKEN), draw(_VALUE)) for _ in range(draw(st.integers(0, 3)))]
    items += [("Contact", str(c)) for c in draw(st.lists(name_addr(), max_size=2))]
    body = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        return Request(method, draw(sip_uri()), items, body)
    reason = draw(st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
                          max_size=20).map(str.strip))
    return Response(draw(st.integers(100, 699)), reason, items, body)


@given(messages())
def test_round_trip(message: Request | Response) -> None:
    """parse(encode(m)) says what m says, typed views included."""
    again = parse(message.encode())
    assert type(again) is type(message)
    assert content(again) == content(message)
    assert again.vias == message.vias
    assert again.from_ == message.from_
    assert again.to == message.to
    assert again.contacts == message.contacts
    assert again.cseq == message.cseq
    assert again.encode() == message.encode()


@settings(max_examples=50)
@given(messages(), st.integers(1, 50))
def test_stream_round_trip(message: Request | Response, chunk: int) -> None:
    """The stream framer gives back the same messages whatever the chunking."""
    data = message.encode() * 2
    parser = StreamParser()
    out: list[Request | Response] = []
    for start in range(0, len(data), chunk):
        out.extend(parser.feed(data[start:start + chunk]))
    assert [content(m) for m in out] == [content(message)] * 2


# -- what parse() checks now and what the typed views check on first read ----------------------

def response(*lines: str) -> bytes:
    """A 180 whose header lines are the usual ones, each replaceable by name."""
    headers = {"Via": "SIP/2.0/UDP h;branch=z9hG4bKx", "To": "<sip:b@h>;tag=9",
               "From": "<sip:a@h>;tag=1", "Call-ID": "c1", "CSeq": "2 INVITE"}
    extra: list[str] = []
    for line in lines:
        name, _, value = line.partition(": ")
        if name in headers:
            headers[name] = value
        else:
            extra.append(line)
    head = ["SIP/2.0 180 Ringing", *(f"{n}: {v}" for n, v in headers.items()), *extra]
    return ("\r\n".join(head) + "\r\nContent-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("line,view", [
    ("Via: SIP/2.0/UDP h:99999;branch=z9hG4bKx", "vias"),
    ("Via: HTTP/1.1 h", "vias"),
    ("From: <sip:a@h;tag=1", "from_"),
    ("To: Bell, Alex <sip:b@h>", "to"),
    ("Call-ID: has space", "call_id"),
    ("Max-Forwards: many", "max_forwards"),
    ("Contact: <sip:c@h>;q=\"open", "contacts"),
    ("Route: <sip:p@h;lr", "routes"),
    ("Expires: soon", "expires"),
])
def test_bad_typed_value_raises_on_first_read(line: str, view: str) -> None:
    """parse() leaves typed values alone; the first read raises SipParseError, and so does
    every later read and validate() (for the views it covers)."""
    message = parse(response(line))
    for _ in range(2):
        with pytest.raises(SipParseError) as info:
            getattr(message, view)
        assert info.value.status == 400
        assert info.value.partial["Call-ID"] == "c1" or view == "call_id"
    if view in ("vias", "from_", "to", "call_id", "max_forwards", "contacts"):
        with pytest.raises(SipParseError):
            message.validate()


def test_validate_reads_every_required_view() -> None:
    """validate() parses Via, From, To, Call-ID, CSeq, Max-Forwards and Contact now."""
    message = parse(response("Contact: <sip:c@h>", "Max-Forwards: 3"))
    message.validate()
    assert message.vias[0].branch == "z9hG4bKx"
    assert (message.from_.tag, message.to.tag, message.call_id) == ("1", "9", "c1")
    assert message.contacts[0].uri.user == "c"
    assert message.max_forwards == 3
    assert message.vias is message.vias  # parsed once, then cached
    message.headers.set("Via", "SIP/2.0/TCP other;branch=z9hG4bKy")
    assert message.vias[0].branch == "z9hG4bKy"


def test_start_line_and_cseq_are_checked_eagerly() -> None:
    """A bad status line, a bad CSeq or a missing header fail parse() itself."""
    for data in (response().replace(b"180", b"18x"), response("CSeq: 2"),
                 response().replace(b"Call-ID: c1\r\n", b"")):
        with pytest.raises(SipParseError):
            parse(data)


def test_known_header_name_without_colon_is_an_error() -> None:
    """'Via' or 'm' alone on a line is not an empty header (RFC 3261 §7.3.1)."""
    for name in (b"Via", b"m", b"Subject"):
        with pytest.raises(SipParseError) as info:
            parse(invite().replace(b"Max-Forwards: 70\r\n", name + b"\r\n"))
        assert info.value.status == 400


@pytest.mark.parametrize("start", [
    "INVITE sip:bob@biloxi.example.com SIP/2.0",
    "INVITE sip:bob@biloxi.example.com sip/2.0",
    "INVITE SIP:bob@biloxi.example.com SIP/2.0",
    "INVITE sip:bob@biloxi.example.com:5060;transport=tcp;lr SIP/2.0",
    "INVITE sip:%62ob@biloxi.example.com SIP/2.0",
])
def test_request_line_paths_agree(start: str) -> None:
    """The usual request line (one match) and the general path give the same Request-URI."""
    message = parse(invite().replace(b"INVITE sip:bob@biloxi.example.com SIP/2.0",
                                     start.encode(), 1))
    assert isinstance(message, Request)
    assert message.uri == parse_uri(start.split(" ")[1])
    assert message.uri.user == "bob"


@pytest.mark.parametrize("text,expected", [
    ("314159 INVITE", CSeq(314159, "INVITE")),
    ("0009\tINVITE", CSeq(9, "INVITE")),
    ("2147483647 ACK", CSeq(2**31 - 1, "ACK")),
    ("000000000001 BYE", CSeq(1, "BYE")),
    ("2147483648 ACK", None),
    ("9999999999 ACK", None),
    ("1 IN VITE", None),
    ("1", None),
])
def test_cseq_forms(text: str, expected: CSeq | None) -> None:
    """CSeq: number below 2**31 and a method token, whichever path reads it."""
    data = invite().replace(b"CSeq: 314159 INVITE", f"CSeq: {text}".encode())
    if expected is None:
        with pytest.raises(SipParseError):
            parse(data)
        return
    data = data.replace(b"INVITE sip:", f"{expected.method} sip:".encode(), 1)
    assert parse(data).cseq == expected


def test_header_order_kept_with_lazy_item_list() -> None:
    """items() gives every line in order with canonical names, repeated or not, and changes
    made before the list is first built land in the right place."""
    data = invite("v: SIP/2.0/TCP p.example.com;branch=z9hG4bKp\r\nX-Odd-Name : kept\r\n"
                  "Allow: INVITE\r\nallow: BYE\r\n")
    names = [name for name, _ in parse(data).headers.items()]
    assert names == ["Via", "Max-Forwards", "To", "From", "Call-ID", "CSeq", "Contact", "Via",
                     "X-Odd-Name", "Allow", "Allow", "Content-Type", "Content-Length"]
    plain = parse(invite())
    assert [n for n, _ in plain.headers.items()] == [
        "Via", "Max-Forwards", "To", "From", "Call-ID", "CSeq", "Contact", "Content-Type",
        "Content-Length"]
    changed = parse(data)
    changed.headers.add("Via", "SIP/2.0/UDP first;branch=z9hG4bKf", first=True)
    changed.headers.set("Allow", "ACK")
    changed.headers.remove("X-Odd-Name")
    items = changed.headers.items()
    assert items[0] == ("Via", "SIP/2.0/UDP first;branch=z9hG4bKf")
    assert [v for n, v in items if n == "Allow"] == ["ACK"]
    assert "X-Odd-Name" not in changed.headers
    assert len(changed.headers) == len(items) == 12
    copied = parse(data).headers.copy()
    copied.add("Subject", "only in the copy")
    assert len(copied) == 14
    assert parse(data).headers.get("Subject") is None


def test_encode_follows_every_change() -> None:
    """The encoded header block is reused until the headers change; the start line and the
    body are always current."""
    message = parse(invite())
    first = message.encode()
    assert message.encode() == first == invite()
    message.headers.set("Subject", "new")
    assert b"\r\nSubject: new\r\n" in message.encode()
    message.body = b"x"
    encoded = message.encode()
    assert b"\r\nContent-Length: 1\r\n" in encoded
    assert encoded.endswith(b"\r\nSubject: new\r\n\r\nx")
    assert isinstance(message, Request)
    message.uri = parse_uri("sip:carol@example.com")
    assert message.encode().startswith(b"INVITE sip:carol@example.com SIP/2.0\r\n")
    message.max_forwards = 10
    assert b"\r\nMax-Forwards: 10\r\n" in message.encode()
    reply = make_response(message, 180)
    reply.encode()
    reply.status, reply.reason = 183, "Session Progress"
    assert reply.encode().startswith(b"SIP/2.0 183 Session Progress\r\n")


@given(name_addr())
def test_name_addr_paths_agree(addr: NameAddr) -> None:
    """The one-match name-addr path reads what the general parser reads (the upper-case
    scheme is valid and only the general path takes it)."""
    text = str(addr)
    assert parse_name_addr(text) == addr
    assert parse_name_addr(text.replace("<sip:", "<SIP:", 1)) == addr


@given(st.sampled_from(["UDP", "TCP", "TLS", "tcp"]), _HOST, st.none() | st.integers(0, 65535),
       st.dictionaries(_TOKEN.map(str.lower), st.none() | _TOKEN, max_size=3))
def test_via_paths_agree(transport: str, host: str, port: int | None,
                         params: dict[str, str | None]) -> None:
    """The one-match Via path and the general path (LWS around '/') read the same Via."""
    params.pop("rport", None)
    text = str(Via(transport, host, port, params))
    expected = Via(transport.upper(), host, port, params)
    assert parse_via(text) == expected
    assert parse_via(text.replace("SIP/2.0/", "SIP / 2.0 / ", 1)) == expected
