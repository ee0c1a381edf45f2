"""STUN codec (ice.stun): RFC 5769 vectors, round trips, integrity, fingerprint, garbage."""

from __future__ import annotations

import hashlib
import ipaddress
import random
import re
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ice import stun as stun_module
from ice.stun import (
    FINGERPRINT_XOR,
    Attr,
    Message,
    MessageClass,
    Method,
    StunError,
    decode,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    is_stun,
    long_term_key,
    make_error,
    make_response,
    message_type,
    new_transaction_id,
    short_term_key,
    verify_integrity,
)


def hexbytes(text: str) -> bytes:
    """Bytes from hex as the RFC prints it (spaces and line breaks)."""
    return bytes.fromhex(re.sub(r"\s+", "", text))


# RFC 5769 test vectors (§2.1-§2.4).
SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
VECTOR_TID = hexbytes("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
SAMPLE_REQUEST = hexbytes("""
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf""")
SAMPLE_IPV4_RESPONSE = hexbytes("""
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96""")
SAMPLE_IPV6_RESPONSE = hexbytes("""
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c""")
SAMPLE_LONG_TERM_REQUEST = hexbytes("""
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34
    73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66""")
LONG_TERM_USER = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # "matorikkusu" in katakana
LONG_TERM_KEY = long_term_key(LONG_TERM_USER, "example.org", "TheMatrIX")


# --- RFC 5769 -------------------------------------------------------------------------------

def test_rfc5769_sample_request() -> None:
    """§2.1: every attribute decodes, short-term integrity and fingerprint check out."""
    message = decode(SAMPLE_REQUEST)
    assert message.method == Method.BINDING and message.cls is MessageClass.REQUEST
    assert message.transaction_id == VECTOR_TID
    assert message.get(Attr.SOFTWARE) == "STUN test client"
    assert message.get(Attr.PRIORITY) == 0x6E0001FF
    assert message.get(Attr.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert message.get(Attr.USERNAME) == "evtj:h6vY"
    assert list(message.attributes)[-2:] == [Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]
    assert verify_integrity(message, short_term_key(SHORT_TERM_PASSWORD))
    assert not verify_integrity(message, short_term_key("wrong password"))


def test_rfc5769_ipv4_response() -> None:
    """§2.2: XOR-MAPPED-ADDRESS 192.0.2.1:32853, integrity with the same password."""
    message = decode(SAMPLE_IPV4_RESPONSE)
    assert message.cls is MessageClass.SUCCESS
    assert message.get(Attr.SOFTWARE) == "test vector"
    assert message.get(Attr.XOR_MAPPED_ADDRESS) == ("192.0.2.1", 32853)
    assert verify_integrity(message, short_term_key(SHORT_TERM_PASSWORD))


def test_rfc5769_ipv6_response() -> None:
    """§2.3: the IPv6 address is XORed with cookie and transaction id."""
    message = decode(SAMPLE_IPV6_RESPONSE)
    assert message.get(Attr.XOR_MAPPED_ADDRESS) == ("2001:db8:1234:5678:11:2233:4455:6677",
                                                    32853)
    assert verify_integrity(message, short_term_key(SHORT_TERM_PASSWORD))
    rebuilt = Message(Method.BINDING, MessageClass.SUCCESS, VECTOR_TID,
                      {Attr.XOR_MAPPED_ADDRESS: message.get(Attr.XOR_MAPPED_ADDRESS)}).encode()
    assert SAMPLE_IPV6_RESPONSE[36:60] in rebuilt


def test_rfc5769_long_term_request_and_exact_reencode() -> None:
    """§2.4: long-term key MD5(user:realm:pass); rebuilt from its values it is byte-identical."""
    message = decode(SAMPLE_LONG_TERM_REQUEST)
    assert message.get(Attr.USERNAME) == LONG_TERM_USER
    assert message.get(Attr.NONCE) == "f//499k954d6OL34oL9FSTvy64sA"
    assert message.get(Attr.REALM) == "example.org"
    assert Attr.FINGERPRINT not in message.attributes
    assert verify_integrity(message, LONG_TERM_KEY)
    assert not verify_integrity(message, long_term_key(LONG_TERM_USER, "example.org", "x"))
    again = Message(message.method, message.cls, message.transaction_id,
                    {k: v for k, v in message.attributes.items()
                     if k != Attr.MESSAGE_INTEGRITY})
    assert again.encode(integrity_key=LONG_TERM_KEY) == SAMPLE_LONG_TERM_REQUEST


def test_long_term_key_is_md5_of_user_realm_password() -> None:
    """RFC 8489 §9.2.2: the key is the MD5 of the UTF-8 "user:realm:password"."""
    expected = hashlib.md5(f"{LONG_TERM_USER}:example.org:TheMatrIX".encode()).digest()
    assert expected == LONG_TERM_KEY
    assert short_term_key("p\u00e4ss") == "p\u00e4ss".encode()


# --- header ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "cls", "wire"), [
    (Method.BINDING, MessageClass.REQUEST, 0x0001),
    (Method.BINDING, MessageClass.INDICATION, 0x0011),
    (Method.BINDING, MessageClass.SUCCESS, 0x0101),
    (Method.BINDING, MessageClass.ERROR, 0x0111),
    (Method.ALLOCATE, MessageClass.SUCCESS, 0x0103),
    (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
    (Method.SEND, MessageClass.INDICATION, 0x0016),
    (Method.DATA, MessageClass.INDICATION, 0x0017),
    (Method.CHANNEL_BIND, MessageClass.REQUEST, 0x0009),
    (0xFFF, MessageClass.ERROR, 0x3FFF),
])
def test_method_and_class_bits_interleave(method: int, cls: MessageClass, wire: int) -> None:
    """RFC 8489 §5: the type field interleaves the class bits into the method bits."""
    assert message_type(method, cls) == wire
    data = Message(method, cls, VECTOR_TID, {}).encode()
    assert struct.unpack("!H", data[:2])[0] == wire
    decoded = decode(data)
    assert (decoded.method, decoded.cls) == (method, cls)


def test_unknown_method_kept_as_int() -> None:
    """A method the codec does not name decodes to its number."""
    decoded = decode(Message(0x0ABC, MessageClass.REQUEST, VECTOR_TID, {}).encode())
    assert decoded.method == 0x0ABC and not isinstance(decoded.method, Method)


def test_transaction_ids_come_from_the_rng() -> None:
    """Same seed, same ids: runs are reproducible."""
    first = [new_transaction_id(random.Random(7)) for _ in range(2)]
    assert first[0] == first[1] and len(first[0]) == 12
    rng = random.Random(7)
    assert new_transaction_id(rng) != new_transaction_id(rng)


# --- attributes -----------------------------------------------------------------------------

def _ipv6_text(packed: bytes) -> str:
    return str(ipaddress.IPv6Address(packed))


ipv4_text = st.ip_addresses(v=4).map(str)
ipv6_text = st.binary(min_size=16, max_size=16).map(_ipv6_text)
addresses = st.tuples(st.one_of(ipv4_text, ipv6_text), st.integers(0, 65535))
text = st.text(max_size=100)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)

