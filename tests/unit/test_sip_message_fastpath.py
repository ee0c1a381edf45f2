"""The one-match fast path of sipua.message.parse() against the general path.

The fast path (one match over a header block of the usual shape, the other headers indexed on
first need, typed values built from the match's parts) must give exactly what the general path
gives: the same message, headers, typed values and encoding, or the same SipParseError status.
Each message here is parsed twice, once with the fast path disabled, and the two outcomes are
compared field by field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sipua.message as sip
from sipua.message import Request, Response, SipParseError, parse
from tests.fuzz import targets
from tests.unit.test_sip_torture import INVALID, VALID

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060;transport=udp>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n"
    b"\r\n"
    b"v=0\n"
)

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=198.51.100.7\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: \"A. \\\"Al\\\" Ice\" <sips:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


@contextmanager
def general_only() -> Iterator[None]:
    """Parse with the fast path switched off."""
    with mock.patch.object(sip, "_parse_fast", lambda head, rest, stream: None):
        yield


def _read(func: Any) -> Any:
    """A value, or the status of the SipParseError reading it raised."""
    try:
        return ("ok", func())
    except SipParseError as error:
        return ("error", error.status, error.partial)


def outcome(data: bytes, *, stream: bool = False) -> Any:
    """Everything a caller can observe of parsing ``data``, as comparable values."""
    try:
        message = parse(data, stream=stream)
    except SipParseError as error:
        return ("error", error.status, error.partial)
    headers = message.headers
    start = (message.status, message.reason) if isinstance(message, Response) else \
        (message.method, message.uri)
    views = [_read(lambda name=name: getattr(message, name)) for name in (
        "cseq", "vias", "from_", "to", "call_id", "max_forwards", "contacts", "routes",
        "record_routes", "expires", "content_type", "contact_star")]
    # The index first (it is all a fast parse builds), the item list and encoding after.
    index = {key: list(values) for key, values in headers._index.items()}
    gets = [(headers.get(name), headers.get_all(name), name in headers)
            for name in ("Via", "v", "call-id", "Content-Length", "X-Extra", "Subject")]
    return (type(message).__name__, start, message.body, views, gets, index, headers.items(),
            len(headers), message.partial(), _read(message.validate), message.encode())


def fast_and_general(data: bytes, *, stream: bool = False) -> tuple[Any, Any]:
    """The outcome through parse() as is, and with the fast path switched off."""
    fast = outcome(data, stream=stream)
    with general_only():
        general = outcome(data, stream=stream)
    return fast, general


def takes_fast_path(data: bytes) -> bool:
    """Whether parse() answers ``data`` from the fast path."""
    message = parse(data)
    return message.headers._head is not None


def test_usual_messages_take_the_fast_path_and_read_the_same() -> None:
    """The benchmark's shapes go through the fast path and read what the general path reads."""
    for data in (INVITE, OK):
        assert takes_fast_path(data)
        fast, general = fast_and_general(data)
        assert fast == general
        assert fast[0] in ("Request", "Response")


def test_other_headers_are_indexed_on_first_need() -> None:
    """A fast parse indexes only the transaction headers; the rest appear when asked for, in
    order, and changes then work as on a generally parsed message."""
    message = parse(INVITE)
    assert message.headers._head is not None
    assert message.headers.get("Content-Type") == "application/sdp"
    assert message.headers._head is None
    assert [name for name, _ in message.headers.items()][:3] == ["Via", "Max-Forwards", "To"]
    message = parse(OK)
    message.headers.set("Via", "SIP/2.0/TCP other;branch=z9hG4bKy")
    assert message.vias[0].branch == "z9hG4bKy" and message.vias[0].transport == "TCP"
    assert message.call_id == "a84b4c76e66710@pc33.atlanta.example.com"


def test_typed_values_keep_their_checks_on_the_fast_path() -> None:
    """Parts the one match cannot bound (a Via or URI port above 65535) still fail on read, as
    on the general path."""
    data = OK.replace(b"192.0.2.10:5060;", b"192.0.2.10:99999;", 1)
    data = data.replace(b"<sip:bob@biloxi.example.com>", b"<sip:bob@biloxi.example.com:70000>")
    fast, general = fast_and_general(data)
    assert fast == general
    message = parse(data)
    with pytest.raises(SipParseError):
        message.vias  # noqa: B018
    with pytest.raises(SipParseError):
        message.to  # noqa: B018
    assert message.from_.tag == "1928301774"


