"""SIP messages: parser, serializer and typed header views (RFC 3261 §7, §20, §25).

Parsing splits the header block once into an index of raw values by name (compact names
expanded, known names canonicalised, unknown headers kept verbatim); the ordered item list is
only built when something needs the order (a change, :meth:`Headers.items`, the first encode).
:func:`parse` checks the start line, the header block's syntax, the required headers, CSeq and
Content-Length; the other typed values (Via, From, To, Contact, ...) are parsed on first access
and cached in the :class:`Headers` object, which drops its cache whenever it is changed.
:meth:`Message.validate` reads them all. The usual shapes of start lines, URIs, Via and
name-addr values are each validated and split by one precompiled match, with the full grammar as
the fallback. The hot path of a transaction layer (top Via branch, tags, Call-ID, CSeq) therefore
costs one split plus the few values it actually reads; the encoded header block is cached too,
until the headers change.

Messages of the usual shape skip even the split: one precompiled match over the whole header
block (:func:`_head_pattern`) checks every line's syntax, the start line and the shapes of Via,
From, To, Call-ID and CSeq, and captures their parts. Only those headers (and Max-Forwards,
Content-Length) are indexed then; the others on first need, and the typed values are built from
the captured parts when read (a From or To URI only when its ``uri`` is read), with no second
match. Anything else (folding, repeated Via lines, odd white space, quoting oddities, every
error) fails that match and takes the general path, which decides as before: the fast path
accepts a subset of what the general path accepts and gives the same result
(tests/unit/test_sip_message_fastpath.py compares the two).

Every malformed input raises :class:`SipParseError` and nothing else; it carries the status code
to answer a bad request with and the raw Via/From/To/Call-ID/CSeq read so far, so that
:func:`error_response` can still build that answer (RFC 3261 §8.2.6).
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from sipua.uri import FAST_URI_PATTERN, SipParseError, SipUri, _fast_uri, parse_uri

__all__ = [
    "DEFAULT_MAX_FORWARDS",
    "MAX_HEADER_LINE",
    "MAX_HEADER_LINES",
    "MAX_START_LINE",
    "CSeq",
    "Headers",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "StreamParser",
    "Via",
    "error_response",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse",
    "parse_name_addr",
    "parse_params",
    "parse_via",
    "reason_phrase",
    "split_list",
]

DEFAULT_MAX_FORWARDS = 70  # RFC 3261 §8.1.1.6
MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7
_MAX_CSEQ = 2**31  # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31
_MAX_EXPIRES = 2**32 - 1  # RFC 3261 §20.19
_MAX_CONTENT_LENGTH = 2**31
#: Header lines per message. Real messages carry a few dozen (long Via or Record-Route lists
#: included); a peer sending thousands only makes every later list read cost more. Beyond it:
#: 513 Message Too Large (RFC 3261 §21.5.14).
MAX_HEADER_LINES = 512
#: Characters in one header line (after unfolding). Identity and long Route sets stay far
#: below; anything longer only makes typed parsing slow. Beyond it: 513.
MAX_HEADER_LINE = 8192
#: Characters in the start line: a longer Request-URI is answered 414 (RFC 3261 §21.4.12).
MAX_START_LINE = 4096

# RFC 3261 §7.3.3 plus the compact forms registered since (RFC 3265, 3515, 3841, 3892, 4028, 4474).
_COMPACT = {
    "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
    "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via",
    "o": "event", "r": "refer-to", "u": "allow-events", "b": "referred-by",
    "x": "session-expires", "y": "identity", "a": "accept-contact", "j": "reject-contact",
    "d": "request-disposition",
}

_CANONICAL_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "History-Info",
    "Identity", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE",
    "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server", "Service-Route",
    "Session-Expires", "Subject", "Subscription-State", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)
_DISPLAY: dict[str, str] = {name.lower(): name for name in _CANONICAL_NAMES}
#: lower-case name as written (full or compact) -> key (the lower-case full name)
_KEYS: dict[str, str] = {key: key for key in _DISPLAY}
_KEYS.update(_COMPACT)
#: name exactly as usually written -> (key, canonical name): the parser's one-lookup fast path
_FAST_NAMES: dict[str, tuple[str, str]] = {name: (name.lower(), name) for name in _CANONICAL_NAMES}
_FAST_NAMES.update({short: (key, _DISPLAY[key]) for short, key in _COMPACT.items()
                    if key in _DISPLAY})
_FAST_NAMES.update({key: (key, name) for key, name in _DISPLAY.items()})
_FAST_NAMES.update({"Call-Id": ("call-id", "Call-ID"), "Cseq": ("cseq", "CSeq")})
#: name exactly as usually written -> key
_FAST_KEYS: dict[str, str] = {name: entry[0] for name, entry in _FAST_NAMES.items()}
#: the key in :attr:`Headers._cache` of the encoded header lines (no header has this name)
_WIRE = " wire"

#: Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1); others are never split.
_LIST_HEADERS = frozenset((
    "via", "contact", "route", "record-route", "allow", "supported", "require", "proxy-require",
    "unsupported", "accept", "accept-encoding", "accept-language", "content-encoding",
    "content-language", "allow-events", "alert-info", "call-info", "error-info", "in-reply-to",
    "warning", "path", "service-route", "p-asserted-identity", "p-preferred-identity",
    "history-info", "accept-contact", "reject-contact", "request-disposition", "reason",
    "security-client", "security-server", "security-verify", "p-associated-uri",
))
#: At most one of each (RFC 3261 §7.3.1, RFC 4475 §3.3.8, §3.3.9).
_SINGLE_SET = frozenset(("call-id", "cseq", "from", "to", "max-forwards", "content-length"))
_REQUIRED_HEADERS = ("via", "from", "to", "call-id", "cseq")  # RFC 3261 §8.1.1
_REQUIRED_SET = frozenset(_REQUIRED_HEADERS)
_PARTIAL_HEADERS = (("via", "Via"), ("from", "From"), ("to", "To"), ("call-id", "Call-ID"),
                    ("cseq", "CSeq"))

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_DISPLAY_TOKENS_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~ \t\u0080-\U0010ffff]*")
_PARAM_VALUE_RE = re.compile(r"[^\x00-\x20\x7f\"<>,;\\]+")
# ;name=value... without quotes or white space: validated in one match, then split.
# The common shapes, without quotes or odd white space, validated by one match each (no nested
# quantifiers over overlapping classes: linear time); anything else takes the general path.
_PARAMS_PATTERN = r"(?:;[A-Za-z0-9\-.!%*_+`'~]++(?:=[^\x00-\x20\x7f\"<>,;\\]++)?)*+"
_FAST_PARAMS_RE = re.compile(_PARAMS_PATTERN)
_VIA_PATTERN = (r"SIP/2\.0/([A-Za-z]+) ([A-Za-z0-9][A-Za-z0-9\-_.]*)(?::([0-9]{1,5}))?("
                + _PARAMS_PATTERN + ")")
_FAST_VIA_RE = re.compile(_VIA_PATTERN)
_DISPLAY_PATTERN = r"[A-Za-z0-9\-.!%*_+`'~ \t\u0080-\U0010ffff]*"
# name-addr with a sip/sips URI written the usual way: display, URI and parameters in one match
# (QUOTED is the quoted display name's content).
_NAME_ADDR_URI_PATTERN = (r'(?:"(QUOTED)"[ \t]*|(' + _DISPLAY_PATTERN + "))<" + FAST_URI_PATTERN
                          + r">[ \t]*(" + _PARAMS_PATTERN + ")")
_FAST_NAME_ADDR_URI_RE = re.compile(
    _NAME_ADDR_URI_PATTERN.replace("QUOTED", r'(?:[^"\\]|\\.)*'), re.DOTALL)
_FAST_NAME_ADDR_RE = re.compile(
    r'(?:"((?:[^"\\]|\\.)*)"[ \t]*|([^"<>]*))<([^<>]*)>[ \t]*(' + _PARAMS_PATTERN + ")",
    re.DOTALL)
# RFC 3261 §7.1, §7.2: the usual start lines in one match each; anything else (other spellings
# of the version, escapes or headers in the Request-URI, errors) takes the general path.
_STATUS_PATTERN = r"SIP/2\.0 ([1-6][0-9][0-9])(?: (REASON))?"
_FAST_STATUS_RE = re.compile(_STATUS_PATTERN.replace("REASON", ".*"), re.DOTALL)
_REQUEST_PATTERN = r"([A-Za-z0-9\-.!%*_+`'~]+) " + FAST_URI_PATTERN + r" SIP/2\.0"
_FAST_REQUEST_RE = re.compile(_REQUEST_PATTERN)
_CSEQ_PATTERN = r"([0-9]{1,10}) ([A-Za-z0-9\-.!%*_+`'~]+)"
_FAST_CSEQ_RE = re.compile(_CSEQ_PATTERN)
_CALL_ID_RE = re.compile(r"[^\x00-\x20\x7f\"<>]+")


def _names(*names: str) -> str:
    """A pattern for header names in any letter case, ASCII only as _KEYS knows them (an
    ignore-case pattern would also take non-ASCII case variants such as U+017F for "s")."""
    return "|".join("".join(f"[{c.upper()}{c}]" if c.isalpha() else re.escape(c) for c in name)
                    for name in names)


def _branch_optionals(pattern: str) -> str:
    """``pattern`` with every greedy optional group ``(?:...)?`` that captures nothing written
    ``(?:...|)``.

    The two match the same text; the regex engine runs an optional group through its general
    repeat machinery (a context allocated per use) but an alternation without it, which makes
    a difference over the dozens of optional groups of a header block. Groups that capture keep
    the repeat: it restores their marks when the group fails, an alternation may not.
    """
    kept = "\x00"  # stands for the "?" of an optional group left as it is
    out = pattern
    while True:
        stack: list[tuple[int, bool]] = []  # (where a group opens, whether it captures within)
        found: tuple[int, int] | None = None
        index = 0
        while index < len(out) and found is None:
            char = out[index]
            if char == "\\":
                index += 2
                continue
            if char == "[":  # a class: skip to its closing bracket
                index += 1
                if out[index] == "^":
                    index += 1
                if out[index] == "]":
                    index += 1
                while out[index] != "]":
                    index += 2 if out[index] == "\\" else 1
            elif char == "(":
                capturing = out[index + 1] != "?" or out[index + 1:index + 4] == "?P<"
                stack.append((index, False))
                if capturing:
                    stack[:] = [(at, True) for at, _ in stack]
            elif char == ")":
                start, captures = stack.pop()
                if out[index + 1:index + 2] == "?" and out[index + 2:index + 3] not in ("?", "+"):
                    if captures or not out.startswith("(?:", start):
                        out = out[:index + 1] + kept + out[index + 2:]
                    else:
                        found = (start, index)
            index += 1
        if found is None:
            return out.replace(kept, "?")
        start, end = found
        out = out[:start] + out[start:end] + "|)" + out[end + 2:]


def _head_pattern() -> re.Pattern[str]:
    """The fast path over a whole header block of the usual shape, in one match.

    It accepts a subset of what the general path accepts, and splits it the same way: the
    usual start line; then up to MAX_HEADER_LINES lines ending in CRLF, each a token name, a
    colon and a value (the values captured have no CR or LF and no odd white space at either
    end, so that they are what str.strip() leaves); Via, From, To, Call-ID, CSeq, Max-Forwards
    and Content-Length each at most once (RFC 3261 §7.3.1), Via, From, To, Call-ID and CSeq in
    the shape their own fast patterns accept, each captured in parts. Whatever else (folding,
    bare LF, repeated or list-valued Via, quoted oddities, errors) fails it and takes the
    general path.

    Written for the regex engine's cost model: atomic groups keep it linear (a line, once
    matched, is never re-split); every alternative for a line starts with a character class of
    the name's first letter, which the engine tests without entering the alternative; the values
    of the other headers are skipped with ``.*``, far cheaper per character than a class.
    """
    ws = r"[ \t]*"
    value = r"(?:[^\s](?:[^\r\n]*[^\s])?)?"  # what str.strip() leaves, with no CR or LF
    rest = r"[A-Za-z0-9\-.!%*_+`'~]*"  # a token after its first character

    def once(names: str, group: str, pattern: str, *also: str) -> str:
        # ``names``: the rest of the name, its first letter matched already. `(?(n)(?!)|...)`:
        # a second such line (``also``: under another spelling) fails here, and the generic line
        # refuses the name, so a repeated header fails the whole match. The group numbers are
        # filled in below.
        tail = rf"{ws}(?!\s)(?P<{group}>{pattern})(?<!\s){ws}"
        for name in (group, *also):
            tail = rf"(?(<{name}>)(?!)|{tail})"
        return rf"{names}{ws}:{tail}"

    def other(names: str) -> str:
        # Any value will do (up to LF, the CR included): the general path indexes these lines,
        # and strips their values, when they are first needed.
        return rf"(?!(?:{names}){ws}:){rest}{ws}:.*"

    quoted = r'(?:[^"\\\r\n]|\\[^\r\n])*'
    name_addr = _NAME_ADDR_URI_PATTERN.replace("QUOTED", quoted)
    via, from_, to = "(?:" + _names("ia") + ")?", "(?:" + _names("rom") + ")?", "(?:[Oo])?"
    max_forwards = _names("ax-forwards")
    call_id, cseq, length = _names("all-id"), _names("seq"), _names("ontent-length")
    # First letters of no special name (all but C F I L M T V): straight to the generic line.
    plain = "".join(c for c in "ABDEGHJKNOPQRSUWXYZ" for c in (c, c.lower()))
    lines = "|".join((
        rf"[{plain}0-9\-.!%*_+`'~]{rest}{ws}:.*",
        rf"[Vv](?:{once(via, 'via', _VIA_PATTERN)}|{other(via)})",
        rf"[Ff](?:{once(from_, 'from', name_addr)}|{other(from_)})",
        rf"[Tt](?:{once(to, 'to', name_addr)}|{other(to)})",
        "[Cc](?:" + "|".join((
            once(call_id, "call_id", r"[!#-;=?-~]+", "call_id_i"),  # _CALL_ID_RE, ASCII only
            once(cseq, "cseq", _CSEQ_PATTERN),
            once(length, "content_length", "[0-9]{1,9}", "content_length_l"),
            other(f"{call_id}|{cseq}|{length}"))) + ")",
        rf"[Mm](?:{once(max_forwards, 'max_forwards', value)}|{other(max_forwards)})",
        rf"[Ii](?:{once('', 'call_id_i', r'[!#-;=?-~]+', 'call_id')}|{other('')})",
        rf"[Ll](?:{once('', 'content_length_l', '[0-9]{1,9}', 'content_length')}"
        rf"|{other('')})",
    ))
    start = ("(?:" + _STATUS_PATTERN.replace("REASON", r"[^\r\n]*")
             + "|(?P<method>" + _REQUEST_PATTERN[1:] + ")")
    # A line starts after CRLF, or after the LF whose CR the previous line's ".*" took.
    pattern = _branch_optionals(
        start + rf"(?>(?:\r\n|(?<=\r)\n)(?>{lines})){{0,{MAX_HEADER_LINES}}}+")
    numbers = re.compile(re.sub(r"\(\?\(<\w+>\)\(\?!\)\|", "(?:(?!)|", pattern)).groupindex
    return re.compile(re.sub(r"\(\?\(<(\w+)>\)", lambda m: f"(?({numbers[m.group(1)]})",
                             pattern))


_HEAD_RE = _head_pattern()
#: keys whose every value the fast path indexes (the others wait for Headers._index)
_HEAD_KEYS = frozenset(("via", "from", "to", "call-id", "cseq", "max-forwards",
                        "content-length"))
_G = {name: number - 1 for name, number in _HEAD_RE.groupindex.items()}
# Where each value sits in the fast path's groups() (group n at n - 1); its parts follow it.
_G_METHOD, _G_VIA, _G_FROM, _G_TO = _G["method"], _G["via"], _G["from"], _G["to"]
_G_CALL_ID, _G_CALL_ID_I, _G_CSEQ = _G["call_id"], _G["call_id_i"], _G["cseq"]
_G_CL, _G_CL_L, _G_MF = _G["content_length"], _G["content_length_l"], _G["max_forwards"]
# A value and its parts, as _via_of and _name_addr_of take them.
_VIA_PARTS = slice(_G_VIA, _G_VIA + 5)
_FROM_PARTS = slice(_G_FROM, _G_FROM + 9)
_TO_PARTS = slice(_G_TO, _G_TO + 9)
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
_SENT_BY_LWS_RE = re.compile(r"[ \t]*([/:])[ \t]*")
_STREAM_CL_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([0-9]+)[ \t]*(?=\r\n|$)",
                           re.IGNORECASE)


def _key(name: str) -> str:
    lower = name.lower()
    return _KEYS.get(lower, lower)


def _digits(text: str) -> int | None:
    """Non-negative decimal integer, or None (ASCII digits only: int() also takes others)."""
    if text.isdigit() and text.isascii():
        return int(text)
    return None


# ----------------------------------------------------------------------------------------------
# Lexical helpers

def _find_quote_end(text: str, start: int) -> int:
    """Index of the closing quote of the quoted-string opening at ``start`` (§25.1 quoted-pair)."""
    index = start + 1
    length = len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            return index
        index += 1
    raise SipParseError(f"unterminated quoted string in {text!r}")


def _unquote(text: str) -> str:
    """Contents of a quoted-string without the quotes, quoted-pairs resolved."""
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_list(value: str) -> list[str]:
    """Split a header value on top-level commas, respecting quoted strings and <...>."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
    if '"' not in value and "<" not in value:
        return [item for item in (part.strip() for part in value.split(",")) if item]
    out: list[str] = []
    start = 0
    index = 0
    length = len(value)
    angle = False
    while index < length:
        char = value[index]
        if char == '"':
            try:
                index = _find_quote_end(value, index)
            except SipParseError:
                break
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char == "," and not angle:
            out.append(value[start:index].strip())
            start = index + 1
        index += 1
    out.append(value[start:].strip())
    return [item for item in out if item]


