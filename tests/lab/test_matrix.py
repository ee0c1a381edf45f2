"""The interop matrix in CI: ``sipua lab matrix --quick --json`` as a user runs it.

Every cell must be ok or n/a (n/a with the reason and evidence), sipua's selected pair must be
the one expected in its scenario, audio must be verified by content both ways on every call,
and the run must leave no namespace and no process behind. The planning and the docs writer are
checked without a lab.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from sipua.lab import matrix
from sipua.lab.matrix import QUICK, SCENARIOS, Cell, CellSpec, plan_cells, write_docs
from sipua.lab.sipua_peer import ROOT
from tests.lab.conftest import _REASON as LAB_SKIP_REASON
from tests.lab.conftest import have_nfqueue, have_servers

#: prctl(2) option that makes orphaned descendants this process's children.
_PR_SET_CHILD_SUBREAPER = 36
#: CI's budget for the quick matrix on a busy 2-core machine.
QUICK_BUDGET_S = 12 * 60


def test_quick_covers_every_scenario_and_peer() -> None:
    """--quick runs every scenario at least once and every peer at least once, each peer both
    as caller and callee where it can call."""
    assert {c.scenario for c in QUICK} == set(SCENARIOS)
    assert {c.peer for c in QUICK} == set(matrix.PEERS)
    for peer in ("baresip", "aioice", "linphone"):
        callers = {c.caller for c in QUICK if c.peer == peer}
        assert "sipua" in callers, peer
    assert {c.caller for c in QUICK if c.peer == "baresip"} == {"sipua", "baresip"}


def test_plan_full_and_filters() -> None:
    """The full plan is every scenario x peer x caller x nomination (sipua-sipua one
    direction), grouped by scenario; filters narrow it and unknown names are refused."""
    cells = plan_cells()
    per_scenario = 2 + 3 * 4  # sipua: 2 nominations; three peers x 2 callers x 2 nominations
    assert len(cells) == len(SCENARIOS) * per_scenario
    order = [c.scenario for c in cells]
    assert order == sorted(order, key=list(SCENARIOS).index)
    only = plan_cells(peers="baresip", scenarios="prc-sym", nominations="regular")
    assert only == [CellSpec("prc-sym", "baresip", "sipua", "regular"),
                    CellSpec("prc-sym", "baresip", "baresip", "regular")]
    with pytest.raises(Exception, match="unknown peer"):
        plan_cells(peers="pjsua")


def test_cells_a_peer_cannot_do_are_na_with_evidence(tmp_path: Path) -> None:
    """baresip calling with aggressive nomination and aioice controlling with regular
    nomination are n/a, not failures, and carry the reason and evidence (aioice's own usage
    error line)."""
    pytest.importorskip("aioice")
    cells = matrix.run_matrix(
        [CellSpec("prc-prc", "baresip", "baresip", "aggressive"),
         CellSpec("prc-prc", "aioice", "aioice", "regular")],
        prefix="x" + uuid.uuid4().hex[:6], work_dir=tmp_path)
    assert [c.status for c in cells] == ["n/a", "n/a"]
    assert "regular" in cells[0].reason and cells[0].evidence
    assert any("aioice" in line and "unsupported" in line for line in cells[1].evidence), \
        cells[1].evidence
    assert cells[1].audio == "n/a (ICE only)"


def test_write_docs_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    """--write-docs replaces only the text between the markers; sections before and after
    (other contributors' own) stay as they were; without markers the section is appended."""
    cell = Cell("prc-prc", "sipua", "sipua", "sipua", "regular", status="ok",
                pair_sipua="srflx-srflx", expected="reflexive both ends", pair_as_expected=True,
                setup_ms=80.0, audio="both ways (440 / 660 Hz)", audio_ok=True)
    doc = tmp_path / "interop.md"
    doc.write_text(f"# Interop\n\nintro\n\n{matrix.BEGIN}\nold table\n{matrix.END}\n\n"
                   "## Someone else's section\n\nkept\n")
    write_docs(doc, [cell], command="sipua lab matrix --quick", seconds=12.0, when="today")
    text = doc.read_text()
    assert text.startswith("# Interop\n\nintro\n\n")
    assert text.endswith("## Someone else's section\n\nkept\n")
    assert "old table" not in text
    assert "`sipua lab matrix --quick` on today" in text
    assert "| prc-prc | sipua | sipua → sipua | regular | ok | srflx-srflx |" in text
    bare = tmp_path / "bare.md"
    bare.write_text("# Bare\n")
    write_docs(bare, [cell], command="x", seconds=1.0)
    assert bare.read_text().startswith("# Bare\n\n" + matrix.BEGIN)


# ------------------------------------------------------------------------------ the run

def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [ln.split()[0] for ln in out.stdout.splitlines() if ln.startswith(prefix)]


def _descendants(pid: int) -> list[int]:
    """Every live (not zombie) process whose parent chain leads to ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == current]
        found += kids
        frontier += kids
    return found


@pytest.mark.lab
@pytest.mark.interop
@pytest.mark.timeout(QUICK_BUDGET_S + 120)
@pytest.mark.skipif(LAB_SKIP_REASON is not None, reason=LAB_SKIP_REASON or "")
@pytest.mark.skipif(not have_servers(), reason="coturn or kamailio is not installed")
@pytest.mark.skipif(not have_nfqueue(), reason="NetfilterQueue is missing (lossy scenario)")
@pytest.mark.skipif(shutil.which("baresip") is None, reason="baresip-core is not installed")
def test_quick_matrix(tmp_path: Path) -> None:
    """`sipua lab matrix --quick --json`: every cell ok or n/a, the expected pair, audio both
    ways by content, within CI's budget, and nothing left behind."""
    prefix = "q" + uuid.uuid4().hex[:5]
    peers = "sipua,baresip,aioice" + (",linphone" if shutil.which("linphonec") else "")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = set(_descendants(os.getpid()))
    # Orphans of the run (a peer its parent failed to end) become our children: counted below.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipua", "lab", "matrix", "--quick", "--json", "--peers", peers,
         "--name", prefix, "--work-dir", str(tmp_path / "work")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=QUICK_BUDGET_S + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        seconds = time.monotonic() - started
        time.sleep(1.0)
        leftovers = sorted(set(_descendants(os.getpid())) - before)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    lines: list[dict[str, Any]] = [json.loads(ln) for ln in stdout.splitlines()
                                   if ln.startswith("{")]
    cells = [ln for ln in lines if ln.get("event") == "cell"]
    (summary,) = [ln for ln in lines if ln.get("event") == "summary"]
    failed = [c for c in cells if c["status"] != "ok" and c["status"] != "n/a"]
    assert not failed, json.dumps(failed, indent=1) + stderr[-2000:]
    assert proc.returncode == 0 and summary["passed"], (summary, stderr[-2000:])
    expected_cells = {(c.scenario, c.peer, c.caller, c.nomination) for c in plan_cells(
        peers=peers, quick=True)}
    assert {(c["scenario"], c["peer"], c["caller"], c["nomination"]) for c in cells} == \
        expected_cells
    for cell in cells:
        if cell["status"] == "n/a":
            assert cell["reason"] and cell["evidence"], cell
            continue
        assert cell["pair_as_expected"] is True, cell
        assert cell["setup_ms"] is not None and cell["setup_ms"] > 0, cell
        if cell["peer"] == "aioice":
            assert cell["audio"] == "n/a (ICE only)", cell
        else:
            assert cell["audio_ok"] is True and cell["audio"].startswith("both ways"), cell
    assert seconds < QUICK_BUDGET_S, f"quick matrix took {seconds:.0f} s"
    assert _namespaces(prefix) == [], "namespaces left behind"
    assert leftovers == [], f"processes left behind: {leftovers}"


def test_linphone_selected_pair_from_its_log(tmp_path: Path) -> None:
    """The pair linphone selected is read from the last ``Valid list:`` of its debug log: the
    entries marked ``--> selected``, one per component."""
    from sipua.lab.linphone import LinphonePeer

    pfx = "2026-01-01 00:00:00:000 mediastreamer-message-"
    log = tmp_path / "linphone.log"
    log.write_text("\n".join([
        f"{pfx}Valid list:",
        f"{pfx}\t1 [0x1]:   state=Frozen use=0 nominated=1 priority=1",
        f"{pfx}\t\tLocal: [0x2]: * type=host ip=10.0.1.10 port=1 componentID=1 priority=1",
        f"{pfx}\t\tRemote: [0x3]:   type=host ip=10.0.2.10 port=2 componentID=1 priority=1",
        f"{pfx}\t--> selected",
        "2026-01-01 00:00:01:000 liblinphone-message-something else",
        f"{pfx}Valid list:",
        f"{pfx}\t1 [0x1]:   state=Frozen use=0 nominated=1 priority=1",
        f"{pfx}\t\tLocal: [0x2]: * type=srflx ip=203.0.113.11 port=1 componentID=1 priority=1",
        f"{pfx}\t\tRemote: [0x3]:   type=prflx ip=203.0.113.12 port=2 componentID=1 priority=1",
        f"{pfx}\t--> selected",
        f"{pfx}\t2 [0x4]: * state=Frozen use=0 nominated=0 priority=1",
        f"{pfx}\t\tLocal: [0x2]: * type=srflx ip=203.0.113.11 port=1 componentID=1 priority=1",
        f"{pfx}\t\tRemote: [0x5]: * type=relay ip=203.0.113.10 port=3 componentID=1 priority=1",
        "2026-01-01 00:00:02:000 ortp-message-RtpSession sending",
    ]) + "\n")
    peer = LinphonePeer.__new__(LinphonePeer)
    peer.log_path = log
    assert peer.selected_pair() == "srflx-prflx"
    log.write_text("no ICE here\n")
    assert peer.selected_pair() is None


class _FakePeer:
    """Only what _peer_limit reads."""

    def __init__(self, kind: str, text: str) -> None:
        self.kind, self.host, self._text = kind, "a", text

    def log(self) -> str:
        return self._text


def test_a_peer_limit_is_recognised_only_from_that_peers_own_log() -> None:
    """baresip's "candidate pair not found" (it ignores a check from an unknown source, so it
    cannot learn the peer-reflexive candidate of a symmetric NAT) makes the cell n/a with that
    very line; the same words from another peer, or an ordinary baresip log, do not."""
    line = "stunsrv: {audio.1} candidate pair not found: source=203.0.113.12:27273"
    found = matrix._peer_limit(_FakePeer("baresip", f"ice: new session\n{line}\n"))  # type: ignore[arg-type]
    assert found is not None and found[1] == line and "peer-reflexive" in found[0]
    assert matrix._peer_limit(_FakePeer("linphone", line)) is None  # type: ignore[arg-type]
    assert matrix._peer_limit(_FakePeer("baresip", "ice: audio: complete")) is None  # type: ignore[arg-type]
