"""Load: registrations and concurrent calls through the embedded registrar, under junk traffic.

The embedded registrar/proxy (:class:`sipua.registrar_server.RegistrarServer`, UDP on
127.0.0.1) runs in a child process of its own, so that its memory and CPU are measured apart
from the user agents'; a second child sends junk datagrams at the registrar at a fixed rate for
the whole run. This process runs ``--hosts`` user agents on the real reactor:

1. registrations: ``--registrations`` accounts (users ``u0000``, ``u0001``, ... in a users file,
   digest authentication on every REGISTER) spread round-robin over the user agents: each agent
   registers its own account through :meth:`UserAgent.register` and the others through one
   more :class:`~sipua.account.RegistrationClient` on its SIP transport (one process per account
   would not fit a shared 2-core machine); at most ``--window`` REGISTERs are in flight;
2. calls: the first half of the agents call accounts registered on the second half through the
   registrar (``sip:uNNNN@load.test``, the registrar rewrites to the binding and Record-Routes);
   the callees auto-answer; ICE host candidates on 127.0.0.1 and a PCMU tone both ways on every
   call; ``--calls`` are set up (at most ``--window`` at a time), held together for ``--hold``
   seconds, then hung up.

Printed: registration rate and p50/p99 latency (REGISTER out to 200, challenge included), call
setup count and p50/p99 (INVITE out to 200; and to first RTP), RSS before/after and CPU seconds
of the registrar and of the user agents, junk datagrams sent (and the rate reached) against what
the registrar counted as parse errors, 400 answers, drops and 503s.

    python3 bench/load.py [--registrations 1000] [--calls 200] [--junk-pps 5000] [--json]

Loopback only: the flooder refuses any destination that is not 127.0.0.1 or ::1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402

DOMAIN = "load.test"
LOOPBACK = ("127.0.0.1", "::1")
JUNK_KINDS = ("junk", "badsip", "options", "invite", "register", "stun", "rtp")
#: What the load run sends at the registrar: garbage and broken SIP (answered 400 or dropped),
#: and valid-looking OPTIONS and REGISTERs from one socket (transactions, then 503s).
LOAD_JUNK = ("junk", "badsip", "options", "register")


# --- measuring a process ---------------------------------------------------------------------

def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process, KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank, None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- junk ------------------------------------------------------------------------------------

def _sip(method: str, user: str, extra: str = "") -> bytes:
    """A valid-looking request template; %(n)d makes branch, tag and Call-ID unique."""
    return (f"{method} sip:{user}@{DOMAIN} SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKj%(n)d;rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:junk@{DOMAIN}>;tag=j%(n)d\r\n"
            f"To: <sip:{user}@{DOMAIN}>\r\n"
            "Call-ID: junk-%(n)d\r\n"
            f"CSeq: 1 {method}\r\n"
            "Contact: <sip:junk@127.0.0.1:9>\r\n"
            f"{extra}Content-Length: 0\r\n\r\n").encode()


def junk_stream(kinds: Sequence[str], seed: int) -> Iterator[bytes]:
    """Datagrams of ``kinds`` in turn, each SIP request with its own branch and Call-ID."""
    from ice.stun import Attr, Message, MessageClass, Method
    from media.rtp import encode_rtp

    unknown = [k for k in kinds if k not in JUNK_KINDS]
    if unknown or not kinds:
        raise ValueError(f"junk kinds are {', '.join(JUNK_KINDS)}")
    rng = random.Random(seed)
    templates = {
        "options": _sip("OPTIONS", "nobody%(n)d"),
        "invite": _sip("INVITE", "nobody%(n)d"),
        "register": _sip("REGISTER", "u%(n)d", "Expires: 600\r\n"),
        "badsip": (b"INVITE sip:x@" + DOMAIN.encode() + b" SIP/2.0\r\nVia: %%%%(n)d\r\n"
                   b"From: <>\r\nTo: ;;\r\nCall-ID: bad-%(n)d\r\nCSeq: x\r\n\r\n"),
    }
    stun_pool = [Message(Method.BINDING, MessageClass.REQUEST, rng.randbytes(12), {
        Attr.USERNAME: f"{rng.getrandbits(32):08x}:{rng.getrandbits(32):08x}",
        Attr.PRIORITY: 1}).encode(fingerprint=True) for _ in range(512)]
    rtp_pool = [encode_rtp(0, rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32),
                           rng.randbytes(160), False) for _ in range(512)]
    junk_pool = [rng.randbytes(rng.randint(1, 400)) for _ in range(512)]
    n = 0
    while True:
        for kind in kinds:
            n += 1
            if kind in templates:
                yield templates[kind] % {b"n": n}
            elif kind == "stun":
                yield stun_pool[n % 512]
            elif kind == "rtp":
                yield rtp_pool[n % 512]
            else:
                yield junk_pool[n % 512]


def _check_loopback(host: str) -> None:
    if host not in LOOPBACK:
        raise ValueError(f"the flooder sends to 127.0.0.1 or ::1 only, not {host}")


@dataclass(frozen=True)
class FloodTarget:
    """Where junk goes and which kinds."""

    host: str
    port: int
    kinds: tuple[str, ...]


def flood(targets: Sequence[FloodTarget], pps: float, seconds: float, seed: int = 1,
          stop: Callable[[], bool] = lambda: False) -> dict[str, float]:
    """Send junk at ``pps`` datagrams per second (all targets together) for ``seconds`` or
    until ``stop()``; blocking. Returns what was sent and the rate reached."""
    for target in targets:
        _check_loopback(target.host)
    streams = [(target, junk_stream(target.kinds, seed + i)) for i, target in enumerate(targets)]
    socks = {family: socket.socket(family, socket.SOCK_DGRAM)
             for family in {socket.AF_INET6 if ":" in t.host else socket.AF_INET
                            for t in targets}}
    sent = errors = 0
    start = time.perf_counter()
    elapsed = 0.0
    try:
        while elapsed < seconds and not stop():
            due = int(elapsed * pps) + 1
            while sent + errors < due:
                target, stream = streams[(sent + errors) % len(streams)]
                sock = socks[socket.AF_INET6 if ":" in target.host else socket.AF_INET]
                try:
                    sock.sendto(next(stream), (target.host, target.port))
                    sent += 1
                except OSError:
                    errors += 1
            time.sleep(0.001)
            elapsed = time.perf_counter() - start
    finally:
        for sock in socks.values():
            sock.close()
    return {"sent": sent, "errors": errors, "seconds": elapsed,
            "pps": sent / elapsed if elapsed > 0 else 0.0}


class Flooder:
    """:func:`flood` in a child process (its own core, no GIL shared with the reactor)."""

    def __init__(self, targets: Sequence[FloodTarget], pps: float, seconds: float,
                 seed: int = 1) -> None:
        for target in targets:
            _check_loopback(target.host)
        spec = json.dumps({"targets": [[t.host, t.port, list(t.kinds)] for t in targets],
                           "pps": pps, "seconds": seconds, "seed": seed})
        self.proc = subprocess.Popen([sys.executable, __file__, "--flood-child", spec],
                                     stdout=subprocess.PIPE, text=True)

    def result(self, *, stop: bool = True) -> dict[str, float]:
        """Stop the flood (or wait for its end) and return :func:`flood`'s figures."""
        if stop and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return dict(json.loads(out.strip().splitlines()[-1]))