ATTRIBUTE_VALUES: dict[int, st.SearchStrategy[Any]] = {
    Attr.MAPPED_ADDRESS: addresses,
    Attr.ALTERNATE_SERVER: addresses,
    Attr.XOR_MAPPED_ADDRESS: addresses,
    Attr.XOR_PEER_ADDRESS: addresses,
    Attr.XOR_RELAYED_ADDRESS: addresses,
    Attr.USERNAME: text,
    Attr.REALM: text,
    Attr.NONCE: text,
    Attr.SOFTWARE: text,
    Attr.ALTERNATE_DOMAIN: text,
    Attr.PRIORITY: u32,
    Attr.LIFETIME: u32,
    Attr.ICE_CONTROLLED: u64,
    Attr.ICE_CONTROLLING: u64,
    Attr.USE_CANDIDATE: st.just(True),
    Attr.DONT_FRAGMENT: st.just(True),
    Attr.CHANNEL_NUMBER: st.integers(0x4000, 0x4FFF),
    Attr.REQUESTED_TRANSPORT: st.integers(0, 255),
    Attr.EVEN_PORT: st.booleans(),
    Attr.ERROR_CODE: st.tuples(st.integers(300, 699), text),
    Attr.UNKNOWN_ATTRIBUTES: st.lists(st.integers(0, 0xFFFF), max_size=8).map(tuple),
    Attr.DATA: st.binary(max_size=200),
    Attr.RESERVATION_TOKEN: st.binary(min_size=8, max_size=8),
    Attr.USERHASH: st.binary(min_size=32, max_size=32),
    Attr.PASSWORD_ALGORITHMS: st.binary(max_size=16),
    0x7FFE: st.binary(max_size=30),  # unknown comprehension-required: kept as bytes
    0xC001: st.binary(max_size=30),  # unknown comprehension-optional
}


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """Messages with any subset of attributes, in any order."""
    chosen = draw(st.lists(st.sampled_from(sorted(ATTRIBUTE_VALUES)), unique=True))
    attributes = {a: draw(ATTRIBUTE_VALUES[a]) for a in chosen}
    return Message(draw(st.sampled_from(list(Method))), draw(st.sampled_from(list(MessageClass))),
                   draw(st.binary(min_size=12, max_size=12)), attributes)


