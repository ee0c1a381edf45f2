"""Our agent against aioice (PyPI) across the NAT lab's NATs, in both roles, through the ICE
peer line protocol, with the lab's coturn for STUN and TURN.

What each side may claim differs:

- aioice reports the *base* of its local candidate ("host" with the private address) even when
  the path goes through its NAT, so only its remote end is compared with our description.
- aioice, when it controls, nominates aggressively and keeps the first nominated pair that
  succeeds, which is not always the best one (across prc-prc it often ends on our relayed
  candidate). As controlled it also keeps the first pair that gets nominated and succeeds. When
  we control aggressively, a triggered check we send after our own selection still carries
  USE-CANDIDATE (RFC 5245 §8.1.2 keeps triggered checks going after completion), and aioice may
  settle on that pair instead of ours. So the pair is checked on our side, and aioice's remote
  end only has to be one of our real endpoints (our relay or our NAT's public address).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sipua.lab.lab import SERVER_ADDRESS, Lab, teardown
from tests.lab.conftest import _REASON as LAB_SKIP_REASON
from tests.lab.conftest import have_servers, unique_name
from tests.support.ice_lab import DIRECT, SERVER_ARGS, assert_connected, ips, lab_pair, types
from tests.support.peers import aioice_peer, sipua_peer

pytestmark = [
    pytest.mark.lab,
    pytest.mark.interop,
    pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or ""),
    pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed"),
]

TOPOLOGIES = ["prc-prc", "prc-sym", "sym-sym"]


@pytest.fixture
def lab_of() -> Iterator[Callable[[str], Lab]]:
    """``lab_of(topology)``: a fresh lab with coturn under a unique name, removed after the
    test (the lab tests' skip logic and naming, tests/lab/conftest.py)."""
    names: list[str] = []

    def make(topology: str) -> Lab:
        names.append(unique_name())
        return Lab.up(topology, names[-1], servers=True)

    yield make
    for name in names:
        teardown(name)


def assert_expected_pair(lab: Lab, ours: dict[str, Any], our_host: str) -> None:
    """Our selected pair is the one an engineer expects in the lab's topology."""
    other_host = "b" if our_host == "a" else "a"
    local, remote = types(ours)
    if lab.topology == "prc-prc":
        assert local in DIRECT - {"host"} and remote in DIRECT - {"host"}, ours
        assert ips(ours) == (lab.hosts[our_host].public_address,
                             lab.hosts[other_host].public_address), ours
    else:
        # No direct path across a symmetric NAT facing a filtering one: exactly one relay.
        assert (local, remote).count("relay") == 1, ours
        for end, host in (("local", our_host), ("remote", other_host)):
            ip = ips(ours)[0 if end == "local" else 1]
            expected = SERVER_ADDRESS if ours[end]["type"] == "relay" else \
                lab.hosts[host].public_address
            assert ip == expected, ours


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_sipua_controls_aioice(lab_of: Callable[[str], Lab], tmp_path: Path, topology: str,
                               nomination: str) -> None:
    """Ours controlling on a (either nomination), aioice controlled on b: both select and
    echo; our pair is the expected one; aioice's remote end is one of our real endpoints."""
    lab = lab_of(topology)
    a, b = lab_pair(lab, sipua_peer("controlling", *SERVER_ARGS, nomination=nomination),
                    aioice_peer("controlled", *SERVER_ARGS, nomination=nomination), tmp_path)
    ours = assert_connected(a, "controlling")
    theirs = assert_connected(b, "controlled")
    assert_expected_pair(lab, ours, "a")
    assert ips(theirs)[1] in (SERVER_ADDRESS, lab.hosts["a"].public_address), theirs


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_aioice_controls_sipua(lab_of: Callable[[str], Lab], tmp_path: Path,
                               topology: str) -> None:
    """aioice controlling on a (it only nominates aggressively), ours controlled on b: both
    select and echo, and we select exactly the pair aioice nominated (our end of it is what
    aioice reports as its remote candidate)."""
    lab = lab_of(topology)
    a, b = lab_pair(lab, aioice_peer("controlling", *SERVER_ARGS),
                    sipua_peer("controlled", *SERVER_ARGS, nomination="aggressive"), tmp_path)
    theirs = assert_connected(a, "controlling")
    ours = assert_connected(b, "controlled")
    assert ours["local"]["addr"] == theirs["remote"]["addr"], (ours, theirs)
    assert ips(ours)[1] in (SERVER_ADDRESS, lab.hosts["a"].public_address), ours
    if topology != "prc-prc":
        assert types(ours).count("relay") >= 1, ours
