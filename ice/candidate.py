"""ICE candidates (RFC 8445 §5.1) and their SDP form (RFC 8839 §5.1), plus the small value types
the agent exchanges with its adapter: a local base (one socket), a datagram to send, and
application data handed back from a socket.

Pure values: nothing here does I/O or keeps state.
"""

from __future__ import annotations

import enum
import ipaddress
import string
from dataclasses import dataclass

Address = tuple[str, int]
"""(IP literal, port); IPv6 without brackets. The same alias as ``ice.stun.Address``."""

#: RFC 8445 §5.1.2.2: recommended type preferences.
TYPE_PREFERENCE: dict[str, int] = {"host": 126, "prflx": 110, "srflx": 100, "relay": 0}

#: Foundations are ice-chars in RFC 8839; any visible ASCII is accepted from peers.
_FOUNDATION_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation)
_MAX_PRIORITY = 2**31 - 1


class CandidateError(ValueError):
    """A candidate line (or a value given to build one) is malformed."""


class CandidateType(enum.StrEnum):
    """Candidate types of RFC 8445 §5.1.1, spelled as in SDP."""

    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"

    @property
    def preference(self) -> int:
        """The recommended type preference (RFC 8445 §5.1.2.2)."""
        return TYPE_PREFERENCE[self.value]


def candidate_priority(type_preference: int, local_preference: int, component: int) -> int:
    """RFC 8445 §5.1.2.1: 2^24 * type pref + 2^8 * local pref + (256 - component ID)."""
    if not 0 <= type_preference <= 126:
        raise CandidateError(f"type preference {type_preference} not in 0..126")
    if not 0 <= local_preference <= 65535:
        raise CandidateError(f"local preference {local_preference} not in 0..65535")
    if not 1 <= component <= 256:
        raise CandidateError(f"component {component} not in 1..256")
    return (type_preference << 24) + (local_preference << 8) + (256 - component)


def normalize_ip(text: str) -> str:
    """The canonical spelling of an IP literal (compressed IPv6, no zone), so that addresses from
    SDP and from STUN attributes compare equal; raises CandidateError when it is not one."""
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError as exc:
        raise CandidateError(f"not an IP address: {text!r}") from exc


def is_ipv6(address: Address) -> bool:
    """True for an IPv6 transport address (the agent pairs only within one family)."""
    return ":" in address[0]


@dataclass(frozen=True)
class Candidate:
    """One candidate, local or remote (RFC 8445 §5.1)."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: Address
    type: CandidateType
    related: Address | None = None
    extensions: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= len(self.foundation) <= 32 or not set(self.foundation) <= _FOUNDATION_CHARS:
            raise CandidateError(f"bad foundation {self.foundation!r}")
        if not 1 <= self.component <= 256:
            raise CandidateError(f"bad component {self.component}")
        if not 1 <= self.priority <= _MAX_PRIORITY:
            raise CandidateError(f"bad priority {self.priority}")
        if not self.transport or not self.transport.isalnum():
            raise CandidateError(f"bad transport {self.transport!r}")
        _check_address(self.address)
        if self.related is not None:
            _check_address(self.related)

    def to_sdp(self) -> str:
        """The ``a=candidate`` value without ``a=`` (RFC 8839 §5.1)."""
        parts = [
            f"candidate:{self.foundation}", str(self.component), self.transport,
            str(self.priority), self.address[0], str(self.address[1]), "typ", self.type.value,
        ]
        if self.related is not None:
            parts += ["raddr", self.related[0], "rport", str(self.related[1])]
        for name, value in self.extensions:
            parts += [name, value]
        return " ".join(parts)

    @classmethod
    def from_sdp(cls, text: str) -> Candidate:
        """Parse an ``a=candidate`` value, with or without ``a=`` and ``candidate:``.

        The transport is lower-cased; unknown extension pairs are kept in order. Anything
        malformed raises CandidateError (and nothing else)."""
        if not isinstance(text, str):
            raise CandidateError("candidate must be a str")
        body = text.strip()
        if body[:2].lower() == "a=":
            body = body[2:]
        if body[:10].lower() == "candidate:":
            body = body[10:]
        tokens = body.split()
        if len(tokens) < 8:
            raise CandidateError(f"too few fields in {text!r}")
        foundation, comp, transport, prio, host, port, typ_kw, typ = tokens[:8]
        if typ_kw.lower() != "typ":
            raise CandidateError(f"expected 'typ' in {text!r}")
        try:
            ctype = CandidateType(typ.lower())
        except ValueError as exc:
            raise CandidateError(f"unknown candidate type {typ!r}") from exc
        rest = tokens[8:]
        if len(rest) % 2:
            raise CandidateError(f"odd number of extension tokens in {text!r}")
        related_ip: str | None = None
        related_port: int | None = None
        extensions: list[tuple[str, str]] = []
        for name, value in zip(rest[::2], rest[1::2], strict=True):
            low = name.lower()
            if low == "raddr" and related_ip is None:
                related_ip = value
            elif low == "rport" and related_port is None:
                related_port = _int(value, "rport")
            else:
                extensions.append((name, value))
        related: Address | None = None
        if related_ip is not None or related_port is not None:
            if related_ip is None or related_port is None:
                raise CandidateError("raddr and rport go together")
            related = (related_ip, related_port)
        return cls(
            foundation=foundation, component=_int(comp, "component"),
            transport=transport.lower(), priority=_int(prio, "priority"),
            address=(host, _int(port, "port")), type=ctype, related=related,
            extensions=tuple(extensions),
        )


def _int(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise CandidateError(f"bad {what} {text!r}")
    return int(text)


def _check_address(address: Address) -> None:
    if (
        not isinstance(address, tuple) or len(address) != 2
        or not isinstance(address[0], str) or not isinstance(address[1], int)
    ):
        raise CandidateError(f"bad address {address!r}")
    host, port = address
    if not host or any(c.isspace() for c in host) or not host.isprintable():
        raise CandidateError(f"bad connection address {host!r}")
    if not 0 <= port <= 65535:
        raise CandidateError(f"bad port {port}")


@dataclass(frozen=True)
class LocalBase:
    """One local socket the adapter owns, bound to ``address`` for ``component``.

    It is the *base* of the host candidate on it (RFC 8445 §5.1.1.1) and the ``via`` of every
    datagram sent or received there, including TURN traffic of the relays allocated from it."""

    component: int
    address: Address


@dataclass(frozen=True)
class Transmit:
    """A datagram the adapter must send from the socket ``via`` to ``dest``."""

    data: bytes
    dest: Address
    via: LocalBase


@dataclass(frozen=True)
class AppData:
    """Non-STUN data received for ``component`` (media), unwrapped from TURN if relayed.

    ``source`` is the peer's transport address (for relayed data, the peer behind the relay)."""

    component: int
    data: bytes
    source: Address
