"""The ``sipua`` command line: one group, a subcommand per job (docs/cli.md).

Subcommands are thin: they parse options, build settings and call the public API. A
:class:`~sipua.errors.UserError` raised anywhere below is printed on one line with its
documented exit code (:mod:`sipua.exitcodes`), never as a traceback; so are click's usage errors
(exit 2).

Every command takes ``--config FILE`` and ``--set KEY=VALUE`` (dotted keys of
docs/configuration.md); precedence, lowest first: defaults < file < ``SIPUA_*`` environment <
``--set`` < the command's own flags.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import click

from sipua import __version__
from sipua.errors import UserError
from sipua.exitcodes import ExitCode

if TYPE_CHECKING:
    from sipua.settings import Settings
    from sipua.useragent import UserAgent


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


# --- configuration: --config and --set on every command ---------------------------------------

def _config_options(f: Any) -> Any:
    """``--config FILE`` and ``--set KEY=VALUE`` (docs/configuration.md)."""
    f = click.option("--set", "set_values", multiple=True, metavar="KEY=VALUE",
                     help="Override one setting by its dotted key, e.g. "
                          "--set ice.nomination=aggressive (repeatable).")(f)
    return click.option("--config", "config_file", default=None, metavar="FILE",
                        help="TOML configuration (default: $SIPUA_CONFIG, ./sipua.toml, "
                             "~/.config/sipua/config.toml).")(f)


def parse_set_values(values: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--set`` arguments as load_settings overrides; a malformed one is a usage error."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise UserError(f"--set expects KEY=VALUE with a dotted key such as "
                            f"ice.nomination=aggressive, got {item!r}")
        out[key] = value
    return out


def load_command_settings(config_file: str | None, set_values: tuple[str, ...] | list[str],
                          flags: dict[str, Any] | None = None) -> Settings:
    """defaults < file < environment < ``--set`` < flags; errors name the key, on one line."""
    from sipua.config import load_settings

    overrides: dict[str, Any] = parse_set_values(set_values)
    overrides.update(flags or {})
    try:
        return load_settings(config_file, overrides=overrides)
    except UserError as exc:
        message = str(exc).replace(" in overrides", " on the command line")
        raise UserError(" ".join(message.split()), exc.code) from None


@cli.command()
@click.option("--nomination", type=click.Choice(["regular", "aggressive"]), default=None,
              help="How the controlling agent nominates [default: ice.nomination, regular].")
@click.option("--rtcp-mux/--no-rtcp-mux", default=False, show_default=True,
              help="Multiplex RTCP with RTP on one component (else a second component).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--seed", type=int, default=None, help="Seed the random source (repeatable runs).")
@_config_options
def demo(nomination: str | None, rtcp_mux: bool, as_json: bool, seed: int | None,
         config_file: str | None, set_values: tuple[str, ...]) -> None:
    """Place a real call with ICE between two agents through the embedded registrar and STUN
    server on this machine, play a tone each way and check what arrived."""
    import json

    settings = load_command_settings(config_file, set_values)
    nomination = nomination or settings.ice.nomination

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
@_config_options
def stun_server(listen: str, software: str | None, config_file: str | None,
                set_values: tuple[str, ...]) -> None:
    """Run the embedded STUN server (RFC 8489 Binding) until interrupted."""
    from twisted.internet import reactor

    load_command_settings(config_file, set_values)  # checked: the server has no keys of its own
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
@click.option("--user", "aor", default=None, metavar="SIP-URI",
              help="Address-of-record to register, e.g. sip:alice@example.org "
                   "[default: the configuration's first account].")
@click.option("--password", envvar="SIPUA_PASSWORD", default=None,
              help="Digest password (or the SIPUA_PASSWORD environment variable).")
@click.option("--auth-user", default=None, help="Digest user name; default: the user of --user.")
@click.option("--registrar", default=None, metavar="HOST[:PORT]",
              help="Where REGISTER goes; default: the domain of --user (RFC 3263).")
@click.option("--transport", type=click.Choice(["udp", "tcp", "tls"]), default=None,
              help="SIP transport [default: the account's, else udp].")
@click.option("--expires", type=click.IntRange(1, 2**32 - 1), default=None,
              help="Lifetime to ask for, in seconds [default: the account's, else 600].")
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
@_config_options
def register(aor: str | None, password: str | None, auth_user: str | None,
             registrar: str | None, transport: str | None, expires: int | None, listen: str,
             ca_file: str | None, unregister: bool, duration: float, timeout: float,
             as_json: bool, config_file: str | None, set_values: tuple[str, ...]) -> None:
    """Register an address-of-record (or remove its bindings) and report the outcome."""
    from sipua.account import run_register_command

    settings = load_command_settings(config_file, set_values)
    account = settings.accounts[0] if settings.accounts else None
    if aor is None:
        if account is None:
            raise UserError("missing --user (or an [[accounts]] entry in the configuration)")
        aor = account.uri
    if account is not None and account.uri == aor:
        password = password if password is not None else account.password
        auth_user = auth_user or account.auth_username
        registrar = registrar or account.registrar
        transport = transport or account.transport
        expires = expires or account.expires
        ca_file = ca_file or settings.ua.tls_ca_file
    transport = transport or "udp"
    expires = expires or 600
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
@_config_options
def registrar(listen: str, users_file: str, domain: str | None, transports: tuple[str, ...],
              tls_cert: str | None, tls_key: str | None, tls_port: int | None,
              min_expires: int, auth_invites: bool, as_json: bool, config_file: str | None,
              set_values: tuple[str, ...]) -> None:
    """Run the embedded registrar/proxy until interrupted, one line per registration."""
    from sipua.registrar_server import run_registrar_command

    load_command_settings(config_file, set_values)  # checked: the server has no keys of its own

    host, port = _split_hostport(listen, default_port=5060)
    code, message = run_registrar_command(
        listen=(host, port), users_file=users_file, domain=domain, transports=transports,
        tls_cert=tls_cert, tls_key=tls_key, tls_port=tls_port, min_expires=min_expires,
        auth_invites=auth_invites, emit=click.echo, as_json=as_json)
    if code:
        raise UserError(message or "the registrar failed", ExitCode(code))


def _ice_knob_options() -> list[Any]:
    """Knobs for testing another endpoint's ICE (docs/cli.md, docs/interop.md): each sets an
    ice.* key (see _ICE_KNOB_KEYS), so the settings check the values."""
    return [
        click.option("--ice-role", type=click.Choice(["auto", "controlling", "controlled"]),
                     default=None, help="Role to start in (ice.role; auto: the offerer "
                                        "controls)."),
        click.option("--tie-breaker", type=click.IntRange(0, 2**64 - 1), default=None,
                     metavar="N", help="Fixed 64-bit ICE tie-breaker (ice.tie_breaker)."),
        click.option("--ta", type=float, default=None, metavar="SECONDS",
                     help="Pacing interval of the checks (ice.ta)."),
        click.option("--keepalive", type=float, default=None, metavar="SECONDS",
                     help="Keepalive interval on the selected pair (ice.keepalive_interval)."),
        click.option("--consent", type=float, default=None, metavar="SECONDS",
                     help="Mean consent check interval, 0 off (ice.consent_interval)."),
        click.option("--candidates", default=None, metavar="TYPE[,TYPE...]",
                     help="Candidate types to gather and offer: host, srflx, relay "
                          "(ice.candidate_types)."),
        click.option("--ice-compat", type=click.Choice(["rfc8445", "rfc5245"]), default=None,
                     help="RFC 8445 or RFC 5245 behaviour where they differ (ice.compat)."),
        click.option("--drop-requests", type=click.FloatRange(0, 1), default=None,
                     metavar="P", help="Drop STUN checks to and from the peer with "
                                       "probability P (ice.faults.drop_requests_in/_out)."),
        click.option("--drop-responses", type=click.FloatRange(0, 1), default=None,
                     metavar="P", help="Drop STUN responses to and from the peer with "
                                       "probability P (ice.faults.drop_responses_in/_out)."),
        click.option("--drop-after", type=click.FloatRange(0), default=None, metavar="SECONDS",
                     help="Drop all STUN with the peer from this long after the checks "
                          "start (ice.faults.drop_after)."),
        click.option("--stun-delay", type=click.FloatRange(0), default=None, metavar="SECONDS",
                     help="Hold back each STUN message to the peer (ice.faults.delay)."),
        click.option("--withhold-nomination", is_flag=True, default=None,
                     help="As controlling agent never nominate (ice.faults."
                          "withhold_nomination)."),
    ]


#: The ICE knob flags and the keys they set (a probability flag sets both directions).
_ICE_KNOB_KEYS: dict[str, tuple[str, ...]] = {
    "ice_role": ("ice.role",), "tie_breaker": ("ice.tie_breaker",), "ta": ("ice.ta",),
    "keepalive": ("ice.keepalive_interval",), "consent": ("ice.consent_interval",),
    "candidates": ("ice.candidate_types",), "ice_compat": ("ice.compat",),
    "drop_requests": ("ice.faults.drop_requests_in", "ice.faults.drop_requests_out"),
    "drop_responses": ("ice.faults.drop_responses_in", "ice.faults.drop_responses_out"),
    "drop_after": ("ice.faults.drop_after",), "stun_delay": ("ice.faults.delay",),
    "withhold_nomination": ("ice.faults.withhold_nomination",),
}


def _call_options(f: Any) -> Any:
    """The options `call`, `answer` and `phone` share (docs/calls.md, docs/cli.md)."""
    options = [
        click.option("--user", default=None, help="User or AOR (sip:alice@example.org)."),
        click.option("--password", envvar="SIPUA_PASSWORD", default=None,
                     help="Digest password (or SIPUA_PASSWORD)."),
        click.option("--registrar", default=None, metavar="HOST[:PORT]",
                     help="Register there first; calls then go through it."),
        click.option("--transport", type=click.Choice(["udp", "tcp", "tls"]), default=None,
                     help="SIP transport for requests [default: the account's, else udp]."),
        click.option("--stun", default=None, metavar="HOST:PORT", help="STUN server."),
        click.option("--turn", default=None, metavar="HOST:PORT", help="TURN server (UDP)."),
        click.option("--turn-user", default=None, help="TURN user name."),
        click.option("--turn-password", default=None, help="TURN password."),
        click.option("--nomination", type=click.Choice(["regular", "aggressive"]),
                     default=None, help="ICE nomination (default: the configuration's)."),
        *_ice_knob_options(),
        click.option("--no-ice", is_flag=True, default=None,
                     help="No ICE: media to the SDP address only (ice.enabled = false)."),
        click.option("--ice-lite", is_flag=True, default=None,
                     help="Be an ICE-lite agent: host candidates, answer checks only."),
        click.option("--ipv6", is_flag=True, default=None, help="Gather IPv6 candidates too."),
        click.option("--rtcp-mux/--no-rtcp-mux", default=None,
                     help="Offer RTP and RTCP on one component (default: ice.rtcp_mux)."),
        click.option("--srtp", type=click.Choice(["off", "optional", "mandatory"]),
                     default=None, help="SRTP with SDES keys (default: media.srtp; "
                                        "docs/security.md)."),
        click.option("--play", default=None, metavar="WAV", help="Send this WAV (looped)."),
        click.option("--record", default=None, metavar="WAV", help="Record what arrives."),
        click.option("--json", "as_json", is_flag=True,
                     help="Events and the final report as JSON lines."),
        click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
                     help="Seconds allowed for media to start flowing."),
        click.option("--log-sip", is_flag=True,
                     help="Print every SIP message sent and received to standard error."),
        click.option("--log-sip-file", default=None, metavar="FILE",
                     help="Write every SIP message to FILE instead (implies --log-sip)."),
        click.option("--pcap", default=None, metavar="FILE",
                     help="Capture SIP, STUN/TURN and RTP as seen here to a pcap file."),
    ]
    for option in reversed(options):
        f = option(f)
    return _config_options(f)


#: The flags of _call_options that become settings (flag -> dotted key).
_FLAG_KEYS = {"no_ice": "ice.enabled", "ice_lite": "ice.lite", "ipv6": "ice.ipv6",
              "rtcp_mux": "ice.rtcp_mux", "nomination": "ice.nomination",
              "srtp": "media.srtp"}
_DEFAULT_LISTEN = "0.0.0.0:5060"


def _command_setup(kw: dict[str, Any], listen: str | None, default_listen: str,
                   ) -> tuple[Settings, Any, dict[str, Any]]:
    """Settings and CommandOptions from the shared options; returns what is left of ``kw``
    (the output and capture options) for the caller."""
    from sipua.useragent import CommandOptions

    flags: dict[str, Any] = {}
    for name, key in _FLAG_KEYS.items():
        value = kw.pop(name)
        if value is not None:
            flags[key] = (not value) if name == "no_ice" else value
    for name, keys in _ICE_KNOB_KEYS.items():
        value = kw.pop(name)
        for key in keys if value is not None else ():
            flags[key] = value
    stun, turn = kw.pop("stun"), kw.pop("turn")
    turn_user, turn_password = kw.pop("turn_user"), kw.pop("turn_password")
    if stun is not None:
        flags["ice.stun_servers"] = [stun]
    if turn is not None:
        uri = turn if turn.startswith(("turn:", "turns:")) else f"turn:{turn}"
        flags["ice.turn_servers"] = [{"uri": uri, "username": turn_user or "",
                                      "password": turn_password or ""}]
    elif turn_user is not None or turn_password is not None:
        raise UserError("--turn-user and --turn-password need --turn")
    if kw.pop("log_sip") or kw.get("log_sip_file"):
        flags["logging.log_sip"] = True
    settings = load_command_settings(kw.pop("config_file"), kw.pop("set_values"), flags)
    if listen is None:
        configured = settings.ua.listen
        listen = configured[0] if configured != (_DEFAULT_LISTEN,) else default_listen
    transport = kw.pop("transport")
    if transport is None:
        transport = settings.accounts[0].transport if settings.accounts else "udp"
    extras: dict[str, Any] = {name: kw.pop(name) for name in ("log_sip_file", "pcap")
                              if name in kw}
    opts = CommandOptions(listen=listen, transport=transport, **kw)
    return settings, opts, extras


def _writable(path: str, what: str) -> None:
    """Fail early (exit 2) when ``path`` cannot be written, before any call is placed."""
    target = Path(path)
    if target.is_dir() or not target.parent.is_dir():
        raise UserError(f"{what} {path}: not a file in an existing directory")


class _Session:
    """The command's printer, SIP log and packet capture around one user agent."""

    def __init__(self, settings: Settings, opts: Any, extras: dict[str, Any],
                 timeline: str | None = None) -> None:
        from rich.console import Console

        from sipua.output import HumanPrinter, JsonPrinter

        self.settings = settings
        self.timeline = timeline
        self.pcap_path: str | None = extras.get("pcap")
        self.log_path: str | None = extras.get("log_sip_file")
        for path, what in ((self.pcap_path, "--pcap"), (self.log_path, "--log-sip-file"),
                           (timeline, "--timeline")):
            if path is not None:
                _writable(path, what)
        self.printer: Any
        if opts.as_json:
            self.printer = JsonPrinter(click.echo)
        else:
            out = Console(highlight=False, soft_wrap=False,
                          width=None if sys.stdout.isatty() else 110)
            self.printer = HumanPrinter(out, Console(stderr=True))
        self._capture: Any = None
        self._log_file: IO[str] | None = None
        self.printer_report = self.printer.report
        self.printer.report = self._report

    def prepare(self, ua: UserAgent) -> None:
        """Called with the started user agent: hook the SIP log and the capture."""
        from sipua.output import SipLog
        from sipua.pcap import PacketCapture

        transport = ua.transport
        clock = ua.reactor.seconds
        if self.settings.logging.log_sip and transport is not None:
            stream: IO[str] = sys.stderr
            if self.log_path is not None:
                self._log_file = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115
                stream = self._log_file
            transport.taps.append(SipLog(stream, clock).tap)
        if self.pcap_path is not None:
            self._capture = PacketCapture(self.pcap_path, clock)
            self._capture.attach(transport)
        if ua.account is not None and ua.account.registrar is not None \
                and hasattr(self.printer, "progress"):
            self.printer.progress(f"registering {ua.account.uri} at {ua.account.registrar}")

    def _report(self, call: Any) -> None:
        self.printer_report(call)
        if self.timeline is not None:
            from sipua.timeline import render_timeline

            Path(self.timeline).write_text(render_timeline(call.report().to_dict()),
                                           encoding="utf-8")
            self.printer.say(f"timeline written to {self.timeline}", path=self.timeline)

    def close(self) -> None:
        """Stop the spinner, close the capture and the log."""
        self.printer.close()
        if self._capture is not None:
            self._capture.close()
            self.printer.say(f"{self._capture.writer.packets} packets written to "
                             f"{self.pcap_path}", path=self.pcap_path,
                             packets=self._capture.writer.packets)
        if self._log_file is not None:
            self._log_file.close()


