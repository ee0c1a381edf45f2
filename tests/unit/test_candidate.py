"""Candidates: priorities (RFC 8445 §5.1.2) and the SDP form (RFC 8839 §5.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ice.candidate import (
    Candidate,
    CandidateError,
    CandidateType,
    candidate_priority,
    normalize_ip,
)


def test_priority_formula() -> None:
    """RFC 8445 §5.1.2.1: host, full local preference, component 1 gives the well-known value."""
    assert candidate_priority(126, 65535, 1) == 2130706431
    assert candidate_priority(100, 65535, 1) == 1694498815
    assert candidate_priority(0, 0, 256) == 0
    assert candidate_priority(126, 65535, 1) - candidate_priority(126, 65535, 2) == 1


@pytest.mark.parametrize("args", [(127, 1, 1), (1, 65536, 1), (1, 1, 0), (1, 1, 257)])
def test_priority_rejects_out_of_range(args: tuple[int, int, int]) -> None:
    """Out-of-range inputs are the caller's fault: CandidateError (a ValueError)."""
    with pytest.raises(ValueError):
        candidate_priority(*args)


def test_type_preferences() -> None:
    """The recommended type preferences of RFC 8445 §5.1.2.2."""
    assert [t.preference for t in CandidateType] == [126, 100, 110, 0]


def test_parse_srflx_with_prefixes_and_case() -> None:
    """'a=' and 'candidate:' prefixes are optional; UDP is case-insensitive; raddr/rport parsed."""
    text = "a=candidate:2 1 UDP 1694498815 203.0.113.1 40000 typ srflx raddr 10.0.1.2 rport 40000"
    cand = Candidate.from_sdp(text)
    assert cand == Candidate(
        foundation="2", component=1, transport="udp", priority=1694498815,
        address=("203.0.113.1", 40000), type=CandidateType.SRFLX, related=("10.0.1.2", 40000))
    assert Candidate.from_sdp(text[12:]) == cand  # no prefix at all
    assert cand.to_sdp() == ("candidate:2 1 udp 1694498815 203.0.113.1 40000 typ srflx "
                             "raddr 10.0.1.2 rport 40000")


def test_unknown_extensions_kept_in_order() -> None:
    """Extension pairs the parser does not know survive a round trip."""
    text = ("candidate:0a000102 2 udp 2130706430 10.0.1.2 5001 typ host "
            "generation 0 network-id 3 ufrag abcd")
    cand = Candidate.from_sdp(text)
    assert cand.extensions == (("generation", "0"), ("network-id", "3"), ("ufrag", "abcd"))
    assert cand.to_sdp() == text
    assert Candidate.from_sdp(cand.to_sdp()) == cand


def test_ipv6_and_tcp_parse() -> None:
    """IPv6 addresses and other transports parse (the agent decides what it can use)."""
    cand = Candidate.from_sdp("candidate:1 1 TCP 2128609279 2001:db8::1 9 typ host tcptype active")
    assert cand.transport == "tcp" and cand.address == ("2001:db8::1", 9)
    assert cand.extensions == (("tcptype", "active"),)


@pytest.mark.parametrize("text", [
    "", "candidate:", "candidate:1 1 udp 1 1.2.3.4 5 typ",
    "candidate:1 1 udp 1 1.2.3.4 5 kind host",
    "candidate:1 1 udp 1 1.2.3.4 5 typ martian", "candidate:1 0 udp 1 1.2.3.4 5 typ host",
    "candidate:1 1 udp 0 1.2.3.4 5 typ host", "candidate:1 1 udp 1 1.2.3.4 70000 typ host",
    "candidate:1 1 udp 1 1.2.3.4 -5 typ host", "candidate:1 1 udp 1 1.2.3.4 5 typ host raddr",
    "candidate:1 1 udp 1 1.2.3.4 5 typ srflx raddr 1.1.1.1",
    "candidate:1 1 udp 99999999999 1.2.3.4 5 typ host",
    "candidate:1 1 udp 1 1.2.3.4 \uff15 typ host",
])
def test_malformed_raises_candidate_error(text: str) -> None:
    """Each malformed line raises CandidateError, nothing else."""
    with pytest.raises(CandidateError):
        Candidate.from_sdp(text)


@given(st.text(max_size=120))
def test_garbage_raises_only_candidate_error(text: str) -> None:
    """Arbitrary text either parses or raises CandidateError."""
    try:
        cand = Candidate.from_sdp(text)
    except CandidateError:
        return
    assert Candidate.from_sdp(cand.to_sdp()) == cand


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)


@given(
    foundation=st.text(alphabet="abcdefXYZ0123456789+/", min_size=1, max_size=32),
    component=st.integers(1, 256), priority=st.integers(1, 2**31 - 1),
    ip=st.ip_addresses().map(str), port=st.integers(0, 65535),
    ctype=st.sampled_from(list(CandidateType)),
    related=st.none() | st.tuples(st.ip_addresses().map(str), st.integers(0, 65535)),
    extensions=st.lists(st.tuples(_token.filter(lambda t: t not in ("raddr", "rport")), _token),
                        max_size=3),
)
def test_round_trip(foundation: str, component: int, priority: int, ip: str, port: int,
                    ctype: CandidateType, related: tuple[str, int] | None,
                    extensions: list[tuple[str, str]]) -> None:
    """to_sdp() then from_sdp() gives back the same candidate."""
    cand = Candidate(foundation, component, "udp", priority, (ip, port), ctype, related,
                     tuple(extensions))
    assert Candidate.from_sdp(cand.to_sdp()) == cand
    assert Candidate.from_sdp("a=" + cand.to_sdp().upper().replace("CANDIDATE:", "candidate:")
                              ).priority == priority


def test_normalize_ip() -> None:
    """IPv6 spellings compare equal after normalisation; names are rejected."""
    assert normalize_ip("2001:DB8:0::1") == "2001:db8::1"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    with pytest.raises(CandidateError):
        normalize_ip("host.local")
