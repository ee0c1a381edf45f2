"""Faults survived, in the NAT lab: what the user sees when the network or a server misbehaves,
and that nothing is left behind.

alice (host a) calls bob (host b) through the lab's Kamailio; each plays a tone (alice 440 Hz,
bob 660 Hz) and reports once a second what it hears (``tests/support/fault_lab_peer.py``).
Each test then breaks one thing: 30 % loss, reordering and duplication, b's uplink cut for 10 s
(the call survives with the default 30 s consent timeout, and ends cleanly with a 5 s one), a
Kamailio restart, TURN allocations shorter than the call, a crash of bob. After every test the
peers exited 0 with no socket, reactor reader or delayed call left after ``ua.stop()``, and the
lab's namespaces are gone.

The first tests check the fault controls themselves with plain UDP probes.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sipua.lab.lab import SERVER_ADDRESS, Lab, teardown
from sipua.lab.probe import Endpoint
from sipua.lab.sipua_peer import ROOT, JsonProcess
from sipua.lab.topology import PUBLIC_HOST
from tests.lab.conftest import have_nfqueue, have_servers, unique_name

pytestmark = [pytest.mark.lab]

needs_servers = pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is missing")
needs_nfqueue = pytest.mark.skipif(not have_nfqueue(), reason="NetfilterQueue is missing")

A_TONE, B_TONE = 440.0, 660.0
B_PUB = PUBLIC_HOST["b"]
#: The call peer (tests/support/fault_lab_peer.py), run in a lab host.
PEER = ["python3", "-m", "tests.support.fault_lab_peer"]


# ------------------------------------------------------------------------- helpers


def namespaces_of(name: str) -> list[str]:
    """The lab's namespaces that ``ip netns list`` still shows."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(f"{name}-")]


@contextmanager
def fault_lab(topology: str, **options: Any) -> Iterator[Lab]:
    """A lab with a unique name; on exit it is removed and no namespace of it may remain."""
    name = unique_name()
    lab = Lab.up(topology, name, **options)
    try:
        yield lab
    finally:
        teardown(name)
    assert namespaces_of(name) == [], namespaces_of(name)


class Peer(JsonProcess):
    """One fault_lab_peer process in a lab host; its stderr goes to ``log``."""

    what = "peer"

    def __init__(self, lab: Lab, host: str, args: list[str], log: Path) -> None:
        super().__init__([*PEER, "--listen", lab.hosts[host].address, *args], lab=lab,
                         host=host, cwd=ROOT, log=log)

    def done(self, timeout: float, *, leaks: bool = True) -> list[dict[str, Any]]:
        """Wait for a clean exit (code 0 and, with ``leaks``, nothing left behind); every
        line printed."""
        code = self.finish(timeout)
        assert code == 0, (code, self.lines[-5:], self.tail())
        if leaks:
            left = self.last("leaks")
            assert left["sockets"] == 0 and not left["readers"] and not left["writers"], left
            assert left["delayed_calls"] == [], left
        return self.lines


@contextmanager
def peers(lab: Lab, tmp_path: Path, alice_args: list[str], bob_args: list[str],
          *, start_alice: bool = True, seconds: bool = True,
          ) -> Iterator[tuple[Peer | None, Peer]]:
    """bob answers on b; once he is registered, alice (a) calls him (unless not
    ``start_alice``: the test starts her itself). With ``seconds`` both report once a second
    what they hear."""
    monitor = ["--seconds"] if seconds else []
    bob = Peer(lab, "b", ["--user", "bob", "--tone", str(B_TONE), "--answer", *monitor,
                          *bob_args], tmp_path / "bob.log")
    alice: Peer | None = None
    try:
        bob.wait_for("ready", 30)
        if start_alice:
            alice = start_caller(lab, tmp_path, [*monitor, *alice_args])
        yield alice, bob
    finally:
        bob.stop()
        if alice is not None:
            alice.stop()


def start_caller(lab: Lab, tmp_path: Path, args: list[str]) -> Peer:
    """alice on a, calling bob."""
    return Peer(lab, "a", ["--user", "alice", "--tone", str(A_TONE), "--call", "bob", *args],
                tmp_path / "alice.log")


def heard(peer: Peer, start: float, end: float) -> list[dict[str, Any]]:
    """The once-a-second reports with a wall clock in [start, end)."""
    return [s for s in peer.found("second") if start <= s["wall"] < end]


