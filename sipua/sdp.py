"""SDP offer/answer for audio calls with ICE (RFC 3264, RFC 4566, RFC 8839), on sdp-transform.

sdp-transform does the line grammar. Candidate lines are the exception: its grammar turns
numeric-looking foundations into numbers ("0123" becomes 123) and drops extension pairs it does not
know, so ``a=candidate`` values are read from the raw text with :meth:`Candidate.from_sdp`, which
keeps them exactly. So are ``a=crypto`` lines (SDES, RFC 4568): sdp-transform gives
``{id, suite, config, sessionConfig}`` but keeps only the first session parameter, so
:meth:`CryptoAttribute.from_sdp` reads them. Everything here is pure: text in, values out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sdp_transform

from ice.candidate import Candidate, CandidateError, CandidateType
from media.srtp import SUITES, decode_key, encode_key

Address = tuple[str, int]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: Lines in one SDP body. An audio offer with ICE has a few dozen; the cap bounds what
#: sdp-transform's per-line regular expressions are run on, whatever the SIP size limit.
MAX_SDP_LINES = 2048
#: m= sections in one body: a call uses one audio stream, a few more are merely rejected.
MAX_SDP_MEDIA = 32
#: Candidates read per m= section; the rest are ignored (RFC 8839 §5.1 lets an agent ignore
#: candidates), so a peer cannot make the agent pair thousands of them.
MAX_SDP_CANDIDATES = 256
#: RFC 3264 §6: what an answerer answers to each offered direction (when it can do all).
ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly",
                    "inactive": "inactive"}


class SdpError(ValueError):
    """The SDP cannot be used: malformed, or missing what an audio offer/answer needs."""


@dataclass(frozen=True)
class Codec:
    """One RTP payload format of the m-line (``a=rtpmap``/``a=fmtp``)."""

    payload_type: int
    name: str
    clock_rate: int = 8000
    channels: int = 1
    fmtp: str | None = None

    def same_format(self, other: Codec) -> bool:
        """RFC 3264 §6.1: formats match by name and clock rate, not payload number."""
        return (self.name.lower(), self.clock_rate, self.channels) == \
            (other.name.lower(), other.clock_rate, other.channels)


PCMU = Codec(0, "PCMU")
PCMA = Codec(8, "PCMA")
TELEPHONE_EVENT = Codec(101, "telephone-event", fmtp="0-16")
#: Static payload types usable without an rtpmap (RFC 3551 Table 4).
STATIC_CODECS = {0: PCMU, 8: PCMA}


@dataclass(frozen=True)
class InlineKey:
    """One ``inline:`` key parameter of an ``a=crypto`` line (RFC 4568 §6.1, §9.2)."""

    key: bytes = field(repr=False)
    """Master key followed by master salt (kept out of repr, hence out of logs)."""
    lifetime: int | None = None
    """Packets the key may protect (``|2^31`` or ``|2147483648``); None = the suite's limit."""
    lifetime_power: bool = True
    """The lifetime was written as a power of two (kept to write it back the same way)."""
    mki: int | None = None
    """Master Key Identifier value (``|MKI:length``), None without one."""
    mki_length: int | None = None
    """Octets of the MKI field in each packet, 1-128."""

    @property
    def mki_bytes(self) -> bytes | None:
        """The MKI as it appears on the wire (RFC 3711 §3.1), None without one."""
        if self.mki is None or self.mki_length is None:
            return None
        return self.mki.to_bytes(self.mki_length, "big")

    def to_sdp(self) -> str:
        text = "inline:" + encode_key(self.key)
        if self.lifetime is not None:
            if self.lifetime_power and self.lifetime > 0 and \
                    self.lifetime & (self.lifetime - 1) == 0:
                text += f"|2^{self.lifetime.bit_length() - 1}"
            else:
                text += f"|{self.lifetime}"
        if self.mki is not None:
            text += f"|{self.mki}:{self.mki_length}"
        return text