def _split_semicolons(text: str) -> list[str]:
    """Split on ';' outside quoted strings."""
    if '"' not in text:
        return text.split(";")
    out: list[str] = []
    start = 0
    index = 0
    length = len(text)
    while index < length:
        char = text[index]
        if char == '"':
            index = _find_quote_end(text, index)
        elif char == ";":
            out.append(text[start:index])
            start = index + 1
        index += 1
    out.append(text[start:])
    return out


def _param_dict(text: str) -> dict[str, str | None]:
    """Split ``;a=b;c`` already validated by _PARAMS_PATTERN."""
    params: dict[str, str | None] = {}
    if text:
        for item in text[1:].split(";"):
            name, eq, value = item.partition("=")
            params[name.lower()] = value if eq else None
    return params


def parse_params(text: str) -> dict[str, str | None]:
    """Parse ``;name[=value]...`` (generic-param, RFC 3261 §25.1) into a dict.

    Names are lower-cased; values are kept as written, quoted strings with their quotes; a
    parameter without value maps to None. Leading text before the first ';' must be empty.
    """
    if _FAST_PARAMS_RE.fullmatch(text):
        return _param_dict(text)
    params: dict[str, str | None] = {}
    text = text.strip()
    if not text:
        return params
    if text[0] != ";":
        raise SipParseError(f"junk before parameters: {text!r}")
    for item in _split_semicolons(text[1:]):
        name, eq, value = item.partition("=")
        name = name.strip()
        if not _TOKEN_RE.fullmatch(name):
            raise SipParseError(f"bad parameter name in {text!r}")
        if not eq:
            params[name.lower()] = None
            continue
        value = value.strip()
        if value.startswith('"'):
            if _find_quote_end(value, 0) != len(value) - 1:
                raise SipParseError(f"junk after quoted parameter value in {text!r}")
        elif not _PARAM_VALUE_RE.fullmatch(value):
            raise SipParseError(f"bad parameter value in {text!r}")
        params[name.lower()] = value
    return params