@given(messages(), st.one_of(st.none(), st.binary(max_size=80)), st.booleans())
@settings(max_examples=300, deadline=None)
def test_round_trip_every_attribute(message: Message, key: bytes | None, fp: bool) -> None:
    """Encode then decode gives the same method, class, id and attribute values in order."""
    data = message.encode(integrity_key=key, fingerprint=fp)
    assert len(data) % 4 == 0 and is_stun(data)
    decoded = decode(data)
    assert (decoded.method, decoded.cls, decoded.transaction_id) == (
        message.method, message.cls, message.transaction_id)
    plain = {k: v for k, v in decoded.attributes.items()
             if k not in (Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT)}
    assert list(plain.items()) == list(message.attributes.items())
    assert (Attr.FINGERPRINT in decoded.attributes) == fp
    if key is not None:
        assert verify_integrity(decoded, key)
        assert not verify_integrity(decoded, key + b"x")
    else:
        assert not verify_integrity(decoded, b"any")


@given(messages(), st.binary(min_size=1, max_size=40))
@settings(max_examples=100, deadline=None)
def test_sha256_integrity_round_trip(message: Message, key: bytes) -> None:
    """MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6) verifies with its key only."""
    data = message.encode(integrity_key=key, integrity_sha256_key=key, fingerprint=True)
    decoded = decode(data)
    assert len(decoded.get(Attr.MESSAGE_INTEGRITY_SHA256)) == 32
    assert verify_integrity(decoded, key)
    assert not verify_integrity(decoded, key + b"!")


def test_truncated_sha256_integrity_verifies() -> None:
    """A 16-byte MESSAGE-INTEGRITY-SHA256 (the shortest allowed) is checked on its length."""
    import hmac
    body = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID, {Attr.PRIORITY: 1}).encode()
    head = body[:2] + struct.pack("!H", len(body) - 20 + 20) + body[4:]
    mac = hmac.digest(b"k", head, "sha256")[:16]
    data = head + struct.pack("!HH", Attr.MESSAGE_INTEGRITY_SHA256, 16) + mac
    assert verify_integrity(decode(data), b"k")
    assert not verify_integrity(decode(data), b"j")


def test_wrong_key_fails_integrity() -> None:
    """Integrity made with one key does not verify with another."""
    data = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                   {Attr.USERNAME: "a:b"}).encode(integrity_key=b"right", fingerprint=True)
    assert verify_integrity(decode(data), b"right")
    assert not verify_integrity(decode(data), b"wrong")


def test_tampered_body_fails_integrity_but_fingerprint_recomputed() -> None:
    """A changed attribute with a fresh FINGERPRINT still fails MESSAGE-INTEGRITY."""
    data = bytearray(Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                             {Attr.PRIORITY: 5}).encode(integrity_key=b"k"))
    data[27] ^= 1  # inside PRIORITY
    assert decode(bytes(data)).get(Attr.PRIORITY) == 4
    assert not verify_integrity(decode(bytes(data)), b"k")


