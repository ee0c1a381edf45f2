"""SRTP and SRTCP (RFC 3711) for one call, with master keys exchanged in SDP (RFC 4568).

A thin, pure layer over libsrtp (``pylibsrtp``, a C binding that does no I/O): bytes in, bytes
out. One :class:`SrtpContext` holds two libsrtp sessions, one per direction: the outbound one is
keyed with our master key, the inbound one with the peer's, and each accepts any SSRC of its
direction so that a new SSRC of the peer (a re-INVITE, a restart) needs no new policy.

What the peer sends that does not authenticate, or that repeats a packet already seen, raises
:class:`SrtpError` and is counted; the caller drops the datagram (RFC 3711 §3.3: a packet that
fails authentication or the replay check is discarded).

Master keys come from the caller's ``rng`` (``random.SystemRandom()`` in production): a key is
30 octets, the 16-octet AES key followed by the 14-octet salt (RFC 3711 §8.2, RFC 4568 §6.2).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import random
from dataclasses import dataclass
from enum import Enum
from typing import Any

import pylibsrtp

logger = logging.getLogger(__name__)

__all__ = [
    "SUITES",
    "CryptoSuite",
    "SrtpContext",
    "SrtpError",
    "SrtpFailure",
    "SrtpStats",
    "decode_key",
    "encode_key",
    "generate_key",
]


@dataclass(frozen=True)
class CryptoSuite:
    """One SDES crypto suite (RFC 4568 §6.2) and the libsrtp profile that implements it."""

    name: str
    """The name as ``a=crypto`` spells it."""
    profile: int
    """The libsrtp profile number."""
    key_length: int
    """Octets of the master key."""
    salt_length: int
    """Octets of the master salt."""
    tag_length: int
    """Octets of the SRTP authentication tag (SRTCP always uses 10, RFC 4568 §6.2.2)."""

    @property
    def master_length(self) -> int:
        """Octets of the ``inline:`` key material: key followed by salt."""
        return self.key_length + self.salt_length


#: The suites we do, most preferred first. AES_CM_128_HMAC_SHA1_80 is the one every SDES
#: implementation must support (RFC 4568 §6.2.1); the 32-bit tag variant saves 6 octets per
#: packet (RFC 4568 §6.2.2).
SUITES: dict[str, CryptoSuite] = {
    s.name: s for s in (
        CryptoSuite("AES_CM_128_HMAC_SHA1_80",
                    pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14, 10),
        CryptoSuite("AES_CM_128_HMAC_SHA1_32",
                    pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14, 4),
    )
}

#: SRTCP's trailer before the tag: the E flag and the 31-bit SRTCP index (RFC 3711 §3.4).
SRTCP_INDEX_LENGTH = 4
#: SRTCP always carries an 80-bit tag with both AES_CM suites (RFC 4568 §6.2.2).
SRTCP_TAG_LENGTH = 10
#: The smallest SRTP packet: a 12-octet RTP header (RFC 3550 §5.1).
RTP_HEADER_LENGTH = 12
#: The smallest SRTCP packet: an RTCP header with the sender SSRC (RFC 3550 §6.4).
RTCP_HEADER_LENGTH = 8


class SrtpFailure(Enum):
    """Why a packet of the peer was refused."""

    AUTH = "auth"
    """The authentication tag did not match (tampered, wrong key, or not SRTP at all)."""
    REPLAY = "replay"
    """The packet index was seen already or is too old for the replay window (RFC 3711
    §3.3.2)."""
    MALFORMED = "malformed"
    """Too short or too long to be SRTP/SRTCP, or the MKI does not match."""


class SrtpError(Exception):
    """A packet could not be protected or unprotected; ``failure`` says why."""

    def __init__(self, message: str, failure: SrtpFailure = SrtpFailure.MALFORMED) -> None:
        super().__init__(message)
        self.failure = failure


@dataclass(frozen=True)
class SrtpStats:
    """The SRTP figures of one stream, for the call report."""

    suite: str
    """The crypto suite in use."""
    auth_failures: int
    """SRTP/SRTCP packets of the peer that failed authentication, dropped."""
    replays: int
    """SRTP/SRTCP packets of the peer refused by the replay check, dropped."""
    malformed: int
    """Packets of the peer too short or too long for SRTP, or with a wrong MKI, dropped."""
    rtp_protected: int
    rtp_unprotected: int
    rtcp_protected: int
    rtcp_unprotected: int
    remote_key_changes: int
    """Times the peer's master key changed in a new offer or answer (RFC 4568 §7.1.4)."""

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready data (the report's ``media.srtp``)."""
        return dataclasses.asdict(self)


def generate_key(rng: random.Random, suite: str = "AES_CM_128_HMAC_SHA1_80") -> bytes:
    """A fresh master key and salt for ``suite`` from ``rng`` (RFC 4568 §6.1: each key is
    random and used for one direction only)."""
    return rng.randbytes(_suite(suite).master_length)


def encode_key(key: bytes) -> str:
    """The ``inline:`` form of key and salt: base64 with padding (RFC 4568 §6.1)."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: str) -> bytes:
    """Key and salt from their base64 text; raises :class:`ValueError` when it is not base64."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"not base64 key material: {text!r}") from exc


def _suite(name: str) -> CryptoSuite:
    suite = SUITES.get(name)
    if suite is None:
        raise ValueError(f"unsupported crypto suite {name!r} (known: {', '.join(SUITES)})")
    return suite


def _classify(exc: pylibsrtp.Error) -> SrtpFailure:
    text = str(exc)
    if text.startswith("replay check failed") or "too old" in text:
        return SrtpFailure.REPLAY
    if text == "authentication failure":
        return SrtpFailure.AUTH
    return SrtpFailure.MALFORMED


class _Inbound:
    """The peer's direction: its master key, an optional MKI, and the libsrtp session."""

    def __init__(self, suite: CryptoSuite, key: bytes, mki: bytes | None) -> None:
        self.key = key
        self.mki = mki
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                                  srtp_profile=suite.profile)
        self.session = pylibsrtp.Session(policy)


