"""The ``sipua`` command line: one group, a subcommand per job (docs/cli.md).

Subcommands are thin: they parse options, build settings and call the public API. A
:class:`~sipua.errors.UserError` raised anywhere below is printed on one line with its
documented exit code (:mod:`sipua.exitcodes`), never as a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, cast

import click

from sipua import __version__
from sipua.errors import UserError
from sipua.exitcodes import ExitCode


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


@cli.command()
@click.option("--nomination", type=click.Choice(["regular", "aggressive"]), default="regular",
              show_default=True, help="How the controlling agent nominates.")
@click.option("--components", type=click.IntRange(1, 2), default=2, show_default=True,
              help="1 = RTP and RTCP multiplexed, 2 = separate RTCP component.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--seed", type=int, default=None, help="Seed the random source (repeatable runs).")
def demo(nomination: str, components: int, as_json: bool, seed: int | None) -> None:
    """Run two agents on this machine through the embedded STUN server and check media flows."""
    import json

    from rich.console import Console
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    from sipua.demo import print_report, run_demo

    result: dict[str, Any] = {}

    def run(reactor: Any) -> Deferred[None]:
        async def go() -> None:
            result.update(await run_demo(reactor, components=components, nomination=nomination,
                                         seed=seed))
        return Deferred.fromCoroutine(go())

    try:
        task.react(run)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise UserError("the demo stopped with an internal error (see the log above)",
                            ExitCode.FAILURE) from None
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        print_report(result, Console())
    code = int(result.get("exit_code", ExitCode.FAILURE))
    if code:
        sys.exit(code)


@cli.command("stun-server")
@click.option("--listen", "listen", default="127.0.0.1:3478", show_default=True,
              metavar="HOST[:PORT]", help="UDP address to serve STUN Binding on.")
@click.option("--software", default=None, help="SOFTWARE attribute to put in answers.")
def stun_server(listen: str, software: str | None) -> None:
    """Run the embedded STUN server (RFC 8489 Binding) until interrupted."""
    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    from ice.server import StunServerSettings
    from ice.server_udp import listen_stun

    host, port = _split_hostport(listen, default_port=3478)
    try:
        listening: Any = listen_stun(reactor, port, host, StunServerSettings(software=software))
    except CannotListenError as exc:
        raise UserError(f"cannot listen on {listen}: {exc.socketError}",
                        ExitCode.FAILURE) from None
    bound = listening.getHost()
    click.echo(f"STUN server listening on {bound.host}:{bound.port} (Ctrl-C to stop)")
    cast(Any, reactor).run()


def _split_hostport(text: str, *, default_port: int) -> tuple[str, int]:
    """``HOST[:PORT]`` with IPv6 in brackets; a bad form is the user's mistake."""
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise UserError(f"expected HOST[:PORT], got {text!r}")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise UserError(f"expected HOST[:PORT], got {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UserError(f"bad port in {text!r}: expected 0-65535")
    return host, int(port_text)


def _register_subcommands() -> None:
    from sipua.lab.cli import lab

    cli.add_command(lab)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``sipua``)."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="sipua")