#: Largest lifetime exponent and MKI length read (RFC 4568 §9.2: MKI length 1*3DIGIT, 1-128).
_MAX_LIFETIME_POWER = 64
_MAX_MKI_LENGTH = 128


def _harmless(param: str) -> bool:
    """Session parameters that change nothing for us: a window size hint (we keep libsrtp's
    window of 128, RFC 4568 §6.3.7) and a key derivation rate of 0 (no re-derivation, §6.3.1).
    Anything else (UNENCRYPTED_SRTCP, FEC_ORDER, KDR=n) changes the transforms."""
    if param == "KDR=0":
        return True
    return param.startswith("WSH=") and param[4:].isascii() and param[4:].isdigit()


@dataclass(frozen=True)
class CryptoAttribute:
    """One ``a=crypto`` line (RFC 4568 §9.1): ``<tag> <suite> <key-params> [<session-params>]``.

    ``keys`` holds every ``inline:`` key parameter (``;``-separated); we use lines with exactly
    one. Unknown suites parse too (with whatever key material they carry), so that the
    selection can skip them (RFC 4568 §7.1.2).
    """

    tag: int
    suite: str
    keys: tuple[InlineKey, ...]
    session_params: tuple[str, ...] = ()

    @property
    def key(self) -> bytes:
        """The (first) master key and salt."""
        return self.keys[0].key

    @property
    def supported(self) -> bool:
        """We can use this line: a suite we do, one key of the suite's length, and no session
        parameter that changes the transforms (UNENCRYPTED_SRTP, FEC_ORDER, ...)."""
        suite = SUITES.get(self.suite)
        return (suite is not None and len(self.keys) == 1
                and len(self.keys[0].key) == suite.master_length
                and all(_harmless(p) for p in self.session_params))

    @property
    def key_params(self) -> str:
        """The key parameters as written: ``inline:...`` joined by ``;``."""
        return ";".join(k.to_sdp() for k in self.keys)

    def to_sdp(self) -> str:
        """The attribute value after ``a=``."""
        text = f"crypto:{self.tag} {self.suite} {self.key_params}"
        if self.session_params:
            text += " " + " ".join(self.session_params)
        return text

    @classmethod
    def from_sdp(cls, value: str) -> CryptoAttribute:
        """Read the value of an ``a=crypto`` line (with or without ``crypto:``); raises
        :class:`SdpError`."""
        text = value.strip()
        if text[:7].lower() == "crypto:":
            text = text[7:]
        parts = text.split()
        if len(parts) < 3:
            raise SdpError(f"a=crypto needs a tag, a suite and key parameters: {value!r}")
        tag, suite, key_params = parts[0], parts[1], parts[2]
        if not (tag.isascii() and tag.isdigit()) or len(tag) > 9:
            raise SdpError(f"a=crypto tag must be 1-9 digits: {tag!r}")
        keys = tuple(_inline_key(param) for param in key_params.split(";"))
        return cls(int(tag), suite, keys, tuple(parts[3:]))


