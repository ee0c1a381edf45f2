"""Embedded STUN server core (ice.server): Binding answers, 420, 400, malformed input."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ice.server import StunServer, StunServerSettings
from ice.stun import Address, Attr, Message, MessageClass, Method, decode

CLIENT: Address = ("198.51.100.4", 61000)
CLIENT6: Address = ("2001:db8::4", 61001)
TID = bytes(range(1, 13))


def ask(server: StunServer, request: bytes, source: Address = CLIENT) -> list[Message]:
    """Feed one datagram; decode the answers, which must all go back to the source."""
    server.receive(request, source, 1.0)
    answers = []
    for data, dest in server.pop_transmits():
        assert dest == source
        answers.append(decode(data))
    return answers


def binding(attributes: dict[int, object] | None = None) -> bytes:
    """A Binding request."""
    return Message(Method.BINDING, MessageClass.REQUEST, TID, dict(attributes or {})).encode()


def test_binding_request_gets_the_source_address() -> None:
    """XOR-MAPPED-ADDRESS and MAPPED-ADDRESS carry the source; FINGERPRINT is appended."""
    [response] = ask(StunServer(), binding())
    assert (response.method, response.cls) == (Method.BINDING, MessageClass.SUCCESS)
    assert response.transaction_id == TID
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT
    assert response.get(Attr.MAPPED_ADDRESS) == CLIENT
    assert Attr.FINGERPRINT in response.attributes


def test_ipv6_client() -> None:
    """IPv6 sources are reflected too."""
    [response] = ask(StunServer(), binding(), CLIENT6)
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT6


def test_software_and_no_mapped_address() -> None:
    """Settings add SOFTWARE and can leave out MAPPED-ADDRESS and FINGERPRINT."""
    server = StunServer(StunServerSettings(software="sipua", mapped_address=False,
                                           fingerprint=False))
    [response] = ask(server, binding())
    assert response.get(Attr.SOFTWARE) == "sipua"
    assert Attr.MAPPED_ADDRESS not in response.attributes
    assert Attr.FINGERPRINT not in response.attributes
    assert server.stats.answered == 1


def test_ice_attributes_are_understood() -> None:
    """A Binding request as ICE sends it (with PRIORITY, ICE-CONTROLLING...) is answered."""
    request = Message(Method.BINDING, MessageClass.REQUEST, TID,
                      {Attr.USERNAME: "a:b", Attr.PRIORITY: 1, Attr.ICE_CONTROLLING: 2,
                       Attr.USE_CANDIDATE: True}).encode(integrity_key=b"k", fingerprint=True)
    [response] = ask(StunServer(), request)
    assert response.cls is MessageClass.SUCCESS


def test_unknown_comprehension_required_gets_420() -> None:
    """RFC 8489 §6.3.1.1: 420 with UNKNOWN-ATTRIBUTES listing them."""
    server = StunServer()
    [response] = ask(server, binding({0x0031: b"x", 0x0032: b"y", 0xC000: b"optional"}))
    assert response.cls is MessageClass.ERROR
    assert response.get(Attr.ERROR_CODE)[0] == 420
    assert response.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0031, 0x0032)
    assert server.stats.errors == 1


def test_unknown_comprehension_optional_is_ignored() -> None:
    """Attributes from 0x8000 up may be ignored: the request is answered normally."""
    [response] = ask(StunServer(), binding({0xC123: b"whatever"}))
    assert response.cls is MessageClass.SUCCESS


def test_other_methods_get_400() -> None:
    """This server only does Binding."""
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, TID, {}).encode()
    [response] = ask(StunServer(), request)
    assert response.method == Method.ALLOCATE
    assert response.get(Attr.ERROR_CODE)[0] == 400


def test_indications_and_responses_get_no_answer() -> None:
    """Binding indications are keepalives; stray responses are not answered."""
    server = StunServer()
    indication = Message(Method.BINDING, MessageClass.INDICATION, TID, {}).encode()
    response = Message(Method.BINDING, MessageClass.SUCCESS, TID, {}).encode()
    assert ask(server, indication) == []
    assert ask(server, response) == []
    assert server.stats.ignored == 2


def test_malformed_input_is_dropped_and_counted() -> None:
    """Bad fingerprint, truncation and non-STUN bytes: dropped, counted, nothing raised."""
    server = StunServer()
    good = Message(Method.BINDING, MessageClass.REQUEST, TID, {}).encode(fingerprint=True)
    bad_fp = good[:-1] + bytes([good[-1] ^ 1])
    for data in (bad_fp, good[:-4], b"\x80\x00rtp", b"", struct.pack("!HH", 1, 0)):
        assert ask(server, data) == []
    assert server.stats.malformed == 5
    assert server.stats.answered == 0


def test_server_core_has_no_timers() -> None:
    """Stateless: no deadlines, handle_timer does nothing."""
    server = StunServer()
    server.handle_timer(5.0)
    assert server.next_timer() is None
    assert server.pop_transmits() == []


@given(st.binary(max_size=120))
@settings(max_examples=300, deadline=None)
def test_garbage_never_raises(data: bytes) -> None:
    """Whatever arrives, the server answers with valid STUN or not at all."""
    server = StunServer()
    server.receive(data, CLIENT, 0.0)
    for answer, _ in server.pop_transmits():
        assert decode(answer).transaction_id == data[8:20]