def _params_str(params: dict[str, str | None]) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}"
                   for name, value in params.items())


# ----------------------------------------------------------------------------------------------
# Typed header values

@dataclass(slots=True)
class Via:
    """One Via value (RFC 3261 §20.42): ``SIP/2.0/UDP host:port;branch=...``."""

    transport: str
    """Upper-case transport token: "UDP", "TCP", "TLS", "SCTP", "WS", ..."""
    host: str
    """sent-by host; IPv6 without brackets."""
    port: int | None = None
    """sent-by port, None when absent."""
    params: dict[str, str | None] = field(default_factory=dict)
    """via-params: names lower-cased, values as written, None for a flag (rport)."""

    @property
    def branch(self) -> str | None:
        """The branch parameter (RFC 3261 §8.1.1.7)."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The received parameter (RFC 3261 §18.2.1)."""
        return self.params.get("received")

    @property
    def rport(self) -> int | bool | None:
        """RFC 3581: the port value, True when present without value, None when absent."""
        if "rport" not in self.params:
            return None
        value = self.params["rport"]
        if value is None:
            return True
        number = _digits(value)
        if number is None or number > 65535:
            raise SipParseError(f"bad rport value {value!r}")
        return number

    @property
    def sent_by(self) -> str:
        """host[:port] with IPv6 in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{_params_str(self.params)}"

    def with_(self, **changes: Any) -> Via:
        """A copy with fields replaced (the params dict is copied, never shared)."""
        changes.setdefault("params", dict(self.params))
        return dataclasses.replace(self, **changes)


def parse_via(text: str) -> Via:
    """Parse one Via value (already split from its list)."""
    match = _FAST_VIA_RE.fullmatch(text)
    if match is not None:
        return _via_of(text, *match.groups())
    text = text.strip()
    semi = text.find(";")
    if semi >= 0:
        head = text[:semi].rstrip()
        params = parse_params(text[semi:])
    else:
        head = text
        params = {}
    parts = head.split()
    if len(parts) != 2 or "/" in parts[1]:
        # LWS is allowed around the slashes and the colon (RFC 3261 §25.1 SLASH, COLON).
        parts = _SENT_BY_LWS_RE.sub(r"\1", head).split()
        if len(parts) != 2:
            raise SipParseError(f"bad Via {text!r}")
    protocol = parts[0].split("/")
    if len(protocol) != 3 or protocol[0].upper() != "SIP" or not all(
            _TOKEN_RE.fullmatch(p) for p in protocol):
        raise SipParseError(f"bad Via sent-protocol {parts[0]!r}")
    host, port = _parse_sent_by(parts[1], text)
    via = Via(protocol[2].upper(), host, port, params)
    if "rport" in params:
        via.rport  # noqa: B018 -- validates the value now
    return via


def _via_of(text: str, transport: str, host: str, port_text: str | None,
            param_text: str) -> Via:
    """The Via from the parts of a :data:`_VIA_PATTERN` match over ``text``."""
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise SipParseError(f"bad Via port in {text!r}")
    params: dict[str, str | None] = {}
    if param_text:
        for item in param_text[1:].split(";"):
            name, eq, value = item.partition("=")
            params[name.lower()] = value if eq else None
    via = object.__new__(Via)  # the parts are valid: skip the generated __init__
    via.transport = transport if transport.isupper() else transport.upper()
    via.host = host
    via.port = port
    via.params = params
    return via


def _parse_sent_by(text: str, whole: str) -> tuple[str, int | None]:
    try:
        uri = parse_uri("sip:" + text)
    except SipParseError:
        raise SipParseError(f"bad Via sent-by in {whole!r}") from None
    if uri.params or uri.headers or uri.user is not None:
        raise SipParseError(f"bad Via sent-by in {whole!r}")
    return uri.host, uri.port


@dataclass(slots=True)
class NameAddr:
    """A From, To, Contact, Route or Record-Route value (RFC 3261 §20.10, §25.1 name-addr)."""

    uri: SipUri
    display: str | None = None
    """Display name, unquoted; None when absent."""
    params: dict[str, str | None] = field(default_factory=dict)
    """Header parameters (tag, expires, q, ...): names lower-cased, values as written."""
    _uri_parts: tuple[Any, ...] | None = field(default=None, init=False, repr=False,
                                               compare=False)
    """A parsed value's URI, still as the arguments of ``_fast_uri``; ``uri`` stays unset until
    first read (a transaction layer reads the tags, seldom the URIs)."""

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            # Reached only for an unset slot: the URI of a parsed value, built on first read.
            if name == "uri":
                parts = self._uri_parts
                if parts is not None:
                    uri = _fast_uri(*parts)
                    self.uri = uri
                    self._uri_parts = None
                    return uri
            raise AttributeError(name)

    @property
    def tag(self) -> str | None:
        """The tag parameter (RFC 3261 §19.3)."""
        return self.params.get("tag")

    def __str__(self) -> str:
        display = "" if self.display is None else _quote(self.display) + " "
        return f"{display}<{self.uri}>{_params_str(self.params)}"

    def with_tag(self, tag: str) -> NameAddr:
        """A copy carrying ``tag``."""
        return NameAddr(self.uri.with_(), self.display, {**self.params, "tag": tag})


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``name-addr`` or ``addr-spec`` followed by header parameters.

    In the addr-spec form (no angle brackets) everything after the first ';' is a header
    parameter, not a URI parameter (RFC 3261 §20.10).
    """
    match = _FAST_NAME_ADDR_URI_RE.fullmatch(text)
    if match is not None:
        return _name_addr_of(text, *match.groups())
    display: str | None
    match = _FAST_NAME_ADDR_RE.fullmatch(text)
    if match is not None:
        quoted, words, uri_text, param_text = match.groups()
        if quoted is not None:
            display = _unquote(f'"{quoted}"')
        else:
            words = words.strip()
            if words and not _DISPLAY_TOKENS_RE.fullmatch(words):
                raise SipParseError(f"bad display name in {text!r}")
            display = words or None
        return NameAddr(parse_uri(uri_text, any_scheme=True), display, _param_dict(param_text))
    text = text.strip()
    if not text:
        raise SipParseError("empty address")
    display = None
    if text[0] == '"':
        end = _find_quote_end(text, 0)
        display = _unquote(text[:end + 1])
        rest = text[end + 1:].lstrip()
        if not rest.startswith("<"):
            raise SipParseError(f"quoted display name without <URI> in {text!r}")
    else:
        lt = text.find("<")
        if lt >= 0:
            words = text[:lt].strip()
            if not _DISPLAY_TOKENS_RE.fullmatch(words):
                raise SipParseError(f"bad display name in {text!r}")
            display = words or None
            rest = text[lt:]
        else:
            rest = ""
    if rest:
        gt = rest.find(">")
        if gt < 0:
            raise SipParseError(f"unterminated <URI> in {text!r}")
        uri_text = rest[1:gt]
        params = parse_params(rest[gt + 1:])
    else:
        semi = text.find(";")
        if semi >= 0:
            uri_text = text[:semi].rstrip()
            params = parse_params(text[semi:])
        else:
            uri_text = text
            params = {}
        if ">" in uri_text or "," in uri_text or " " in uri_text:
            raise SipParseError(f"bad address {text!r}")
    uri = parse_uri(uri_text, any_scheme=True)
    if not rest and uri.headers:
        raise SipParseError(f"URI with headers outside <...> in {text!r}")
    return NameAddr(uri, display, params)


