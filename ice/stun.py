"""STUN message codec (RFC 8489, interoperable with RFC 5389 peers), plus TURN ChannelData framing.

The codec is on the hot path of every connectivity check and of every relayed media packet, so it
works on the wire bytes directly with precompiled :class:`struct.Struct` objects: one pass and one
join to encode, one pass to decode, and no per-attribute objects beyond the decoded values. A
message whose attribute layout (types, lengths, order) was seen before is decoded by a function
specialised to that layout: one ``unpack_from`` for every header and value, then the checks.

Decoding is total: any input that is not a well-formed STUN message raises :class:`StunError` and
nothing else, so a caller can treat every exception type other than that one as a bug.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType, FunctionType
from typing import Any

__all__ = [
    "FINGERPRINT_XOR",
    "MAGIC_COOKIE",
    "Address",
    "Attr",
    "Message",
    "MessageClass",
    "Method",
    "StunError",
    "decode",
    "decode_channel_data",
    "encode_channel_data",
    "is_channel_data",
    "is_stun",
    "long_term_key",
    "make_error",
    "make_response",
    "message_type",
    "new_transaction_id",
    "short_term_key",
    "verify_integrity",
]

Address = tuple[str, int]
"""(ip literal, port); IPv6 without brackets."""

MAGIC_COOKIE = 0x2112A442  # RFC 8489 §5
FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_PORT_XOR = MAGIC_COOKIE >> 16


class StunError(Exception):
    """The input is not a well-formed STUN (or ChannelData) message: the peer's fault."""


class Method(enum.IntEnum):
    """STUN methods used by ICE (RFC 8445) and TURN (RFC 8656 §18)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class MessageClass(enum.IntEnum):
    """The two class bits C1 C0 of the message type (RFC 8489 §5)."""

    REQUEST = 0
    INDICATION = 1
    SUCCESS = 2
    ERROR = 3


class Attr(enum.IntEnum):
    """Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 8445 §16.1)."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


_KNOWN_ATTRS = frozenset(int(a) for a in Attr)
_MI = int(Attr.MESSAGE_INTEGRITY)
_MI256 = int(Attr.MESSAGE_INTEGRITY_SHA256)
_FP = int(Attr.FINGERPRINT)
_DATA = int(Attr.DATA)
_COMPUTED = frozenset((_MI, _MI256, _FP))

# Precompiled layouts.
_HEADER = struct.Struct("!HHI12s")  # type, length, cookie, transaction id
_HEADER3 = struct.Struct("!HHI")
_TLV_HEAD = struct.Struct("!HH")
_TLV_U32 = struct.Struct("!HHI")
_TLV_U64 = struct.Struct("!HHQ")
_TLV_ADDR4 = struct.Struct("!HHBBHI")  # type, len, reserved, family, port, address
_TLV_ADDR6 = struct.Struct("!HHBBH16s")
_TLV_ERROR = struct.Struct("!HHHBB")
_TLV_CHANNEL = struct.Struct("!HHHH")
_TLV_BYTE = struct.Struct("!HHB3x")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_ADDR_HEAD = struct.Struct("!xBH")  # reserved, family, port
_ERROR_HEAD = struct.Struct("!2xBB")
_CHANNEL_HEAD = struct.Struct("!HH")
_PADDING = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")  # indexed by len % 4
_MI_HEAD = _TLV_HEAD.pack(_MI, 20)
_FLAG_TLV: dict[int, bytes] = {
    int(t): _TLV_HEAD.pack(t, 0) for t in (Attr.USE_CANDIDATE, Attr.DONT_FRAGMENT)
}


# --- HMAC-SHA1 with the key schedule kept per key --------------------------------------------

_SHA1_PADS: dict[bytes, tuple[Any, Any]] = {}
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _sha1_pads(key: bytes) -> tuple[Any, Any]:
    """The SHA-1 states after absorbing key ^ ipad and key ^ opad (RFC 2104), cached."""
    block = hashlib.sha1(key).digest() if len(key) > 64 else bytes(key)
    block = block.ljust(64, b"\0")
    pads = (hashlib.sha1(block.translate(_IPAD)), hashlib.sha1(block.translate(_OPAD)))
    if len(_SHA1_PADS) >= 256:
        _SHA1_PADS.clear()
    _SHA1_PADS[bytes(key)] = pads
    return pads