class SrtpContext:
    """The SRTP state of one stream: protect what we send, unprotect what the peer sends.

    ``remote_mki`` is the peer's Master Key Identifier value as it appears on the wire (RFC
    3711 §3.1), when its ``a=crypto`` line announced one: it sits between the encrypted part
    and the tag of each packet, and is checked and taken out before libsrtp sees the packet.
    """

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes, *,
                 remote_mki: bytes | None = None) -> None:
        self.suite = _suite(suite)
        for name, key in (("local", local_key), ("remote", remote_key)):
            if len(key) != self.suite.master_length:
                raise ValueError(f"{name} key: {suite} needs {self.suite.master_length} octets "
                                 f"of key and salt, got {len(key)}")
        self.local_key = local_key
        outbound = pylibsrtp.Policy(key=local_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                                    srtp_profile=self.suite.profile)
        self._out = pylibsrtp.Session(outbound)
        self._in = _Inbound(self.suite, remote_key, remote_mki)
        self._previous: _Inbound | None = None
        self._auth_failures = 0
        self._replays = 0
        self._malformed = 0
        self._rtp_protected = 0
        self._rtp_unprotected = 0
        self._rtcp_protected = 0
        self._rtcp_unprotected = 0
        self._key_changes = 0

    @property
    def remote_key(self) -> bytes:
        """The peer's current master key and salt."""
        return self._in.key

    @property
    def remote_mki(self) -> bytes | None:
        """The peer's current MKI, if it uses one."""
        return self._in.mki

    def update_remote(self, remote_key: bytes, remote_mki: bytes | None = None) -> bool:
        """A new offer or answer of the peer carried this key; True when it changed.

        RFC 4568 §7.1.4: a new offer may bring new keys. Packets protected with the old key can
        still be in flight, so the old inbound session stays as a fallback until a packet
        authenticates with the new one.
        """
        if len(remote_key) != self.suite.master_length:
            raise ValueError(f"remote key: {self.suite.name} needs {self.suite.master_length} "
                             f"octets of key and salt, got {len(remote_key)}")
        if remote_key == self._in.key and remote_mki == self._in.mki:
            return False
        self._previous = self._in
        self._in = _Inbound(self.suite, remote_key, remote_mki)
        self._key_changes += 1
        logger.info("SRTP: the peer's master key changed (%s)", self.suite.name)
        return True

    # --- sending -------------------------------------------------------------------------------

    def protect_rtp(self, packet: bytes) -> bytes:
        """The SRTP packet of one RTP packet (RFC 3711 §3.3)."""
        try:
            out = self._out.protect(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"cannot protect RTP: {exc}") from exc
        self._rtp_protected += 1
        return out

    def protect_rtcp(self, packet: bytes) -> bytes:
        """The SRTCP packet of one compound RTCP packet (RFC 3711 §3.4)."""
        try:
            out = self._out.protect_rtcp(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"cannot protect RTCP: {exc}") from exc
        self._rtcp_protected += 1
        return out

    # --- receiving -----------------------------------------------------------------------------

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """The RTP packet inside an SRTP packet of the peer; raises :class:`SrtpError` (and
        counts it) when it is malformed, fails authentication or is a replay."""
        out = self._unprotect(packet, rtcp=False)
        self._rtp_unprotected += 1
        return out

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """The compound RTCP packet inside an SRTCP packet of the peer (as
        :meth:`unprotect_rtp`)."""
        out = self._unprotect(packet, rtcp=True)
        self._rtcp_unprotected += 1
        return out

    def _unprotect(self, packet: bytes, *, rtcp: bool) -> bytes:
        try:
            return self._unprotect_with(self._in, packet, rtcp)
        except SrtpError as exc:
            previous = self._previous
            if previous is None or exc.failure is SrtpFailure.REPLAY:
                self._count(exc)
                raise
            try:
                return self._unprotect_with(previous, packet, rtcp)
            except SrtpError:
                self._count(exc)
                raise exc from None

    def _unprotect_with(self, inbound: _Inbound, packet: bytes, rtcp: bool) -> bytes:
        tag = SRTCP_TAG_LENGTH if rtcp else self.suite.tag_length
        floor = (RTCP_HEADER_LENGTH + SRTCP_INDEX_LENGTH) if rtcp else RTP_HEADER_LENGTH
        mki = inbound.mki
        if mki is not None:
            # RFC 3711 §3.1: the MKI sits right before the tag; check it and take it out.
            end = len(packet) - tag
            start = end - len(mki)
            if start < floor or packet[start:end] != mki:
                raise SrtpError("missing or unknown MKI", SrtpFailure.MALFORMED)
            packet = packet[:start] + packet[end:]
        if len(packet) < floor + tag:
            raise SrtpError(f"{len(packet)} octets is too short for "
                            f"{'SRTCP' if rtcp else 'SRTP'}", SrtpFailure.MALFORMED)
        try:
            out = (inbound.session.unprotect_rtcp(packet) if rtcp
                   else inbound.session.unprotect(packet))
        except pylibsrtp.Error as exc:
            raise SrtpError(str(exc), _classify(exc)) from exc
        except (ValueError, TypeError) as exc:
            raise SrtpError(str(exc), SrtpFailure.MALFORMED) from exc
        if inbound is self._in:
            self._previous = None  # the new key works: the old one is no longer needed
        return out

    def _count(self, exc: SrtpError) -> None:
        if exc.failure is SrtpFailure.AUTH:
            self._auth_failures += 1
        elif exc.failure is SrtpFailure.REPLAY:
            self._replays += 1
        else:
            self._malformed += 1

    def stats(self) -> SrtpStats:
        """The figures of the context so far."""
        return SrtpStats(
            suite=self.suite.name, auth_failures=self._auth_failures, replays=self._replays,
            malformed=self._malformed, rtp_protected=self._rtp_protected,
            rtp_unprotected=self._rtp_unprotected, rtcp_protected=self._rtcp_protected,
            rtcp_unprotected=self._rtcp_unprotected, remote_key_changes=self._key_changes)
