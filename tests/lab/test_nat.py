"""Each NAT behaviour of the lab, proven from the outside with plain UDP probes.

Reflectors (probe endpoints with ``--reflect``) tell a host which public address they saw; the
tests compare those addresses and check which unsolicited packets get through.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import pytest

from sipua.lab.lab import SERVER_ADDRESS, Lab
from sipua.lab.probe import Endpoint
from sipua.lab.topology import NAT_WAN, OVERLAP_LAN, PUBLIC_HOST
from tests.lab.conftest import have_nfqueue

S = SERVER_ADDRESS
B_PUB = PUBLIC_HOST["b"]


def _mapped(ep: Endpoint, dest: str) -> str:
    """Send to a reflector at ``dest`` and return the public address it saw."""
    ep.send(dest)
    return str(ep.expect("recv", timeout=3.0, source=dest)["seen"])


def test_prc_keeps_one_port_and_drops_unsolicited(make_lab: Callable[..., Lab]) -> None:
    """Port-restricted cone: one public port towards two destinations (endpoint-independent
    mapping); a packet from a port a has not sent to is dropped, even from a known address,
    and passes once a has sent to that port (address-and-port-dependent filtering)."""
    lab = make_lab("prc-pub")
    with (
        Endpoint(lab, "server", 7000, reflect=True),
        Endpoint(lab, "b", 7000, reflect=True),
        Endpoint(lab, "server", 7002) as other,
        Endpoint(lab, "a", 5000) as a,
    ):
        first = _mapped(a, f"{S}:7000")
        second = _mapped(a, f"{B_PUB}:7000")
        assert first == second
        assert first.split(":")[0] == NAT_WAN["a"]
        # An early packet from the peer must not spoil the mapping (the conntrack pitfall).
        other.send(first, "unsolicited")
        assert a.received(0.7) == []
        a.send(f"{S}:7002", "open")
        other.expect("recv", source=first)
        other.send(first, "solicited")
        assert a.expect("recv", source=f"{S}:7002")["data"] == "solicited"
        assert _mapped(a, f"{S}:7000") == first


def test_sym_uses_a_port_per_destination(make_lab: Callable[..., Lab]) -> None:
    """Symmetric NAT: each destination sees another public port, the same destination the same
    one again (address-and-port-dependent mapping); unsolicited packets are dropped."""
    lab = make_lab("sym-pub")
    with (
        Endpoint(lab, "server", 7000, reflect=True),
        Endpoint(lab, "server", 7001, reflect=True),
        Endpoint(lab, "b", 7000, reflect=True),
        Endpoint(lab, "b", 7003) as stranger,
        Endpoint(lab, "a", 5000) as a,
    ):
        seen = [_mapped(a, f"{S}:7000"), _mapped(a, f"{S}:7001"), _mapped(a, f"{B_PUB}:7000")]
        assert all(s.split(":")[0] == NAT_WAN["a"] for s in seen)
        assert len(set(seen)) == 3, seen
        assert _mapped(a, f"{S}:7000") == seen[0]
        stranger.send(seen[2], "unsolicited")
        assert a.received(0.7) == []


def test_full_cone_accepts_anyone_once_mapped(make_lab: Callable[..., Lab]) -> None:
    """Full cone: after a sent one packet to the server, anyone can reach a's public port
    (endpoint-independent filtering); a public port that was never mapped stays closed."""
    lab = make_lab("full-pub")
    with (
        Endpoint(lab, "server", 7000, reflect=True),
        Endpoint(lab, "b", 6000) as stranger,
        Endpoint(lab, "a", 5001) as idle,
        Endpoint(lab, "a", 5000) as a,
    ):
        public = _mapped(a, f"{S}:7000")
        assert public == f"{NAT_WAN['a']}:5000"
        stranger.send(public, "hello from anyone")
        got = a.expect("recv", source=f"{B_PUB}:6000")
        assert got["data"] == "hello from anyone"
        # a answers the stranger from the same public port.
        a.send(f"{B_PUB}:6000", "answer")
        assert stranger.expect("recv", source=public)["data"] == "answer"
        stranger.send(f"{NAT_WAN['a']}:5001", "never mapped")
        assert idle.received(0.7) == []


def test_hairpin_loops_back_with_public_source(make_lab: Callable[..., Lab]) -> None:
    """Hairpin: a reaches b through the NAT's public address of b and b sees a's public
    mapping as the source (RFC 4787 REQ-9); b's answer goes back the same way. a and b
    use the same private port, and still get distinct, stable public ports."""
    lab = make_lab("hairpin")
    assert lab.hosts["a"].public_address == lab.hosts["b"].public_address == NAT_WAN["a"]
    with (
        Endpoint(lab, "server", 7000, reflect=True),
        Endpoint(lab, "server", 7001, reflect=True),
        Endpoint(lab, "a", 5000) as a,
        Endpoint(lab, "b", 5000) as b,
    ):
        pa = _mapped(a, f"{S}:7000")
        pb = _mapped(b, f"{S}:7000")
        assert pa != pb
        assert _mapped(b, f"{S}:7001") == pb  # still endpoint-independent for b
        a.send(pb, "via hairpin")
        got = b.expect("recv", source=pa)
        assert got["data"] == "via hairpin"
        b.send(pa, "back")
        assert a.expect("recv", source=pb)["data"] == "back"


def test_udp_timeout_expires_binding(make_lab: Callable[..., Lab]) -> None:
    """--udp-timeout 2: the server can answer within the timeout, but after 3.5 s of silence
    the binding is gone and its packet is dropped."""
    lab = make_lab("prc-pub", udp_timeout=2)
    with Endpoint(lab, "server", 7000) as server, Endpoint(lab, "a", 5000) as a:
        a.send(f"{S}:7000", "open")
        public = server.expect("recv")["from"]
        time.sleep(1.0)
        server.send(public, "in time")
        assert a.expect("recv", source=f"{S}:7000")["data"] == "in time"
        time.sleep(3.5)
        server.send(public, "too late")
        assert a.received(0.7) == []


def test_overlapping_subnets(make_lab: Callable[..., Lab]) -> None:
    """--overlap: a and b have the same private address in the same 192.168.1.0/24 and still
    reach each other through their NATs by hole punching."""
    lab = make_lab("prc-prc", overlap=True)
    same = OVERLAP_LAN[2]
    assert lab.hosts["a"].address == lab.hosts["b"].address == same
    with (
        Endpoint(lab, "server", 7000, reflect=True),
        Endpoint(lab, "a", 5000) as a,
        Endpoint(lab, "b", 5000) as b,
    ):
        pa, pb = _mapped(a, f"{S}:7000"), _mapped(b, f"{S}:7000")
        assert pa == f"{NAT_WAN['a']}:5000" and pb == f"{NAT_WAN['b']}:5000"
        b.send(pa, "punch")  # dropped at a's NAT, but opens b's
        a.send(pb, "hello b")
        assert b.expect("recv", source=pa)["data"] == "hello b"
        b.send(pa, "hello a")
        assert a.expect("recv", source=pb)["data"] == "hello a"


def test_loss_drops_about_the_asked_share(make_lab: Callable[..., Lab]) -> None:
    """--loss 20: about a fifth of 1000 datagrams crossing the internet is lost (binomial
    standard deviation ~13, the bounds are ~5 of them)."""
    lab = make_lab("pub-pub", loss_pct=20)
    with Endpoint(lab, "b", 7000, quiet=True) as sink, Endpoint(lab, "a", 5000) as a:
        a.burst(f"{B_PUB}:7000", 1000, 0.0005)
        time.sleep(0.3)
        received = sink.stats()["received"]
    assert 730 <= received <= 870, received


@pytest.mark.skipif(not have_nfqueue(), reason="NetfilterQueue is not installed")
def test_delay_adds_the_asked_delay(make_lab: Callable[..., Lab]) -> None:
    """--delay 80: every packet crossing the internet waits 80 ms, so a round trip between a
    and the server takes about 160 ms (vs well under 10 ms without)."""
    lab = make_lab("prc-pub", delay_ms=80)
    with Endpoint(lab, "server", 7000, reflect=True), Endpoint(lab, "a", 5000) as a:
        rtts = []
        for _ in range(5):
            a.send(f"{S}:7000")
            rtts.append(a.expect("recv", timeout=3.0)["rtt_ms"])
    assert 155 <= statistics.median(rtts) <= 220, rtts


@pytest.mark.skipif(not have_nfqueue(), reason="NetfilterQueue is not installed")
def test_jitter_reorders(make_lab: Callable[..., Lab]) -> None:
    """--delay 30 --jitter 25: packets sent 2 ms apart arrive out of order, and one-way
    delays spread over tens of milliseconds."""
    lab = make_lab("pub-pub", delay_ms=30, jitter_ms=25)
    with Endpoint(lab, "b", 7000, reflect=True), Endpoint(lab, "a", 5000) as a:
        a.burst(f"{B_PUB}:7000", 100, 0.002)
        got = a.received(1.5)
    seqs = [json.loads(json.loads(g["data"])["echo"])["seq"] for g in got]
    rtts = [g["rtt_ms"] for g in got]
    assert len(got) == 100
    assert seqs != sorted(seqs)
    assert max(rtts) - min(rtts) > 30, (min(rtts), max(rtts))
