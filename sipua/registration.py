"""SIP registration of one address-of-record (RFC 3261 §10.2), sans-IO.

A :class:`Registration` builds the REGISTER requests of one binding and reacts to their
responses; the adapter (:mod:`sipua.account`) sends the requests through the transaction layer
and feeds back responses, time-outs and transport failures. What it does:

- one Call-ID for the life of the object and an increasing CSeq (RFC 3261 §10.2.4); To and From
  are the address-of-record; Contact carries ``expires`` and an Expires header says the same;
- 401/407 answered with :class:`~sipua.auth.DigestClient`; ``stale=true`` is answered silently,
  a second challenge after credentials means the credentials are wrong: one permanent
  :class:`RegistrationFailed`, no retry loop (RFC 3261 §22.2);
- 423 Interval Too Brief: retried once with the registrar's Min-Expires (§10.2.8);
- the granted lifetime is the ``expires`` parameter of our Contact in the 2xx, else the Expires
  header, else what was asked (§10.2.4); the refresh goes out at 90 % of it but at least
  ``refresh_margin`` seconds before expiry, and never before half of it has passed;
- 408, 480, 5xx, time-outs and transport failures are temporary: the REGISTER is retried after
  ``min(retry_max, retry_base * 2**(failures-1))`` seconds drawn down to 50-100 % by the rng
  (the shape of RFC 5626 §4.5), or after Retry-After when the registrar gives one (§20.33);
  every other final response is permanent and stops the machine;
- behind a NAT (UDP only), a response whose top Via shows a ``received``/``rport`` other than
  our Contact address moves the Contact to that public address (RFC 3581 §9); the binding of the
  old Contact is removed in the same REGISTER (``expires=0``);
- :meth:`Registration.unregister` removes our binding (or all of the AOR's with ``*``,
  §10.2.2) on shutdown.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from sipua.auth import DigestAuthFailed, DigestClient, DigestCredentials
from sipua.message import (
    DEFAULT_MAX_FORWARDS,
    NameAddr,
    Request,
    Response,
    SipParseError,
    new_branch,
    new_call_id,
    new_tag,
)
from sipua.uri import SipUri, parse_uri, uri_equal

__all__ = [
    "Address",
    "Registered",
    "Registration",
    "RegistrationEvent",
    "RegistrationFailed",
    "RegistrationRetryScheduled",
    "RegistrationSettings",
    "RegistrationState",
    "Unregistered",
    "refresh_delay",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]

#: Responses after which registering again later may succeed (RFC 3261 §8.1.3.1, §21.5).
_TEMPORARY = frozenset({408, 480})


@dataclass(frozen=True)
class RegistrationSettings:
    """What to register, with which credentials, and the timing policy."""

    #: Address-of-record, "sip:alice@example.org" (To and From of every REGISTER, §10.2).
    aor: str
    #: Digest user name; None = the user part of ``aor``.
    username: str | None = None
    #: Digest password; None = answer no challenge (a challenge is then a permanent failure).
    password: str | None = dataclasses.field(default=None, repr=False)
    #: Lifetime asked for, in seconds (Contact ``expires`` and Expires, §10.2.1.1).
    expires: int = 600
    #: Transport of the binding: "udp", "tcp" or "tls" (names the Contact's transport).
    transport: str = "udp"
    #: Request-URI of the REGISTER; None = "sip:" + the domain of ``aor`` (§10.2).
    registrar_uri: str | None = None
    #: Display name put in From.
    display_name: str | None = None
    #: User-Agent header value; None = no header.
    user_agent: str | None = None
    #: Refresh when this fraction of the granted lifetime has passed...
    refresh_fraction: float = 0.9
    #: ...but at least this many seconds before expiry (and never before half of it).
    refresh_margin: float = 5.0
    #: Seconds before the first retry after a temporary failure (doubles per failure).
    retry_base: float = 30.0
    #: Longest wait between retries, in seconds (RFC 5626 §4.5 suggests 1800).
    retry_max: float = 1800.0
    #: Behind a NAT, put the public address learned from Via received/rport in Contact (UDP).
    nat_contact: bool = True

    def __post_init__(self) -> None:
        aor = parse_uri(self.aor)
        if aor.scheme not in ("sip", "sips") or not aor.user:
            raise ValueError(f"the address-of-record must be sip:user@domain, got {self.aor!r}")
        if self.transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, got {self.transport!r}")
        if not 1 <= self.expires <= 2**32 - 1:
            raise ValueError(f"expires must be 1 to 2**32-1 seconds, got {self.expires}")
        if not 0.5 <= self.refresh_fraction < 1.0:
            raise ValueError("refresh_fraction must be in [0.5, 1)")
        if self.retry_base <= 0 or self.retry_max < self.retry_base:
            raise ValueError("need 0 < retry_base <= retry_max")


class RegistrationState(enum.Enum):
    """Where the binding stands."""

    IDLE = "idle"
    #: A REGISTER is out and no binding is known to exist.
    REGISTERING = "registering"
    #: The binding exists (a refresh may be out).
    REGISTERED = "registered"
    #: A temporary failure: waiting for the retry timer.
    RETRY_WAIT = "retry-wait"
    #: The REGISTER with expires 0 is out.
    UNREGISTERING = "unregistering"
    #: Unregistered on request; the machine is done.
    UNREGISTERED = "unregistered"
    #: A permanent failure (bad credentials, 403, 404, ...); the machine is done.
    FAILED = "failed"


# --- events -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Event:
    def to_dict(self) -> dict[str, Any]:
        """``{"event": ClassName, field: value...}`` with plain JSON types."""
        out: dict[str, Any] = {"event": type(self).__name__}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
                host, port = value
                value = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            out[item.name] = value
        return out


@dataclass(frozen=True)
class Registered(_Event):
    """The registrar accepted the binding (first time or refresh)."""

    aor: str
    #: Lifetime granted, in seconds.
    expires: int
    #: The Contact URI bound.
    contact: str
    #: Our address as the registrar saw it, when it differs from the local one (NAT).
    public_address: Address | None
    at: float


@dataclass(frozen=True)
class RegistrationFailed(_Event):
    """A REGISTER failed; ``permanent`` means no retry follows (the machine stopped)."""

    aor: str
    #: The final status, 408 for a time-out, 503 for a transport failure (§8.1.3.1, §17.1.4).
    status: int
    reason: str
    permanent: bool
    #: No answer at all came (time-out or transport failure), as opposed to a response.
    no_answer: bool
    at: float


@dataclass(frozen=True)
class RegistrationRetryScheduled(_Event):
    """After a temporary failure the next REGISTER goes out at ``at``."""

    aor: str
    #: Absolute time of the retry, in the caller's timebase.
    retry_at: float
    #: Consecutive temporary failures so far.
    failures: int
    at: float


@dataclass(frozen=True)
class Unregistered(_Event):
    """The binding was removed (``confirmed`` by a 2xx) or there was nothing to remove."""

    aor: str
    confirmed: bool
    reason: str
    #: The final status of the unregistering REGISTER: 408 for a time-out, 503 for a transport
    #: failure; None when nothing was sent.
    status: int | None
    #: No answer at all came (time-out or transport failure).
    no_answer: bool
    at: float


RegistrationEvent = Registered | RegistrationFailed | RegistrationRetryScheduled | Unregistered


def refresh_delay(granted: float, fraction: float = 0.9, margin: float = 5.0) -> float:
    """Seconds after a 2xx to send the refresh: ``fraction`` of ``granted``, at least ``margin``
    before expiry, never before half of it (so very short lifetimes do not flood)."""
    return max(granted * 0.5, min(granted * fraction, granted - margin))


def _show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Registration:
    """The binding of one AOR at one registrar; see the module docstring.

    ``local_address`` is the (host, port) this agent's SIP socket for ``settings.transport``
    shows in Via and, until a NAT is detected, in Contact.
    """

    def __init__(self, settings: RegistrationSettings, *, local_address: Address,
                 rng: random.Random) -> None:
        self.settings = settings
        self.state = RegistrationState.IDLE
        self._rng = rng
        self._aor = parse_uri(settings.aor)
        self._local = local_address
        self._request_uri = parse_uri(settings.registrar_uri or f"sip:{self._aor.host_port}")
        self.call_id = new_call_id(rng)
        self._from_tag = new_tag(rng)
        self._cseq = 0
        self._expires = settings.expires
        self._contact_address = local_address
        #: A contact whose binding must go (moved behind NAT): expires=0 in the next REGISTER.
        self._stale_contact: Address | None = None
        self._public: Address | None = None
        self._in_flight: Request | None = None
        self._unregistering = False
        self._unregister_all = False
        self._stop_requested = False
        self._bound_until: float | None = None
        self._timer_at: float | None = None
        self._failures = 0
        self._digest: DigestClient | None = None
        if settings.password is not None:
            username = settings.username or self._aor.user or ""
            self._digest = DigestClient(DigestCredentials(username, settings.password), rng)
        self._transmits: list[Request] = []
        self._events: deque[RegistrationEvent] = deque()

    # --- outputs --------------------------------------------------------------------------------

    def pop_transmits(self) -> list[Request]:
        """REGISTER requests to send (each one a new client transaction), oldest first."""
        out, self._transmits = self._transmits, []
        return out

    def next_event(self) -> RegistrationEvent | None:
        """The oldest undelivered event, or None."""
        return self._events.popleft() if self._events else None

    def next_timer(self) -> float | None:
        """When the refresh or retry is due, or None."""
        return self._timer_at

    # --- views ----------------------------------------------------------------------------------

    @property
    def aor(self) -> str:
        """The address-of-record as configured."""
        return self.settings.aor

    @property
    def contact(self) -> SipUri:
        """The Contact URI the next REGISTER carries."""
        return self._contact_uri(self._contact_address)

    @property
    def public_address(self) -> Address | None:
        """Our address as the registrar sees it, when it differs from the local one."""
        return self._public

    @property
    def expires_at(self) -> float | None:
        """When the current binding lapses unless refreshed (None: none known)."""
        return self._bound_until

    @property
    def busy(self) -> bool:
        """A REGISTER is waiting for its final response."""
        return self._in_flight is not None

    # --- commands -------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Send the first REGISTER."""
        if self.state is not RegistrationState.IDLE:
            raise ValueError(f"start() in state {self.state.value}")
        self._set_state(RegistrationState.REGISTERING, "start")
        self._send(now)

    def unregister(self, now: float, *, all_contacts: bool = False) -> None:
        """Remove our binding (RFC 3261 §10.2.2); with ``all_contacts`` every binding of the AOR
        (``Contact: *``), which works without having registered first.

        :class:`Unregistered` follows; at once when there is nothing to remove. A REGISTER still
        out is waited for first (§10.2: one REGISTER at a time).
        """
        if self.state in (RegistrationState.UNREGISTERED, RegistrationState.UNREGISTERING):
            return
        self._stop_requested = True
        self._unregister_all = self._unregister_all or all_contacts
        self._timer_at = None
        if self._in_flight is not None:
            return  # decided when its final response (or time-out) comes
        self._finish_or_unregister(now, "unregister requested")

    # --- inputs ---------------------------------------------------------------------------------

    def receive_response(self, response: Response, now: float) -> bool:
        """A response from the transaction layer; returns whether it was ours.

        Responses of other Call-IDs or older CSeqs are ignored (they belong to another
        registration or were overtaken).
        """
        request = self._in_flight
        try:
            if (request is None or response.call_id != self.call_id
                    or response.cseq.number != self._cseq or response.cseq.method != "REGISTER"):
                return False
        except SipParseError:
            return False
        if response.status < 200:
            return True
        self._in_flight = None
        moved = self._learn_public_address(response, 200 <= response.status < 300)
        status = response.status
        if status in (401, 407):
            self._challenged(request, response, now)
        elif status == 423:
            self._too_brief(response, now)
        elif 200 <= status < 300:
            self._accepted(response, moved, now)
        else:
            self._rejected(response, now)
        return True

    def request_failed(self, request: Request, reason: str, now: float, *,
                       timed_out: bool) -> bool:
        """The REGISTER ``request`` got no answer (timer F) or could not be sent.

        RFC 3261 §8.1.3.1 and §17.1.4: treated as 408 and 503. Returns whether it was ours.
        """
        current = self._in_flight
        try:
            if (current is None or request.call_id != self.call_id
                    or request.cseq.number != self._cseq):
                return False
        except SipParseError:
            return False
        self._in_flight = None
        status = 408 if timed_out else 503
        text = "no answer from the registrar (timed out)" if timed_out else reason
        if self._unregistering:
            self._done_unregistering(now, confirmed=False, reason=text, status=status,
                                     no_answer=True)
            return True
        self._temporary_failure(status, text, now, retry_after=None, no_answer=True)
        return True

    def handle_timer(self, now: float) -> None:
        """Send the refresh or the retry when due."""
        if self._timer_at is None or now < self._timer_at:
            return
        self._timer_at = None
        if self._in_flight is not None:
            return
        if self.state is RegistrationState.RETRY_WAIT:
            self._set_state(RegistrationState.REGISTERING, "retry timer")
        self._send(now)

    # --- internals: responses -------------------------------------------------------------------

    def _challenged(self, request: Request, response: Response, now: float) -> None:
        """RFC 3261 §22.2: answer the challenge, or fail once for good."""
        if self._digest is None:
            self._fail_or_finish(response.status, "authentication required but no password "
                                 "is configured", now)
            return
        try:
            auth = self._digest.handle_challenge(response, "REGISTER", str(request.uri))
        except (DigestAuthFailed, SipParseError) as exc:
            reason = str(exc)
            if isinstance(exc, DigestAuthFailed) and "rejected" in reason:
                reason = f"bad credentials: {reason}"
            self._fail_or_finish(response.status, f"{response.reason} ({reason})", now)
            return
        self._send(now, auth=auth)

    def _too_brief(self, response: Response, now: float) -> None:
        """§10.2.8: ask again for at least Min-Expires."""
        raw = response.headers.get("Min-Expires")
        minimum = int(raw) if raw is not None and raw.strip().isdigit() else None
        if self._unregistering or minimum is None or minimum <= self._expires:
            self._fail_or_finish(423, "Interval Too Brief without a usable Min-Expires", now)
            return
        log.info("%s: registrar wants at least %d s (asked %d)", self.aor, minimum, self._expires)
        self._expires = minimum
        self._send(now)

    def _accepted(self, response: Response, moved: bool, now: float) -> None:
        if self._digest is not None:
            self._digest.succeeded()
        if self._unregistering:
            self._done_unregistering(now, confirmed=True, reason=f"{response.status} "
                                     f"{response.reason}", status=response.status)
            return
        if moved and not self._stop_requested:
            # RFC 3581 §9: the binding holds a private address; bind the public one instead.
            log.info("%s: behind NAT, moving Contact to %s", self.aor,
                     _show(self._contact_address))
            self._send(now)
            return
        self._stale_contact = None
        granted = self._granted(response)
        self._failures = 0
        if granted <= 0:
            self._bound_until = None
            self._fail_or_finish(response.status, "the registrar accepted but granted no "
                                 "lifetime", now)
            return
        self._bound_until = now + granted
        self._set_state(RegistrationState.REGISTERED, f"{response.status}, {granted} s")
        self._events.append(Registered(self.aor, granted, str(self.contact), self._public, now))
        if self._stop_requested:
            self._finish_or_unregister(now, "unregister requested")
            return
        s = self.settings
        self._timer_at = now + refresh_delay(granted, s.refresh_fraction, s.refresh_margin)

    def _granted(self, response: Response) -> int:
        """§10.2.4: our Contact's expires in the 2xx, else Expires, else what we asked."""
        ours = self.contact
        header = None
        try:
            header = response.expires
            for contact in response.contacts:
                if not _same_contact(contact.uri, ours):
                    continue
                value = contact.params.get("expires")
                if value is not None and value.strip().isdigit():
                    return int(value)
        except SipParseError as exc:
            log.info("%s: unreadable Contact/Expires in the 2xx: %s", self.aor, exc)
        return header if header is not None else self._expires

    def _rejected(self, response: Response, now: float) -> None:
        status = response.status
        reason = f"{status} {response.reason}"
        if self._unregistering:
            self._done_unregistering(now, confirmed=False, reason=reason, status=status)
            return
        if status in _TEMPORARY or 500 <= status < 600:
            retry_after = None
            raw = response.headers.get("Retry-After")
            if raw is not None:
                head = raw.split(";", 1)[0].split("(", 1)[0].strip()
                retry_after = float(head) if head.isdigit() else None
            self._temporary_failure(status, reason, now, retry_after=retry_after,
                                    no_answer=False)
            return
        self._fail_or_finish(status, reason, now)

    # --- internals: outcomes --------------------------------------------------------------------

    def _fail_or_finish(self, status: int, reason: str, now: float) -> None:
        """A permanent failure; during unregistration it ends that instead."""
        if self._unregistering:
            self._done_unregistering(now, confirmed=False, reason=reason, status=status)
            return
        self._timer_at = None
        self._set_state(RegistrationState.FAILED, reason)
        self._events.append(RegistrationFailed(self.aor, status, reason, True, False, now))
        if self._stop_requested:
            self._finish_or_unregister(now, "unregister requested")

    def _temporary_failure(self, status: int, reason: str, now: float, *,
                           retry_after: float | None, no_answer: bool) -> None:
        self._failures += 1
        s = self.settings
        if retry_after is not None:
            delay = min(s.retry_max, retry_after)
        else:
            ceiling = min(s.retry_max, s.retry_base * 2 ** min(self._failures - 1, 30))
            delay = ceiling * self._rng.uniform(0.5, 1.0)  # RFC 5626 §4.5
        self._events.append(RegistrationFailed(self.aor, status, reason, False, no_answer, now))
        if self._stop_requested:
            self._finish_or_unregister(now, "unregister requested")
            return
        if self._bound_until is not None and self._bound_until <= now:
            self._bound_until = None
        self._set_state(RegistrationState.RETRY_WAIT, reason)
        self._timer_at = now + delay
        self._events.append(RegistrationRetryScheduled(self.aor, self._timer_at,
                                                       self._failures, now))

    def _finish_or_unregister(self, now: float, cause: str) -> None:
        """Send the unregistering REGISTER, or end at once when nothing can be bound."""
        bound = self._bound_until is not None and self._bound_until > now
        if not bound and not self._unregister_all:
            self._timer_at = None
            self._set_state(RegistrationState.UNREGISTERED, f"{cause}: nothing bound")
            self._events.append(Unregistered(self.aor, False, "nothing was registered", None,
                                             False, now))
            return
        self._unregistering = True
        self._set_state(RegistrationState.UNREGISTERING, cause)
        self._send(now)

    def _done_unregistering(self, now: float, *, confirmed: bool, reason: str, status: int,
                            no_answer: bool = False) -> None:
        self._bound_until = None
        self._timer_at = None
        self._set_state(RegistrationState.UNREGISTERED, reason)
        self._events.append(Unregistered(self.aor, confirmed, reason, status, no_answer, now))

    # --- internals: requests --------------------------------------------------------------------

    def _learn_public_address(self, response: Response, accepted: bool) -> bool:
        """RFC 3581 §9: received/rport in our top Via; True when the Contact moved away from
        a bound one (``accepted``: this response just bound it)."""
        if not self.settings.nat_contact or self.settings.transport != "udp":
            return False
        try:
            via = response.vias[0]
            rport = via.rport
        except (SipParseError, IndexError):
            return False
        if via.received is None and not isinstance(rport, int):
            return False
        port = rport if isinstance(rport, int) and not isinstance(rport, bool) else (
            via.port or 5060)
        public = (via.received or via.host, port)
        if public == self._local:
            self._public = None
        else:
            self._public = public
        if public == self._contact_address:
            return False
        bound = accepted or self._bound_until is not None
        log.info("%s: the registrar sees us at %s, Contact was %s", self.aor, _show(public),
                 _show(self._contact_address))
        if bound and self._stale_contact is None:
            self._stale_contact = self._contact_address
        self._contact_address = public
        return bound

    def _contact_uri(self, address: Address) -> SipUri:
        params: dict[str, str | None] = {}
        if self.settings.transport != "udp":
            params["transport"] = self.settings.transport
        return SipUri("sip", self._aor.user, None, address[0], address[1], params)

    def _send(self, now: float, auth: list[tuple[str, str]] | None = None) -> None:
        """Build and queue the next REGISTER (new CSeq, same Call-ID, §10.2.4)."""
        s = self.settings
        self._cseq += 1
        host, port = self._local
        sent_by = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        aor = NameAddr(self._aor.with_(params={}, headers={}))
        from_ = NameAddr(aor.uri, s.display_name, {"tag": self._from_tag})
        expires = 0 if self._unregistering else self._expires
        headers: list[tuple[str, str]] = [
            ("Via", f"SIP/2.0/{s.transport.upper()} {sent_by};branch={new_branch(self._rng)};"
                    "rport"),
            ("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
            ("From", str(from_)),
            ("To", str(aor)),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self._cseq} REGISTER"),
        ]
        if self._unregistering and self._unregister_all:
            headers.append(("Contact", "*"))  # §10.2.2: every binding of the AOR
        else:
            contacts = [str(NameAddr(self.contact, None, {"expires": str(expires)}))]
            if self._stale_contact is not None and not self._unregistering:
                stale = self._contact_uri(self._stale_contact)
                contacts.append(str(NameAddr(stale, None, {"expires": "0"})))
            headers.append(("Contact", ", ".join(contacts)))
        headers.append(("Expires", str(expires)))
        if s.user_agent:
            headers.append(("User-Agent", s.user_agent))
        request = Request("REGISTER", self._request_uri.with_(), headers)
        if auth is None and self._digest is not None:
            auth = self._digest.authorization("REGISTER", str(self._request_uri))
        for name, value in auth or []:
            request.headers.add(name, value)
        self._in_flight = request
        self._transmits.append(request)
        log.debug("%s: REGISTER cseq %d expires %d", self.aor, self._cseq, expires)

    def _set_state(self, new: RegistrationState, cause: str) -> None:
        old = self.state
        if old is new:
            return
        log.info("%s: %s -> %s (%s)", self.aor, old.value, new.value, cause)
        self.state = new

    def __repr__(self) -> str:
        return f"<Registration {self.aor} {self.state.value}>"


def _same_contact(a: SipUri, b: SipUri) -> bool:
    """Our Contact in a 2xx: URI equality (§19.1.4), or user, host and port alike when a
    registrar added parameters of its own."""
    if uri_equal(a, b):
        return True
    return (a.user == b.user and a.host.lower() == b.host.lower()
            and (a.port or 5060) == (b.port or 5060))
