"""The ``sipua`` command line: one group, a subcommand per job (docs/cli.md).

Subcommands are thin: they parse options, build settings and call the public API. A
:class:`~sipua.errors.UserError` raised anywhere below is printed on one line with its
documented exit code (:mod:`sipua.exitcodes`), never as a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from sipua import __version__
from sipua.errors import UserError


class _Group(click.Group):
    """A click group that turns :class:`UserError` into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"sipua: error: {exc}", err=True)
            ctx.exit(int(exc.code))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sipua")
def cli() -> None:
    """A SIP user agent that gets calls through NATs with ICE."""


def _register_subcommands() -> None:
    from sipua.lab.cli import lab

    cli.add_command(lab)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``sipua``)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="sipua")