def _flood_child(spec_text: str) -> None:
    spec = json.loads(spec_text)
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    targets = [FloodTarget(h, int(p), tuple(k)) for h, p, k in spec["targets"]]
    result = flood(targets, float(spec["pps"]), float(spec["seconds"]), int(spec["seed"]),
                   stop=lambda: stopping[0])
    print(json.dumps(result), flush=True)


# --- the registrar child ---------------------------------------------------------------------

def _registrar_child(users_file: str, state_file: str) -> None:
    """Run RegistrarServer on 127.0.0.1 (UDP, any port); write its figures to ``state_file``
    every 0.2 s until SIGTERM."""
    from twisted.internet import reactor as global_reactor

    from sipua.registrar import RegistrarSettings
    from sipua.registrar_server import RegistrarServer, load_users
    from sipua.transport import TransportSettings

    reactor: Any = global_reactor
    server = RegistrarServer(RegistrarSettings(domain=DOMAIN), load_users(users_file),
                             TransportSettings(host="127.0.0.1", port=0, transports=("udp",)),
                             reactor=reactor)
    server.start()

    def write() -> None:
        t = server.transport
        stats = t.layer.stats
        state = {
            "port": server.addresses()["udp"][1], "rss_kib": rss_kib(),
            "cpu_s": cpu_seconds(),
            "bindings": sum(len(b) for b in server.core._bindings.values()),
            "aors": len(server.core._bindings),
            "transactions": len(t.layer.transactions()),
            "parse_errors": t.stats.parse_errors, "error_responses": t.stats.error_responses,
            "dropped": t.stats.dropped, "overload_rejected": stats.overload_rejected,
            "overload_failed": stats.overload_failed, "malformed": stats.malformed,
            "absorbed_requests": stats.absorbed_requests,
        }
        tmp = state_file + ".tmp"
        Path(tmp).write_text(json.dumps(state))
        os.replace(tmp, state_file)

    loop = task.LoopingCall(write)
    loop.start(0.2)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()


