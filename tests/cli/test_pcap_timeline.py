"""``sipua call`` and ``sipua answer`` in two processes through ``sipua registrar``, with the
outputs a user asks for: JSON events, the readable report, --pcap, --timeline, --log-sip."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sipua.lab.sipua_peer import clean_env
from sipua.pcap import read_pcap
from tests.cli.conftest import StartRegistrar

SIPUA = [sys.executable, "-m", "sipua"]
STUN_COOKIE = bytes.fromhex("2112a442")


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def registrar(start_registrar: StartRegistrar) -> str:
    """``sipua registrar`` for example.org with alice and bob, on a free loopback port."""
    return start_registrar({"alice": "alicepw", "bob": "bobpw"})


def _bob(tmp_path: Path, registrar: str, *extra: str) -> subprocess.Popen[str]:
    """``sipua answer`` as bob@example.org, registered; returns once it listens."""
    proc = subprocess.Popen(
        [*SIPUA, "answer", "--listen", "127.0.0.1:0", "--user", "bob@example.org",
         "--password", "bobpw", "--registrar", registrar, "--max-calls", "1", "--json",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(tmp_path))
    assert proc.stdout is not None
    for line in proc.stdout:
        data = json.loads(line)
        if data.get("event") == "Status" and "listening" in data["message"]:
            return proc
    proc.kill()
    raise AssertionError(f"sipua answer did not start: {proc.stderr.read() if proc.stderr else ''}")


def _alice(tmp_path: Path, registrar: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SIPUA, "call", "sip:bob@example.org", "--listen", "127.0.0.1:0", "--user",
         "alice@example.org", "--password", "alicepw", "--registrar", registrar,
         "--duration", "0.6", *extra],
        capture_output=True, text=True, timeout=60, env=clean_env(tmp_path), check=False)


def test_call_through_registrar_with_json_pcap_timeline_and_sip_log(
        tmp_path: Path, registrar: str) -> None:
    """Both register with `sipua registrar` and bob is called by AOR: the JSON stream holds
    Registered, the ICE checks, IceCompleted and a CallReport; the pcap holds SIP (REGISTER,
    INVITE), STUN checks and RTP; the SVG timeline has the selected pair; the SIP log has
    every message in full."""
    bob = _bob(tmp_path, registrar)
    pcap, svg, log = tmp_path / "a.pcap", tmp_path / "a.svg", tmp_path / "sip.log"
    try:
        done = _alice(tmp_path, registrar, "--json", "--pcap", str(pcap), "--timeline",
                      str(svg), "--log-sip-file", str(log))
        assert done.returncode == 0, done.stderr[-2000:]
        events = _lines(done.stdout)
        kinds = [e["event"] for e in events]
        assert kinds.count("Registered") >= 1 and "CheckSent" in kinds
        assert "IceCompleted" in kinds and kinds.count("CallReport") == 1
        report = next(e for e in events if e["event"] == "CallReport")
        assert report["status"] == 200 and report["ice"]["used"]
        status = {e["message"].split()[-1]: e for e in events if e["event"] == "Status"
                  and "path" in e}
        assert status[str(pcap)]["packets"] > 10 and str(svg) in status
        _out, err = bob.communicate(timeout=30)
        assert bob.returncode == 0, err[-2000:]
    finally:
        if bob.poll() is None:
            bob.kill()
    packets = list(read_pcap(pcap.read_bytes()))
    starts = {p.payload.split(b" ", 1)[0] for p in packets if p.payload[:1].isalpha()}
    assert {b"REGISTER", b"INVITE", b"ACK", b"BYE", b"SIP/2.0"} <= starts
    assert any(p.payload[4:8] == STUN_COOKIE and p.payload[:2] == b"\x00\x01" for p in packets)
    rtp = [p for p in packets if p.payload[:1] == b"\x80" and len(p.payload) >= 172]
    assert rtp and {p.source for p in rtp} and {p.dest for p in rtp}
    root = ET.fromstring(svg.read_text())
    selected = report["ice"]["selected"]["1"]["key"]
    assert f"\u2605 {selected}" in "".join(root.itertext())
    text = log.read_text()
    assert "----- sent UDP" in text and "INVITE sip:bob@example.org SIP/2.0" in text
    assert "----- received UDP" in text and "SIP/2.0 401 Unauthorized" in text


def test_readable_report_by_default_over_tcp_with_log_sip(
        tmp_path: Path, registrar: str) -> None:
    """Without --json the output is readable: registration, ICE progress and a table; with
    --transport tcp SIP goes over TCP, and --log-sip prints each message on stderr."""
    bob = _bob(tmp_path, registrar, "--transport", "tcp")
    try:
        done = _alice(tmp_path, registrar, "--transport", "tcp", "--log-sip",
                      "--nomination", "aggressive")
        assert done.returncode == 0, done.stderr[-2000:]
        out = done.stdout
        assert "registered sip:alice@example.org" in out
        assert "ICE completed after" in out and "first RTP packet received" in out
        assert "aggressive nomination" in out and "MOS" in out
        assert "{" not in out.splitlines()[0]
        assert "----- sent TCP" in done.stderr and "INVITE sip:bob@example.org" in done.stderr
        assert "transport=tcp" in done.stderr.lower() or "SIP/2.0/TCP" in done.stderr
        bob.communicate(timeout=30)
        assert bob.returncode == 0
    finally:
        if bob.poll() is None:
            bob.kill()


def test_no_ice_call_has_plain_rtp(tmp_path: Path, registrar: str) -> None:
    """--no-ice on both sides: the call still carries media, and the report says ICE was not
    used (no checks)."""
    bob = _bob(tmp_path, registrar, "--no-ice")
    try:
        done = _alice(tmp_path, registrar, "--no-ice", "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        report = next(e for e in _lines(done.stdout) if e["event"] == "CallReport")
        assert report["ice"]["used"] is False and report["ice"]["checks"] == []
        assert report["media"]["session"]["inbound"]["packetsReceived"] > 0
        bob.communicate(timeout=30)
    finally:
        if bob.poll() is None:
            bob.kill()


def test_unwritable_outputs_are_refused_before_calling(tmp_path: Path) -> None:
    """--pcap or --timeline into a missing directory: exit 2 with one line, nothing sent."""
    for option in ("--pcap", "--timeline", "--log-sip-file"):
        done = subprocess.run(
            [*SIPUA, "call", "sip:bob@127.0.0.1:9", "--listen", "127.0.0.1:0", option,
             str(tmp_path / "missing" / "x")],
            capture_output=True, text=True, timeout=30, env=clean_env(tmp_path), check=False)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and option in done.stderr
        assert done.stdout == ""
