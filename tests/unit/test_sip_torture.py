"""A torture corpus written after the categories of RFC 4475, each message with its outcome.

Outcome of a message = ``parse()`` followed by ``validate()`` (which reads every required header's
typed value): either it parses (and a check function says what it must contain) or it raises
SipParseError with the status the request must be answered with. Application-level answers
(415 for an unknown Content-Type, 420 for an unknown Require) belong to the UA, not the parser.
Then hypothesis: garbage and mutations of the corpus raise SipParseError and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipua.message import Message, Request, Response, SipParseError, StreamParser, parse

BASE = [
    "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "To: <sip:bob@example.com>",
    "From: <sip:alice@example.com>;tag=9fxced76sl",
    "Call-ID: 3848276298220188511@example.com",
]


def msg(start: str, *lines: str, body: str | bytes = "", cseq: str | None = None,
        base: bool = True, length: int | str | None = "auto") -> bytes:
    """Build a message: start line, the usual headers (unless base=False), lines, body."""
    data = body.encode() if isinstance(body, str) else body
    head = [start]
    if base:
        method = start.split(" ", maxsplit=1)[0]
        head += [*BASE, f"CSeq: {cseq or '1 ' + method}"]
    head += list(lines)
    if length == "auto":
        head.append(f"Content-Length: {len(data)}")
    elif length is not None:
        head.append(f"Content-Length: {length}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def outcome(data: bytes) -> Message:
    """Parse and read every required typed header."""
    message = parse(data)
    message.validate()
    return message


Check = Callable[[Message], bool]

VALID: list[tuple[str, bytes, Check]] = [
    ("tortuous INVITE: case, compact forms, folding, odd spacing, escapes",
     (b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
      b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
      b'from   : "J Rosenberg \\\\\\"" <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n'
      b"MaX-fOrWaRdS: 0068\r\n"
      b"Call-ID: wsinv.ndaksdj@192.0.2.1\r\n"
      b"Content-Length   : 3\r\n"
      b"cseq: 0009\r\n  INVITE\r\n"
      b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;rport;branch=390skdjuw\r\n"
      b"s :\r\n"
      b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
      b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
      b"m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n"
      b"      newvalue ;\r\n  secondparam ; q = 0.33\r\n"
      b"\r\nabc"),
     lambda m: (m.to.tag == "1918181833n" and m.from_.display == 'J Rosenberg \\"'
                and m.from_.tag == "98asjd8" and m.max_forwards == 68 and m.cseq.number == 9
                and m.vias[0].host == "192.0.2.2" and m.vias[0].rport is True
                and m.contacts[0].display == 'Quoted string ""'
                and m.contacts[0].params["q"] == "0.33" and m.contacts[0].params["secondparam"]
                is None and m.headers.get("NewFangledHeader")
                == "newfangled value continued newfangled value" and m.body == b"abc")),
    ("wide range of valid characters in tokens, tags and quoted strings",
     msg("!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$"
         "/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0",
         "From: \"\\$\\:\\U\\!\" <sip:x@example.net>;tag=_(xx)~`'.-!*%+",
         "Subject: \u00e9t\u00e9 \u65e5\u672c",
         'Contact: "\u00c9tienne \u65e5\u672c" <sip:e@example.com>',
         cseq="139122385 !interesting-Method0123456789_*+`.%indeed'~")
     .replace(b"From: <sip:alice@example.com>;tag=9fxced76sl\r\n", b""),
     lambda m: (isinstance(m, Request) and m.method.startswith("!interesting")
                and m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
                and m.from_.tag == "_(xx)~`'.-!*%+"
                and m.contacts[0].display == "\u00c9tienne \u65e5\u672c")),
    ("escaped characters in the Request-URI user part",
     msg("INVITE sip:sip%3Auser%40example.com@company.com;other-param=summit SIP/2.0"),
     lambda m: isinstance(m, Request) and m.uri.user == "sip:user@example.com"
     and m.uri.host == "company.com"),
    ("escaped null in a URI",
     msg("REGISTER sip:example.com SIP/2.0",
         "Contact: <sip:%00@host5.example.net>").replace(
         b"To: <sip:bob@example.com>", b"To: sip:null-%00-null@example.com"),
     lambda m: m.to.uri.user == "null-\x00-null" and m.contacts[0].uri.user == "\x00"),
    ("display name without space before <",
     msg("OPTIONS sip:user@example.com SIP/2.0").replace(
         b"From: <sip:", b"From: caller<sip:"),
     lambda m: m.from_.display == "caller" and m.from_.tag == "9fxced76sl"),
    ("long values: header, tag, branch and many Via",
     msg("INVITE sip:user@example.com SIP/2.0",
         *[f"Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{'x' * 100}{i}"
           for i in range(40)],
         "X-Long: " + "long" * 2000,
         "Route: " + ", ".join(f"<sip:p{i}.example.com;lr>" for i in range(50))).replace(
         b"tag=9fxced76sl", b"tag=" + b"t" * 500),
     lambda m: len(m.vias) == 41 and len(m.routes) == 50 and m.from_.tag == "t" * 500
     and len(m.headers.get("X-Long") or "") == 8000),
    ("semicolons in the user part of a URI",
     msg("OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0"),
     lambda m: isinstance(m, Request) and m.uri.user == "user;par=u@example.net"
     and m.uri.params == {}),
    ("several transports in Via, including unknown ones",
     msg("OPTIONS sip:user@example.com SIP/2.0",
         "Via: SIP/2.0/SCTP t1.example.com;branch=z9hG4bKkdjuw1",
         "Via: SIP/2.0/TLS t2.example.com;branch=z9hG4bKkdjuw2",
         "Via: SIP/2.0/UNKNOWN t3.example.com;branch=z9hG4bKkdjuw3",
         "v: SIP/2.0/tcp t4.example.com;branch=z9hG4bKkdjuw4"),
     lambda m: [v.transport for v in m.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]),
    ("multipart body passed through",
     msg("MESSAGE sip:user@example.com SIP/2.0",
         'Content-Type: multipart/mixed;boundary=7a9cbec02ceef655',
         body="--7a9cbec02ceef655\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
              "--7a9cbec02ceef655\r\nContent-Type: application/octet-stream\r\n"
              "Content-Transfer-Encoding: binary\r\n\r\n\x00\x01\x02\r\n--7a9cbec02ceef655--\r\n"),
     lambda m: m.mime_type == "multipart/mixed" and b"\x00\x01\x02" in m.body),
    ("unusual reason phrase",
     msg("SIP/2.0 200 = 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e", cseq="1 INVITE"),
     lambda m: isinstance(m, Response) and m.reason.startswith("= 2**3")),
    ("empty reason phrase with and without the space",
     msg("SIP/2.0 100 ", cseq="1 INVITE"),
     lambda m: isinstance(m, Response) and m.status == 100 and m.reason == ""),
    ("empty reason phrase without space",
     msg("SIP/2.0 100", cseq="1 INVITE"),
     lambda m: isinstance(m, Response) and m.reason == ""),
    ("CRLFs before the start line",
     b"\r\n\r\n" + msg("OPTIONS sip:user@example.com SIP/2.0"),
     lambda m: isinstance(m, Request) and m.method == "OPTIONS"),
    ("addr-spec To and Contact with header parameters",
     msg("REGISTER sip:example.com SIP/2.0",
         "Contact: sip:alice@192.0.2.5;expires=3600;q=0.7").replace(
         b"To: <sip:bob@example.com>", b"To: sip:bob@example.com;tag=xyz"),
     lambda m: m.to.tag == "xyz" and m.to.uri.params == {}
     and m.contacts[0].params == {"expires": "3600", "q": "0.7"}),
    ("novel schemes in To, From and Contact",
     msg("OPTIONS sip:user@example.com SIP/2.0",
         "Contact: <urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>").replace(
         b"To: <sip:bob@example.com>", b"To: <soap.beep://192.0.2.103:3002>"),
     lambda m: m.to.uri.scheme == "soap.beep" and m.contacts[0].uri.scheme == "urn"),
    ("IPv6 everywhere",
     msg("OPTIONS sip:[2001:db8::10]:5070 SIP/2.0",
         "Via: SIP/2.0/UDP [2001:db8::9]:5060;received=2001:db8::9;branch=z9hG4bKas",
         "Contact: <sip:alice@[2001:db8::9]>"),
     lambda m: isinstance(m, Request) and m.uri.host == "2001:db8::10"
     and m.vias[1].host == "2001:db8::9" and m.contacts[0].uri.host == "2001:db8::9"),
    ("Max-Forwards absent and huge Expires clamped",
     msg("REGISTER sip:example.com SIP/2.0", "Expires: 1" + "0" * 30).replace(
         b"Max-Forwards: 70\r\n", b""),
     lambda m: m.max_forwards == 70 and m.expires == 2**32 - 1),
    ("Content-Length absent on a datagram: the body is the rest",
     msg("MESSAGE sip:user@example.com SIP/2.0", "Content-Type: text/plain",
         body="rest of it", length=None),
     lambda m: m.body == b"rest of it"),
    ("bytes after Content-Length dropped",
     msg("MESSAGE sip:user@example.com SIP/2.0", body="abc", length=2),
     lambda m: m.body == b"ab"),
    ("bare LF line ends tolerated",
     msg("OPTIONS sip:user@example.com SIP/2.0").replace(b"\r\n", b"\n"),
     lambda m: m.call_id == "3848276298220188511@example.com"),
    ("unknown Content-Type and Require parse (415/420 are the UA's)",
     msg("INVITE sip:user@example.com SIP/2.0", "Require: nothingSupportedHere",
         "Content-Type: application/unknownformat", body="<xml/>"),
     lambda m: m.headers.get_all("require") == ["nothingSupportedHere"]),
]

INVALID: list[tuple[str, bytes, int]] = [
    ("Content-Length larger than the body", msg("INVITE sip:u@example.com SIP/2.0",
                                                 body="short", length=9999), 400),
    ("negative Content-Length", msg("INVITE sip:u@example.com SIP/2.0", length=-999), 400),
    ("non-numeric Content-Length", msg("INVITE sip:u@example.com SIP/2.0", length="ten"), 400),
    ("two Content-Length", msg("INVITE sip:u@example.com SIP/2.0", "Content-Length: 0",
                               length=0), 400),
    ("CSeq sequence number too large", msg("REGISTER sip:example.com SIP/2.0",
                                           cseq="36893488147419103232 REGISTER"), 400),
    ("CSeq method differs", msg("INVITE sip:u@example.com SIP/2.0", cseq="1 ACK"), 400),
    ("CSeq without method", msg("INVITE sip:u@example.com SIP/2.0", cseq="1"), 400),
    ("unterminated quoted display name",
     msg("INVITE sip:u@example.com SIP/2.0").replace(b"From: <", b'From: "Bell, Alex <'), 400),
    ("unquoted display name with comma",
     msg("INVITE sip:u@example.com SIP/2.0").replace(b"From: <", b"From: Bell, Alex <"), 400),
    ("<> around the Request-URI", msg("INVITE <sip:u@example.com> SIP/2.0"), 400),
    ("space inside the Request-URI", msg("INVITE sip:u@example.com; lr SIP/2.0"), 400),
    ("several SP between request line elements", msg("INVITE  sip:u@example.com  SIP/2.0"),
     400),
    ("SP after the version", msg("OPTIONS sip:u@example.com SIP/2.0 "), 400),
    ("escaped headers in the Request-URI",
     msg("INVITE sip:u@example.com?Route=%3Csip:example.com%3E SIP/2.0"), 400),
    ("bad SIP version", msg("OPTIONS sip:u@example.com SIP/7.0"), 505),
    ("malformed version", msg("OPTIONS sip:u@example.com SIP/two"), 400),
    ("status code too large", msg("SIP/2.0 4294967301 better not break the receiver",
                                  cseq="1 INVITE"), 400),
    ("status code too short", msg("SIP/2.0 20 OK", cseq="1 INVITE"), 400),
    ("unknown Request-URI scheme", msg("OPTIONS nobodyKnowsThisScheme:totallyopaquecontent "
                                       "SIP/2.0"), 416),
    ("missing Call-ID", msg("OPTIONS sip:u@example.com SIP/2.0").replace(
        b"Call-ID: 3848276298220188511@example.com\r\n", b""), 400),
    ("missing From", msg("OPTIONS sip:u@example.com SIP/2.0").replace(
        b"From: <sip:alice@example.com>;tag=9fxced76sl\r\n", b""), 400),
    ("missing To", msg("OPTIONS sip:u@example.com SIP/2.0").replace(
        b"To: <sip:bob@example.com>\r\n", b""), 400),
    ("missing CSeq", msg("OPTIONS sip:u@example.com SIP/2.0", *BASE, base=False), 400),
    ("missing Via", msg("OPTIONS sip:u@example.com SIP/2.0").replace(
        b"Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw\r\n", b""), 400),
    ("two Call-ID", msg("OPTIONS sip:u@example.com SIP/2.0", "Call-ID: other@x"), 400),
    ("two To", msg("OPTIONS sip:u@example.com SIP/2.0", "To: <sip:other@x>"), 400),
    ("two addresses in one To", msg("OPTIONS sip:u@example.com SIP/2.0").replace(
        b"To: <sip:bob@example.com>", b"To: sip:bob@example.com, sip:carol@example.com"), 400),
    ("Via without sent-by", msg("OPTIONS sip:u@example.com SIP/2.0", "Via: SIP/2.0/UDP"), 400),
    ("Via with another protocol", msg("OPTIONS sip:u@example.com SIP/2.0",
                                      "Via: HTTP/1.1/TCP h.example.com"), 400),
    ("Via with a bad port", msg("OPTIONS sip:u@example.com SIP/2.0",
                                "Via: SIP/2.0/UDP h.example.com:70000;branch=z9hG4bKx"), 400),
    ("header line without colon", msg("OPTIONS sip:u@example.com SIP/2.0", "NoColonHere"), 400),
    ("space inside a header name", msg("OPTIONS sip:u@example.com SIP/2.0", "Bad Name: x"),
     400),
    ("non-numeric Max-Forwards", msg("OPTIONS sip:u@example.com SIP/2.0").replace(
        b"Max-Forwards: 70", b"Max-Forwards: seventy"), 400),
    ("Max-Forwards above 255", msg("OPTIONS sip:u@example.com SIP/2.0").replace(
        b"Max-Forwards: 70", b"Max-Forwards: 300"), 400),
    ("garbage start line", b"Hello there\r\n\r\n", 400),
    ("empty message", b"", 400),
    ("only CRLFs", b"\r\n\r\n\r\n", 400),
    ("Call-ID with a space", msg("OPTIONS sip:u@example.com SIP/2.0").replace(
        b"Call-ID: 3848", b"Call-ID: 38 48"), 400),
    ("bad escape in a URI", msg("OPTIONS sip:u%zz@example.com SIP/2.0"), 400),
    ("unbalanced angle bracket in Contact", msg("OPTIONS sip:u@example.com SIP/2.0",
                                                "Contact: <sip:a@example.com"), 400),
]


@pytest.mark.parametrize("name,data,check", VALID, ids=[v[0] for v in VALID])
def test_valid_corpus(name: str, data: bytes, check: Check) -> None:
    """Odd but valid messages parse, and read as they should."""
    message = outcome(data)
    assert check(message), name
    # and what we parsed survives our own serialiser
    again = outcome(message.encode())
    assert again.headers.items() == message.headers.items() or \
        [i for i in again.headers.items() if i[0] != "Content-Length"] == \
        [i for i in message.headers.items() if i[0] != "Content-Length"]
    assert again.body == message.body


@pytest.mark.parametrize("name,data,status", INVALID, ids=[v[0] for v in INVALID])
def test_invalid_corpus(name: str, data: bytes, status: int) -> None:
    """Invalid messages raise SipParseError carrying the status to answer with."""
    with pytest.raises(SipParseError) as info:
        outcome(data)
    assert info.value.status == status, (name, info.value)


def test_invalid_request_keeps_partial_headers() -> None:
    """A request failing late still carries its Via, From, To, Call-ID and CSeq."""
    with pytest.raises(SipParseError) as info:
        outcome(msg("OPTIONS sip:u@example.com SIP/7.0"))
    assert set(info.value.partial) == {"Via", "From", "To", "Call-ID", "CSeq"}


def _touch(message: Message) -> None:
    """Read everything a UA might read."""
    message.validate()
    for view in (message.contacts, message.routes, message.record_routes):
        for item in view:
            str(item)
    message.expires  # noqa: B018
    for via in message.vias:
        via.rport  # noqa: B018
        str(via)
    if isinstance(message, Request):
        str(message.uri)
    # the item list is built lazily from the parsed lines (here once in a copy, once in the
    # original): both must give the same headers and the same wire form
    copy = message.copy()
    assert copy.encode() == message.encode()
    assert copy.headers.items() == message.headers.items()


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_garbage_raises_only_sip_parse_error(data: bytes) -> None:
    """Random bytes parse or raise SipParseError, nothing else (datagram and stream)."""
    try:
        _touch(parse(data))
    except SipParseError:
        pass
    try:
        for message in StreamParser(max_size=1000).feed(data):
            _touch(message)
    except SipParseError:
        pass


_CORPUS = [v[1] for v in VALID] + [v[1] for v in INVALID]
_NASTY = [b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b";", b",", b'"', b"<", b">", b"\\", b"%",
          b"@", b"[", b"]", b"=", b"/", b"\x00", b"\xff", b"\xc3", b"?", b"&", b"*", b"0"]


@settings(max_examples=400)
@given(st.sampled_from(_CORPUS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3),
                                                     st.sampled_from(_NASTY)),
                                           min_size=1, max_size=4))
def test_mutations_raise_only_sip_parse_error(data: bytes,
                                              edits: list[tuple[int, int, bytes]]) -> None:
    """Corpus messages with bytes inserted, replaced or deleted raise only SipParseError."""
    mutated = bytearray(data)
    for where, kind, chunk in edits:
        position = where % (len(mutated) + 1)
        if kind == 0:
            mutated[position:position] = chunk
        elif kind == 1:
            mutated[position:position + 1] = chunk
        else:
            del mutated[position:position + kind]
    try:
        _touch(parse(bytes(mutated)))
    except SipParseError:
        pass
