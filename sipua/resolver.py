"""Locating SIP servers (RFC 3263 §4) on twisted.names, and plain ``HOST[:PORT]``.

For a SIP or SIPS URI the client picks a transport and then addresses:

- a numeric host is used as it is (port from the URI, else 5060, 5061 for TLS);
- a host with an explicit port, or a URI with a transport parameter but no SRV record, is looked
  up with A/AAAA;
- otherwise NAPTR records name the services (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``) in order
  and preference, each leading to SRV records; without NAPTR the client tries the SRV names
  ``_sip._udp``, ``_sip._tcp`` and ``_sips._tcp`` itself; without SRV, A/AAAA on the default
  port of UDP (TLS for sips).

The DNS resolver is injected (any ``IResolver``); the default, from
``twisted.names.client.createResolver``, reads /etc/hosts before asking the name servers of
/etc/resolv.conf.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.names import dns
from twisted.names import error as dns_error

from sipua.settings import parse_hostport
from sipua.uri import SipUri

__all__ = ["ResolveError", "SipResolver", "Target"]

log = logging.getLogger(__name__)

# RFC 3263 §4.1: NAPTR services and the transports they stand for.
_NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
# RFC 3263 §4.1: SRV names tried when there is no NAPTR record, in our order of preference.
_SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}


@dataclass(frozen=True)
class Target:
    """One place to send a request: an IP address, a port and a transport."""

    host: str
    port: int
    transport: str


class ResolveError(LookupError):
    """No address could be found for a SIP URI or host name."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _default_port(transport: str) -> int:
    return 5061 if transport == "tls" else 5060


def _text(value: bytes | str | dns.Name | dns.Charstr) -> str:
    """DNS fields come as Name, Charstr, bytes or str depending on the record and its source."""
    if isinstance(value, dns.Name):
        value = value.name
    elif isinstance(value, dns.Charstr):
        value = value.string
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


