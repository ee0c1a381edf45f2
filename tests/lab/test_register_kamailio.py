"""``sipua register`` on host ``a`` behind a port-restricted NAT against Kamailio in the lab:
register (the Contact moves to the NAT's public address), refresh, unregister; a wrong password
fails once with exit code 3."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sipua.lab.servers
from sipua.lab.lab import SERVER_ADDRESS, SIP_DOMAIN, SIP_PORT, SIP_USERS, Lab
from sipua.lab.topology import NAT_WAN
from tests.lab.conftest import have_servers

pytestmark = pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed")

REGISTRAR = f"{SERVER_ADDRESS}:{SIP_PORT}"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(make_lab: Callable[..., Lab], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """A prc-prc lab whose Kamailio accepts lifetimes down to 5 s (its default minimum is 60),
    so that a refresh happens within seconds."""
    config = tmp_path / "lab-config"
    shutil.copytree(sipua.lab.servers.CONFIG_DIR, config)
    cfg = config / "kamailio.cfg"
    text = cfg.read_text()
    anchor = 'modparam("registrar", "max_expires", 3600)'
    assert anchor in text
    cfg.write_text(text.replace(anchor, anchor + '\nmodparam("registrar", "min_expires", 5)'))
    monkeypatch.setattr(sipua.lab.servers, "CONFIG_DIR", config)
    return make_lab("prc-prc", servers=True)


def register(lab: Lab, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run ``sipua register --json`` for alice on host a; (exit code, events, stderr)."""
    done = lab.run("a", [sys.executable, "-m", "sipua", "register", "--user",
                         f"sip:alice@{SIP_DOMAIN}", "--registrar", REGISTRAR, "--json",
                         "--timeout", "10", *args],
                   capture_output=True, text=True, timeout=90, cwd=str(ROOT))
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return done.returncode, events, done.stderr


def test_register_refresh_unregister_behind_nat(lab: Lab) -> None:
    """Registered with the NAT's public address in Contact, refreshed at least once before the
    6 s lifetime ends, unregistered (200) on the way out."""
    code, events, stderr = register(lab, "--password", SIP_USERS["alice"], "--expires", "6",
                                    "--duration", "7")
    assert code == 0, stderr
    registered = [e for e in events if e["event"] == "Registered"]
    assert len(registered) >= 2, events
    first = registered[0]
    assert first["expires"] == 6
    assert first["public_address"].split(":")[0] == NAT_WAN["a"]
    assert first["contact"].startswith(f"sip:alice@{NAT_WAN['a']}:")
    assert all(e["contact"] == first["contact"] for e in registered)
    assert registered[1]["at"] - first["at"] == pytest.approx(3.0, abs=1.0)
    assert events[-1]["event"] == "Unregistered" and events[-1]["confirmed"] is True
    assert not [e for e in events if e["event"] == "RegistrationFailed"]


def test_wrong_password_is_one_clear_failure(lab: Lab) -> None:
    """A wrong password: exit code 3, one permanent RegistrationFailed naming bad credentials,
    a one-line error and no retry."""
    code, events, stderr = register(lab, "--password", "not-the-password")
    assert code == 3
    assert [e["event"] for e in events] == ["RegistrationFailed"]
    assert events[0]["permanent"] is True and events[0]["status"] in (401, 403)
    assert "bad credentials" in events[0]["reason"] or events[0]["status"] == 403
    assert stderr.strip().count("\n") == 0 and stderr.startswith("sipua: error:")
