"""The registration core (RFC 3261 §10.2) on literal ``now`` floats and a seeded rng."""

from __future__ import annotations

import random

import pytest

from sipua.auth import make_challenge
from sipua.message import Request, Response, make_response, parse
from sipua.registration import (
    Registered,
    Registration,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationRetryScheduled,
    RegistrationSettings,
    RegistrationState,
    Unregistered,
    refresh_delay,
)
from sipua.transaction import replace_top_via

LOCAL = ("10.0.1.10", 5060)
PUBLIC = ("203.0.113.11", 40000)


def make(seed: int = 1, **changes: object) -> Registration:
    """A registration of alice with password 'pw' from LOCAL."""
    base: dict[str, object] = {"aor": "sip:alice@example.org", "password": "pw", "expires": 600}
    base.update(changes)
    return Registration(RegistrationSettings(**base), local_address=LOCAL,  # type: ignore[arg-type]
                        rng=random.Random(seed))


def sent(reg: Registration) -> Request:
    """The one REGISTER queued, re-parsed from its wire form (as a registrar sees it)."""
    requests = reg.pop_transmits()
    assert len(requests) == 1, requests
    message = parse(requests[0].encode())
    assert isinstance(message, Request)
    return message


def events(reg: Registration) -> list[RegistrationEvent]:
    """Every event queued."""
    out = []
    while (event := reg.next_event()) is not None:
        out.append(event)
    return out


def answer(request: Request, status: int, *, via_from: tuple[str, int] | None = None,
           contact_expires: int | None = None, **headers: str) -> Response:
    """A registrar's response; ``via_from`` stamps received/rport as a NAT would show."""
    request = request.copy()
    if via_from is not None:
        via = request.vias[0]
        replace_top_via(request, via.with_(params={**via.params, "received": via_from[0],
                                                   "rport": str(via_from[1])}))
    response = make_response(request, status, to_tag="srv")
    if status == 200:
        for contact in request.contacts:
            if contact.params.get("expires") != "0":
                expires = contact_expires if contact_expires is not None else int(
                    contact.params["expires"] or 0)
                response.headers.add("Contact", f"<{contact.uri}>;expires={expires}")
    for name, value in headers.items():
        response.headers.add(name.replace("_", "-"), value)
    return response


def challenge(request: Request, nonce: str = "n1", *, stale: bool = False,
              proxy: bool = False) -> Response:
    """A 401 (or 407) with a qop=auth MD5 challenge."""
    status = 407 if proxy else 401
    name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    response = answer(request, status)
    response.headers.add(name, make_challenge("example.org", nonce, stale=stale))
    return response


def register_ok(reg: Registration, now: float = 0.0) -> Request:
    """Start and go through 401 -> 200; the authenticated request."""
    reg.start(now)
    first = sent(reg)
    reg.receive_response(challenge(first), now + 0.01)
    second = sent(reg)
    reg.receive_response(answer(second, 200), now + 0.02)
    return second


def test_register_401_then_200() -> None:
    """The first REGISTER has AOR To/From, Contact with expires, Expires; a 401 is answered with
    Authorization, the CSeq goes up, the Call-ID stays; the 200 gives Registered."""
    reg = make()
    reg.start(0.0)
    first = sent(reg)
    assert str(first.uri) == "sip:example.org"
    assert str(first.to.uri) == str(first.from_.uri) == "sip:alice@example.org"
    assert first.from_.tag and first.to.tag is None
    assert first.contacts[0].uri.host == "10.0.1.10" and first.contacts[0].uri.port == 5060
    assert first.contacts[0].params["expires"] == "600" and first.expires == 600
    assert "Authorization" not in first.headers
    assert first.vias[0].rport is True and (first.vias[0].branch or "").startswith("z9hG4bK")
    assert reg.receive_response(challenge(first), 0.05)
    second = sent(reg)
    assert second.call_id == first.call_id
    assert second.cseq.number == first.cseq.number + 1
    assert second.vias[0].branch != first.vias[0].branch
    auth = second.headers.get("Authorization") or ""
    assert 'username="alice"' in auth and 'nonce="n1"' in auth and "qop=auth" in auth
    reg.receive_response(answer(second, 200), 0.1)
    (event,) = events(reg)
    assert isinstance(event, Registered)
    assert event.expires == 600 and event.contact == "sip:alice@10.0.1.10:5060"
    assert event.public_address is None
    assert reg.state is RegistrationState.REGISTERED