def _digits(text: str, what: str, max_len: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > max_len:
        raise SdpError(f"a=crypto {what} must be 1-{max_len} digits: {text!r}")
    return int(text)


def _inline_key(param: str) -> InlineKey:
    """``inline:<key||salt>[|lifetime][|MKI:length]`` (RFC 4568 §9.2)."""
    method, _, info = param.partition(":")
    if method.lower() != "inline" or not info:
        raise SdpError(f"a=crypto key method must be inline: {param!r}")
    fields = info.split("|")
    if len(fields) > 3:
        raise SdpError(f"a=crypto key has too many '|' fields: {param!r}")
    try:
        key = decode_key(fields[0])
    except ValueError as exc:
        raise SdpError(f"a=crypto key is not base64: {fields[0]!r}") from exc
    if not key:
        raise SdpError("a=crypto key is empty")
    lifetime: int | None = None
    power = True
    mki = mki_length = None
    for extra in fields[1:]:
        if ":" in extra:
            if mki is not None:
                raise SdpError(f"a=crypto key has two MKI fields: {param!r}")
            value, _, length = extra.partition(":")
            mki = _digits(value, "MKI value", 40)
            mki_length = _digits(length, "MKI length", 3)
            if not 1 <= mki_length <= _MAX_MKI_LENGTH or mki >= 256 ** mki_length:
                raise SdpError(f"a=crypto MKI {mki} does not fit {mki_length} octets")
        else:
            if lifetime is not None or mki is not None:
                raise SdpError(f"a=crypto lifetime out of place: {param!r}")
            if extra.startswith("2^"):
                exponent = _digits(extra[2:], "lifetime exponent", 2)
                if exponent > _MAX_LIFETIME_POWER:
                    raise SdpError(f"a=crypto lifetime 2^{exponent} is out of range")
                lifetime = 1 << exponent
            else:
                lifetime = _digits(extra, "lifetime", 20)
                power = False
    return InlineKey(key, lifetime, power, mki, mki_length)


def select_crypto(offered: Iterable[CryptoAttribute]) -> CryptoAttribute | None:
    """RFC 4568 §7.1.2: the answerer takes one offered line it supports; we take the first, the
    offerer's preference. Unknown suites and lines we cannot use are skipped."""
    return next((c for c in offered if c.supported), None)


def match_crypto_answer(offered: Iterable[CryptoAttribute], answered: Iterable[CryptoAttribute]
                        ) -> CryptoAttribute | None:
    """RFC 4568 §7.1.3: the answer's line with the tag and suite of one of our offered lines
    (and a key we can use); None when the answer accepted none of them."""
    ours = {c.tag: c.suite for c in offered}
    return next((a for a in answered if ours.get(a.tag) == a.suite and a.supported), None)


@dataclass(frozen=True)
class IceAttributes:
    """The ICE part of one media description (RFC 8839 §5)."""

    ufrag: str
    pwd: str = field(repr=False)  # the ICE key material stays out of reprs and logs
    candidates: tuple[Candidate, ...] = ()
    lite: bool = False
    options: tuple[str, ...] = ()
    end_of_candidates: bool = False
    #: ``a=remote-candidates`` (RFC 5245 §9.1.3 updated offer): component -> address.
    remote_candidates: tuple[tuple[int, Address], ...] = ()
    #: ``a=ice-pacing`` (RFC 8839 §5.5), the proposed Ta in milliseconds; None when absent.
    pacing: int | None = None


@dataclass(frozen=True)
class MediaDescription:
    """One audio m-line with what a call needs of it."""

    port: int
    codecs: tuple[Codec, ...]
    connection: str
    proto: str = "RTP/AVP"
    kind: str = "audio"
    direction: str = "sendrecv"
    ptime: int | None = None
    #: ``a=rtcp`` (RFC 3605); None means port + 1 on the connection address.
    rtcp: Address | None = None
    rtcp_mux: bool = False
    ice: IceAttributes | None = None
    ice_mismatch: bool = False
    #: Lines we do not interpret, kept so an answer or a log can show them.
    other: tuple[str, ...] = ()
    #: ``a=crypto`` lines (RFC 4568) in their order; lines that do not parse are left out.
    crypto: tuple[CryptoAttribute, ...] = ()

    @property
    def secure(self) -> bool:
        """The m-line names the secure RTP profile (RTP/SAVP, RFC 3711 §12)."""
        return "SAVP" in self.proto.upper()

    @property
    def default_address(self) -> Address:
        """Where a peer without ICE sends RTP (c= and m=)."""
        return (self.connection, self.port)

    @property
    def default_rtcp_address(self) -> Address:
        """Where a peer without ICE sends RTCP (a=rtcp, rtcp-mux, or port + 1)."""
        if self.rtcp_mux:
            return self.default_address
        if self.rtcp is not None:
            return self.rtcp
        return (self.connection, self.port + 1)

    @property
    def on_hold(self) -> bool:
        """The sender puts the stream on hold (sendonly/inactive, or RFC 2543 c=0.0.0.0)."""
        return self.direction in ("sendonly", "inactive") or self.connection == "0.0.0.0"

    def candidates_for(self, component: int) -> list[Candidate]:
        return [c for c in (self.ice.candidates if self.ice else ()) if c.component == component]


@dataclass(frozen=True)
class SessionDescription:
    """A whole SDP body as far as calls are concerned."""

    media: tuple[MediaDescription, ...]
    origin_address: str = "0.0.0.0"
    session_id: int = 0
    session_version: int = 0
    username: str = "-"
    session_name: str = "-"

    @property
    def audio(self) -> MediaDescription:
        """The first audio stream that is not rejected (port 0)."""
        for media in self.media:
            if media.kind == "audio" and media.port != 0:
                return media
        raise SdpError("no usable audio stream (m=audio with a non-zero port)")

    def encode(self) -> str:
        """The SDP text, CRLF line endings (RFC 4566 §5)."""
        return write_sdp(self)


def _ip_version(address: str) -> int:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return 4  # an FQDN: RFC 4566 allows it; IP4 is what peers expect


def default_candidate(candidates: Iterable[Candidate], component: int) -> Candidate | None:
    """The candidate to put in c=/m= (or a=rtcp): relay if any, else srflx, else host.

    RFC 8445 §5.1.4 recommends the relayed candidate, which works wherever ICE does not; within a
    type the highest priority wins.
    """
    rank = {CandidateType.RELAY: 0, CandidateType.SRFLX: 1, CandidateType.HOST: 2,
            CandidateType.PRFLX: 3}
    usable = [c for c in candidates if c.component == component and c.transport == "udp"]
    if not usable:
        return None
    return min(usable, key=lambda c: (rank[c.type], -c.priority))


def has_ice_mismatch(media: MediaDescription) -> bool:
    """RFC 8839 §4.4 / RFC 5245 §5.1: the default destination is not among the candidates.

    Then a signalling intermediary rewrote the SDP (an ALG, an SBC) and ICE must not be used.
    """
    if media.ice is None or not media.ice.candidates:
        return False
    addresses = {(c.address[0], c.address[1]) for c in media.candidates_for(1)}
    if _normalize(media.connection) == "0.0.0.0":
        return False
    return (_normalize(media.connection), media.port) not in {
        (_normalize(a), p) for a, p in addresses}


def _normalize(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


def _media_sections(text: str) -> list[list[str]]:
    """Raw attribute lines of each m-section, in order (for lossless candidate reading)."""
    sections: list[list[str]] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            sections.append([])
        elif sections and line.startswith("a="):
            sections[-1].append(line[2:])
    return sections


MAX_ICE_PACING_MS = 60_000
"""Larger ``a=ice-pacing`` values are not taken (a check a minute is no pacing at all)."""


def _pacing(value: str | None) -> int | None:
    """``a=ice-pacing`` (RFC 8839 §5.5: an integer of milliseconds); None when absent or not
    a usable number (ignored, like any attribute we cannot read)."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 10:
        return None
    ms = int(value)
    return ms if 0 < ms <= MAX_ICE_PACING_MS else None


def _session_lines(text: str) -> list[str]:
    """Raw attribute lines of the session level (before the first m=)."""
    lines: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("m="):
            break
        if line.startswith("a="):
            lines.append(line[2:])
    return lines


def _raw_attribute(lines: Sequence[str], name: str) -> str | None:
    """The value of the first ``a=name:value`` among ``lines``, as written: sdp-transform turns
    a numeric-looking ice-ufrag such as ``200e2443`` into a float (``inf``)."""
    prefix = name + ":"
    for line in lines:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None


def _parse_remote_candidates(value: str) -> tuple[tuple[int, Address], ...]:
    tokens = value.split()
    if len(tokens) % 3:
        raise SdpError(f"a=remote-candidates needs component/address/port triples: {value!r}")
    out = []
    for comp, addr, port in zip(tokens[::3], tokens[1::3], tokens[2::3], strict=True):
        if not comp.isdigit() or not port.isdigit():
            raise SdpError(f"bad a=remote-candidates entry: {comp} {addr} {port}")
        out.append((int(comp), (addr, int(port))))
    return tuple(out)


def _codecs(media: dict[str, Any]) -> tuple[Codec, ...]:
    rtpmap = {int(r["payload"]): r for r in media.get("rtp", []) if "payload" in r}
    fmtp = {int(f["payload"]): str(f.get("config", "")) for f in media.get("fmtp", [])
            if "payload" in f}
    codecs: list[Codec] = []
    for token in str(media.get("payloads", "")).split():
        if not token.isdigit():
            continue  # non-RTP formats are not ours to interpret
        pt = int(token)
        entry = rtpmap.get(pt)
        if entry is not None:
            channels = int(entry.get("encoding") or 1)
            codecs.append(Codec(pt, str(entry["codec"]), int(entry.get("rate") or 8000),
                                channels, fmtp.get(pt)))
        elif pt in STATIC_CODECS:
            codecs.append(replace(STATIC_CODECS[pt], fmtp=fmtp.get(pt)))
        else:
            codecs.append(Codec(pt, f"unknown-{pt}", 0, 1, fmtp.get(pt)))
    return tuple(codecs)


def parse_sdp(text: str) -> SessionDescription:
    """Read an SDP body; raises only :class:`SdpError`.

    Unknown attributes and candidate extensions are tolerated (kept or ignored, never fatal);
    what makes a description unusable (no media, no connection address) is an error.
    """
    if not isinstance(text, str) or "v=" not in text:
        raise SdpError("not an SDP body (no v= line)")
    if text.count("\n") > MAX_SDP_LINES:
        raise SdpError(f"more than {MAX_SDP_LINES} SDP lines")
    if text.count("m=") > MAX_SDP_MEDIA and sum(
            line.lstrip().startswith("m=") for line in text.split("\n")) > MAX_SDP_MEDIA:
        raise SdpError(f"more than {MAX_SDP_MEDIA} m= sections")
    try:
        session = sdp_transform.parse(text)
    except Exception as exc:  # sdp-transform raises assorted errors on odd input
        raise SdpError(f"unparsable SDP: {exc}") from exc
    raw_sections = _media_sections(text)
    session_conn = (session.get("connection") or {}).get("ip")
    session_raw = _session_lines(text)
    session_ufrag = _raw_attribute(session_raw, "ice-ufrag")
    session_pwd = _raw_attribute(session_raw, "ice-pwd")
    lite = bool(session.get("icelite"))
    session_options = tuple(str(session.get("iceOptions", "")).split())
    session_pacing = _pacing(_raw_attribute(session_raw, "ice-pacing"))
    session_direction = session.get("direction")
    medias: list[MediaDescription] = []
    for index, media in enumerate(session.get("media", [])):
        try:
            medias.append(_parse_media(media, raw_sections[index] if index < len(raw_sections)
                                       else [], session_conn, session_ufrag, session_pwd, lite,
                                       session_options, session_direction, session_pacing))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SdpError):
                raise
            raise SdpError(f"bad m-line #{index + 1}: {exc}") from exc
    if not medias:
        raise SdpError("no m-line")
    origin = session.get("origin") or {}
    try:
        session_id = int(origin.get("sessionId", 0))
        session_version = int(origin.get("sessionVersion", 0))
    except (TypeError, ValueError):
        session_id = session_version = 0
    return SessionDescription(
        media=tuple(medias), origin_address=str(origin.get("address", "0.0.0.0")),
        session_id=session_id, session_version=session_version,
        username=str(origin.get("username", "-")), session_name=str(session.get("name", "-")))


def _parse_media(media: dict[str, Any], raw: Sequence[str], session_conn: str | None,
                 session_ufrag: str | None, session_pwd: str | None, lite: bool,
                 session_options: tuple[str, ...], session_direction: str | None,
                 session_pacing: int | None = None) -> MediaDescription:
    port = int(media.get("port", 0))
    if not 0 <= port <= 65535:
        raise SdpError(f"bad media port {port}")
    conn = (media.get("connection") or {}).get("ip") or session_conn
    if conn is None:
        if port == 0:
            conn = "0.0.0.0"
        else:
            raise SdpError("no connection address (c=) for the media")
    rtcp = None
    if media.get("rtcp"):
        r = media["rtcp"]
        rtcp = (str(r.get("address") or conn), int(r["port"]))
    candidates: list[Candidate] = []
    crypto: list[CryptoAttribute] = []
    for line in raw:
        if line[:10].lower() == "candidate:":
            if len(candidates) >= MAX_SDP_CANDIDATES:
                continue
            try:
                candidates.append(Candidate.from_sdp(line))
            except CandidateError:
                continue  # RFC 8839 §5.1: ignore what we cannot use, never fail the call
        elif line[:7].lower() == "crypto:":
            # Read from the raw text: sdp-transform keeps only one session parameter.
            try:
                crypto.append(CryptoAttribute.from_sdp(line))
            except SdpError:
                continue  # a line we cannot read is one we do not select (RFC 4568 §7.1.2)
    ufrag = _raw_attribute(raw, "ice-ufrag") or session_ufrag
    pwd = _raw_attribute(raw, "ice-pwd") or session_pwd
    ice = None
    if ufrag and pwd:
        options = tuple(str(media.get("iceOptions", "")).split()) or session_options
        remote = _parse_remote_candidates(str(media["remoteCandidates"])) \
            if media.get("remoteCandidates") else ()
        # RFC 8839 §5.5 puts ice-pacing at session level; a media-level one is read too.
        pacing = _pacing(_raw_attribute(raw, "ice-pacing")) or session_pacing
        ice = IceAttributes(str(ufrag), str(pwd), tuple(candidates), lite, options,
                            bool(media.get("endOfCandidates")), remote, pacing)
    invalid = tuple(str(i.get("value", "")) for i in media.get("invalid", []))
    ptime = media.get("ptime")
    return MediaDescription(
        port=port, codecs=_codecs(media), connection=str(conn),
        proto=str(media.get("protocol", "RTP/AVP")), kind=str(media.get("type", "audio")),
        direction=str(media.get("direction") or session_direction or "sendrecv"),
        ptime=int(ptime) if ptime else None, rtcp=rtcp, rtcp_mux=bool(media.get("rtcpMux")),
        ice=ice, ice_mismatch="ice-mismatch" in invalid,
        other=tuple(v for v in invalid if v != "ice-mismatch"), crypto=tuple(crypto))


def write_sdp(desc: SessionDescription) -> str:
    """Serialize; candidates are written exactly as :meth:`Candidate.to_sdp` spells them."""
    first_conn = desc.media[0].connection if desc.media else desc.origin_address
    session: dict[str, Any] = {
        "version": 0,
        "origin": {"username": desc.username, "sessionId": desc.session_id,
                   "sessionVersion": desc.session_version, "netType": "IN",
                   "ipVer": _ip_version(desc.origin_address), "address": desc.origin_address},
        "name": desc.session_name,
        "connection": {"version": _ip_version(first_conn), "ip": first_conn},
        "timing": {"start": 0, "stop": 0},
        "media": [],
    }
    if any(m.ice and m.ice.lite for m in desc.media):
        session["icelite"] = "ice-lite"
    pacing = next((m.ice.pacing for m in desc.media if m.ice and m.ice.pacing), None)
    if pacing is not None:  # RFC 8839 §5.5: session level
        session["invalid"] = [{"value": f"ice-pacing:{pacing}"}]
    for media in desc.media:
        session["media"].append(_write_media(media, first_conn))
    return str(sdp_transform.write(session))


def _write_media(media: MediaDescription, session_conn: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": media.kind, "port": media.port, "protocol": media.proto,
        "payloads": " ".join(str(c.payload_type) for c in media.codecs),
        "rtp": [{"payload": c.payload_type, "codec": c.name, "rate": c.clock_rate,
                 **({"encoding": c.channels} if c.channels != 1 else {})}
                for c in media.codecs],
        "fmtp": [{"payload": c.payload_type, "config": c.fmtp} for c in media.codecs if c.fmtp],
        "direction": media.direction,
    }
    if media.connection != session_conn:
        out["connection"] = {"version": _ip_version(media.connection), "ip": media.connection}
    if media.ptime:
        out["ptime"] = media.ptime
    if media.rtcp is not None:  # with rtcp-mux: the fallback port (RFC 5761 §5.1.3)
        out["rtcp"] = {"port": media.rtcp[1], "netType": "IN",
                       "ipVer": _ip_version(media.rtcp[0]), "address": media.rtcp[0]}
    if media.rtcp_mux:
        out["rtcpMux"] = "rtcp-mux"
    if media.crypto:
        out["crypto"] = [
            {"id": c.tag, "suite": c.suite, "config": c.key_params,
             **({"sessionConfig": " ".join(c.session_params)} if c.session_params else {})}
            for c in media.crypto]
    invalid: list[dict[str, str]] = [{"value": v} for v in media.other]
    if media.ice is not None:
        out["iceUfrag"] = media.ice.ufrag
        out["icePwd"] = media.ice.pwd
        if media.ice.options:
            out["iceOptions"] = " ".join(media.ice.options)
        if media.ice.remote_candidates:
            out["remoteCandidates"] = " ".join(
                f"{comp} {addr[0]} {addr[1]}" for comp, addr in media.ice.remote_candidates)
        # Written through the "invalid" passthrough so that every byte of the candidate
        # (foundation spelling, extension pairs) stays as Candidate.to_sdp made it.
        invalid = [{"value": c.to_sdp()} for c in media.ice.candidates] + invalid
        if media.ice.end_of_candidates:
            invalid.append({"value": "end-of-candidates"})
    if media.ice_mismatch:
        invalid.append({"value": "ice-mismatch"})
    if invalid:
        out["invalid"] = invalid
    return out


@dataclass(frozen=True)
class AudioOffer:
    """What we put into an offer or answer for our audio stream."""

    connection: str
    port: int
    codecs: tuple[Codec, ...] = (PCMU, PCMA, TELEPHONE_EVENT)
    ptime: int = 20
    direction: str = "sendrecv"
    rtcp: Address | None = None
    rtcp_mux: bool = False
    ice: IceAttributes | None = None
    extra: tuple[str, ...] = field(default=())
    #: The m-line profile: RTP/AVP, or RTP/SAVP when SRTP is required (RFC 4568 §7.1.1).
    proto: str = "RTP/AVP"
    #: Our ``a=crypto`` lines (RFC 4568): every suite offered, or the one answered.
    crypto: tuple[CryptoAttribute, ...] = ()


def build_description(offer: AudioOffer, *, session_id: int, session_version: int,
                      origin_address: str | None = None, ice_mismatch: bool = False
                      ) -> SessionDescription:
    """A one-audio-stream description from our side's values."""
    if offer.direction not in DIRECTIONS:
        raise ValueError(f"bad direction {offer.direction!r}")
    media = MediaDescription(
        port=offer.port, codecs=offer.codecs, connection=offer.connection,
        direction=offer.direction, ptime=offer.ptime, rtcp=offer.rtcp, rtcp_mux=offer.rtcp_mux,
        ice=offer.ice, ice_mismatch=ice_mismatch, other=offer.extra, proto=offer.proto,
        crypto=offer.crypto)
    return SessionDescription(media=(media,), origin_address=origin_address or offer.connection,
                              session_id=session_id, session_version=session_version)


def negotiate_codecs(offered: Sequence[Codec], supported: Sequence[Codec]) -> tuple[Codec, ...]:
    """RFC 3264 §6.1: the offered formats we support, in the offerer's order and numbering."""
    out: list[Codec] = []
    for codec in offered:
        ours = next((s for s in supported if s.same_format(codec)), None)
        if ours is not None:
            out.append(replace(ours, payload_type=codec.payload_type,
                               fmtp=codec.fmtp if codec.fmtp is not None else ours.fmtp))
    return tuple(out)