def _name_addr_of(text: str, quoted: str | None, words: str | None, scheme: str,
                  user: str | None, host: str, port: str | None, uri_params: str,
                  param_text: str) -> NameAddr:
    """The name-addr from the parts of a :data:`_NAME_ADDR_URI_PATTERN` match over ``text``;
    its URI is built when first read (:attr:`NameAddr._uri_parts`)."""
    display: str | None
    if quoted is None:
        display = (words.strip() or None) if words else None
    elif "\\" in quoted:
        display = _unquote(f'"{quoted}"')
    else:
        display = quoted
    params: dict[str, str | None] = {}
    if param_text:
        for item in param_text[1:].split(";"):
            name, eq, value = item.partition("=")
            params[name.lower()] = value if eq else None
    if port is not None and int(port) > 65535:  # the one check _fast_uri makes
        raise SipParseError(f"port out of range in URI {text!r}")
    addr = object.__new__(NameAddr)  # the parts are valid: skip the generated __init__
    addr._uri_parts = (scheme, user, host, port, uri_params, text)
    addr.display = display
    addr.params = params
    return addr


class CSeq(NamedTuple):
    """CSeq (RFC 3261 §20.16)."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """Parse ``number method``; the number must be below 2**31 (RFC 3261 §8.1.1.5)."""
    match = _FAST_CSEQ_RE.fullmatch(text)
    if match is not None:
        number_text, method = match.groups()
        number = int(number_text)
        if number >= _MAX_CSEQ:
            raise SipParseError(f"bad CSeq {text!r}")
        return tuple.__new__(CSeq, (number, method))  # the generated __new__ costs twice that
    parts = text.split()
    if len(parts) != 2:
        raise SipParseError(f"bad CSeq {text!r}")
    digits = _digits(parts[0])
    if digits is None or digits >= _MAX_CSEQ or not _TOKEN_RE.fullmatch(parts[1]):
        raise SipParseError(f"bad CSeq {text!r}")
    return CSeq(digits, parts[1])


# ----------------------------------------------------------------------------------------------
# Headers

class Headers:
    """An ordered multi-map of raw header values; names case-insensitive, compact forms expanded.

    Known header names are stored in their canonical spelling (``Call-ID``, ``CSeq``), unknown
    ones as written. Each entry is one header line; :meth:`get_all` also splits list headers
    (Via, Contact, Route, Allow, ...) on top-level commas.

    A parsed block keeps its (already validated) lines and builds the ordered item list only
    when something asks for the order (:meth:`items`, a change, the first encode): the index by
    name is all that reading a message needs. After a fast-path parse even the index holds only
    :data:`_HEAD_KEYS` until another name is asked for (:attr:`_index`).
    """

    __slots__ = ("_cache", "_head", "_idx", "_lines", "_list", "_parts")

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._list: list[tuple[str, str]] | None = []
        self._lines: list[str] | None = None
        self._idx: dict[str, list[str]] = {}
        #: the header block not indexed yet beyond :data:`_HEAD_KEYS` (a fast-path parse)
        self._head: str | None = None
        #: the fast path's groups over that block: the typed values' parts, until a change
        self._parts: tuple[str | None, ...] | None = None
        self._cache: dict[str, Any] = {}
        if items:
            for name, value in items:
                self.add(name, value)

    @classmethod
    def _from_lines(cls, lines: list[str], index: dict[str, list[str]]) -> Headers:
        """Headers over header lines that :func:`_parse_head` accepted and indexed."""
        headers = cls.__new__(cls)
        headers._list = None
        headers._lines = lines
        headers._idx = index
        headers._head = None
        headers._parts = None
        headers._cache = {}
        return headers

    @property
    def _index(self) -> dict[str, list[str]]:
        """Every value by key; a fast-path parse indexes the other headers on first need."""
        head = self._head
        if head is not None:
            self._head = None
            _, self._lines, self._idx = _parse_head(head)
        return self._idx

    def _values(self, key: str) -> list[str] | None:
        """The values of ``key``, indexing the whole block only for keys outside _HEAD_KEYS."""
        if key in _HEAD_KEYS:
            return self._idx.get(key)
        return self._index.get(key)

    @property
    def _items(self) -> list[tuple[str, str]]:
        items = self._list
        if items is None:
            index = self._index
            items = self._list = _items_from_lines(self._lines or [], index)
            self._lines = None
        return items

    @_items.setter
    def _items(self, items: list[tuple[str, str]]) -> None:
        self._list = items
        self._lines = None

    def _reindex(self) -> None:
        index: dict[str, list[str]] = {}
        for name, value in self._items:
            index.setdefault(_key(name), []).append(value)
        self._idx = index
        self._parts = None
        self._cache.clear()

    @staticmethod
    def _display(name: str) -> str:
        key = _key(name.strip())
        return _DISPLAY.get(key, name.strip())

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value (the first list element for list headers), or ``default``."""
        key = _FAST_KEYS.get(name) or _key(name)
        values = self._idx.get(key) if key in _HEAD_KEYS else self._index.get(key)
        if not values:
            return default
        if key in _LIST_HEADERS:
            for value in values:
                items = split_list(value)
                if items:
                    return items[0]
            return default
        return values[0]

    def get_all(self, name: str) -> list[str]:
        """Every value, across repeated headers and split on commas for list headers."""
        key = _FAST_KEYS.get(name) or _key(name)
        values = self._values(key)
        if not values:
            return []
        if key not in _LIST_HEADERS:
            return list(values)
        if len(values) == 1:
            return split_list(values[0])
        out: list[str] = []
        for value in values:
            out.extend(split_list(value))
        return out

    def set(self, name: str, value: str) -> None:
        """Replace every header of that name by one (at the place of the first, else at the end)."""
        key = _key(name)
        display = self._display(name)
        items: list[tuple[str, str]] = []
        placed = False
        for item in self._items:
            if _key(item[0]) == key:
                if not placed:
                    items.append((display, value))
                    placed = True
            else:
                items.append(item)
        if not placed:
            items.append((display, value))
        self._items = items
        self._reindex()

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Add one header line, after the others of that name or before them with ``first``."""
        key = _key(name)
        display = self._display(name)
        items = self._items
        if first:
            for position, item in enumerate(items):
                if _key(item[0]) == key:
                    items.insert(position, (display, value))
                    break
            else:
                items.append((display, value))
            self._reindex()
            return
        items.append((display, value))
        self._idx.setdefault(key, []).append(value)
        self._parts = None
        self._cache.clear()

    def remove(self, name: str) -> None:
        """Remove every header of that name."""
        key = _key(name)
        if key not in self._index:
            return
        self._items = [item for item in self._items if _key(item[0]) != key]
        self._reindex()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._values(_FAST_KEYS.get(name) or _key(name)) \
            is not None

    def items(self) -> list[tuple[str, str]]:
        """(name, raw value) per header line, in order."""
        return list(self._items)

    def copy(self) -> Headers:
        """An independent copy (the typed-value cache is not shared)."""
        index = {key: list(values) for key, values in self._index.items()}
        if self._list is None:
            return Headers._from_lines(list(self._lines or []), index)
        headers = Headers._from_lines([], index)
        headers._list = list(self._list)
        return headers

    def _wire(self) -> tuple[bytes, bytes]:
        """The encoded header lines before and after the (first) Content-Length, cached.

        The cache lives in ``_cache``, which every change clears, so a message that is sent
        again (retransmissions, a forwarded request) is not re-serialised.
        """
        wire: tuple[bytes, bytes] | None = self._cache.get(_WIRE)
        if wire is None:
            before: list[str] = []
            after: list[str] = []
            out = before
            for name, value in self._items:
                if name == "Content-Length":
                    out = after
                    continue
                out.append(f"{name}: {value}\r\n")
            wire = ("".join(before).encode("utf-8", "surrogateescape"),
                    "".join(after).encode("utf-8", "surrogateescape"))
            self._cache[_WIRE] = wire
        return wire

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# ----------------------------------------------------------------------------------------------
# Messages

_MISSING: Any = object()


class Message:
    """What requests and responses share: headers, body and the typed header views.

    Typed views are parsed on first access and cached until the headers change; they raise
    :class:`SipParseError` on bad values. They are views: change a message through
    :attr:`headers` or the setters below, not by mutating a returned object.
    """

    __slots__ = ("body", "headers")

    headers: Headers
    body: bytes

    # -- start line and encoding ----------------------------------------------------------------

    def start_line(self) -> str:
        """The request or status line, without CRLF."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The wire form; Content-Length is always written and matches the body."""
        before, after = self.headers._wire()
        body = self.body
        return b"".join((self.start_line().encode("utf-8", "surrogateescape"), b"\r\n", before,
                         b"Content-Length: %d\r\n" % len(body), after, b"\r\n", body))

    def __bytes__(self) -> bytes:
        return self.encode()

    def copy(self) -> Self:
        """An independent copy (headers copied, typed views re-parsed on access)."""
        other = object.__new__(type(self))
        self._copy_start_line(other)
        other.headers = self.headers.copy()
        other.body = self.body
        return other

    def _copy_start_line(self, other: Any) -> None:
        raise NotImplementedError

    # -- typed views ----------------------------------------------------------------------------

    def partial(self) -> dict[str, str]:
        """Raw Via/From/To/Call-ID/CSeq values, as :attr:`SipParseError.partial` carries them."""
        return _partial(self.headers._idx)

    def _failed(self, error: SipParseError) -> SipParseError:
        if not error.partial:
            error.partial = self.partial()
        return error

    def _required(self, key: str) -> str:
        values = self.headers._values(key)
        if not values:
            raise self._failed(SipParseError(f"missing {_DISPLAY.get(key, key)} header"))
        if len(values) > 1:
            raise self._failed(SipParseError(f"more than one {_DISPLAY.get(key, key)} header"))
        return values[0]

    # Each view: one dict lookup when cached; the cache lives in (and dies with changes to)
    # the Headers object.

    @property
    def vias(self) -> list[Via]:
        """Every Via, top first (RFC 3261 §20.42)."""
        headers = self.headers
        value: list[Via] | None = headers._cache.get("vias")
        if value is None:
            values = headers._idx.get("via")
            parts = headers._parts
            try:
                if parts is not None:
                    value = [_via_of(*parts[_VIA_PARTS])]  # type: ignore[arg-type]
                elif values is not None and len(values) == 1 and "," not in values[0]:
                    value = [parse_via(values[0])]
                else:
                    value = [parse_via(v) for v in headers.get_all("via")]
            except SipParseError as error:
                raise self._failed(error) from None
            headers._cache["vias"] = value
        return value

    @vias.setter
    def vias(self, vias: list[Via]) -> None:
        self.headers.remove("Via")
        for via in vias:
            self.headers.add("Via", str(via))

    @property
    def call_id(self) -> str:
        """Call-ID (RFC 3261 §20.8)."""
        headers = self.headers
        value: str | None = headers._cache.get("call-id")
        if value is None:
            values = headers._idx.get("call-id")
            value = values[0] if values is not None and len(values) == 1 else \
                self._required("call-id")
            if headers._parts is None and not _CALL_ID_RE.fullmatch(value):
                raise self._failed(SipParseError(f"bad Call-ID {value!r}"))
            headers._cache["call-id"] = value
        return value

    @call_id.setter
    def call_id(self, value: str) -> None:
        self.headers.set("Call-ID", value)

    @property
    def cseq(self) -> CSeq:
        """CSeq (RFC 3261 §20.16)."""
        cache = self.headers._cache
        value: CSeq | None = cache.get("cseq")
        if value is None:
            try:
                value = parse_cseq(self._required("cseq"))
            except SipParseError as error:
                raise self._failed(error) from None
            cache["cseq"] = value
        return value

    @cseq.setter
    def cseq(self, value: CSeq) -> None:
        self.headers.set("CSeq", str(value))

    def _name_addr(self, key: str) -> NameAddr:
        headers = self.headers
        value: NameAddr | None = headers._cache.get(key)
        if value is None:
            values = headers._idx.get(key)
            parts = headers._parts
            try:
                if parts is not None:
                    at = _FROM_PARTS if key == "from" else _TO_PARTS
                    value = _name_addr_of(*parts[at])  # type: ignore[arg-type]
                else:
                    value = parse_name_addr(values[0] if values is not None and len(values) == 1
                                            else self._required(key))
            except SipParseError as error:
                raise self._failed(error) from None
            headers._cache[key] = value
        return value

    @property
    def from_(self) -> NameAddr:
        """From (RFC 3261 §20.20)."""
        return self._name_addr("from")

    @from_.setter
    def from_(self, value: NameAddr) -> None:
        self.headers.set("From", str(value))

    @property
    def to(self) -> NameAddr:
        """To (RFC 3261 §20.39)."""
        return self._name_addr("to")

    @to.setter
    def to(self, value: NameAddr) -> None:
        self.headers.set("To", str(value))

    def _addresses(self, key: str) -> list[NameAddr]:
        cache = self.headers._cache
        value: list[NameAddr] | None = cache.get(key)
        if value is None:
            values = self.headers.get_all(key)
            try:
                if key == "contact" and "*" in values:
                    if len(values) > 1:
                        raise SipParseError("Contact: * mixed with other contacts")
                    value = []
                else:
                    value = [parse_name_addr(v) for v in values]
            except SipParseError as error:
                raise self._failed(error) from None
            cache[key] = value
        return value

    @property
    def contact_star(self) -> bool:
        """True for ``Contact: *`` (RFC 3261 §10.2.2, REGISTER only)."""
        values = self.headers.get_all("contact")
        return len(values) == 1 and values[0] == "*"

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values; empty for ``*`` (see :attr:`contact_star`)."""
        return self._addresses("contact")

    @contacts.setter
    def contacts(self, values: list[NameAddr]) -> None:
        self._set_list("Contact", values)

    @property
    def routes(self) -> list[NameAddr]:
        """Route values in order (RFC 3261 §20.34)."""
        return self._addresses("route")

    @routes.setter
    def routes(self, values: list[NameAddr]) -> None:
        self._set_list("Route", values)

    @property
    def record_routes(self) -> list[NameAddr]:
        """Record-Route values in order (RFC 3261 §20.30)."""
        return self._addresses("record-route")

    @record_routes.setter
    def record_routes(self, values: list[NameAddr]) -> None:
        self._set_list("Record-Route", values)

    def _set_list(self, name: str, values: list[NameAddr]) -> None:
        self.headers.remove(name)
        for value in values:
            self.headers.add(name, str(value))

    def _number(self, key: str, limit: int | None, clamp: int | None) -> int | None:
        cache = self.headers._cache
        value: int | None = cache.get(key, _MISSING)
        if value is _MISSING:
            values = self.headers._values(key)
            if not values:
                value = None
            else:
                value = _digits(self._required(key))
                if value is None or (limit is not None and value > limit):
                    raise self._failed(SipParseError(f"bad {_DISPLAY[key]} {values[0]!r}"))
                if clamp is not None:
                    value = min(value, clamp)
            cache[key] = value
        return value

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255); None when absent (requests: see :class:`Request`)."""
        return self._number("max-forwards", 255, None)

    @max_forwards.setter
    def max_forwards(self, value: int) -> None:
        self.headers.set("Max-Forwards", str(value))

    @property
    def expires(self) -> int | None:
        """Expires in seconds, None when absent; values above 2**32-1 read as 2**32-1."""
        return self._number("expires", None, _MAX_EXPIRES)

    @expires.setter
    def expires(self, value: int) -> None:
        self.headers.set("Expires", str(value))

    @property
    def content_type(self) -> str | None:
        """The Content-Type value as written (with parameters), None when absent."""
        return self.headers.get("content-type")

    @property
    def mime_type(self) -> str | None:
        """type/subtype of Content-Type, lower-cased, without parameters."""
        value = self.headers.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()

    def validate(self) -> None:
        """Parse every typed view of the required headers now (raises SipParseError)."""
        self.vias  # noqa: B018
        if not self.vias:
            raise SipParseError("missing Via header", partial=self.partial())
        self.call_id  # noqa: B018
        self.cseq  # noqa: B018
        self.from_  # noqa: B018
        self.to  # noqa: B018
        self.max_forwards  # noqa: B018
        self.contacts  # noqa: B018


