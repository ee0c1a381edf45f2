"""HTTP Digest authentication for SIP (RFC 3261 §22; RFC 2617, RFC 7616, RFC 8760).

Client side: :func:`parse_challenges` reads WWW-Authenticate / Proxy-Authenticate values,
:func:`choose_challenge` picks the strongest supported algorithm (SHA-512-256 over SHA-256 over
MD5, RFC 8760 §2.4), :func:`answer_challenge` computes the Authorization value, and
:class:`DigestClient` keeps what a registration needs across requests: credentials per realm,
the nonce and nonce-count of every realm, stale=true handling and wrong-credential detection.

Server side (the embedded registrar): :func:`make_challenge`, :func:`parse_authorization` and
:func:`verify_authorization`. Nonce issuance and expiry belong to the caller, which owns the clock.

Sans-IO: cnonces come from the injected ``rng``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from sipua.message import Response, SipParseError

__all__ = [
    "ALGORITHMS",
    "Challenge",
    "DigestAuthFailed",
    "DigestClient",
    "DigestCredentials",
    "answer_challenge",
    "choose_challenge",
    "digest_ha1",
    "make_challenge",
    "parse_authorization",
    "parse_challenges",
    "verify_authorization",
]

logger = logging.getLogger(__name__)


def _hasher(name: str) -> Callable[[bytes], str]:
    def digest(data: bytes) -> str:
        return hashlib.new(name, data).hexdigest()
    return digest


def _available(name: str) -> bool:
    try:
        hashlib.new(name, b"")
    except ValueError:
        return False
    return True


#: Algorithm name (upper-case, without -SESS) -> (hash function, strength rank).
_HASHES: dict[str, tuple[Callable[[bytes], str], int]] = {"MD5": (_hasher("md5"), 1),
                                                          "SHA-256": (_hasher("sha256"), 2)}
if _available("sha512_256"):  # RFC 7616 §3.2; depends on the OpenSSL build
    _HASHES["SHA-512-256"] = (_hasher("sha512_256"), 3)

#: Every algorithm token this module can answer, -sess variants included.
ALGORITHMS = tuple(sorted([*_HASHES, *(f"{name}-SESS" for name in _HASHES)]))

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# auth-param: token "=" ( token / quoted-string ), separated by commas (RFC 7616 §3.3).
_PARAM_RE = re.compile(
    r'[ \t]*([A-Za-z0-9\-.!%*_+`\'~]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^\s,"]+)[ \t]*(,|$)',
    re.DOTALL)
_SCHEME_RE = re.compile(r"[ \t,]*([A-Za-z0-9\-.!%*_+`'~]+)(?:[ \t]+|$)")


class DigestAuthFailed(Exception):
    """The credentials are wrong, missing for a realm, or no challenge can be answered."""

    def __init__(self, message: str, realm: str | None = None) -> None:
        super().__init__(message)
        self.realm = realm


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """A user name and password; ``realm`` None means "any realm that asks"."""

    username: str
    password: str = field(repr=False)  # never in a repr, so never in a log line
    realm: str | None = None


@dataclass(frozen=True, slots=True)
class Challenge:
    """One Digest challenge (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    """Upper-case algorithm token, e.g. "MD5", "SHA-256-SESS"."""
    qop: tuple[str, ...] = ()
    """The qop options offered, lower-case; empty for an RFC 2069 style challenge."""
    opaque: str | None = None
    stale: bool = False
    userhash: bool = False
    proxy: bool = False
    """True when it came in Proxy-Authenticate (answer with Proxy-Authorization)."""
    params: dict[str, str] = field(default_factory=dict)
    """Every parameter, names lower-cased, values unquoted."""

    @property
    def supported(self) -> bool:
        """Whether this module can answer it (known algorithm; qop absent, auth or auth-int)."""
        if self.algorithm not in ALGORITHMS:
            return False
        return not self.qop or "auth" in self.qop or "auth-int" in self.qop

    @property
    def strength(self) -> int:
        """Rank of the hash function (0 when unsupported); higher is stronger."""
        base = self.algorithm.removesuffix("-SESS")
        entry = _HASHES.get(base)
        return entry[1] if entry is not None and self.supported else 0


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1], flags=re.DOTALL)
    return value


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_auth_params(text: str, start: int) -> tuple[dict[str, str], int]:
    """Parse auth-params from ``start``; stop before a token that starts a new challenge."""
    params: dict[str, str] = {}
    position = start
    length = len(text)
    while position < length:
        match = _PARAM_RE.match(text, position)
        if match is None:
            break
        params[match.group(1).lower()] = _unquote(match.group(2))
        position = match.end()
    return params, position