def _hmac_sha1(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA1 (RFC 2104) reusing the hashed inner and outer pads of ``key``.

    A session signs and checks every message with one or two keys; keeping the two pad states
    and copying them halves the cost of a one-shot ``hmac.digest`` on short messages.
    """
    pads = _SHA1_PADS.get(key) or _sha1_pads(key)
    inner = pads[0].copy()
    inner.update(msg)
    outer = pads[1].copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


# --- message type: method and class bits are interleaved (RFC 8489 §5) ------------------------

def message_type(method: int, cls: int) -> int:
    """The 14-bit message type: M11..M7 C1 M6..M4 C0 M3..M0."""
    return ((method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
            | ((cls & 1) << 4) | ((cls & 2) << 7))


_CLASSES = tuple(MessageClass)
_METHODS: dict[int, int] = {int(m): m for m in Method}
_TYPE_TO_PAIR: dict[int, tuple[int, MessageClass]] = {
    message_type(m, c): (m, c) for m in Method for c in MessageClass
}
_PAIR_TO_TYPE: dict[tuple[int, int], int] = {
    (int(m), int(c)): message_type(m, c) for m in Method for c in MessageClass
}


def _split_type(mtype: int) -> tuple[int, MessageClass]:
    method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
    cls = ((mtype >> 4) & 1) | ((mtype >> 7) & 2)
    return _METHODS.get(method, method), _CLASSES[cls]


# --- addresses --------------------------------------------------------------------------------

_IP_CACHE: dict[str, tuple[int, int]] = {}  # ip literal -> (family 1|2, address as int)
_V4_CACHE: dict[int, str] = {}
_V6_CACHE: dict[int, str] = {}
_CACHE_LIMIT = 4096


def _parse_ip(ip: str) -> tuple[int, int]:
    """(STUN family, address as an integer) for an IP literal; ValueError if it is not one."""
    hit = _IP_CACHE.get(ip)
    if hit is not None:
        return hit
    text = ip.split("%", 1)[0]  # a scope id does not travel on the wire
    parsed = ipaddress.ip_address(text)
    result = (1 if parsed.version == 4 else 2, int(parsed))
    if len(_IP_CACHE) < _CACHE_LIMIT:
        _IP_CACHE[ip] = result
    return result


def _v4_text(value: int) -> str:
    text = _V4_CACHE.get(value)
    if text is None:
        text = f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
        if len(_V4_CACHE) < _CACHE_LIMIT:
            _V4_CACHE[value] = text
    return text


def _v6_text(value: int) -> str:
    text = _V6_CACHE.get(value)
    if text is None:
        text = str(ipaddress.IPv6Address(value))
        if len(_V6_CACHE) < _CACHE_LIMIT:
            _V6_CACHE[value] = text
    return text


def _enc_address(atype: int, value: Address, tid: bytes) -> bytes:
    """MAPPED-ADDRESS / ALTERNATE-SERVER (RFC 8489 §14.1)."""
    ip, port = value
    family, addr = _parse_ip(ip)
    if family == 1:
        return _TLV_ADDR4.pack(atype, 8, 0, 1, port, addr)
    return _TLV_ADDR6.pack(atype, 20, 0, 2, port, addr.to_bytes(16, "big"))


def _enc_xor_address(atype: int, value: Address, tid: bytes) -> bytes:
    """XOR-*-ADDRESS (RFC 8489 §14.2): port ^ cookie>>16, IPv4 ^ cookie, IPv6 ^ (cookie|tid)."""
    ip, port = value
    family, addr = _parse_ip(ip)
    if family == 1:
        return _TLV_ADDR4.pack(atype, 8, 0, 1, port ^ _PORT_XOR, addr ^ MAGIC_COOKIE)
    mask = int.from_bytes(_COOKIE_BYTES + tid, "big")
    return _TLV_ADDR6.pack(atype, 20, 0, 2, port ^ _PORT_XOR, (addr ^ mask).to_bytes(16, "big"))


def _dec_address(data: bytes, start: int, length: int, tid: bytes) -> Address:
    family, port = _ADDR_HEAD.unpack_from(data, start)
    if length == 8 and family == 1:
        return _v4_text(_U32.unpack_from(data, start + 4)[0]), port
    if length == 20 and family == 2:
        return _v6_text(int.from_bytes(data[start + 4:start + 20], "big")), port
    raise StunError(f"bad address family {family} or length {length}")


def _dec_xor_address(data: bytes, start: int, length: int, tid: bytes) -> Address:
    family, port = _ADDR_HEAD.unpack_from(data, start)
    if length == 8 and family == 1:
        return _v4_text(_U32.unpack_from(data, start + 4)[0] ^ MAGIC_COOKIE), port ^ _PORT_XOR
    if length == 20 and family == 2:
        mask = int.from_bytes(_COOKIE_BYTES + tid, "big")
        value = int.from_bytes(data[start + 4:start + 20], "big") ^ mask
        return _v6_text(value), port ^ _PORT_XOR
    raise StunError(f"bad address family {family} or length {length}")


# --- other attribute values -------------------------------------------------------------------

def _enc_text(atype: int, value: str | bytes, tid: bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    n = len(raw)
    return _TLV_HEAD.pack(atype, n) + raw + _PADDING[n & 3]


def _dec_text(data: bytes, start: int, length: int, tid: bytes) -> str:
    return data[start:start + length].decode("utf-8")


def _enc_u32(atype: int, value: int, tid: bytes) -> bytes:
    return _TLV_U32.pack(atype, 4, value)


def _dec_u32(data: bytes, start: int, length: int, tid: bytes) -> int:
    if length != 4:
        raise StunError(f"attribute length {length}, expected 4")
    value: int = _U32.unpack_from(data, start)[0]
    return value


def _enc_u64(atype: int, value: int, tid: bytes) -> bytes:
    return _TLV_U64.pack(atype, 8, value)


def _dec_u64(data: bytes, start: int, length: int, tid: bytes) -> int:
    if length != 8:
        raise StunError(f"attribute length {length}, expected 8")
    value: int = _U64.unpack_from(data, start)[0]
    return value


def _enc_flag(atype: int, value: object, tid: bytes) -> bytes:
    return _FLAG_TLV[atype]


def _dec_flag(data: bytes, start: int, length: int, tid: bytes) -> bool:
    if length != 0:
        raise StunError(f"flag attribute with length {length}")
    return True


def _enc_channel(atype: int, value: int, tid: bytes) -> bytes:
    """CHANNEL-NUMBER: 16-bit number then 16 bits RFFU (RFC 8656 §18.1)."""
    return _TLV_CHANNEL.pack(atype, 4, value, 0)


def _dec_channel(data: bytes, start: int, length: int, tid: bytes) -> int:
    if length != 4:
        raise StunError(f"CHANNEL-NUMBER length {length}")
    value: int = _U16.unpack_from(data, start)[0]
    return value


def _enc_transport(atype: int, value: int, tid: bytes) -> bytes:
    """REQUESTED-TRANSPORT: protocol number then 24 bits RFFU (RFC 8656 §18.11)."""
    return _TLV_BYTE.pack(atype, 4, value)


def _dec_transport(data: bytes, start: int, length: int, tid: bytes) -> int:
    if length != 4:
        raise StunError(f"REQUESTED-TRANSPORT length {length}")
    return data[start]


def _enc_even_port(atype: int, value: bool, tid: bytes) -> bytes:
    """EVEN-PORT: one byte whose top bit R asks to reserve the next port (RFC 8656 §18.7)."""
    return _TLV_BYTE.pack(atype, 1, 0x80 if value else 0)


def _dec_even_port(data: bytes, start: int, length: int, tid: bytes) -> bool:
    if length != 1:
        raise StunError(f"EVEN-PORT length {length}")
    return bool(data[start] & 0x80)


def _enc_error(atype: int, value: tuple[int, str], tid: bytes) -> bytes:
    """ERROR-CODE: class (hundreds) and number, then a UTF-8 reason (RFC 8489 §14.8)."""
    code, reason = value
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} outside 300-699")
    raw = reason.encode("utf-8")
    n = 4 + len(raw)
    return _TLV_ERROR.pack(atype, n, 0, code // 100, code % 100) + raw + _PADDING[n & 3]


def _dec_error(data: bytes, start: int, length: int, tid: bytes) -> tuple[int, str]:
    if length < 4:
        raise StunError(f"ERROR-CODE length {length}")
    klass, number = _ERROR_HEAD.unpack_from(data, start)
    klass &= 7
    if not 3 <= klass <= 6 or number > 99:
        raise StunError(f"bad error code class {klass} number {number}")
    return klass * 100 + number, data[start + 4:start + length].decode("utf-8")


def _enc_unknown(atype: int, value: tuple[int, ...], tid: bytes) -> bytes:
    n = 2 * len(value)
    return (_TLV_HEAD.pack(atype, n) + struct.pack(f"!{len(value)}H", *value)
            + _PADDING[n & 3])


def _dec_unknown(data: bytes, start: int, length: int, tid: bytes) -> tuple[int, ...]:
    if length & 1:
        raise StunError("UNKNOWN-ATTRIBUTES of odd length")
    return struct.unpack_from(f"!{length // 2}H", data, start)


def _enc_bytes(atype: int, value: bytes, tid: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"attribute 0x{atype:04x} needs bytes, got {type(value).__name__}")
    raw = bytes(value)
    n = len(raw)
    return _TLV_HEAD.pack(atype, n) + raw + _PADDING[n & 3]


def _dec_bytes(data: bytes, start: int, length: int, tid: bytes) -> bytes:
    return data[start:start + length]


def _fixed_bytes(size: int) -> Callable[[bytes, int, int, bytes], bytes]:
    def decode_fixed(data: bytes, start: int, length: int, tid: bytes) -> bytes:
        if length != size:
            raise StunError(f"attribute length {length}, expected {size}")
        return data[start:start + length]
    return decode_fixed


def _dec_mi256(data: bytes, start: int, length: int, tid: bytes) -> bytes:
    # RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4.
    if length < 16 or length > 32 or length & 3:
        raise StunError(f"MESSAGE-INTEGRITY-SHA256 length {length}")
    return data[start:start + length]


_Encoder = Callable[[int, Any, bytes], bytes]
_Decoder = Callable[[bytes, int, int, bytes], Any]

_CODECS: dict[int, tuple[_Encoder, _Decoder]] = {
    Attr.MAPPED_ADDRESS: (_enc_address, _dec_address),
    Attr.ALTERNATE_SERVER: (_enc_address, _dec_address),
    Attr.XOR_MAPPED_ADDRESS: (_enc_xor_address, _dec_xor_address),
    Attr.XOR_PEER_ADDRESS: (_enc_xor_address, _dec_xor_address),
    Attr.XOR_RELAYED_ADDRESS: (_enc_xor_address, _dec_xor_address),
    Attr.USERNAME: (_enc_text, _dec_text),
    Attr.REALM: (_enc_text, _dec_text),
    Attr.NONCE: (_enc_text, _dec_text),
    Attr.SOFTWARE: (_enc_text, _dec_text),
    Attr.ALTERNATE_DOMAIN: (_enc_text, _dec_text),
    Attr.PRIORITY: (_enc_u32, _dec_u32),
    Attr.LIFETIME: (_enc_u32, _dec_u32),
    Attr.ICE_CONTROLLED: (_enc_u64, _dec_u64),
    Attr.ICE_CONTROLLING: (_enc_u64, _dec_u64),
    Attr.USE_CANDIDATE: (_enc_flag, _dec_flag),
    Attr.DONT_FRAGMENT: (_enc_flag, _dec_flag),
    Attr.CHANNEL_NUMBER: (_enc_channel, _dec_channel),
    Attr.REQUESTED_TRANSPORT: (_enc_transport, _dec_transport),
    Attr.EVEN_PORT: (_enc_even_port, _dec_even_port),
    Attr.ERROR_CODE: (_enc_error, _dec_error),
    Attr.UNKNOWN_ATTRIBUTES: (_enc_unknown, _dec_unknown),
    Attr.DATA: (_enc_bytes, _dec_bytes),
    Attr.PASSWORD_ALGORITHMS: (_enc_bytes, _dec_bytes),
    Attr.RESERVATION_TOKEN: (_enc_bytes, _fixed_bytes(8)),
    Attr.USERHASH: (_enc_bytes, _fixed_bytes(32)),
    Attr.MESSAGE_INTEGRITY: (_enc_bytes, _fixed_bytes(20)),
    Attr.MESSAGE_INTEGRITY_SHA256: (_enc_bytes, _dec_mi256),
    Attr.FINGERPRINT: (_enc_bytes, _fixed_bytes(4)),
}
# How the decoder's hot loop treats each type; _K_CALL goes through _DECODERS.
_K_OPAQUE, _K_TEXT, _K_U32, _K_U64, _K_FLAG, _K_CALL, _K_SPECIAL = range(7)
_KINDS: dict[int, int] = {int(t): _K_CALL for t in _CODECS}
_KINDS.update({int(t): _K_TEXT for t in (Attr.USERNAME, Attr.REALM, Attr.NONCE, Attr.SOFTWARE,
                                         Attr.ALTERNATE_DOMAIN)})
_KINDS.update({int(t): _K_U32 for t in (Attr.PRIORITY, Attr.LIFETIME)})
_KINDS.update({int(t): _K_U64 for t in (Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING)})
_KINDS.update({int(t): _K_FLAG for t in (Attr.USE_CANDIDATE, Attr.DONT_FRAGMENT)})
_KINDS.update({int(t): _K_OPAQUE for t in (Attr.DATA, Attr.PASSWORD_ALGORITHMS)})
_KINDS.update({int(t): _K_SPECIAL for t in _COMPUTED})
_TAIL_MI_FP = struct.Struct("!HH20sHHI")
# Plain-int keys: dict lookups with an int hash a little faster than with enum members.
_ENCODERS: dict[int, _Encoder] = {int(k): v[0] for k, v in _CODECS.items()}
_DECODERS: dict[int, _Decoder] = {int(k): v[1] for k, v in _CODECS.items()}


# --- the message ------------------------------------------------------------------------------

@dataclass(slots=True)
class Message:
    """A STUN message; ``attributes`` keeps wire order and the first of repeated attributes.

    Decoded value types: addresses -> :data:`Address` (XOR ones un-XORed); USERNAME, REALM,
    NONCE, SOFTWARE, ALTERNATE-DOMAIN -> str; PRIORITY, LIFETIME, CHANNEL-NUMBER,
    REQUESTED-TRANSPORT, ICE-CONTROLLING/CONTROLLED -> int; USE-CANDIDATE, DONT-FRAGMENT -> True;
    EVEN-PORT -> bool (R bit); ERROR-CODE -> (code, reason); UNKNOWN-ATTRIBUTES -> tuple of int;
    DATA, RESERVATION-TOKEN, USERHASH, PASSWORD-ALGORITHMS, MESSAGE-INTEGRITY*, FINGERPRINT and
    unknown attributes -> bytes.
    """

    method: int
    cls: MessageClass
    transaction_id: bytes
    attributes: dict[int, Any] = field(default_factory=dict)
    raw: bytes = b""
    #: Offset in ``raw`` of the MESSAGE-INTEGRITY attribute header, -1 if absent (set by decode).
    integrity_offset: int = -1
    #: Offset in ``raw`` of the MESSAGE-INTEGRITY-SHA256 attribute header, -1 if absent.
    integrity_sha256_offset: int = -1

    def encode(self, *, integrity_key: bytes | None = None, fingerprint: bool = False,
               integrity_sha256_key: bytes | None = None) -> bytes:
        """Serialize; appends MESSAGE-INTEGRITY (HMAC-SHA1 with integrity_key), then
        MESSAGE-INTEGRITY-SHA256 if asked, then FINGERPRINT, last and in that order
        (RFC 8489 §14.5-§14.7). Those three are never taken from ``attributes``.

        Raises ValueError or TypeError for values that cannot be encoded: the caller's fault.
        """
        tid = self.transaction_id
        if len(tid) != 12:
            raise ValueError("transaction id must be 12 bytes")
        mtype = _PAIR_TO_TYPE.get((self.method, self.cls))
        if mtype is None:
            if not 0 <= self.method <= 0xFFF:
                raise ValueError(f"method {self.method} outside 12 bits")
            mtype = message_type(self.method, self.cls)
        encoders = _ENCODERS
        parts = []
        try:
            for atype, value in self.attributes.items():
                encoder = encoders.get(atype)
                if encoder is None:
                    parts.append(_enc_bytes(atype, value, tid))
                elif atype not in _COMPUTED:
                    parts.append(encoder(atype, value, tid))
        except struct.error as exc:  # an out-of-range number: the caller's fault
            raise ValueError(f"cannot encode attribute 0x{atype:04x}: {exc}") from exc
        body = b"".join(parts)
        if len(body) > 0xFFFF - 72:
            raise ValueError("STUN message too long")
        if integrity_key is not None:
            # RFC 8489 §14.5: the length covers up to the end of MESSAGE-INTEGRITY itself.
            head = _HEADER.pack(mtype, len(body) + 24, MAGIC_COOKIE, tid)
            body += _MI_HEAD + _hmac_sha1(integrity_key, head + body)
        if integrity_sha256_key is not None:
            head = _HEADER.pack(mtype, len(body) + 36, MAGIC_COOKIE, tid)
            mac = hmac.digest(integrity_sha256_key, head + body, "sha256")
            body += _TLV_HEAD.pack(_MI256, 32) + mac
        if fingerprint:
            # RFC 8489 §14.7: CRC-32 of everything before the attribute, length included.
            msg = _HEADER.pack(mtype, len(body) + 8, MAGIC_COOKIE, tid) + body
            return msg + _TLV_U32.pack(_FP, 4, zlib.crc32(msg) ^ FINGERPRINT_XOR)
        return _HEADER.pack(mtype, len(body), MAGIC_COOKIE, tid) + body

    def get(self, attr: int, default: Any = None) -> Any:
        """The decoded value of ``attr``, or ``default``."""
        return self.attributes.get(attr, default)

    def unknown_comprehension_required(self) -> list[int]:
        """Attributes in 0x0000-0x7FFF this codec does not know: answer 420 (RFC 8489 §6.3.1)."""
        return [a for a in self.attributes if a < 0x8000 and a not in _KNOWN_ATTRS]


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse one STUN message and check its FINGERPRINT if it has one.

    Attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are
    ignored (RFC 8489 §14.5, §14.6); FINGERPRINT must be last. Raises only :class:`StunError`.
    """
    # Connectivity checks between two agents repeat one attribute layout (same USERNAME
    # length, same attribute order), so a message whose layout was seen before is unpacked by
    # one precompiled Struct; any other message takes the attribute-by-attribute walk.
    try:
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size >= 24:
            mtype, length, cookie, tid, first = _HEAD_FIRST.unpack_from(data)
            if not (mtype & 0xC000 or cookie != MAGIC_COOKIE or length + 20 != size or length & 3):
                key = (mtype << 16 | length) << 32 | first
                layout = _LAYOUTS.get(key)
                if layout is not None:
                    message = layout(data, tid)
                    if message is not None:
                        return message
                message = _decode_walk(data)
                if len(_LAYOUTS) >= _LAYOUT_LIMIT:
                    _LAYOUTS.clear()
                learned = _learn_layout(data)
                if learned is not None:
                    _LAYOUTS[key] = learned
                return message
        return _decode_walk(data)
    except StunError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, struct.error) as exc:
        raise StunError(f"malformed STUN message: {exc}") from exc