@contextmanager
def _session(settings: Settings, opts: Any, extras: dict[str, Any],
             timeline: str | None = None) -> Iterator[_Session]:
    session = _Session(settings, opts, extras, timeline)
    try:
        yield session
    finally:
        session.close()


@cli.command("call")
@click.argument("uri")
@click.option("--listen", default=None, metavar="HOST[:PORT]",
              help="Local SIP address; port 0 picks a free one [default: ua.listen from the "
                   "configuration, else 0.0.0.0:0].")
@_call_options
@click.option("--tone", type=float, default=440.0, show_default=True,
              help="Tone to send when --play is not given (Hz).")
@click.option("--duration", type=click.FloatRange(0), default=5.0, show_default=True,
              help="Seconds to keep the call once media flows.")
@click.option("--timeline", default=None, metavar="FILE.svg",
              help="Draw every ICE check of the call over time into an SVG file.")
def call_command(uri: str, listen: str | None, tone: float, duration: float,
                 timeline: str | None, **kw: Any) -> None:
    """Call URI; exit 0 when the call was set up and media flowed."""
    from sipua.useragent import run_call_command

    settings, opts, extras = _command_setup({**kw, "tone": tone, "duration": duration},
                                            listen, "0.0.0.0:0")
    with _session(settings, opts, extras, timeline) as session:
        code, message = run_call_command(uri, opts, emit=click.echo, settings=settings,
                                         printer=session.printer, prepare=session.prepare)
    if code:
        raise UserError(message, ExitCode(code))


