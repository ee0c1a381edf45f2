"""Call establishment success rate under packet loss, in the NAT lab.

For each loss rate one lab (prc-prc, coturn and Kamailio) drops that share of every packet
crossing the simulated internet, each direction on its own draw (docs/lab.md). bob on host b
answers every call; alice on host a makes N calls one after the other. A call counts as
established when media flows both ways within the timeout: alice received bob's RTP and bob
received alice's, each within ``--timeout`` seconds of alice starting the call (the SIP INVITE
and its retransmissions, ICE checks and their retransmissions, the first RTP). The setup time of
an established call is from alice's ``ua.call()`` to the later of the two first RTP packets,
on one clock (both processes run on this machine).

    sudo python3 bench/loss_success.py [--calls 50] [--loss 10,30] [--timeout 20] [--json]

Targets (the issue): 99 % established at 10 % loss, 90 % at 30 %. Prints, per rate, successes,
median and p90 setup time, the failures' reasons, and whether the target is met.

The peers are this same file run inside the lab hosts (``--role caller|callee``): user agents
that stay registered for the whole run, so the figures are about calls, not registrations.
Needs root and the lab's tools with coturn and Kamailio; the lab is removed at the end, also
after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = {10.0: 0.99, 30.0: 0.90}
"""Loss rate (%) -> share of calls to establish (the issue's targets)."""


# ---------------------------------------------------------------------- the peers (in the lab)


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _peer(args: argparse.Namespace) -> int:
    """One user agent in a lab host: the callee answers and reports each call's first RTP, the
    caller makes the calls when told to (one line ``call`` on stdin per call)."""
    from twisted.internet import defer, task
    from twisted.internet import reactor as global_reactor

    from media.sources import Tone
    from sipua.call import Call
    from sipua.lab.lab import SERVER_ADDRESS, SIP_DOMAIN, SIP_PORT, SIP_USERS, STUN_PORT
    from sipua.settings import Account, IceConfig, Settings, UaSettings
    from sipua.useragent import UserAgent

    reactor: Any = global_reactor
    user = "alice" if args.role == "caller" else "bob"
    settings = Settings(
        ua=UaSettings(listen=(f"{args.listen}:5060",), transports=("udp",)),
        accounts=(Account(name=user, uri=f"sip:{user}@{SIP_DOMAIN}", password=SIP_USERS[user],
                          registrar=f"{SERVER_ADDRESS}:{SIP_PORT}"),),
        ice=IceConfig(stun_servers=(f"{SERVER_ADDRESS}:{STUN_PORT}",)),
    )
    ua = UserAgent(settings, reactor, rng=random.Random(args.seed))

    def watch(call: Call, started: float, index: int | None) -> None:
        """Report the call's first RTP (or the failure), then hang up after ``--talk``."""
        d = call.media_flowing(timeout=args.timeout)

        def flowing(_: object) -> None:
            _emit({"event": "flowing", "index": index, "call_id": call.call_id,
                   "at": time.time(), "setup_s": round(time.time() - started, 3)})
            if args.role == "caller":
                reactor.callLater(args.talk, call.hangup)

        def failed(failure: Any) -> None:
            _emit({"event": "failed", "index": index, "call_id": call.call_id,
                   "reason": f"{failure.type.__name__}: {failure.value}", "at": time.time(),
                   "diagnosis": _diagnosis(call)})
            if call.active:
                call.hangup()

        d.addCallbacks(flowing, failed)

    def _diagnosis(call: Call) -> dict[str, Any]:
        """Where a failed call got to: SIP answer, ICE progress, candidates."""
        t = call.timings

        def rel(x: float | None) -> float | None:
            return None if x is None else round(x - t.started, 3)

        counts: dict[str, int] = {}
        for event in call.ice_events:
            name = type(event).__name__
            counts[name] = counts.get(name, 0) + 1
        agent = call.agent
        return {"answered": rel(t.answered), "ice_completed": rel(t.ice_completed),
                "first_rtp": rel(t.first_rtp), "status": call.status,
                "agent": agent.state.value if agent is not None else None,
                "local": sorted(c.type.value for c in agent.local_candidates) if agent else [],
                "ice_events": counts}

    async def caller_loop() -> None:
        lines: queue.Queue[str] = queue.Queue()

        def read_stdin() -> None:
            for line in sys.stdin:
                lines.put(line.strip())
            lines.put("quit")

        threading.Thread(target=read_stdin, daemon=True).start()
        index = 0
        while True:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                await task.deferLater(reactor, 0.05, lambda: None)
                continue
            if line == "quit":
                return
            index += 1
            started = time.time()
            _emit({"event": "calling", "index": index, "at": started})
            try:
                call = await ua.call(f"sip:bob@{SIP_DOMAIN}", source=Tone(440))
            except Exception as exc:  # the INVITE failed outright: a failed call, go on
                _emit({"event": "failed", "index": index, "call_id": None,
                       "reason": f"{type(exc).__name__}: {exc}", "at": time.time()})
                continue
            _emit({"event": "invited", "index": index, "call_id": call.call_id})
            watch(call, started, index)

    async def callee_loop() -> None:
        seen: set[str] = set()
        while True:
            for call in list(ua.calls.values()):
                if call.direction == "incoming" and call.id not in seen:
                    seen.add(call.id)
                    watch(call, time.time(), None)
            await task.deferLater(reactor, 0.02, lambda: None)

    async def go() -> None:
        await ua.start()
        await ua.register()
        if args.role == "callee":
            ua.auto_answer(source=Tone(660))
        _emit({"event": "ready"})
        try:
            if args.role == "caller":
                await caller_loop()
            else:
                await callee_loop()
        finally:
            await ua.stop()

    def fail(failure: Any) -> None:
        _emit({"event": "error", "error": f"{failure.type.__name__}: {failure.value}"})

    d = defer.ensureDeferred(go())
    d.addErrback(fail)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    return 0


# ---------------------------------------------------------------------- the driver


def percentile(values: list[float], share: float) -> float | None:
    """The ``share`` quantile (nearest rank) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def run_rate(loss: float, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """N calls in one lab at ``loss`` %; the per-call outcomes and their summary."""
    from sipua.lab.lab import Lab, teardown
    from sipua.lab.sipua_peer import JsonProcess
    from tests.lab.conftest import unique_name

    name = unique_name()
    lab = Lab.up("prc-prc", name, servers=True, loss_pct=loss)
    procs: list[JsonProcess] = []

    def peer(host: str, role: str, *extra: str) -> JsonProcess:
        """This file as the ``role`` peer in lab host ``host``; it reads commands on stdin."""
        me = ["python3", str(Path(__file__).resolve()), "--timeout", str(args.timeout)]
        user = "alice" if role == "caller" else "bob"
        proc = JsonProcess([*me, "--role", role, "--listen", lab.hosts[host].address, *extra],
                           lab=lab, host=host, cwd=ROOT, log=logs / f"{loss:g}-{user}.log",
                           stdin=True)
        proc.what = user
        procs.append(proc)
        proc.wait_for("ready", 60)
        return proc

    try:
        peer("b", "callee")
        caller = peer("a", "caller", "--talk", str(args.talk))
        for index in range(1, args.calls + 1):
            caller.send("call")
            # The next call once this one's outcome is known and it had time to hang up.
            record = caller.wait_for(("flowing", "failed"), args.timeout + 30, index=index)
            time.sleep(args.talk + args.gap)
            if not args.json:
                print(f"  loss {loss:g}%: call {index}/{args.calls} {record['event']}",
                      file=sys.stderr, flush=True)
        time.sleep(args.timeout if any(r["event"] == "failed" for r in caller.lines) else 2)
    finally:
        for proc in reversed(procs):
            proc.stop(timeout=10)
        teardown(name)
    return summarise(loss, args, procs[1].lines if len(procs) > 1 else [], procs[0].lines)


def summarise(loss: float, args: argparse.Namespace, caller: list[dict[str, Any]],
              callee: list[dict[str, Any]]) -> dict[str, Any]:
    """Join the caller's and callee's reports by Call-ID: established both ways or not."""
    started = {r["index"]: r for r in caller if r["event"] == "calling"}
    call_ids = {r["index"]: r["call_id"] for r in caller if r["event"] == "invited"}
    at_a = {r["index"]: r for r in caller if r["event"] in ("flowing", "failed")}
    at_b = {r["call_id"]: r for r in callee if r["event"] in ("flowing", "failed")}
    outcomes = []
    for index, start in sorted(started.items()):
        a, b = at_a.get(index), at_b.get(call_ids.get(index))
        ok = (a is not None and a["event"] == "flowing" and b is not None
              and b["event"] == "flowing" and b["at"] - start["at"] <= args.timeout)
        setup = max(a["at"], b["at"]) - start["at"] if ok and a and b else None
        reason = None
        if not ok:
            reason = (a or {}).get("reason") or (b or {}).get("reason") or (
                "callee saw no call" if b is None else "callee got no RTP in time")
        outcomes.append({"index": index, "established": ok, "setup_s": setup,
                         "reason": reason,
                         "caller": (a or {}).get("diagnosis") if not ok else None,
                         "callee": (b or {}).get("diagnosis") if not ok else None})
    times = [o["setup_s"] for o in outcomes if o["setup_s"] is not None]
    rate = sum(o["established"] for o in outcomes) / len(outcomes) if outcomes else 0.0
    target = TARGETS.get(loss)
    return {
        "loss_pct": loss, "calls": len(outcomes),
        "established": sum(o["established"] for o in outcomes), "success_rate": rate,
        "setup_median_s": statistics.median(times) if times else None,
        "setup_p90_s": percentile(times, 0.9), "setup_max_s": max(times) if times else None,
        "target": target, "target_met": None if target is None else rate >= target,
        "failures": [o for o in outcomes if not o["established"]],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--calls", type=int, default=50, help="calls per loss rate")
    p.add_argument("--loss", default="10,30", help="loss rates, %%, comma-separated")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds for media to flow both ways")
    p.add_argument("--talk", type=float, default=1.0, help="seconds of media before hang-up")
    p.add_argument("--gap", type=float, default=0.5, help="seconds between calls")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--logs", type=Path, default=None, help="keep the peers' logs here")
    p.add_argument("--role", choices=("caller", "callee"), help=argparse.SUPPRESS)
    p.add_argument("--listen", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        return _peer(args)
    import tempfile

    from sipua.errors import UserError
    logs = args.logs or Path(tempfile.mkdtemp(prefix="loss-success-"))
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for loss in (float(x) for x in args.loss.split(",")):
            results.append(run_rate(loss, args, logs))
    except UserError as exc:
        print(f"loss_success: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"prc-prc, {args.calls} calls per rate, established = media both ways within "
          f"{args.timeout:g} s (logs: {logs})")
    print("| loss | established | success | setup median | p90 | max | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        def s(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f} s"
        target = "-" if r["target"] is None else f"{r['target']:.0%}"
        met = "-" if r["target_met"] is None else ("yes" if r["target_met"] else "NO")
        print(f"| {r['loss_pct']:g} % | {r['established']}/{r['calls']} | "
              f"{r['success_rate']:.1%} | {s(r['setup_median_s'])} | {s(r['setup_p90_s'])} | "
              f"{s(r['setup_max_s'])} | {target} | {met} |")
        for f in r["failures"]:
            print(f"    call {f['index']}: {f['reason']}")
            for side in ("caller", "callee"):
                if f.get(side):
                    print(f"      {side}: {json.dumps(f[side])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
