"""Settings of a user agent: frozen dataclasses, one per section of the configuration file.

Every part of the user agent receives the section it needs, never a global. Each field carries a
``#:`` comment: :mod:`sipua.config` turns those into ``config/defaults.toml`` and the key
reference of ``docs/configuration.md``, so the comment is the documentation. Fields that may be
absent are ``X | None`` and default to None (TOML has no null: leaving a key out is how a file
says "unset").

``__post_init__`` checks values (ranges, enumerations, SIP URIs, ``HOST:PORT`` forms) and raises
:class:`SettingError`, a :class:`ValueError` that names the offending key; the loader adds the
file or environment variable and re-raises it as :class:`sipua.errors.ConfigError`. Types are
the loader's business (and mypy's for code that builds settings directly).
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from media.codecs import default_registry
from sipua import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "Account", "AnswerPolicy", "IceConfig", "IceFaults", "LoggingConfig", "MediaConfig",
    "SettingError", "Settings", "TurnServer", "UaSettings", "field_docs", "parse_hostport",
]

TRANSPORTS = ("udp", "tcp", "tls")
NOMINATIONS = ("regular", "aggressive")
CANDIDATE_TYPES = ("host", "srflx", "relay")
ICE_ROLES = ("auto", "controlling", "controlled")
ICE_COMPAT = ("rfc8445", "rfc5245")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SIP_PORT = 5060
SIPS_PORT = 5061
STUN_PORT = 3478  # RFC 8489 §9
TURNS_PORT = 5349  # RFC 8656 §4

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_USER = re.compile(r"^[^\s@<>\"]+$")


class SettingError(ValueError):
    """A setting has a bad value; ``keys`` are dotted paths relative to the raising dataclass.

    The first key is the one the message is about; the others took part in the check (so the
    loader can name the source that set any of them).
    """

    def __init__(self, keys: str | Sequence[str], problem: str) -> None:
        self.keys: tuple[str, ...] = (keys,) if isinstance(keys, str) else tuple(keys)
        self.problem = problem
        super().__init__(f"{self.keys[0]}: {problem}")

    def within(self, prefix: str) -> SettingError:
        """The same error with every key below ``prefix`` (``accounts.0``)."""
        return SettingError([f"{prefix}.{key}" for key in self.keys], self.problem)


# --- value checks shared by the sections ----------------------------------------------------------

def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _check_range(key: str, value: float, low: float | None = None, high: float | None = None,
                 *, unit: str = "") -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            want = f"a value from {low:g} to {high:g}"
        elif low is not None:
            want = f"a value of at least {low:g}"
        else:
            want = f"a value of at most {high:g}"
        raise SettingError(key, f"expected {want}{unit}, got {_show(value)}")


def _check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    options = tuple(choices)
    if value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise SettingError(key, f"expected one of {listed}, got {_show(value)}")


def _check_subset(key: str, values: tuple[str, ...], choices: Iterable[str],
                  *, allow_empty: bool = False) -> None:
    options = tuple(choices)
    if not values and not allow_empty:
        raise SettingError(key, f"expected at least one of {', '.join(map(repr, options))}")
    for value in values:
        if value not in options:
            listed = ", ".join(repr(c) for c in options)
            raise SettingError(key, f"expected each entry to be one of {listed}, got "
                                    f"{_show(value)}")
    _check_unique(key, values)


def _check_unique(key: str, values: Iterable[str], *, fold: bool = False) -> None:
    seen: set[str] = set()
    for value in values:
        norm = value.lower() if fold else value
        if norm in seen:
            raise SettingError(key, f"{_show(value)} is listed twice")
        seen.add(norm)


def _check_text(key: str, value: str | None) -> None:
    """Non-empty, one line: these values end up in SIP headers or file names."""
    if value is None:
        return
    if not value:
        raise SettingError(key, "expected a non-empty string (leave the key out to unset it)")
    if any(c in value for c in "\r\n\0"):
        raise SettingError(key, "expected a single line without control characters")


def _check_host(host: str) -> str:
    """The problem with a host name or IP literal, or '' when it is fine (RFC 3986 §3.2.2)."""
    if host.startswith("["):
        if not host.endswith("]"):
            return f"unbalanced bracket in {host!r}"
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return ""
    if ":" in host:
        return f"put IPv6 addresses in brackets, as in '[{host}]:5060'"
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
        return ""
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return f"{host!r} is not a valid host name"
    return ""


def parse_hostport(text: str, *, default_port: int | None = None,
                   allow_port_zero: bool = False) -> tuple[str, int | None]:
    """Split ``HOST[:PORT]`` (IPv6 as ``[ADDR]:PORT``) into the bare host and the port.

    Raises :class:`ValueError` with a message that says what is wrong. The returned host has
    no brackets, ready for a socket call.
    """
    if not text or text != text.strip():
        raise ValueError(f"expected HOST[:PORT], got {text!r}")
    port: int | None = default_port
    host = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unbalanced bracket in {text!r}")
        host, rest = text[: end + 1], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected ':PORT' after ']' in {text!r}")
            port = _parse_port(rest[1:], text, allow_port_zero)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _parse_port(port_text, text, allow_port_zero)
    problem = _check_host(host)
    if problem:
        raise ValueError(problem)
    if host.startswith("["):
        host = host[1:-1]
    return host, port


def _parse_port(text: str, whole: str, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not text.isdigit() or not low <= int(text) <= 65535:
        raise ValueError(f"port must be a number from {low} to 65535 in {whole!r}")
    return int(text)


def _check_hostport(key: str, value: str | None, *, ip_only: bool = False,
                    allow_port_zero: bool = False) -> None:
    if value is None:
        return
    try:
        host, _ = parse_hostport(value, allow_port_zero=allow_port_zero)
    except ValueError as exc:
        raise SettingError(key, f"expected HOST[:PORT], {exc}") from None
    if ip_only:
        try:
            ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            raise SettingError(key, f"expected an IP address to listen on, got {value!r}"
                               ) from None


@dataclass(frozen=True)
class _SipUri:
    scheme: str
    user: str
    host: str
    port: int | None


def _split_sip_uri(uri: str) -> _SipUri:
    """The parts of an address-of-record ``sip[s]:user@host[:port][;params]`` (RFC 3261 §19.1).

    Only what the settings need; :mod:`sipua.uri` is the full parser.
    """
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        hint = " (put the display name in display_name)" if "<" in uri else ""
        raise ValueError(f"expected a SIP URI such as 'sip:alice@example.org', got {uri!r}{hint}")
    if "?" in rest:
        raise ValueError(f"headers ('?...') are not allowed in {uri!r}")
    rest = rest.split(";", 1)[0]
    user, at, hostport = rest.rpartition("@")
    if not at or not user:
        raise ValueError(f"expected a user part, as in 'sip:alice@example.org', in {uri!r}")
    if not _USER.match(user):
        raise ValueError(f"bad user part {user!r} in {uri!r}")
    host, port = parse_hostport(hostport)
    return _SipUri(scheme.lower(), user, host, port)


@dataclass(frozen=True)
class _TurnUri:
    secure: bool
    host: str
    port: int
    transport: str


def _split_turn_uri(uri: str) -> _TurnUri:
    """``turn[s]:HOST[:PORT][?transport=udp|tcp]`` (RFC 7065 §3.1)."""
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() not in ("turn", "turns"):
        raise ValueError(f"expected a TURN URI such as 'turn:turn.example.org:3478"
                         f"?transport=udp', got {uri!r}")
    secure = scheme.lower() == "turns"
    hostport, question, query = rest.partition("?")
    transport = "tcp" if secure else "udp"
    if question:
        name, eq, value = query.partition("=")
        if name != "transport" or not eq or value not in ("udp", "tcp"):
            raise ValueError(f"expected '?transport=udp' or '?transport=tcp' in {uri!r}")
        transport = value
    host, port = parse_hostport(hostport, default_port=TURNS_PORT if secure else STUN_PORT)
    assert port is not None
    return _TurnUri(secure, host, port, transport)


def _stun_hostport(text: str) -> str:
    return text[5:] if text.lower().startswith("stun:") else text


# --- the sections ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class UaSettings:
    """The SIP side of the user agent: identity, sockets, TLS and the RFC 3261 timers."""

    #: User-Agent header value, sent in requests (and as Server in responses) (RFC 3261 §20.41).
    user_agent: str = f"sipua/{__version__}"
    #: Local addresses to listen on, as "IP[:PORT]" (IPv6 in brackets, "[::]:5060"); each is used
    #: for every enabled transport. A missing port means 5060 (5061 for TLS); port 0 picks any.
    listen: tuple[str, ...] = ("0.0.0.0:5060",)
    #: SIP transports to enable: any of "udp", "tcp", "tls" (RFC 3261 §18).
    transports: tuple[str, ...] = ("udp", "tcp")
    #: PEM file of CA certificates that verify TLS peers; unset = the system's trust store.
    tls_ca_file: str | None = field(default=None, metadata={"path": True,
                                                            "example": "/etc/sipua/ca.pem"})
    #: PEM certificate chain this agent presents over TLS (needed to accept TLS connections).
    tls_cert_file: str | None = field(default=None, metadata={"path": True,
                                                              "example": "/etc/sipua/cert.pem"})
    #: PEM private key of tls_cert_file.
    tls_key_file: str | None = field(default=None, metadata={"path": True,
                                                             "example": "/etc/sipua/key.pem"})
    #: Verify the TLS peer's certificate and host name; turn off only in a lab.
    tls_verify: bool = True
    #: T1, the round-trip time estimate in seconds (RFC 3261 §17.1.1.1, Table 4).
    t1: float = 0.5
    #: T2, the longest retransmit interval of non-INVITE requests and INVITE responses, in
    #: seconds (RFC 3261 Table 4).
    t2: float = 4.0
    #: T4, how long the network may hold a message, in seconds (RFC 3261 Table 4).
    t4: float = 5.0
    #: A request larger than this many bytes goes over TCP instead of UDP (RFC 3261 §18.1.1);
    #: 65535 never switches.
    tcp_threshold: int = 1300
    #: Seconds between CRLF keep-alives on TCP/TLS flows (RFC 5626 §4.4.1: 95-120 s without a
    #: Flow-Timer from the registrar); 0 disables them.
    keepalive_interval: float = 120.0
    #: Calls in progress at most (both directions); a new incoming call beyond it is answered
    #: 486 Busy Here and gets no media sockets. 0 means unlimited.
    max_calls: int = 200
    #: Live SIP transactions at most, server and client each: a new request from a peer beyond
    #: it is answered 503 Service Unavailable with Retry-After and keeps no state (RFC 3261
    #: §21.5.4); one of ours beyond it fails at once. One source address (IP and port) may hold
    #: at most 1,000 server transactions.
    max_transactions: int = 10000

    def __post_init__(self) -> None:
        _check_text("user_agent", self.user_agent)
        if not self.listen:
            raise SettingError("listen", "expected at least one address to listen on")
        for address in self.listen:
            _check_hostport("listen", address, ip_only=True, allow_port_zero=True)
        _check_unique("listen", self.listen)
        _check_subset("transports", self.transports, TRANSPORTS)
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            _check_text(name, getattr(self, name))
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            other = "tls_cert_file" if missing == "tls_key_file" else "tls_key_file"
            raise SettingError((missing, other), f"expected a value too, since {other} is set")
        _check_range("t1", self.t1, 0.001, 60.0, unit=" seconds")
        _check_range("t2", self.t2, 0.001, 600.0, unit=" seconds")
        if self.t2 < self.t1:
            raise SettingError(("t2", "t1"), f"expected t2 >= t1 ({self.t1:g}), got {self.t2:g}")
        _check_range("t4", self.t4, 0.001, 600.0, unit=" seconds")
        _check_range("tcp_threshold", self.tcp_threshold, 200, 65535, unit=" bytes")
        _check_range("keepalive_interval", self.keepalive_interval, 0.0, unit=" seconds")
        _check_range("max_calls", self.max_calls, 0)
        _check_range("max_transactions", self.max_transactions, 1)

    def listen_addresses(self) -> tuple[tuple[str, int | None], ...]:
        """``listen`` as (bare IP, port or None for the transport's default) pairs."""
        return tuple(parse_hostport(a, allow_port_zero=True) for a in self.listen)


@dataclass(frozen=True)
class Account:
    """One SIP identity: an address-of-record, its credentials and how to register it."""

    #: Short name that selects the account (CLI --account, SIPUA_ACCOUNTS__ALICE__PASSWORD):
    #: letters, digits, '-' and '_'.
    name: str = field(metadata={"example": "alice"})
    #: Address-of-record, "sip:user@domain" (RFC 3261 §10.2).
    uri: str = field(metadata={"example": "sip:alice@example.org"})
    #: Digest user name (RFC 3261 §22.4); unset = the user part of uri.
    auth_username: str | None = field(default=None, metadata={"example": "alice"})
    #: Digest password; keep it out of shared files: set SIPUA_ACCOUNTS__ALICE__PASSWORD.
    password: str | None = field(default=None, repr=False, metadata={"example": "secret"})
    #: Display name in From and Contact ("Alice").
    display_name: str | None = field(default=None, metadata={"example": "Alice"})
    #: Registrar as "HOST[:PORT]"; unset = the domain of uri (RFC 3261 §10.2.6).
    registrar: str | None = field(default=None, metadata={"example": "sip.example.org:5060"})
    #: Every request goes to this "HOST[:PORT]" first (RFC 3261 §8.1.2); unset = none.
    outbound_proxy: str | None = field(default=None,
                                       metadata={"example": "proxy.example.org:5060"})
    #: Transport to the registrar and proxy: "udp", "tcp" or "tls" (enabled in ua.transports).
    transport: str = "udp"
    #: Registration lifetime asked for, in seconds (RFC 3261 §10.2.1.1); refreshed before expiry.
    expires: int = 600
    #: Register when the agent starts; false for a call-only or peer-to-peer account.
    register: bool = True
    #: Nomination for this account's calls, "regular" or "aggressive"; unset = ice.nomination.
    nomination: str | None = field(default=None, metadata={"example": "aggressive"})

    def __post_init__(self) -> None:
        if not _ACCOUNT_NAME.match(self.name):
            raise SettingError("name", f"expected letters, digits, '-' or '_', got "
                                       f"{_show(self.name)}")
        try:
            _split_sip_uri(self.uri)
        except ValueError as exc:
            raise SettingError("uri", str(exc)) from None
        for name in ("auth_username", "password", "display_name"):
            _check_text(name, getattr(self, name))
        _check_hostport("registrar", self.registrar)
        _check_hostport("outbound_proxy", self.outbound_proxy)
        _check_choice("transport", self.transport, TRANSPORTS)
        _check_range("expires", self.expires, 1, 2**32 - 1, unit=" seconds")
        if self.nomination is not None:
            _check_choice("nomination", self.nomination, NOMINATIONS)

    @property
    def user(self) -> str:
        """The user part of ``uri``."""
        return _split_sip_uri(self.uri).user

    @property
    def domain(self) -> str:
        """The host part of ``uri`` (IPv6 without brackets)."""
        return _split_sip_uri(self.uri).host

    @property
    def auth_user(self) -> str:
        """The digest user name to use: ``auth_username`` or the user part of ``uri``."""
        return self.auth_username if self.auth_username is not None else self.user

    def registrar_hostport(self) -> tuple[str, int | None]:
        """Where REGISTER goes: ``registrar``, else the host and port of ``uri``."""
        if self.registrar is not None:
            return parse_hostport(self.registrar)
        parts = _split_sip_uri(self.uri)
        return parts.host, parts.port


@dataclass(frozen=True)
class TurnServer:
    """A TURN server for relayed candidates, with its long-term credentials (RFC 8656 §9.2)."""

    #: "turn:HOST[:PORT][?transport=udp|tcp]" or "turns:..." (RFC 7065); port 3478 (turns 5349).
    uri: str = field(metadata={"example": "turn:turn.example.org:3478?transport=udp"})
    #: Long-term credential user name.
    username: str = ""
    #: Long-term credential password.
    password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        try:
            _split_turn_uri(self.uri)
        except ValueError as exc:
            raise SettingError("uri", str(exc)) from None

    @property
    def host(self) -> str:
        """Server host (IPv6 without brackets)."""
        return _split_turn_uri(self.uri).host

    @property
    def port(self) -> int:
        """Server port, defaulted by scheme."""
        return _split_turn_uri(self.uri).port

    @property
    def transport(self) -> str:
        """"udp" or "tcp": how this agent reaches the server."""
        return _split_turn_uri(self.uri).transport

    @property
    def secure(self) -> bool:
        """True for ``turns:`` (TLS or DTLS to the server)."""
        return _split_turn_uri(self.uri).secure


@dataclass(frozen=True)
class IceFaults:
    """Fault injection on the STUN traffic with the peer, to see how its ICE copes."""

    # Affected: checks, their responses, consent checks and keepalives to and from the peer,
    # also when relayed through TURN. Never media, never STUN or TURN server traffic. Random
    # choices use the call's random source (ice/faults.py).

    #: Probability (0 to 1) of dropping a Binding request (check or consent check) from the peer.
    drop_requests_in: float = 0.0
    #: Probability (0 to 1) of dropping a Binding request of ours before it is sent.
    drop_requests_out: float = 0.0
    #: Probability (0 to 1) of dropping a response (success or error) from the peer.
    drop_responses_in: float = 0.0
    #: Probability (0 to 1) of dropping a response of ours before it is sent.
    drop_responses_out: float = 0.0
    #: Seconds after the checks start from which all STUN to and from the peer is dropped (a
    #: path cut: consent is lost after consent_timeout, RFC 7675 §5.1); 0 never.
    drop_after: float = 0.0
    #: Seconds each STUN message to the peer is held back before it is sent.
    delay: float = 0.0
    #: As the controlling agent, never nominate (no USE-CANDIDATE): checks succeed but the peer
    #: never completes.
    withhold_nomination: bool = False

    def __post_init__(self) -> None:
        for name in ("drop_requests_in", "drop_requests_out", "drop_responses_in",
                     "drop_responses_out"):
            _check_range(name, getattr(self, name), 0.0, 1.0, unit=" (a probability)")
        _check_range("drop_after", self.drop_after, 0.0, 86400.0, unit=" seconds")
        _check_range("delay", self.delay, 0.0, 60.0, unit=" seconds")

    @property
    def active(self) -> bool:
        """Some fault is configured."""
        return self != IceFaults()


@dataclass(frozen=True)
class IceConfig:
    """Interactive Connectivity Establishment for media (RFC 8445, RFC 8839 for SDP)."""

    #: Use ICE; false sends media to the SDP connection address only.
    enabled: bool = True
    #: STUN servers for server-reflexive candidates, "HOST[:PORT]" or "stun:HOST[:PORT]"
    #: (port 3478) (RFC 8445 §5.1.1.2).
    stun_servers: tuple[str, ...] = ()
    #: TURN servers for relayed candidates (RFC 8656), one [[ice.turn_servers]] table each.
    turn_servers: tuple[TurnServer, ...] = ()
    #: How the controlling agent nominates: "regular" (RFC 8445 §8.1.1) or "aggressive"
    #: (RFC 5245 §8.1.1.2).
    nomination: str = "regular"
    #: Pacing interval Ta between checks, in seconds (RFC 8445 §14.2 allows other values than
    #: 50 ms "based on the characteristics of the associated data": a check is smaller than
    #: the RTP packet sent every 20 ms). Not below 5 ms. Proposed to the peer as a=ice-pacing;
    #: when the peer proposes a longer one, both use that (RFC 8445 §14.2). With compat
    #: "rfc5245" at least 20 ms, RFC 5245 §16.1's floor for RTP.
    ta: float = 0.015
    #: Be an ICE-lite agent: host candidates only, answer checks, never send them (RFC 8445 §2.5).
    lite: bool = False
    #: Gather IPv6 candidates too.
    ipv6: bool = False
    #: Offer RTP and RTCP on one component (RFC 5761); false adds a second component for RTCP.
    rtcp_mux: bool = True
    #: Send a Binding indication on a selected pair idle this long, in seconds (RFC 8445 §11).
    keepalive_interval: float = 15.0
    #: Mean seconds between consent checks, randomized 0.8-1.2 (RFC 7675 §5.1); 0 disables.
    consent_interval: float = 5.0
    #: Media stops after this many seconds without a consent response (RFC 7675 §5.1).
    consent_timeout: float = 30.0
    #: Candidate types to gather and offer: any of "host", "srflx", "relay".
    candidate_types: tuple[str, ...] = CANDIDATE_TYPES
    #: Interfaces (names such as "eth0" or IP addresses) to gather host candidates on; empty
    #: means all.
    interfaces: tuple[str, ...] = ()
    #: Controlling agent sends an updated offer with the selected candidates once ICE completes
    #: (RFC 5245 §9.1.3), for middleboxes that only read m=/c= lines.
    send_updated_offer: bool = True
    #: Role to start in: "auto" (the offerer's full agent is controlling, RFC 8445 §6.1.1),
    #: "controlling" or "controlled" (forced, for testing a peer's role handling). Role-conflict
    #: repair (RFC 8445 §7.3.1.1) may still switch it during the checks.
    role: str = "auto"
    #: Fixed 64-bit tie-breaker, 0 to 2^64-1, for ICE-CONTROLLING/ICE-CONTROLLED (RFC 8445
    #: §7.1.3); unset = random per call. Fixing both sides' values decides role conflicts.
    tie_breaker: int | None = field(default=None, metadata={"example": 1234567890})
    #: Where RFC 8445 and RFC 5245 differ: "rfc8445" offers a=ice-options:ice2 (RFC 8445 §10,
    #: RFC 8839 §5.6) and sends the updated offer only if send_updated_offer is true; "rfc5245"
    #: offers no ice2 and always sends the updated offer (RFC 5245 §9.1.3). Both handle a
    #: USE-CANDIDATE the same way (RFC 5245 §7.2.1.5 = RFC 8445 §7.3.1.5) and retransmit an
    #: in-progress check at once on the peer's check; nomination mode and Ta are set apart.
    compat: str = "rfc8445"
    #: Fault injection for testing peers: the [ice.faults] table.
    faults: IceFaults = field(default_factory=IceFaults)

    def __post_init__(self) -> None:
        for server in self.stun_servers:
            _check_hostport("stun_servers", _stun_hostport(server))
        _check_unique("stun_servers", self.stun_servers)
        _check_unique("turn_servers", [t.uri for t in self.turn_servers])
        _check_choice("nomination", self.nomination, NOMINATIONS)
        _check_range("ta", self.ta, 0.005, 10.0, unit=" seconds")
        _check_range("keepalive_interval", self.keepalive_interval, 0.1, 3600.0, unit=" seconds")
        _check_range("consent_interval", self.consent_interval, 0.0, 3600.0, unit=" seconds")
        _check_range("consent_timeout", self.consent_timeout, 0.1, 3600.0, unit=" seconds")
        if self.consent_interval > 0 and self.consent_timeout <= self.consent_interval:
            raise SettingError(("consent_timeout", "consent_interval"),
                               f"expected more than consent_interval ({self.consent_interval:g}),"
                               f" got {self.consent_timeout:g}")
        _check_subset("candidate_types", self.candidate_types, CANDIDATE_TYPES)
        for name in self.interfaces:
            if not name or any(c.isspace() for c in name):
                raise SettingError("interfaces", f"expected interface names or addresses, got "
                                                 f"{_show(name)}")
        _check_unique("interfaces", self.interfaces)
        _check_choice("role", self.role, ICE_ROLES)
        _check_choice("compat", self.compat, ICE_COMPAT)
        kinds = set(self.candidate_types)
        if "host" not in kinds and not (
                ("srflx" in kinds and self.stun_servers)
                or ("relay" in kinds and self.turn_servers)):
            need = " or ".join(
                name for kind, name in (("srflx", "stun_servers"), ("relay", "turn_servers"))
                if kind in kinds)
            raise SettingError(("candidate_types", "stun_servers", "turn_servers"),
                               f"without 'host', {_show(list(self.candidate_types))} needs a "
                               f"server in ice.{need} to gather any candidate")
        if self.tie_breaker is not None and not 0 <= self.tie_breaker <= 2**64 - 1:
            raise SettingError("tie_breaker", f"expected an integer from 0 to 2^64-1 "
                                              f"({2**64 - 1}), got {_show(self.tie_breaker)}")

    def stun_addresses(self) -> tuple[tuple[str, int], ...]:
        """``stun_servers`` as (host, port) pairs, port defaulted to 3478."""
        out = []
        for server in self.stun_servers:
            host, port = parse_hostport(_stun_hostport(server), default_port=STUN_PORT)
            assert port is not None
            out.append((host, port))
        return tuple(out)


#: Values of media.srtp (docs/security.md).
SRTP_MODES = ("off", "optional", "mandatory")


@dataclass(frozen=True)
class MediaConfig:
    """Audio over RTP: codecs, packetization, DTMF, jitter buffer, RTCP."""

    #: Audio codecs to offer and accept, most preferred first (RFC 3551 names).
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    #: Packetization time in milliseconds (RFC 4566 §6 a=ptime).
    ptime: int = 20
    #: Dynamic payload type offered for telephone-event (RFC 4733), 96-127.
    dtmf_payload_type: int = 101
    #: Smallest playout delay of the jitter buffer, in milliseconds.
    jitter_min_ms: int = 20
    #: Largest playout delay of the adaptive jitter buffer, in milliseconds.
    jitter_max_ms: int = 200
    #: Send RTP to where the peer's RTP comes from when it differs from the SDP (symmetric RTP,
    #: RFC 4961); used when ICE is off.
    symmetric_rtp_latching: bool = True
    #: Mean seconds between RTCP reports (RFC 3550 §6.2 recommends 5).
    rtcp_interval: float = 5.0
    #: SRTP with SDES keys (RFC 4568): "off" offers plain RTP and refuses RTP/SAVP offers (488);
    #: "optional" offers RTP/AVP with a=crypto (best effort, used when the answer has crypto) and
    #: accepts SRTP offers; "mandatory" offers RTP/SAVP and refuses (488) offers, or ends calls
    #: whose answers, without usable a=crypto. Table in docs/security.md.
    srtp: str = "off"

    def __post_init__(self) -> None:
        known = default_registry().names()
        if not self.codecs:
            raise SettingError("codecs", f"expected at least one of {', '.join(known)}")
        for name in self.codecs:
            if name.upper() not in (k.upper() for k in known):
                raise SettingError("codecs", f"expected each entry to be one of "
                                             f"{', '.join(map(repr, known))}, got {_show(name)}")
        _check_unique("codecs", self.codecs, fold=True)
        _check_range("ptime", self.ptime, 10, 200, unit=" ms")
        _check_range("dtmf_payload_type", self.dtmf_payload_type, 96, 127)  # RFC 3551 §3
        _check_range("jitter_min_ms", self.jitter_min_ms, 0, 5000, unit=" ms")
        _check_range("jitter_max_ms", self.jitter_max_ms, 0, 5000, unit=" ms")
        if self.jitter_max_ms < self.jitter_min_ms:
            raise SettingError(("jitter_max_ms", "jitter_min_ms"),
                               f"expected at least jitter_min_ms ({self.jitter_min_ms}), got "
                               f"{self.jitter_max_ms}")
        _check_range("rtcp_interval", self.rtcp_interval, 0.1, 3600.0, unit=" seconds")
        _check_choice("srtp", self.srtp, SRTP_MODES)


@dataclass(frozen=True)
class AnswerPolicy:
    """What to do with incoming calls: the knobs of an auto-answering test rig."""

    #: Answer incoming calls without asking.
    auto_answer: bool = False
    #: Seconds to ring (180 Ringing) before answering.
    delay: float = 0.0
    #: Final response: 200 answers; 400-699 rejects with that code (486 Busy Here, 603 Decline).
    code: int = 200
    #: Calls in progress at most; more are answered 486 Busy Here. 0 means unlimited.
    max_calls: int = 0
    #: WAV file played to the caller after answering; unset = silence (or echo).
    play: str | None = field(default=None, metadata={"path": True, "example": "prompt.wav"})
    #: WAV file that records what the caller sends; unset = not recorded.
    record: str | None = field(default=None, metadata={"path": True, "example": "calls/in.wav"})
    #: Send the caller's audio back (a media loopback); excludes play.
    echo: bool = False
    #: Hang up this many seconds after answering; unset = wait for the caller.
    duration: float | None = field(default=None, metadata={"example": 30.0})

    def __post_init__(self) -> None:
        _check_range("delay", self.delay, 0.0, 3600.0, unit=" seconds")
        if self.code != 200 and not 400 <= self.code <= 699:
            raise SettingError("code", f"expected 200 or a code from 400 to 699, got {self.code}")
        _check_range("max_calls", self.max_calls, 0)
        _check_text("play", self.play)
        _check_text("record", self.record)
        if self.echo and self.play is not None:
            raise SettingError(("echo", "play"), "expected false when play is set (one source)")
        if self.duration is not None:
            _check_range("duration", self.duration, 0.001, unit=" seconds")


@dataclass(frozen=True)
class LoggingConfig:
    """Where log lines go and how many."""

    #: Least severe level logged: "debug", "info", "warning", "error" or "critical" (any case).
    level: str = "info"
    #: Append the log to this file instead of standard error.
    file: str | None = field(default=None, metadata={"path": True, "example": "sipua.log"})
    #: Log every SIP message sent and received, in full.
    log_sip: bool = False
    #: One JSON object per line instead of text.
    json: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", self.level.lower())
        _check_choice("level", self.level, LOG_LEVELS)
        _check_text("file", self.file)


@dataclass(frozen=True)
class Settings:
    """Everything a user agent is configured with; see docs/configuration.md."""

    #: SIP identity, sockets, TLS and timers.
    ua: UaSettings = field(default_factory=UaSettings)
    #: SIP accounts, one [[accounts]] table each; the first is the default.
    accounts: tuple[Account, ...] = ()
    #: ICE for media.
    ice: IceConfig = field(default_factory=IceConfig)
    #: Codecs, packetization, jitter buffer, RTCP.
    media: MediaConfig = field(default_factory=MediaConfig)
    #: Handling of incoming calls.
    answer: AnswerPolicy = field(default_factory=AnswerPolicy)
    #: Log level and destination.
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        _check_unique("accounts", [a.name for a in self.accounts])
        for index, account in enumerate(self.accounts):
            if account.transport not in self.ua.transports:
                raise SettingError(
                    (f"accounts.{index}.transport", "ua.transports"),
                    f"transport {account.transport!r} is not enabled in ua.transports "
                    f"({', '.join(self.ua.transports)})")

    def account(self, name: str | None = None) -> Account:
        """The account called ``name``, or the first one; :class:`KeyError` when absent."""
        if name is None:
            if not self.accounts:
                raise KeyError("no account is configured")
            return self.accounts[0]
        for account in self.accounts:
            if account.name == name:
                return account
        known = ", ".join(a.name for a in self.accounts) or "none"
        raise KeyError(f"no account named {name!r} (configured: {known})")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, scalars, None) that :meth:`from_dict` turns back."""
        result = _plain(self)
        assert isinstance(result, dict)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "settings") -> Settings:
        """Settings from plain data shaped like the TOML file (None allowed for unset keys).

        Raises :class:`sipua.errors.ConfigError` naming ``source`` and the key.
        """
        from sipua.config import settings_from_dict

        return settings_from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> Settings:
        """Load defaults < file < SIPUA_* environment < overrides; see :func:`load_settings`."""
        from sipua.config import load_settings

        return load_settings(path, env=env, overrides=overrides)


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comment above each field of a settings dataclass, joined into one line."""
    names = {f.name for f in fields(cls)}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        match = re.match(r"([A-Za-z_]\w*)\s*:", text)
        if match and pending and match.group(1) in names:
            docs[match.group(1)] = " ".join(pending)
        pending = []
    return docs
