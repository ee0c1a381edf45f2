"""Two of our ICE agents (``python -m ice.peer``) on hosts a and b of a real NAT lab, with the
lab's coturn for STUN and TURN: each topology connects, the echo test passes, and the selected
pair is the one an engineer expects.

What is expected follows from the NATs' RFC 4787 behaviours (docs/lab.md):

- pub-pub: host to host.
- prc-prc (also with overlapping private subnets): server-reflexive or peer-reflexive on both
  ends, on the NATs' public addresses; the private addresses (equal ones, with --overlap) are
  never a path.
- full-sym: direct. The symmetric side's check reaches the full-cone side's public port from a new
  mapping, which both agents learn as a peer-reflexive candidate.
- hairpin: both hosts on one LAN, so host to host on the LAN addresses.
- prc-sym and sym-sym: no direct path exists. A port-restricted (or symmetric) NAT only lets in
  packets from an address and port it has sent to, and a symmetric NAT gives every new
  destination a fresh, unpredictable port, so a check towards the port-restricted side always
  comes from a port that side has never sent to. One TURN relay is needed; one is enough (the
  relay's permissions are per IP address, RFC 8656 §9), so exactly one end is a relayed
  candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipua.lab.icepair import PeerRun
from sipua.lab.lab import SERVER_ADDRESS, Lab
from tests.lab.conftest import have_servers
from tests.support.ice_lab import DIRECT, SERVER_ARGS, assert_connected, ips, lab_pair, types
from tests.support.peers import sipua_peer

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed"),
]

NOMINATIONS = ["regular", "aggressive"]


def connect(make_lab: Callable[..., Lab], tmp_path: Path, topology: str, nomination: str,
            **options: Any) -> tuple[Lab, dict[str, Any], dict[str, Any]]:
    """Pair two of our peers (a controlling) in a fresh lab; both must connect and echo.

    Returns the lab and both "selected" events, checked to describe the same pair from either
    end."""
    lab = make_lab(topology, servers=True, **options)
    a, b = lab_pair(lab, sipua_peer("controlling", *SERVER_ARGS, nomination=nomination),
                    sipua_peer("controlled", *SERVER_ARGS, nomination=nomination), tmp_path)
    sel_a = assert_connected(a, "controlling")
    sel_b = assert_connected(b, "controlled")
    assert sel_a["local"]["addr"] == sel_b["remote"]["addr"], (sel_a, sel_b)
    assert sel_a["remote"]["addr"] == sel_b["local"]["addr"], (sel_a, sel_b)
    return lab, sel_a, sel_b


def assert_direct_public(lab: Lab, sel_a: dict[str, Any], sel_b: dict[str, Any]) -> None:
    """A reflexive pair across both NATs: no relay, and each end on its NAT's public address."""
    for sel in (sel_a, sel_b):
        local, remote = types(sel)
        assert local in DIRECT - {"host"} and remote in DIRECT - {"host"}, sel
    assert ips(sel_a) == (lab.hosts["a"].public_address, lab.hosts["b"].public_address), sel_a


def relayed_ends(sel: dict[str, Any]) -> int:
    """How many ends of the selected pair are relayed candidates."""
    return sum(t == "relay" for t in types(sel))


@pytest.mark.parametrize("nomination", NOMINATIONS)
def test_prc_prc(make_lab: Callable[..., Lab], tmp_path: Path, nomination: str) -> None:
    """Port-restricted NATs on both sides: a direct pair between the two public mappings."""
    lab, sel_a, sel_b = connect(make_lab, tmp_path, "prc-prc", nomination)
    assert_direct_public(lab, sel_a, sel_b)


