"""The ``sipua`` command line: one group, a subcommand per job (docs/cli.md).

Subcommands are thin: they parse options, build settings and call the public API. A
:class:`~sipua.errors.UserError` raised anywhere below is printed on one line with its
documented exit code (:mod:`sipua.exitcodes`), never as a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
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
@click.option("--rtcp-mux/--no-rtcp-mux", default=False, show_default=True,
              help="Multiplex RTCP with RTP on one component (else a second component).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--seed", type=int, default=None, help="Seed the random source (repeatable runs).")
def demo(nomination: str, rtcp_mux: bool, as_json: bool, seed: int | None) -> None:
    """Place a real call with ICE between two agents through the embedded registrar and STUN
    server on this machine, play a tone each way and check what arrived."""
    import json

    from rich.console import Console
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    from sipua.demo import print_report, run_demo

    result: dict[str, Any] = {}

    def run(reactor: Any) -> Deferred[None]:
        async def go() -> None:
            result.update(await run_demo(reactor, nomination=nomination, rtcp_mux=rtcp_mux,
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


@cli.command()
@click.option("--user", "aor", required=True, metavar="SIP-URI",
              help="Address-of-record to register, e.g. sip:alice@example.org.")
@click.option("--password", envvar="SIPUA_PASSWORD", default=None,
              help="Digest password (or the SIPUA_PASSWORD environment variable).")
@click.option("--auth-user", default=None, help="Digest user name; default: the user of --user.")
@click.option("--registrar", default=None, metavar="HOST[:PORT]",
              help="Where REGISTER goes; default: the domain of --user (RFC 3263).")
@click.option("--transport", type=click.Choice(["udp", "tcp", "tls"]), default="udp",
              show_default=True)
@click.option("--expires", type=click.IntRange(1, 2**32 - 1), default=600, show_default=True,
              help="Lifetime to ask for, in seconds.")
@click.option("--listen", default="0.0.0.0:0", show_default=True, metavar="HOST[:PORT]",
              help="Local SIP address (UDP and TCP); port 0 picks a free one.")
@click.option("--ca-file", default=None, metavar="FILE", help="PEM CAs that verify TLS servers.")
@click.option("--unregister", is_flag=True,
              help="Remove every binding of the AOR (Contact: *) instead of registering.")
@click.option("--duration", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Stay registered this many seconds (refreshing), then unregister.")
@click.option("--timeout", type=click.FloatRange(0.1), default=32.0, show_default=True,
              help="Give up (exit 7) when the registrar has not answered by then.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event on stdout.")
def register(aor: str, password: str | None, auth_user: str | None, registrar: str | None,
             transport: str, expires: int, listen: str, ca_file: str | None, unregister: bool,
             duration: float, timeout: float, as_json: bool) -> None:
    """Register an address-of-record (or remove its bindings) and report the outcome."""
    from sipua.account import run_register_command

    host, port = _split_hostport(listen, default_port=0)
    if ca_file is not None and not Path(ca_file).is_file():
        raise UserError(f"--ca-file {ca_file}: no such file")
    code, message = run_register_command(
        aor=aor, password=password, auth_user=auth_user, registrar=registrar,
        transport=transport, expires=expires, listen=(host, port), ca_file=ca_file,
        unregister=unregister, duration=duration, timeout=timeout,
        emit=click.echo, as_json=as_json)
    if code:
        raise UserError(message or "registration failed", ExitCode(code))


@cli.command()
@click.option("--listen", default="127.0.0.1:5060", show_default=True, metavar="HOST[:PORT]",
              help="Address for UDP and TCP (TLS on --tls-port).")
@click.option("--users", "users_file", required=True, metavar="FILE",
              help="Users file: one 'user:password' per line, '#' comments.")
@click.option("--domain", default=None, help="Domain served (default: any).")
@click.option("--transport", "transports", multiple=True,
              type=click.Choice(["udp", "tcp", "tls"]),
              help="Transport to serve (repeatable); default udp and tcp, plus tls with a cert.")
@click.option("--tls-cert", default=None, metavar="FILE", help="PEM certificate chain for TLS.")
@click.option("--tls-key", default=None, metavar="FILE", help="PEM private key for TLS.")
@click.option("--tls-port", type=click.IntRange(0, 65535), default=None,
              help="TLS port; default 5061, or a free one when --listen has port 0.")
@click.option("--min-expires", type=click.IntRange(1), default=10, show_default=True,
              help="Shortest registration accepted, in seconds (shorter: 423).")
@click.option("--auth-invites", is_flag=True, help="Challenge INVITEs from local users (407).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event on stdout.")
def registrar(listen: str, users_file: str, domain: str | None, transports: tuple[str, ...],
              tls_cert: str | None, tls_key: str | None, tls_port: int | None,
              min_expires: int, auth_invites: bool, as_json: bool) -> None:
    """Run the embedded registrar/proxy until interrupted, one line per registration."""
    from sipua.registrar_server import run_registrar_command

    host, port = _split_hostport(listen, default_port=5060)
    code, message = run_registrar_command(
        listen=(host, port), users_file=users_file, domain=domain, transports=transports,
        tls_cert=tls_cert, tls_key=tls_key, tls_port=tls_port, min_expires=min_expires,
        auth_invites=auth_invites, emit=click.echo, as_json=as_json)
    if code:
        raise UserError(message or "the registrar failed", ExitCode(code))


def _call_options(f: Any) -> Any:
    """The options `call` and `answer` share (docs/calls.md)."""
    options = [
        click.option("--user", default=None, help="User or AOR (sip:alice@example.org)."),
        click.option("--password", envvar="SIPUA_PASSWORD", default=None,
                     help="Digest password (or SIPUA_PASSWORD)."),
        click.option("--registrar", default=None, metavar="HOST[:PORT]",
                     help="Register there first; calls then go through it."),
        click.option("--stun", default=None, metavar="HOST:PORT", help="STUN server."),
        click.option("--turn", default=None, metavar="HOST:PORT", help="TURN server (UDP)."),
        click.option("--turn-user", default=None, help="TURN user name."),
        click.option("--turn-password", default=None, help="TURN password."),
        click.option("--nomination", type=click.Choice(["regular", "aggressive"]),
                     default=None, help="ICE nomination (default: the configuration's)."),
        click.option("--play", default=None, metavar="WAV", help="Send this WAV (looped)."),
        click.option("--record", default=None, metavar="WAV", help="Record what arrives."),
        click.option("--json", "as_json", is_flag=True,
                     help="Events and the final report as JSON lines."),
        click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
                     help="Seconds allowed for media to start flowing."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command("call")
@click.argument("uri")
@click.option("--listen", default="0.0.0.0:0", show_default=True, metavar="HOST[:PORT]",
              help="Local SIP address; port 0 picks a free one.")
@_call_options
@click.option("--tone", type=float, default=440.0, show_default=True,
              help="Tone to send when --play is not given (Hz).")
@click.option("--duration", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Seconds to keep the call once media flows.")
def call_command(uri: str, listen: str, tone: float, duration: float, **kw: Any) -> None:
    """Call URI; exit 0 when the call was set up and media flowed."""
    from sipua.useragent import CommandOptions, run_call_command

    opts = CommandOptions(listen=listen, tone=tone, duration=duration, **kw)
    code, message = run_call_command(uri, opts, emit=click.echo)
    if code:
        raise UserError(message, ExitCode(code))


@cli.command("answer")
@click.option("--listen", default="0.0.0.0:5060", show_default=True, metavar="HOST[:PORT]",
              help="Local SIP address to wait for calls on.")
@_call_options
@click.option("--tone", type=float, default=660.0, show_default=True,
              help="Tone to send when --play is not given (Hz).")
@click.option("--duration", type=click.FloatRange(0.001), default=None,
              help="Hang up each call after this many seconds (default: the caller does).")
@click.option("--max-calls", type=click.IntRange(0), default=0, show_default=True,
              help="Exit after this many calls (0: until interrupted).")
@click.option("--delay", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Seconds of ringing before answering.")
@click.option("--code", type=click.IntRange(200, 699), default=200, show_default=True,
              help="200 answers; 300-699 declines with that code.")
def answer_command(listen: str, tone: float, duration: float | None, max_calls: int,
                   delay: float, code: int, **kw: Any) -> None:
    """Answer every incoming call until interrupted or --max-calls."""
    from sipua.useragent import CommandOptions, run_answer_command

    opts = CommandOptions(listen=listen, tone=tone, duration=duration, **kw)
    result, message = run_answer_command(opts, max_calls=max_calls, delay=delay, code=code,
                                         emit=click.echo)
    if result:
        raise UserError(message, ExitCode(result))


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