@cli.command("answer")
@click.option("--listen", default=None, metavar="HOST[:PORT]",
              help="Local SIP address to wait for calls on [default: ua.listen from the "
                   "configuration, else 0.0.0.0:5060].")
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
def answer_command(listen: str | None, tone: float, duration: float | None, max_calls: int,
                   delay: float, code: int, **kw: Any) -> None:
    """Answer every incoming call until interrupted or --max-calls."""
    from sipua.useragent import run_answer_command

    settings, opts, extras = _command_setup({**kw, "tone": tone, "duration": duration},
                                            listen, _DEFAULT_LISTEN)
    with _session(settings, opts, extras) as session:
        result, message = run_answer_command(opts, max_calls=max_calls, delay=delay, code=code,
                                             emit=click.echo, settings=settings,
                                             printer=session.printer,
                                             prepare=session.prepare)
    if result:
        raise UserError(message, ExitCode(result))


@cli.command("phone")
@click.option("--listen", default=None, metavar="HOST[:PORT]",
              help="Local SIP address [default: ua.listen from the configuration, else "
                   "0.0.0.0:0].")
@_call_options
@click.option("--tone", type=click.FloatRange(0), default=440.0, show_default=True,
              help="Without live audio: the tone to send (Hz; 0 sends silence).")
