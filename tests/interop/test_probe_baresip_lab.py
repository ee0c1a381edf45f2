"""`sipua probe` against baresip (Debian's baresip-core 1.0.0), and linphonec 5.1, in the NAT lab,
through Kamailio, with the lab's coturn: the report must show what /work/shared/INTEROP_NOTES.md
says of baresip's ICE, learnt from the wire alone: a full agent, two components (no rtcp-mux, with
a=rtcp), no a=ice-options and no a=end-of-candidates, no USE-CANDIDATE while controlled and
regular nomination when it controls, no RTP before ICE completes, SOFTWARE in its STUN.

The probe runs as a user runs it (`sipua probe --json` on lab host a, registered as alice, with
the default settings: rtcp-mux offered, which baresip declines); baresip answers as bob on
host b. Both hosts are public (pub-pub) by default so that the test stays short;
SIPUA_PROBE_TOPOLOGY picks another topology.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sipua.lab.baresip import BaresipPeer
from sipua.lab.lab import Lab, teardown
from sipua.probe import report_markdown
from tests.lab.conftest import _REASON as LAB_SKIP_REASON
from tests.lab.conftest import have_servers, unique_name
from tests.support.call_lab import MEDIA_SERVER_ARGS, account_args, clean_env, json_lines
from tests.support.ice_lab import in_host

pytestmark = [
    pytest.mark.lab,
    pytest.mark.interop,
    pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or ""),
    pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed"),
]
needs_baresip = pytest.mark.skipif(shutil.which("baresip") is None,
                                   reason="baresip is not installed (apt-get install "
                                          "baresip-core)")
needs_linphone = pytest.mark.skipif(shutil.which("linphonec") is None,
                                    reason="linphonec is not installed (apt-get install "
                                           "linphone-cli)")

#: The lab's topology: pub-pub by default (short); SIPUA_PROBE_TOPOLOGY=prc-prc probes across
#: two port-restricted NATs (docs/interop.md has both reports).
TOPOLOGY = os.environ.get("SIPUA_PROBE_TOPOLOGY", "pub-pub")
#: Where to write the report as markdown too (docs/interop.md), when set.
MARKDOWN_ENV = "SIPUA_PROBE_MARKDOWN"


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab (TOPOLOGY) with coturn and Kamailio under a unique name, removed afterwards."""
    made = Lab.up(TOPOLOGY, unique_name(), servers=True)
    try:
        yield made
    finally:
        teardown(made.name)


def probe_in_lab(lab: Lab, tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """`sipua probe sip:bob@lab.test --json` on host a as alice; (exit code, report, stderr)."""
    argv = [sys.executable, "-m", "sipua", "probe", "sip:bob@lab.test", "--listen",
            "0.0.0.0:0", *account_args("alice"), *MEDIA_SERVER_ARGS, "--json", *extra]
    env = clean_env(tmp_path / "home")
    done = subprocess.run(in_host(lab, "a", argv), capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    lines = json_lines(done.stdout)
    assert lines, done.stderr[-3000:]
    (tmp_path / "report.json").write_text(json.dumps(lines[-1], indent=1))
    if os.environ.get(MARKDOWN_ENV):
        Path(os.environ[MARKDOWN_ENV]).write_text(report_markdown(lines[-1]))
    return done.returncode, lines[-1], done.stderr


@needs_baresip
def test_probe_reports_baresip_ice(lab: Lab, tmp_path: Path) -> None:
    """The probe of baresip exits 0 and reports the facts of INTEROP_NOTES.md."""
    peer = BaresipPeer(lab, "b", "bob", work_dir=tmp_path / "baresip")
    with peer:
        peer.start()
        code, report, stderr = probe_in_lab(lab, tmp_path, "--listen-for", "4",
                                            "--timeout", "15")
    assert code == 0, stderr[-3000:] + peer.log()[-3000:]
    found = {(f["step"], f["key"]): f for f in report["findings"]}

    def status(step: str, key: str) -> str:
        return str(found[(step, key)]["status"])

    assert "baresip" in (report["peer"] or "").lower()
    assert found[("call", "ice")]["value"] == "full"
    assert set(found[("call", "candidates")]["value"]) == {"1", "2"}
    # Offered rtcp-mux with the RTCP component as fallback (sipua's default), it declines
    # (two components and a=rtcp), and the one call goes on with two components.
    assert ("call", "mux_retry") not in found
    assert status("call", "rtcp_mux") == "no"
    assert status("call", "a_rtcp") == "yes"
    assert status("call", "ice.options") == "no"
    assert status("call", "end_of_candidates") == "no"
    assert status("call", "checks.sent") == "yes"
    assert status("call", "checks.use_candidate_when_controlled") == "no"
    assert status("call", "checks.role") == "yes"
    assert status("call", "rtp_before_ice") == "no"
    assert status("call", "software") == "yes"
    assert status("call", "responses.match") == "yes"
    # Regular nomination once it controls: forced into control by our tie-breaker 0 (RFC 8445
    # §7.3.1.1), it checks first and nominates afterwards; with ours the largest it answers 487.
    assert found[("role-conflict-lose", "nomination")]["value"]["style"] == "regular"
    for step in ("role-conflict-win", "role-conflict-lose"):
        assert status(step, "as_rfc") == "yes"
        assert status(step, "connected") == "yes"
    # Seen on this version and recorded in docs/interop.md (not in the notes): the restart
    # re-INVITE is answered, the mismatched offer too.
    assert status("restart", "restart.answered") == "yes"
    assert status("mismatch", "answered") == "yes"


@needs_linphone
def test_probe_reports_linphone_ice(lab: Lab, tmp_path: Path) -> None:
    """linphonec 5.1 as bob: a full agent with two components (rtcp-mux declined), RTP before
    any nomination, role conflicts: with our tie-breaker 0 it takes control and nominates
    regularly; with ours the largest its 487s carry transaction IDs of their own (docs/
    interop.md), which the probe reports as unmatched; a=ice-mismatch answered."""
    linphone = pytest.importorskip("sipua.lab.linphone")
    peer = linphone.LinphonePeer(lab, "b", "bob", work_dir=tmp_path / "linphone")
    with peer:
        peer.start()
        code, report, stderr = probe_in_lab(lab, tmp_path, "--listen-for", "2",
                                            "--timeout", "8")
    assert code == 0, stderr[-3000:] + peer.log()[-3000:]
    found = {(f["step"], f["key"]): f for f in report["findings"]}

    def status(step: str, key: str) -> str:
        return str(found[(step, key)]["status"])

    assert "linphone" in (report["peer"] or "").lower()
    assert found[("call", "ice")]["value"] == "full"
    assert status("call", "rtcp_mux") == "no"
    assert set(found[("call", "candidates")]["value"]) == {"1", "2"}
    assert status("call", "checks.use_candidate_when_controlled") == "no"
    assert status("call", "responses.match") == "yes"
    assert status("role-conflict-lose", "switched") == "yes"
    assert found[("role-conflict-lose", "nomination")]["value"]["style"] == "regular"
    assert found[("role-conflict-win", "487")]["value"]["unmatched"] > 0
    assert status("role-conflict-win", "responses.match") == "no"
    assert status("mismatch", "ice_mismatch") == "yes"