_LayoutDecoder = Callable[[bytes, bytes], "Message | None"]
_HEAD_FIRST = struct.Struct("!HHI12sI")  # the header, then the first attribute's type and length
# (type << 48 | length << 32 | first attribute header) -> decoder; cleared when full.
_LAYOUTS: dict[int, _LayoutDecoder] = {}
_LAYOUT_LIMIT = 256
# Attribute kinds in a layout signature: the decoder kinds plus the two trailing attributes.
_K_MI, _K_FP = 7, 8
# Compiled layout decoders per signature (the sequence of kinds), never evicted: compiling is
# the one costly step (about 100 us), so it happens at most this many times per process and a
# peer varying its messages cannot make it happen more often.
_LAYOUT_CODE: dict[tuple[int, ...], CodeType] = {}
_LAYOUT_CODE_LIMIT = 64
_LAYOUT_GLOBALS: dict[str, Any] = {"Message": Message, "StunError": StunError, "crc32": zlib.crc32}


def _layout_code(signature: tuple[int, ...]) -> CodeType | None:
    """The code of a decoder for messages whose attributes have the kinds in ``signature``.

    Generated as source because a dict display is much cheaper than building the dict from the
    unpacked tuple. The source depends only on the kinds; every number (header words, types,
    offsets) arrives as a default argument, so one compilation serves every length.
    """
    code = _LAYOUT_CODE.get(signature)
    if code is not None or len(_LAYOUT_CODE) >= _LAYOUT_CODE_LIMIT:
        return code
    params = ["data", "tid", "unpack", "method", "cls", "mi_at", "fp_at"]
    fields: list[str] = []
    checks: list[str] = []
    items: list[str] = []
    crc = ""
    for i, kind in enumerate(signature):
        params += [f"H{i}", f"K{i}"]
        fields.append(f"h{i}")
        checks.append(f"h{i} != H{i}")
        if kind == _K_FLAG:
            item = "True"
        elif kind == _K_CALL:
            params += [f"D{i}", f"S{i}", f"L{i}"]
            item = f"D{i}(data, S{i}, L{i}, tid)"
        else:
            fields.append(f"v{i}")
            item = f"v{i}.decode()" if kind == _K_TEXT else f"v{i}"
            if kind == _K_FP:
                crc = f"v{i}"
                item = "data[fp_at + 4:]"
        items.append(f"K{i}: {item}")
    lines = [
        f"def decode_layout({', '.join(params)}):",
        f"    {', '.join(fields)}, = unpack(data, 20)",
        f"    if {' or '.join(checks)}:",
        "        return None",
        f"    attributes = {{{', '.join(items)}}}",
    ]
    if crc:
        lines += [f"    if crc32(data[:fp_at]) ^ {FINGERPRINT_XOR} != {crc}:",
                  "        raise StunError('FINGERPRINT mismatch')"]
    lines.append("    return Message(method, cls, tid, attributes, data, mi_at)")
    namespace: dict[str, Any] = {}
    # Only the fixed pieces above go into the source: names, never values from the wire.
    exec("\n".join(lines), namespace)
    compiled: CodeType = namespace["decode_layout"].__code__
    _LAYOUT_CODE[signature] = compiled
    return compiled