@click.option("--no-audio", is_flag=True,
              help="Do not open the microphone and speaker (tone and discard instead).")
def phone_command(listen: str | None, tone: float, no_audio: bool, **kw: Any) -> None:
    """Interactive softphone: dial, answer, hangup, hold, resume, dtmf, status, quit."""
    from sipua.phone import run_phone

    kw.pop("as_json")
    settings, opts, extras = _command_setup(
        {**kw, "tone": tone, "duration": None, "as_json": False}, listen, "0.0.0.0:0")
    with _session(settings, opts, extras) as session:
        code, message = run_phone(opts, settings=settings, no_audio=no_audio,
                                  prepare=session.prepare)
    if code:
        raise UserError(message, ExitCode(code))


@cli.command("probe")
@click.argument("uri")
@click.option("--listen", default=None, metavar="HOST[:PORT]",
              help="Local SIP address; port 0 picks a free one [default: ua.listen from the "
                   "configuration, else 0.0.0.0:0].")
@_call_options
@click.option("--listen-for", type=click.FloatRange(0), default=12.0, show_default=True,
              metavar="SECONDS",
              help="Seconds to watch the first call for keepalives, consent checks and an "
                   "updated offer.")
@click.option("--skip", default="", metavar="STEP[,STEP...]",
              help="Steps not to run: restart, role-conflict, mismatch.")
