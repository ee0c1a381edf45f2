"""Documented process exit codes of the ``sipua`` command (see docs/cli.md).

Scripts and test rigs branch on these, so a value never changes meaning once released.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    """Why ``sipua`` exited."""

    OK = 0
    #: Something failed that is not one of the cases below (a bug or an environment problem).
    FAILURE = 1
    #: Bad arguments or bad configuration: the user's mistake, explained on one line.
    USAGE = 2
    #: The registrar refused the credentials (401/403 after authenticating).
    REGISTRATION_FAILED = 3
    #: The remote party (or a proxy) rejected the call with a final non-2xx response.
    CALL_REJECTED = 4
    #: ICE found no working candidate pair.
    ICE_FAILED = 5
    #: The call was set up but media did not flow (or did not verify).
    MEDIA_FAILED = 6
    #: No answer at all: a request timed out (registrar or peer unreachable).
    NO_ANSWER = 7
    #: The environment lacks a capability the command needs (not root, no netfilter, ...).
    ENVIRONMENT = 8