def _learn_layout(data: bytes) -> _LayoutDecoder | None:
    """A decoder specialised to the attribute layout of ``data``, which the walk accepted.

    The decoder unpacks every attribute header and value with one precompiled Struct, returns
    None unless each header is the one learned here (then the walk would see other
    attributes), and otherwise returns exactly what :func:`_decode_walk` would.

    Messages with a repeated attribute, MESSAGE-INTEGRITY-SHA256, attributes after
    MESSAGE-INTEGRITY other than FINGERPRINT, or a DATA attribute (whose length follows the
    payload, so the layout would rarely repeat) keep the walk.
    """
    size = len(data)
    pos = 20
    fmt = ["!"]
    signature: list[int] = []
    constants: list[Any] = []
    seen: set[int] = set()
    integrity_at = fingerprint_at = -1
    while pos < size:
        atype, alen = _TLV_HEAD.unpack_from(data, pos)
        start = pos + 4
        pad = -alen & 3
        if atype in seen or atype == _DATA or fingerprint_at >= 0:
            return None
        if integrity_at >= 0 and atype != _FP:
            return None
        seen.add(atype)
        kind = _KINDS.get(atype, _K_OPAQUE)
        constants += (atype << 16 | alen, atype)
        if kind == _K_SPECIAL:
            if atype == _MI and alen == 20:
                integrity_at = pos
                kind, value = _K_MI, "20s"
            elif atype == _FP and alen == 4:
                fingerprint_at = pos
                kind, value = _K_FP, "I"
            else:
                return None
        elif kind == _K_U32:
            value = "I"
        elif kind == _K_U64:
            value = "Q"
        elif kind == _K_FLAG:
            value = ""
        elif kind == _K_CALL:
            value = f"{alen}x"
            constants += (_DECODERS[atype], start, alen)
        else:
            value = f"{alen}s"
        signature.append(kind)
        fmt.append(f"I{value}{pad}x" if pad else f"I{value}")
        pos = start + alen + pad
    if pos != size or not signature:
        return None
    code = _layout_code(tuple(signature))
    if code is None:
        return None
    mtype = _U16.unpack_from(data)[0]
    method, cls = _TYPE_TO_PAIR.get(mtype) or _split_type(mtype)
    defaults = (struct.Struct("".join(fmt)).unpack_from, method, cls, integrity_at,
                fingerprint_at, *constants)
    decoder: _LayoutDecoder = FunctionType(code, _LAYOUT_GLOBALS, "decode_layout", defaults)
    return decoder