class SipResolver:
    """RFC 3263 server location; every lookup returns a Deferred.

    ``transports`` are those this agent can use (a "tls" target is only offered when TLS is
    configured); ``rng`` orders SRV records of equal priority by weight (RFC 2782).
    """

    def __init__(self, resolver: Any = None, *, transports: Iterable[str] = ("udp", "tcp", "tls"),
                 rng: random.Random | None = None, prefer_ipv6: bool = False) -> None:
        if resolver is None:
            from twisted.names import client
            resolver = client.createResolver(hosts=b"/etc/hosts")  # type: ignore[no-untyped-call]
        self._dns = resolver
        self.transports = tuple(t.lower() for t in transports)
        self._rng = rng if rng is not None else random.SystemRandom()
        self._prefer_ipv6 = prefer_ipv6

    # --- public -------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel the timers twisted.names keeps: the name-server client re-reads
        /etc/resolv.conf every 60 s and the cache expires answers; a stopped agent must leave
        no timer behind."""
        for part in getattr(self._dns, "resolvers", [self._dns]):
            parse = getattr(part, "_parseCall", None)
            if parse is not None and parse.active():
                parse.cancel()
            pending = getattr(part, "cancel", None)
            if isinstance(pending, dict):
                for call in list(pending.values()):
                    if call.active():
                        call.cancel()
                pending.clear()

    def resolve(self, uri: SipUri) -> defer.Deferred[list[Target]]:
        """Ordered targets for ``uri`` (RFC 3263 §4); fails with :class:`ResolveError`."""
        return defer.Deferred.fromCoroutine(self._resolve_uri(uri))

    def resolve_hostport(self, text: str, transport: str = "udp") -> defer.Deferred[list[Target]]:
        """Targets for a plain ``HOST[:PORT]`` (A/AAAA only; port defaults per transport)."""
        try:
            host, port = parse_hostport(text)
        except ValueError as exc:
            return defer.fail(ResolveError(str(exc)))
        t = transport.lower()
        return defer.Deferred.fromCoroutine(
            self._address_targets(host, port or _default_port(t), t))

    # --- RFC 3263 ------------------------------------------------------------------------------

    async def _resolve_uri(self, uri: SipUri) -> list[Target]:
        if uri.scheme not in ("sip", "sips"):
            raise ResolveError(f"cannot locate a server for a {uri.scheme}: URI")
        secure = uri.scheme == "sips"
        target = uri.params.get("maddr") or uri.host
        explicit = uri.params.get("transport")
        transport = explicit.lower() if explicit else None
        if secure and transport in (None, "tcp"):
            transport = "tls"  # RFC 3263 §4.1: sips runs over TLS
        # §4.1/§4.2: numeric host or explicit port: no NAPTR, no SRV.
        if _is_ip(target) or uri.port is not None:
            t = transport or ("tls" if secure else "udp")
            port = uri.port if uri.port is not None else _default_port(t)
            return await self._address_targets(target, port, t)
        if transport is not None:
            targets = await self._srv_targets(_SRV_PREFIX.get(transport, f"_sip._{transport}.")
                                              + target, transport)
            return targets or await self._address_targets(target, _default_port(transport),
                                                         transport)
        targets = await self._naptr_targets(target, secure)
        if targets:
            return targets
        for t in self._usable(("tls",) if secure else ("udp", "tcp", "tls")):
            targets += await self._srv_targets(_SRV_PREFIX[t] + target, t)
        if targets:
            return targets
        t = "tls" if secure else "udp"
        return await self._address_targets(target, _default_port(t), t)

    def _usable(self, transports: Sequence[str]) -> list[str]:
        return [t for t in transports if t in self.transports]

    async def _naptr_targets(self, domain: str, secure: bool) -> list[Target]:
        records = await self._lookup("lookupNamingAuthorityPointer", domain)
        naptrs: list[tuple[int, int, str, str]] = []
        for record in records:
            if _text(record.flags).lower() != "s":
                continue
            transport = _NAPTR_SERVICES.get(_text(record.service).upper())
            if transport is None or transport not in self.transports:
                continue
            if secure and transport != "tls":
                continue  # RFC 3263 §4.1: a sips URI only takes SIPS+D2T
            naptrs.append((record.order, record.preference, transport,
                           _text(record.replacement)))
        targets: list[Target] = []
        for _order, _pref, transport, replacement in sorted(naptrs):
            targets += await self._srv_targets(replacement, transport)
        return targets

    async def _srv_targets(self, name: str, transport: str) -> list[Target]:
        records = [r for r in await self._lookup("lookupService", name)
                   if _text(r.target) not in ("", ".")]
        targets: list[Target] = []
        for record in self._srv_order(records):
            host = _text(record.target).rstrip(".")
            try:
                targets += await self._address_targets(host, record.port, transport)
            except ResolveError:
                log.info("SRV target %s of %s has no address", host, name)
        return targets

    def _srv_order(self, records: list[Any]) -> list[Any]:
        """RFC 2782: ascending priority; within one, a weighted random order."""
        ordered: list[Any] = []
        for priority in sorted({r.priority for r in records}):
            group = [r for r in records if r.priority == priority]
            while group:
                total = sum(r.weight for r in group)
                if total == 0:
                    ordered += group
                    break
                pick = self._rng.uniform(0, total)
                running = 0
                for index, record in enumerate(group):
                    running += record.weight
                    if running >= pick:
                        ordered.append(group.pop(index))
                        break
                else:
                    ordered.append(group.pop())
        return ordered

    async def _address_targets(self, host: str, port: int, transport: str) -> list[Target]:
        if _is_ip(host):
            return [Target(host, port, transport)]
        v4 = [r.dottedQuad() for r in await self._lookup("lookupAddress", host)]
        v6 = [socket.inet_ntop(socket.AF_INET6, r.address)
              for r in await self._lookup("lookupIPV6Address", host)]
        addresses = v6 + v4 if self._prefer_ipv6 else v4 + v6
        if not addresses:
            raise ResolveError(f"{host}: no A or AAAA record")
        seen: list[str] = []
        for address in addresses:
            if address not in seen:
                seen.append(address)
        return [Target(address, port, transport) for address in seen]

    async def _lookup(self, method: str, name: str) -> list[Any]:
        """The payloads of the answers to one query; none when the name or record is missing."""
        try:
            answers, _authority, _additional = await getattr(self._dns, method)(name)
        except (dns_error.DomainError, dns_error.DNSNameError, dns_error.DNSServerError,
                dns_error.DNSQueryRefusedError, dns_error.DNSNotImplementedError,
                dns_error.DNSFormatError, dns_error.DNSUnknownError, defer.TimeoutError,
                NotImplementedError) as exc:
            log.debug("%s(%s): %s", method, name, type(exc).__name__)
            return []
        wanted = {"lookupNamingAuthorityPointer": dns.NAPTR, "lookupService": dns.SRV,
                  "lookupAddress": dns.A, "lookupIPV6Address": dns.AAAA}[method]
        return [rr.payload for rr in answers if rr.type == wanted]
