"""SIP, SIPS and tel URIs (RFC 3261 §19.1, §25.1; RFC 3966 for tel).

A :class:`SipUri` keeps the user and password *unescaped* (``%41`` reads as ``A``) so that code
above compares and builds them as plain text; :meth:`SipUri.__str__` escapes again what RFC 3261
§25.1 does not allow unescaped. Parameters and headers are kept as written (names of parameters
lower-cased), since their values are mostly tokens and are compared by :func:`uri_equal`.

URIs of other schemes may appear in To, From and Contact (RFC 3261 §20.10 allows any
absoluteURI): :func:`parse_uri` with ``any_scheme=True`` keeps them opaque. In a Request-URI an
unknown scheme is answered with 416 (RFC 3261 §8.2.2.1), which is what the default raises.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SipParseError", "SipUri", "parse_uri", "uri_equal"]


class SipParseError(Exception):
    """The input is not a well-formed SIP message (or part of one): the peer's fault.

    ``status`` is the response code to answer a bad request with (RFC 3261 §8.2, §21.4),
    ``partial`` the raw values of Via, From, To, Call-ID and CSeq that could be read before the
    error, so that the answer can still be built and routed (RFC 3261 §8.2.6).
    """

    def __init__(self, reason: str, status: int = 400,
                 partial: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.partial: dict[str, str] = partial if partial is not None else {}

    def __repr__(self) -> str:
        return f"SipParseError({self.reason!r}, status={self.status})"


_KNOWN_SCHEMES = frozenset(("sip", "sips", "tel"))
# RFC 3261 §25.1: unreserved / user-unreserved may stand unescaped in the user part;
# password: unreserved / escaped / "&" / "=" / "+" / "$" / ",".
_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()"
_USER_SAFE = frozenset(_UNRESERVED + "&=+$,;?/")
_PASSWORD_SAFE = frozenset(_UNRESERVED + "&=+$,")
_USER_OK_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]*")
_PASSWORD_OK_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,%]*")
_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9_])?\.?")
# uri-parameters and headers: param-unreserved / unreserved / escaped (plus what headers allow);
# no white space, no angle brackets, no quotes.
_PARAMS_OK_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%=;]*")
_HEADERS_OK_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/?:+$%=&@,;]*")
_OPAQUE_BAD_RE = re.compile(r"[\x00-\x20\x7f<>\"]")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_TEL_SEPARATORS = str.maketrans("", "", "-.()")
# The common shape, sip:user@host:port;params with nothing escaped, in one match (no nested
# quantifiers: linear time); anything else takes the general path below. Its five groups are
# scheme, user, host, port and parameters; sipua.message embeds it in its start-line and
# name-addr patterns, so that the usual Request-URI or From URI costs no second match.
FAST_URI_PATTERN = (
    r"(sips?):(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/]+)@)?"
    r"([A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9_])?\.?)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]*)?)*)"
)
_FAST_RE = re.compile(FAST_URI_PATTERN)


def _unescape(text: str) -> str:
    """Decode %XX escapes; a stray ``%`` is a syntax error (RFC 3261 §25.1 ``escaped``)."""
    if "%" not in text:
        return text
    if _ESCAPE_RE.search(text):
        raise SipParseError(f"bad escape in {text!r}")
    raw = bytearray()
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char == "%":
            raw.append(int(text[index + 1:index + 3], 16))
            index += 3
        else:
            raw.extend(char.encode("utf-8", "surrogateescape"))
            index += 1
    return raw.decode("utf-8", "surrogateescape")


def _escape(text: str, safe: frozenset[str]) -> str:
    """Escape every character outside ``safe`` as %XX of its UTF-8 bytes."""
    if all(char in safe for char in text):
        return text
    out: list[str] = []
    for char in text:
        if char in safe:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))
    return "".join(out)


@dataclass(slots=True)
class SipUri:
    """A parsed URI; see the module docstring for what is kept escaped and what is not."""

    scheme: str
    """"sip", "sips", "tel", or another scheme kept opaque (lower-case)."""
    user: str | None = None
    """Unescaped user part (the number for tel:), None when absent."""
    password: str | None = None
    """Unescaped password, None when absent (its use is NOT RECOMMENDED, RFC 3261 §19.1.1)."""
    host: str = ""
    """Host name or IP literal; IPv6 without brackets; empty for tel: and opaque URIs."""
    port: int | None = None
    """Explicit port, None when absent (absent and 5060 are different URIs, §19.1.4)."""
    params: dict[str, str | None] = field(default_factory=dict)
    """uri-parameters, names lower-cased, values as written; a flag parameter maps to None."""
    headers: dict[str, str] = field(default_factory=dict)
    """URI headers (``?name=value&...``), as written."""
    opaque: str | None = None
    """The text after ``scheme:`` for schemes other than sip, sips and tel."""

    @property
    def transport(self) -> str:
        """The transport parameter, lower-cased; "tls" for sips and "udp" otherwise by default."""
        value = self.params.get("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def host_port(self) -> str:
        """host[:port] with IPv6 in brackets, as Via and Host-like fields want it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        parts = [self.scheme, ":"]
        if self.scheme == "tel":
            parts.append(_escape(self.user or "", _USER_SAFE))
        else:
            if self.user is not None:
                parts.append(_escape(self.user, _USER_SAFE))
                if self.password is not None:
                    parts.append(":")
                    parts.append(_escape(self.password, _PASSWORD_SAFE))
                parts.append("@")
            parts.append(self.host_port)
        for name, value in self.params.items():
            parts.append(f";{name}" if value is None else f";{name}={value}")
        if self.headers:
            parts.append("?")
            parts.append("&".join(f"{name}={value}" for name, value in self.headers.items()))
        return "".join(parts)

    def with_(self, **changes: Any) -> SipUri:
        """A copy with the given fields replaced (dicts are copied, never shared)."""
        changes.setdefault("params", dict(self.params))
        changes.setdefault("headers", dict(self.headers))
        return dataclasses.replace(self, **changes)


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit() or not text.isascii() or len(text) > 5:
        raise SipParseError(f"bad port in URI {whole!r}")
    port = int(text)
    if port > 65535:
        raise SipParseError(f"port out of range in URI {whole!r}")
    return port


