"""ICE (RFC 8445) with STUN (RFC 8489) and TURN (RFC 8656): sans-IO cores and Twisted adapters.

This package depends on nothing else in the repository, so it can be used on its own.
"""

__version__ = "0.1.0"
