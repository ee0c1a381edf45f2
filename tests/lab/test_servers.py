"""coturn and Kamailio in the lab's server host, checked with hand-made STUN and SIP probes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipua.lab.lab import (
    SERVER_ADDRESS,
    SIP_DOMAIN,
    SIP_PORT,
    SIP_USERS,
    STUN_PORT,
    TURN_PASSWORD,
    TURN_REALM,
    TURN_USER,
    Lab,
)
from sipua.lab.probe import run_probe
from sipua.lab.servers import CONFIG_DIR
from sipua.lab.topology import NAT_WAN
from tests.lab.conftest import have_servers

pytestmark = pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed")

STUN = f"{SERVER_ADDRESS}:{STUN_PORT}"
REGISTRAR = f"{SERVER_ADDRESS}:{SIP_PORT}"


@pytest.fixture
def lab(make_lab: Callable[..., Lab]) -> Lab:
    """A prc-sym lab with its servers running."""
    return make_lab("prc-sym", servers=True)


def test_stun_binding_returns_the_nat_public_address(lab: Lab) -> None:
    """coturn answers a Binding request with a's NAT's public address and port (the prc NAT
    keeps the private port) and b's symmetric NAT's public address."""
    a = run_probe(lab, "a", "stun", "--server", STUN, "--port", "5000")
    assert a["ok"] and a["mapped"] == f"{NAT_WAN['a']}:5000"
    b = run_probe(lab, "b", "stun", "--server", STUN, "--port", "5000")
    assert b["ok"] and b["mapped"].split(":")[0] == NAT_WAN["b"]


def test_turn_allocate_with_long_term_credentials(lab: Lab) -> None:
    """A TURN Allocate with the lab's credentials gets a relayed address on the server; with a
    wrong password it is refused with 401."""
    ok = run_probe(lab, "a", "turn", "--server", STUN, "--user", TURN_USER,
                   "--password", TURN_PASSWORD)
    assert ok["ok"], ok
    assert ok["relayed"].split(":")[0] == SERVER_ADDRESS
    assert ok["mapped"].split(":")[0] == NAT_WAN["a"]
    bad = run_probe(lab, "b", "turn", "--server", STUN, "--user", TURN_USER,
                    "--password", "wrong")
    assert not bad["ok"] and bad["error_code"] == 401


def test_register_with_digest(lab: Lab) -> None:
    """Kamailio challenges a REGISTER, accepts the right password (200) and rejects a wrong
    one (401/403), for a UA behind each kind of NAT."""
    for host, user in (("a", "alice"), ("b", "bob")):
        good = run_probe(lab, host, "register", "--registrar", REGISTRAR, "--domain", SIP_DOMAIN,
                         "--user", user, "--password", SIP_USERS[user])
        assert good["statuses"] == [401, 200], good
    bad = run_probe(lab, "a", "register", "--registrar", REGISTRAR, "--domain", SIP_DOMAIN,
                    "--user", "alice", "--password", "not-the-password")
    assert bad["statuses"][0] == 401 and bad["status"] in (401, 403), bad


def test_constants_match_the_config_files() -> None:
    """The Python constants users rely on agree with config/lab (credentials, realm, users)."""
    turn = (CONFIG_DIR / "turnserver.conf").read_text().splitlines()
    assert f"user={TURN_USER}:{TURN_PASSWORD}" in turn
    assert f"realm={TURN_REALM}" in turn
    rows = (CONFIG_DIR / "kamailio-db" / "subscriber").read_text().splitlines()[1:]
    users = {r.split(":")[1]: r.split(":")[3] for r in rows if r.strip()}
    assert users == SIP_USERS
    assert f'"{SIP_DOMAIN}"' in (CONFIG_DIR / "kamailio.cfg").read_text()