class RegistrarProcess:
    """The registrar child: start, read its figures, stop."""

    def __init__(self, users: dict[str, str], workdir: Path) -> None:
        users_file = workdir / "users.txt"
        users_file.write_text("".join(f"{u}:{p}\n" for u, p in users.items()))
        self.state_file = workdir / "registrar.json"
        self.proc = subprocess.Popen([sys.executable, __file__, "--registrar-child",
                                      str(users_file), str(self.state_file)])

    def state(self) -> dict[str, Any]:
        """The latest figures the child wrote."""
        return dict(json.loads(self.state_file.read_text()))

    async def ready(self, reactor: Any, timeout: float = 20.0) -> dict[str, Any]:
        """Wait for the first figures (the child listens by then)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state_file.exists():
                return self.state()
            if self.proc.poll() is not None:
                raise RuntimeError("the registrar child exited")
            await task.deferLater(reactor, 0.05, lambda: None)
        raise RuntimeError("the registrar child did not start")

    async def settled(self, reactor: Any) -> dict[str, Any]:
        """Figures written after this call (waits one write period)."""
        await task.deferLater(reactor, 0.45, lambda: None)
        return self.state()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class KamailioProcess:
    """Kamailio (Debian package) as the registrar/proxy, for the side-by-side run: the lab's
    config/lab/kamailio.cfg (digest against db_text users, location in memory, Record-Route),
    on 127.0.0.1 and a free UDP port, logging warnings and errors only. Its memory and CPU are
    summed over the main process and its children; it keeps no counters we can read, so the
    junk columns stay empty for it."""

    def __init__(self, users: dict[str, str], workdir: Path) -> None:
        import hashlib
        import shutil

        exe = shutil.which("kamailio") or "/usr/sbin/kamailio"
        if not Path(exe).exists():
            raise RuntimeError("kamailio is not installed (Debian package kamailio)")
        db = workdir / "kamailio-db"
        db.mkdir()
        shutil.copy(ROOT / "config" / "lab" / "kamailio-db" / "version", db / "version")
        rows = ["id(int,auto) username(string) domain(string) password(string) ha1(string) "
                "ha1b(string) "]
        for n, (user, password) in enumerate(users.items(), 1):
            ha1 = hashlib.md5(f"{user}:{DOMAIN}:{password}".encode()).hexdigest()
            ha1b = hashlib.md5(f"{user}@{DOMAIN}:{DOMAIN}:{password}".encode()).hexdigest()
            rows.append(f"{n}:{user}:{DOMAIN}:{password}:{ha1}:{ha1b}")
        (db / "subscriber").write_text("\n".join(rows) + "\n")
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.log = open(workdir / "kamailio.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen([
            exe, "-f", str(ROOT / "config" / "lab" / "kamailio.cfg"), "-DD", "-E",
            "--debug=1", "-l", f"udp:127.0.0.1:{self.port}", "-A", f'DBURL="text://{db}"',
            "-A", f'SIP_DOMAIN="{DOMAIN}"', "-Y", str(workdir), "-P",
            str(workdir / "kamailio.pid"), "-w", str(workdir), "-m", "64", "-M", "16"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def _pids(self) -> list[int]:
        pids = [self.proc.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids

    def state(self) -> dict[str, Any]:
        rss = cpu = 0.0
        for pid in self._pids():
            try:
                rss += rss_kib(pid)
                cpu += cpu_seconds(pid)
            except OSError:
                continue
        return {"port": self.port, "rss_kib": int(rss), "cpu_s": cpu}

    async def ready(self, reactor: Any, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until it answers an OPTIONS."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        here = sock.getsockname()[1]
        options = (f"OPTIONS sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{here};"
                   "branch=z9hG4bKprobe\r\nMax-Forwards: 70\r\nFrom: <sip:probe@load.test>;"
                   "tag=p\r\nTo: <sip:load.test>\r\nCall-ID: probe\r\nCSeq: 1 OPTIONS\r\n"
                   "Content-Length: 0\r\n\r\n").encode()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("kamailio exited; see its log")
                sock.sendto(options, ("127.0.0.1", self.port))
                await task.deferLater(reactor, 0.2, lambda: None)
                try:
                    if sock.recv(4096):
                        return self.state()
                except OSError:
                    continue
        finally:
            sock.close()
        raise RuntimeError("kamailio did not answer")

    async def settled(self, reactor: Any) -> dict[str, Any]:
        return self.state()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --- the load --------------------------------------------------------------------------------

@dataclass
class LoadResult:
    """Every figure of one run."""

    registrations: int
    registered: int = 0
    registration_seconds: float = 0.0
    registration_ms: list[float] = field(default_factory=list)
    calls: int = 0
    answered: int = 0
    media: int = 0
    media_callee: int = 0
    held_together: int = 0
    setup_ms: list[float] = field(default_factory=list)
    media_ms: list[float] = field(default_factory=list)
    call_errors: dict[str, int] = field(default_factory=dict)
    junk_pps_asked: float = 0.0
    junk: dict[str, float] = field(default_factory=dict)
    registrar_before: dict[str, Any] = field(default_factory=dict)
    registrar_after: dict[str, Any] = field(default_factory=dict)
    uas_rss_kib: tuple[int, int] = (0, 0)
    uas_cpu_s: float = 0.0
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The figures as printed (and as --json)."""
        def ms(values: list[float], q: float) -> float | None:
            found = percentile(values, q)
            return None if found is None else round(found, 1)

        before, after = self.registrar_before, self.registrar_after

        def counted(name: str) -> int | None:
            if name not in after:
                return None  # a peer without readable counters
            return int(after[name]) - int(before.get(name, 0))
        return {
            "registrations": {
                "asked": self.registrations, "ok": self.registered,
                "per_second": round(self.registered / self.registration_seconds, 1)
                if self.registration_seconds else None,
                "p50_ms": ms(self.registration_ms, 0.5), "p99_ms": ms(self.registration_ms, 0.99)},
            "calls": {
                "asked": self.calls, "answered": self.answered, "media_flowing": self.media,
                "media_at_callee": self.media_callee,
                "held_together": self.held_together,
                "setup_p50_ms": ms(self.setup_ms, 0.5), "setup_p99_ms": ms(self.setup_ms, 0.99),
                "media_p50_ms": ms(self.media_ms, 0.5), "media_p99_ms": ms(self.media_ms, 0.99),
                "errors": self.call_errors},
            "registrar": {
                "rss_kib_before": before.get("rss_kib"), "rss_kib_after": after.get("rss_kib"),
                "cpu_s": round(after.get("cpu_s", 0.0) - before.get("cpu_s", 0.0), 2),
                "bindings": after.get("bindings"), "transactions_live": after.get("transactions")},
            "user_agents": {"rss_kib_before": self.uas_rss_kib[0],
                            "rss_kib_after": self.uas_rss_kib[1],
                            "cpu_s": round(self.uas_cpu_s, 2)},
            "junk": {
                "pps_asked": self.junk_pps_asked,
                "sent": int(self.junk.get("sent", 0)),
                "pps_reached": round(self.junk.get("pps", 0.0)),
                "parse_errors": counted("parse_errors"),
                "answered_400": counted("error_responses"),
                "dropped": counted("dropped"),
                "answered_503": counted("overload_rejected")},
            "wall_s": round(self.wall_s, 1),
        }