def test_fingerprint_corruption_detected() -> None:
    """Any flipped bit before or inside FINGERPRINT makes decode fail (RFC 8489 §14.7)."""
    data = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                   {Attr.SOFTWARE: "x"}).encode(fingerprint=True)
    expected = zlib.crc32(data[:-8]) ^ FINGERPRINT_XOR
    assert struct.unpack("!I", data[-4:])[0] == expected
    for index in (21, 24, len(data) - 1):
        broken = bytearray(data)
        broken[index] ^= 0x10
        with pytest.raises(StunError):
            decode(bytes(broken))


def test_attributes_after_integrity_are_ignored() -> None:
    """RFC 8489 §14.5: only MI-SHA256 and FINGERPRINT count after MESSAGE-INTEGRITY."""
    signed = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                     {Attr.PRIORITY: 9}).encode(integrity_key=b"k")
    extra = struct.pack("!HHI", Attr.LIFETIME, 4, 77)
    data = bytearray(signed + extra)
    struct.pack_into("!H", data, 2, len(data) - 20)
    decoded = decode(bytes(data))
    assert Attr.LIFETIME not in decoded.attributes
    assert decoded.get(Attr.PRIORITY) == 9
    assert verify_integrity(decoded, b"k")


def test_fingerprint_must_be_last() -> None:
    """An attribute after FINGERPRINT makes the message malformed."""
    signed = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID, {}).encode(fingerprint=True)
    data = bytearray(signed + struct.pack("!HHI", Attr.PRIORITY, 4, 1))
    struct.pack_into("!H", data, 2, len(data) - 20)
    with pytest.raises(StunError):
        decode(bytes(data))


def test_first_of_repeated_attributes_wins() -> None:
    """RFC 8489 §14: a receiver processes the first occurrence."""
    body = struct.pack("!HHI", Attr.PRIORITY, 4, 1) + struct.pack("!HHI", Attr.PRIORITY, 4, 2)
    data = struct.pack("!HHI", 1, len(body), 0x2112A442) + VECTOR_TID + body
    assert decode(data).get(Attr.PRIORITY) == 1


def test_unknown_comprehension_required() -> None:
    """Unknown types below 0x8000 must be answered with 420; optional ones may be ignored."""
    message = decode(Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                             {0x0031: b"a", 0x8031: b"b", Attr.PRIORITY: 1}).encode())
    assert message.unknown_comprehension_required() == [0x0031]
    assert message.get(0x0031) == b"a" and message.get(0x8031) == b"b"


def test_decode_accepts_bytearray_and_memoryview() -> None:
    """Buffers other than bytes decode the same."""
    assert decode(bytearray(SAMPLE_REQUEST)).get(Attr.USERNAME) == "evtj:h6vY"
    assert decode(memoryview(SAMPLE_REQUEST)).raw == SAMPLE_REQUEST


def test_make_response_and_error() -> None:
    """Responses copy method and transaction id; errors put ERROR-CODE first."""
    request = decode(SAMPLE_REQUEST)
    response = make_response(request, MessageClass.SUCCESS, {Attr.XOR_MAPPED_ADDRESS: ("::1", 9)})
    assert (response.method, response.transaction_id) == (Method.BINDING, VECTOR_TID)
    error = make_error(request, 487, "Role Conflict", {Attr.SOFTWARE: "s"})
    assert list(error.attributes) == [Attr.ERROR_CODE, Attr.SOFTWARE]
    decoded = decode(error.encode())
    assert decoded.cls is MessageClass.ERROR
    assert decoded.get(Attr.ERROR_CODE) == (487, "Role Conflict")


def test_scope_id_is_not_sent() -> None:
    """A link-local address with a scope id encodes as the bare address."""
    data = Message(Method.BINDING, MessageClass.SUCCESS, VECTOR_TID,
                   {Attr.XOR_MAPPED_ADDRESS: ("fe80::1%eth0", 5)}).encode()
    assert decode(data).get(Attr.XOR_MAPPED_ADDRESS) == ("fe80::1", 5)