@pytest.mark.parametrize("change", [
    (b"Via: ", b"v:\t"), (b"Via: ", b"VIA  :  "), (b"Call-ID: ", b"i: "), (b"CSeq: ", b"cseq:"),
    (b"Content-Length: 0", b"l: 0"), (b"To: ", b"t: "), (b"From: ", b"FROM:"),
    (b"Contact: <sip:bob@192.0.2.4>\r\n", b""), (b"Contact: ", b"Contact:    "),
    (b"Contact: <sip:bob@192.0.2.4>", b"Contact: <sip:bob@192.0.2.4>  \t"),
    (b"Contact: <sip:bob@192.0.2.4>", b"X-Empty:"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Via: SIP/2.0/UDP p;branch=z9hG4bKp"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Call-ID: again"),
    (b"Contact: <sip:bob@192.0.2.4>", b"l: 0"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Max-Forwards: 1\r\nMax-Forwards: 2"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Max-Forwards: many"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Subject: caf\xc3\xa9 \xc2\xa0"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Subject: folded\r\n line"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Bad Name: x"),
    (b"Contact: <sip:bob@192.0.2.4>", b"NoColon"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Subject: bare\rcr"),
    (b"Contact: <sip:bob@192.0.2.4>", b"Subject: x\x0b"),
    (b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com", b"Call-ID: has space"),
    (b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com", b"Call-ID: caf\xc3\xa9"),
    (b"CSeq: 314159 INVITE", b"CSeq: 2147483648 INVITE"),
    (b"CSeq: 314159 INVITE", b"CSeq: 1\tINVITE"),
    (b"Content-Length: 0", b"Content-Length: 5"),
    (b"Content-Length: 0", b"Content-Length: 0000000000"),
    (b"Content-Length: 0\r\n", b""),
    (b"SIP/2.0 200 OK", b"SIP/2.0 200"), (b"SIP/2.0 200 OK", b"SIP/2.0 700 Odd"),
    (b"SIP/2.0 200 OK", b"sip/2.0 200 OK"), (b"SIP/2.0 200 OK", b"SIP/2.0 200 OK\r"),
    (b"To: Bob <sip:bob@biloxi.example.com>", b"To: Bell, Alex <sip:b@h>"),
    (b"To: Bob <sip:bob@biloxi.example.com>", b"To: \xc2\xa0<sip:b@h>"),
    (b"To: Bob <sip:bob@biloxi.example.com>", b"To: <sip:b@h>;tag=x\xc2\xa0"),
    (b"To: Bob <sip:bob@biloxi.example.com>", b"To: sip:b@h;tag=1"),
    (b"To: Bob <sip:bob@biloxi.example.com>", b'To: "Bob" <sip:b@h>;x="q"'),
    (b"\r\n\r\n", b"\n\n"), (b"\r\nTo:", b"\nTo:"),
    (b"CSeq: ", "C\u017feq: ".encode()), (b"Call-ID: ", "\u0131: ".encode()),
    (b"Call-ID: ", "Call-\u0130D: ".encode()),
])
def test_variants_agree(change: tuple[bytes, bytes]) -> None:
    """Spellings the fast path takes and shapes it leaves to the general path: same outcome."""
    old, new = change
    for data in (OK, INVITE):
        if old in data:
            fast, general = fast_and_general(data.replace(old, new, 1))
            assert fast == general


def test_request_checks_agree() -> None:
    """Request-URI port, CSeq method and the stream framing rule give the same outcome."""
    for data in (INVITE.replace(b"biloxi.example.com SIP", b"biloxi.example.com:65536 SIP"),
                 INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"),
                 INVITE.replace(b"INVITE sip:bob", b"INVITE sip:bob%20x"),
                 INVITE.replace(b"Content-Length: 4\r\n", b"")):
        for stream in (False, True):
            fast, general = fast_and_general(data, stream=stream)
            assert fast == general


def test_limits_agree() -> None:
    """The header line limit (513) and long blocks behave the same whichever path is tried."""
    extra = b"".join(b"X-H%d: v\r\n" % n for n in range(sip.MAX_HEADER_LINES))
    data = OK.replace(b"Content-Length: 0\r\n", extra + b"Content-Length: 0\r\n")
    fast, general = fast_and_general(data)
    assert fast == general and fast[:2] == ("error", 513)
    fits = OK.replace(b"Contact: <sip:bob@192.0.2.4>\r\n", b"X-Long: " + b"a" * 5000 + b"\r\n")
    fast, general = fast_and_general(fits)
    assert fast == general and fast[0] == "Response"


def test_line_limit_holds_within_a_short_block() -> None:
    """More than MAX_HEADER_LINES short lines fit in a block the fast path tries: it stops at
    the limit, and the general path answers 513 as always."""
    extra = b"X:\r\n" * (sip.MAX_HEADER_LINES + 8)
    data = OK.replace(b"Content-Length: 0\r\n", extra + b"Content-Length: 0\r\n")
    assert data.find(b"\r\n\r\n") <= sip.MAX_START_LINE
    fast, general = fast_and_general(data)
    assert fast == general and fast[:2] == ("error", 513)
    fits = OK.replace(b"Content-Length: 0\r\n", b"X:\r\n" * 100 + b"Content-Length: 0\r\n")
    assert takes_fast_path(fits)
    assert fast_and_general(fits)[0] == fast_and_general(fits)[1]


@pytest.mark.parametrize("pattern,texts", [
    (r"(?:a(?:b)?c)?d(?: (e))?", ["d", "acd", "abcd", "abd", "d e", "d ", "abcd e"]),
    (r"x(?:[^;]*;)?y(?:z)??", ["xy", "xa;y", "xyz", "x;;y"]),
])
def test_branch_optionals_keeps_the_language(pattern: str, texts: list[str]) -> None:
    """Rewriting capture-free optional groups as alternations changes no match or group."""
    rewritten = sip._branch_optionals(pattern)
    assert ")?" not in rewritten.replace("(?: (e))?", "").replace("(?:z)??", "")
    for text in texts:
        want, got = re.fullmatch(pattern, text), re.fullmatch(rewritten, text)
        assert (want is None) == (got is None)
        if want is not None and got is not None:
            assert want.groups() == got.groups()


@pytest.mark.parametrize("data", [entry[1] for entry in VALID] + [entry[1] for entry in INVALID]
                         + list(targets.SIP_SEEDS))
def test_corpus_agrees(data: bytes) -> None:
    """Every message of the RFC 4475-style corpus and the fuzz seeds: same outcome."""
    fast, general = fast_and_general(data)
    assert fast == general


_TOKEN = st.text("abcXYZ019-.!%*_+`'~", min_size=1, max_size=6)
_SP = st.sampled_from(["", " ", " ", " ", "  ", "\t", " \t"])
_NAMES = {
    "via": ["Via", "Via", "v", "VIA", "via"], "from": ["From", "From", "f", "fRoM"],
    "to": ["To", "To", "t", "TO"], "call-id": ["Call-ID", "Call-ID", "i", "call-id", "Call-Id"],
    "cseq": ["CSeq", "CSeq", "Cseq", "CSEQ"], "max-forwards": ["Max-Forwards", "max-forwards"],
    "content-length": ["Content-Length", "Content-Length", "l"],
}


def usually(valid: st.SearchStrategy[str], odd: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly a valid form, sometimes an odd or invalid one."""
    return st.sampled_from([True] * 15 + [False]).flatmap(lambda ok: valid if ok else odd)


_PARAM = st.tuples(_TOKEN, st.none() | _TOKEN).map(
    lambda p: f";{p[0]}" if p[1] is None else f";{p[0]}={p[1]}")
_PARAMS = usually(st.lists(_PARAM, max_size=3).map("".join),
                  st.sampled_from(['"q s"', ";a,b", ";x=", ";y= 1", ";z=\"q\"", "; w"]))
_HOST = usually(st.sampled_from(["h", "192.0.2.1", "a.example.com", "h_1."]),
                st.sampled_from(["[::1]", "-bad", "x y", "h\xa0"]))
_PORT = usually(st.sampled_from(["", ":5060", ":65535"]), st.sampled_from([":65536", ":99999",
                                                                          ":x", ":"]))
_VIA = st.builds(lambda t, h, p, params, sp: f"SIP/2.0/{t}{sp}{h}{p}{params}",
                 usually(st.sampled_from(["UDP", "tcp", "TLS"]), st.just("U DP")),
                 _HOST, _PORT, _PARAMS, usually(st.just(" "), st.sampled_from(["  ", "\t"])))
_VIAS = usually(_VIA, st.lists(_VIA, min_size=2, max_size=2).map(", ".join))
_DISPLAY = usually(st.sampled_from(["", "Bob ", '"Bob" ', '"B \\"o\\" b"', "café "]),
                   st.sampled_from(['B"ob ', "\xa0", '"x', "Bell, Alex ", " Bob\t"]))
_URI = st.builds(lambda s, u, h, p, params: f"{s}:{u}{h}{p}{params}",
                 usually(st.sampled_from(["sip", "sips"]), st.sampled_from(["SIP", "tel",
                                                                            "mailto"])),
                 usually(st.sampled_from(["", "bob@"]), st.sampled_from(["b%20b@", "a:pw@"])),
                 _HOST, _PORT, _PARAMS)
_NAME_ADDR = usually(st.builds(lambda d, u, params: f"{d}<{u}>{params}", _DISPLAY, _URI,
                               _PARAMS), _URI)
_CALL_ID = usually(st.sampled_from(["c1", "a84b@pc33.example.com"]),
                   st.sampled_from(["has space", "café", "x<y", ""]))
_CSEQ = st.builds(lambda n, sp, m: f"{n}{sp}{m}",
                  usually(st.sampled_from(["1", "0009"]), st.just("2147483648")),
                  usually(st.just(" "), st.sampled_from(["\t", "  "])),
                  usually(st.just("INVITE"), st.just("BYE")))
_OTHER = st.sampled_from([
    "Contact: <sip:c@h>", "Contact: *", "Route: <sip:p@h;lr>, <sip:q@h>", "Expires: 60",
    "Expires: soon", "Subject: x", "Subject:", "X-Odd-Name : v", "Allow: INVITE, BYE",
    "Supported: timer", "Record-Route: <sip:r@h;lr>", "m: <sip:c@h>;expires=5",
    "Subject: folded\r\n more", "User-Agent: caf\u00e9", "P-Asserted-Identity: <sip:a@h>",
])


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Messages near the usual shape: each part drawn from valid, odd and invalid forms."""
    values = {"via": _VIAS, "from": _NAME_ADDR, "to": _NAME_ADDR, "call-id": _CALL_ID,
              "cseq": _CSEQ, "max-forwards": usually(st.sampled_from(["70", "0068"]),
                                                     st.just("many"))}
    lines: list[str] = []
    for key, strategy in values.items():
        for _ in range(draw(st.sampled_from([1] * 12 + [0, 2]))):
            name = draw(st.sampled_from(_NAMES[key]))
            lines.append(f"{name}{draw(_SP)}:{draw(_SP)}{draw(strategy)}{draw(_SP)}")
    lines += draw(st.lists(_OTHER, max_size=3))
    lines = draw(st.permutations(lines))
    body = draw(st.sampled_from([b"", b"v=0\r\n", b"abc"]))
    length = draw(usually(st.just(str(len(body))), st.sampled_from(["0", "9", "", "none"])))
    if length != "none":
        lines.append(f"{draw(st.sampled_from(_NAMES['content-length']))}: {length}".rstrip())
    start = draw(usually(
        st.sampled_from(["SIP/2.0 200 OK", "SIP/2.0 180", "SIP/2.0 486 Busy Here",
                         "INVITE sip:bob@h SIP/2.0"]),
        st.sampled_from(["BYE sip:bob@h SIP/2.0", "INVITE sip:bob@h:70000 SIP/2.0",
                         "INVITE sip:b%41b@h SIP/2.0", "INVITE tel:+1 SIP/2.0",
                         "SIP/2.0 20 OK"])))
    eol = draw(usually(st.just("\r\n"), st.just("\n")))
    return (eol.join([start, *lines]) + eol + eol).encode() + body


@settings(max_examples=400, deadline=None)
@given(messages(), st.booleans())
def test_generated_messages_agree(data: bytes, stream: bool) -> None:
    """Generated messages near the usual shape: the fast path and the general path agree."""
    fast, general = fast_and_general(data, stream=stream)
    assert fast == general


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([INVITE, OK]), st.integers(0, 400), st.binary(min_size=1, max_size=4))
def test_mutations_agree(data: bytes, at: int, junk: bytes) -> None:
    """A few bytes of junk anywhere in a usual message: both paths give the same outcome."""
    at %= len(data)
    fast, general = fast_and_general(data[:at] + junk + data[at + len(junk):])
    assert fast == general


def test_fast_path_parses_requests_and_responses() -> None:
    """Both message kinds come out of the fast path with their start lines."""
    request = parse(INVITE)
    response = parse(OK)
    assert isinstance(request, Request) and request.method == "INVITE"
    assert request.uri.host == "biloxi.example.com" and request.body == b"v=0\n"
    assert isinstance(response, Response) and (response.status, response.reason) == (200, "OK")
    assert response.from_.display == 'A. "Al" Ice' and response.from_.uri.scheme == "sips"
