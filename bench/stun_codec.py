"""STUN codec throughput: ice.stun against aioice.stun, side by side in one run.

Three workloads, each timed for both codecs in interleaved rounds (the machine is shared and
noisy, so alternating keeps drift from favouring either side):

- build: a Binding request with USERNAME, PRIORITY, ICE-CONTROLLING and USE-CANDIDATE, then
  MESSAGE-INTEGRITY and FINGERPRINT, to bytes;
- parse request: decode that request, check FINGERPRINT and MESSAGE-INTEGRITY;
- parse response: the same for a Binding success response with XOR-MAPPED-ADDRESS.

Usage: ``python3 bench/stun_codec.py [--seconds S] [--rounds N]``. Prints operations per second
(the median over the rounds) for each codec, the median ratio ours / aioice and the worst round's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from aioice import stun as aio

from ice import stun

TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
KEY = PASSWORD.encode()
USERNAME = "evtj:h6vY"
PRIORITY = 1845494271
TIE_BREAKER = 0x932FF9B151263B36
MAPPED = ("192.0.2.1", 32853)


def ours_build() -> bytes:
    """Build the request with this codec."""
    message = stun.Message(
        stun.Method.BINDING, stun.MessageClass.REQUEST, TID,
        {
            stun.Attr.USERNAME: USERNAME,
            stun.Attr.PRIORITY: PRIORITY,
            stun.Attr.ICE_CONTROLLING: TIE_BREAKER,
            stun.Attr.USE_CANDIDATE: True,
        },
    )
    return message.encode(integrity_key=KEY, fingerprint=True)


def aio_build() -> bytes:
    """Build the same request with aioice."""
    message = aio.Message(
        aio.Method.BINDING, aio.Class.REQUEST, transaction_id=TID,
        attributes={
            "USERNAME": USERNAME,
            "PRIORITY": PRIORITY,
            "ICE-CONTROLLING": TIE_BREAKER,
            "USE-CANDIDATE": None,
        },
    )
    message.add_message_integrity(KEY)
    return bytes(message)


def ours_response() -> bytes:
    """A Binding success response with XOR-MAPPED-ADDRESS, integrity and fingerprint."""
    message = stun.Message(stun.Method.BINDING, stun.MessageClass.SUCCESS, TID,
                           {stun.Attr.XOR_MAPPED_ADDRESS: MAPPED})
    return message.encode(integrity_key=KEY, fingerprint=True)


def make_parsers(data: bytes) -> tuple[Callable[[], object], Callable[[], object]]:
    """Parse-and-verify closures for both codecs over the same bytes."""
    decode = stun.decode
    verify = stun.verify_integrity
    parse = aio.parse_message

    def ours() -> object:
        message = decode(data)
        if not verify(message, KEY):
            raise AssertionError("integrity")
        return message

    def theirs() -> object:
        message = parse(data)
        if not message.check_message_integrity(KEY):
            raise AssertionError("integrity")
        return message

    return ours, theirs


def timed(func: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Run ``func`` in batches for about ``seconds``; (operations, elapsed seconds)."""
    batch = 200
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            func()
        done += batch
        now = time.perf_counter()
        if now >= deadline:
            return done, now - start


def round_rates(ours: Callable[[], object], theirs: Callable[[], object], seconds: float,
                slices: int, flip: bool) -> tuple[float, float]:
    """ops/s of both over one round, alternating short slices so that drift in machine speed
    (shared, throttled hosts) hits both sides alike."""
    totals = {0: [0, 0.0], 1: [0, 0.0]}
    funcs = (ours, theirs)
    for index in range(slices):
        order = (0, 1) if (index % 2 == 0) != flip else (1, 0)
        for side in order:
            ops, elapsed = timed(funcs[side], seconds / slices)
            totals[side][0] += ops
            totals[side][1] += elapsed
    return totals[0][0] / totals[0][1], totals[1][0] / totals[1][1]


def check_equivalence() -> None:
    """Both codecs must produce and accept the same bytes, or the comparison means nothing."""
    ours = ours_build()
    theirs = aio_build()
    if ours != theirs:
        raise SystemExit("the two codecs build different bytes for the same request")
    for data in (ours, ours_response()):
        decoded = aio.parse_message(data)
        if not decoded.check_message_integrity(KEY):
            raise SystemExit("aioice rejects our integrity")
        if not stun.verify_integrity(stun.decode(data), KEY):
            raise SystemExit("our codec rejects its own integrity")
    if stun.decode(ours_response()).get(stun.Attr.XOR_MAPPED_ADDRESS) != MAPPED:
        raise SystemExit("address mismatch")


def main() -> None:
    """Run the interleaved rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="time per codec per workload per round, in 10 alternating slices"
                             " (default 0.5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()
    check_equivalence()
    request = ours_build()
    response = ours_response()
    parse_req = make_parsers(request)
    parse_resp = make_parsers(response)
    workloads: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("build request + MI + FP", ours_build, aio_build),
        ("parse + verify request", *parse_req),
        ("parse + verify response", *parse_resp),
    ]
    results: dict[str, tuple[list[float], list[float]]] = {w[0]: ([], []) for w in workloads}
    for round_no in range(args.rounds):
        for name, ours, theirs in workloads:
            ours_rate, theirs_rate = round_rates(ours, theirs, args.seconds, 10, round_no % 2 == 1)
            results[name][0].append(ours_rate)
            results[name][1].append(theirs_rate)
    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.seconds} s per codec,"
          " medians over rounds")
    print(f"{'workload':<26} {'ice.stun ops/s':>15} {'aioice ops/s':>14} {'ratio':>7}"
          f" {'worst round':>12}")
    for name, _, _ in workloads:
        ours_rates, theirs_rates = results[name]
        ratios = [o / t for o, t in zip(ours_rates, theirs_rates, strict=True)]
        print(f"{name:<26} {statistics.median(ours_rates):>15,.0f}"
              f" {statistics.median(theirs_rates):>14,.0f} {statistics.median(ratios):>6.2f}x"
              f" {min(ratios):>11.2f}x")


if __name__ == "__main__":
    main()