def test_407_is_answered_with_proxy_authorization() -> None:
    """A 407 gets Proxy-Authorization (RFC 3261 §22.3)."""
    reg = make()
    reg.start(0.0)
    reg.receive_response(challenge(sent(reg), proxy=True), 0.1)
    second = sent(reg)
    assert "Proxy-Authorization" in second.headers and "Authorization" not in second.headers
    reg.receive_response(answer(second, 200), 0.2)
    assert isinstance(events(reg)[0], Registered)


def test_stale_nonce_is_answered_silently() -> None:
    """A refresh answered with 401 stale=true is re-sent with the new nonce, no failure event."""
    reg = make()
    register_ok(reg)
    events(reg)
    reg.handle_timer(reg.next_timer() or 0.0)
    refresh = sent(reg)
    assert 'nonce="n1"' in (refresh.headers.get("Authorization") or "")  # cached credentials
    reg.receive_response(challenge(refresh, "n2", stale=True), 541.0)
    again = sent(reg)
    assert 'nonce="n2"' in (again.headers.get("Authorization") or "")
    reg.receive_response(answer(again, 200), 541.1)
    assert [type(e) for e in events(reg)] == [Registered]


def test_wrong_password_fails_once_without_retry() -> None:
    """A second challenge after credentials is one permanent failure; nothing is sent again and
    no timer is left (no retry loop)."""
    reg = make(password="wrong")
    reg.start(0.0)
    reg.receive_response(challenge(sent(reg)), 0.1)
    second = sent(reg)
    reg.receive_response(challenge(second, "n2"), 0.2)
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed)
    assert event.status == 401 and event.permanent and not event.no_answer
    assert "bad credentials" in event.reason
    assert reg.pop_transmits() == [] and reg.next_timer() is None
    assert reg.state is RegistrationState.FAILED


def test_challenge_without_password_is_permanent() -> None:
    """Without a password a challenge cannot be answered: permanent failure."""
    reg = make(password=None)
    reg.start(0.0)
    reg.receive_response(challenge(sent(reg)), 0.1)
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.permanent
    assert reg.pop_transmits() == []


def test_423_retries_with_min_expires() -> None:
    """423 with Min-Expires: the same REGISTER again asking for Min-Expires (§10.2.8)."""
    reg = make(expires=30)
    reg.start(0.0)
    first = sent(reg)
    reg.receive_response(answer(first, 423, Min_Expires="120"), 0.1)
    second = sent(reg)
    assert second.expires == 120 and second.contacts[0].params["expires"] == "120"
    reg.receive_response(answer(second, 200), 0.2)
    (event,) = events(reg)
    assert isinstance(event, Registered) and event.expires == 120


def test_423_without_min_expires_is_permanent() -> None:
    """A 423 that does not say what to ask for ends the registration (no loop)."""
    reg = make()
    reg.start(0.0)
    reg.receive_response(answer(sent(reg), 423), 0.1)
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.permanent and event.status == 423


def test_refresh_timing_and_granted_expiry() -> None:
    """The granted lifetime is our Contact's expires; the refresh is due at 90 % of it."""
    reg = make(expires=600)
    reg.start(100.0)
    first = sent(reg)
    reg.receive_response(answer(first, 200, contact_expires=300, Expires="999"), 100.0)
    (event,) = events(reg)
    assert isinstance(event, Registered) and event.expires == 300
    assert reg.next_timer() == pytest.approx(100.0 + 270.0)
    reg.handle_timer(369.0)
    assert reg.pop_transmits() == []  # not yet due
    reg.handle_timer(370.0)
    refresh = sent(reg)
    assert refresh.call_id == first.call_id and refresh.cseq.number == first.cseq.number + 1
    assert refresh_delay(10) == 5.0 and refresh_delay(4) == 2.0 and refresh_delay(3600) == 3240


def test_expires_header_when_contact_has_none() -> None:
    """Without our Contact's expires in the 2xx, the Expires header is the lifetime."""
    reg = make()
    reg.start(0.0)
    first = sent(reg)
    response = make_response(first, 200, to_tag="x")
    response.headers.add("Expires", "120")
    reg.receive_response(response, 0.0)
    (event,) = events(reg)
    assert isinstance(event, Registered) and event.expires == 120


