"""Userspace link impairments for the lab: delay, jitter, reordering and duplication.

This kernel has no netem qdisc, so the internet namespace sends every crossing packet to an
NFQUEUE and this process gives each one its verdict late. Packets are released by deadline, not
by arrival, so jitter larger than the gap between packets reorders them, as on a real path.

- ``--delay MS --jitter MS``: hold each packet ``delay ± uniform(jitter)`` ms.
- ``--reorder PCT``: hold that share of packets ``--reorder-gap`` ms longer than the others, so
  the packets sent right after overtake them (a reordering that does not need jitter).
- ``--duplicate PCT``: send a copy of that share of packets, at the original's deadline, through
  a raw socket of the internet namespace; the copy leaves by the local output path, so it is not
  queued, dropped or duplicated again.

Run inside the internet namespace: ``python3 -m sipua.lab.delayer --delay 50 --jitter 10``.
Prints ``ready`` once bound to the queue; on SIGTERM prints the counts and exits.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import select
import signal
import socket
import sys
import time
from typing import Any


def _destination(packet: bytes) -> str | None:
    """The IPv4 destination of a raw packet (None for anything else)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    return socket.inet_ntoa(packet[16:20])


def main(argv: list[str] | None = None) -> int:
    """Bind the queue and release packets at their deadlines until terminated."""
    parser = argparse.ArgumentParser(prog="sipua.lab.delayer")
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number")
    parser.add_argument("--delay", type=float, default=0.0, help="mean delay, ms")
    parser.add_argument("--jitter", type=float, default=0.0, help="uniform +/- spread, ms")
    parser.add_argument("--reorder", type=float, default=0.0,
                        help="share (%%) of packets held back so that later ones overtake them")
    parser.add_argument("--reorder-gap", type=float, default=25.0,
                        help="extra hold (ms) of a reordered packet")
    parser.add_argument("--duplicate", type=float, default=0.0,
                        help="share (%%) of packets sent twice")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random draws")
    args = parser.parse_args(argv)
    if not (0 <= args.reorder <= 100 and 0 <= args.duplicate <= 100 and args.reorder_gap >= 0):
        parser.error("--reorder and --duplicate are percentages, --reorder-gap >= 0")
    try:
        from netfilterqueue import COPY_META, COPY_PACKET, NetfilterQueue
    except ImportError:
        print("netfilterqueue is not installed (pip install NetfilterQueue)", flush=True)
        return 1

    rng = random.Random(args.seed)
    # Heap of (deadline, tie-break, verdict to give or copy to send).
    pending: list[tuple[float, int, Any]] = []
    order = itertools.count()
    base = args.delay / 1000.0
    spread = args.jitter / 1000.0
    gap = args.reorder_gap / 1000.0
    reorder = args.reorder / 100.0
    duplicate = args.duplicate / 100.0
    counts = {"packets": 0, "reordered": 0, "duplicated": 0}
    raw: socket.socket | None = None
    if duplicate:
        # IPPROTO_RAW implies IP_HDRINCL: the copy keeps the original's addresses and ports.
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def on_packet(pkt: Any) -> None:
        counts["packets"] += 1
        hold = max(0.0, base + rng.uniform(-spread, spread)) if spread else base
        if reorder and rng.random() < reorder:
            hold += gap
            counts["reordered"] += 1
        due = time.monotonic() + hold
        if duplicate and rng.random() < duplicate:
            heapq.heappush(pending, (due, next(order), bytes(pkt.get_payload())))
            counts["duplicated"] += 1
        heapq.heappush(pending, (due, next(order), pkt))

    def release(item: Any) -> None:
        if isinstance(item, bytes):
            dest = _destination(item)
            if raw is not None and dest is not None:
                try:
                    raw.sendto(item, (dest, 0))
                except OSError:
                    pass  # like a copy lost on the way
        else:
            item.accept()

    stop = False

    def on_term(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    nfq = NetfilterQueue()
    nfq.bind(args.queue, on_packet, max_len=8192, mode=COPY_PACKET if duplicate else COPY_META)
    fd = nfq.get_fd()
    print(f"ready queue={args.queue} delay={args.delay}ms jitter={args.jitter}ms "
          f"reorder={args.reorder}% gap={args.reorder_gap}ms duplicate={args.duplicate}%",
          flush=True)
    try:
        while not stop:
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                release(heapq.heappop(pending)[2])
            wait = (pending[0][0] - now) if pending else 0.5
            try:
                readable, _, _ = select.select([fd], [], [], max(0.0, wait))
            except InterruptedError:
                continue
            if readable:
                nfq.run(block=False)
    finally:
        for _, _, item in sorted(pending, key=lambda p: (p[0], p[1])):
            release(item)
        nfq.unbind()
        if raw is not None:
            raw.close()
        print(f"done packets={counts['packets']} reordered={counts['reordered']} "
              f"duplicated={counts['duplicated']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
