"""STUN/ICE message security: what a forged, damaged or misdirected message can change.

A connectivity check changes state (pairs, peer-reflexive candidates, nomination) only with a
valid MESSAGE-INTEGRITY for the current credentials and a good FINGERPRINT (RFC 8445 §7.3,
RFC 8489 §6.3, §7.3); responses are matched by transaction id, source and integrity
(RFC 8445 §7.2.5.2.1); passwords and keys never reach a log record.
"""

from __future__ import annotations

import logging
import zlib

import pytest

from ice.agent import Agent
from ice.events import CheckSucceeded, PairSelected
from ice.stun import Attr, Message, MessageClass, Method, decode, short_term_key
from tests.support.ice_harness import Network, both_selected, connect, of_type, two_agents

PEER = ("192.0.2.7", 7777)  # a source no candidate names: a check from it would make a prflx
TID = b"forgedtid123"


def describe(net: Network) -> None:
    """Exchange credentials and candidates both ways without starting checks."""
    for me, peer in ((net.agent("a"), net.agent("b")), (net.agent("b"), net.agent("a"))):
        me.set_remote_credentials(peer.local_ufrag, peer.local_pwd)
        for cand in peer.local_candidates:
            me.add_remote_candidate(cand, net.now)
        me.end_of_remote_candidates(net.now)


def snapshot(agent: Agent) -> tuple[object, ...]:
    """Everything a check may change: pairs and their states, remote candidates, nominations,
    the role and the selection."""
    return (
        [(p.local.address, p.remote.address, p.state, p.nominated) for p in agent.checklist.pairs],
        [c.address for c in agent.remote_candidates],
        agent.controlling,
        agent.selected_pair(1),
        len(agent.valid_pairs),
    )


def check(a: Agent, b: Agent, *, key: bytes | None, username: str | None,
          fingerprint: bool = True, use_candidate: bool = True) -> bytes:
    """A Binding request from b to a, controlled-side view: b claims to be controlling."""
    attrs: dict[int, object] = {Attr.PRIORITY: 1845501695, Attr.ICE_CONTROLLING: 1}
    if username is not None:
        attrs[Attr.USERNAME] = username
    if use_candidate:
        attrs[Attr.USE_CANDIDATE] = True
    message = Message(Method.BINDING, MessageClass.REQUEST, TID, attrs)
    return message.encode(integrity_key=key, fingerprint=fingerprint)