def test_backoff_after_503_and_timeouts() -> None:
    """503 then time-outs: temporary failures, retries at growing, jittered, capped delays."""
    reg = make(password=None, retry_base=10.0, retry_max=25.0)
    reg.start(0.0)
    reg.receive_response(answer(sent(reg), 503), 1.0)
    failed, scheduled = events(reg)
    assert isinstance(failed, RegistrationFailed) and not failed.permanent
    assert failed.status == 503 and not failed.no_answer
    assert isinstance(scheduled, RegistrationRetryScheduled)
    assert 1.0 + 5.0 <= scheduled.retry_at <= 1.0 + 10.0
    assert reg.state is RegistrationState.RETRY_WAIT
    delays = []
    now = scheduled.retry_at
    for _ in range(4):
        reg.handle_timer(now)
        request = sent(reg)
        assert reg.request_failed(request, "timer F", now + 32, timed_out=True)
        failed, scheduled = events(reg)
        assert isinstance(failed, RegistrationFailed) and failed.status == 408
        assert failed.no_answer and not failed.permanent
        assert isinstance(scheduled, RegistrationRetryScheduled)
        delays.append(scheduled.retry_at - (now + 32))
        now = scheduled.retry_at
    assert 10.0 <= delays[0] <= 20.0 and all(12.5 <= d <= 25.0 for d in delays[1:])
    reg.handle_timer(now)
    reg.receive_response(answer(sent(reg), 200), now + 0.1)
    assert isinstance(events(reg)[0], Registered)


def test_retry_after_is_honoured() -> None:
    """503 with Retry-After: the retry comes exactly then."""
    reg = make(password=None)
    reg.start(0.0)
    reg.receive_response(answer(sent(reg), 503, Retry_After="42"), 0.0)
    _, scheduled = events(reg)
    assert isinstance(scheduled, RegistrationRetryScheduled) and scheduled.retry_at == 42.0


def test_403_is_permanent() -> None:
    """403 Forbidden: one permanent failure."""
    reg = make()
    reg.start(0.0)
    reg.receive_response(answer(sent(reg), 403), 0.1)
    (event,) = events(reg)
    assert isinstance(event, RegistrationFailed) and event.permanent and event.status == 403
    assert reg.next_timer() is None


def test_unregister_sends_expires_zero() -> None:
    """unregister(): Contact with expires=0 and Expires: 0, then Unregistered on the 200."""
    reg = make()
    authed = register_ok(reg)
    events(reg)
    reg.unregister(10.0)
    request = sent(reg)
    assert request.expires == 0 and request.contacts[0].params["expires"] == "0"
    assert request.call_id == authed.call_id
    reg.receive_response(answer(request, 200), 10.1)
    (event,) = events(reg)
    assert isinstance(event, Unregistered) and event.confirmed
    assert reg.state is RegistrationState.UNREGISTERED and reg.next_timer() is None


def test_unregister_all_without_registering() -> None:
    """unregister(all_contacts=True) from idle sends Contact: * (RFC 3261 §10.2.2)."""
    reg = make()
    reg.unregister(0.0, all_contacts=True)
    request = sent(reg)
    assert request.headers.get("Contact") == "*" and request.expires == 0
    reg.receive_response(challenge(request), 0.1)
    again = sent(reg)
    assert again.contact_star and "Authorization" in again.headers
    reg.receive_response(answer(again, 200), 0.2)
    (event,) = events(reg)
    assert isinstance(event, Unregistered) and event.confirmed


def test_unregister_waits_for_request_in_flight() -> None:
    """Unregister while the first REGISTER is out: wait for it, then remove the binding."""
    reg = make(password=None)
    reg.start(0.0)
    first = sent(reg)
    reg.unregister(0.1)
    assert reg.pop_transmits() == []
    reg.receive_response(answer(first, 200), 0.2)
    unregister = sent(reg)
    assert unregister.expires == 0
    reg.receive_response(answer(unregister, 200), 0.3)
    kinds = [type(e) for e in events(reg)]
    assert kinds == [Registered, Unregistered]


def test_unregister_with_nothing_bound_is_immediate() -> None:
    """Nothing registered: Unregistered at once, nothing sent."""
    reg = make()
    reg.unregister(0.0)
    assert reg.pop_transmits() == []
    (event,) = events(reg)
    assert isinstance(event, Unregistered) and not event.confirmed


def test_nat_contact_updated_from_rport_received() -> None:
    """A 200 whose Via shows another address: re-register with the public Contact and the old
    one at expires=0; Registered then names the public address."""
    reg = make(password=None)
    reg.start(0.0)
    first = sent(reg)
    reg.receive_response(answer(first, 200, via_from=PUBLIC), 0.1)
    assert events(reg) == []
    second = sent(reg)
    new, old = second.contacts
    assert (new.uri.host, new.uri.port) == PUBLIC and new.params["expires"] == "600"
    assert (old.uri.host, old.uri.port) == LOCAL and old.params["expires"] == "0"
    assert second.vias[0].host == LOCAL[0]  # Via keeps the local sent-by
    reg.receive_response(answer(second, 200, via_from=PUBLIC), 0.2)
    (event,) = events(reg)
    assert isinstance(event, Registered)
    assert event.public_address == PUBLIC and event.contact == "sip:alice@203.0.113.11:40000"
    reg.handle_timer(reg.next_timer() or 0.0)
    refresh = sent(reg)
    assert len(refresh.contacts) == 1 and refresh.contacts[0].uri.port == PUBLIC[1]