class Request(Message):
    """A SIP request (RFC 3261 §7.1)."""

    __slots__ = ("method", "uri")

    method: str
    uri: SipUri

    def __init__(self, method: str, uri: SipUri | str,
                 headers: Headers | list[tuple[str, str]] | None = None,
                 body: bytes = b"") -> None:
        if not _TOKEN_RE.fullmatch(method):
            raise ValueError(f"bad method {method!r}")
        self.method = method
        self.uri = parse_uri(uri) if isinstance(uri, str) else uri
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    def start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def _copy_start_line(self, other: Any) -> None:
        other.method = self.method
        other.uri = self.uri.with_()

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards; an absent one is tolerated and reads as 70 (RFC 3261 §8.1.1.6)."""
        value = self._number("max-forwards", 255, None)
        return DEFAULT_MAX_FORWARDS if value is None else value

    @max_forwards.setter
    def max_forwards(self, value: int) -> None:
        self.headers.set("Max-Forwards", str(value))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"


class Response(Message):
    """A SIP response (RFC 3261 §7.2)."""

    __slots__ = ("reason", "status")

    status: int
    reason: str

    def __init__(self, status: int, reason: str | None = None,
                 headers: Headers | list[tuple[str, str]] | None = None,
                 body: bytes = b"") -> None:
        if not 100 <= status <= 699:
            raise ValueError(f"status {status} out of range")
        self.status = status
        self.reason = reason_phrase(status) if reason is None else reason
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    def start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def _copy_start_line(self, other: Any) -> None:
        other.status = self.status
        other.reason = self.reason

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# ----------------------------------------------------------------------------------------------
# Parsing

def _partial(index: dict[str, list[str]]) -> dict[str, str]:
    partial: dict[str, str] = {}
    for key, name in _PARTIAL_HEADERS:
        values = index.get(key)
        if values:
            partial[name] = ", ".join(values) if key == "via" else values[0]
    return partial


def _unfold(lines: list[str]) -> list[str]:
    """Join continuation lines (RFC 3261 §7.3.1 LWS) to their header with one space."""
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and out:
            out[-1] = out[-1].rstrip() + " " + line.strip()
        else:
            out.append(line)
    return out


def _line_key(name: str, colon: str, line: str, index: dict[str, list[str]]) -> str:
    """The key of a header line whose name is not spelled as usual (or that has no colon)."""
    if not colon:
        raise SipParseError(f"header line without colon: {line[:40]!r}", partial=_partial(index))
    name = name.rstrip(" \t")
    key = _KEYS.get(name.lower())
    if key is None:
        if not _TOKEN_RE.fullmatch(name):
            raise SipParseError(f"bad header name {name[:40]!r}", partial=_partial(index))
        key = name.lower()
    return key


def _parse_head(head: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """Split the header block into the start line, the header lines and their index by key.

    One split and one partition per line; names spelled as usual cost one dict lookup.
    """
    lines = head.split("\r\n")
    if head.count("\n") != len(lines) - 1:  # bare LF line ends: tolerated
        lines = head.replace("\r\n", "\n").split("\n")
    if "\n " in head or "\n\t" in head:
        lines = _unfold(lines)
    start_line = lines[0]
    del lines[0]
    index: dict[str, list[str]] = {}
    keys = _FAST_KEYS
    for line in lines:
        name, colon, value = line.partition(":")
        key = keys.get(name)
        if key is None or not colon:
            key = _line_key(name, colon, line, index)
        if key not in index:
            index[key] = [value.strip()]
        elif key in _SINGLE_SET:
            raise SipParseError(f"more than one {_DISPLAY.get(key, key)} header",
                                partial=_partial(index))
        else:
            index[key].append(value.strip())
    if len(lines) > MAX_HEADER_LINES:
        raise SipParseError(f"more than {MAX_HEADER_LINES} header lines", 513, _partial(index))
    if len(head) > MAX_HEADER_LINE and max(map(len, lines)) > MAX_HEADER_LINE:
        raise SipParseError(f"header line longer than {MAX_HEADER_LINE} characters", 513,
                            _partial(index))
    if len(start_line) > MAX_START_LINE:
        status = 513 if start_line[:4].upper() == "SIP/" else 414
        raise SipParseError("start line too long", status, _partial(index))
    return start_line, lines, index


def _items_from_lines(lines: list[str], index: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(canonical name, value) per header line already accepted by :func:`_parse_head`."""
    display = _DISPLAY
    if len(index) == len(lines):
        # No name repeats, so the index is in line order and holds every value already.
        return [(display.get(key) or line.partition(":")[0].rstrip(" \t"), values[0])
                for line, (key, values) in zip(lines, index.items(), strict=True)]
    items: list[tuple[str, str]] = []
    names = _FAST_NAMES
    for line in lines:
        name, _, value = line.partition(":")
        entry = names.get(name)
        if entry is None:
            name = name.rstrip(" \t")
            key = _KEYS.get(name.lower())
            if key is not None:
                name = display[key]
        else:
            name = entry[1]
        items.append((name, value.strip()))
    return items


