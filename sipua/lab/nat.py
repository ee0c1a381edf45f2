"""nftables rulesets of the lab's NAT routers and of the simulated internet's impairments.

RFC 4787 names the two halves of a NAT's behaviour; each is built from plain netfilter parts:

* Mapping. Endpoint-independent mapping (prc, full, hairpin) keeps its own table ``@out``:
  private address and port -> public address and port, learnt after the first translation and
  used for every later flow of that private endpoint, whatever the destination. Linux masquerade
  alone is only endpoint-independent while the private port happens to be free on the WAN
  address; the table makes the mapping hold when two hosts share a NAT and use the same port.
  Address-and-port-dependent mapping (sym) is ``masquerade fully-random``: each new conntrack
  flow, i.e. each new destination, gets a random public port (RFC 4787 §4.1).
* Filtering. Conntrack only lets in packets of flows the inside opened, which is
  address-and-port-dependent filtering (RFC 4787 §5). Unsolicited packets from the WAN are
  dropped *before* conntrack confirms them: a confirmed entry for a peer's early packet would
  own the public port towards that peer, and the host's own packet to the peer would then get
  another port, silently turning the NAT symmetric. Endpoint-independent filtering (full cone)
  adds ``@cone``: public port -> private endpoint; a packet from anyone to a mapped public port
  is DNATed to the endpoint that owns it (RFC 4787 §5, "Endpoint-Independent Filtering").
* Hairpinning (RFC 4787 §6, REQ-9): a packet from the LAN to the NAT's own public address is
  DNATed through ``@cone`` to the private endpoint owning that public port, and its source is
  translated to the sender's own public mapping, so the receiver sees the "external" address.

Map entries expire like conntrack entries (``--udp-timeout``), refreshed by outgoing packets.
"""

from __future__ import annotations

from sipua.lab.topology import Nat, Router

#: Interface names inside a router namespace.
WAN_IF = "wan0"
LAN_IF = "lan0"
#: Table name (one per router namespace, loaded atomically, removed with the namespace).
NAT_TABLE = "sipua_nat"
#: NFQUEUE number the delayer binds in the internet namespace.
DELAY_QUEUE = 0
#: Map timeout when no ``--udp-timeout`` is given: Linux's replied-UDP ("stream") default.
DEFAULT_MAP_TIMEOUT = 120


def router_ruleset(router: Router, *, udp_timeout: int | None = None) -> str:
    """The nftables ruleset of one NAT router."""
    timeout = udp_timeout if udp_timeout is not None else DEFAULT_MAP_TIMEOUT
    eim = router.nat in (Nat.PRC, Nat.FULL)
    eif = router.nat is Nat.FULL
    wan, lan = f'"{WAN_IF}"', f'"{LAN_IF}"'
    maps: list[str] = []
    dstnat: list[str] = []
    guard = [f"iifname {wan} ct state invalid drop"]
    srcnat: list[str] = []
    learn: list[str] = []
    if eim:
        maps += [
            "map out { type ipv4_addr . inet_service : ipv4_addr . inet_service; "
            f"flags dynamic,timeout; timeout {timeout}s; }}",
            "map cone { type inet_service : ipv4_addr . inet_service; "
            f"flags dynamic,timeout; timeout {timeout}s; }}",
        ]
        learn += [
            # Flows the inside opened: the private endpoint is the original source.
            f"oifname {wan} meta l4proto udp ct direction original "
            "update @out { ct original ip saddr . ct original proto-src : ip saddr . udp sport } "
            "update @cone { udp sport : ct original ip saddr . ct original proto-src }",
            # Answers on flows the outside opened (full cone): the private end is the reply source.
            f"oifname {wan} meta l4proto udp ct direction reply "
            "update @out { ct reply ip saddr . ct reply proto-src : ip saddr . udp sport } "
            "update @cone { udp sport : ct reply ip saddr . ct reply proto-src }",
        ]
        srcnat.append(f"oifname {wan} meta l4proto udp snat ip to ip saddr . udp sport map @out")
    if eif:
        dstnat.append(f"iifname {wan} meta l4proto udp dnat ip to udp dport map @cone")
        guard.append(f"iifname {wan} ct state new ct status & dnat != dnat drop")
    else:
        guard.append(f"iifname {wan} ct state new drop")
    if router.hairpin:
        dstnat.append(
            f"iifname {lan} ip daddr {router.wan_address} meta l4proto udp "
            "dnat ip to udp dport map @cone"
        )
        hair = f"oifname {lan} ip saddr {router.lan_net} ct status & dnat == dnat"
        srcnat += [
            f"{hair} meta l4proto udp snat ip to ip saddr . udp sport map @out",
            f"{hair} snat ip to {router.wan_address}",
        ]
    srcnat.append(
        f"oifname {wan} masquerade fully-random" if router.nat is Nat.SYM
        else f"oifname {wan} masquerade"
    )

    def chain(name: str, hook: str, rules: list[str]) -> str:
        body = "".join(f"\n    {r}" for r in rules)
        return f"  chain {name} {{\n    type {hook}; policy accept;{body}\n  }}"

    parts = [f"  {m}" for m in maps]
    parts.append(chain("dstnat", "nat hook prerouting priority dstnat", dstnat))
    parts.append(chain("guard", "filter hook prerouting priority dstnat + 10", guard))
    parts.append(chain("srcnat", "nat hook postrouting priority srcnat", srcnat))
    if learn:
        parts.append(chain("learn", "filter hook postrouting priority srcnat + 10", learn))
    return f"table ip {NAT_TABLE} {{\n" + "\n".join(parts) + "\n}\n"