def _decode_walk(data: bytes) -> Message:
    """Decode attribute by attribute; raises StunError or, for garbage, struct.error & co."""
    # One function on purpose: a Python call per attribute is a measurable part of the cost,
    # so the common value types are decoded inline.
    size = len(data)
    if size < 20:
        raise StunError("shorter than a STUN header")
    mtype, length, cookie = _HEADER3.unpack_from(data)
    if mtype & 0xC000 or cookie != MAGIC_COOKIE or length + 20 != size or length & 3:
        raise StunError(_header_problem(mtype, length, cookie, size))
    tid = data[8:20]
    attributes: dict[int, Any] = {}
    kinds = _KINDS
    unpack_head = _TLV_HEAD.unpack_from
    pos = 20
    # An attribute that overruns the message is caught once after the loop (a value read
    # past the end raises struct.error first).
    while pos < size:
        atype, alen = unpack_head(data, pos)
        kind = kinds.get(atype, _K_OPAQUE)
        if kind == _K_SPECIAL:
            break
        start = pos + 4
        pos = start + ((alen + 3) & -4)
        if kind == _K_TEXT:
            value: Any = data[start:start + alen].decode()
        elif kind == _K_U32:
            if alen != 4:
                raise StunError(f"attribute 0x{atype:04x} of length {alen}, expected 4")
            value = _U32.unpack_from(data, start)[0]
        elif kind == _K_OPAQUE:
            value = data[start:start + alen]
        elif kind == _K_U64:
            if alen != 8:
                raise StunError(f"attribute 0x{atype:04x} of length {alen}, expected 8")
            value = _U64.unpack_from(data, start)[0]
        elif kind == _K_FLAG:
            if alen:
                raise StunError(f"flag attribute 0x{atype:04x} of length {alen}")
            value = True
        else:
            value = _DECODERS[atype](data, start, alen, tid)
        if atype not in attributes:
            attributes[atype] = value
    else:
        if pos != size:
            raise StunError("last attribute overruns the message")
        pair = _TYPE_TO_PAIR.get(mtype) or _split_type(mtype)
        return Message(pair[0], pair[1], tid, attributes, data)
    pair = _TYPE_TO_PAIR.get(mtype) or _split_type(mtype)
    if size - pos == 32:
        # Fast path for the usual ending: MESSAGE-INTEGRITY then FINGERPRINT.
        mi_type, mi_len, mac, fp_type, fp_len, crc = _TAIL_MI_FP.unpack_from(data, pos)
        if mi_type == _MI and mi_len == 20 and fp_type == _FP and fp_len == 4:
            if zlib.crc32(data[:pos + 24]) ^ FINGERPRINT_XOR != crc:
                raise StunError("FINGERPRINT mismatch")
            attributes[_MI] = mac
            attributes[_FP] = data[pos + 28:]
            return Message(pair[0], pair[1], tid, attributes, data, pos)
    integrity_at, sha256_at = _decode_tail(data, pos, attributes)
    return Message(pair[0], pair[1], tid, attributes, data, integrity_at, sha256_at)


