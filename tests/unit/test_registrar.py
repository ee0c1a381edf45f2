"""The registrar/proxy core (RFC 3261 §10.3, §16) fed transaction-layer events directly."""

from __future__ import annotations

import random

import pytest

from sipua.auth import DigestClient, DigestCredentials, parse_challenges
from sipua.message import Request, Response, make_response, parse
from sipua.registrar import (
    AuthenticationFailed,
    BindingRegistered,
    BindingRemoved,
    CancelForwarded,
    ForwardRequest,
    Registrar,
    RegistrarAction,
    RegistrarSettings,
    RequestForwarded,
    SendResponse,
    SendStateless,
    parse_users,
)
from sipua.transaction import (
    AckReceived,
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
)

US = ("192.0.2.1", 5060)
ALICE_NAT = ("198.51.100.7", 40000)  # where alice's packets come from (her NAT)
BOB_SRC = ("192.0.2.50", 5070)
USERS = {"alice": "alicepw", "bob": "bobpw"}


def make(**changes: object) -> Registrar:
    """A registrar for example.org listening on US over UDP and TCP."""
    settings = RegistrarSettings(domain="example.org", min_expires=30, **changes)  # type: ignore[arg-type]
    return Registrar(settings, USERS, random.Random(3), {"udp": US, "tcp": US})