async def run_load(reactor: Any, *, registrations: int = 1000, calls: int = 200,
                   junk_pps: float = 5000.0, hosts: int = 10, window: int = 50,
                   hold: float = 5.0, media: bool = True, seed: int = 1,
                   call_timeout: float = 20.0, server: str = "sipua",
                   progress: Callable[[str], None] = lambda s: None) -> LoadResult:
    """One load run on ``reactor`` (see the module docstring); returns every figure."""
    from media.sinks import NullSink
    from media.sources import Tone
    from sipua.account import RegistrationClient
    from sipua.call import Call, CallOptions
    from sipua.registration import RegistrationSettings
    from sipua.settings import Account, IceConfig, Settings, UaSettings
    from sipua.useragent import UserAgent

    if registrations < hosts:
        hosts = max(2, registrations)
    if hosts < 2:
        raise ValueError("need at least 2 user agents (callers and callees)")
    result = LoadResult(registrations=registrations, calls=calls, junk_pps_asked=junk_pps)
    users = {f"u{k:04d}": f"pw{k:04d}" for k in range(registrations)}
    names = list(users)
    wall = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sipua-load-") as tmp:
        registrar: RegistrarProcess | KamailioProcess = (
            KamailioProcess(users, Path(tmp)) if server == "kamailio"
            else RegistrarProcess(users, Path(tmp)))
        flooder: Flooder | None = None
        uas: list[UserAgent] = []
        extra: list[RegistrationClient] = []
        try:
            state = await registrar.ready(reactor)
            port = int(state["port"])
            where = f"127.0.0.1:{port}"
            progress(f"registrar on {where}, pid {registrar.proc.pid}")
            result.uas_rss_kib = (rss_kib(), 0)
            cpu0 = cpu_seconds()
            ice = IceConfig(candidate_types=("host",), consent_interval=5.0)
            for i in range(hosts):
                user = names[i]
                settings = Settings(
                    ua=UaSettings(listen=("127.0.0.1:0",), transports=("udp",)),
                    accounts=(Account(name=user, uri=f"sip:{user}@{DOMAIN}",
                                      password=users[user], registrar=where),),
                    ice=ice)
                ua = UserAgent(settings, reactor, rng=random.Random(seed * 1000 + i))
                await ua.start()
                uas.append(ua)
            if junk_pps > 0:
                flooder = Flooder([FloodTarget("127.0.0.1", port, LOAD_JUNK)], junk_pps,
                                  3600.0, seed)
            await task.deferLater(reactor, 0.3, lambda: None)
            result.registrar_before = registrar.state()

            # 1. registrations
            clients: dict[int, RegistrationClient] = {}
            semaphore = defer.DeferredSemaphore(window)
            latencies: list[float] = []
            failures: list[str] = []

            async def register_one(k: int) -> None:
                ua = uas[k % hosts]
                user = names[k]
                start = reactor.seconds()
                try:
                    if k < hosts:
                        await ua.register()
                    else:
                        client = clients.get(k % hosts)
                        if client is None:
                            assert ua.transport is not None
                            client = RegistrationClient(ua.transport, reactor=reactor,
                                                        rng=random.Random(seed + k))
                            clients[k % hosts] = client
                            extra.append(client)
                        client.add(RegistrationSettings(
                            aor=f"sip:{user}@{DOMAIN}", password=users[user]), registrar=where)
                        await client.register(f"sip:{user}@{DOMAIN}")
                    latencies.append((reactor.seconds() - start) * 1000)
                except Exception as exc:
                    failures.append(f"{user}: {exc}")

            reg_start = reactor.seconds()
            await defer.DeferredList([
                semaphore.run(register_one, k)
                for k in range(registrations)])
            result.registration_seconds = reactor.seconds() - reg_start
            result.registered = len(latencies)
            result.registration_ms = latencies
            progress(f"{len(latencies)}/{registrations} registered in "
                     f"{result.registration_seconds:.1f} s" +
                     (f"; first failure: {failures[0]}" if failures else ""))

            # 2. calls: the first half of the agents call accounts of the second half
            callers, callees = uas[:hosts // 2], uas[hosts // 2:]
            for ua in callees:
                ua.auto_answer(source=(lambda: Tone(660.0)) if media else None,
                               sink=lambda call: NullSink())
            targets = [names[k] for k in range(registrations) if k % hosts >= hosts // 2]
            live: list[Call] = []
            errors: dict[str, int] = {}
            call_window = defer.DeferredSemaphore(window)

            async def call_one(i: int) -> None:
                caller = callers[i % len(callers)]
                target = targets[i % len(targets)]
                start = reactor.seconds()
                try:
                    call = await caller.call(f"sip:{target}@{DOMAIN}",
                                             source=Tone(440.0) if media else None,
                                             sink=NullSink(), options=CallOptions())
                    live.append(call)
                    await call.answered().addTimeout(call_timeout, reactor)
                    result.answered += 1
                    result.setup_ms.append((reactor.seconds() - start) * 1000)
                    if media:
                        await call.media_flowing(timeout=call_timeout)
                        result.media += 1
                        result.media_ms.append((reactor.seconds() - start) * 1000)
                except Exception as exc:
                    key = type(exc).__name__ + (f" {exc}"[:60] if str(exc) else "")
                    errors[key] = errors.get(key, 0) + 1

            await defer.DeferredList([
                call_window.run(call_one, i)
                for i in range(calls)])
            result.call_errors = errors
            result.held_together = sum(1 for c in live if c.active)
            progress(f"{result.answered}/{calls} answered, {result.media} with media, "
                     f"{result.held_together} up together; holding {hold:g} s")
            await task.deferLater(reactor, hold, lambda: None)
            result.held_together = min(result.held_together,
                                       sum(1 for c in live if c.active))
            if media:
                for ua in callees:
                    for other in list(ua.calls.values()):
                        try:
                            await other.media_flowing(timeout=0.5)
                            result.media_callee += 1
                        except Exception:
                            pass
            result.registrar_after = await registrar.settled(reactor)
            ends = [c.hangup() for c in live if c.active]
            if ends:
                await defer.DeferredList(ends, consumeErrors=True)
            if flooder is not None:
                result.junk = flooder.result()
                flooder = None
            result.uas_cpu_s = cpu_seconds() - cpu0
            result.uas_rss_kib = (result.uas_rss_kib[0], rss_kib())
        finally:
            if flooder is not None:
                flooder.result()
            for client in extra:
                client.close()
            for ua in uas:
                ua.auto_answer(code=486)
            stops = [ua.stop() for ua in uas]
            if stops:
                await defer.DeferredList(stops, consumeErrors=True)
            registrar.stop()
    result.wall_s = time.monotonic() - wall
    return result


def _print(summary: dict[str, Any]) -> None:
    r, c = summary["registrations"], summary["calls"]
    g, u, j = summary["registrar"], summary["user_agents"], summary["junk"]
    print(f"registrations: {r['ok']}/{r['asked']} at {r['per_second']} /s, "
          f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms (REGISTER out -> 200, 401 included)")
    print(f"calls: {c['answered']}/{c['asked']} answered, RTP received by {c['media_flowing']} "
          f"callers and {c['media_at_callee']} callees, {c['held_together']} up together; "
          f"setup p50 {c['setup_p50_ms']} ms, p99 "
          f"{c['setup_p99_ms']} ms; first RTP p50 {c['media_p50_ms']} ms, p99 "
          f"{c['media_p99_ms']} ms")
    if c["errors"]:
        print(f"  call errors: {c['errors']}")
    print(f"registrar: RSS {g['rss_kib_before']} -> {g['rss_kib_after']} KiB, CPU {g['cpu_s']} "
          f"s, {g['bindings']} bindings, {g['transactions_live']} transactions live")
    print(f"user agents: RSS {u['rss_kib_before']} -> {u['rss_kib_after']} KiB, CPU "
          f"{u['cpu_s']} s")
    print(f"junk: {j['sent']} sent ({j['pps_reached']}/s of {j['pps_asked']:g}/s asked); "
          f"registrar: {j['parse_errors']} parse errors, {j['answered_400']} answered 400, "
          f"{j['dropped']} dropped, {j['answered_503']} answered 503")
    print(f"wall time {summary['wall_s']} s")


def _side_by_side(ours: dict[str, Any], peer: dict[str, Any], name: str) -> None:
    rows = [
        ("registrations ok", "registrations", "ok"),
        ("registrations per s", "registrations", "per_second"),
        ("registration p50 ms", "registrations", "p50_ms"),
        ("registration p99 ms", "registrations", "p99_ms"),
        ("calls answered", "calls", "answered"),
        ("calls with RTP at caller", "calls", "media_flowing"),
        ("calls with RTP at callee", "calls", "media_at_callee"),
        ("setup p50 ms", "calls", "setup_p50_ms"),
        ("setup p99 ms", "calls", "setup_p99_ms"),
        ("registrar RSS before KiB", "registrar", "rss_kib_before"),
        ("registrar RSS after KiB", "registrar", "rss_kib_after"),
        ("registrar CPU s", "registrar", "cpu_s"),
        ("junk sent", "junk", "sent"),
    ]
    print(f"\n{'':28} {'sipua':>12} {name:>12} {'ratio':>8}")
    for label, section, key in rows:
        a, b = ours[section].get(key), peer[section].get(key)
        ratio = f"{a / b:.2f}" if isinstance(a, int | float) and isinstance(b, int | float) \
            and b else "-"
        print(f"{label:28} {a!s:>12} {b!s:>12} {ratio:>8}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--registrations", type=int, default=1000)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--junk-pps", type=float, default=5000.0,
                   help="junk datagrams per second at the registrar (0: none)")
    p.add_argument("--hosts", type=int, default=10, help="user agents carrying the accounts")
    p.add_argument("--window", type=int, default=50, help="REGISTERs / call setups in flight")
    p.add_argument("--hold", type=float, default=5.0, help="seconds the calls stay up together")
    p.add_argument("--no-media", action="store_true", help="calls without RTP")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peer", choices=["kamailio"], default=None,
                   help="run the same load against Kamailio as registrar too, side by side")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--flood-child", help=argparse.SUPPRESS)
    p.add_argument("--registrar-child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.flood_child:
        _flood_child(args.flood_child)
        return 0
    if args.registrar_child:
        _registrar_child(*args.registrar_child)
        return 0

    async def go(reactor: Any) -> None:
        summaries: dict[str, dict[str, Any]] = {}
        for server in ["sipua"] + ([args.peer] if args.peer else []):
            def show(text: str, who: str = server) -> None:
                if not args.json:
                    print(f"... {who}: {text}", file=sys.stderr, flush=True)

            result = await run_load(
                reactor, registrations=args.registrations, calls=args.calls,
                junk_pps=args.junk_pps, hosts=args.hosts, window=args.window, hold=args.hold,
                media=not args.no_media, seed=args.seed, server=server,
                progress=show)
            summaries[server] = result.summary()
            if not args.json:
                print(f"== {server} as registrar")
                _print(summaries[server])
        if args.json:
            print(json.dumps(summaries if args.peer else summaries["sipua"]))
        elif args.peer:
            _side_by_side(summaries["sipua"], summaries[args.peer], args.peer)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(go(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