def tone_heard(seconds: list[dict[str, Any]], tone: float, *, share: float = 0.8) -> bool:
    """At least ``share`` of the seconds were loud and ``tone`` was the strongest of the test
    tones in them (a second of heavy concealment may not be)."""
    good = [s for s in seconds if s["tone"] == tone and s["rms"] > 1000]
    return bool(seconds) and len(good) >= share * len(seconds)


def report(peer: Peer) -> dict[str, Any]:
    """The media report of the call."""
    media: dict[str, Any] = peer.last("summary")["report"]["media"]
    return media


# ------------------------------------------------------------------------- the controls


@needs_nfqueue
def test_reorder_and_duplicate_rates() -> None:
    """--reorder 20 --duplicate 10: of 500 datagrams sent 5 ms apart all arrive, about a tenth
    twice, and about a fifth later than the one sent after them."""
    with (fault_lab("pub-pub", servers=False, reorder_pct=20, duplicate_pct=10) as lab,
          Endpoint(lab, "b", 7000) as b, Endpoint(lab, "a", 5000) as a):
        a.burst(f"{B_PUB}:7000", 500, 0.005)
        got = b.received(1.0)
    seqs = [json.loads(g["data"])["seq"] for g in got]
    assert set(seqs) == set(range(1, 501))
    duplicates = len(seqs) - 500
    # Binomial: mean 50, sd ~7; mean 100, sd ~9 (descents undercount a little: two held
    # packets in a row make one).
    assert 25 <= duplicates <= 80, duplicates
    descents = sum(1 for x, y in itertools.pairwise(seqs) if y < x)
    assert 60 <= descents <= 140, descents


def test_loss_applies_per_direction() -> None:
    """--loss 30: 70 % of the datagrams reach the reflector, and 70 % of its answers come back,
    so a request-answer exchange survives with ~49 %: each direction draws on its own."""
    with (fault_lab("pub-pub", servers=False, loss_pct=30) as lab,
          Endpoint(lab, "b", 7000, reflect=True, quiet=True) as b,
          Endpoint(lab, "a", 5000, quiet=True) as a):
        # 400 answers fit in a's receive buffer while it is busy sending.
        a.burst(f"{B_PUB}:7000", 400, 0.002)
        time.sleep(0.5)
        there = b.stats()["received"]
        back = a.stats()["received"]
    # sd ~9 and ~8: bounds at ~4 sd.
    assert 240 <= there <= 320, there
    assert 0.58 <= back / there <= 0.82, (there, back)


