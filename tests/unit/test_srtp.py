"""SRTP (media.srtp) and the SDES a=crypto attribute (sipua.sdp), RFC 3711 and RFC 4568.

The known-answer tests check the library against an independent reference written here from
RFC 3711: the AES counter-mode keystream (checked on the vectors of Appendix B.2), the key
derivation (Appendix B.3) and the packet layout of §3.1 (encrypted payload, then the HMAC-SHA1
tag over header, payload and rollover counter).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from media.codecs import default_registry
from media.session import RtpSession, RtpSessionSettings
from media.srtp import (
    SUITES,
    SrtpContext,
    SrtpError,
    SrtpFailure,
    decode_key,
    encode_key,
    generate_key,
)
from sipua.sdp import (
    AudioOffer,
    CryptoAttribute,
    InlineKey,
    SdpError,
    build_description,
    match_crypto_answer,
    parse_sdp,
    select_crypto,
)

SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
SHA1_32 = "AES_CM_128_HMAC_SHA1_32"

# RFC 3711 Appendix B.3: master key and salt, and the session keys derived from them.
B3_MASTER_KEY = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
B3_MASTER_SALT = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
B3_CIPHER_KEY = bytes.fromhex("C61E7A93744F39EE10734AFE3FF7A087")
B3_CIPHER_SALT = bytes.fromhex("30CBBC08863D8C85D49DB34A9AE1")
B3_AUTH_KEY_PREFIX = bytes.fromhex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")


# --- an independent reference of RFC 3711 ------------------------------------------------------

def aes_cm_keystream(key: bytes, iv: int, length: int) -> bytes:
    """RFC 3711 §4.1.1: AES in counter mode, the 128-bit IV incremented per block."""
    counter = Cipher(algorithms.AES(key), modes.CTR(iv.to_bytes(16, "big"))).encryptor()
    return counter.update(bytes(length)) + counter.finalize()


def derive(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 §4.3.1 with key_derivation_rate 0: x = (label << 48) XOR master_salt, the
    keystream of AES-CM keyed with the master key at IV x * 2^16."""
    x = (label << 48) ^ int.from_bytes(master_salt, "big")
    return aes_cm_keystream(master_key, x << 16, length)


def reference_srtp(master: bytes, packet: bytes, roc: int = 0, tag_length: int = 10) -> bytes:
    """The SRTP packet of an RTP packet with no CSRCs or extension (RFC 3711 §3.1, §4.1.1,
    §4.2)."""
    key, salt = master[:16], master[16:]
    cipher_key = derive(key, salt, 0x00, 16)
    auth_key = derive(key, salt, 0x01, 20)
    session_salt = derive(key, salt, 0x02, 14)
    seq, ssrc = struct.unpack_from("!H", packet, 2)[0], struct.unpack_from("!I", packet, 8)[0]
    index = (roc << 16) | seq
    iv = (int.from_bytes(session_salt, "big") << 16) ^ (ssrc << 64) ^ (index << 16)
    payload = packet[12:]
    encrypted = packet[:12] + bytes(
        a ^ b for a, b in zip(payload, aes_cm_keystream(cipher_key, iv, len(payload)),
                              strict=True))
    tag = hmac.new(auth_key, encrypted + roc.to_bytes(4, "big"), hashlib.sha1).digest()
    return encrypted + tag[:tag_length]


