"""Errors that reach the user of the ``sipua`` command.

A :class:`UserError` is the user's (or the environment's) fault, not a bug: the CLI prints its
message on one line and exits with its code, never with a traceback.
"""

from __future__ import annotations

from sipua.exitcodes import ExitCode


class UserError(Exception):
    """A problem the user can fix: bad input, bad configuration, a missing capability."""

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.code = code


class ConfigError(UserError):
    """Bad configuration: names the file, the key and what was expected."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.USAGE)


class EnvironmentProblem(UserError):
    """The machine lacks something the command needs (root, netfilter, a package)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.ENVIRONMENT)
