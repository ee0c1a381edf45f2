"""The NAT lab: build, inspect, use and remove one lab of network namespaces.

A lab named N consists of the namespaces ``N-inet`` (the simulated internet: a bridge),
``N-server``, ``N-a``, ``N-b`` and the NAT routers ``N-nat-a``/``N-nat-b`` (or ``N-nat`` for the
hairpin topology), plus the processes it started (coturn, Kamailio, the delayer). Its state
lives in ``/run/sipua-lab/N/``: ``state.json``, one ``*.pid`` file per process, and the
processes' logs. ``down`` works from that directory and the fixed namespace names alone, so it
also cleans up after a crash. Nothing changes in the root namespace besides ``/run/netns``
handles and that directory.

    with Lab.up("prc-sym", "t1") as lab:
        lab.run("a", ["ping", "-c1", SERVER_ADDRESS])
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from sipua.errors import EnvironmentProblem, UserError
from sipua.lab import nat, netns, servers, topology
from sipua.lab.topology import (
    DEFAULT_NAME,
    INTERNET_GATEWAY,
    INTERNET_PREFIX,
    NAMESPACE_SUFFIXES,
    SERVER_ADDRESS,
    Plan,
)

#: Parent of every lab's state directory.
STATE_ROOT = Path(os.environ.get("SIPUA_LAB_STATE", "/run/sipua-lab"))

#: STUN/TURN server (coturn) in the server host, and its long-term credentials.
STUN_PORT = 3478
TURN_USER = "lab"
TURN_PASSWORD = "labpass"
TURN_REALM = "lab.test"
#: SIP registrar/proxy (Kamailio) in the server host.
SIP_PORT = 5060
SIP_DOMAIN = "lab.test"
#: Registered users and their passwords (config/lab/kamailio-db/subscriber).
SIP_USERS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}

__all__ = [
    "DEFAULT_NAME",
    "SERVER_ADDRESS",
    "SIP_DOMAIN",
    "SIP_PORT",
    "SIP_USERS",
    "STUN_PORT",
    "TURN_PASSWORD",
    "TURN_REALM",
    "TURN_USER",
    "HostInfo",
    "Lab",
    "list_labs",
]


@dataclass(frozen=True)
class HostInfo:
    """What a user of the lab needs to know about one host."""

    #: ``server``, ``a`` or ``b``.
    name: str
    #: Network namespace to run programs in (``ip netns exec``).
    namespace: str
    #: The host's own address (private when behind a NAT).
    address: str
    #: The address the internet sees: its NAT's WAN address, or its own when public.
    public_address: str
    #: ``pub``, ``prc``, ``sym``, ``full`` or ``hairpin``.
    nat: str
    #: Namespace of its NAT router, or None.
    router: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _state_dir(name: str) -> Path:
    return STATE_ROOT / name


def _namespaces(name: str) -> list[str]:
    return [f"{name}-{s}" for s in NAMESPACE_SUFFIXES]


def list_labs() -> list[str]:
    """Names of the labs that have a state directory."""
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.name for p in STATE_ROOT.iterdir() if (p / "state.json").exists())


class Lab:
    """One running lab. Make it with :meth:`up`, find a running one with :meth:`attach`."""

    def __init__(self, name: str, state: dict[str, Any]) -> None:
        self.name = name
        self.state_dir = _state_dir(name)
        self._state = state

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def up(
        cls,
        topology_name: str,
        name: str = DEFAULT_NAME,
        *,
        delay_ms: float = 0,
        jitter_ms: float = 0,
        loss_pct: float = 0,
        udp_timeout: int | None = None,
        overlap: bool = False,
        servers: bool = True,
        reorder_pct: float = 0,
        duplicate_pct: float = 0,
        turn_lifetime: int | None = None,
    ) -> Lab:
        """Build a lab; on any failure, remove what was built and raise.

        ``reorder_pct``/``duplicate_pct``: share of crossing packets held back (so later ones
        overtake them) or sent twice, by the delayer. ``turn_lifetime``: the longest TURN
        allocation lifetime coturn grants (seconds), to see refreshes within a test."""
        topology.validate_name(name)
        the_plan = topology.plan(topology_name, overlap=overlap)
        if delay_ms < 0 or jitter_ms < 0 or not 0 <= loss_pct <= 100:
            raise UserError("delay and jitter must be >= 0 ms, loss between 0 and 100 %")
        if not (0 <= reorder_pct <= 100 and 0 <= duplicate_pct <= 100):
            raise UserError("reorder and duplicate must be between 0 and 100 %")
        if udp_timeout is not None and udp_timeout < 1:
            raise UserError("--udp-timeout must be at least 1 second")
        if turn_lifetime is not None and turn_lifetime < 1:
            raise UserError("--turn-lifetime must be at least 1 second")
        check_environment(delay=bool(delay_ms or jitter_ms or reorder_pct or duplicate_pct),
                          servers=servers)
        state_dir = _state_dir(name)
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        leftovers = [ns for ns in _namespaces(name) if netns.exists(ns)]
        try:
            state_dir.mkdir()
        except FileExistsError:
            raise UserError(
                f"lab {name!r} already exists (sipua lab down --name {name})"
            ) from None
        if leftovers:
            shutil.rmtree(state_dir, ignore_errors=True)
            raise UserError(
                f"namespaces of lab {name!r} are left over ({', '.join(leftovers)}): "
                f"run sipua lab down --name {name}"
            )
        state: dict[str, Any] = {
            "name": name,
            "topology": the_plan.topology,
            "options": {
                "delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss_pct": loss_pct,
                "udp_timeout": udp_timeout, "overlap": overlap, "servers": servers,
                "reorder_pct": reorder_pct, "duplicate_pct": duplicate_pct,
                "turn_lifetime": turn_lifetime,
            },
            "complete": False,
        }
        lab = cls(name, state)
        lab._save()
        try:
            lab._build(the_plan)
            lab._state["complete"] = True
            lab._save()
        except BaseException:
            teardown(name)
            raise
        return lab

    @classmethod
    def attach(cls, name: str = DEFAULT_NAME) -> Lab:
        """The running lab ``name`` (made by this or another process)."""
        topology.validate_name(name)
        path = _state_dir(name) / "state.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(
                f"no lab named {name!r} (sipua lab up TOPOLOGY --name {name})"
            ) from None
        except (OSError, ValueError) as exc:
            raise UserError(f"lab {name!r} has a broken state file {path}: {exc}") from None
        return cls(name, state)

    def down(self) -> None:
        """Stop every process and remove every namespace of this lab."""
        teardown(self.name)

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # ------------------------------------------------------------------ inspection

    @property
    def topology(self) -> str:
        """The topology it was built with (``prc-sym``, ``hairpin``, ...)."""
        return str(self._state["topology"])

    @property
    def options(self) -> dict[str, Any]:
        """The options it was built with."""
        return dict(self._state["options"])

    @property
    def hosts(self) -> dict[str, HostInfo]:
        """``server``, ``a`` and ``b`` with their namespaces and addresses."""
        return {k: HostInfo(**v) for k, v in self._state.get("hosts", {}).items()}

    def namespace(self, host: str) -> str:
        """The namespace of ``host`` (a host name, or a router/internet suffix such as
        ``nat-a`` or ``inet``)."""
        hosts = self._state.get("hosts", {})
        if host in hosts:
            return str(hosts[host]["namespace"])
        if host in NAMESPACE_SUFFIXES and netns.exists(f"{self.name}-{host}"):
            return f"{self.name}-{host}"
        known = sorted({*hosts, *self._state.get("routers", {}), "inet"})
        raise UserError(f"lab {self.name!r} has no host {host!r} (hosts: {', '.join(known)})")

    def status(self) -> dict[str, Any]:
        """JSON-ready description: hosts, routers, servers and processes (alive or not)."""
        procs = {
            name: {"pid": pid, "namespace": ns, "alive": netns.pid_netns_is(pid, ns)}
            for name, (pid, ns) in servers.read_pid_files(self.state_dir).items()
        }
        srv: dict[str, Any] = {}
        if self._state["options"].get("servers"):
            srv = {
                "stun": f"{SERVER_ADDRESS}:{STUN_PORT}",
                "turn": {"address": f"{SERVER_ADDRESS}:{STUN_PORT}", "user": TURN_USER,
                         "password": TURN_PASSWORD, "realm": TURN_REALM},
                "sip": {"registrar": f"{SERVER_ADDRESS}:{SIP_PORT}", "domain": SIP_DOMAIN,
                        "users": dict(SIP_USERS)},
            }
        return {
            "name": self.name,
            "topology": self.topology,
            "options": self.options,
            "state_dir": str(self.state_dir),
            "complete": bool(self._state.get("complete")),
            "hosts": {k: h.to_dict() for k, h in self.hosts.items()},
            "routers": self._state.get("routers", {}),
            "servers": srv,
            "processes": procs,
            "links_down": self.links_down,
            "namespaces": [ns for ns in _namespaces(self.name) if netns.exists(ns)],
        }

    # ------------------------------------------------------------------ running things

    def argv(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` wrapped to run in ``host``'s namespace."""
        return netns.ns_argv(self.namespace(host), argv)

    def run(self, host: str, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` of ``argv`` inside ``host`` (keyword arguments passed on)."""
        check = bool(kw.pop("check", False))
        return subprocess.run(self.argv(host, argv), check=check, **kw)

    def popen(self, host: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` of ``argv`` inside ``host`` (``down`` ends it if still alive)."""
        return subprocess.Popen(self.argv(host, argv), **kw)

    # ------------------------------------------------------------------ building

    def _save(self) -> None:
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(self._state, indent=2) + "\n")
        tmp.replace(self.state_dir / "state.json")

    def _build(self, the_plan: Plan) -> None:
        name = self.name
        opts = self._state["options"]
        ns_of = {k: f"{name}-{k}" for k in ["inet", *the_plan.hosts, *the_plan.routers]}
        netns.ip_batch((f"netns add {ns}" for ns in ns_of.values()), what="ip netns add")
        self._state["hosts"] = {
            h.name: HostInfo(h.name, ns_of[h.name], h.address, h.public_address, h.nat,
                             ns_of[h.router] if h.router else None).to_dict()
            for h in the_plan.hosts.values()
        }
        self._state["routers"] = {
            r.key: {"namespace": ns_of[r.key], "nat": r.nat.value, "wan_address": r.wan_address,
                    "lan": r.lan_net, "lan_address": r.lan_address, "hosts": r.hosts,
                    "hairpin": r.hairpin}
            for r in the_plan.routers.values()
        }
        self._save()
        inet = ns_of["inet"]
        # Links: every public host and every router's WAN hangs on the internet bridge.
        links = []
        for h in the_plan.hosts.values():
            if h.router is None:
                links.append(f"link add eth0 netns {ns_of[h.name]} type veth "
                             f"peer name v-{h.name} netns {inet}")
        for r in the_plan.routers.values():
            links.append(f"link add {nat.WAN_IF} netns {ns_of[r.key]} type veth "
                         f"peer name v-{r.key} netns {inet}")
            for host in r.hosts:
                peer = f"l{host}" if r.hairpin else nat.LAN_IF
                links.append(f"link add eth0 netns {ns_of[host]} type veth "
                             f"peer name {peer} netns {ns_of[r.key]}")
        netns.ip_batch(links, what="creating links")

        delayer = _needs_delayer(opts)
        impaired = bool(opts["loss_pct"]) or delayer
        no_v6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
        inet_ports = [f"v-{h.name}" for h in the_plan.hosts.values() if h.router is None]
        inet_ports += [f"v-{r.key}" for r in the_plan.routers.values()]
        bridge_nf = "1" if impaired else "0"
        netns.sysctl(inet, {**no_v6, "net.bridge.bridge-nf-call-iptables": bridge_nf})
        netns.ip_batch(
            ["link set lo up", "link add br0 type bridge", "link set br0 up",
             f"addr add {INTERNET_GATEWAY}/{INTERNET_PREFIX} dev br0",
             *(f"link set {p} master br0 up" for p in inet_ports)],
            ns=inet, what="internet bridge",
        )
        for h in the_plan.hosts.values():
            ns = ns_of[h.name]
            netns.sysctl(ns, {**no_v6, "net.ipv4.conf.all.accept_redirects": "0"})
            netns.ip_batch(
                ["link set lo up", f"addr add {h.address}/{h.prefix} dev eth0",
                 "link set eth0 up", f"route add default via {h.gateway}"],
                ns=ns, what=f"host {h.name}",
            )
        for r in the_plan.routers.values():
            ns = ns_of[r.key]
            timeout = opts["udp_timeout"]
            settings = {
                **no_v6,
                "net.ipv4.ip_forward": "1",
                # A hairpinned packet leaves by the interface it came in on: no ICMP redirect.
                "net.ipv4.conf.all.send_redirects": "0",
                "net.ipv4.conf.default.send_redirects": "0",
                # LAN traffic between a and b on the hairpin bridge stays out of netfilter.
                "net.bridge.bridge-nf-call-iptables": "0",
            }
            if timeout is not None:
                settings["net.netfilter.nf_conntrack_udp_timeout"] = str(timeout)
                settings["net.netfilter.nf_conntrack_udp_timeout_stream"] = str(timeout)
            netns.sysctl(ns, settings)
            prefix = r.lan_net.split("/")[1]
            cmds = ["link set lo up",
                    f"addr add {r.wan_address}/{INTERNET_PREFIX} dev {nat.WAN_IF}",
                    f"link set {nat.WAN_IF} up"]
            if r.hairpin:
                cmds += [f"link add {nat.LAN_IF} type bridge", f"link set {nat.LAN_IF} up",
                         *(f"link set l{host} master {nat.LAN_IF} up" for host in r.hosts)]
            else:
                cmds.append(f"link set {nat.LAN_IF} up")
            cmds += [f"addr add {r.lan_address}/{prefix} dev {nat.LAN_IF}",
                     f"route add default via {INTERNET_GATEWAY}"]
            netns.ip_batch(cmds, ns=ns, what=f"router {r.key}")
            netns.nft_load(ns, nat.router_ruleset(r, udp_timeout=timeout))

        if delayer:
            servers.start_delayer(inet, opts["delay_ms"], opts["jitter_ms"], nat.DELAY_QUEUE,
                                  self.state_dir, reorder_pct=opts.get("reorder_pct", 0),
                                  duplicate_pct=opts.get("duplicate_pct", 0))
        for rule in nat.impairment_rules(loss_pct=opts["loss_pct"], delay=delayer):
            netns.run(netns.ns_argv(inet, rule), what="impairment rule")
        if opts["servers"]:
            self._start_server("turnserver")
            self._start_server("kamailio")

    def _start_server(self, name: str) -> servers.Started:
        server_ns = self.namespace("server")
        if name == "turnserver":
            return servers.start_turnserver(server_ns, SERVER_ADDRESS, STUN_PORT, self.state_dir,
                                            max_lifetime=self.options.get("turn_lifetime"))
        return servers.start_kamailio(server_ns, SERVER_ADDRESS, SIP_PORT, self.state_dir)

    # ------------------------------------------------------------------ faults

    def link(self, host: str, up: bool) -> None:
        """Cut (``up=False``) or restore ``host``'s uplink (``a`` or ``b``; ``server`` too).

        Packets to and from the host vanish in its NAT router (or, for a public host, at its
        port of the internet bridge), as if the cable were pulled: the host's own interface
        stays up, its sockets see no error, NAT bindings and conntrack entries stay (they may
        expire meanwhile, as they would). Idempotent."""
        info = self.hosts.get(host)
        if info is None:
            raise UserError(f"lab {self.name!r} has no host {host!r} (hosts: "
                            f"{', '.join(sorted(self.hosts))})")
        if info.router is not None:
            router = self._state["routers"][info.router.removeprefix(f"{self.name}-")]
            ns = info.router
            port = f"l{host}" if router["hairpin"] else None
            address: str | None = info.address
        else:
            ns, port, address = f"{self.name}-inet", f"v-{host}", None
        table = nat.LINK_TABLE.format(host=host)
        for family in ("ip", "bridge"):
            # Remove a cut of either family (missing tables are fine: idempotent).
            subprocess.run(netns.ns_argv(ns, ["nft", "delete", "table", family, table]),
                           capture_output=True, check=False)
        if not up:
            netns.nft_load(ns, nat.link_cut_ruleset(host, address=address, bridge_port=port))
        cut = set(self._state.get("links_down", []))
        if up:
            cut.discard(host)
        else:
            cut.add(host)
        self._state["links_down"] = sorted(cut)
        self._save()

    @property
    def links_down(self) -> list[str]:
        """Hosts whose uplink :meth:`link` cut."""
        return list(self._state.get("links_down", []))

    def restart_server(self, name: str) -> int:
        """Stop ``kamailio`` or ``coturn`` (by its recorded PID) and start it again with the
        same options; returns the new PID. Its memory is lost: Kamailio forgets every
        registration, coturn every allocation."""
        key = {"coturn": "turnserver", "turnserver": "turnserver", "kamailio": "kamailio"}.get(
            name)
        if key is None:
            raise UserError(f"unknown server {name!r} (kamailio or coturn)")
        if not self.options.get("servers"):
            raise UserError(f"lab {self.name!r} runs no servers")
        servers.stop(self.state_dir, key)
        return self._start_server(key).pid

    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL: a crash) to ``pid``, a process running in one of this
        lab's namespaces; refuses any other process."""
        if not any(netns.pid_netns_is(pid, ns) for ns in _namespaces(self.name)):
            raise UserError(f"process {pid} does not run in lab {self.name!r}")
        os.kill(pid, sig)


def _needs_delayer(opts: dict[str, Any]) -> bool:
    """Whether the options need the NFQUEUE delayer (delay, jitter, reordering, duplication)."""
    return bool(opts["delay_ms"] or opts["jitter_ms"] or opts.get("reorder_pct")
                or opts.get("duplicate_pct"))


def check_environment(*, delay: bool = False, servers: bool = False) -> None:
    """Fail early, with one line, when the machine cannot run a lab."""
    netns.require_root()
    netns.require_tool("ip", "iproute2")
    netns.require_tool("nft", "nftables")
    netns.require_tool("sysctl", "procps")
    if delay:
        netns.require_tool("iptables", "iptables")
        try:
            import netfilterqueue  # noqa: F401
        except ImportError:
            raise EnvironmentProblem(
                "--delay/--jitter/--reorder/--duplicate need the NetfilterQueue package "
                "(apt-get install libnetfilter-queue-dev build-essential; "
                "pip install NetfilterQueue)"
            ) from None
    if servers:
        netns.require_tool("turnserver", "coturn (or use --no-servers)")
        netns.require_tool("kamailio", "kamailio (or use --no-servers)")


def teardown(name: str) -> bool:
    """Remove lab ``name``: its processes (recorded ones, then anything left in its
    namespaces), its namespaces, its state directory. Returns whether anything existed."""
    topology.validate_name(name)
    state_dir = _state_dir(name)
    namespaces = [ns for ns in _namespaces(name) if netns.exists(ns)]
    found = state_dir.exists() or bool(namespaces)
    recorded = servers.read_pid_files(state_dir) if state_dir.exists() else {}
    # A recorded PID is only ended while it still lives in the lab's namespace.
    pids = [pid for pid, ns in recorded.values() if netns.pid_netns_is(pid, ns)]
    netns.terminate(pids)
    stray = [pid for ns in namespaces for pid in netns.pids_in(ns)]
    netns.terminate(stray, grace=1.0)
    for ns in namespaces:
        netns.delete(ns)
    if state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)
    left = [ns for ns in namespaces if netns.exists(ns)]
    if left:
        raise EnvironmentProblem(f"could not remove namespaces {', '.join(left)}")
    return found