@click.option("--markdown", is_flag=True,
              help="Print the findings as a markdown table instead of the tables.")
def probe_command(uri: str, listen: str | None, listen_for: float, skip: str, markdown: bool,
                  **kw: Any) -> None:
    """Call URI a few times and report how the peer's ICE behaves (docs/cli.md); exit 0 when
    the probe ran, whatever it found."""
    import json

    from sipua.probe import (
        STEPS,
        ProbeOptions,
        render_report,
        report_markdown,
        run_probe_command,
    )
    from sipua.uri import SipParseError, parse_uri

    try:
        parse_uri(uri)
    except (SipParseError, ValueError) as exc:
        raise UserError(f"not a SIP URI: {uri!r} ({exc})") from None
    skipped = frozenset(s.strip() for s in skip.split(",") if s.strip())
    unknown = sorted(skipped - set(STEPS))
    if unknown:
        raise UserError(f"--skip: unknown step {', '.join(unknown)} (expected any of "
                        f"{', '.join(STEPS)})")
    settings, opts, extras = _command_setup({**kw, "duration": None}, listen, "0.0.0.0:0")
    options = ProbeOptions(listen_for=listen_for, skip=skipped, timeout=opts.timeout)
    with _session(settings, opts, extras) as session:
        say = None if opts.as_json or markdown else session.printer.say
        code, message, report = run_probe_command(uri, opts, options, settings=settings,
                                                   say=say, prepare=session.prepare)
    if opts.as_json:
        data = report.to_dict() if report is not None else {
            "uri": uri, "peer": None, "exit_code": code, "message": message, "timings": {},
            "findings": []}
        click.echo(json.dumps(data, default=str))
    elif markdown and report is not None:
        click.echo(report_markdown(report.to_dict()), nl=False)
    elif report is not None:
        from rich.console import Console

        render_report(report, Console(highlight=False, width=None if sys.stdout.isatty()
                                      else 110))
    if code:
        raise UserError(message, ExitCode(code))


def _split_hostport(text: str, *, default_port: int) -> tuple[str, int]:
    """``HOST[:PORT]`` with IPv6 in brackets (the settings' parser); a bad form is the user's
    mistake, reported on one line."""
    from sipua.settings import parse_hostport

    try:
        host, port = parse_hostport(text, default_port=default_port, allow_port_zero=True)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return host, default_port if port is None else port


def _register_subcommands() -> None:
    from sipua.lab.cli import lab

    cli.add_command(lab)


_register_subcommands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``sipua``): click's usage errors, like every :class:`UserError`,
    become one line and exit code 2."""
    try:
        result = cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="sipua",
                          standalone_mode=False)
    except click.UsageError as exc:
        where = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        message = " ".join(exc.format_message().split())
        click.echo(f"sipua: error: {message}{where}", err=True)
        sys.exit(int(ExitCode.USAGE))
    except click.ClickException as exc:
        click.echo(f"sipua: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("sipua: interrupted", err=True)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)
