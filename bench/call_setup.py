"""Call setup time in the NAT lab: sipua calling sipua against baresip calling baresip.

Both pairs register with the lab's Kamailio, use its coturn, and call from host a to host b in
the same lab, alternating call by call (the machine is shared and noisy). A call's setup time is
the time from the caller's INVITE going out to the first RTP packet arriving, on each side:

- caller: first INVITE sent -> first RTP received, on host a;
- callee: INVITE received -> first RTP received, on host b;
- both: the caller's INVITE -> the moment both sides have received RTP (one clock: the capture).

Each side's own clock: for sipua the call reports of `sipua call` and `sipua answer`
(``setup.invite_to_first_rtp_ms``); for baresip, which logs no times, a packet capture
(tcpdump on each host's eth0, kernel timestamps). sipua is measured from the capture as well,
so the two are also compared with one instrument. RTP relayed by TURN (ChannelData, Data
indications) counts when it arrives.

sipua runs with its defaults (rtcp-mux, regular nomination) and `sipua call` is one process per
call (it registers, calls, hangs up after ``--hold`` seconds, unregisters); `sipua answer` (bob)
stays up. Both baresip processes stay up (callee carol with ``answermode=auto``, caller alice
driven over ctrl_tcp), two components, regular nomination (all it has).

    sudo python3 bench/call_setup.py [--calls N] [--topology prc-prc] [--json] [--logs DIR]

Needs root, the lab's tools with coturn and Kamailio, baresip-core and tcpdump. The lab is
removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sipua.errors import UserError  # noqa: E402
from sipua.lab.baresip import BaresipPeer  # noqa: E402
from sipua.lab.lab import Lab, teardown  # noqa: E402
from sipua.lab.sipua_peer import Answerer, clean_env, reports, run_call  # noqa: E402
from tests.lab.conftest import unique_name  # noqa: E402

SIP_PORTS = {5060, 5070, 5072}


# --- capture ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    """One captured UDP datagram (first fragment only for fragmented ones)."""

    at: float
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


def read_pcap(path: Path) -> list[Packet]:
    """UDP over IPv4 over Ethernet from a classic pcap file (what ``tcpdump -w`` writes)."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        endian = "<"
    else:
        endian = ">"
        magic = struct.unpack(">I", data[:4])[0]
    scale = 1e-9 if magic == 0xA1B23C4D else 1e-6
    out: list[Packet] = []
    offset = 24
    while offset + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[offset:offset + 16])
        frame = data[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17 or struct.unpack("!H", ip[6:8])[0] & 0x1FFF:
            continue  # not UDP, or a later fragment
        udp = ip[ihl:]
        if len(udp) < 8:
            continue
        sport, dport = struct.unpack("!HH", udp[:4])
        out.append(Packet(sec + frac * scale, ".".join(map(str, ip[12:16])),
                          ".".join(map(str, ip[16:20])), sport, dport, bytes(udp[8:])))
    return out


def _is_rtp(data: bytes) -> bool:
    return len(data) >= 12 and data[0] & 0xC0 == 0x80 and not 72 <= data[1] & 0x7F <= 76


def rtp_payload(data: bytes) -> bool:
    """Whether a datagram is RTP: plain, in TURN ChannelData, or in a TURN Data indication."""
    if _is_rtp(data):
        return True
    if len(data) >= 4 and 0x40 <= data[0] <= 0x7F:
        length = struct.unpack("!H", data[2:4])[0]
        return _is_rtp(data[4:4 + length])
    if len(data) >= 20 and data[:2] == b"\x00\x17":  # Data indication (RFC 8656 §11.6)
        pos, end = 20, 20 + struct.unpack("!H", data[2:4])[0]
        while pos + 4 <= min(end, len(data)):
            kind, length = struct.unpack("!HH", data[pos:pos + 4])
            if kind == 0x0013:
                return _is_rtp(data[pos + 4:pos + 4 + length])
            pos += 4 + (length + 3) // 4 * 4
    return False


class Capture:
    """tcpdump on a lab host's eth0 (UDP only), ended by PID. ``--immediate-mode``: without it
    packets reach tcpdump in blocks (up to a second late) and the last ones are lost at SIGINT."""

    def __init__(self, lab: Lab, host: str, path: Path) -> None:
        self.path = path
        argv = ["tcpdump", "-i", "eth0", "-n", "-U", "--immediate-mode", "-w", str(path), "udp"]
        self.proc = lab.popen(host, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode(errors="replace")
        if "listening" not in line:
            self.stop()
            raise UserError(f"tcpdump did not start: {line.strip()}")

    def stop(self) -> list[Packet]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return read_pcap(self.path) if self.path.exists() else []


def first_invite(packets: list[Packet], *, sent_by: str | None = None,
                 received_by: str | None = None) -> float | None:
    """When the first INVITE left ``sent_by`` or reached ``received_by``."""
    for p in packets:
        if not p.payload.startswith(b"INVITE "):
            continue
        if (sent_by is None or p.src == sent_by) and (received_by is None
                                                       or p.dst == received_by):
            return p.at
    return None


def first_rtp_in(packets: list[Packet], host_address: str, after: float) -> float | None:
    """When the first RTP reached ``host_address`` after ``after``."""
    for p in packets:
        if (p.at >= after and p.dst == host_address and p.dport not in SIP_PORTS
                and rtp_payload(p.payload)):
            return p.at
    return None


def capture_times(pa: list[Packet], pb: list[Packet], a: str, b: str) -> dict[str, float | None]:
    """caller / callee / both setup times in ms from one call's two captures."""
    invite_a = first_invite(pa, sent_by=a)
    invite_b = first_invite(pb, received_by=b)
    rtp_a = first_rtp_in(pa, a, invite_a) if invite_a is not None else None
    rtp_b = first_rtp_in(pb, b, invite_b) if invite_b is not None else None

    def ms(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else round((x - y) * 1000, 1)

    both = ms(max(rtp_a, rtp_b), invite_a) if rtp_a is not None and rtp_b is not None else None
    return {"caller": ms(rtp_a, invite_a), "callee": ms(rtp_b, invite_b), "both": both}


# --- the two kinds of calls ---------------------------------------------------------------------

def sipua_call(lab: Lab, answerer: Answerer, env: dict[str, str], index: int, hold: float,
               work: Path) -> dict[str, Any]:
    """One sipua -> sipua call; its own reports and the capture's figures."""
    seen = len(reports(answerer.lines))
    caps = {h: Capture(lab, h, work / f"sipua-{index}-{h}.pcap") for h in ("a", "b")}
    try:
        done, lines = run_call(lab, "a", "alice", "sip:bob@lab.test", env=env,
                               duration=hold, timeout=20.0, limit=60.0)
        callee = answerer.wait_for("CallReport", 20.0, count=seen + 1)
    finally:
        packets = {h: c.stop() for h, c in caps.items()}
    caller_reports = reports(lines)
    if done.returncode != 0 or not caller_reports:
        return {"ok": False, "error": done.stderr.strip()[-300:]}
    caller = caller_reports[0]
    return {
        "ok": True,
        "own_clock": {"caller": caller["setup"]["invite_to_first_rtp_ms"],
                      "callee": callee["setup"]["invite_to_first_rtp_ms"]},
        "capture": capture_times(packets["a"], packets["b"], lab.hosts["a"].address,
                                 lab.hosts["b"].address),
        "pair": {c: p and f"{p['local_type']}-{p['remote_type']}"
                 for c, p in caller["ice"]["selected"].items()},
    }


def baresip_call(lab: Lab, caller: BaresipPeer, callee: BaresipPeer, index: int, hold: float,
                 work: Path) -> dict[str, Any]:
    """One baresip -> baresip call; figures from the capture."""
    caps = {h: Capture(lab, h, work / f"baresip-{index}-{h}.pcap") for h in ("a", "b")}
    started = time.time()
    try:
        caller.dial(f"sip:{callee.user}@lab.test")
        caller.wait_event("CALL_RTPESTAB", 60, after=started)
        callee.wait_event("CALL_RTPESTAB", 60, after=started)
        time.sleep(hold)
        caller.hangup()
        caller.wait_event("CALL_CLOSED", 10, after=started)
        callee.wait_event("CALL_CLOSED", 10, after=started)
    except Exception as exc:
        try:
            caller.hangup()
        except Exception:
            pass
        return {"ok": False, "error": str(exc)[-300:]}
    finally:
        packets = {h: c.stop() for h, c in caps.items()}
    times = capture_times(packets["a"], packets["b"], lab.hosts["a"].address,
                          lab.hosts["b"].address)
    return {"ok": True, "capture": times}


# --- statistics and output ----------------------------------------------------------------------

def summary(values: list[float | None]) -> dict[str, Any]:
    """Median and max (and count) of the figures that exist."""
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0, "median": None, "max": None}
    return {"n": len(got), "median": round(statistics.median(got), 1), "max": round(max(got), 1)}


def ratio(x: float | None, y: float | None) -> float | None:
    """x / y, or None."""
    return None if x is None or not y else round(x / y, 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the lab, alternate the calls, summarise."""
    for tool, package in (("tcpdump", "tcpdump"), ("baresip", "baresip-core")):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} is missing (apt-get install {package})")
    work = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="bench-call-setup-"))
    work.mkdir(parents=True, exist_ok=True)
    name = unique_name()
    lab = Lab.up(args.topology, name, servers=True)
    answerer: Answerer | None = None
    peers: list[BaresipPeer] = []
    sipua_runs: list[dict[str, Any]] = []
    baresip_runs: list[dict[str, Any]] = []
    try:
        env = clean_env(work / "home")
        answerer = Answerer(lab, "b", "bob", env=env, max_calls=0, timeout=20.0)
        answerer.registered()
        turn = "sym" in args.topology
        callee = BaresipPeer(lab, "b", "carol", record=False, sip_port=5070, ctrl_port=4444,
                             turn=turn, work_dir=work / "baresip-callee")
        caller = BaresipPeer(lab, "a", "alice", record=False, sip_port=5072, ctrl_port=4445,
                             answer=False, register=False, turn=turn,
                             work_dir=work / "baresip-caller")
        peers = [callee, caller]
        callee.start()
        caller.start()
        for i in range(1, args.calls + 1):
            s = sipua_call(lab, answerer, env, i, args.hold, work)
            sipua_runs.append(s)
            b = baresip_call(lab, caller, callee, i, args.hold, work)
            baresip_runs.append(b)
            if not args.json:
                print(f"call {i:2d}: sipua {_fmt(s)} | baresip {_fmt(b)}", flush=True)
    finally:
        for peer in peers:
            peer.stop()
        if answerer is not None:
            answerer.stop()
        teardown(name)
        if not args.logs:
            shutil.rmtree(work, ignore_errors=True)
    ok_s = [r for r in sipua_runs if r["ok"]]
    ok_b = [r for r in baresip_runs if r["ok"]]
    result: dict[str, Any] = {
        "topology": args.topology, "calls": args.calls,
        "sipua": {
            "failures": len(sipua_runs) - len(ok_s),
            "own_clock": {side: summary([r["own_clock"][side] for r in ok_s])
                          for side in ("caller", "callee")},
            "capture": {side: summary([r["capture"][side] for r in ok_s])
                        for side in ("caller", "callee", "both")},
            "pairs": sorted({json.dumps(r["pair"], sort_keys=True) for r in ok_s}),
        },
        "baresip": {
            "failures": len(baresip_runs) - len(ok_b),
            "capture": {side: summary([r["capture"][side] for r in ok_b])
                        for side in ("caller", "callee", "both")},
            "errors": [r["error"] for r in baresip_runs if not r["ok"]][:3],
        },
    }
    own = {**result["sipua"]["own_clock"], "both": result["sipua"]["capture"]["both"]}
    result["ratio_sipua_over_baresip"] = {
        side: {stat: ratio(own[side][stat], result["baresip"]["capture"][side][stat])
               for stat in ("median", "max")}
        for side in ("caller", "callee", "both")}
    result["ratio_capture"] = {
        side: {stat: ratio(result["sipua"]["capture"][side][stat],
                           result["baresip"]["capture"][side][stat])
               for stat in ("median", "max")}
        for side in ("caller", "callee", "both")}
    result["target_met"] = all(
        (v["median"] or 99) <= 1.0 for v in result["ratio_sipua_over_baresip"].values())
    result["runs"] = {"sipua": sipua_runs, "baresip": baresip_runs}
    return result


def _fmt(run: dict[str, Any]) -> str:
    if not run["ok"]:
        return f"FAILED ({run['error'][:60]})"
    cap = run["capture"]
    own = run.get("own_clock")
    text = f"caller {cap['caller']} / callee {cap['callee']} ms (capture)"
    if own:
        text += f", report {own['caller']} / {own['callee']} ms"
    return text


def print_result(r: dict[str, Any]) -> None:
    """The figures as a few lines."""
    print(f"\ntopology {r['topology']}, {r['calls']} calls each, INVITE -> first RTP received "
          f"(ms, median / max)")
    s, b = r["sipua"], r["baresip"]
    for side in ("caller", "callee", "both"):
        own = s["own_clock"].get(side)
        own_text = f"{own['median']} / {own['max']} (report)  " if own else ""
        print(f"  {side:6s}: sipua {own_text}{s['capture'][side]['median']} / "
              f"{s['capture'][side]['max']} (capture)   baresip {b['capture'][side]['median']} / "
              f"{b['capture'][side]['max']} (capture)   ratio median "
              f"{r['ratio_sipua_over_baresip'][side]['median']}, max "
              f"{r['ratio_sipua_over_baresip'][side]['max']}")
    print(f"  failures: sipua {s['failures']}, baresip {b['failures']}; sipua pairs "
          f"{', '.join(s['pairs'])}")
    print(f"  target (sipua no slower than baresip): {'met' if r['target_met'] else 'NOT met'}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20, help="calls per implementation")
    p.add_argument("--topology", default="prc-prc", help="lab topology (docs/lab.md)")
    p.add_argument("--hold", type=float, default=0.5,
                   help="seconds each call lasts after media flows")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--logs", default=None, metavar="DIR",
                   help="keep captures and logs in DIR (default: a temporary directory)")
    args = p.parse_args()
    try:
        result = run(args)
    except UserError as exc:
        print(f"call_setup: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
