"""TURN client (ice.turn) against hand-built server answers, on literal times."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from ice.stun import (
    Address,
    Attr,
    Message,
    MessageClass,
    Method,
    decode,
    encode_channel_data,
    is_channel_data,
    long_term_key,
    make_error,
    make_response,
    verify_integrity,
)
from ice.turn import (
    AllocationFailed,
    AllocationRefreshed,
    AllocationReleased,
    AllocationSucceeded,
    ChannelBound,
    PermissionCreated,
    PermissionFailed,
    TurnClient,
    TurnEvent,
    TurnSettings,
    TurnState,
)

SERVER: Address = ("203.0.113.1", 3478)
RELAYED: Address = ("203.0.113.1", 50000)
MAPPED: Address = ("198.51.100.2", 40000)
PEER: Address = ("192.0.2.77", 6000)
REALM = "example.org"
NONCE = "nonce-1"
SETTINGS = TurnSettings(SERVER, "alice", "secret", software="sipua test")
KEY = long_term_key("alice", REALM, "secret")


def sent(client: TurnClient) -> list[Message]:
    """Decode everything the client queued; all of it must go to the server."""
    out = []
    for data, dest in client.pop_transmits():
        assert dest == SERVER
        out.append(decode(data))
    return out


def only(client: TurnClient) -> Message:
    """The single request the client queued."""
    messages = sent(client)
    assert len(messages) == 1, messages
    return messages[0]


def answer(client: TurnClient, request: Message, now: float, attributes: dict[int, Any],
           *, key: bytes | None = KEY) -> None:
    """Feed a success response, signed with ``key``."""
    response = make_response(request, MessageClass.SUCCESS, attributes)
    client.receive(response.encode(integrity_key=key, fingerprint=True), SERVER, now)


def refuse(client: TurnClient, request: Message, now: float, code: int, reason: str,
           extra: dict[int, Any] | None = None) -> None:
    """Feed an error response."""
    client.receive(make_error(request, code, reason, extra).encode(fingerprint=True), SERVER, now)


def events(client: TurnClient) -> list[TurnEvent]:
    """Drain the event queue."""
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def allocated(now: float = 0.0, lifetime: int = 600) -> TurnClient:
    """A client that went through 401 and got its allocation at ``now``."""
    client = TurnClient(SETTINGS, random.Random(1))
    client.allocate(now)
    refuse(client, only(client), now, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    answer(client, only(client), now, {Attr.XOR_RELAYED_ADDRESS: RELAYED,
                                       Attr.XOR_MAPPED_ADDRESS: MAPPED, Attr.LIFETIME: lifetime})
    assert events(client) == [AllocationSucceeded(RELAYED, MAPPED, lifetime)]
    return client


def state_of(client: TurnClient) -> TurnState:
    """The client's state (a call, so that type narrowing does not stick across commands)."""
    return client.state


def assert_authenticated(request: Message, nonce: str = NONCE) -> None:
    """USERNAME, REALM, NONCE and a MESSAGE-INTEGRITY made with the long-term key."""
    assert request.get(Attr.USERNAME) == "alice"
    assert request.get(Attr.REALM) == REALM
    assert request.get(Attr.NONCE) == nonce
    assert verify_integrity(request, KEY)


# --- Allocate -------------------------------------------------------------------------------

