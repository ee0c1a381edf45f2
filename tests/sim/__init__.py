"""Whole agents over a virtual network on a Twisted ``Clock`` (see README.md)."""

from .clock import advance, run_until
from .vnet import (
    Behaviour,
    Link,
    Mapping,
    Nat,
    Packet,
    PacketRecord,
    VirtualHost,
    VirtualNetwork,
    VirtualPort,
    VirtualReactor,
)

__all__ = [
    "Behaviour",
    "Link",
    "Mapping",
    "Nat",
    "Packet",
    "PacketRecord",
    "VirtualHost",
    "VirtualNetwork",
    "VirtualPort",
    "VirtualReactor",
    "advance",
    "run_until",
]
