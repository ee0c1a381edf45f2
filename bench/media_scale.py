"""How many concurrent G.711 calls one process carries: CPU per call, send jitter, loss.

Each call is a pair of :class:`~media.stream.UdpMediaStream` on 127.0.0.1 (no ICE, symmetric
RTP, PCMU at 20 ms, a tone one way and another back, received audio decoded through the jitter
buffer into a null sink), all on one shared :class:`~media.clock.PacingClock`, in this one
process on the real reactor. For each N of the steps it runs a warm-up second, measures for
``--seconds``, then holds the streams, lets the last packets land and counts:

- CPU per call: process CPU time / calls / seconds (both ends of each call are in here);
- send jitter: lateness of each tick's last send against its grid point, p50/p99 (an upper
  bound for every send of the tick; see media/clock.py);
- packets lost: sent minus received over every stream;
- frames sent in the measured window against the frames due (streams x seconds / ptime): a
  clock that falls behind skips frames, which must not pass for keeping up.

N "holds" when p99 send jitter <= 2 ms, nothing was lost and every frame due was sent. The
same run then measures baresip (Debian baresip-core) carrying calls the same way: two baresip
processes on 127.0.0.1, one auto-answering, the other dialling ``--baresip-calls`` calls, audio
from an 8 kHz WAV (aufile) and played to an aubridge device (no sound card), PCMU; their CPU
comes from /proc/PID/stat.

    python3 bench/media_scale.py [--calls N] [--seconds S] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402
from twisted.internet import reactor as global_reactor  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from media.clock import PacingClock  # noqa: E402
from media.codecs import G711Codec  # noqa: E402
from media.session import RtpSession  # noqa: E402
from media.sinks import NullSink  # noqa: E402
from media.sources import Tone  # noqa: E402
from media.stream import UdpMediaStream  # noqa: E402

reactor: Any = global_reactor
STEPS = (100, 250, 500)
JITTER_LIMIT = 0.002
PTIME = 0.02
BARESIP_MAX_EXEC = 16
"""baresip 1.0 runs at most 16 ``-e`` commands (more and the caller does not start)."""


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


async def _sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def run_step(calls: int, seconds: float, warmup: float, seed: int) -> dict[str, Any]:
    """N calls for ``seconds``; returns the figures."""
    _raise_fd_limit(2 * calls + 256)
    rng = random.Random(seed)
    clock = PacingClock(reactor)
    streams: list[UdpMediaStream] = []
    now = reactor.seconds()
    for _ in range(calls):
        a = UdpMediaStream(RtpSession(G711Codec("PCMU", 0), rng, now), clock,
                           source=Tone(440), sink=NullSink())
        b = UdpMediaStream(RtpSession(G711Codec("PCMU", 0), rng, now), clock,
                           source=Tone(660), sink=NullSink(), remote=a.local_address)
        a.set_remote(b.local_address)
        streams += (a, b)
    for s in streams:
        s.start()
    await _sleep(warmup)
    clock.reset_stats()
    sent0 = _frames_sent(streams)
    cpu0, wall0 = time.process_time(), time.monotonic()
    await _sleep(seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    sent1 = _frames_sent(streams)
    pacing = clock.stats()
    for s in streams:
        s.hold()
    await _sleep(0.5)  # the last packets land
    sent = received = lost_seq = 0
    for s in streams:
        st = s.stats().session
        sent += st.outbound.packets_sent
        if st.inbound is not None:
            received += st.inbound.packets_received
            lost_seq += max(0, st.inbound.packets_lost)
    await defer.gatherResults([s.close() for s in streams])
    elapsed = wall1 - wall0
    cpu = cpu1 - cpu0
    # Every stream owes one frame per ptime: a clock that falls behind and skips frames (a
    # stall longer than max_catch_up) must not pass for one that kept up. The window's edges
    # cut each stream's frames to within one either way.
    expected = len(streams) * elapsed / PTIME
    window_sent = sent1 - sent0
    rate_ok = (abs(window_sent - expected) <= len(streams) + 0.001 * expected
               and pacing.skipped == 0 and pacing.resyncs == 0)
    return {
        "calls": calls, "seconds": round(elapsed, 3), "cpu_seconds": round(cpu, 3),
        "cpu_share_of_one_core": round(cpu / elapsed, 3),
        "cpu_per_call_percent": round(100 * cpu / calls / elapsed, 4),
        "send_jitter_p50_ms": round(pacing.send.p50 * 1e3, 3),
        "send_jitter_p99_ms": round(pacing.send.p99 * 1e3, 3),
        "send_jitter_max_ms": round(pacing.send.max * 1e3, 3),
        "wake_p99_ms": round(pacing.wake.p99 * 1e3, 3),
        "caught_up": pacing.caught_up, "resyncs": pacing.resyncs,
        "packets_sent": sent, "packets_received": received,
        "packets_lost": max(sent - received, lost_seq),
        "frames_expected": round(expected), "frames_sent": window_sent,
        "frames_skipped": pacing.skipped, "send_rate_ok": rate_ok,
        "holds": (pacing.send.p99 <= JITTER_LIMIT and sent == received and lost_seq == 0
                  and rate_ok),
    }


def _frames_sent(streams: list[UdpMediaStream]) -> int:
    return sum(s.session.stats().outbound.packets_sent for s in streams)


# --- baresip ---------------------------------------------------------------------------------

_BARESIP_CONFIG = """poll_method epoll
sip_listen 127.0.0.1:{sip}
net_interface 127.0.0.1
call_max_calls {max_calls}
audio_player aubridge,nil
audio_alert aubridge,nil
audio_source aufile,{wav}
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module aubridge.so
module account.so
module menu.so
"""


def _proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_baresip(calls: int, seconds: float, warmup: float) -> dict[str, Any]:
    """Two baresip processes, ``calls`` calls between them; CPU from /proc."""
    exe = shutil.which("baresip")
    if exe is None:
        return {"error": "baresip not installed (apt-get install baresip-core)"}
    if calls > BARESIP_MAX_EXEC:
        return {"error": f"baresip -e takes at most {BARESIP_MAX_EXEC} commands: "
                         f"use --baresip-calls {BARESIP_MAX_EXEC} or fewer"}
    work = Path(tempfile.mkdtemp(prefix="bench-baresip-"))
    wav = work / "tone.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(Tone(440).read(int(8000 * (warmup + seconds + 30))))
    ports = {"callee": 25271, "caller": 25281}  # TLS takes port + 1
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for role, port in ports.items():
            d = work / role
            d.mkdir()
            (d / "config").write_text(_BARESIP_CONFIG.format(sip=port, wav=wav,
                                                             max_calls=calls + 4))
            answer = ";answermode=auto" if role == "callee" else ""
            (d / "accounts").write_text(
                f"<sip:{role}@127.0.0.1:{port}>;regint=0{answer};audio_codecs=PCMU\n")
        log = {r: open(work / f"{r}.log", "wb") for r in ports}  # noqa: SIM115
        procs["callee"] = subprocess.Popen([exe, "-f", str(work / "callee")],
                                           stdout=log["callee"], stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
        time.sleep(1.0)
        dials: list[str] = []
        for _ in range(calls):
            dials += ["-e", f"/dial sip:callee@127.0.0.1:{ports['callee']}"]
        procs["caller"] = subprocess.Popen([exe, "-f", str(work / "caller"), *dials],
                                           stdout=log["caller"], stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
        time.sleep(warmup + 2.0)
        cpu0 = {r: _proc_cpu(p.pid) for r, p in procs.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        cpu1 = {r: _proc_cpu(p.pid) for r, p in procs.items()}
        elapsed = time.monotonic() - t0
        answered = (work / "callee.log").read_bytes().count(b"answering call")
        rtp_sockets = _udp_sockets(procs["callee"].pid)
        cpu = sum(cpu1[r] - cpu0[r] for r in procs)
        return {
            "calls_dialled": calls, "calls_answered": answered,
            "callee_rtp_sockets": rtp_sockets, "seconds": round(elapsed, 3),
            "cpu_seconds": round(cpu, 3),
            "cpu_per_call_percent": round(100 * cpu / max(1, answered) / elapsed, 4),
            "version": _baresip_version(exe),
        }
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def _udp_sockets(pid: int) -> int:
    """UDP sockets a process holds (RTP + RTCP per call, plus SIP and DNS)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            if line.split()[9] in inodes:
                count += 1
    return count


