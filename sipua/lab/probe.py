"""Plain UDP probes that run inside lab hosts, and the driver that talks to them.

Run in a host (``python3 -m sipua.lab.probe MODE ...``), a probe prints one JSON object per line:

* ``endpoint --port P [--reflect]``: a UDP socket driven by stdin lines ``send HOST:PORT [TEXT]``,
  ``burst HOST:PORT COUNT INTERVAL_S``, ``stats``, ``quit``; prints ``ready``, ``recv`` (with the
  sender) and ``stats`` events. ``--reflect`` answers every datagram with what it saw:
  ``{"seen": "IP:PORT", "echo": TEXT}``, which is how a host learns its public mapping.
* ``stun --server HOST:PORT``: one STUN Binding request (RFC 8489 §6), prints the mapped address.
* ``turn --server HOST:PORT --user U --password P``: one TURN Allocate with long-term credentials
  (RFC 8656 §7.2, RFC 8489 §9.2), prints the relayed address or the error code.
* ``register --registrar HOST:PORT --user U --password P``: a SIP REGISTER, answering a digest
  challenge (RFC 3261 §22.4, RFC 2617 qop=auth) once, prints every status code received.

The STUN and SIP messages are built by hand here, on purpose independent of the project's own
stacks, so that the lab can be checked before (and separately from) them.

The driver side, :class:`Endpoint`, starts an endpoint probe through a :class:`~sipua.lab.lab.Lab`
and reads its events with timeouts.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sipua.lab.lab import Lab

MAGIC_COOKIE = 0x2112A442


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _fmt(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


# ---------------------------------------------------------------------- endpoint


def _endpoint(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.bind, args.port))
    _emit("ready", local=_fmt(sock.getsockname()))
    received = sent = 0
    seq = 0
    deadline = time.monotonic() + args.duration if args.duration else None
    stdin_open = True
    pending = b""
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if timeout == 0.0:
            break
        fds: list[Any] = [sock, sys.stdin] if stdin_open else [sock]
        readable, _, _ = select.select(fds, [], [], timeout)
        if sock in readable:
            data, src = sock.recvfrom(65535)
            received += 1
            now = time.monotonic()
            text = data.decode(errors="replace")
            event: dict[str, Any] = {"from": _fmt(src), "data": text}
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            if isinstance(body, dict):
                event["seen"] = body.get("seen")
                echo = body.get("echo")
                if isinstance(echo, str):
                    try:
                        sent_at = json.loads(echo).get("t")
                        event["rtt_ms"] = round((now - float(sent_at)) * 1000, 3)
                    except (ValueError, AttributeError, TypeError):
                        pass
            if not args.quiet:
                _emit("recv", **event)
            if args.reflect:
                reply = json.dumps({"seen": _fmt(src), "echo": text}).encode()
                sock.sendto(reply, src)
                sent += 1
        lines: list[str] = []
        if stdin_open and sys.stdin in readable:
            chunk = os.read(sys.stdin.fileno(), 65536)
            if not chunk:
                stdin_open = False
                if deadline is None:
                    break
            pending += chunk
            *complete, rest = pending.split(b"\n")
            pending = rest
            lines = [c.decode() for c in complete]
        for line in lines:
            words = line.split()
            if not words:
                continue
            cmd = words[0]
            if cmd == "quit":
                _emit("stats", received=received, sent=sent)
                return 0
            if cmd == "stats":
                _emit("stats", received=received, sent=sent)
            elif cmd == "send":
                dest = _addr(words[1])
                seq += 1
                text = " ".join(words[2:]) or json.dumps({"seq": seq, "t": time.monotonic()})
                sock.sendto(text.encode(), dest)
                sent += 1
                _emit("sent", to=_fmt(dest), seq=seq)
            elif cmd == "burst":
                dest, count, interval = _addr(words[1]), int(words[2]), float(words[3])
                start = time.monotonic()
                for i in range(count):
                    seq += 1
                    payload = json.dumps({"seq": seq, "t": time.monotonic()})
                    sock.sendto(payload.encode(), dest)
                    sent += 1
                    pause = start + (i + 1) * interval - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                _emit("burst-done", to=_fmt(dest), count=count)
            else:
                _emit("error", message=f"unknown command {cmd!r}")
    _emit("stats", received=received, sent=sent)
    return 0


# ---------------------------------------------------------------------- STUN / TURN


def _stun_attrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    pos = 20
    while pos + 4 <= len(data):
        atype, alen = struct.unpack_from("!HH", data, pos)
        attrs.setdefault(atype, data[pos + 4 : pos + 4 + alen])
        pos += 4 + alen + (-alen % 4)
    return attrs


def _xor_address(value: bytes) -> str:
    port = struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    ip = struct.unpack_from("!I", value, 4)[0] ^ MAGIC_COOKIE
    return f"{socket.inet_ntoa(struct.pack('!I', ip))}:{port}"


def _stun_message(mtype: int, tid: bytes, attrs: list[tuple[int, bytes]],
                  key: bytes | None = None) -> bytes:
    body = b""
    for atype, value in attrs:
        body += struct.pack("!HH", atype, len(value)) + value + b"\0" * (-len(value) % 4)
    if key is not None:  # MESSAGE-INTEGRITY over the message with its length (RFC 8489 §14.5)
        head = struct.pack("!HHI", mtype, len(body) + 24, MAGIC_COOKIE) + tid
        mac = hmac.new(key, head + body, hashlib.sha1).digest()
        body += struct.pack("!HH", 0x0008, 20) + mac
    head = struct.pack("!HHI", mtype, len(body) + 8, MAGIC_COOKIE) + tid
    crc = zlib.crc32(head + body) ^ 0x5354554E  # FINGERPRINT (RFC 8489 §14.7)
    return head + body + struct.pack("!HHI", 0x8028, 4, crc)


def _stun_transact(sock: socket.socket, server: tuple[str, int], msg: bytes,
                   tid: bytes) -> bytes | None:
    rto = 0.25
    for _ in range(6):  # RFC 8489 §6.2.1 style retransmissions, shortened for the lab
        sock.sendto(msg, server)
        sock.settimeout(rto)
        try:
            while True:
                data, _src = sock.recvfrom(2048)
                if len(data) >= 20 and data[8:20] == tid:
                    return data
        except TimeoutError:
            rto *= 2
    return None


def _error_code(attrs: dict[int, bytes]) -> int | None:
    value = attrs.get(0x0009)
    return value[2] * 100 + value[3] if value else None


def _stun(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    tid = os.urandom(12)
    reply = _stun_transact(sock, _addr(args.server), _stun_message(0x0001, tid, []), tid)
    if reply is None:
        _emit("stun", ok=False, error="timeout")
        return 1
    attrs = _stun_attrs(reply)
    mapped = _xor_address(attrs[0x0020]) if 0x0020 in attrs else None
    _emit("stun", ok=mapped is not None, mapped=mapped, local=_fmt(sock.getsockname()),
          type=struct.unpack_from("!H", reply)[0])
    return 0 if mapped else 1


def _turn(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    server = _addr(args.server)
    transport = [(0x0019, bytes([17, 0, 0, 0]))]  # REQUESTED-TRANSPORT: UDP
    tid = os.urandom(12)
    reply = _stun_transact(sock, server, _stun_message(0x0003, tid, transport), tid)
    if reply is None:
        _emit("turn", ok=False, error="timeout")
        return 1
    attrs = _stun_attrs(reply)
    realm, nonce = attrs.get(0x0014, b""), attrs.get(0x0015, b"")
    key = hashlib.md5(f"{args.user}:{realm.decode()}:{args.password}".encode()).digest()
    tid = os.urandom(12)
    creds = [(0x0006, args.user.encode()), (0x0014, realm), (0x0015, nonce)]
    reply = _stun_transact(sock, server, _stun_message(0x0003, tid, transport + creds, key), tid)
    if reply is None:
        _emit("turn", ok=False, error="timeout")
        return 1
    attrs = _stun_attrs(reply)
    mtype = struct.unpack_from("!H", reply)[0]
    ok = mtype == 0x0103
    _emit("turn", ok=ok, error_code=_error_code(attrs),
          relayed=_xor_address(attrs[0x0016]) if 0x0016 in attrs else None,
          mapped=_xor_address(attrs[0x0020]) if 0x0020 in attrs else None)
    return 0 if ok else 1


# ---------------------------------------------------------------------- SIP REGISTER


def _sip_params(header: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in header.split(" ", 1)[1].split(","):
        key, _, value = part.strip().partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return params


def _register(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    registrar = _addr(args.registrar)
    local = sock.getsockname()
    local_ip = args.contact_ip or _route_source(registrar)
    call_id = os.urandom(8).hex()
    tag = os.urandom(4).hex()
    aor = f"sip:{args.user}@{args.domain}"
    statuses: list[int] = []
    authorization = ""
    for cseq in (1, 2):
        branch = "z9hG4bK" + os.urandom(6).hex()
        msg = (
            f"REGISTER sip:{args.domain} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local_ip}:{local[1]};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <{aor}>;tag={tag}\r\nTo: <{aor}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
            f"Contact: <sip:{args.user}@{local_ip}:{local[1]}>\r\nExpires: {args.expires}\r\n"
            f"{authorization}User-Agent: sipua-lab-probe\r\nContent-Length: 0\r\n\r\n"
        )
        response = _sip_transact(sock, registrar, msg.encode(), branch)
        if response is None:
            _emit("register", ok=False, statuses=statuses, error="timeout")
            return 1
        status = int(response.split(" ", 2)[1])
        statuses.append(status)
        if status not in (401, 407) or cseq == 2:
            break
        name = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
        challenge = next(
            line.split(":", 1)[1].strip() for line in response.split("\r\n")
            if line.lower().startswith(name.lower() + ":")
        )
        authorization = _digest(challenge, args.user, args.password, f"sip:{args.domain}",
                                "Authorization" if status == 401 else "Proxy-Authorization")
    ok = statuses[-1] == 200
    _emit("register", ok=ok, statuses=statuses, status=statuses[-1])
    return 0 if ok else 1


def _digest(challenge: str, user: str, password: str, uri: str, header: str) -> str:
    p = _sip_params(challenge)
    realm, nonce = p["realm"], p["nonce"]

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"REGISTER:{uri}")
    fields = f'username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5'
    if "auth" in p.get("qop", "").split(","):
        cnonce, nc = os.urandom(8).hex(), "00000001"
        response = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        fields += f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    if "opaque" in p:
        fields += f', opaque="{p["opaque"]}"'
    return f'{header}: Digest {fields}, response="{response}"\r\n'


def _sip_transact(sock: socket.socket, dest: tuple[str, int], msg: bytes,
                  branch: str) -> str | None:
    t1 = 0.5
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:
        sock.sendto(msg, dest)
        sock.settimeout(t1)
        try:
            while True:
                data, _src = sock.recvfrom(65535)
                text = data.decode(errors="replace")
                if branch in text and text.startswith("SIP/2.0 ") and text[8] != "1":
                    return text
        except TimeoutError:
            t1 = min(t1 * 2, 4.0)
    return None


def _route_source(dest: tuple[str, int]) -> str:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(dest)
        return str(probe.getsockname()[0])
    finally:
        probe.close()


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Entry point inside a lab host."""
    parser = argparse.ArgumentParser(prog="sipua.lab.probe")
    sub = parser.add_subparsers(dest="mode", required=True)
    ep = sub.add_parser("endpoint")
    ep.add_argument("--port", type=int, default=0)
    ep.add_argument("--bind", default="0.0.0.0")
    ep.add_argument("--reflect", action="store_true")
    ep.add_argument("--quiet", action="store_true")
    ep.add_argument("--duration", type=float, default=0.0)
    st = sub.add_parser("stun")
    st.add_argument("--server", required=True)
    st.add_argument("--port", type=int, default=0)
    tu = sub.add_parser("turn")
    tu.add_argument("--server", required=True)
    tu.add_argument("--port", type=int, default=0)
    tu.add_argument("--user", required=True)
    tu.add_argument("--password", required=True)
    rg = sub.add_parser("register")
    rg.add_argument("--registrar", required=True)
    rg.add_argument("--domain", default="lab.test")
    rg.add_argument("--user", required=True)
    rg.add_argument("--password", required=True)
    rg.add_argument("--port", type=int, default=0)
    rg.add_argument("--expires", type=int, default=60)
    rg.add_argument("--contact-ip", default=None)
    args = parser.parse_args(argv)
    modes = {"endpoint": _endpoint, "stun": _stun, "turn": _turn, "register": _register}
    return modes[args.mode](args)