def _content_length(index: dict[str, list[str]]) -> int | None:
    values = index.get("content-length")
    if not values:
        return None
    number = _digits(values[0])
    if len(values) > 1 or number is None or number >= _MAX_CONTENT_LENGTH:
        raise SipParseError(f"bad Content-Length {values!r}", partial=_partial(index))
    return number


def parse(data: bytes, *, stream: bool = False) -> Request | Response:
    """Parse one message; raises :class:`SipParseError` and nothing else.

    For a datagram (RFC 3261 §18.3) a body shorter than Content-Length is an error, bytes beyond
    it are discarded and without Content-Length the body is the rest of the datagram. With
    ``stream`` the data is exactly one framed message and Content-Length is required.

    What is checked here: the start line (and the Request-URI), the header block's syntax, that
    Via, From, To, Call-ID and CSeq are present, at most one of each single-valued header,
    Content-Length against the body, and CSeq (its method must match the request's). The other
    typed values are checked when first read (see :meth:`Message.validate`).
    """
    try:
        if type(data) is not bytes:
            data = bytes(data)
        end = data.find(b"\r\n\r\n")
        if 0 < end <= MAX_START_LINE:  # the usual shape first (no more characters than bytes)
            message = _parse_fast(data[:end].decode("utf-8", "surrogateescape"), data[end + 4:],
                                  stream)
            if message is not None:
                return message
        return _parse(data, stream)
    except SipParseError:
        raise
    except (ValueError, IndexError, TypeError, UnicodeError, OverflowError) as error:
        raise SipParseError(f"malformed message ({error.__class__.__name__})") from None