def corrupt_fingerprint(data: bytes) -> bytes:
    """The same message with the CRC of its FINGERPRINT changed."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


CASES = {
    # name: (answer expected: error code or None for a silent drop)
    "wrong password": 401,
    "wrong ufrag": 401,
    "previous remote ufrag only": 401,
    "no username": 400,
    "no integrity": 400,
    "integrity over changed bytes": 401,
    "no fingerprint": None,
    "corrupted fingerprint": None,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_check_changes_nothing(case: str) -> None:
    """Each bad check gets the RFC's answer (401 wrong credentials, 400 missing ones) or is
    silently discarded (FINGERPRINT missing or wrong, RFC 8489 §7.3); with USE-CANDIDATE and
    from an unknown source, it still creates no pair, learns no peer-reflexive candidate and
    nominates nothing."""
    net = two_agents(b_controlling=False, a_controlling=False)
    describe(net)
    a, b = net.agent("a"), net.agent("b")
    key = short_term_key(a.local_pwd)
    username = f"{a.local_ufrag}:{b.local_ufrag}"
    data = {
        "wrong password": lambda: check(a, b, key=short_term_key("x" * 22), username=username),
        "wrong ufrag": lambda: check(a, b, key=key, username=f"nope:{b.local_ufrag}"),
        "previous remote ufrag only": lambda: check(a, b, key=key, username=b.local_ufrag),
        "no username": lambda: check(a, b, key=key, username=None),
        "no integrity": lambda: check(a, b, key=None, username=username),
        "integrity over changed bytes": lambda: _tamper_priority(
            check(a, b, key=key, username=username, fingerprint=False)),
        "no fingerprint": lambda: check(a, b, key=key, username=username, fingerprint=False),
        "corrupted fingerprint": lambda: corrupt_fingerprint(
            check(a, b, key=key, username=username)),
    }[case]()
    before = snapshot(a)
    net.sent.clear()
    assert net.inject("a", data, PEER, net.hosts["a"].bases[0]) is None
    answers = [p for p in net.sent if p.sender == "a"]
    expected = CASES[case]
    if expected is None:
        assert answers == []
    else:
        assert len(answers) == 1 and answers[0].dest == PEER
        reply = decode(answers[0].data)
        assert reply.cls is MessageClass.ERROR and reply.get(Attr.ERROR_CODE)[0] == expected
        assert reply.get(Attr.MESSAGE_INTEGRITY) is None  # no key to sign an answer with
    assert snapshot(a) == before
    kinds = {type(e).__name__ for e in net.events("a")}
    assert not kinds & {"RemoteCandidateLearned", "PairStateChanged", "PairNominated",
                        "CheckReceived", "RoleChanged", "PairSelected"}


def _tamper_priority(data: bytes) -> bytes:
    """Flip a bit of PRIORITY after MESSAGE-INTEGRITY was computed, then append a valid
    FINGERPRINT: only the integrity check can catch it."""
    raw = bytearray(data)
    pos = raw.find(Attr.PRIORITY.to_bytes(2, "big") + b"\x00\x04")
    raw[pos + 7] ^= 0x01
    raw[2:4] = (len(raw) - 20 + 8).to_bytes(2, "big")  # RFC 8489 §14.7: length covers it
    crc = zlib.crc32(bytes(raw)) ^ 0x5354554E
    return bytes(raw) + b"\x80\x28\x00\x04" + crc.to_bytes(4, "big")


def test_good_check_is_the_control() -> None:
    """The same check with the right key and FINGERPRINT is answered 200 with integrity and
    learns the peer-reflexive source: the cases above fail for the reason they name."""
    net = two_agents(a_controlling=False, b_controlling=False)
    describe(net)
    a, b = net.agent("a"), net.agent("b")
    data = check(a, b, key=short_term_key(a.local_pwd), username=f"{a.local_ufrag}:{b.local_ufrag}")
    net.sent.clear()
    net.inject("a", data, PEER, net.hosts["a"].bases[0])
    reply = decode(next(p for p in net.sent if p.sender == "a" and p.dest == PEER).data)
    assert reply.cls is MessageClass.SUCCESS
    assert PEER in [c.address for c in a.remote_candidates]


def _checking_pair() -> tuple[Network, Agent, Agent, Message]:
    """a controls and has sent its first check to b, which never arrives."""
    net = two_agents(loss=lambda p: True)
    describe(net)
    a, b = net.agent("a"), net.agent("b")
    a.start_checks(0.0)
    net.flush()
    return net, a, b, decode(net.sent[0].data)


@pytest.mark.parametrize("case", [
    "unknown transaction", "wrong key", "no integrity", "no fingerprint", "wrong source",
])
def test_forged_responses(case: str) -> None:
    """Responses that must not make a pair valid: an unknown transaction id, integrity with the
    wrong key, no integrity, no FINGERPRINT (ignored: the check stays in progress) and the right
    response from the wrong source (the check fails, RFC 8445 §7.2.5.2.1)."""
    net, a, b, request = _checking_pair()
    tid = b"\x00" * 12 if case == "unknown transaction" else request.transaction_id
    key = {"wrong key": b"wrong", "no integrity": None}.get(case, short_term_key(b.local_pwd))
    response = Message(Method.BINDING, MessageClass.SUCCESS, tid,
                       {Attr.XOR_MAPPED_ADDRESS: ("10.0.0.1", 1000)})
    data = response.encode(integrity_key=key, fingerprint=case != "no fingerprint")
    source = ("10.0.0.99", 2000) if case == "wrong source" else ("10.0.0.2", 2000)
    net.inject("a", data, source, net.hosts["a"].bases[0])
    pair = a.checklist.pairs[0]
    assert pair.state.value == ("failed" if case == "wrong source" else "in-progress")
    assert not a.valid_pairs and not of_type(net.events("a"), CheckSucceeded)
    assert a.selected_pair(1) is None


def test_secrets_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A whole ICE session at DEBUG (gathering, checks, nomination, keepalives): no record holds
    either side's ice-pwd or the short-term key derived from it."""
    caplog.set_level(logging.DEBUG)
    net = two_agents()
    connect(net, "a", "b")
    assert net.run(5.0, stop=both_selected(net))
    net.run(net.now + 30.0)  # keepalives and consent checks
    a, b = net.agent("a"), net.agent("b")
    assert of_type(net.events("a"), PairSelected)
    secrets = {a.local_pwd, b.local_pwd, short_term_key(a.local_pwd).hex(),
               short_term_key(b.local_pwd).hex(), repr(short_term_key(a.local_pwd))}
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage()
        assert not any(secret in text for secret in secrets), text
    events_text = " ".join(repr(e) for e in net.events("a") + net.events("b"))
    assert a.local_pwd not in events_text and b.local_pwd not in events_text


def test_credentials_kept_out_of_reprs() -> None:
    """Objects that hold a password or an ice-pwd print without it, so a log line that shows
    one (an event, a settings object, an exception) cannot leak it."""
    from ice.turn import TurnSettings
    from sipua.auth import DigestCredentials
    from sipua.sdp import IceAttributes, InlineKey
    from sipua.settings import Account, TurnServer

    secret = "S3cret-value-91b2"
    objects = [
        TurnSettings(("203.0.113.1", 3478), "user", secret),
        DigestCredentials("alice", secret),
        IceAttributes("ufrag", secret),
        InlineKey(secret.encode()),
        Account(name="alice", uri="sip:alice@example.org", password=secret),
        TurnServer(uri="turn:turn.example.org", username="u", password=secret),
    ]
    for obj in objects:
        assert secret not in repr(obj) and secret not in str(obj), type(obj).__name__