def register_request(user: str, contact: str, *, cseq: int = 1, expires: int | None = 600,
                     call_id: str = "reg-1", source: tuple[str, int] = ALICE_NAT) -> Request:
    """A REGISTER as it arrives (Via stamped with received/rport by the transport)."""
    headers = [
        ("Via", f"SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKr{cseq}{user};received={source[0]};"
                f"rport={source[1]}"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:{user}@example.org>;tag=f{user}"),
        ("To", f"<sip:{user}@example.org>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
        ("Contact", contact),
    ]
    if expires is not None:
        headers.append(("Expires", str(expires)))
    return Request("REGISTER", "sip:example.org", headers)


def received(request: Request, source: tuple[str, int] = ALICE_NAT, tx: str = "stx",
             transport: str = "udp") -> RequestReceived:
    """The transaction layer's event for ``request``."""
    return RequestReceived(request, tx, source, transport)


def actions(core: Registrar) -> list[RegistrarAction]:
    """Everything queued for the adapter."""
    return core.pop_transmits()


def only_response(core: Registrar) -> Response:
    """The single SendResponse queued."""
    (action,) = actions(core)
    assert isinstance(action, SendResponse)
    return action.response


def events(core: Registrar) -> list[object]:
    """Every event queued."""
    out: list[object] = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out


def authorized_register(core: Registrar, user: str, password: str, contact: str, *,
                        now: float = 0.0, cseq: int = 1, expires: int | None = 600,
                        source: tuple[str, int] = ALICE_NAT) -> Response:
    """REGISTER, take the 401, answer it, return the final response."""
    first = register_request(user, contact, cseq=cseq, expires=expires, source=source)
    core.handle(received(first, source), now)
    challenge = only_response(core)
    assert challenge.status == 401
    client = DigestClient(DigestCredentials(user, password), random.Random(9))
    second = register_request(user, contact, cseq=cseq + 1, expires=expires, source=source)
    for name, value in client.handle_challenge(challenge, "REGISTER", "sip:example.org"):
        second.headers.add(name, value)
    core.handle(received(second, source, tx="stx2"), now)
    return only_response(core)


def test_register_challenge_then_200() -> None:
    """No credentials: 401 qop=auth in our realm; right credentials: 200 listing the binding,
    and a BindingRegistered event with the source address."""
    core = make()
    response = authorized_register(core, "alice", "alicepw", "<sip:alice@10.0.0.5:5060>")
    assert response.status == 200 and response.to.tag
    (contact,) = response.contacts
    assert str(contact.uri) == "sip:alice@10.0.0.5:5060" and contact.params["expires"] == "600"
    (event,) = events(core)
    assert isinstance(event, BindingRegistered)
    assert event.user == "alice" and event.source == ALICE_NAT and event.expires == 600
    (binding,) = core.bindings("alice")
    assert binding.source == ALICE_NAT and binding.expires_at == 600.0


def test_challenge_format() -> None:
    """The challenge is MD5 with qop=auth in the served domain's realm, with a fresh nonce."""
    core = make()
    core.handle(received(register_request("alice", "<sip:alice@10.0.0.5>")), 0.0)
    response = only_response(core)
    (challenge,) = parse_challenges(response.headers.get("WWW-Authenticate") or "")
    assert challenge.realm == "example.org" and challenge.qop == ("auth",)
    assert not challenge.stale and challenge.nonce


def test_wrong_password_is_rechallenged_and_reported() -> None:
    """Wrong credentials: 401 again (not 200), AuthenticationFailed, no binding."""
    core = make()
    response = authorized_register(core, "alice", "nope", "<sip:alice@10.0.0.5>")
    assert response.status == 401
    assert any(isinstance(e, AuthenticationFailed) for e in events(core))
    assert core.bindings("alice") == []


def test_credentials_of_another_user_are_refused() -> None:
    """bob's valid credentials do not register alice."""
    core = make()
    first = register_request("alice", "<sip:alice@10.0.0.5>")
    core.handle(received(first), 0.0)
    challenge = only_response(core)
    client = DigestClient(DigestCredentials("bob", "bobpw"), random.Random(1))
    second = register_request("alice", "<sip:alice@10.0.0.5>", cseq=2)
    for name, value in client.handle_challenge(challenge, "REGISTER", "sip:example.org"):
        second.headers.add(name, value)
    core.handle(received(second), 0.0)
    assert only_response(core).status == 401
    assert core.bindings("alice") == []


def test_old_nonce_is_stale() -> None:
    """Credentials with a nonce older than nonce_lifetime: 401 with stale=true."""
    core = make(nonce_lifetime=60.0)
    first = register_request("alice", "<sip:alice@10.0.0.5>")
    core.handle(received(first), 0.0)
    challenge = only_response(core)
    client = DigestClient(DigestCredentials("alice", "alicepw"), random.Random(1))
    second = register_request("alice", "<sip:alice@10.0.0.5>", cseq=2)
    for name, value in client.handle_challenge(challenge, "REGISTER", "sip:example.org"):
        second.headers.add(name, value)
    core.handle(received(second), 61.0)
    response = only_response(core)
    assert response.status == 401
    (again,) = parse_challenges(response.headers.get("WWW-Authenticate") or "")
    assert again.stale and again.nonce != challenge.headers.get("WWW-Authenticate")


def test_bindings_expire_and_several_contacts() -> None:
    """Two contacts per user, each with its own lifetime; the timer removes the lapsed one."""
    core = make()
    response = authorized_register(core, "alice", "alicepw",
                                   "<sip:alice@10.0.0.5>;expires=60, <sip:alice@10.0.0.6>",
                                   expires=300)
    assert response.status == 200
    assert sorted(c.params["expires"] or "" for c in response.contacts) == ["300", "60"]
    events(core)
    assert core.next_timer() == 60.0
    core.handle_timer(60.0)
    (removed,) = events(core)
    assert isinstance(removed, BindingRemoved) and removed.reason == "expired"
    assert [str(b.uri) for b in core.bindings("alice")] == ["sip:alice@10.0.0.6"]


def test_star_removes_every_binding() -> None:
    """Contact: * with Expires: 0 removes all; with another Expires it is a 400."""
    core = make()
    authorized_register(core, "alice", "alicepw", "<sip:alice@10.0.0.5>, <sip:alice@10.0.0.6>")
    events(core)
    bad = authorized_register(core, "alice", "alicepw", "*", cseq=3, expires=10)
    assert bad.status == 400
    ok = authorized_register(core, "alice", "alicepw", "*", cseq=5, expires=0)
    assert ok.status == 200 and ok.contacts == []
    assert core.bindings("alice") == []
    assert sum(isinstance(e, BindingRemoved) for e in events(core)) == 2


def test_expires_zero_removes_one_contact() -> None:
    """A contact with expires=0 goes, the other stays."""
    core = make()
    authorized_register(core, "alice", "alicepw", "<sip:alice@10.0.0.5>, <sip:alice@10.0.0.6>")
    response = authorized_register(core, "alice", "alicepw", "<sip:alice@10.0.0.5>;expires=0",
                                   cseq=3)
    assert [str(c.uri) for c in response.contacts] == ["sip:alice@10.0.0.6"]


def test_too_brief_gets_423() -> None:
    """An expiry under min_expires: 423 with Min-Expires."""
    core = make()
    response = authorized_register(core, "alice", "alicepw", "<sip:alice@10.0.0.5>", expires=5)
    assert response.status == 423 and response.headers.get("Min-Expires") == "30"


def test_out_of_order_register_is_refused() -> None:
    """Same Call-ID with a CSeq not above the binding's: 500 (RFC 3261 §10.3 step 7)."""
    core = make()
    authorized_register(core, "alice", "alicepw", "<sip:alice@10.0.0.5>", cseq=5)
    response = authorized_register(core, "alice", "alicepw", "<sip:alice@10.0.0.5>", cseq=1)
    assert response.status == 500


def invite(to_user: str = "alice", *, max_forwards: int = 70,
           from_user: str = "bob") -> Request:
    """An initial INVITE from bob (not behind NAT) through us."""
    return Request("INVITE", f"sip:{to_user}@example.org", [
        ("Via", f"SIP/2.0/UDP {BOB_SRC[0]}:{BOB_SRC[1]};branch=z9hG4bKinv1;rport={BOB_SRC[1]};"
                f"received={BOB_SRC[0]}"),
        ("Max-Forwards", str(max_forwards)),
        ("From", f"<sip:{from_user}@example.org>;tag=b1"),
        ("To", f"<sip:{to_user}@example.org>"),
        ("Call-ID", "call-1"),
        ("CSeq", "1 INVITE"),
        ("Contact", f"<sip:{from_user}@{BOB_SRC[0]}:{BOB_SRC[1]}>"),
        ("Content-Type", "application/sdp"),
    ], b"v=0\r\n")


def registered_alice() -> Registrar:
    """A registrar where alice registered a private contact from behind her NAT."""
    core = make()
    assert authorized_register(core, "alice", "alicepw",
                               "<sip:alice@10.0.0.5:5060>").status == 200
    events(core)
    return core


def forward_invite(core: Registrar) -> ForwardRequest:
    """Bob's INVITE to alice; the one forwarded request."""
    core.handle(received(invite(), BOB_SRC, tx="inv-stx"), 1.0)
    (action,) = actions(core)
    assert isinstance(action, ForwardRequest)
    return action


def test_invite_goes_to_the_registers_source_with_record_route() -> None:
    """NAT-aware: the INVITE goes to where alice's REGISTER came from, Request-URI = her
    Contact, Max-Forwards - 1, our Via on top and our Record-Route."""
    core = registered_alice()
    action = forward_invite(core)
    request = action.request
    assert action.dest == ALICE_NAT and action.transport == "udp"
    assert str(request.uri) == "sip:alice@10.0.0.5:5060"
    assert request.max_forwards == 69
    vias = request.vias
    assert (vias[0].host, vias[0].port) == US and vias[0].branch == action.branch
    assert vias[1].host == BOB_SRC[0]
    assert [str(r.uri) for r in request.record_routes] == ["sip:192.0.2.1:5060;lr"]
    assert request.body == b"v=0\r\n"
    assert isinstance(events(core)[0], RequestForwarded)


def test_double_record_route_on_transport_change() -> None:
    """INVITE in over TCP, out over UDP: two Record-Route entries, the UDP one on top."""
    core = registered_alice()
    core.handle(RequestReceived(invite(), "inv-stx", BOB_SRC, "tcp"), 1.0)
    (action,) = actions(core)
    assert isinstance(action, ForwardRequest)
    assert [str(r.uri) for r in action.request.record_routes] == [
        "sip:192.0.2.1:5060;lr", "sip:192.0.2.1:5060;transport=tcp;lr"]


def test_responses_go_back_without_our_via() -> None:
    """180 and 200 are passed back in the server transaction without our Via; 100 is not."""
    core = registered_alice()
    action = forward_invite(core)
    for status, expected in ((100, 0), (180, 1), (200, 1)):
        response = make_response(action.request, status, to_tag="a1")
        core.handle(ResponseReceived(response, "ctx"), 1.5)
        out = actions(core)
        assert len(out) == expected
        if out:
            sent = out[0]
            assert isinstance(sent, SendResponse) and sent.server_tx_id == "inv-stx"
            assert sent.response.status == status
            assert [v.host for v in sent.response.vias] == [BOB_SRC[0]]
    # a retransmitted 2xx is passed on too (end to end, RFC 3261 §13.3.1.4)
    again = make_response(action.request, 200, to_tag="a1")
    core.handle(ResponseReceived(again, "ctx"), 2.0)
    assert len(actions(core)) == 1


def test_ack_and_bye_follow_the_route_set_through_us() -> None:
    """In-dialog: bob's ACK (for the 2xx) and BYE carry our Record-Route as Route; we pop it
    and send them to alice's NAT address; alice's BYE goes back to bob's source."""
    core = registered_alice()
    forward_invite(core)
    route = [("Route", "<sip:192.0.2.1:5060;lr>")]
    base = [("Max-Forwards", "70"), ("From", "<sip:bob@example.org>;tag=b1"),
            ("To", "<sip:alice@example.org>;tag=a1"), ("Call-ID", "call-1")]
    ack = Request("ACK", "sip:alice@10.0.0.5:5060", [
        ("Via", f"SIP/2.0/UDP {BOB_SRC[0]}:{BOB_SRC[1]};branch=z9hG4bKack1"), *route, *base,
        ("CSeq", "1 ACK")])
    core.handle(AckReceived(ack, None, BOB_SRC, "udp"), 2.0)
    (action,) = actions(core)
    assert isinstance(action, SendStateless) and action.dest == ALICE_NAT
    assert isinstance(action.message, Request) and action.message.routes == []
    assert action.message.vias[0].host == US[0]
    bye = Request("BYE", "sip:alice@10.0.0.5:5060", [
        ("Via", f"SIP/2.0/UDP {BOB_SRC[0]}:{BOB_SRC[1]};branch=z9hG4bKbye1"), *route, *base,
        ("CSeq", "2 BYE")])
    core.handle(received(bye, BOB_SRC, tx="bye-stx"), 3.0)
    (forward,) = actions(core)
    assert isinstance(forward, ForwardRequest) and forward.dest == ALICE_NAT
    # alice hangs up instead: her BYE to bob's contact goes to bob's source
    alice_bye = Request("BYE", f"sip:bob@{BOB_SRC[0]}:{BOB_SRC[1]}", [
        ("Via", f"SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKbye2;received={ALICE_NAT[0]};"
                f"rport={ALICE_NAT[1]}"), *route,
        ("Max-Forwards", "70"), ("From", "<sip:alice@example.org>;tag=a1"),
        ("To", "<sip:bob@example.org>;tag=b1"), ("Call-ID", "call-1"), ("CSeq", "1 BYE")])
    core.handle(received(alice_bye, ALICE_NAT, tx="bye2"), 3.0)
    (back,) = actions(core)
    assert isinstance(back, ForwardRequest) and back.dest == BOB_SRC


@pytest.mark.parametrize("user,max_forwards,status", [
    ("carol", 70, 404), ("bob", 70, 480), ("alice", 0, 483)])
def test_error_answers(user: str, max_forwards: int, status: int) -> None:
    """Unknown user 404, user without binding 480, Max-Forwards 0 483."""
    core = registered_alice()
    core.handle(received(invite(user, max_forwards=max_forwards), BOB_SRC), 1.0)
    assert only_response(core).status == status


def test_options_without_user_is_answered() -> None:
    """OPTIONS to the domain itself: 200 with Allow."""
    core = make()
    options = Request("OPTIONS", "sip:example.org", [
        ("Via", "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKo1"), ("Max-Forwards", "70"),
        ("From", "<sip:x@example.org>;tag=1"), ("To", "<sip:example.org>"),
        ("Call-ID", "o1"), ("CSeq", "1 OPTIONS")])
    core.handle(received(options, ("192.0.2.9", 5060)), 0.0)
    response = only_response(core)
    assert response.status == 200 and "INVITE" in (response.headers.get("Allow") or "")


def test_cancel_is_answered_and_passed_on() -> None:
    """CANCEL: 200 to the caller and a CANCEL of the forwarded INVITE."""
    core = registered_alice()
    action = forward_invite(core)
    cancel = Request("CANCEL", "sip:alice@example.org", [
        ("Via", f"SIP/2.0/UDP {BOB_SRC[0]}:{BOB_SRC[1]};branch=z9hG4bKinv1"),
        ("Max-Forwards", "70"), ("From", "<sip:bob@example.org>;tag=b1"),
        ("To", "<sip:alice@example.org>"), ("Call-ID", "call-1"), ("CSeq", "1 CANCEL")])
    core.handle(CancelReceived(cancel, "cancel-stx", "inv-stx", BOB_SRC, "udp"), 2.0)
    answer, cancelled = actions(core)
    assert isinstance(answer, SendResponse) and answer.response.status == 200
    assert isinstance(cancelled, CancelForwarded) and cancelled.branch == action.branch


def test_timeout_becomes_408() -> None:
    """The forwarded request times out: 408 to the caller."""
    core = registered_alice()
    action = forward_invite(core)
    core.handle(TransactionTimedOut("ctx", action.request), 33.0)
    response = only_response(core)
    assert response.status == 408 and [v.host for v in response.vias] == [BOB_SRC[0]]


def test_invite_authentication_when_enabled() -> None:
    """With authenticate_invites, bob's INVITE is challenged with 407 first."""
    core = make(authenticate_invites=True)
    core.handle(received(invite(), BOB_SRC), 0.0)
    response = only_response(core)
    assert response.status == 407 and "Proxy-Authenticate" in response.headers


def test_garbage_request_gets_400() -> None:
    """A request whose Contact cannot be parsed is answered 400, nothing raised."""
    core = make()
    request = parse(b"REGISTER sip:example.org SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx"
                    b"\r\nFrom: <sip:a@example.org>;tag=1\r\nTo: <sip:a@example.org>\r\n"
                    b"Call-ID: x\r\nCSeq: 1 REGISTER\r\nContact: <<<\r\n\r\n")
    assert isinstance(request, Request)
    core.handle(received(request), 0.0)
    assert only_response(core).status == 400


def test_parse_users() -> None:
    """user:password lines, comments and blanks skipped; a bad line is named."""
    assert parse_users("# users\nalice:pw:with:colons\n\n  bob:x \n") == {
        "alice": "pw:with:colons", "bob": "x"}
    with pytest.raises(ValueError, match="line 2"):
        parse_users("a:b\nnocolon\n")
