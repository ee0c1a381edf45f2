"""Audio through real NATs: alice on host a and bob on host b, both behind port-restricted NATs,
register with the lab's Kamailio, and alice calls bob by address-of-record; ICE finds the path
with the lab's coturn for STUN. Each side plays a tone (alice 440 Hz, bob 660 Hz) and records
what it hears (``tests/support/fault_lab_peer.py``, started as the fault tests start it).

- With 5 % loss and 30 ms delay each way, each side still hears the other's tone: the jitter
  buffer conceals the lost frames.
- A 60 s hold behind NATs whose UDP bindings expire after 20 s: nothing is sent as RTP during the
  hold, the ICE consent checks (RFC 7675) keep the bindings open, and after the resume audio flows
  again over the same selected pair without any new ICE check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sipua.lab.lab import Lab
from tests.lab.conftest import have_nfqueue, have_servers
from tests.lab.test_faults_lab import peers

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed"),
]

A_TONE, B_TONE = 440.0, 660.0
TOLERANCE = 5.0
"""Hz: G.711, concealment and the estimator leave a clean tone within a hertz or two."""


def call(lab: Lab, tmp_path: Path, caller_args: list[str], timeout: float
         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """bob answers on b, alice calls him from a; both peers' lines once both have exited."""
    with peers(lab, tmp_path, caller_args, [], seconds=False) as (alice, bob):
        assert alice is not None
        alice_lines = alice.done(timeout, leaks=False)
        bob_lines = bob.done(15, leaks=False)
    return alice_lines, bob_lines


def summary(lines: list[dict[str, Any]]) -> dict[str, Any]:
    found = [line for line in lines if line["event"] == "summary"]
    assert found, lines[-5:]
    return found[-1]


@pytest.mark.skipif(not have_nfqueue(), reason="NetfilterQueue is missing (lab --delay)")
def test_tones_cross_prc_prc_with_loss_and_delay(make_lab: Callable[..., Lab],
                                                 tmp_path: Path) -> None:
    """prc-prc, 5 % loss and 30 ms delay per packet and direction: each side's recording is
    the other's tone within a few Hz, loss shows in the statistics and was concealed."""
    lab = make_lab("prc-prc", servers=True, loss_pct=5, delay_ms=30)
    alice, bob = call(lab, tmp_path, ["--talk", "4"], timeout=60)
    for lines, tone in ((alice, B_TONE), (bob, A_TONE)):
        result = summary(lines)
        talk = result["phases"]["talk"]
        assert abs(talk["heard_hz"] - tone) < TOLERANCE, result["phases"]
        assert talk["rtp_received"] > 100, talk
        media = result["report"]["media"]["session"]
        lost = media["inbound"]["packetsLost"]
        received = media["inbound"]["packetsReceived"]
        # About 5 % of what was sent, each way; the buffer concealed what was missing.
        assert 0 < lost < 0.15 * (received + lost), media["inbound"]
        assert media["jitterBuffer"]["concealedSamples"] > 0, media["jitterBuffer"]


def test_hold_60_s_behind_nats_with_20_s_bindings(make_lab: Callable[..., Lab],
                                                  tmp_path: Path) -> None:
    """Hold for 60 s with NAT bindings that expire after 20 s idle: no RTP either way during
    the hold, consent checks go on and are answered through the NATs, and after resume both
    tones flow again on the pair selected before the hold, with no new ICE check."""
    lab = make_lab("prc-prc", servers=True, udp_timeout=20)
    alice, bob = call(lab, tmp_path, ["--talk", "3", "--hold", "60", "--talk-after", "3"],
                      timeout=120)
    held = next(line for line in alice if line["event"] == "held")
    resumed = next(line for line in alice if line["event"] == "resumed")
    assert held["answered"] and resumed["answered"]
    assert held["selected"] is not None
    # The same pair, across both NATs' public addresses.
    assert resumed["selected"] == held["selected"], (held, resumed)
    assert held["selected"]["local_type"] != "relay" and held["selected"]["remote_type"] != "relay"
    for lines, tone, who in ((alice, B_TONE, "alice"), (bob, A_TONE, "bob")):
        phases = summary(lines)["phases"]
        assert set(phases) == {"talk", "hold", "resumed"}, (who, phases)
        hold, after = phases["hold"], phases["resumed"]
        assert hold["seconds"] > 59, (who, hold)
        # Nothing sent while held; at most a packet or two received at the edges, where RTP
        # and the re-INVITE that starts or ends the hold cross (the INVITE goes via Kamailio).
        assert hold["rtp_sent"] == 0 and hold["rtp_received"] <= 3, (who, hold)
        assert abs(phases["talk"]["heard_hz"] - tone) < TOLERANCE, (who, phases)
        assert abs(after["heard_hz"] - tone) < TOLERANCE, (who, phases)
        assert after["rtp_received"] > 80, (who, after)
        ice = [line for line in lines if line["event"] == "ice"]
        # The call was set up with ICE: checks before the hold, one selection.
        assert [e for e in ice if e["type"] == "CheckSent" and e["phase"] == "setup"], who
        assert [e for e in ice if e["type"] == "PairSelected"], (who, ice)
        # No new ICE after the hold began: no fresh connectivity check, no new selection,
        # no restart, consent never lost.
        late = [e for e in ice if e["phase"] in ("hold", "resumed")]
        assert not [e for e in late if e["type"] == "CheckSent" and not e["retransmission"]], \
            (who, late)
        assert not [e for e in late if e["type"] in ("PairSelected", "IceRestarted",
                                                     "ConsentLost")], (who, late)
        # Consent checks (about every 5 s) were answered all through the hold: the bindings
        # stayed open although no media crossed them.
        refreshed = [e for e in late if e["type"] == "ConsentRefreshed"
                     and e["phase"] == "hold"]
        assert len(refreshed) >= 8, (who, len(refreshed))
