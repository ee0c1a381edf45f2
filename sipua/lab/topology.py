"""The lab's shape as data: which namespaces exist, their links and addresses.

Pure data, computed from a topology name and the options, so that the plan can be inspected (and
tested) without root. The simulated internet uses only the documentation range 203.0.113.0/24
(RFC 5737); private ranges (RFC 1918) appear only on the LANs behind the lab's NAT routers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from sipua.errors import UserError

#: The simulated internet (RFC 5737 TEST-NET-3).
INTERNET_NET = "203.0.113.0/24"
INTERNET_PREFIX = 24
#: The internet namespace's own address: every public host's default gateway, so that a route
#: lookup towards any address succeeds (a UA may "connect" a UDP socket to learn its source
#: address); the internet namespace does not forward, so nothing leaves the lab.
INTERNET_GATEWAY = "203.0.113.1"
SERVER_ADDRESS = "203.0.113.10"
#: WAN addresses of the NAT routers in front of a and b (the hairpin NAT uses a's).
NAT_WAN = {"a": "203.0.113.11", "b": "203.0.113.12"}
#: Addresses of a and b when they are public.
PUBLIC_HOST = {"a": "203.0.113.21", "b": "203.0.113.22"}
#: Private LANs behind each NAT, and the host's address on it.
LAN = {"a": ("10.0.1.0/24", "10.0.1.1", "10.0.1.10"), "b": ("10.0.2.0/24", "10.0.2.1", "10.0.2.10")}
#: With ``--overlap`` both homes use the same subnet and the same host address.
OVERLAP_LAN = ("192.168.1.0/24", "192.168.1.1", "192.168.1.10")
#: b's address on the shared LAN of the hairpin topology (a keeps the LAN's ``.10``).
HAIRPIN_B_SUFFIX = 20

DEFAULT_NAME = "sl"
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class Nat(Enum):
    """What stands between a host and the simulated internet (RFC 4787 terms)."""

    #: No NAT: the host has a public address.
    PUB = "pub"
    #: Port-restricted cone: endpoint-independent mapping, address-and-port-dependent filtering.
    PRC = "prc"
    #: Symmetric: address-and-port-dependent mapping (a fresh random port per destination).
    SYM = "sym"
    #: Full cone: endpoint-independent mapping and endpoint-independent filtering.
    FULL = "full"


#: Every namespace suffix a lab may create; ``down`` removes exactly these, so that lab ``x``
#: never touches lab ``xy``'s namespaces.
NAMESPACE_SUFFIXES = ("inet", "server", "a", "b", "nat-a", "nat-b", "nat")

TOPOLOGY_HELP = (
    "A-B with A and B each one of pub, prc, sym, full (e.g. prc-sym), or hairpin "
    "(a and b behind one port-restricted NAT)"
)


@dataclass(frozen=True)
class Router:
    """A NAT router namespace."""

    #: Namespace suffix ("nat-a", "nat-b", or "nat" for the shared hairpin NAT).
    key: str
    #: Mapping and filtering behaviour.
    nat: Nat
    #: Its address on the simulated internet.
    wan_address: str
    #: LAN subnet (CIDR), the router's LAN address, and the hosts (name -> address) behind it.
    lan_net: str
    lan_address: str
    hosts: dict[str, str] = field(default_factory=dict)
    #: True when two hosts share the LAN and packets between them may loop through the NAT.
    hairpin: bool = False


@dataclass(frozen=True)
class Host:
    """An end host (``server``, ``a`` or ``b``)."""

    #: ``server``, ``a`` or ``b``; also the namespace suffix.
    name: str
    #: The host's own address (private behind a NAT).
    address: str
    #: Prefix length of ``address``.
    prefix: int
    #: Default gateway.
    gateway: str
    #: The NAT in front of the host ("pub" when none, "hairpin" for the shared NAT).
    nat: str
    #: The address the internet sees: the NAT's WAN address, or the host's own.
    public_address: str
    #: Namespace suffix of its NAT router, if any.
    router: str | None


@dataclass(frozen=True)
class Plan:
    """Everything ``up`` builds, derived from the topology name and options."""

    topology: str
    hosts: dict[str, Host]
    routers: dict[str, Router]


def validate_name(name: str) -> str:
    """A lab name: short (namespace and interface names derive from it), lower-case."""
    if not _NAME_RE.match(name):
        raise UserError(
            f"bad lab name {name!r}: use 1-12 lower-case letters and digits, starting with a letter"
        )
    return name


def _prefix(cidr: str) -> int:
    return int(cidr.split("/")[1])


def plan(topology: str, *, overlap: bool = False) -> Plan:
    """Parse TOPOLOGY and lay out hosts, routers and addresses."""
    topo = topology.strip().lower()
    server = Host(
        "server", SERVER_ADDRESS, INTERNET_PREFIX, INTERNET_GATEWAY, "pub", SERVER_ADDRESS, None
    )
    hosts: dict[str, Host] = {"server": server}
    routers: dict[str, Router] = {}
    if topo == "hairpin":
        net, gw, a_addr = OVERLAP_LAN if overlap else LAN["a"]
        b_addr = a_addr.rsplit(".", 1)[0] + f".{HAIRPIN_B_SUFFIX}"
        wan = NAT_WAN["a"]
        routers["nat"] = Router(
            "nat", Nat.PRC, wan, net, gw, {"a": a_addr, "b": b_addr}, hairpin=True
        )
        for name, addr in (("a", a_addr), ("b", b_addr)):
            hosts[name] = Host(name, addr, _prefix(net), gw, "hairpin", wan, "nat")
        return Plan(topo, hosts, routers)
    sides = topo.split("-")
    kinds = {n.value: n for n in Nat}
    if len(sides) != 2 or any(s not in kinds for s in sides):
        raise UserError(f"unknown topology {topology!r}: expected {TOPOLOGY_HELP}")
    for name, side in zip(("a", "b"), sides, strict=True):
        nat = kinds[side]
        if nat is Nat.PUB:
            addr = PUBLIC_HOST[name]
            hosts[name] = Host(name, addr, INTERNET_PREFIX, INTERNET_GATEWAY, "pub", addr, None)
            continue
        net, gw, addr = OVERLAP_LAN if overlap else LAN[name]
        key = f"nat-{name}"
        routers[key] = Router(key, nat, NAT_WAN[name], net, gw, {name: addr})
        hosts[name] = Host(name, addr, _prefix(net), gw, nat.value, NAT_WAN[name], key)
    return Plan(topo, hosts, routers)
