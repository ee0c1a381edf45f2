"""SDP offer/answer for audio calls with ICE (RFC 3264, RFC 4566, RFC 8839), on sdp-transform.

sdp-transform does the line grammar. Candidate lines are the exception: its grammar turns
numeric-looking foundations into numbers ("0123" becomes 123) and drops extension pairs it does not
know, so ``a=candidate`` values are read from the raw text with :meth:`Candidate.from_sdp`, which
keeps them exactly. Everything here is pure: text in, values out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sdp_transform

from ice.candidate import Candidate, CandidateError, CandidateType

Address = tuple[str, int]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
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
class IceAttributes:
    """The ICE part of one media description (RFC 8839 §5)."""

    ufrag: str
    pwd: str
    candidates: tuple[Candidate, ...] = ()
    lite: bool = False
    options: tuple[str, ...] = ()
    end_of_candidates: bool = False
    #: ``a=remote-candidates`` (RFC 5245 §9.1.3 updated offer): component -> address.
    remote_candidates: tuple[tuple[int, Address], ...] = ()


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
    try:
        session = sdp_transform.parse(text)
    except Exception as exc:  # sdp-transform raises assorted errors on odd input
        raise SdpError(f"unparsable SDP: {exc}") from exc
    raw_sections = _media_sections(text)
    session_conn = (session.get("connection") or {}).get("ip")
    session_ufrag = session.get("iceUfrag")
    session_pwd = session.get("icePwd")
    lite = bool(session.get("icelite"))
    session_options = tuple(str(session.get("iceOptions", "")).split())
    session_direction = session.get("direction")
    medias: list[MediaDescription] = []
    for index, media in enumerate(session.get("media", [])):
        try:
            medias.append(_parse_media(media, raw_sections[index] if index < len(raw_sections)
                                       else [], session_conn, session_ufrag, session_pwd, lite,
                                       session_options, session_direction))
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
                 session_options: tuple[str, ...], session_direction: str | None
                 ) -> MediaDescription:
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
    for line in raw:
        if line[:10].lower() == "candidate:":
            try:
                candidates.append(Candidate.from_sdp(line))
            except CandidateError:
                continue  # RFC 8839 §5.1: ignore what we cannot use, never fail the call
    ufrag = media.get("iceUfrag") or session_ufrag
    pwd = media.get("icePwd") or session_pwd
    ice = None
    if ufrag and pwd:
        options = tuple(str(media.get("iceOptions", "")).split()) or session_options
        remote = _parse_remote_candidates(str(media["remoteCandidates"])) \
            if media.get("remoteCandidates") else ()
        ice = IceAttributes(str(ufrag), str(pwd), tuple(candidates), lite, options,
                            bool(media.get("endOfCandidates")), remote)
    invalid = tuple(str(i.get("value", "")) for i in media.get("invalid", []))
    ptime = media.get("ptime")
    return MediaDescription(
        port=port, codecs=_codecs(media), connection=str(conn),
        proto=str(media.get("protocol", "RTP/AVP")), kind=str(media.get("type", "audio")),
        direction=str(media.get("direction") or session_direction or "sendrecv"),
        ptime=int(ptime) if ptime else None, rtcp=rtcp, rtcp_mux=bool(media.get("rtcpMux")),
        ice=ice, ice_mismatch="ice-mismatch" in invalid,
        other=tuple(v for v in invalid if v != "ice-mismatch"))


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
    if media.rtcp is not None and not media.rtcp_mux:
        out["rtcp"] = {"port": media.rtcp[1], "netType": "IN",
                       "ipVer": _ip_version(media.rtcp[0]), "address": media.rtcp[0]}
    if media.rtcp_mux:
        out["rtcpMux"] = "rtcp-mux"
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


def build_description(offer: AudioOffer, *, session_id: int, session_version: int,
                      origin_address: str | None = None, ice_mismatch: bool = False
                      ) -> SessionDescription:
    """A one-audio-stream description from our side's values."""
    if offer.direction not in DIRECTIONS:
        raise ValueError(f"bad direction {offer.direction!r}")
    media = MediaDescription(
        port=offer.port, codecs=offer.codecs, connection=offer.connection,
        direction=offer.direction, ptime=offer.ptime, rtcp=offer.rtcp, rtcp_mux=offer.rtcp_mux,
        ice=offer.ice, ice_mismatch=ice_mismatch, other=offer.extra)
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
