"""Embedded STUN server (RFC 8489 Binding), sans-IO, for the demo and the test rigs.

It answers Binding requests with the source transport address as XOR-MAPPED-ADDRESS (plus
MAPPED-ADDRESS for RFC 3489-era clients) and a FINGERPRINT; requests with unknown
comprehension-required attributes get 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1); requests of
other methods get 400. Malformed datagrams are dropped and counted, never raised. The Twisted
side lives in :mod:`ice.server_udp`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ice.stun import (
    Address,
    Attr,
    Message,
    MessageClass,
    Method,
    StunError,
    decode,
    is_stun,
    make_error,
    make_response,
)

__all__ = ["StunServer", "StunServerSettings", "StunServerStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StunServerSettings:
    """How the embedded server answers."""

    software: str | None = None
    """SOFTWARE attribute in every response, or None for none (RFC 8489 §14.14)."""
    mapped_address: bool = True
    """Also send MAPPED-ADDRESS, for clients that predate XOR-MAPPED-ADDRESS (RFC 8489 §14.1)."""
    fingerprint: bool = True
    """Append FINGERPRINT to every response (RFC 8489 §14.7)."""


@dataclass
class StunServerStats:
    """Counters, for tests and the report."""

    answered: int = 0
    """Binding success responses sent."""
    errors: int = 0
    """Error responses sent (400, 420)."""
    malformed: int = 0
    """Datagrams that were not well-formed STUN, dropped."""
    ignored: int = 0
    """Well-formed STUN that needs no answer (indications, responses), dropped."""


class StunServer:
    """Answers STUN Binding requests; stateless between datagrams."""

    def __init__(self, settings: StunServerSettings | None = None) -> None:
        self.settings = settings if settings is not None else StunServerSettings()
        self.stats = StunServerStats()
        self._transmits: list[tuple[bytes, Address]] = []

    def receive(self, data: bytes, source: Address, now: float) -> None:
        """Take one datagram from ``source``; any answer is queued for :meth:`pop_transmits`."""
        if not is_stun(data):
            self._drop_malformed(source, "not STUN")
            return
        try:
            request = decode(data)
        except StunError as exc:
            self._drop_malformed(source, str(exc))
            return
        if request.cls is not MessageClass.REQUEST:
            self.stats.ignored += 1  # Binding indications are keepalives: no answer
            return
        unknown = request.unknown_comprehension_required()
        if unknown:
            # RFC 8489 §6.3.1.1: 420 listing the attributes we do not understand.
            self._reply(make_error(request, 420, "Unknown Attribute",
                                   {Attr.UNKNOWN_ATTRIBUTES: tuple(unknown)}), source)
            self.stats.errors += 1
            return
        if request.method != Method.BINDING:
            self._reply(make_error(request, 400, "Bad Request: unsupported method"), source)
            self.stats.errors += 1
            return
        attributes: dict[int, Any] = {Attr.XOR_MAPPED_ADDRESS: source}
        if self.settings.mapped_address:
            attributes[Attr.MAPPED_ADDRESS] = source
        self._reply(make_response(request, MessageClass.SUCCESS, attributes), source)
        self.stats.answered += 1

    def pop_transmits(self) -> list[tuple[bytes, Address]]:
        """Answers to send: (datagram, destination)."""
        out, self._transmits = self._transmits, []
        return out

    def next_timer(self) -> float | None:
        """Never a timer: the server keeps no state between datagrams."""
        return None

    def handle_timer(self, now: float) -> None:
        """Nothing to do (see :meth:`next_timer`)."""

    def _reply(self, response: Message, dest: Address) -> None:
        if self.settings.software:
            response.attributes[Attr.SOFTWARE] = self.settings.software
        self._transmits.append((response.encode(fingerprint=self.settings.fingerprint), dest))

    def _drop_malformed(self, source: Address, why: str) -> None:
        self.stats.malformed += 1
        log.debug("dropped malformed datagram from %s:%s: %s", source[0], source[1], why)