def _parse(data: bytes, stream: bool) -> Request | Response:
    start = 0
    if data[:1] == b"\r":
        while data[start:start + 2] == b"\r\n":  # RFC 3261 §7.5: ignore CRLF before start-line
            start += 2
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        head_bytes = data[start:end]
        rest = data[end + 4:]
    else:
        end = data.find(b"\n\n", start)
        if end >= 0:
            head_bytes = data[start:end]
            rest = data[end + 2:]
        else:
            head_bytes = data[start:].rstrip(b"\r\n")
            rest = b""
            if not head_bytes:
                raise SipParseError("empty message")
    start_line, lines, index = _parse_head(head_bytes.decode("utf-8", "surrogateescape"))

    values = index.get("content-length")
    if values is not None and len(values) == 1 and len(values[0]) < 10 and \
            values[0].isdigit() and values[0].isascii():
        length: int | None = int(values[0])
    else:
        length = _content_length(index)  # absent, or raises
    if length is None:
        if stream:
            raise SipParseError("Content-Length required on stream transports",
                                partial=_partial(index))
        body = rest
    elif len(rest) < length:
        raise SipParseError("body shorter than Content-Length", partial=_partial(index))
    else:
        body = rest[:length] if len(rest) > length else rest

    message: Request | Response
    match = _FAST_STATUS_RE.fullmatch(start_line)
    if match is not None:
        message = Response.__new__(Response)
        message.status = int(match.group(1))
        message.reason = match.group(2) or ""
    elif start_line[:4].upper() == "SIP/":
        message = _parse_status_line(start_line, index)
    else:
        match = _FAST_REQUEST_RE.fullmatch(start_line)
        if match is None:
            message = _parse_request_line(start_line, index)
        else:
            method, scheme, user, host, port, params = match.groups()
            message = Request.__new__(Request)
            message.method = method
            try:
                message.uri = _fast_uri(scheme, user, host, port, params, start_line)
            except SipParseError as error:
                error.partial = _partial(index)
                raise

    if not ("via" in index and "from" in index and "to" in index and "call-id" in index
            and "cseq" in index):
        for key in _REQUIRED_HEADERS:
            if key not in index:
                raise SipParseError(f"missing {_DISPLAY[key]} header", partial=_partial(index))
    try:
        cseq = parse_cseq(index["cseq"][0])
    except SipParseError as error:
        error.partial = _partial(index)
        raise
    if isinstance(message, Request) and cseq.method != message.method:
        raise SipParseError("CSeq method does not match the request method",
                            partial=_partial(index))
    headers = Headers._from_lines(lines, index)
    headers._cache["cseq"] = cseq
    message.headers = headers
    message.body = body
    return message


def _parse_fast(head: str, rest: bytes, stream: bool) -> Request | Response | None:
    """The message when the header block has the usual shape (:func:`_head_pattern`) and
    passes every check :func:`_parse` makes; None sends it down the general path, which then
    accepts or rejects it as always (the fast path never raises).

    Only Via, From, To, Call-ID, CSeq, Max-Forwards and Content-Length are indexed here; the
    other headers are indexed on first need (:attr:`Headers._index`), and the typed values are
    built from the match's parts when first read.
    """
    match = _HEAD_RE.fullmatch(head)
    if match is None:
        return None
    groups = match.groups()
    status, reason, method_line = groups[0], groups[1], groups[_G_METHOD]
    via, from_, to = groups[_G_VIA], groups[_G_FROM], groups[_G_TO]
    call_id = groups[_G_CALL_ID] or groups[_G_CALL_ID_I]
    cseq_text, number_text, method = groups[_G_CSEQ:_G_CSEQ + 3]
    if via is None or from_ is None or to is None or call_id is None or cseq_text is None:
        return None  # RFC 3261 §8.1.1: the general path names what is missing
    length_text = groups[_G_CL] or groups[_G_CL_L]
    max_forwards = groups[_G_MF]
    if length_text is None:
        if stream:
            return None
        body = rest
    else:
        length = int(length_text)
        if len(rest) < length:
            return None
        body = rest[:length] if len(rest) > length else rest
    number = int(number_text)
    if number >= _MAX_CSEQ:
        return None
    index = {"via": [via], "from": [from_], "to": [to], "call-id": [call_id],
             "cseq": [cseq_text]}
    if max_forwards is not None:
        index["max-forwards"] = [max_forwards]
    if length_text is not None:
        index["content-length"] = [length_text]
    message: Request | Response
    if status is not None:
        message = Response.__new__(Response)
        message.status = int(status)
        message.reason = reason or ""
    else:
        if method_line != method:
            return None
        scheme, user, host, port, params = groups[_G_METHOD + 1:_G_METHOD + 6]
        if port is not None and int(port) > 65535:
            return None
        message = Request.__new__(Request)
        message.method = method
        message.uri = _fast_uri(scheme, user, host, port, params, "")
    headers = Headers.__new__(Headers)
    headers._list = None
    headers._lines = None
    headers._idx = index
    headers._head = head
    headers._parts = groups
    headers._cache = {"cseq": tuple.__new__(CSeq, (number, method))}
    message.headers = headers
    message.body = body
    return message