def _header_problem(mtype: int, length: int, cookie: int, size: int) -> str:
    if mtype & 0xC000:
        return "the two top bits of a STUN message are not zero"
    if cookie != MAGIC_COOKIE:
        return "bad magic cookie"
    if length + 20 != size:
        return f"length field {length} does not match {size - 20} bytes of attributes"
    return "length not a multiple of 4"


def _decode_tail(data: bytes, pos: int, attributes: dict[int, Any]) -> tuple[int, int]:
    """MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256, FINGERPRINT and whatever follows them.

    RFC 8489 §14.5, §14.6: attributes after MESSAGE-INTEGRITY other than
    MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and after MESSAGE-INTEGRITY-SHA256 other than
    FINGERPRINT, are ignored; §14.7: FINGERPRINT is the last attribute.
    """
    size = len(data)
    integrity_at = sha256_at = -1
    while pos < size:
        atype, alen = _TLV_HEAD.unpack_from(data, pos)
        start = pos + 4
        following = start + ((alen + 3) & -4)
        if following > size:
            raise StunError(f"attribute 0x{atype:04x} overruns the message")
        if atype == _FP:
            if alen != 4 or following != size:
                raise StunError("FINGERPRINT not last or of wrong length")
            if zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR != _U32.unpack_from(data, start)[0]:
                raise StunError("FINGERPRINT mismatch")
            attributes[_FP] = data[start:following]
        elif atype == _MI and integrity_at < 0 and sha256_at < 0:
            if alen != 20:
                raise StunError(f"MESSAGE-INTEGRITY length {alen}")
            attributes[_MI] = data[start:following]
            integrity_at = pos
        elif atype == _MI256 and sha256_at < 0:
            attributes[_MI256] = _dec_mi256(data, start, alen, b"")
            sha256_at = pos
        pos = following
    return integrity_at, sha256_at


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test: first byte 0..3 (RFC 7983), 20 bytes, magic cookie."""
    return len(data) >= 20 and data[0] < 4 and data[4:8] == _COOKIE_BYTES


def verify_integrity(message: Message, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, over ``message.raw``.

    The length field is rewritten to end at the checked attribute, as the sender computed it
    (RFC 8489 §14.5, §14.6). A message without either attribute fails.
    """
    raw = message.raw
    pos = message.integrity_sha256_offset
    if pos >= 0:
        size = _U16.unpack_from(raw, pos + 2)[0]
        head = raw[:2] + _U16.pack(pos - 16 + size) + raw[4:pos]
        mac = hmac.digest(key, head, "sha256")[:size]
        return hmac.compare_digest(mac, raw[pos + 4:pos + 4 + size])
    pos = message.integrity_offset
    if pos < 0:
        return False
    # _hmac_sha1 inlined: this runs for every request and response on the hot path.
    pads = _SHA1_PADS.get(key) or _sha1_pads(key)
    inner = pads[0].copy()
    inner.update(raw[:2] + (pos + 4).to_bytes(2, "big") + raw[4:pos])
    outer = pads[1].copy()
    outer.update(inner.digest())
    return hmac.compare_digest(outer.digest(), raw[pos + 4:pos + 24])