def impairment_rules(*, loss_pct: float = 0.0, delay: bool = False) -> list[list[str]]:
    """iptables commands for loss and the delayer on the simulated internet, once per crossing
    packet and direction.

    Bridged IPv4 packets traverse the internet namespace's FORWARD hook (bridge netfilter is on
    there). The ``statistic`` match drops the asked share, independently for each packet, so a
    request and its answer each survive with ``1 - loss``; the rest is queued to the delayer
    (``delay``: it delays, reorders or duplicates; ``NFQUEUE`` because this kernel has no netem
    and no nftables ``queue`` expression); ``--queue-bypass`` lets packets pass untouched rather
    than vanish if the delayer is gone.
    """
    base = ["iptables", "-w", "-t", "mangle", "-A", "FORWARD"]
    rules = []
    if loss_pct > 0:
        prob = f"{loss_pct / 100:.6f}"
        rules.append([*base, "-m", "statistic", "--mode", "random", "--probability", prob,
                      "-j", "DROP"])
    if delay:
        rules.append([*base, "-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE), "--queue-bypass"])
    return rules


#: Table of a link cut (one per cut host, in its router's or the internet's namespace).
LINK_TABLE = "sipua_link_{host}"


def link_cut_ruleset(host: str, *, address: str | None, bridge_port: str | None) -> str:
    """nftables tables that cut ``host`` off, silently, as if its cable were pulled.

    ``address``: the host's address, for a NAT router that routes its traffic: every forwarded
    packet from or to it is dropped (in the forward hook, after the reply's DNAT and before
    SNAT, so the private address is what is seen). ``bridge_port``: the host's port on a bridge
    (the internet bridge for a public host, the hairpin router's LAN bridge): every frame in or
    out of that port is dropped, the bridge's own included. Nothing reaches the host's
    sockets as an error: the packets just vanish, and conntrack and NAT state stay.
    """
    table = LINK_TABLE.format(host=host)
    out = []
    if address is not None:
        out.append(
            f"table ip {table} {{\n  chain forward {{\n"
            "    type filter hook forward priority -10; policy accept;\n"
            f"    ip saddr {address} drop\n    ip daddr {address} drop\n  }}\n}}\n"
        )
    if bridge_port is not None:
        port = f'"{bridge_port}"'
        chains = [("prerouting", f"iifname {port} drop"), ("forward", f"oifname {port} drop"),
                  ("output", f"oifname {port} drop")]
        body = "".join(
            f"  chain {hook} {{\n    type filter hook {hook} priority -10; policy accept;\n"
            f"    {rule}\n  }}\n" for hook, rule in chains
        )
        out.append(f"table bridge {table} {{\n{body}}}\n")
    return "".join(out)