def test_allocate_401_then_success() -> None:
    """RFC 8656 §7: anonymous Allocate, 401 with realm and nonce, signed retry, success."""
    client = TurnClient(SETTINGS, random.Random(1))
    client.allocate(0.0)
    assert state_of(client) is TurnState.ALLOCATING
    first = only(client)
    assert (first.method, first.cls) == (Method.ALLOCATE, MessageClass.REQUEST)
    assert first.get(Attr.REQUESTED_TRANSPORT) == 17
    assert first.get(Attr.LIFETIME) == 600
    assert first.get(Attr.SOFTWARE) == "sipua test"
    assert Attr.USERNAME not in first.attributes
    assert Attr.MESSAGE_INTEGRITY not in first.attributes
    assert Attr.FINGERPRINT in first.attributes

    refuse(client, first, 0.05, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    assert events(client) == []
    second = only(client)
    assert second.method == Method.ALLOCATE
    assert second.transaction_id != first.transaction_id
    assert second.get(Attr.REQUESTED_TRANSPORT) == 17
    assert_authenticated(second)

    answer(client, second, 0.1, {Attr.XOR_RELAYED_ADDRESS: RELAYED,
                                 Attr.XOR_MAPPED_ADDRESS: MAPPED, Attr.LIFETIME: 600})
    assert events(client) == [AllocationSucceeded(RELAYED, MAPPED, 600)]
    assert state_of(client) is TurnState.ALLOCATED
    assert client.relayed_address == RELAYED and client.mapped_address == MAPPED
    assert client.expires_at == 600.1


def test_allocate_stale_nonce_is_retried_with_the_new_nonce() -> None:
    """RFC 8489 §9.2.5: 438 carries a fresh NONCE; the request is signed again with it."""
    client = TurnClient(SETTINGS, random.Random(2))
    client.allocate(0.0)
    refuse(client, only(client), 0.0, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    signed = only(client)
    refuse(client, signed, 0.1, 438, "Stale Nonce", {Attr.REALM: REALM, Attr.NONCE: "nonce-2"})
    retried = only(client)
    assert_authenticated(retried, "nonce-2")
    answer(client, retried, 0.2, {Attr.XOR_RELAYED_ADDRESS: RELAYED,
                                  Attr.XOR_MAPPED_ADDRESS: MAPPED, Attr.LIFETIME: 300})
    assert events(client) == [AllocationSucceeded(RELAYED, MAPPED, 300)]


def test_stale_nonce_loop_gives_up() -> None:
    """A server that keeps answering 438 does not make the client loop forever."""
    client = TurnClient(SETTINGS, random.Random(3))
    client.allocate(0.0)
    refuse(client, only(client), 0.0, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    for i in range(3):
        refuse(client, only(client), 0.1, 438, "Stale Nonce", {Attr.NONCE: f"n{i}"})
    refuse(client, only(client), 0.2, 438, "Stale Nonce", {Attr.NONCE: "again"})
    assert events(client) == [AllocationFailed(438, "Stale Nonce")]
    assert state_of(client) is TurnState.FAILED
    assert client.pop_transmits() == []


def test_wrong_password_fails_after_second_401() -> None:
    """A 401 to a signed request means the credentials are wrong: fail, do not loop."""
    client = TurnClient(SETTINGS, random.Random(4))
    client.allocate(0.0)
    refuse(client, only(client), 0.0, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    refuse(client, only(client), 0.1, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    assert events(client) == [AllocationFailed(401, "Unauthorized")]
    assert client.next_timer() is None


def test_alternate_server_reported_as_failure() -> None:
    """300 Try Alternate is reported with the alternate address, not followed."""
    client = TurnClient(SETTINGS, random.Random(5))
    client.allocate(0.0)
    refuse(client, only(client), 0.0, 300, "Try Alternate",
           {Attr.ALTERNATE_SERVER: ("203.0.113.9", 3478)})
    [event] = events(client)
    assert isinstance(event, AllocationFailed) and event.code == 300
    assert "203.0.113.9" in event.reason


def test_allocation_quota_error_reported() -> None:
    """Other errors (486 Allocation Quota Reached) end the attempt with their code."""
    client = TurnClient(SETTINGS, random.Random(6))
    client.allocate(0.0)
    refuse(client, only(client), 0.0, 486, "Allocation Quota Reached")
    assert events(client) == [AllocationFailed(486, "Allocation Quota Reached")]


def test_allocate_timeout_after_retransmissions() -> None:
    """No answer: retransmitted on the RFC 8489 schedule, then AllocationFailed at 39.5 s."""
    client = TurnClient(SETTINGS, random.Random(7))
    client.allocate(0.0)
    first = only(client)
    times = []
    while (deadline := client.next_timer()) is not None:
        client.handle_timer(deadline)
        for message in sent(client):
            assert message.transaction_id == first.transaction_id
            times.append(deadline)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert events(client) == [AllocationFailed(None, "timeout")]


def test_success_without_relayed_address_fails() -> None:
    """A success response that lacks XOR-RELAYED-ADDRESS is unusable."""
    client = TurnClient(SETTINGS, random.Random(8))
    client.allocate(0.0)
    answer(client, only(client), 0.0, {Attr.LIFETIME: 600}, key=None)
    [event] = events(client)
    assert isinstance(event, AllocationFailed) and event.code is None


def test_response_with_bad_integrity_is_ignored() -> None:
    """RFC 8489 §9.2.5: a response failing MESSAGE-INTEGRITY is dropped as if never received."""
    client = TurnClient(SETTINGS, random.Random(9))
    client.allocate(0.0)
    refuse(client, only(client), 0.0, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    signed = only(client)
    answer(client, signed, 0.1, {Attr.XOR_RELAYED_ADDRESS: RELAYED}, key=b"forged")
    assert events(client) == []
    assert state_of(client) is TurnState.ALLOCATING
    assert client.next_timer() == 0.5  # still retransmitting
    answer(client, signed, 0.2, {Attr.XOR_RELAYED_ADDRESS: RELAYED,
                                 Attr.XOR_MAPPED_ADDRESS: MAPPED})
    assert events(client) == [AllocationSucceeded(RELAYED, MAPPED, 600)]


def test_unsigned_success_to_an_authenticated_request_is_ignored() -> None:
    """RFC 8489 §9.2.5: a success response to an authenticated Allocate that carries no
    MESSAGE-INTEGRITY could come from anyone who saw the request (a forged relayed address):
    dropped and counted; the signed one that follows is taken. An unsigned error is taken."""
    client = TurnClient(SETTINGS, random.Random(9))
    client.allocate(0.0)
    refuse(client, only(client), 0.0, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    signed = only(client)
    answer(client, signed, 0.1, {Attr.XOR_RELAYED_ADDRESS: ("198.51.100.66", 9)}, key=None)
    assert events(client) == [] and client.unauthenticated == 1
    assert state_of(client) is TurnState.ALLOCATING
    answer(client, signed, 0.2, {Attr.XOR_RELAYED_ADDRESS: RELAYED,
                                 Attr.XOR_MAPPED_ADDRESS: MAPPED})
    assert events(client) == [AllocationSucceeded(RELAYED, MAPPED, 600)]
    assert client.relayed_address == RELAYED
    client.create_permission(PEER[0], 0.3)
    refuse(client, only(client), 0.35, 403, "Forbidden")
    assert [type(e).__name__ for e in events(client)] == ["PermissionFailed"]


def test_allocate_twice_is_an_error() -> None:
    """allocate() is a one-shot command."""
    client = allocated()
    with pytest.raises(ValueError, match="allocate"):
        client.allocate(1.0)


# --- Refresh --------------------------------------------------------------------------------

def test_refresh_a_minute_before_expiry() -> None:
    """Lifetime 600 granted at t=10: Refresh at 550, then again 540 s after each success."""
    client = allocated(10.0)
    assert client.next_timer() == 550.0
    client.handle_timer(549.9)
    assert client.pop_transmits() == []
    client.handle_timer(550.0)
    refresh = only(client)
    assert (refresh.method, refresh.get(Attr.LIFETIME)) == (Method.REFRESH, 600)
    assert_authenticated(refresh)
    answer(client, refresh, 550.1, {Attr.LIFETIME: 600})
    assert events(client) == [AllocationRefreshed(600)]
    assert client.next_timer() == pytest.approx(1090.1)
    assert client.expires_at == pytest.approx(1150.1)


def test_short_lifetime_refreshes_half_way() -> None:
    """A server granting only 100 s gets refreshed at 50 s."""
    client = allocated(0.0, lifetime=100)
    assert client.next_timer() == 50.0


def test_refresh_stale_nonce_retried() -> None:
    """A 438 to a Refresh is retried with the new nonce."""
    client = allocated(0.0)
    client.handle_timer(540.0)
    refuse(client, only(client), 540.0, 438, "Stale Nonce", {Attr.NONCE: "nonce-9"})
    retried = only(client)
    assert retried.method == Method.REFRESH
    assert_authenticated(retried, "nonce-9")
    answer(client, retried, 540.1, {Attr.LIFETIME: 600})
    assert events(client) == [AllocationRefreshed(600)]


def test_refresh_refused_fails_the_allocation() -> None:
    """A Refresh answered 437 (Allocation Mismatch) means the allocation is gone."""
    client = allocated(0.0)
    client.create_permission("192.0.2.77", 0.0)
    answer(client, only(client), 0.0, {})
    events(client)
    client.handle_timer(540.0)
    refresh = next(m for m in sent(client) if m.method == Method.REFRESH)
    refuse(client, refresh, 540.0, 437, "Allocation Mismatch")
    assert events(client) == [AllocationFailed(437, "Allocation Mismatch")]
    assert state_of(client) is TurnState.FAILED
    assert client.next_timer() is None


# --- permissions ----------------------------------------------------------------------------

def test_create_permission_and_refresh_every_four_minutes() -> None:
    """RFC 8656 §9: permissions last 300 s; refreshed 240 s after each success."""
    client = allocated(0.0)
    client.create_permission("192.0.2.77", 1.0)
    request = only(client)
    assert request.method == Method.CREATE_PERMISSION
    assert request.get(Attr.XOR_PEER_ADDRESS) == ("192.0.2.77", 0)
    assert_authenticated(request)
    answer(client, request, 1.5, {})
    assert events(client) == [PermissionCreated("192.0.2.77")]
    assert client.has_permission("192.0.2.77")
    assert client.next_timer() == 241.5
    client.handle_timer(241.5)
    again = only(client)
    assert again.method == Method.CREATE_PERMISSION
    answer(client, again, 241.6, {})
    assert events(client) == []  # a refresh is not a new permission
    assert client.next_timer() == pytest.approx(481.6)


def test_permission_requested_while_allocating_is_sent_after() -> None:
    """create_permission before the allocation exists is held, then sent on success."""
    client = TurnClient(SETTINGS, random.Random(11))
    client.allocate(0.0)
    client.create_permission("192.0.2.8", 0.0)
    refuse(client, only(client), 0.0, 401, "Unauthorized", {Attr.REALM: REALM, Attr.NONCE: NONCE})
    answer(client, only(client), 0.1, {Attr.XOR_RELAYED_ADDRESS: RELAYED,
                                       Attr.XOR_MAPPED_ADDRESS: MAPPED})
    request = only(client)
    assert request.method == Method.CREATE_PERMISSION
    assert request.get(Attr.XOR_PEER_ADDRESS) == ("192.0.2.8", 0)


def test_permission_refused() -> None:
    """403 Forbidden to CreatePermission: PermissionFailed and no refresh."""
    client = allocated(0.0)
    client.create_permission("10.0.0.1", 1.0)
    refuse(client, only(client), 1.0, 403, "Forbidden")
    assert events(client) == [PermissionFailed("10.0.0.1", 403, "Forbidden")]
    assert not client.has_permission("10.0.0.1")
    assert client.next_timer() == 540.0


def test_permission_after_failure_is_refused_at_once() -> None:
    """Without an allocation a permission cannot exist."""
    client = TurnClient(SETTINGS, random.Random(12))
    client.allocate(0.0)
    refuse(client, only(client), 0.0, 508, "Insufficient Capacity")
    events(client)
    client.create_permission("192.0.2.1", 1.0)
    assert events(client) == [PermissionFailed("192.0.2.1", None, "no allocation")]


# --- channels and data ----------------------------------------------------------------------

def test_channel_bind_then_channel_data_both_ways() -> None:
    """RFC 8656 §12: ChannelBind 0x4000, then ChannelData out and in."""
    client = allocated(0.0)
    client.bind_channel(PEER, 2.0)
    request = only(client)
    assert request.method == Method.CHANNEL_BIND
    assert request.get(Attr.CHANNEL_NUMBER) == 0x4000
    assert request.get(Attr.XOR_PEER_ADDRESS) == PEER
    assert_authenticated(request)
    answer(client, request, 2.1, {})
    assert events(client) == [PermissionCreated(PEER[0]), ChannelBound(PEER, 0x4000)]
    assert client.channel_for(PEER) == 0x4000

    client.send(PEER, b"rtp", 3.0)
    [(data, dest)] = client.pop_transmits()
    assert dest == SERVER and data == b"\x40\x00\x00\x03rtp"
    assert client.receive(encode_channel_data(0x4000, b"back", pad=True), SERVER, 3.1) == (
        PEER, b"back")
    assert client.handles(encode_channel_data(0x4000, b"x"), SERVER)
    assert client.receive(encode_channel_data(0x4001, b"?"), SERVER, 3.2) is None


def test_channel_binding_and_its_permission_are_refreshed() -> None:
    """The channel is rebound at +540 s; its permission refreshed at +240 s."""
    client = allocated(0.0)
    client.bind_channel(PEER, 10.0)
    answer(client, only(client), 10.0, {})
    events(client)
    client.handle_timer(250.0)
    [permission] = sent(client)
    assert permission.method == Method.CREATE_PERMISSION
    answer(client, permission, 250.0, {})
    assert client.next_timer() == 490.0  # the permission again, 240 s after 250
    client.handle_timer(490.0)
    answer(client, only(client), 490.0, {})
    client.handle_timer(540.0)
    [refresh] = sent(client)
    assert refresh.method == Method.REFRESH
    answer(client, refresh, 540.0, {Attr.LIFETIME: 600})
    assert client.next_timer() == 550.0  # the channel, 540 s after 10
    client.handle_timer(550.0)
    [rebind] = sent(client)
    assert rebind.method == Method.CHANNEL_BIND
    assert rebind.get(Attr.CHANNEL_NUMBER) == 0x4000
    answer(client, rebind, 550.0, {})
    assert [e for e in events(client) if isinstance(e, ChannelBound)] == []


def test_second_peer_gets_the_next_channel() -> None:
    """Channel numbers are handed out from 0x4000 upwards; binding twice is a no-op."""
    client = allocated(0.0)
    client.bind_channel(PEER, 1.0)
    client.bind_channel(PEER, 1.0)
    client.bind_channel(("192.0.2.78", 7000), 1.0)
    numbers = [m.get(Attr.CHANNEL_NUMBER) for m in sent(client)]
    assert numbers == [0x4000, 0x4001]


def test_channel_bind_failure_falls_back_to_send_indications() -> None:
    """A refused ChannelBind leaves data on Send indications."""
    client = allocated(0.0)
    client.bind_channel(PEER, 1.0)
    refuse(client, only(client), 1.0, 400, "Bad Request")
    assert client.channel_for(PEER) is None
    client.send(PEER, b"x", 2.0)
    [(data, _)] = client.pop_transmits()
    assert not is_channel_data(data)
    assert decode(data).method == Method.SEND


def test_send_indication_before_channel() -> None:
    """Without a channel, data goes in a Send indication with XOR-PEER-ADDRESS and DATA."""
    client = allocated(0.0)
    client.send(PEER, b"hello", 1.0)
    indication = only(client)
    assert (indication.method, indication.cls) == (Method.SEND, MessageClass.INDICATION)
    assert indication.get(Attr.XOR_PEER_ADDRESS) == PEER
    assert indication.get(Attr.DATA) == b"hello"


def test_send_without_allocation_is_dropped() -> None:
    """Nothing goes out before the allocation exists."""
    client = TurnClient(SETTINGS, random.Random(13))
    client.send(PEER, b"x", 0.0)
    assert client.pop_transmits() == []


def test_data_indication_received() -> None:
    """RFC 8656 §11.6: a Data indication yields (peer, payload)."""
    client = allocated(0.0)
    indication = Message(Method.DATA, MessageClass.INDICATION, bytes(12),
                         {Attr.XOR_PEER_ADDRESS: PEER, Attr.DATA: b"payload"}).encode()
    assert client.handles(indication, SERVER)
    assert client.receive(indication, SERVER, 1.0) == (PEER, b"payload")


def test_only_the_server_is_listened_to() -> None:
    """Datagrams from anyone but the server are not for the client."""
    client = allocated(0.0)
    indication = Message(Method.DATA, MessageClass.INDICATION, bytes(12),
                         {Attr.XOR_PEER_ADDRESS: PEER, Attr.DATA: b"x"}).encode()
    assert not client.handles(indication, PEER)
    assert client.receive(indication, PEER, 1.0) is None


def test_handles_only_our_transactions() -> None:
    """A Binding response from the server that is not ours is left to the ICE agent."""
    client = allocated(0.0)
    foreign = Message(Method.BINDING, MessageClass.SUCCESS, bytes(range(12)),
                      {Attr.XOR_MAPPED_ADDRESS: MAPPED}).encode()
    assert not client.handles(foreign, SERVER)
    client.create_permission("192.0.2.9", 1.0)
    [(data, _)] = client.pop_transmits()
    ours = make_response(decode(data), MessageClass.SUCCESS).encode()
    assert client.handles(ours, SERVER)


def test_malformed_datagrams_are_counted_not_raised() -> None:
    """Garbage from the server is dropped and counted."""
    client = allocated(0.0)
    good = Message(Method.DATA, MessageClass.INDICATION, bytes(12), {Attr.DATA: b"x"}).encode()
    assert client.receive(good[:-1] + b"\x00" * 4, SERVER, 1.0) is None
    assert client.receive(b"\x40\x00\x00\x09abc", SERVER, 1.0) is None
    assert client.receive(b"\x90junk", SERVER, 1.0) is None
    assert client.malformed == 2


# --- deallocation ---------------------------------------------------------------------------

def test_close_sends_refresh_with_lifetime_zero() -> None:
    """RFC 8656 §7.3: deallocate with Refresh LIFETIME 0; then AllocationReleased."""
    client = allocated(0.0)
    client.create_permission("192.0.2.77", 1.0)
    sent(client)
    client.close(5.0)
    assert state_of(client) is TurnState.RELEASING
    release = only(client)
    assert (release.method, release.get(Attr.LIFETIME)) == (Method.REFRESH, 0)
    assert_authenticated(release)
    answer(client, release, 5.1, {Attr.LIFETIME: 0})
    assert events(client) == [AllocationReleased()]
    assert state_of(client) is TurnState.RELEASED
    assert client.next_timer() is None
    client.close(6.0)
    assert client.pop_transmits() == [] and events(client) == []


def test_close_with_stale_nonce_retries_then_releases_on_timeout() -> None:
    """Deallocation survives a 438 and ends even if the server goes silent."""
    client = allocated(0.0)
    client.close(5.0)
    refuse(client, only(client), 5.0, 438, "Stale Nonce", {Attr.NONCE: "n2"})
    retried = only(client)
    assert retried.get(Attr.LIFETIME) == 0
    assert_authenticated(retried, "n2")
    while (deadline := client.next_timer()) is not None:
        client.handle_timer(deadline)
    assert events(client) == [AllocationReleased()]


def test_close_before_allocation() -> None:
    """Closing an unallocated client cancels its requests and reports release at once."""
    client = TurnClient(SETTINGS, random.Random(14))
    client.allocate(0.0)
    sent(client)
    client.close(0.1)
    assert client.pop_transmits() == []
    assert events(client) == [AllocationReleased()]
    assert client.next_timer() is None


# --- refreshes over a long call (fault survival) -------------------------------------------

def _serve(client: TurnClient, until: float, *, granted: int = 600, rtt: float = 0.05,
           drop_first: int = 0, ignore: frozenset[int] = frozenset(),
           ) -> tuple[dict[int, list[float]], list[tuple[float, int]], list[TurnEvent]]:
    """Run the client on a fake clock until ``until`` against a server that answers every
    request ``rtt`` after its ``drop_first + 1``-th transmission (earlier ones are lost) and
    never answers methods in ``ignore``. Returns the success times per method, every
    transmission (time, method) and every event."""
    answered: dict[int, list[float]] = {}
    transmissions: list[tuple[float, int]] = []
    seen: dict[bytes, int] = {}
    due: list[tuple[float, Message]] = []
    out: list[TurnEvent] = []
    now = 0.0
    while now < until:
        for message in sent(client):
            transmissions.append((now, message.method))
            seen[message.transaction_id] = seen.get(message.transaction_id, 0) + 1
            if message.method not in ignore and seen[message.transaction_id] > drop_first:
                due.append((now + rtt, message))
        out += events(client)
        deadlines = [t for t, _ in due]
        timer = client.next_timer()
        if timer is not None:
            deadlines.append(timer)
        if not deadlines:
            break
        now = min(deadlines)
        for at, message in [d for d in due if d[0] <= now]:
            due.remove((at, message))
            attrs: dict[int, Any] = (
                {Attr.LIFETIME: granted} if message.method == Method.REFRESH else {})
            answer(client, message, now, attrs)
            answered.setdefault(message.method, []).append(now)
        client.handle_timer(now)
    out += events(client)
    return answered, transmissions, out


def _gaps(times: list[float], start: float) -> list[float]:
    """Intervals between successive times, the first from ``start``."""
    points = [start, *times]
    return [b - a for a, b in itertools.pairwise(points)]


def test_an_hour_with_a_permission_and_a_channel_never_lapses() -> None:
    """RFC 8656 §7.3, §9, §12: over an hour of fake time with a server that answers everything,
    the allocation (600 s) is refreshed before each expiry, the permission (300 s) at least
    every 300 s, the channel binding (600 s) before it lapses; no failure, still allocated."""
    client = allocated(0.0)
    client.bind_channel(PEER, 1.0)
    answer(client, only(client), 1.0, {})
    events(client)
    answered, _, out = _serve(client, 3600.0)
    assert not [e for e in out if isinstance(e, AllocationFailed | PermissionFailed)], out
    assert state_of(client) is TurnState.ALLOCATED
    assert client.expires_at is not None and client.expires_at > 3600.0
    assert len(answered[Method.REFRESH]) >= 6
    assert max(_gaps(answered[Method.REFRESH], 0.0)) < 600
    # The ChannelBind refreshes the permission too; together they come well within 300 s.
    permission = sorted(answered.get(Method.CREATE_PERMISSION, []) + answered[Method.CHANNEL_BIND])
    assert max(_gaps(permission, 1.0)) < 300
    assert max(_gaps(answered[Method.CHANNEL_BIND], 1.0)) < 600
    assert client.channel_for(PEER) == 0x4000 and client.has_permission(PEER[0])


def test_refreshes_survive_lost_transmissions() -> None:
    """The first three transmissions of every request lost (a lossy path): the retransmissions
    (RFC 8489 §6.2.1) still get every refresh through before the permission's 300 s and the
    allocation's lifetime run out."""
    client = allocated(0.0)
    client.create_permission(PEER[0], 0.0)
    answer(client, only(client), 0.0, {})
    events(client)
    answered, transmissions, out = _serve(client, 1800.0, drop_first=3)
    assert not [e for e in out if isinstance(e, AllocationFailed | PermissionFailed)], out
    assert max(_gaps(answered[Method.CREATE_PERMISSION], 0.0)) < 300
    assert max(_gaps(answered[Method.REFRESH], 0.0)) < 600
    # Each answered request took four transmissions.
    refreshes = [t for t, m in transmissions if m == Method.REFRESH]
    assert len(refreshes) == 4 * len(answered[Method.REFRESH])


def test_short_lifetime_is_refreshed_half_way_every_time() -> None:
    """A server granting 20 s (the lab's coturn with --turn-lifetime 20): a Refresh every
    10 s, each answered long before the allocation would lapse."""
    client = allocated(0.0, lifetime=20)
    answered, _, out = _serve(client, 120.0, granted=20)
    refreshed = [e for e in out if isinstance(e, AllocationRefreshed)]
    assert refreshed == [AllocationRefreshed(20)] * 11
    assert _gaps(answered[Method.REFRESH], 0.0) == pytest.approx([10.05] * 11)
    assert state_of(client) is TurnState.ALLOCATED


def test_unanswered_permission_refresh_gives_up_before_expiry() -> None:
    """A CreatePermission refresh that the server never answers: every transmission goes out
    between 240 s and 300 s after the permission was installed (before it lapses, RFC 8656
    §9), and the client reports PermissionFailed before 300 s instead of believing in a
    permission the server has dropped."""
    client = allocated(0.0)
    client.create_permission(PEER[0], 10.0)
    answer(client, only(client), 10.0, {})
    events(client)
    _, transmissions, out = _serve(client, 400.0, ignore=frozenset({Method.CREATE_PERMISSION}))
    attempts = [t for t, m in transmissions if m == Method.CREATE_PERMISSION]
    assert attempts and all(250.0 <= t < 310.0 for t in attempts), attempts
    assert out.count(PermissionFailed(PEER[0], None, "timeout")) == 1
    assert not client.has_permission(PEER[0])
    assert state_of(client) is TurnState.ALLOCATED


def test_unanswered_refresh_is_retried_until_the_allocation_expires() -> None:
    """One Refresh the server never answers (a passing outage): when its transaction times out
    (~40 s of retransmissions), the allocation still has time left, so a new Refresh goes out
    at once; its answer keeps the relay."""
    client = allocated(0.0)
    client.handle_timer(540.0)
    first = only(client)
    now = 540.0
    while (timer := client.next_timer()) is not None and timer < 600.0:
        now = timer
        client.handle_timer(now)
        messages = sent(client)
        if any(m.transaction_id != first.transaction_id for m in messages):
            break
    else:
        raise AssertionError("no new Refresh before expiry")
    retry = next(m for m in messages if m.transaction_id != first.transaction_id)
    assert retry.method == Method.REFRESH and 579.0 < now < 600.0
    assert events(client) == [] and state_of(client) is TurnState.ALLOCATED
    answer(client, retry, now + 0.05, {Attr.LIFETIME: 600})
    assert events(client) == [AllocationRefreshed(600)]
    assert state_of(client) is TurnState.ALLOCATED


def test_refresh_never_answered_fails_when_the_allocation_expires() -> None:
    """A server gone for good: Refreshes are retried, and the allocation fails when its
    lifetime runs out (600 s), not earlier."""
    client = allocated(0.0)
    _, transmissions, out = _serve(client, 700.0, ignore=frozenset({Method.REFRESH}))
    failed = [e for e in out if isinstance(e, AllocationFailed)]
    assert failed == [AllocationFailed(None, "allocation expired")]
    refresh_times = [t for t, m in transmissions if m == Method.REFRESH]
    assert min(refresh_times) == 540.0 and max(refresh_times) < 600.0
    assert state_of(client) is TurnState.FAILED