def _baresip_version(exe: str) -> str:
    out = subprocess.run([exe, "-h"], capture_output=True, timeout=5, check=False)
    first = (out.stdout + out.stderr).decode(errors="replace").splitlines()
    return first[0] if first else "?"


# --- main ----------------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    steps = [args.calls] if args.calls else list(STEPS)
    results = []
    for n in steps:
        r = await run_step(n, args.seconds, args.warmup, args.seed)
        results.append(r)
        if not args.json:
            print(f"N={n:4d}  cpu/call {r['cpu_per_call_percent']:.3f}% of a core  "
                  f"(process {r['cpu_share_of_one_core']:.2f} core)  send jitter "
                  f"p50 {r['send_jitter_p50_ms']:.3f} ms p99 {r['send_jitter_p99_ms']:.3f} ms "
                  f"max {r['send_jitter_max_ms']:.1f} ms  lost {r['packets_lost']}/"
                  f"{r['packets_sent']}  frames {r['frames_sent']}/{r['frames_expected']}"
                  f"{'' if r['send_rate_ok'] else ' (SKIPPED)'}  "
                  f"{'holds' if r['holds'] else 'FAILS'}", flush=True)
    held = [r["calls"] for r in results if r["holds"]]
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": sys.version.split()[0], "reactor": type(reactor).__name__,
        "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
        "steps": results, "largest_n_holding": max(held) if held else None,
    }
    if not args.no_baresip:
        b = run_baresip(args.baresip_calls, args.seconds, args.warmup)
        report["baresip"] = b
        ours = next((r for r in results if r["calls"] == (max(held) if held else None)),
                    results[0])
        if "cpu_per_call_percent" in b and b["cpu_per_call_percent"] > 0:
            report["cpu_per_call_ratio_sipua_over_baresip"] = round(
                ours["cpu_per_call_percent"] / b["cpu_per_call_percent"], 2)
        if not args.json:
            print(f"baresip: {b}")
            if "cpu_per_call_ratio_sipua_over_baresip" in report:
                print(f"CPU per call, sipua / baresip: "
                      f"{report['cpu_per_call_ratio_sipua_over_baresip']}")
    if not args.json:
        print(f"largest N holding p99 send jitter <= 2 ms with no loss: "
              f"{report['largest_n_holding']}")
    return report


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--calls", type=int, default=0, help="one step of N calls (default: steps "
                   f"{', '.join(map(str, STEPS))})")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--baresip-calls", type=int, default=BARESIP_MAX_EXEC,
                   help="calls for baresip (at most 16)")
    p.add_argument("--no-baresip", action="store_true", help="skip the baresip comparison")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON report")
    return p.parse_args()


def _run() -> None:
    args = _parse()
    out: dict[str, Any] = {}

    async def go() -> None:
        out.update(await main(args))

    def failed(failure: Failure) -> None:
        print(failure.getTraceback(), file=sys.stderr)
        out["error"] = str(failure.value)

    d = defer.ensureDeferred(go())
    d.addErrback(failed)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if args.json:
        print(json.dumps(out, indent=2))
    sys.exit(1 if "error" in out else 0)


if __name__ == "__main__":
    _run()