def _split_challenges(value: str) -> list[tuple[str, dict[str, str]]]:
    """(scheme, params) for each challenge in one header value (RFC 7235 §4.1 allows several)."""
    out: list[tuple[str, dict[str, str]]] = []
    position = 0
    value = value.strip()
    while position < len(value):
        match = _SCHEME_RE.match(value, position)
        if match is None:
            raise SipParseError(f"bad authentication header {value[:80]!r}")
        scheme = match.group(1)
        params, position = _parse_auth_params(value, match.end())
        out.append((scheme, params))
    return out


def parse_challenges(value: str, *, proxy: bool = False) -> list[Challenge]:
    """The Digest challenges in one WWW-Authenticate / Proxy-Authenticate value.

    Other schemes are skipped; a Digest challenge without realm or nonce raises
    :class:`SipParseError`.
    """
    challenges: list[Challenge] = []
    for scheme, params in _split_challenges(value):
        if scheme.lower() != "digest":
            continue
        if "realm" not in params or "nonce" not in params:
            raise SipParseError("Digest challenge without realm or nonce")
        qop = tuple(item.strip().lower() for item in params.get("qop", "").split(",")
                    if item.strip())
        challenges.append(Challenge(
            realm=params["realm"], nonce=params["nonce"],
            algorithm=params.get("algorithm", "MD5").upper(), qop=qop,
            opaque=params.get("opaque"), stale=params.get("stale", "").lower() == "true",
            userhash=params.get("userhash", "").lower() == "true", proxy=proxy, params=params))
    return challenges


def challenges_of(response: Response) -> list[Challenge]:
    """Every Digest challenge of a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate)."""
    out: list[Challenge] = []
    for value in response.headers.get_all("WWW-Authenticate"):
        out.extend(parse_challenges(value))
    for value in response.headers.get_all("Proxy-Authenticate"):
        out.extend(parse_challenges(value, proxy=True))
    return out


def choose_challenge(challenges: list[Challenge]) -> Challenge | None:
    """The strongest supported challenge (RFC 8760 §2.4); the first of equal strength."""
    best: Challenge | None = None
    for challenge in challenges:
        if challenge.strength > (best.strength if best is not None else 0):
            best = challenge
    return best


def _hash_of(algorithm: str) -> Callable[[bytes], str]:
    entry = _HASHES.get(algorithm.upper().removesuffix("-SESS"))
    if entry is None:
        raise DigestAuthFailed(f"unsupported digest algorithm {algorithm!r}")
    return entry[0]


