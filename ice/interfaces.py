"""Local addresses to gather host candidates on (RFC 8445 §5.1.1.1).

Enumeration is I/O (it asks the kernel), so it lives outside the agent: the adapter calls
:func:`local_addresses`, binds one socket per address and component, and hands each socket to the
agent as a base.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import ifaddr


@dataclass(frozen=True)
class LocalAddress:
    """One usable address of one interface."""

    interface: str
    ip: str
    #: 4 or 6
    version: int


def _usable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, loopback: bool,
            link_local: bool) -> bool:
    # RFC 8445 §5.1.1.1: no loopback, and IPv6 link-local only when asked (their scope makes them
    # useless across hosts); IPv4-mapped, deprecated site-local and unspecified never.
    if ip.is_unspecified or ip.is_multicast:
        return False
    if ip.is_loopback:
        return loopback
    if ip.is_link_local:
        return link_local
    return not (isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped or ip.is_site_local))


def local_addresses(*, ipv4: bool = True, ipv6: bool = False, loopback: bool = False,
                    link_local: bool = False, only: tuple[str, ...] = ()) -> list[LocalAddress]:
    """Addresses of this host's interfaces, in interface order, filtered as asked.

    ``only`` restricts the result to the given interface names or IP literals (for multihomed
    hosts and for tests that pin the agent to one address).
    """
    found: list[LocalAddress] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            raw = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
            ip = ipaddress.ip_address(raw)
            if ip.version == 4 and not ipv4:
                continue
            if ip.version == 6 and not ipv6:
                continue
            if only and adapter.nice_name not in only and str(ip) not in only:
                continue
            if not only and not _usable(ip, loopback=loopback, link_local=link_local):
                continue
            found.append(LocalAddress(adapter.nice_name, str(ip), ip.version))
    return found
