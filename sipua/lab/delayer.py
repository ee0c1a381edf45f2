"""Userspace link delay for the lab: hold each queued packet for ``delay ± jitter`` ms.

This kernel has no netem qdisc, so the internet namespace sends every crossing packet to an
NFQUEUE and this process gives each one its verdict late. Packets are released by deadline, not
by arrival, so jitter larger than the gap between packets reorders them, as on a real path.

Run inside the internet namespace: ``python3 -m sipua.lab.delayer --delay 50 --jitter 10``.
Prints ``ready`` once bound to the queue; exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import select
import signal
import sys
import time
from typing import Any


def main(argv: list[str] | None = None) -> int:
    """Bind the queue and release packets at their deadlines until terminated."""
    parser = argparse.ArgumentParser(prog="sipua.lab.delayer")
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number")
    parser.add_argument("--delay", type=float, default=0.0, help="mean delay, ms")
    parser.add_argument("--jitter", type=float, default=0.0, help="uniform +/- spread, ms")
    parser.add_argument("--seed", type=int, default=None, help="seed of the jitter draws")
    args = parser.parse_args(argv)
    try:
        from netfilterqueue import COPY_META, NetfilterQueue
    except ImportError:
        print("netfilterqueue is not installed (pip install NetfilterQueue)", flush=True)
        return 1

    rng = random.Random(args.seed)
    pending: list[tuple[float, int, Any]] = []
    order = itertools.count()
    base = args.delay / 1000.0
    spread = args.jitter / 1000.0

    def on_packet(pkt: Any) -> None:
        hold = max(0.0, base + rng.uniform(-spread, spread)) if spread else base
        heapq.heappush(pending, (time.monotonic() + hold, next(order), pkt))

    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    nfq = NetfilterQueue()
    nfq.bind(args.queue, on_packet, max_len=8192, mode=COPY_META)
    fd = nfq.get_fd()
    print(f"ready queue={args.queue} delay={args.delay}ms jitter={args.jitter}ms", flush=True)
    try:
        while not stop:
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                heapq.heappop(pending)[2].accept()
            wait = (pending[0][0] - now) if pending else 0.5
            try:
                readable, _, _ = select.select([fd], [], [], max(0.0, wait))
            except InterruptedError:
                continue
            if readable:
                nfq.run(block=False)
    finally:
        for _, _, pkt in pending:
            pkt.accept()
        nfq.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main())