def digest_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password), what a users file may store instead of the password."""
    return _hash_of(algorithm)(f"{username}:{realm}:{password}".encode())


def _response_digest(*, algorithm: str, ha1: str, nonce: str, method: str, uri: str,
                     qop: str | None, nc: str, cnonce: str, body: bytes) -> str:
    """request-digest of RFC 7616 §3.4.1 (RFC 2617 §3.2.2.1 without qop)."""
    digest = _hash_of(algorithm)
    if algorithm.upper().endswith("-SESS"):
        ha1 = digest(f"{ha1}:{nonce}:{cnonce}".encode())  # RFC 7616 §3.4.2
    if qop == "auth-int":
        ha2 = digest(f"{method}:{uri}:{digest(body)}".encode())  # RFC 7616 §3.4.3
    else:
        ha2 = digest(f"{method}:{uri}".encode())
    if qop is None:
        return digest(f"{ha1}:{nonce}:{ha2}".encode())
    return digest(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


def answer_challenge(challenge: Challenge, credentials: DigestCredentials, method: str,
                     uri: str, *, nc: int = 1, cnonce: str | None = None,
                     body: bytes = b"") -> str:
    """The Authorization / Proxy-Authorization value answering ``challenge``.

    qop=auth is preferred when offered, auth-int otherwise; without qop the RFC 2069 form is
    used. ``cnonce`` is required when a qop is used.
    """
    if not challenge.supported:
        raise DigestAuthFailed(f"cannot answer {challenge.algorithm} challenge",
                               challenge.realm)
    qop: str | None = None
    if challenge.qop:
        qop = "auth" if "auth" in challenge.qop else "auth-int"
        if cnonce is None:
            raise ValueError("a cnonce is required with qop")
    needs_cnonce = qop is not None or challenge.algorithm.endswith("-SESS")
    if needs_cnonce and cnonce is None:
        raise ValueError("a cnonce is required with -sess algorithms")
    nc_text = f"{nc:08x}"
    ha1 = digest_ha1(credentials.username, challenge.realm, credentials.password,
                     challenge.algorithm)
    response = _response_digest(algorithm=challenge.algorithm, ha1=ha1, nonce=challenge.nonce,
                                method=method, uri=uri, qop=qop, nc=nc_text,
                                cnonce=cnonce or "", body=body)
    username = credentials.username
    if challenge.userhash:  # RFC 7616 §3.4.4
        username = _hash_of(challenge.algorithm)(f"{username}:{challenge.realm}".encode())
    parts = [f"Digest username={_quote(username)}", f"realm={_quote(challenge.realm)}",
             f"nonce={_quote(challenge.nonce)}", f"uri={_quote(uri)}",
             f"response={_quote(response)}",
             f"algorithm={challenge.params.get('algorithm', 'MD5')}"]
    if needs_cnonce:
        parts.append(f"cnonce={_quote(cnonce or '')}")
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop is not None:
        parts.append(f"qop={qop}")
        parts.append(f"nc={nc_text}")
    if challenge.userhash:
        parts.append("userhash=true")
    return ", ".join(parts)


@dataclass(slots=True)
class _RealmState:
    challenge: Challenge
    credentials: DigestCredentials
    nc: int = 0
    answered: bool = False
    """Credentials were sent for this realm since the last success."""


class DigestClient:
    """Answers 401/407 challenges across the requests of one registration or call.

    Call :meth:`handle_challenge` with each 401/407: it returns the header lines to add to the
    re-sent request (with CSeq incremented by the caller, RFC 3261 §22.2) or raises
    :class:`DigestAuthFailed` when the credentials are wrong: a second challenge for a realm that
    is not stale=true after credentials were sent (RFC 3261 §22.2). A stale=true challenge
    carries a new nonce and is answered without counting as a failure (RFC 7616 §3.3).
    Call :meth:`succeeded` once a request with credentials gets another final response.
    :meth:`authorization` gives headers for later requests with the cached nonces.
    """

    def __init__(self, credentials: DigestCredentials | list[DigestCredentials],
                 rng: random.Random) -> None:
        self._credentials = credentials if isinstance(credentials, list) else [credentials]
        self._rng = rng
        self._realms: dict[tuple[str, bool], _RealmState] = {}

    def _credentials_for(self, realm: str) -> DigestCredentials | None:
        wildcard: DigestCredentials | None = None
        for credentials in self._credentials:
            if credentials.realm == realm:
                return credentials
            if credentials.realm is None and wildcard is None:
                wildcard = credentials
        return wildcard

    def _cnonce(self) -> str:
        return f"{self._rng.getrandbits(96):024x}"

    def _answer(self, state: _RealmState, method: str, uri: str, body: bytes) -> tuple[str, str]:
        state.nc += 1  # RFC 7616 §3.4: nc counts the requests sent with this nonce
        value = answer_challenge(state.challenge, state.credentials, method, uri, nc=state.nc,
                                 cnonce=self._cnonce(), body=body)
        name = "Proxy-Authorization" if state.challenge.proxy else "Authorization"
        return name, value

    def handle_challenge(self, response: Response, method: str, uri: str,
                         body: bytes = b"") -> list[tuple[str, str]]:
        """Header lines answering every realm challenged in ``response`` (401 or 407)."""
        by_realm: dict[tuple[str, bool], list[Challenge]] = {}
        for challenge in challenges_of(response):
            by_realm.setdefault((challenge.realm, challenge.proxy), []).append(challenge)
        if not by_realm:
            raise DigestAuthFailed(f"{response.status} without a Digest challenge")
        headers: list[tuple[str, str]] = []
        for key, challenges in by_realm.items():
            chosen = choose_challenge(challenges)
            if chosen is None:
                raise DigestAuthFailed(f"no supported digest algorithm for realm {key[0]!r}",
                                       key[0])
            state = self._realms.get(key)
            if state is not None and state.answered and not chosen.stale:
                raise DigestAuthFailed(f"credentials rejected for realm {key[0]!r}", key[0])
            if state is None:
                credentials = self._credentials_for(chosen.realm)
                if credentials is None:
                    raise DigestAuthFailed(f"no credentials for realm {key[0]!r}", key[0])
                state = _RealmState(chosen, credentials)
                self._realms[key] = state
            if chosen.stale:
                logger.debug("stale nonce for realm %r: answering the new one", chosen.realm)
            if chosen.nonce != state.challenge.nonce:
                state.nc = 0  # nc counts per nonce
            state.challenge = chosen
            state.answered = True
            headers.append(self._answer(state, method, uri, body))
        return headers

    def authorization(self, method: str, uri: str, body: bytes = b"") -> list[tuple[str, str]]:
        """Header lines for a new request with the nonces already known (may be empty)."""
        return [self._answer(state, method, uri, body) for state in self._realms.values()]

    def succeeded(self) -> None:
        """A request carrying credentials got a final answer other than 401/407."""
        for state in self._realms.values():
            state.answered = False

    def forget(self) -> None:
        """Drop every cached nonce (e.g. after the registrar changed)."""
        self._realms.clear()


# ----------------------------------------------------------------------------------------------
# Server side

def make_challenge(realm: str, nonce: str, algorithm: str = "MD5", qop: str | None = "auth",
                   stale: bool = False, opaque: str | None = None) -> str:
    """A WWW-Authenticate / Proxy-Authenticate value (RFC 7616 §3.3)."""
    if algorithm.upper() not in ALGORITHMS:
        raise ValueError(f"unsupported algorithm {algorithm!r}")
    parts = [f"Digest realm={_quote(realm)}", f"nonce={_quote(nonce)}", f"algorithm={algorithm}"]
    if qop:
        parts.append(f"qop={_quote(qop)}")
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    if stale:
        parts.append("stale=true")
    return ", ".join(parts)


def parse_authorization(value: str) -> dict[str, str]:
    """Parameters of a Digest Authorization / Proxy-Authorization value (names lower-case,
    values unquoted); raises :class:`SipParseError` for another scheme or a malformed value,
    or when username, realm, nonce, uri or response is missing."""
    found = _split_challenges(value)
    if len(found) != 1 or found[0][0].lower() != "digest":
        raise SipParseError("not a Digest authorization")
    fields = found[0][1]
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in fields:
            raise SipParseError(f"Digest authorization without {name}")
    return fields


def verify_authorization(fields: dict[str, str], method: str, password_or_ha1: str, *,
                         is_ha1: bool = False, realm: str | None = None,
                         nonce: str | None = None, body: bytes = b"") -> bool:
    """Whether ``fields`` (from :func:`parse_authorization`) prove knowledge of the password.

    With ``is_ha1`` the secret is H(username:realm:password) for the algorithm of ``fields``.
    ``realm`` and ``nonce``, when given, must match; nonce freshness and nc replay checks are
    the caller's (it owns the clock).
    """
    algorithm = fields.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS:
        return False
    if realm is not None and fields["realm"] != realm:
        return False
    if nonce is not None and fields["nonce"] != nonce:
        return False
    qop = fields.get("qop")
    if qop is not None:
        qop = qop.lower()
        if qop not in ("auth", "auth-int") or "nc" not in fields or "cnonce" not in fields:
            return False
    elif algorithm.endswith("-SESS") and "cnonce" not in fields:
        return False
    if fields.get("userhash", "").lower() == "true":
        return False  # the caller would have to map hashed names back; not offered by us
    ha1 = password_or_ha1 if is_ha1 else digest_ha1(fields["username"], fields["realm"],
                                                     password_or_ha1, algorithm)
    expected = _response_digest(algorithm=algorithm, ha1=ha1, nonce=fields["nonce"],
                                method=method, uri=fields["uri"], qop=qop,
                                nc=fields.get("nc", ""), cnonce=fields.get("cnonce", ""),
                                body=body)
    return hmac.compare_digest(expected, fields["response"].lower())