@pytest.mark.parametrize("attributes", [
    {Attr.ERROR_CODE: (200, "OK")},
    {Attr.PRIORITY: -1},
    {Attr.LIFETIME: 2**32},
    {Attr.XOR_MAPPED_ADDRESS: ("not an ip", 1)},
    {Attr.MAPPED_ADDRESS: ("1.2.3.4", 70000)},
])
def test_encode_rejects_bad_values_with_value_error(attributes: dict[int, Any]) -> None:
    """Values that cannot go on the wire are the caller's fault: ValueError."""
    with pytest.raises(ValueError):
        Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID, attributes).encode()


def test_encode_rejects_bad_transaction_id_and_opaque_type() -> None:
    """A short transaction id is a ValueError, a non-bytes unknown attribute a TypeError."""
    with pytest.raises(ValueError, match="12 bytes"):
        Message(Method.BINDING, MessageClass.REQUEST, b"short", {}).encode()
    with pytest.raises(TypeError):
        Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID, {0x7000: 5}).encode()


# --- malformed input ------------------------------------------------------------------------

def _with_attribute(atype: int, value: bytes) -> bytes:
    padded = value + b"\x00" * (-len(value) % 4)
    body = struct.pack("!HH", atype, len(value)) + padded
    return struct.pack("!HHI", 1, len(body), 0x2112A442) + VECTOR_TID + body


