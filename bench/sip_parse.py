"""SIP message throughput: sipua.message against the SIP parsers of PyPI packages, side by side.

Workloads, each timed for every parser in interleaved slices (the machine is shared and noisy,
so alternating keeps drift from favouring one side):

- parse INVITE: a ~1.5 kB INVITE with an ICE SDP offer, from bytes, then read what a
  transaction layer reads: top Via branch, From tag, To tag, Call-ID, CSeq, Content-Length and
  the body;
- parse 200 OK: the same for the 200 OK answering it (no body);
- serialize INVITE / serialize 200 OK: an already parsed (and read) message back to wire form.

Peers: pyVoIP (``pyVoIP.SIP.SIPMessage``; it has no serializer) and sippy (``sippy.SipRequest``,
``sippy.SipResponse``, serialized with ``str()``). A peer that is not installed is skipped.

Usage: ``python3 bench/sip_parse.py [--seconds S] [--rounds N]``. Prints operations per second
(the median over the rounds) for each parser and, per workload, the median ratio of ours to the
fastest peer, and the worst round's ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from sipua.message import Request, Response, parse

SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"a=ice-ufrag:8hhY\r\n"
    b"a=ice-pwd:asd88fgpdd777uzjYhagZg\r\n"
    b"a=ice-options:trickle\r\n"
    b"m=audio 45664 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
    b"a=rtcp:45665 IN IP4 192.0.2.10\r\n"
    b"a=candidate:1 1 UDP 2130706431 192.0.2.10 45664 typ host\r\n"
    b"a=candidate:1 2 UDP 2130706430 192.0.2.10 45665 typ host\r\n"
    b"a=candidate:2 1 UDP 2130706175 fd00::10 45666 typ host\r\n"
    b"a=candidate:2 2 UDP 2130706174 fd00::10 45667 typ host\r\n"
    b"a=candidate:3 1 UDP 1694498815 198.51.100.7 45664 typ srflx raddr 192.0.2.10 rport 45664\r\n"
    b"a=candidate:3 2 UDP 1694498814 198.51.100.7 45665 typ srflx raddr 192.0.2.10 rport 45665\r\n"
    b"a=candidate:4 1 UDP 16777215 203.0.113.5 50000 typ relay raddr 198.51.100.7 rport 45664\r\n"
    b"a=candidate:4 2 UDP 16777214 203.0.113.5 50001 typ relay raddr 198.51.100.7 rport 45665\r\n"
)

INVITE = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob@biloxi.example.com>\r\n"
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice@192.0.2.10:5060;transport=udp>\r\n"
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, REFER, NOTIFY\r\n"
    "Supported: replaces, timer, ice\r\n"
    "User-Agent: sipua/0.1\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n"
    "\r\n"
).encode() + SDP

OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=198.51.100.7\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

# What every parser must read back from each message, for the equivalence check.
EXPECTED = {
    INVITE: ("z9hG4bK776asdhds", "1928301774", None, "a84b4c76e66710@pc33.atlanta.example.com",
             314159, "INVITE", len(SDP)),
    OK: ("z9hG4bK776asdhds", "1928301774", "a6c85cf", "a84b4c76e66710@pc33.atlanta.example.com",
         314159, "INVITE", 0),
}

Reading = tuple[str | None, str | None, str | None, str, int, str, int]
Parser = Callable[[bytes], Reading]


def ours_read(data: bytes) -> Reading:
    """sipua.message: parse and read the transaction-layer fields."""
    message = parse(data)
    cseq = message.cseq
    length = message.headers.get("Content-Length")
    body = message.body
    if length is None or int(length) != len(body):
        raise AssertionError("Content-Length")
    return (message.vias[0].branch, message.from_.tag, message.to.tag, message.call_id,
            cseq.number, cseq.method, len(body))


def make_pyvoip() -> Parser | None:
    """pyVoIP 1.6's SIPMessage (it parses every header, and an SDP body, when constructed)."""
    try:
        import pyVoIP.VoIP  # noqa: F401 -- pyVoIP.SIP alone hits a circular import
        from pyVoIP.SIP import SIPMessage
    except ImportError:
        return None

    def read(data: bytes) -> Reading:
        message = SIPMessage(data)
        headers = message.headers
        cseq = headers["CSeq"]
        length = int(headers["Content-Length"])
        body = message.body
        to_tag = headers["To"]["tag"] or None
        return (headers["Via"][0]["branch"], headers["From"]["tag"], to_tag, headers["Call-ID"],
                int(cseq["check"]), cseq["method"], length if body is not None else 0)

    return read


