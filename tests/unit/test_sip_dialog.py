"""Dialogs (RFC 3261 §12): creation on both sides, route sets, CSeq rules, target refresh."""

from __future__ import annotations

import pytest

from sipua.dialog import Dialog, DialogError, DialogState, uac_dialog_id, uas_dialog_id
from sipua.message import Request, Response, Via, make_response, parse

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnashds8\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060>\r\n"
    b"Record-Route: <sip:p2.example.com;lr>\r\n"
    b"Record-Route: <sip:p1.example.com;lr>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _invite() -> Request:
    msg = parse(INVITE)
    assert isinstance(msg, Request)
    return msg


def _ok(invite: Request, tag: str = "a6c85cf") -> Response:
    response = make_response(invite, 200, to_tag=tag)
    response.headers.add("Contact", "<sip:bob@192.0.2.4:5070>")
    for rr in invite.headers.get_all("Record-Route"):
        response.headers.add("Record-Route", rr)
    return response


def test_uac_dialog_reverses_record_route_and_targets_contact() -> None:
    """§12.1.2: route set = reversed Record-Route of the 2xx; target = its Contact."""
    invite = _invite()
    response = _ok(invite)
    dialog = Dialog.from_uac(invite, response)
    assert dialog.state is DialogState.CONFIRMED
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p1.example.com;lr",
                                                      "sip:p2.example.com;lr"]
    assert str(dialog.remote_target) == "sip:bob@192.0.2.4:5070"
    assert dialog.id == uac_dialog_id(response)
    bye = dialog.new_request("BYE", via=Via("UDP", "192.0.2.10", 5060, {"branch": "z9hG4bK1"}))
    assert bye.cseq.number == 314160 and bye.cseq.method == "BYE"
    assert str(bye.uri) == "sip:bob@192.0.2.4:5070"
    assert [str(r.uri) for r in bye.routes] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert bye.from_.tag == "1928301774" and bye.to.tag == "a6c85cf"


def test_ack_reuses_invite_cseq() -> None:
    """The ACK of a 2xx carries the INVITE's CSeq number (RFC 3261 §13.2.2.4)."""
    invite = _invite()
    dialog = Dialog.from_uac(invite, _ok(invite))
    ack = dialog.new_request("ACK", via=Via("UDP", "h", 1, {"branch": "z9hG4bK2"}), cseq=314159)
    assert ack.cseq.number == 314159 and ack.cseq.method == "ACK"
    assert dialog.local_seq == 314159
    with pytest.raises(ValueError):
        dialog.new_request("ACK", via=Via("UDP", "h", 1, {"branch": "z9hG4bK3"}))


def test_uas_dialog_keeps_record_route_order_and_checks_cseq() -> None:
    """§12.1.1 and §12.2.2: route set in order; a lower remote CSeq is refused with 500."""
    invite = _invite()
    dialog = Dialog.from_uas(invite, "xyz")
    assert dialog.state is DialogState.EARLY
    assert [str(r.uri) for r in dialog.route_set] == ["sip:p2.example.com;lr",
                                                      "sip:p1.example.com;lr"]
    dialog.confirm()
    assert dialog.state is DialogState.CONFIRMED
    reinvite = dialog.new_request("INVITE", via=Via("UDP", "h", 1, {"branch": "z9hG4bK4"}))
    assert reinvite.cseq.number == 1
    old = _invite()
    old.headers.set("CSeq", "314158 BYE")
    with pytest.raises(DialogError) as info:
        dialog.receive_request(old)
    assert info.value.status == 500


def test_target_refresh_by_reinvite() -> None:
    """A re-INVITE's Contact becomes the new remote target (§12.2.2)."""
    invite = _invite()
    dialog = Dialog.from_uas(invite, "xyz")
    refresh = _invite()
    refresh.headers.set("CSeq", "314160 INVITE")
    refresh.headers.set("To", "Bob <sip:bob@biloxi.example.com>;tag=xyz")
    refresh.headers.set("Contact", "<sip:alice@198.51.100.9:6000>")
    assert uas_dialog_id(refresh) == dialog.id
    dialog.receive_request(refresh)
    assert str(dialog.remote_target) == "sip:alice@198.51.100.9:6000"
    assert dialog.remote_seq == 314160


def test_strict_router_goes_in_request_uri() -> None:
    """A first route without lr (strict router): it becomes the Request-URI (§12.2.1.1)."""
    invite = _invite()
    response = _ok(invite)
    response.headers.remove("Record-Route")
    response.headers.add("Record-Route", "<sip:strict.example.com>")
    dialog = Dialog.from_uac(invite, response)
    bye = dialog.new_request("BYE", via=Via("UDP", "h", 1, {"branch": "z9hG4bK5"}))
    assert str(bye.uri) == "sip:strict.example.com"
    assert [str(r.uri) for r in bye.routes] == ["sip:bob@192.0.2.4:5070"]


def test_terminated_dialog_refuses_requests() -> None:
    """After termination, a new in-dialog request gets 481."""
    dialog = Dialog.from_uas(_invite(), "xyz")
    dialog.terminate("BYE")
    bye = _invite()
    bye.headers.set("CSeq", "314160 BYE")
    with pytest.raises(DialogError) as info:
        dialog.receive_request(bye)
    assert info.value.status == 481