def short_term_key(password: str) -> bytes:
    """Short-term credential key: the password itself (RFC 8489 §9.1.1; OpaqueString as UTF-8)."""
    return password.encode("utf-8")


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Long-term credential key MD5(username ":" realm ":" password) (RFC 8489 §9.2.2)."""
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(text, usedforsecurity=False).digest()


def new_transaction_id(rng: random.Random) -> bytes:
    """96 random bits from ``rng`` (RFC 8489 §5: uniformly random transaction ids)."""
    return rng.getrandbits(96).to_bytes(12, "big")


def make_response(request: Message, cls: MessageClass,
                  attributes: dict[int, Any] | None = None) -> Message:
    """A response to ``request``: same method and transaction id (RFC 8489 §6.3)."""
    return Message(request.method, cls, request.transaction_id, dict(attributes or {}))


def make_error(request: Message, code: int, reason: str,
               extra: dict[int, Any] | None = None) -> Message:
    """An error response carrying ERROR-CODE first, then ``extra`` (RFC 8489 §6.3.4)."""
    attributes: dict[int, Any] = {Attr.ERROR_CODE: (code, reason)}
    if extra:
        attributes.update(extra)
    return Message(request.method, MessageClass.ERROR, request.transaction_id, attributes)


# --- TURN ChannelData (RFC 8656 §12.4) --------------------------------------------------------

def is_channel_data(data: bytes) -> bool:
    """First byte 64..79 (RFC 7983) and at least a 4-byte header."""
    return len(data) >= 4 and 64 <= data[0] <= 79


def encode_channel_data(channel: int, data: bytes, *, pad: bool = False) -> bytes:
    """A ChannelData message; padding to 4 bytes is only required over stream transports."""
    if not 0x4000 <= channel <= 0x4FFF:
        raise ValueError(f"channel number 0x{channel:04x} outside 0x4000-0x4FFF")
    if len(data) > 0xFFFF:
        raise ValueError("ChannelData payload longer than 65535 bytes")
    out = _CHANNEL_HEAD.pack(channel, len(data)) + data
    return out + _PADDING[len(data) & 3] if pad else out


def decode_channel_data(data: bytes) -> tuple[int, bytes]:
    """(channel, payload) of a ChannelData message; trailing padding is accepted.

    Raises StunError when the channel is outside 0x4000-0x4FFF or the datagram is shorter than
    the claimed length (RFC 8656 §12.5: such messages are discarded).
    """
    if len(data) < 4:
        raise StunError("ChannelData shorter than its header")
    channel, length = _CHANNEL_HEAD.unpack_from(data)
    if not 0x4000 <= channel <= 0x4FFF:
        raise StunError(f"channel number 0x{channel:04x} outside 0x4000-0x4FFF")
    if 4 + length > len(data):
        raise StunError("ChannelData shorter than its length field")
    return channel, bytes(data[4:4 + length])