@pytest.mark.parametrize(("atype", "value"), [
    (Attr.PRIORITY, b"\x00\x00\x01"),
    (Attr.LIFETIME, b"\x00" * 8),
    (Attr.ICE_CONTROLLING, b"\x00" * 4),
    (Attr.USE_CANDIDATE, b"\x00"),
    (Attr.CHANNEL_NUMBER, b"\x40\x00"),
    (Attr.REQUESTED_TRANSPORT, b"\x11"),
    (Attr.EVEN_PORT, b"\x80\x00"),
    (Attr.MESSAGE_INTEGRITY, b"\x00" * 16),
    (Attr.MESSAGE_INTEGRITY_SHA256, b"\x00" * 12),
    (Attr.MESSAGE_INTEGRITY_SHA256, b"\x00" * 18),
    (Attr.FINGERPRINT, b"\x00" * 8),
    (Attr.RESERVATION_TOKEN, b"\x00" * 4),
    (Attr.ERROR_CODE, b"\x00\x00\x04"),
    (Attr.ERROR_CODE, b"\x00\x00\x02\x00"),
    (Attr.ERROR_CODE, b"\x00\x00\x04\x64"),
    (Attr.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00"),
    (Attr.XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x01\x01\x02\x03\x04"),
    (Attr.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x01\x01\x02\x03"),
    (Attr.MAPPED_ADDRESS, b"\x00\x02\x00\x01\x01\x02\x03\x04"),
    (Attr.USERNAME, b"\xff\xfe"),
])
def test_wrong_attribute_values_raise_stun_error(atype: int, value: bytes) -> None:
    """Wrong sizes, bad families, bad error classes and bad UTF-8 raise StunError."""
    with pytest.raises(StunError):
        decode(_with_attribute(atype, value))


@pytest.mark.parametrize("data", [
    b"",
    SAMPLE_REQUEST[:19],
    SAMPLE_REQUEST[:-4],
    SAMPLE_REQUEST + b"\x00\x00\x00\x00",
    b"\x80" + SAMPLE_REQUEST[1:],
    SAMPLE_REQUEST[:4] + b"\x21\x12\xa4\x43" + SAMPLE_REQUEST[8:],
    SAMPLE_REQUEST[:2] + b"\x00\x57" + SAMPLE_REQUEST[4:],
    _with_attribute(Attr.PRIORITY, b"\x00\x00\x00\x01")[:-4] + b"",
])
def test_bad_framing_raises_stun_error(data: bytes) -> None:
    """Truncation, bad length, bad top bits and bad cookie raise StunError."""
    with pytest.raises(StunError):
        decode(data)


def test_attribute_overrunning_the_message() -> None:
    """An attribute length past the end of the message is rejected."""
    data = bytearray(_with_attribute(Attr.SOFTWARE, b"abcd"))
    struct.pack_into("!H", data, 22, 9)  # claims 9 bytes (12 padded), only 4 there
    with pytest.raises(StunError):
        decode(bytes(data))


def _decode_or_stun_error(data: bytes) -> None:
    try:
        message = decode(data)
    except StunError:
        return
    message.unknown_comprehension_required()
    verify_integrity(message, b"key")


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_random_garbage_raises_only_stun_error(data: bytes) -> None:
    """Arbitrary bytes either decode or raise StunError; verification never raises."""
    _decode_or_stun_error(data)


@given(st.binary(max_size=200), st.integers(0, 0x3FFF))
@settings(max_examples=500, deadline=None)
def test_garbage_behind_a_valid_header_raises_only_stun_error(body: bytes, mtype: int) -> None:
    """Random attribute soup after a correct header: StunError or a message, nothing else."""
    body = body[: len(body) - len(body) % 4]
    _decode_or_stun_error(struct.pack("!HHI", mtype, len(body), 0x2112A442) + VECTOR_TID + body)


@given(st.sampled_from([SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE,
                        SAMPLE_LONG_TERM_REQUEST]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 200))
@settings(max_examples=500, deadline=None)
def test_mutated_vectors_raise_only_stun_error(base: bytes, edits: list[tuple[int, int]],
                                               cut: int) -> None:
    """Byte mutations and truncations of valid messages raise only StunError."""
    data = bytearray(base)
    for index, value in edits:
        data[index % len(data)] = value
    _decode_or_stun_error(bytes(data))
    _decode_or_stun_error(bytes(data[:cut]))


# --- demultiplexing and ChannelData ---------------------------------------------------------

def test_is_stun_and_is_channel_data() -> None:
    """RFC 7983 first-byte ranges plus the magic cookie."""
    assert is_stun(SAMPLE_REQUEST)
    assert not is_stun(SAMPLE_REQUEST[:19])
    assert not is_stun(b"\x80" + SAMPLE_REQUEST[1:])
    assert not is_stun(SAMPLE_REQUEST[:4] + b"\x00\x00\x00\x00" + SAMPLE_REQUEST[8:])
    assert is_channel_data(b"\x40\x00\x00\x00")
    assert is_channel_data(b"\x4f\xff\x00\x01x")
    assert not is_channel_data(b"\x50\x00\x00\x00")
    assert not is_channel_data(b"\x80\x00\x00\x00")
    assert not is_channel_data(b"\x40\x00")


@given(st.integers(0x4000, 0x4FFF), st.binary(max_size=300), st.booleans())
def test_channel_data_round_trip(channel: int, payload: bytes, pad: bool) -> None:
    """ChannelData decodes to what was encoded, padded or not (RFC 8656 §12.4)."""
    data = encode_channel_data(channel, payload, pad=pad)
    assert is_channel_data(data)
    assert len(data) == 4 + len(payload) + ((-len(payload) % 4) if pad else 0)
    assert decode_channel_data(data) == (channel, payload)


def test_channel_data_errors() -> None:
    """Bad channel numbers and short datagrams: StunError on decode, ValueError on encode."""
    with pytest.raises(StunError):
        decode_channel_data(b"\x40\x00\x00\x05abc")
    with pytest.raises(StunError):
        decode_channel_data(b"\x50\x00\x00\x00")
    with pytest.raises(StunError):
        decode_channel_data(b"\x40")
    with pytest.raises(ValueError, match="channel"):
        encode_channel_data(0x3FFF, b"")


@given(st.binary(max_size=64))
def test_channel_data_garbage_raises_only_stun_error(data: bytes) -> None:
    """Random bytes either decode as ChannelData or raise StunError."""
    try:
        channel, payload = decode_channel_data(data)
    except StunError:
        return
    assert 0x4000 <= channel <= 0x4FFF and len(payload) <= len(data) - 4


# --- layout decoders (a seen attribute layout is unpacked in one Struct call) ---------------

def _walk_outcome(data: bytes) -> Message | None:
    """What the attribute-by-attribute walk makes of ``data``: the message, or None if the
    bytes are not a well-formed STUN message."""
    try:
        return stun_module._decode_walk(data)
    except (StunError, ValueError, TypeError, IndexError, KeyError, struct.error):
        return None


def _decode_outcome(data: bytes) -> Message | None:
    try:
        return decode(data)
    except StunError:
        return None


ICE_REQUEST = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID, {
    Attr.USERNAME: "evtj:h6vY", Attr.PRIORITY: 1845494271,
    Attr.ICE_CONTROLLING: 0x932FF9B151263B36, Attr.USE_CANDIDATE: True,
}).encode(integrity_key=b"VOkJxbRl1RmTxUk/WvJxBt", fingerprint=True)


@given(messages(), st.one_of(st.none(), st.binary(max_size=40)), st.booleans())
@settings(max_examples=300, deadline=None)
def test_layout_decoder_matches_the_walk(message: Message, key: bytes | None, fp: bool) -> None:
    """Decoding the same bytes a second time (through the learned layout) gives exactly the
    message the walk gives: values, order, offsets."""
    data = message.encode(integrity_key=key, fingerprint=fp)
    expected = stun_module._decode_walk(data)
    first = decode(data)
    second = decode(data)
    assert first == second == expected
    assert list(second.attributes) == list(expected.attributes)


@given(st.sampled_from([ICE_REQUEST, SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE,
                        SAMPLE_LONG_TERM_REQUEST]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4))
@settings(max_examples=500, deadline=None)
def test_mutations_of_a_learned_layout_match_the_walk(base: bytes,
                                                      edits: list[tuple[int, int]]) -> None:
    """Once a layout is learned, mutated copies (same length, any byte changed, headers
    included) decode to what the walk says, or raise StunError where it fails."""
    decode(base)
    data = bytearray(base)
    for index, value in edits:
        data[index % len(data)] = value
    assert _decode_outcome(bytes(data)) == _walk_outcome(bytes(data))


def test_same_key_other_layout_falls_back_to_the_walk() -> None:
    """Two messages with equal length and first attribute but different later attributes both
    decode correctly, in either order."""
    one = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                  {Attr.USERNAME: "ab:cd", Attr.PRIORITY: 7}).encode(fingerprint=True)
    two = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                  {Attr.USERNAME: "ab:cd", Attr.LIFETIME: 9}).encode(fingerprint=True)
    assert len(one) == len(two) and one[:24] == two[:24]
    for data in (one, two, one, two, two, one):
        assert decode(data) == stun_module._decode_walk(data)
    assert decode(one).get(Attr.PRIORITY) == 7 and decode(two).get(Attr.LIFETIME) == 9


