"""How many concurrent G.711 calls one process carries: CPU per call, send jitter, loss.

The measured process holds one end of each of N calls: a :class:`~media.stream.UdpMediaStream`
on 127.0.0.1 (no ICE, symmetric RTP, PCMU at 20 ms, a 440 Hz tone out, received audio decoded
through the jitter buffer into a null sink), all on one shared :class:`~media.clock.PacingClock`,
on the real reactor. The far ends run the same code in a second process (``--far-end``, a 660 Hz
tone back), as the other party of a call would, each process pinned to a core of its own when
there are two, and are measured too. ``--both-ends-here`` puts
both ends of every call in the measured process instead (twice the media per call). For each N
of the steps it runs a warm-up second, measures for ``--seconds``, then holds the streams, lets
the last packets land and counts:

- CPU per call: the measured process's CPU time / calls / seconds;
- send jitter: lateness of each tick's last send against its grid point, p50/p99 (an upper
  bound for every send of the tick; see media/clock.py), in the measured process;
- packets lost: sent minus received, both directions of every call;
- frames sent in the measured window against the frames due (streams x seconds / ptime): a
  clock that falls behind skips frames, which must not pass for keeping up.

N "holds" when p99 send jitter <= 2 ms, nothing was lost and every frame due was sent. The
same run then measures baresip (Debian baresip-core) carrying calls the same way: two baresip
processes on 127.0.0.1, one auto-answering, the other dialling ``--baresip-calls`` calls, audio
from an 8 kHz WAV (aufile) and played to an aubridge device (no sound card), PCMU; their CPU
comes from /proc/PID/stat, and CPU per call is the answering process's (one end of each call,
like ours).

    python3 bench/media_scale.py [--calls N] [--seconds S] [--both-ends-here] [--json]
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


def _stream(rng: random.Random, clock: PacingClock, now: float, tone: float,
            remote: tuple[str, int] | None = None) -> UdpMediaStream:
    return UdpMediaStream(RtpSession(G711Codec("PCMU", 0), rng, now), clock,
                          source=Tone(tone), sink=NullSink(), remote=remote)


def _counts(streams: list[UdpMediaStream]) -> dict[str, int]:
    """Packets sent, received and lost by sequence number over ``streams``."""
    sent = received = lost_seq = 0
    for s in streams:
        st = s.stats().session
        sent += st.outbound.packets_sent
        if st.inbound is not None:
            received += st.inbound.packets_received
            lost_seq += max(0, st.inbound.packets_lost)
    return {"sent": sent, "received": received, "lost_seq": lost_seq}


class FarEnd:
    """The other ends of the calls, in a child process (``--far-end``), driven by JSON lines.

    Setting up and tearing down block the measured process on the pipe; nothing is measured
    then.
    """

    def __init__(self, calls: int, seed: int, cpu: int | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--far-end"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        self.ports = [(str(h), int(p))
                      for h, p in self.ask({"calls": calls, "seed": seed})["ports"]]

    def tell(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self.tell(command)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the far-end process exited ({self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.tell({"close": True})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


async def run_step(calls: int, seconds: float, warmup: float, seed: int,
                   both_ends_here: bool = False) -> dict[str, Any]:
    """N calls for ``seconds``; returns the figures."""
    _raise_fd_limit(2 * calls + 256)
    rng = random.Random(seed)
    clock = PacingClock(reactor)
    now = reactor.seconds()
    ours: list[UdpMediaStream] = []
    far_streams: list[UdpMediaStream] = []
    far: FarEnd | None = None
    if both_ends_here:
        for _ in range(calls):
            a = _stream(rng, clock, now, 440)
            b = _stream(rng, clock, now, 660, remote=a.local_address)
            a.set_remote(b.local_address)
            ours.append(a)
            far_streams.append(b)
    else:
        # Each process on a core of its own (as if the far ends were another machine), when
        # there are two: the scheduler then does not interleave them on one core.
        cpus = sorted(os.sched_getaffinity(0))
        far_cpu = None
        if len(cpus) >= 2:
            os.sched_setaffinity(0, {cpus[0]})
            far_cpu = cpus[1]
        far = FarEnd(calls, seed + 1, far_cpu)
        ours = [_stream(rng, clock, now, 440, remote=port) for port in far.ports]
        far.ask({"remotes": [s.local_address for s in ours]})
    try:
        streams = ours + far_streams
        for s in streams:
            s.start()
        await _sleep(warmup)
        clock.reset_stats()
        if far is not None:
            far.tell({"reset": True})
        sent0 = _frames_sent(streams)
        cpu0, wall0 = time.process_time(), time.monotonic()
        far_cpu0 = far.cpu() if far is not None else 0.0
        await _sleep(seconds)
        cpu1, wall1 = time.process_time(), time.monotonic()
        far_cpu1 = far.cpu() if far is not None else 0.0
        sent1 = _frames_sent(streams)
        pacing = clock.stats()
        for s in streams:
            s.hold()
        far_report = far.ask({"hold": True}) if far is not None else None
        await _sleep(0.5)  # the last packets land
        here = _counts(streams)
        if far_report is not None:
            sent = here["sent"] + far_report["sent"]
            received = here["received"] + far_report["received"]
            lost_seq = here["lost_seq"] + far_report["lost_seq"]
        else:
            sent, received, lost_seq = here["sent"], here["received"], here["lost_seq"]
        await defer.gatherResults([s.close() for s in streams])
    finally:
        if far is not None:
            far.close()
            os.sched_setaffinity(0, cpus)
    elapsed = wall1 - wall0
    cpu = cpu1 - cpu0
    # Every stream owes one frame per ptime: a clock that falls behind and skips frames (a
    # stall longer than max_catch_up) must not pass for one that kept up. The window's edges
    # cut each stream's frames to within one either way.
    expected = len(streams) * elapsed / PTIME
    window_sent = sent1 - sent0
    rate_ok = (abs(window_sent - expected) <= len(streams) + 0.001 * expected
               and pacing.skipped == 0 and pacing.resyncs == 0)
    result: dict[str, Any] = {
        "calls": calls, "ends_in_this_process": "both" if both_ends_here else "one",
        "seconds": round(elapsed, 3), "cpu_seconds": round(cpu, 3),
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
    if far_report is not None:
        result["far_end"] = {
            "cpu_share_of_one_core": round((far_cpu1 - far_cpu0) / elapsed, 3),
            "send_jitter_p99_ms": far_report["send_jitter_p99_ms"],
            "frames_skipped": far_report["frames_skipped"],
        }
    return result


def far_end_main() -> None:
    """``--far-end``: the other ends of the calls, commanded by JSON lines on stdin."""
    from twisted.internet import stdio
    from twisted.protocols.basic import LineReceiver

    state: dict[str, Any] = {}

    class Commands(LineReceiver):
        delimiter = b"\n"

        def reply(self, message: dict[str, Any]) -> None:
            self.sendLine(json.dumps(message).encode())  # type: ignore[no-untyped-call]

        def lineReceived(self, line: bytes) -> None:
            command = json.loads(line)
            if "calls" in command:
                _raise_fd_limit(command["calls"] + 256)
                clock = state["clock"] = PacingClock(reactor)
                rng = random.Random(command["seed"])
                now = reactor.seconds()
                state["streams"] = [_stream(rng, clock, now, 660)
                                    for _ in range(command["calls"])]
                self.reply({"ports": [s.local_address for s in state["streams"]]})
            elif "remotes" in command:
                for s, remote in zip(state["streams"], command["remotes"], strict=True):
                    s.set_remote(tuple(remote))
                    s.start()
                self.reply({"started": True})
            elif "reset" in command:
                state["clock"].reset_stats()
            elif "hold" in command:
                pacing = state["clock"].stats()
                for s in state["streams"]:
                    s.hold()
                reactor.callLater(0.5, self.held, pacing)
            elif "close" in command:
                d = defer.gatherResults([s.close() for s in state["streams"]])
                d.addBoth(lambda _: reactor.stop())

        def held(self, pacing: Any) -> None:
            self.reply({**_counts(state["streams"]),
                        "send_jitter_p99_ms": round(pacing.send.p99 * 1e3, 3),
                        "frames_skipped": pacing.skipped})

        def connectionLost(self, reason: object = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Commands())  # type: ignore[no-untyped-call]
    reactor.run()


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
        cpu = {r: cpu1[r] - cpu0[r] for r in procs}
        per_call = {r: round(100 * c / max(1, answered) / elapsed, 4) for r, c in cpu.items()}
        return {
            "calls_dialled": calls, "calls_answered": answered,
            "callee_rtp_sockets": rtp_sockets, "seconds": round(elapsed, 3),
            "cpu_seconds": {r: round(c, 3) for r, c in cpu.items()},
            # One end of each call, like ours: the answering process.
            "cpu_per_call_percent": per_call["callee"],
            "caller_cpu_per_call_percent": per_call["caller"],
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
        r = await run_step(n, args.seconds, args.warmup, args.seed, args.both_ends_here)
        results.append(r)
        if not args.json:
            print(f"N={n:4d}  cpu/call {r['cpu_per_call_percent']:.3f}% of a core  "
                  f"(process {r['cpu_share_of_one_core']:.2f} core)  send jitter "
                  f"p50 {r['send_jitter_p50_ms']:.3f} ms p99 {r['send_jitter_p99_ms']:.3f} ms "
                  f"max {r['send_jitter_max_ms']:.1f} ms  lost {r['packets_lost']}/"
                  f"{r['packets_sent']}  frames {r['frames_sent']}/{r['frames_expected']}"
                  f"{'' if r['send_rate_ok'] else ' (SKIPPED)'}  "
                  f"{'holds' if r['holds'] else 'FAILS'}", flush=True)
            if "far_end" in r:
                f = r["far_end"]
                print(f"        far ends (other process): {f['cpu_share_of_one_core']:.2f} core, "
                      f"send jitter p99 {f['send_jitter_p99_ms']:.3f} ms, "
                      f"frames skipped {f['frames_skipped']}", flush=True)
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
    p.add_argument("--both-ends-here", action="store_true",
                   help="both ends of every call in this process (twice the media per call)")
    p.add_argument("--far-end", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON report")
    return p.parse_args()


def _run() -> None:
    args = _parse()
    if args.far_end:
        far_end_main()
        return
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