def rtp(seq: int, payload: bytes = b"\xab" * 160, ssrc: int = 0xCAFEBABE, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + payload


def rtcp_rr(ssrc: int = 0xCAFEBABE) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def contexts(suite: str = SHA1_80, seed: int = 1) -> tuple[SrtpContext, SrtpContext]:
    """Two ends of one call: each one's local key is the other's remote key."""
    rng = random.Random(seed)
    a, b = generate_key(rng, suite), generate_key(rng, suite)
    return SrtpContext(suite, a, b), SrtpContext(suite, b, a)


# --- known answers ---------------------------------------------------------------------------

def test_reference_keystream_matches_rfc3711_b2() -> None:
    """The reference AES-CM keystream gives the first blocks of RFC 3711 Appendix B.2."""
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    iv = int("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000", 16)
    stream = aes_cm_keystream(key, iv, 48)
    assert stream[:16] == bytes.fromhex("E03EAD0935C95E80E166B16DD92B4EB4")
    assert stream[16:32] == bytes.fromhex("D23513162B02D0F72A43A2FE4A5F97AB")
    assert stream[32:48] == bytes.fromhex("41E95B3BB0A2E8DD477901E4FCA894C0")


def test_reference_key_derivation_matches_rfc3711_b3() -> None:
    """The reference key derivation gives the session keys of RFC 3711 Appendix B.3."""
    assert derive(B3_MASTER_KEY, B3_MASTER_SALT, 0x00, 16) == B3_CIPHER_KEY
    assert derive(B3_MASTER_KEY, B3_MASTER_SALT, 0x02, 14) == B3_CIPHER_SALT
    assert derive(B3_MASTER_KEY, B3_MASTER_SALT, 0x01, 20) == B3_AUTH_KEY_PREFIX


@pytest.mark.parametrize("suite,tag", [(SHA1_80, 10), (SHA1_32, 4)])
def test_protect_matches_the_reference_with_b3_keys(suite: str, tag: int) -> None:
    """Keyed with the B.3 master key and salt (key||salt as in a=crypto), protect_rtp gives
    byte for byte what RFC 3711 prescribes, and the other end recovers the packet."""
    master = B3_MASTER_KEY + B3_MASTER_SALT
    sender = SrtpContext(suite, master, generate_key(random.Random(2), suite))
    receiver = SrtpContext(suite, generate_key(random.Random(3), suite), master)
    for seq in (0x1234, 0x1235, 0x1240):
        packet = rtp(seq)
        protected = sender.protect_rtp(packet)
        assert protected == reference_srtp(master, packet, tag_length=tag)
        assert receiver.unprotect_rtp(protected) == packet


# --- round trips and refusals ----------------------------------------------------------------

@pytest.mark.parametrize("suite", [SHA1_80, SHA1_32])
def test_round_trip_rtp_and_rtcp(suite: str) -> None:
    """RTP and RTCP protected by one end come back intact at the other; SRTP adds the tag,
    SRTCP the E flag and index (4 octets) and an 80-bit tag."""
    alice, bob = contexts(suite)
    for seq in range(100, 110):
        packet = rtp(seq)
        protected = alice.protect_rtp(packet)
        assert len(protected) == len(packet) + SUITES[suite].tag_length
        assert protected[12:] != packet[12:]
        assert bob.unprotect_rtp(protected) == packet
    report = rtcp_rr()
    sealed = alice.protect_rtcp(report)
    assert len(sealed) == len(report) + 4 + 10
    assert bob.unprotect_rtcp(sealed) == report
    stats = bob.stats()
    assert (stats.rtp_unprotected, stats.rtcp_unprotected, stats.auth_failures) == (10, 1, 0)
    assert alice.stats().to_dict()["rtp_protected"] == 10


@pytest.mark.parametrize("offset", [2, 12, 40, -1])
def test_tampered_packet_raises_auth_failure(offset: int) -> None:
    """One flipped bit anywhere (header, payload, tag) fails authentication and is counted."""
    alice, bob = contexts()
    spoiled = bytearray(alice.protect_rtp(rtp(7)))
    spoiled[offset] ^= 0x01
    with pytest.raises(SrtpError) as info:
        bob.unprotect_rtp(bytes(spoiled))
    assert info.value.failure is SrtpFailure.AUTH
    assert bob.stats().auth_failures == 1


def test_replay_raises_and_is_counted() -> None:
    """The same SRTP or SRTCP packet twice: the second is a replay (RFC 3711 §3.3.2)."""
    alice, bob = contexts()
    packet = alice.protect_rtp(rtp(9))
    bob.unprotect_rtp(packet)
    with pytest.raises(SrtpError) as info:
        bob.unprotect_rtp(packet)
    assert info.value.failure is SrtpFailure.REPLAY
    report = alice.protect_rtcp(rtcp_rr())
    bob.unprotect_rtcp(report)
    with pytest.raises(SrtpError):
        bob.unprotect_rtcp(report)
    assert bob.stats().replays == 2


def test_wrong_key_and_plain_rtp_fail_authentication() -> None:
    """A packet keyed for someone else, or plain RTP, does not authenticate."""
    alice, _ = contexts(seed=1)
    _, other = contexts(seed=2)
    for data in (alice.protect_rtp(rtp(1)), rtp(2)):
        with pytest.raises(SrtpError):
            other.unprotect_rtp(data)
    assert other.stats().auth_failures == 2


@pytest.mark.parametrize("data", [b"", b"\x80", rtp(1, b"")[:11]])
def test_short_packets_are_malformed(data: bytes) -> None:
    """Less than a header and a tag is refused as malformed, not passed to libsrtp."""
    _, bob = contexts()
    with pytest.raises(SrtpError) as info:
        bob.unprotect_rtp(data)
    assert info.value.failure is SrtpFailure.MALFORMED
    with pytest.raises(SrtpError):
        bob.unprotect_rtcp(data)
    assert bob.stats().malformed == 2


@given(st.binary(max_size=1600))
def test_garbage_raises_only_srtp_error(data: bytes) -> None:
    """Arbitrary bytes never raise anything but SrtpError (or come back as a packet)."""
    _, bob = contexts()
    for unprotect in (bob.unprotect_rtp, bob.unprotect_rtcp):
        try:
            unprotect(data)
        except SrtpError:
            pass


def test_remote_key_change_keeps_the_old_key_until_the_new_one_works() -> None:
    """RFC 4568 §7.1.4: after a new key in a re-offer, packets still in flight under the old
    key are accepted until the first packet under the new key; then the old key is gone."""
    rng = random.Random(5)
    mine, old, new = (generate_key(rng) for _ in range(3))
    bob = SrtpContext(SHA1_80, mine, old)
    old_sender = SrtpContext(SHA1_80, old, mine)
    new_sender = SrtpContext(SHA1_80, new, mine)
    late = old_sender.protect_rtp(rtp(1))
    assert bob.update_remote(new) is True
    assert bob.update_remote(new) is False
    assert bob.unprotect_rtp(late) == rtp(1)
    assert bob.unprotect_rtp(new_sender.protect_rtp(rtp(2))) == rtp(2)
    with pytest.raises(SrtpError):
        bob.unprotect_rtp(old_sender.protect_rtp(rtp(3)))
    assert bob.stats().remote_key_changes == 1 and bob.remote_key == new


def test_mki_is_checked_and_taken_out() -> None:
    """With an MKI announced by the peer, packets carry it before the tag; it must match."""
    alice, _ = contexts()
    bob = SrtpContext(SHA1_80, generate_key(random.Random(9)), alice.local_key,
                      remote_mki=b"\x00\x01")
    protected = alice.protect_rtp(rtp(4))
    with_mki = protected[:-10] + b"\x00\x01" + protected[-10:]
    assert bob.unprotect_rtp(with_mki) == rtp(4)
    wrong = protected[:-10] + b"\x00\x02" + protected[-10:]
    with pytest.raises(SrtpError) as info:
        bob.unprotect_rtp(wrong)
    assert info.value.failure is SrtpFailure.MALFORMED
    rtcp = alice.protect_rtcp(rtcp_rr())
    assert bob.unprotect_rtcp(rtcp[:-10] + b"\x00\x01" + rtcp[-10:]) == rtcp_rr()


def test_keys_come_from_the_rng_and_are_checked() -> None:
    """generate_key draws 30 octets from the injected rng (same seed, same key); contexts
    refuse keys of the wrong length and suites we do not do."""
    assert generate_key(random.Random(1)) == generate_key(random.Random(1))
    assert len(generate_key(random.Random(1), SHA1_32)) == 30
    with pytest.raises(ValueError):
        SrtpContext(SHA1_80, bytes(29), bytes(30))
    with pytest.raises(ValueError):
        SrtpContext("F8_128_HMAC_SHA1_80", bytes(30), bytes(30))
    with pytest.raises(ValueError):
        generate_key(random.Random(1), "AEAD_AES_256_GCM")


def test_inline_key_base64() -> None:
    """Key material is plain padded base64 (RFC 4568 §6.1); other text is a ValueError."""
    key = generate_key(random.Random(3))
    assert decode_key(encode_key(key)) == key
    assert len(encode_key(key)) == 40
    for bad in ("not base64!", "YWJj*", "é"):
        with pytest.raises(ValueError):
            decode_key(bad)


# --- a=crypto ------------------------------------------------------------------------------------

RFC4568_EXAMPLE = ("crypto:1 AES_CM_128_HMAC_SHA1_80 "
                   "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32")


def test_parse_rfc4568_example_line() -> None:
    """The example of RFC 4568 §4: tag, suite, key and salt, lifetime 2^20, MKI 1 of 32
    octets; written back byte for byte."""
    attr = CryptoAttribute.from_sdp(RFC4568_EXAMPLE)
    assert (attr.tag, attr.suite) == (1, SHA1_80)
    (key,) = attr.keys
    assert key.key == base64.b64decode("PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR")
    assert (key.lifetime, key.mki, key.mki_length) == (2 ** 20, 1, 32)
    assert key.mki_bytes == (1).to_bytes(32, "big")
    assert attr.supported
    assert attr.to_sdp() == RFC4568_EXAMPLE


def test_decimal_lifetime_and_session_params() -> None:
    """A decimal lifetime stays decimal; session parameters are kept in order."""
    text = (f"crypto:7 {SHA1_32} inline:{encode_key(bytes(30))}|1048575 KDR=0 WSH=128")
    attr = CryptoAttribute.from_sdp(text)
    assert attr.keys[0].lifetime == 1048575 and attr.keys[0].lifetime_power is False
    assert attr.session_params == ("KDR=0", "WSH=128") and attr.supported
    assert attr.to_sdp() == text


@pytest.mark.parametrize("value", [
    "crypto:1 AES_CM_128_HMAC_SHA1_80",                       # no key
    "crypto:x AES_CM_128_HMAC_SHA1_80 inline:AAAA",           # tag not digits
    "crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:AAAA",  # tag too long
    "crypto:1 AES_CM_128_HMAC_SHA1_80 uri:https://x",          # other key method
    "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:***",            # not base64
    "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA|2^99",      # lifetime out of range
    "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA|1:0",       # MKI length 0
    "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA|256:1",     # MKI does not fit
    "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA|1:4|2^20",  # lifetime after MKI
    "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA|1|2|3",     # too many fields
    "crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",               # empty key
])
def test_bad_crypto_lines_raise_sdp_error(value: str) -> None:
    """Malformed a=crypto values raise SdpError."""
    with pytest.raises(SdpError):
        CryptoAttribute.from_sdp(value)


@given(st.text(max_size=200))
def test_crypto_garbage_raises_only_sdp_error(text: str) -> None:
    """Any text either parses or raises SdpError."""
    try:
        CryptoAttribute.from_sdp(text)
    except SdpError:
        pass


keys = st.builds(
    InlineKey,
    key=st.binary(min_size=1, max_size=64),
    lifetime=st.one_of(st.none(), st.integers(0, 2 ** 48)),
    lifetime_power=st.booleans(),
    mki=st.none(),
)
crypto_lines = st.builds(
    CryptoAttribute,
    tag=st.integers(0, 999_999_999),
    suite=st.sampled_from([SHA1_80, SHA1_32, "F8_128_HMAC_SHA1_80", "AEAD_AES_256_GCM"]),
    keys=st.lists(keys, min_size=1, max_size=3).map(tuple),
    session_params=st.lists(st.sampled_from(["KDR=0", "WSH=64", "UNENCRYPTED_SRTCP"]),
                            max_size=2).map(tuple),
)


def _canonical(attr: CryptoAttribute) -> CryptoAttribute:
    """What a written line reads back as: a power-of-two lifetime is written as 2^n."""
    def norm(k: InlineKey) -> InlineKey:
        power = k.lifetime is None or (
            k.lifetime_power and k.lifetime > 0 and k.lifetime & (k.lifetime - 1) == 0)
        return InlineKey(k.key, k.lifetime, power, k.mki, k.mki_length)
    return CryptoAttribute(attr.tag, attr.suite, tuple(norm(k) for k in attr.keys),
                           attr.session_params)


@given(crypto_lines, st.integers(0, 2 ** 16), st.integers(1, 4))
def test_crypto_round_trip_through_sdp(attr: CryptoAttribute, mki: int, mki_len: int) -> None:
    """Any a=crypto line written into an SDP body reads back equal (alone and in a whole
    description with another line)."""
    if mki < 256 ** mki_len:
        first = attr.keys[0]
        attr = CryptoAttribute(attr.tag, attr.suite,
                               (InlineKey(first.key, first.lifetime, first.lifetime_power,
                                          mki, mki_len), *attr.keys[1:]),
                               attr.session_params)
    expected = _canonical(attr)
    assert CryptoAttribute.from_sdp(attr.to_sdp()) == expected
    second = CryptoAttribute(attr.tag + 1, SHA1_80, (InlineKey(bytes(30)),))
    desc = build_description(AudioOffer("192.0.2.1", 4000, proto="RTP/SAVP",
                                        crypto=(attr, second)), session_id=1, session_version=1)
    audio = parse_sdp(desc.encode()).audio
    assert audio.proto == "RTP/SAVP" and audio.secure
    assert audio.crypto == (expected, second)


def test_unreadable_crypto_lines_do_not_fail_the_sdp() -> None:
    """A garbled a=crypto line is left out; the description and the other lines stay."""
    good = CryptoAttribute(2, SHA1_80, (InlineKey(bytes(range(30))),))
    body = (build_description(AudioOffer("192.0.2.1", 4000, crypto=(good,)), session_id=1,
                              session_version=1).encode()
            .replace("a=crypto:2", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:%%%\r\na=crypto:2"))
    audio = parse_sdp(body).audio
    assert audio.crypto == (good,) and not audio.secure


def _line(tag: int, suite: str, *, key: bytes = bytes(30), extra: tuple[str, ...] = (),
          keys: int = 1, mki: bool = False) -> CryptoAttribute:
    inline = InlineKey(key, mki=1 if mki else None, mki_length=4 if mki else None)
    return CryptoAttribute(tag, suite, (inline,) * keys, extra)


def test_answerer_selects_the_first_supported_line() -> None:
    """RFC 4568 §7.1.2: unknown suites, several keys, wrong key length and session parameters
    that change the transforms are skipped; the first usable line in the offerer's order wins;
    MKI and harmless parameters are fine."""
    offered = (
        _line(1, "AEAD_AES_256_GCM"),
        _line(2, SHA1_80, keys=2),
        _line(3, SHA1_80, key=bytes(16)),
        _line(4, SHA1_80, extra=("UNENCRYPTED_SRTCP",)),
        _line(5, SHA1_80, extra=("KDR=1",)),
        _line(6, SHA1_32, extra=("WSH=256",), mki=True),
        _line(7, SHA1_80),
    )
    chosen = select_crypto(offered)
    assert chosen is not None and chosen.tag == 6
    assert select_crypto(offered[:5]) is None
    assert select_crypto(()) is None


def test_offerer_matches_the_answer_by_tag_and_suite() -> None:
    """RFC 4568 §7.1.3: the answer's line must carry the tag and suite of an offered line."""
    offered = (_line(1, SHA1_80), _line(2, SHA1_32))
    answer = _line(2, SHA1_32, key=bytes(range(30)))
    assert match_crypto_answer(offered, (answer,)) == answer
    assert match_crypto_answer(offered, (_line(2, SHA1_80),)) is None  # suite changed
    assert match_crypto_answer(offered, (_line(3, SHA1_32),)) is None  # tag not offered
    assert match_crypto_answer(offered, ()) is None


# --- the RTP session's hooks ---------------------------------------------------------------------

PEER_A = ("192.0.2.1", 4000)
PEER_B = ("192.0.2.2", 5000)


def _secured_sessions(seed: int = 1) -> tuple[RtpSession, RtpSession]:
    """Two RTP sessions (PCMU) keyed for each other, each expecting the other's address."""
    codec = default_registry().create("PCMU")
    a = RtpSession(codec, random.Random(seed), 0.0, RtpSessionSettings(rtcp_min_interval=0.5))
    b = RtpSession(codec, random.Random(seed + 1), 0.0, RtpSessionSettings())
    ctx_a, ctx_b = contexts(seed=seed)
    a.set_srtp(ctx_a)
    b.set_srtp(ctx_b)
    a.set_expected_source(PEER_B, PEER_B)
    b.set_expected_source(PEER_A, PEER_A)
    return a, b


def test_session_protects_after_framing_and_unprotects_before_parsing() -> None:
    """send_frame returns SRTP, pop_transmits SRTCP; the peer session takes both in, and its
    RTP and RTCP counters move as for plain packets."""
    a, b = _secured_sessions()
    for n in range(5):
        wire = a.send_frame(bytes(320), n * 0.02)
        assert len(wire) == 12 + 160 + 10
        assert b.receive_rtp(wire, PEER_A, n * 0.02 + 0.01) is True
    deadline = a.next_timer()
    assert deadline is not None
    a.handle_timer(deadline + 5.0)
    (report,) = a.pop_transmits()
    assert report[1] in (200, 201) and len(report) > 8 + 14
    b.receive(report, PEER_A, deadline + 5.01)  # rtcp-mux demultiplexing on the clear header
    stats = b.stats()
    assert stats.inbound is not None and stats.inbound.packets_received == 5
    assert stats.rtcp_packets_received == 1 and stats.rtcp_packets_malformed == 0
    assert b.srtp is not None and b.srtp.stats().rtcp_unprotected == 1


def test_session_drops_tampered_and_foreign_packets() -> None:
    """A tampered packet is refused by SRTP (counted there, not as malformed RTP); a packet
    from another address is refused before SRTP sees it (no authentication failure, and the
    genuine packet is still accepted afterwards: its index was not used up)."""
    a, b = _secured_sessions()
    wire = a.send_frame(bytes(320), 0.0)
    spoiled = bytearray(wire)
    spoiled[30] ^= 0x80
    assert b.receive_rtp(bytes(spoiled), PEER_A, 0.01) is False
    assert b.receive_rtp(wire, ("203.0.113.9", 9), 0.01) is False
    assert b.receive_rtp(wire, PEER_A, 0.02) is True
    stats, srtp = b.stats(), b.srtp
    assert srtp is not None
    assert srtp.stats().auth_failures == 1 and srtp.stats().replays == 0
    assert stats.packets_from_unexpected_source == 1 and stats.packets_malformed == 0
    assert b.receive_rtp(wire, PEER_A, 0.03) is False  # now it is a replay
    assert srtp.stats().replays == 1