def _parse_status_line(line: str, index: dict[str, list[str]]) -> Response:
    version, _, rest = line.partition(" ")
    code_text, _, reason = rest.partition(" ")
    if version.upper() != "SIP/2.0":
        status = 505 if _VERSION_RE.fullmatch(version) else 400
        raise SipParseError(f"unsupported version {version[:20]!r}", status, _partial(index))
    code = _digits(code_text)
    if code is None or len(code_text) != 3 or not 100 <= code <= 699:
        raise SipParseError(f"bad status code {code_text[:20]!r}", partial=_partial(index))
    response = Response.__new__(Response)
    response.status = code
    response.reason = reason
    return response


def _parse_request_line(line: str, index: dict[str, list[str]]) -> Request:
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(f"bad request line {line[:60]!r}", partial=_partial(index))
    method, uri_text, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise SipParseError(f"bad method {method[:20]!r}", partial=_partial(index))
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        status = 505 if _VERSION_RE.fullmatch(version) else 400
        raise SipParseError(f"unsupported version {version[:20]!r}", status, _partial(index))
    try:
        uri = parse_uri(uri_text)
    except SipParseError as error:
        error.partial = _partial(index)
        raise
    if uri.headers:  # RFC 3261 §19.1.1 table: headers are not allowed in a Request-URI
        raise SipParseError("Request-URI with headers", partial=_partial(index))
    request = Request.__new__(Request)
    request.method = method
    request.uri = uri
    return request


class StreamParser:
    """Frames messages on a stream transport (TCP, TLS) by Content-Length (RFC 3261 §18.3).

    CRLFs between messages are skipped (RFC 3261 §7.5); a double CRLF there is a keepalive ping
    (RFC 5626 §4.4.1) and counted in :attr:`pings` (answer each with one CRLF), a single one a
    pong, counted in :attr:`pongs`. After :class:`SipParseError` the stream is out of step: close
    the connection (after answering 400 if the error's ``partial`` allows it).
    """

    def __init__(self, max_size: int = 65536) -> None:
        self.max_size = max_size
        self.pings = 0
        self.pongs = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Request | Response]:
        """Add bytes; return every message completed by them."""
        buffer = self._buffer
        buffer += data
        out: list[Request | Response] = []
        while buffer:
            if buffer[0] in (13, 10):
                if not self._skip_crlf():
                    break
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.max_size:
                    raise SipParseError("message head too large", 413)
                break
            head = bytes(buffer[:end + 2])
            match = _STREAM_CL_RE.search(head)
            if match is None:
                parse(head + b"\r\n", stream=True)  # raises the precise error
                raise SipParseError("Content-Length required on stream transports")
            total = end + 4 + int(match.group(1))
            if total > self.max_size:
                partial: dict[str, str] = {}
                try:
                    parse(head + b"\r\n")
                except SipParseError as error:
                    partial = error.partial
                raise SipParseError("message too large", 413, partial)
            if len(buffer) < total:
                break
            message = parse(bytes(buffer[:total]), stream=True)
            del buffer[:total]
            out.append(message)
        return out

    def _skip_crlf(self) -> bool:
        """Consume CRLFs before a start-line; False when more bytes are needed to decide."""
        buffer = self._buffer
        if buffer.startswith(b"\r\n\r\n"):
            self.pings += 1
            del buffer[:4]
            return True
        if buffer.startswith(b"\r\n"):
            if len(buffer) < 4 and b"\r\n\r\n".startswith(bytes(buffer)):
                return False  # maybe the first half of a ping
            self.pongs += 1
            del buffer[:2]
            return True
        if buffer == b"\r":
            return False
        del buffer[:1]  # a stray CR or LF
        return True

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)


# ----------------------------------------------------------------------------------------------
# Building

def make_response(request: Request, status: int, reason: str | None = None, *,
                  to_tag: str | None = None) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.

    Copies every Via (in order), From, To (with ``to_tag`` added when To has no tag yet),
    Call-ID and CSeq; a 100 also copies Timestamp (§8.2.6.1). The body is empty.
    """
    source = request.headers
    items: list[tuple[str, str]] = [("Via", value) for value in source._idx.get("via", [])]
    from_value = source.get("from")
    if from_value is not None:
        items.append(("From", from_value))
    to_value = source.get("to")
    if to_value is not None:
        if to_tag is not None and request.to.tag is None:
            to_value = f"{to_value};tag={to_tag}"
        items.append(("To", to_value))
    for name in ("Call-ID", "CSeq"):
        value = source.get(name)
        if value is not None:
            items.append((name, value))
    if status == 100:
        timestamp = source.get("timestamp")
        if timestamp is not None:
            items.append(("Timestamp", timestamp))
    return Response(status, reason, items)


def error_response(error: SipParseError, *, to_tag: str | None = None) -> Response | None:
    """The answer to a request that failed to parse, or None when it cannot be routed.

    Built from ``error.partial``: without a Via, a From, a To, a Call-ID and a CSeq the
    request cannot be answered (RFC 3261 §8.2.6) and should be dropped.
    """
    partial = error.partial
    if not all(name in partial for name in ("Via", "From", "To", "Call-ID", "CSeq")):
        return None
    to_value = partial["To"]
    if to_tag is not None and ";tag=" not in to_value.lower().replace(" ", ""):
        to_value = f"{to_value};tag={to_tag}"
    status = error.status if 400 <= error.status <= 699 else 400
    reason = reason_phrase(status)
    if status == 400:
        cleaned = "".join(c if c.isprintable() else " " for c in error.reason)[:100]
        reason = f"Bad Request ({cleaned})" if cleaned else reason
    return Response(status, reason, [
        ("Via", partial["Via"]), ("From", partial["From"]), ("To", to_value),
        ("Call-ID", partial["Call-ID"]), ("CSeq", partial["CSeq"]),
    ])


_REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority", 420: "Bad Extension", 421: "Extension Required",
    422: "Session Interval Too Small", 423: "Interval Too Brief",
    424: "Bad Location Information", 428: "Use Identity Header",
    429: "Provide Referrer Identity", 430: "Flow Failed", 433: "Anonymity Disallowed",
    436: "Bad Identity-Info", 437: "Unsupported Certificate", 438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support", 440: "Max-Breadth Exceeded",
    469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere",
    606: "Not Acceptable", 607: "Unwanted", 608: "Rejected",
}
_CLASS_REASONS = {1: "Trying", 2: "OK", 3: "Redirection", 4: "Client Error", 5: "Server Error",
                  6: "Global Failure"}


def reason_phrase(status: int) -> str:
    """The usual reason phrase of ``status`` (RFC 3261 §21 and later registrations)."""
    return _REASONS.get(status) or _CLASS_REASONS.get(status // 100, "Unknown")


def new_branch(rng: random.Random) -> str:
    """A Via branch: the RFC 3261 §8.1.1.7 magic cookie and 80 random bits."""
    return f"{MAGIC_COOKIE}{rng.getrandbits(80):020x}"


def new_tag(rng: random.Random) -> str:
    """A From/To tag with 64 random bits (RFC 3261 §19.3 asks for at least 32)."""
    return f"{rng.getrandbits(64):016x}"


def new_call_id(rng: random.Random, host: str | None = None) -> str:
    """A Call-ID with 128 random bits, ``@host`` appended when given (RFC 3261 §8.1.1.4)."""
    value = f"{rng.getrandbits(128):032x}"
    return f"{value}@{host}" if host else value

