"""SIP/SIPS/tel URIs: parsing, escaping, serialisation and the RFC 3261 §19.1.4 comparison."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipua.uri import SipParseError, SipUri, parse_uri, uri_equal


def test_full_uri_parts() -> None:
    """Every component of a full SIPS URI lands in its field."""
    uri = parse_uri("sips:alice:secret@atlanta.example.com:5061;transport=TCP;lr"
                    "?subject=project%20x&priority=urgent")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips", "alice", "secret", "atlanta.example.com", 5061)
    assert uri.params == {"transport": "TCP", "lr": None}
    assert uri.headers == {"subject": "project%20x", "priority": "urgent"}
    assert uri.transport == "tcp"


def test_defaults_and_transport() -> None:
    """Absent port stays None; transport defaults to udp for sip and tls for sips."""
    assert parse_uri("sip:bob@biloxi.com").port is None
    assert parse_uri("sip:bob@biloxi.com").transport == "udp"
    assert parse_uri("sips:bob@biloxi.com").transport == "tls"


def test_ipv6_reference() -> None:
    """An IPv6 host is stored without brackets and written with them."""
    uri = parse_uri("sip:alice@[2001:db8::10]:5070;maddr=[2001:db8::1]")
    assert uri.host == "2001:db8::10"
    assert uri.port == 5070
    assert uri.params["maddr"] == "[2001:db8::1]"
    assert str(uri) == "sip:alice@[2001:db8::10]:5070;maddr=[2001:db8::1]"
    assert uri.host_port == "[2001:db8::10]:5070"


def test_escaped_user_is_decoded_and_reescaped() -> None:
    """%XX escapes are decoded in the user part; what needs escaping is escaped on output."""
    uri = parse_uri("sip:%61lice%20smith@atlanta.com")
    assert uri.user == "alice smith"
    assert str(uri) == "sip:alice%20smith@atlanta.com"
    assert parse_uri("sip:null-%00-null@example.com").user == "null-\x00-null"


def test_user_with_reserved_but_allowed_characters() -> None:
    """user-unreserved characters (; ? / & = + $ ,) may stand unescaped in the user part."""
    uri = parse_uri("sip:+1-212-555-1212;isub=1234@gw.example.com;user=phone")
    assert uri.user == "+1-212-555-1212;isub=1234"
    assert uri.params == {"user": "phone"}


def test_tel_uri() -> None:
    """tel: keeps the number as user and its parameters."""
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert uri.scheme == "tel"
    assert uri.user == "+1-201-555-0123"
    assert uri.host == ""
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"


def test_unknown_scheme_416_or_opaque() -> None:
    """An unknown scheme is a 416 by default and kept opaque when allowed."""
    with pytest.raises(SipParseError) as info:
        parse_uri("http://example.com/")
    assert info.value.status == 416
    uri = parse_uri("urn:service:sos", any_scheme=True)
    assert (uri.scheme, uri.opaque, str(uri)) == ("urn", "service:sos", "urn:service:sos")


@pytest.mark.parametrize("text", [
    "sip:", "sip:@host", "sip:alice@", "sip:alice@host:99999", "sip:alice@host:65536",
    "sip:alice@host:port",
    "sip:alice@[::1", "sip:alice@[zz::1]", "sip:al ice@host", "sip:alice@host;", "sip:a%4@host",
    "alice@host", "sip:alice@host;lr?", "sip:alice@ho st", "1sip:x@y",
])
def test_malformed_uris_raise_400(text: str) -> None:
    """Malformed URIs raise SipParseError with 400."""
    with pytest.raises(SipParseError) as info:
        parse_uri(text)
    assert info.value.status == 400


def test_with_copies_dicts() -> None:
    """with_() replaces fields and never shares the params dict with the original."""
    uri = parse_uri("sip:alice@atlanta.com;lr")
    other = uri.with_(port=5062)
    other.params["transport"] = "tcp"
    assert other.port == 5062
    assert uri.params == {"lr": None}


EQUAL = [  # RFC 3261 §19.1.4
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ("tel:+1-201-555-0123", "tel:+1.201.555.0123"),
]
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:bob@biloxi.com", "sips:bob@biloxi.com"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;newparam=6"),
]


@pytest.mark.parametrize("a,b", EQUAL)
def test_rfc3261_equal_uris(a: str, b: str) -> None:
    """The equivalent URIs of RFC 3261 §19.1.4 compare equal, both ways."""
    assert uri_equal(parse_uri(a), parse_uri(b))
    assert uri_equal(parse_uri(b), parse_uri(a))


@pytest.mark.parametrize("a,b", NOT_EQUAL)
def test_rfc3261_different_uris(a: str, b: str) -> None:
    """The non-equivalent URIs of RFC 3261 §19.1.4 compare different, both ways."""
    assert not uri_equal(parse_uri(a), parse_uri(b))
    assert not uri_equal(parse_uri(b), parse_uri(a))


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
_PVALUE = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789-_.!~*'()[]/:&+$", min_size=1,
                  max_size=10)
_HVALUE = st.text("abcXYZ0123456789-_.!~*'()[]/?:+$%", min_size=0, max_size=10).filter(
    lambda v: "%" not in v)
_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,6}[a-z0-9])?", fullmatch=True)
_HOST = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
)
_NO_SURROGATES = st.characters(blacklist_categories=["Cs"])
_TEXT = st.text(_NO_SURROGATES, min_size=1, max_size=12)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    """Arbitrary valid sip/sips URIs."""
    user = draw(st.none() | _TEXT)
    password = draw(st.none() | st.text(_NO_SURROGATES, max_size=8)) \
        if user is not None else None
    return SipUri(
        scheme=draw(st.sampled_from(["sip", "sips"])), user=user, password=password,
        host=draw(_HOST), port=draw(st.none() | st.integers(0, 65535)),
        params=draw(st.dictionaries(_TOKEN, st.none() | _PVALUE, max_size=3)),
        headers=draw(st.dictionaries(_TOKEN, _HVALUE, max_size=2)),
    )


@given(sip_uris())
def test_round_trip(uri: SipUri) -> None:
    """parse(str(uri)) gives back the same URI, and it compares equal to itself."""
    again = parse_uri(str(uri))
    assert again == uri
    assert uri_equal(again, uri)


@given(sip_uris())
def test_fast_path_reads_what_the_general_path_reads(uri: SipUri) -> None:
    """The one-match path for the usual shape agrees with the general parser.

    An upper-case scheme is valid (RFC 3261 §19.1.4: schemes compare case-insensitively) and
    only the general path accepts it, so it serves as the reference.
    """
    text = str(uri)
    general = parse_uri(uri.scheme.upper() + text[len(uri.scheme):])
    assert parse_uri(text) == general == uri


@given(st.text(max_size=60))
def test_garbage_raises_only_sip_parse_error(text: str) -> None:
    """Any text either parses or raises SipParseError, never anything else."""
    try:
        uri = parse_uri(text, any_scheme=True)
    except SipParseError as error:
        assert error.status in (400, 416)
    else:
        assert isinstance(str(uri), str)


@given(sip_uris(), st.integers(0, 80), st.sampled_from(list("@:;?%[]<> \"=&")))
def test_mutated_uri_raises_only_sip_parse_error(uri: SipUri, position: int, char: str) -> None:
    """Inserting a delimiter anywhere into a valid URI never raises anything but SipParseError."""
    text = str(uri)
    position %= len(text) + 1
    try:
        parse_uri(text[:position] + char + text[position:])
    except SipParseError:
        pass