def make_sippy() -> tuple[Parser, Callable[[bytes], Callable[[], object]]] | None:
    """sippy's SipRequest / SipResponse (headers parsed on access, like ours)."""
    try:
        from sippy.SipRequest import SipRequest  # type: ignore[import-untyped]
        from sippy.SipResponse import SipResponse  # type: ignore[import-untyped]
    except ImportError:
        return None

    def load(data: bytes) -> object:
        text = data.decode()
        if text.startswith("SIP/"):
            return SipResponse(text)
        return SipRequest(text)

    def read(data: bytes) -> Reading:
        message = load(data)
        cseq = message.getHFBody("cseq")  # type: ignore[attr-defined]
        body = message.getBody()  # type: ignore[attr-defined]
        return (message.getHFBody("via").getBranch(),  # type: ignore[attr-defined]
                message.getHFBody("from").getTag(),  # type: ignore[attr-defined]
                message.getHFBody("to").getTag(),  # type: ignore[attr-defined]
                str(message.getHFBody("call-id")),  # type: ignore[attr-defined]
                cseq.getCSeqNum(), cseq.getCSeqMethod(),
                0 if body is None else len(str(body)))

    def serializer(data: bytes) -> Callable[[], object]:
        message = load(data)
        read(data)
        return message.__str__

    return read, serializer


def ours_serializer(data: bytes) -> Callable[[], object]:
    """The encode of a parsed message whose fields were read."""
    message = parse(data)
    ours_read(data)
    assert isinstance(message, Request | Response)
    return message.encode


def timed(func: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Run ``func`` in batches for about ``seconds``; (operations, elapsed seconds)."""
    batch = 50
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


def round_rates(funcs: list[Callable[[], object]], seconds: float, slices: int,
                shift: int) -> list[float]:
    """ops/s of each function over one round of short slices, rotating the order per slice."""
    ops = [0] * len(funcs)
    elapsed = [0.0] * len(funcs)
    for index in range(slices):
        for offset in range(len(funcs)):
            side = (index + shift + offset) % len(funcs)
            done, spent = timed(funcs[side], seconds / slices)
            ops[side] += done
            elapsed[side] += spent
    return [o / e for o, e in zip(ops, elapsed, strict=True)]


def check(name: str, parser: Parser) -> None:
    """A parser must read the same values as ours, or the comparison means nothing."""
    for data, expected in EXPECTED.items():
        got = parser(data)
        if got != expected:
            raise SystemExit(f"{name} reads {got!r}, expected {expected!r}")


def main() -> None:
    """Run the interleaved rounds and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="time per parser per workload per round, in 10 slices (default 0.5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args()

    peers: dict[str, tuple[Parser, Callable[[bytes], Callable[[], object]] | None]] = {}
    pyvoip = make_pyvoip()
    if pyvoip is not None:
        peers["pyVoIP"] = (pyvoip, None)
    sippy = make_sippy()
    if sippy is not None:
        peers["sippy"] = sippy
    check("sipua", ours_read)
    for name, (read, _) in peers.items():
        check(name, read)
    for data in (INVITE, OK):
        if parse(ours_serializer(data)()).encode() != data:  # type: ignore[arg-type]
            raise SystemExit("our serializer does not round-trip")

    names = ["sipua", *peers]
    workloads: list[tuple[str, dict[str, Callable[[], object]]]] = []
    for label, data in (("parse INVITE+SDP", INVITE), ("parse 200 OK", OK)):
        funcs: dict[str, Callable[[], object]] = {
            "sipua": lambda data=data: ours_read(data)}  # type: ignore[misc]
        for name, (read, _) in peers.items():
            funcs[name] = lambda data=data, read=read: read(data)  # type: ignore[misc]
        workloads.append((label, funcs))
    for label, data in (("serialize INVITE+SDP", INVITE), ("serialize 200 OK", OK)):
        funcs = {"sipua": ours_serializer(data)}
        for name, (_, serializer) in peers.items():
            if serializer is not None:
                funcs[name] = serializer(data)
        workloads.append((label, funcs))

    results: dict[str, dict[str, list[float]]] = {
        label: {name: [] for name in funcs} for label, funcs in workloads}
    for round_no in range(args.rounds):
        for label, funcs in workloads:
            order = list(funcs)
            rates = round_rates([funcs[n] for n in order], args.seconds, 10, round_no)
            for name, rate in zip(order, rates, strict=True):
                results[label][name].append(rate)

    print(f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.seconds} s per parser"
          " per workload, medians over rounds; ratio = sipua / fastest peer")
    header = f"{'workload':<22}" + "".join(f" {n + ' ops/s':>14}" for n in names)
    print(header + f" {'ratio':>7} {'worst round':>12}")
    for label, funcs in workloads:
        cells = []
        for name in names:
            found = results[label].get(name)
            cells.append(f" {statistics.median(found):>14,.0f}" if found else f" {'n/a':>14}")
        peer_names = [n for n in funcs if n != "sipua"]
        ratio_text = ""
        if peer_names:
            ratios = [ours / max(results[label][n][i] for n in peer_names)
                      for i, ours in enumerate(results[label]["sipua"])]
            ratio_text = f" {statistics.median(ratios):>6.2f}x {min(ratios):>11.2f}x"
        print(f"{label:<22}" + "".join(cells) + ratio_text)


if __name__ == "__main__":
    main()