def test_nat_learned_on_challenge_needs_no_extra_request() -> None:
    """received/rport on the 401: the authenticated REGISTER already carries the public
    Contact (nothing was bound yet, so no expires=0 contact)."""
    reg = make()
    reg.start(0.0)
    first = sent(reg)
    reg.receive_response(answer(first, 401, via_from=PUBLIC,
                                WWW_Authenticate=make_challenge("example.org", "n1")), 0.1)
    second = sent(reg)
    assert len(second.contacts) == 1
    assert (second.contacts[0].uri.host, second.contacts[0].uri.port) == PUBLIC
    reg.receive_response(answer(second, 200, via_from=PUBLIC), 0.2)
    assert [type(e) for e in events(reg)] == [Registered]


def test_no_nat_when_via_matches() -> None:
    """rport equal to our own port and received equal to our host: the Contact stays."""
    reg = make(password=None)
    reg.start(0.0)
    reg.receive_response(answer(sent(reg), 200, via_from=LOCAL), 0.1)
    (event,) = events(reg)
    assert isinstance(event, Registered) and event.public_address is None


def test_tcp_contact_has_transport_and_ignores_rport() -> None:
    """Over TCP the Contact says transport=tcp and rport (an ephemeral port) moves nothing."""
    reg = make(password=None, transport="tcp")
    reg.start(0.0)
    first = sent(reg)
    assert first.contacts[0].uri.params["transport"] == "tcp"
    assert first.vias[0].transport == "TCP"
    reg.receive_response(answer(first, 200, via_from=PUBLIC), 0.1)
    assert isinstance(events(reg)[0], Registered)
    assert reg.pop_transmits() == []


def test_several_accounts_are_independent() -> None:
    """Two registrations on one rng: distinct Call-IDs; one ignores the other's responses."""
    rng = random.Random(5)
    alice = Registration(RegistrationSettings("sip:alice@example.org"), local_address=LOCAL,
                         rng=rng)
    bob = Registration(RegistrationSettings("sip:bob@example.org", expires=60),
                       local_address=LOCAL, rng=rng)
    alice.start(0.0)
    bob.start(0.0)
    a_req, b_req = sent(alice), sent(bob)
    assert a_req.call_id != b_req.call_id
    b_ok = answer(b_req, 200)
    assert not alice.receive_response(b_ok, 0.1)
    assert bob.receive_response(b_ok, 0.1)
    assert alice.state is RegistrationState.REGISTERING
    assert bob.state is RegistrationState.REGISTERED
    assert alice.receive_response(answer(a_req, 200), 0.2)
    assert [e.aor for e in events(alice)] == ["sip:alice@example.org"]
    assert bob.next_timer() == pytest.approx(0.1 + 54.0)


def test_stale_response_is_ignored() -> None:
    """A late response to an overtaken REGISTER (older CSeq) changes nothing."""
    reg = make()
    reg.start(0.0)
    first = sent(reg)
    reg.receive_response(challenge(first), 0.1)
    sent(reg)
    assert not reg.receive_response(answer(first, 200), 0.2)
    assert reg.state is RegistrationState.REGISTERING and events(reg) == []


def test_event_to_dict() -> None:
    """Events give JSON-ready dicts named after their class."""
    event = Registered("sip:a@b", 60, "sip:a@1.2.3.4:5", ("1.2.3.4", 5), 1.0)
    assert event.to_dict() == {"event": "Registered", "aor": "sip:a@b", "expires": 60,
                               "contact": "sip:a@1.2.3.4:5", "public_address": "1.2.3.4:5",
                               "at": 1.0}


def test_settings_are_checked() -> None:
    """Nonsense settings are the caller's fault: ValueError."""
    with pytest.raises(ValueError):
        RegistrationSettings("sip:example.org")
    with pytest.raises(ValueError):
        RegistrationSettings("sip:a@example.org", transport="sctp")
    with pytest.raises(ValueError):
        RegistrationSettings("sip:a@example.org", expires=0)