# ---------------------------------------------------------------------- driver side


def probe_argv(*args: str) -> list[str]:
    """The command line of a probe, for :meth:`Lab.run` / :meth:`Lab.popen`."""
    return [sys.executable, "-m", "sipua.lab.probe", *args]


def run_probe(lab: Lab, host: str, *args: str, timeout: float = 20.0) -> dict[str, Any]:
    """Run a one-shot probe (``stun``, ``turn``, ``register``) in ``host``; its last event."""
    proc = lab.run(host, probe_argv(*args), capture_output=True, text=True, timeout=timeout)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(f"probe {args[0]} in {host} printed nothing: {proc.stderr.strip()}")
    result: dict[str, Any] = lines[-1]
    return result


class Endpoint:
    """A UDP endpoint probe running in a lab host, driven from the test process.

    ``send`` and ``burst`` write commands; ``expect`` waits for the next matching event.
    """

    def __init__(self, lab: Lab, host: str, port: int = 0, *, reflect: bool = False,
                 quiet: bool = False) -> None:
        args = ["endpoint", "--port", str(port)]
        args += ["--reflect"] if reflect else []
        args += ["--quiet"] if quiet else []
        self.host = host
        self._proc = lab.popen(host, probe_argv(*args), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               bufsize=1)
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        ready = self.expect("ready", timeout=10.0)
        self.local: str = ready["local"]
        self.port = int(self.local.rsplit(":", 1)[1])

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("{"):
                self._events.put(json.loads(line))
        self._events.put({"event": "exit"})

    def _write(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def send(self, dest: str, text: str = "") -> None:
        """Send one datagram to ``dest`` (``IP:PORT``); the default payload carries a send time."""
        self._write(f"send {dest} {text}".rstrip())
        self.expect("sent")

    def burst(self, dest: str, count: int, interval: float) -> None:
        """Send ``count`` datagrams to ``dest``, ``interval`` seconds apart; waits until done."""
        self._write(f"burst {dest} {count} {interval}")
        self.expect("burst-done", timeout=count * interval + 10.0)

    def stats(self) -> dict[str, Any]:
        """Counters of received and sent datagrams."""
        self._write("stats")
        return self.expect("stats")

    def expect(self, event: str = "recv", timeout: float = 3.0, *, source: str | None = None,
               **match: Any) -> dict[str, Any]:
        """The next event of kind ``event`` (from ``source``, with fields equal to ``match``);
        others are dropped. Raises TimeoutError when none comes in ``timeout`` seconds."""
        if source is not None:
            match["from"] = source
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event} {match or ''} at {self.host} within {timeout}s")
            try:
                ev = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if ev["event"] == "exit" and event != "exit":
                err = self._proc.stderr.read() if self._proc.stderr else ""
                raise RuntimeError(f"endpoint probe at {self.host} exited: {err.strip()}")
            if ev["event"] == event and all(ev.get(k) == v for k, v in match.items()):
                return ev

    def received(self, within: float, *, source: str | None = None) -> list[dict[str, Any]]:
        """Every ``recv`` event (from ``source``) that arrives within ``within`` seconds."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            try:
                got.append(self.expect("recv", timeout=left, source=source))
            except TimeoutError:
                return got

    def close(self) -> None:
        """Stop the probe."""
        if self._proc.poll() is None:
            try:
                self._write("quit")
                self._proc.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
