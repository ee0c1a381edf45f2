"""Calls between two `sipua` processes across real NATs, through the lab's Kamailio, with the
lab's coturn for STUN and TURN: `sipua answer` registered as bob on host b, `sipua call
sip:bob@lab.test` registered as alice on host a.

Each call must exit 0 on both ends, carry each side's tone to the other (checked by frequency in
the recordings), keep to Kamailio's route set (the re-INVITE and BYE reach the callee through
it), and select the pair an engineer expects from the NATs' RFC 4787 behaviours (docs/lab.md):

- prc-prc: a direct path exists between the two public mappings: reflexive candidates at both
  ends, on the NATs' public addresses; no relay.
- prc-sym and sym-sym: no direct path exists (a symmetric NAT gives each new destination a fresh
  port, which a port-restricted or symmetric filter on the other side never opened), so one end
  of the pair is a TURN relay and one is enough (relay permissions are per IP address).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipua.lab.lab import Lab
from tests.lab.conftest import have_servers
from tests.support.call_lab import (
    REFLEXIVE,
    Answerer,
    clean_env,
    ends,
    ip_of,
    pair_summary,
    record_result,
    reports,
    run_call,
    selected_pairs,
    tone_of,
)

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed"),
]

CALLER_TONE = 440.0
CALLEE_TONE = 660.0


def call_across(make_lab: Callable[..., Lab], tmp_path: Path,
                topology: str) -> tuple[Lab, dict[str, Any], dict[str, Any]]:
    """One call a -> b in a fresh lab; returns the lab and both call reports, after checking
    exit codes, SIP outcome and the tones in both recordings."""
    lab = make_lab(topology, servers=True)
    env = clean_env(tmp_path / "home")
    answerer = Answerer(lab, "b", "bob", env=env, extra=[
        "--tone", str(CALLEE_TONE), "--record", str(tmp_path / "b.wav")])
    try:
        answerer.registered()
        done, lines = run_call(lab, "a", "alice", "sip:bob@lab.test", env=env, extra=[
            "--tone", str(CALLER_TONE), "--record", str(tmp_path / "a.wav")])
        assert done.returncode == 0, done.stderr[-3000:]
        assert answerer.finish() == 0, answerer.stderr[-3000:]
    finally:
        answerer.stop()
    (caller,) = reports(lines)
    (callee,) = reports(answerer.lines)
    assert caller["status"] == 200 and caller["error"] is None, caller["error"]
    assert (caller["ended_by"], callee["ended_by"]) == ("local", "remote")
    # In-dialog requests follow Kamailio's Record-Route: each re-INVITE (to the callee's
    # contact, not to the AOR) was answered 200.
    sip = caller["sip"]["messages"]
    reinvites = [m["cseq"] for m in sip if m["direction"] == "sent"
                 and m["start_line"].startswith("INVITE ")
                 and not m["start_line"].startswith("INVITE sip:bob@lab.test ")]
    for cseq in reinvites:
        assert any(m["direction"] == "received" and m["cseq"] == cseq
                   and m["start_line"].startswith("SIP/2.0 200") for m in sip), (cseq, sip)
    for report in (caller, callee):
        assert report["ice"]["used"], report["ice"]
        assert report["setup"]["invite_to_first_rtp_ms"] is not None
    assert caller["ice"]["role"] == "controlling" and callee["ice"]["role"] == "controlled"
    assert abs(tone_of(tmp_path / "a.wav") - CALLEE_TONE) < 5
    assert abs(tone_of(tmp_path / "b.wav") - CALLER_TONE) < 5
    record_result({
        "topology": topology, "caller": "sipua", "callee": "sipua",
        "nomination": f"{caller['ice']['nomination']} (sipua)", "result": "ok",
        "pair": pair_summary(caller),
        "sipua_setup": f"{caller['setup']['invite_to_first_rtp_ms']:.0f} ms",
        "peer_setup": f"{callee['setup']['invite_to_first_rtp_ms']:.0f} ms (callee's report)",
        "audio": "both ways (440 / 660 Hz)"})
    # Both ends describe the same pair.
    for component, pair in selected_pairs(caller).items():
        other = selected_pairs(callee)[component]
        assert pair["local_address"] == other["remote_address"], (pair, other)
        assert pair["remote_address"] == other["local_address"], (pair, other)
    return lab, caller, callee


def test_call_prc_prc(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    """Port-restricted NATs on both sides: a direct reflexive pair between the NATs' public
    addresses, no relay."""
    lab, caller, callee = call_across(make_lab, tmp_path, "prc-prc")
    for report, ours, theirs in ((caller, "a", "b"), (callee, "b", "a")):
        pairs = selected_pairs(report)
        assert pairs
        for pair in pairs.values():
            local, remote = ends(pair)
            assert local in REFLEXIVE and remote in REFLEXIVE, pair
            assert ip_of(pair["local_address"]) == lab.hosts[ours].public_address
            assert ip_of(pair["remote_address"]) == lab.hosts[theirs].public_address


@pytest.mark.parametrize("topology", ["prc-sym", "sym-sym"])
def test_call_needs_one_relay(make_lab: Callable[..., Lab], tmp_path: Path,
                              topology: str) -> None:
    """A symmetric NAT on one or both sides: no direct path, so exactly one end of the pair is
    a TURN relay and the other a reflexive candidate."""
    _, caller, callee = call_across(make_lab, tmp_path, topology)
    for report in (caller, callee):
        pairs = selected_pairs(report)
        assert pairs
        for pair in pairs.values():
            types = ends(pair)
            assert sorted(types).count("relay") == 1, pair
            other = types[0] if types[1] == "relay" else types[1]
            assert other in REFLEXIVE, pair