def test_learned_layout_still_checks_fingerprint_and_utf8() -> None:
    """A corrupted FINGERPRINT or bad UTF-8 in a learned layout raises StunError as the walk
    does."""
    decode(ICE_REQUEST)
    bad_crc = bytearray(ICE_REQUEST)
    bad_crc[-1] ^= 1
    with pytest.raises(StunError):
        decode(bytes(bad_crc))
    bad_text = bytearray(ICE_REQUEST)
    bad_text[24] = 0xFF  # first byte of USERNAME
    with pytest.raises(StunError):
        decode(bytes(bad_text))


def test_layout_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layouts are dropped when the table is full; with no room for more compiled decoders,
    decoding still works through the walk."""
    monkeypatch.setattr(stun_module, "_LAYOUTS", {})
    monkeypatch.setattr(stun_module, "_LAYOUT_CODE", {})
    monkeypatch.setattr(stun_module, "_LAYOUT_LIMIT", 4)
    monkeypatch.setattr(stun_module, "_LAYOUT_CODE_LIMIT", 1)
    for n in range(10):
        data = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                       {Attr.USERNAME: "u" * n, Attr.PRIORITY: n}).encode(fingerprint=True)
        assert decode(data).get(Attr.PRIORITY) == n
        assert len(stun_module._LAYOUTS) <= 4
    other = Message(Method.BINDING, MessageClass.REQUEST, VECTOR_TID,
                    {Attr.PRIORITY: 3, Attr.USERNAME: "x"}).encode(fingerprint=True)
    assert decode(other) == decode(other) == stun_module._decode_walk(other)
    assert len(stun_module._LAYOUT_CODE) == 1
