"""aioice as a peer of the ICE peer line protocol (docs/ice-peer.md), for the lab's interop runs.

Run as ``python -m sipua.lab.aioice_peer --role controlling|controlled ...``; aioice is a test
extra, imported only when the peer runs. aioice (0.13) nominates aggressively whenever it
controls a full agent, so ``--nomination regular`` with ``--role controlling`` is refused with a
usage error, as the protocol asks of a peer that cannot do an option.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import threading
import time
from typing import Any


def _aioice() -> Any:
    """The aioice package, or a clear error when the test extra is missing."""
    try:
        import aioice
        import aioice.ice
    except ImportError:
        sys.stderr.write("aioice is not installed (pip install 'sipua[test]')\n")
        raise SystemExit(2) from None
    return aioice


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host.strip("[]"), int(port))


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _stdin_lines(queue: asyncio.Queue[str | None], loop: asyncio.AbstractEventLoop) -> None:
    """Read stdin in a daemon thread, so that a blocked read never holds up the exit."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line.strip())
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def run(args: argparse.Namespace) -> int:
    """Gather, print the description, connect, then run the echo test and the hold."""
    aioice = _aioice()
    ice = aioice.ice
    if args.interface:
        only = list(args.interface)
        ice.get_host_addresses = lambda use_ipv4, use_ipv6: only
    conn = ice.Connection(
        ice_controlling=args.role == "controlling", components=1,
        stun_server=args.stun, turn_server=args.turn, turn_username=args.turn_user,
        turn_password=args.turn_pass, use_ipv4=True, use_ipv6=False)
    started = time.monotonic()
    await conn.gather_candidates()
    _emit({"ufrag": conn.local_username, "pwd": conn.local_password, "lite": False,
           "candidates": [c.to_sdp() for c in conn.local_candidates],
           "gather_ms": round((time.monotonic() - started) * 1000, 1),
           "impl": f"aioice {aioice.__version__}"})
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(lines, asyncio.get_running_loop()),
                     daemon=True).start()
    desc: dict[str, Any] | None = None
    while desc is None:
        line = await lines.get()
        if line is None or line == "quit":
            await conn.close()
            return 1
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "ufrag" in obj:
            desc = obj
    conn.remote_username = desc["ufrag"]
    conn.remote_password = desc["pwd"]
    conn.remote_is_lite = bool(desc.get("lite", False))
    for line_text in desc["candidates"]:
        text = line_text[2:] if line_text.startswith("a=") else line_text
        text = text.split(":", 1)[1] if text.lower().startswith("candidate:") else text
        try:
            cand = ice.Candidate.from_sdp(text)
        except (ValueError, IndexError):
            continue
        if cand.component == 1 and cand.transport.lower() == "udp" and ":" not in cand.host:
            await conn.add_remote_candidate(cand)
    await conn.add_remote_candidate(None)
    t0 = time.monotonic()

    def ms() -> float:
        return round((time.monotonic() - t0) * 1000, 1)

    try:
        await asyncio.wait_for(conn.connect(), timeout=args.timeout)
    except (TimeoutError, ConnectionError) as exc:
        _emit({"event": "failed", "reason": str(exc) or "timeout", "ms_from_start_of_checks": ms()})
        await conn.close()
        return 1
    pair = conn._nominated[1]  # aioice keeps the selected pair per component here

    def side(c: Any) -> dict[str, str]:
        return {"type": c.type, "addr": f"{c.host}:{c.port}"}

    _emit({"event": "selected", "ms_from_start_of_checks": ms(),
           "role": "controlling" if conn.ice_controlling else "controlled",
           "local": side(pair.local_candidate), "remote": side(pair.remote_candidate)})

    sent_at: dict[int, float] = {}
    counted: dict[int, float] = {}
    state: dict[str, Any] = {"pongs": 0, "count_from": None, "seq": 0}

    async def receiver() -> None:
        while True:
            data, _ = await conn.recvfrom()
            kind, _, num = data.decode("ascii", "replace").partition(" ")
            if not num.isdigit():
                continue
            seq = int(num)
            if kind == "PING":
                await conn.sendto(f"PONG {seq}".encode(), 1)
            elif kind == "PONG" and seq in sent_at:
                state["pongs"] += 1
                if state["count_from"] is None:
                    state["count_from"] = state["seq"] + 1
                elif seq >= state["count_from"]:
                    counted[seq] = time.monotonic() - sent_at[seq]

    recv_task = asyncio.create_task(receiver())
    deadline = time.monotonic() + args.data_timeout
    ok = False
    while time.monotonic() < deadline:
        state["seq"] += 1
        sent_at[state["seq"]] = time.monotonic()
        await conn.sendto(f"PING {state['seq']}".encode(), 1)
        await asyncio.sleep(0.05)
        if len(counted) >= args.data_count:
            ok = True
            break
    if ok:
        _emit({"event": "data_ok", "pings": state["seq"], "pongs": state["pongs"],
               "rtt_ms": round(statistics.median(counted.values()) * 1000, 2)})
    else:
        _emit({"event": "data_failed", "pings": state["seq"], "pongs": state["pongs"],
               "reason": "no echo" if not state["pongs"] else "too few echoes"})
    code = 0 if ok else 1
    if ok and args.hold > 0:
        before = state["pongs"]
        for _ in range(int(args.hold)):
            await asyncio.sleep(1.0)
            state["seq"] += 1
            sent_at[state["seq"]] = time.monotonic()
            await conn.sendto(f"PING {state['seq']}".encode(), 1)
        await asyncio.sleep(0.5)
        answered = state["pongs"] - before
        _emit({"event": "hold_done", "pings": int(args.hold), "pongs": answered})
        code = 0 if answered else 1
    try:
        while True:
            line = await asyncio.wait_for(lines.get(), timeout=args.linger)
            if line is None or line == "quit" or '"quit"' in (line or ""):
                break
    except TimeoutError:
        pass
    recv_task.cancel()
    await conn.close()
    return code


def main() -> int:
    """Parse the protocol's options and run one session; exits with the protocol's status."""
    p = argparse.ArgumentParser(prog="aioice_peer")
    p.add_argument("--role", choices=["controlling", "controlled"], required=True)
    p.add_argument("--nomination", choices=["regular", "aggressive"], default="regular")
    p.add_argument("--stun", type=_hostport)
    p.add_argument("--turn", type=_hostport)
    p.add_argument("--turn-user")
    p.add_argument("--turn-pass")
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--data-count", type=int, default=5)
    p.add_argument("--data-timeout", type=float, default=10.0)
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--linger", type=float, default=5.0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--interface", action="append", default=[])
    args = p.parse_args()
    if args.role == "controlling" and args.nomination == "regular":
        p.error("aioice nominates aggressively when controlling: --nomination regular unsupported")
    _aioice()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr)
    code = asyncio.run(run(args))
    # The stdin reader thread may still block on readline: leave without waiting for it.
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