def _parse_host(text: str, whole: str) -> tuple[str, int | None]:
    """host[:port] with IPv6 references in brackets (RFC 3261 §25.1 hostport)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {whole!r}")
        host = text[1:end]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SipParseError(f"bad IPv6 reference in {whole!r}") from None
        rest = text[end + 1:]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipParseError(f"junk after IPv6 reference in {whole!r}")
        return host, _parse_port(rest[1:], whole)
    host, colon, port_text = text.partition(":")
    if not _HOSTNAME_RE.fullmatch(host):
        raise SipParseError(f"bad host in URI {whole!r}")
    return host, (_parse_port(port_text, whole) if colon else None)


def _parse_uri_params(text: str, whole: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    if not _PARAMS_OK_RE.fullmatch(text):
        raise SipParseError(f"bad URI parameters in {whole!r}")
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name:
            raise SipParseError(f"empty URI parameter in {whole!r}")
        params[name.lower()] = value if eq else None
    return params


def _parse_uri_headers(text: str, whole: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not _HEADERS_OK_RE.fullmatch(text):
        raise SipParseError(f"bad URI headers in {whole!r}")
    for item in text.split("&"):
        name, _, value = item.partition("=")
        if not name:
            raise SipParseError(f"empty URI header in {whole!r}")
        headers[name] = value
    return headers


def _fast_uri(scheme: str, user: str | None, host: str, port_text: str | None,
              param_text: str, whole: str) -> SipUri:
    """The URI from the groups of a :data:`FAST_URI_PATTERN` match."""
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise SipParseError(f"port out of range in URI {whole!r}")
    params: dict[str, str | None] = {}
    if param_text:
        for item in param_text[1:].split(";"):
            name, eq, value = item.partition("=")
            params[name.lower()] = value if eq else None
    return SipUri(scheme, user, None, host, port, params, {}, None)


def parse_uri(text: str, *, any_scheme: bool = False) -> SipUri:
    """Parse a SIP, SIPS or tel URI (RFC 3261 §19.1.1, §25.1).

    Raises :class:`SipParseError` with status 416 for a scheme other than sip, sips and tel
    (unless ``any_scheme``, which keeps such a URI opaque) and 400 for anything malformed.
    """
    match = _FAST_RE.fullmatch(text)
    if match is not None:
        scheme, fast_user, host, port_text, param_text = match.groups()
        return _fast_uri(scheme, fast_user, host, port_text, param_text, text)
    colon = text.find(":")
    if colon <= 0:
        raise SipParseError(f"URI without scheme: {text!r}")
    scheme = text[:colon]
    if scheme not in _KNOWN_SCHEMES:
        if not _SCHEME_RE.fullmatch(scheme):
            raise SipParseError(f"bad URI scheme in {text!r}")
        scheme = scheme.lower()
    rest = text[colon + 1:]
    if scheme not in _KNOWN_SCHEMES:
        if not any_scheme:
            raise SipParseError(f"unsupported URI scheme {scheme!r}", 416)
        if not rest or _OPAQUE_BAD_RE.search(rest):
            raise SipParseError(f"bad URI {text!r}")
        return SipUri(scheme, opaque=rest)
    if scheme == "tel":
        number, has_params, param_text = rest.partition(";")
        if not number or not _USER_OK_RE.fullmatch(number):
            raise SipParseError(f"bad tel URI {text!r}")
        return SipUri("tel", user=_unescape(number),
                      params=_parse_uri_params(param_text, text) if has_params else {})
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1:]
        user_text, has_password, password_text = userinfo.partition(":")
        if not user_text or not _USER_OK_RE.fullmatch(user_text):
            raise SipParseError(f"bad user part in URI {text!r}")
        user = _unescape(user_text)
        if has_password:
            if not _PASSWORD_OK_RE.fullmatch(password_text):
                raise SipParseError(f"bad password in URI {text!r}")
            password = _unescape(password_text)
    headers: dict[str, str] = {}
    question = rest.find("?")
    if question >= 0:
        headers = _parse_uri_headers(rest[question + 1:], text)
        rest = rest[:question]
    semi = rest.find(";")
    params = {}
    if semi >= 0:
        params = _parse_uri_params(rest[semi + 1:], text)
        rest = rest[:semi]
    host, port = _parse_host(rest, text)
    return SipUri(scheme, user, password, host, port, params, headers)


# RFC 3261 §19.1.4: these parameters must match when present in either URI.
_STRICT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def _norm(value: str | None) -> str | None:
    return None if value is None else _unescape(value).lower()


def uri_equal(a: SipUri, b: SipUri) -> bool:
    """Compare two URIs by the rules of RFC 3261 §19.1.4 (tel: by RFC 3966 §4)."""
    if a.scheme != b.scheme:
        return False
    if a.opaque is not None or b.opaque is not None:
        return a.opaque == b.opaque
    if a.scheme == "tel":
        # RFC 3966 §4: visual separators do not matter; parameters compare case-insensitively.
        if (a.user or "").translate(_TEL_SEPARATORS).lower() != \
                (b.user or "").translate(_TEL_SEPARATORS).lower():
            return False
        return {k: _norm(v) for k, v in a.params.items()} == \
            {k: _norm(v) for k, v in b.params.items()}
    if a.user != b.user or a.password != b.password:
        return False
    if a.host.lower() != b.host.lower() or a.port != b.port:
        return False
    for name in _STRICT_PARAMS:
        if _norm(a.params.get(name, "")) != _norm(b.params.get(name, "")):
            return False
    for name, value in a.params.items():
        if name in b.params and _norm(value) != _norm(b.params[name]):
            return False
    if len(a.headers) != len(b.headers):
        return False
    b_headers = {name.lower(): _unescape(value).lower() for name, value in b.headers.items()}
    for name, value in a.headers.items():
        other = b_headers.get(name.lower())
        if other is None or other != _unescape(value).lower():
            return False
    return True
