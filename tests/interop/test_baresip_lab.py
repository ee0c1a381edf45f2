"""sipua against baresip (Debian's baresip-core 1.0.0 with its ``ice`` module) across the NAT
lab's NATs, through Kamailio, with the lab's coturn: sipua calls baresip and baresip calls
sipua; ICE completes, and each side's tone is found in the other's recording.

What baresip brings (/work/shared/INTEROP_NOTES.md): two components (no rtcp-mux), so sipua
offers and answers two as well (``SIPUA_ICE__RTCP_MUX=false``); regular nomination only, the
offerer controlling; an INVITE that arrives IP-fragmented over UDP (about 1.6 kB); a re-INVITE
with its selected candidates once ICE has completed; no RTP before ICE completes, so first
media takes seconds, not milliseconds. baresip plays a 770 Hz WAV (``aufile``) and records
both directions (``sndfile``); sipua sends 440 Hz.

Expected pairs, as for two sipua agents (docs/lab.md): across prc-prc a direct reflexive pair
on the NATs' public addresses; across prc-sym no direct path exists, so at least one end is a
TURN relay.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sipua.lab.baresip import BaresipPeer
from sipua.lab.lab import Lab, teardown
from tests.lab.conftest import _REASON as LAB_SKIP_REASON
from tests.lab.conftest import have_servers, unique_name
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
    pytest.mark.interop,
    pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or ""),
    pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed"),
    pytest.mark.skipif(shutil.which("baresip") is None,
                       reason="baresip is not installed (apt-get install baresip-core)"),
]

SIPUA_TONE = 440.0
BARESIP_TONE = 770.0
#: baresip needs seconds for ICE (one check at a time, no media before completion).
MEDIA_TIMEOUT = 30.0
#: sipua settings for a peer without rtcp-mux.
TWO_COMPONENTS = {"SIPUA_ICE__RTCP_MUX": "false"}


@pytest.fixture(scope="module")
def lab_of() -> Iterator[Callable[[str], Lab]]:
    """``lab_of(topology)``: one lab with coturn and Kamailio per topology for this module
    (unique names, removed at the end)."""
    labs: dict[str, Lab] = {}

    def get(topology: str) -> Lab:
        if topology not in labs:
            labs[topology] = Lab.up(topology, unique_name(), servers=True)
        return labs[topology]

    yield get
    for lab in labs.values():
        teardown(lab.name)


def check_pair(lab: Lab, report: dict[str, Any], our_host: str) -> None:
    """Both components have a selected pair, the one the topology calls for."""
    pairs = selected_pairs(report)
    assert set(pairs) == {"1", "2"}, report["ice"]["selected"]
    other_host = "b" if our_host == "a" else "a"
    for pair in pairs.values():
        local, remote = ends(pair)
        if lab.topology == "prc-prc":
            assert local in REFLEXIVE and remote in REFLEXIVE, pair
            assert ip_of(pair["local_address"]) == lab.hosts[our_host].public_address
            assert ip_of(pair["remote_address"]) == lab.hosts[other_host].public_address
        else:
            assert "relay" in (local, remote), pair


def check_baresip_audio(peer: BaresipPeer) -> None:
    """baresip recorded what it sent (its own tone) and what it received (sipua's)."""
    (sent, received), = peer.recordings()
    assert abs(tone_of(sent) - BARESIP_TONE) < 5
    assert abs(tone_of(received) - SIPUA_TONE) < 5



#: Across prc-sym baresip's TURN client sends its RTP through its own allocation (libre wraps
#: every packet to a peer it holds a TURN permission for, and our relayed candidate shares the
#: server's address), so it arrives from baresip's relay address rather than the selected pair's
#: remote address: the media stream must accept the peer's other candidates (RFC 8445 §12.2).
@pytest.mark.parametrize("topology", ["prc-prc", "prc-sym"])
@pytest.mark.parametrize("nomination", ["regular", "aggressive"])
def test_sipua_calls_baresip(lab_of: Callable[[str], Lab], tmp_path: Path, topology: str,
                             nomination: str) -> None:
    """sipua (host a, alice) calls baresip (host b, bob, auto-answer) through Kamailio: ICE
    completes on both components with sipua controlling, and each tone reaches the other."""
    lab = lab_of(topology)
    env = clean_env(tmp_path / "home", **TWO_COMPONENTS)
    peer = BaresipPeer(lab, "b", "bob", tone=BARESIP_TONE, work_dir=tmp_path / "baresip",
                       turn=topology != "prc-prc")
    with peer:
        peer.start()
        done, lines = run_call(lab, "a", "alice", "sip:bob@lab.test", env=env, extra=[
            "--tone", str(SIPUA_TONE), "--record", str(tmp_path / "a.wav"),
            "--nomination", nomination], duration=3.0, timeout=MEDIA_TIMEOUT, limit=90)
        assert done.returncode == 0, done.stderr[-3000:] + peer.log()[-3000:]
        rtp = peer.wait_event("CALL_RTPESTAB", 5)
        established = peer.wait_event("CALL_ESTABLISHED", 5)
        peer.wait_event("CALL_CLOSED", 10)
    (report,) = reports(lines)
    assert report["ice"]["used"] and report["ice"]["role"] == "controlling"
    assert report["ice"]["nomination"] == nomination
    check_pair(lab, report, "a")
    assert abs(tone_of(tmp_path / "a.wav") - BARESIP_TONE) < 5
    check_baresip_audio(peer)
    record_result({
        "topology": topology, "caller": "sipua", "callee": "baresip",
        "nomination": f"{nomination} (sipua)", "result": "ok", "pair": pair_summary(report),
        "sipua_setup": f"{report['setup']['invite_to_first_rtp_ms']:.0f} ms",
        "peer_setup": f"{1000 * (rtp.at - established.at):.0f} ms after 200 OK",
        "audio": "both ways (440 / 770 Hz)"})


@pytest.mark.parametrize("topology", ["prc-prc", "prc-sym"])
def test_baresip_calls_sipua(lab_of: Callable[[str], Lab], tmp_path: Path,
                             topology: str) -> None:
    """baresip (host a, alice) calls sipua (host b, bob, `sipua answer`) through Kamailio:
    baresip controls with regular nomination, ICE completes on both components, and each tone
    reaches the other."""
    lab = lab_of(topology)
    env = clean_env(tmp_path / "home", **TWO_COMPONENTS)
    answerer = Answerer(lab, "b", "bob", env=env, timeout=MEDIA_TIMEOUT, extra=[
        "--tone", str(SIPUA_TONE), "--record", str(tmp_path / "b.wav")])
    peer = BaresipPeer(lab, "a", "alice", tone=BARESIP_TONE, work_dir=tmp_path / "baresip",
                       answer=False, turn=topology != "prc-prc")
    try:
        answerer.registered()
        with peer:
            peer.start()
            dialled = time.time()
            assert peer.dial("sip:bob@lab.test").get("ok"), peer.log()[-2000:]
            rtp = peer.wait_event("CALL_RTPESTAB", MEDIA_TIMEOUT)
            answerer.wait_for("FirstPacketReceived", MEDIA_TIMEOUT)
            time.sleep(2.5)
            peer.hangup()
            peer.wait_event("CALL_CLOSED", 10)
        assert answerer.finish() == 0, answerer.stderr[-3000:]
    finally:
        answerer.stop()
    (report,) = reports(answerer.lines)
    assert report["ice"]["used"] and report["ice"]["role"] == "controlled"
    assert report["ended_by"] == "remote"
    check_pair(lab, report, "b")
    assert abs(tone_of(tmp_path / "b.wav") - BARESIP_TONE) < 5
    check_baresip_audio(peer)
    record_result({
        "topology": topology, "caller": "baresip", "callee": "sipua",
        "nomination": "regular (baresip)", "result": "ok", "pair": pair_summary(report),
        "sipua_setup": f"{report['setup']['invite_to_first_rtp_ms']:.0f} ms",
        "peer_setup": f"{1000 * (rtp.at - dialled):.0f} ms after dial",
        "audio": "both ways (770 / 440 Hz)"})