@pytest.mark.parametrize("nomination", NOMINATIONS)
def test_prc_prc_overlapping_subnets(make_lab: Callable[..., Lab], tmp_path: Path,
                                     nomination: str) -> None:
    """Both homes are 192.168.1.0/24 with the same host address: the equal private addresses
    must not fool the agents, the pair goes through both public addresses."""
    lab, sel_a, sel_b = connect(make_lab, tmp_path, "prc-prc", nomination, overlap=True)
    assert lab.hosts["a"].address == lab.hosts["b"].address
    assert_direct_public(lab, sel_a, sel_b)


@pytest.mark.parametrize("nomination", NOMINATIONS)
def test_full_cone_to_symmetric(make_lab: Callable[..., Lab], tmp_path: Path,
                                nomination: str) -> None:
    """Full cone on a, symmetric on b: direct, b's end a peer-reflexive candidate (its NAT
    maps the check towards a to a port no STUN server saw)."""
    lab, sel_a, sel_b = connect(make_lab, tmp_path, "full-sym", nomination)
    assert_direct_public(lab, sel_a, sel_b)
    assert types(sel_a)[1] == "prflx" and types(sel_b)[0] == "prflx", (sel_a, sel_b)


@pytest.mark.parametrize("nomination", NOMINATIONS)
def test_hairpin_lan(make_lab: Callable[..., Lab], tmp_path: Path, nomination: str) -> None:
    """Both hosts behind one NAT: host to host over the shared LAN, not through the NAT."""
    lab, sel_a, _ = connect(make_lab, tmp_path, "hairpin", nomination)
    assert types(sel_a) == ("host", "host"), sel_a
    assert ips(sel_a) == (lab.hosts["a"].address, lab.hosts["b"].address), sel_a


@pytest.mark.parametrize("nomination", NOMINATIONS)
def test_pub_pub(make_lab: Callable[..., Lab], tmp_path: Path, nomination: str) -> None:
    """No NAT: host to host on the public addresses."""
    lab, sel_a, _ = connect(make_lab, tmp_path, "pub-pub", nomination)
    assert types(sel_a) == ("host", "host"), sel_a
    assert ips(sel_a) == (lab.hosts["a"].address, lab.hosts["b"].address), sel_a


@pytest.mark.parametrize("topology", ["prc-sym", "sym-sym"])
@pytest.mark.parametrize("nomination", NOMINATIONS)
def test_symmetric_needs_one_relay(make_lab: Callable[..., Lab], tmp_path: Path,
                                   topology: str, nomination: str) -> None:
    """A symmetric NAT facing a port-restricted or symmetric one: no direct path exists, so
    exactly one end is relayed through coturn and the other is the NATed host's public
    mapping (server- or peer-reflexive)."""
    lab, sel_a, _ = connect(make_lab, tmp_path, topology, nomination)
    assert relayed_ends(sel_a) == 1, sel_a
    relay = next(s for s in ("local", "remote") if sel_a[s]["type"] == "relay")
    other = "remote" if relay == "local" else "local"
    assert sel_a[relay]["addr"].startswith(f"{SERVER_ADDRESS}:"), sel_a
    assert sel_a[other]["type"] in DIRECT - {"host"}, sel_a
    public = lab.hosts["a" if other == "local" else "b"].public_address
    assert sel_a[other]["addr"].startswith(f"{public}:"), sel_a


def test_without_turn_symmetric_fails_cleanly(make_lab: Callable[..., Lab],
                                              tmp_path: Path) -> None:
    """Without TURN, prc-sym has no path at all: both peers report "failed" by their deadline
    instead of hanging or selecting something unusable."""
    lab = make_lab("prc-sym", servers=True)
    stun_only = (*SERVER_ARGS[:2], "--linger", "1", "--timeout", "4")
    a, b = lab_pair(lab, sipua_peer("controlling", *stun_only),
                    sipua_peer("controlled", *stun_only), tmp_path, timeout=30)
    for run in (a, b):
        assert isinstance(run, PeerRun)
        failed = run.event("failed")
        assert failed is not None and run.selected is None, (run.name, run.events, run.error)
        assert run.exit_code == 1