@pytest.mark.parametrize("topology", ["prc-prc", "pub-pub", "hairpin"])
def test_link_down_and_up(topology: str) -> None:
    """``link("a", False)``: a's packets vanish (in its NAT, at its port of the internet
    bridge, or of the hairpin NAT's LAN bridge) with no error and no answer, while b can
    still reach the server; ``sipua lab link a up`` (and ``link("a", True)``): the same
    mapping works again."""
    with (fault_lab(topology, servers=False) as lab,
          Endpoint(lab, "server", 7000, reflect=True), Endpoint(lab, "a", 5000) as a,
          Endpoint(lab, "b", 5000) as b):
        a.send(f"{SERVER_ADDRESS}:7000")
        seen = a.expect("recv", timeout=3.0)["seen"]
        lab.link("a", False)
        assert lab.links_down == ["a"]
        a.send(f"{SERVER_ADDRESS}:7000")
        assert a.received(1.0) == []
        b.send(f"{SERVER_ADDRESS}:7000")
        assert b.expect("recv", timeout=3.0)
        done = subprocess.run([sys.executable, "-m", "sipua", "lab", "link", "--name",
                               lab.name, "a", "up"], capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "a link up" in done.stdout, done
        lab.link("a", True)  # idempotent
        assert Lab.attach(lab.name).links_down == []
        a.send(f"{SERVER_ADDRESS}:7000")
        assert a.expect("recv", timeout=3.0)["seen"] == seen


# ------------------------------------------------------------------------- calls


@needs_servers
def test_call_survives_30_percent_loss(tmp_path: Path) -> None:
    """prc-prc with 30 % loss on every crossing: SIP and ICE retransmissions set the call up,
    and for 8 s each side hears the other's tone through the concealment of ~30 % loss.
    (The setup may take long: 40 s allowed, as retransmissions back off; bench/loss_success.py
    measures how often it takes more than 20 s.)"""
    slow = ["--setup-timeout", "40"]
    with (fault_lab("prc-prc", servers=True, loss_pct=30) as lab,
          peers(lab, tmp_path, ["--talk", "8", *slow], slow) as (alice, bob)):
        assert alice is not None
        alice.done(90)
        bob.done(30)
    for peer, tone in ((alice, B_TONE), (bob, A_TONE)):
        seconds = peer.found("second")[1:]  # the first second includes the buffer's start
        assert len(seconds) >= 5, seconds
        assert tone_heard(seconds, tone, share=0.7), [(s["tone"], s["heard_hz"]) for s in seconds]
        inbound = report(peer)["session"]["inbound"]
        lost, received = inbound["packetsLost"], inbound["packetsReceived"]
        assert 0.15 < lost / (lost + received) < 0.45, inbound
    assert alice.last("ended")["end_reason"] == "hangup"
    assert bob.last("ended")["ended_by"] == "remote"


@needs_servers
@needs_nfqueue
def test_call_with_reordering_and_duplication(tmp_path: Path) -> None:
    """20 % of packets held back 25 ms and 10 % duplicated: both tones are heard, and the
    jitter buffer counted and dropped the duplicates and put the reordered packets in place
    (nothing discarded, little concealed)."""
    with (fault_lab("prc-prc", servers=True, reorder_pct=20, duplicate_pct=10) as lab,
          peers(lab, tmp_path, ["--talk", "6"], []) as (alice, bob)):
        assert alice is not None
        alice.done(60)
        bob.done(30)
    for peer, tone in ((alice, B_TONE), (bob, A_TONE)):
        seconds = peer.found("second")[1:]
        assert tone_heard(seconds, tone, share=0.9), [(s["tone"], s["heard_hz"]) for s in seconds]
        media = report(peer)["session"]
        buffer = media["jitterBuffer"]
        received = media["inbound"]["packetsReceived"]
        # ~10 % of what arrived was a copy, each one recognised.
        assert 0.04 * received < buffer["packetsDuplicated"] < 0.2 * received, buffer
        # RFC 3550 A.3: duplicates make the cumulative loss negative; nothing was lost.
        assert media["inbound"]["packetsLost"] <= 0, media["inbound"]
        assert buffer["concealedSamples"] < 0.05 * received * 160, buffer


def _link_down_call(lab: Lab, tmp_path: Path, alice_args: list[str], bob_args: list[str],
                    ) -> tuple[Peer, Peer, float, float]:
    """The call, with b's uplink cut 3 s after media flows and restored 10 s later."""
    with peers(lab, tmp_path, alice_args, bob_args) as (alice, bob):
        assert alice is not None
        alice.wait_for("flowing", 40)
        time.sleep(3)
        cut = time.time()
        lab.link("b", False)
        time.sleep(10)
        restored = time.time()
        lab.link("b", True)
        alice.done(60)
        bob.done(30)
    return alice, bob, cut, restored


@needs_servers
def test_link_down_10_s_recovers(tmp_path: Path) -> None:
    """b's uplink cut for 10 s mid-call (consent timeout 30 s): no consent response and no
    RTP either way during the cut; afterwards consent is refreshed again, media resumes on the
    same pair and both tones are heard; the call is hung up normally."""
    with fault_lab("prc-prc", servers=True) as lab:
        alice, bob, cut, restored = _link_down_call(lab, tmp_path, ["--talk", "22"], [])
    for peer, tone, who in ((alice, B_TONE, "alice"), (bob, A_TONE, "bob")):
        during = heard(peer, cut + 1.5, restored)
        assert len(during) >= 7, (who, during)
        assert during[-1]["rtp_received"] - during[0]["rtp_received"] <= 2, (who, during)
        refreshed = peer.found("ice", type="ConsentRefreshed")
        assert not [e for e in refreshed if cut + 1 < e["wall"] < restored], who
        assert [e for e in refreshed if e["wall"] > restored], (who, "no consent after")
        assert not peer.found("ice", type="ConsentLost"), who
        after = heard(peer, restored + 2.0, restored + 8.0)
        assert len(after) >= 4, (who, after)
        assert after[-1]["rtp_received"] - after[0]["rtp_received"] > 100, (who, after)
        assert tone_heard(after, tone), (who, [(s["tone"], s["heard_hz"]) for s in after])
        before = heard(peer, cut - 2.5, cut)
        assert before and {s["selected"] for s in before + after} == {before[0]["selected"]}, \
            (who, before, after)
        assert not peer.found("ice", type="IceRestarted"), who
    assert alice.last("ended")["end_reason"] == "hangup"
    assert bob.last("ended")["ended_by"] == "remote"


@needs_servers
def test_link_down_with_5_s_consent_ends_cleanly(tmp_path: Path) -> None:
    """The same cut with consent checks every second and a 5 s consent timeout: each side
    loses consent about 5 s into the cut, reports ConsentLost and ends the call with that
    reason; both processes exit cleanly once the link is back and the BYEs got through."""
    consent = ["--consent-interval", "1", "--consent-timeout", "5"]
    with fault_lab("prc-prc", servers=True) as lab:
        alice, bob, cut, restored = _link_down_call(lab, tmp_path, ["--talk", "60", *consent],
                                                    consent)
    for peer, who in ((alice, "alice"), (bob, "bob")):
        lost = peer.found("ice", type="ConsentLost")
        assert len(lost) == 1, (who, lost)
        assert cut + 4 < lost[0]["wall"] < cut + 7.5, (who, lost[0]["wall"] - cut)
        ended = peer.last("ended")
        assert "consent lost" in ended["end_reason"], (who, ended)
        assert ended["ended_by"] == "local", (who, ended)
        assert ended["wall"] < restored, (who, ended)


@needs_servers
def test_registrar_restart(tmp_path: Path) -> None:
    """Kamailio restarted after bob registered: it forgot him, bob re-registers at his next
    refresh, and a call from alice made after that reaches him with both tones."""
    with (fault_lab("prc-prc", servers=True) as lab,
          peers(lab, tmp_path, [], ["--expires", "20", "--wait", "150"],
                start_alice=False) as (_none, bob)):
        first = bob.wait_for("registered", 10)
        restarted_at = time.time()
        lab.restart_server("kamailio")
        again = bob.wait_for("registered", first["expires"] + 15, count=2)
        assert again["wall"] > restarted_at, (first, again, restarted_at)
        alice = start_caller(lab, tmp_path, ["--seconds", "--talk", "5"])
        try:
            alice.done(60)
        finally:
            alice.stop()
        bob.done(30)
    assert not bob.found("registration-failed"), bob.found("registration-failed")
    assert tone_heard(alice.found("second")[1:], B_TONE)
    assert tone_heard(bob.found("second")[1:], A_TONE)
    assert alice.last("ended")["end_reason"] == "hangup"


@needs_servers
def test_turn_allocation_refreshed_during_call(tmp_path: Path) -> None:
    """sym-sym needs a relay; coturn grants 20 s allocations and the call lasts 26 s: each
    side refreshed its allocation before it lapsed (twice), and media went on through the
    relay without a gap. (Permissions last 300 s, beyond a test: tests/unit/test_turn.py
    checks their refresh on a fake clock.)"""
    with (fault_lab("sym-sym", servers=True, turn_lifetime=20) as lab,
          peers(lab, tmp_path, ["--talk", "26", "--turn"], ["--turn"]) as (alice, bob)):
        assert alice is not None
        alice.done(90)
        bob.done(30)
    for peer, tone, who in ((alice, B_TONE, "alice"), (bob, A_TONE, "bob")):
        refreshes = peer.found("turn-refreshed")
        assert len(refreshes) >= 2 and all(r["lifetime"] <= 20 for r in refreshes), \
            (who, refreshes)
        seconds = peer.found("second")[1:]
        assert len(seconds) >= 20, (who, len(seconds))
        assert "relay" in seconds[-1]["selected"], (who, seconds[-1])
        steps = [b["rtp_received"] - a["rtp_received"] for a, b in itertools.pairwise(seconds)]
        assert min(steps) > 30, (who, steps)
        assert tone_heard(seconds, tone), (who, [(s["tone"], s["heard_hz"]) for s in seconds])


@needs_servers
def test_peer_crash_ends_call_by_consent(tmp_path: Path) -> None:
    """bob killed (SIGKILL) mid-call: alice keeps sending consent checks that nobody answers,
    and within the 30 s consent timeout her call ends with ConsentLost and that reason; her
    process exits 0 and leaves nothing behind."""
    with (fault_lab("prc-prc", servers=True) as lab,
          peers(lab, tmp_path, ["--talk", "60"], []) as (alice, bob)):
        assert alice is not None
        alice.wait_for("flowing", 40)
        bob.wait_for("second", 10)
        time.sleep(2)
        killed = time.time()
        lab.kill(bob.proc.pid)
        bob.proc.wait(5)
        assert bob.proc.returncode == -9
        alice.done(60)
    lost = alice.found("ice", type="ConsentLost")
    assert len(lost) == 1, lost
    assert lost[0]["wall"] - killed < 31, lost[0]["wall"] - killed
    ended = alice.last("ended")
    assert "consent lost" in ended["end_reason"] and ended["ended_by"] == "local", ended
    assert ended["wall"] - killed < 32, ended["wall"] - killed
