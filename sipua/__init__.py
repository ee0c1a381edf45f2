"""sipua: a SIP user agent on Twisted that gets calls through NATs with ICE.

The public API for test rigs and the CLI grows here; the protocol cores live in their own
modules (see docs/architecture.md).
"""

__version__ = "0.1.0"
