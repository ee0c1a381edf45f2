"""``sipua lab``: bring a NAT lab up, inspect it, run commands in it, take it down.

The command line is fixed so that scripts can rely on it (docs/lab.md)::

    sipua lab up TOPOLOGY [--name N] [--delay MS] [--jitter MS] [--loss PCT] [--udp-timeout S]
                 [--overlap] [--no-servers] [--reorder PCT] [--duplicate PCT] [--turn-lifetime S]
    sipua lab link [--name N] HOST up|down
    sipua lab status [--name N] [--json]
    sipua lab exec [--name N] HOST -- CMD ...
    sipua lab down [--name N]
    sipua lab matrix [--peers LIST] [--scenarios LIST] [--nomination LIST] [--quick] [--json]
                     [--write-docs [PATH]] [--name PREFIX]
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import click

from sipua.errors import UserError
from sipua.lab.lab import Lab, check_environment, list_labs, teardown
from sipua.lab.topology import DEFAULT_NAME, TOPOLOGY_HELP

_NAME = click.option("--name", "-n", default=DEFAULT_NAME, show_default=True,
                     help="Lab name (prefix of its namespaces).")


@click.group()
def lab() -> None:
    """Network-namespace NAT lab with real Linux NAT (needs root)."""


def _print_status(status: dict[str, Any]) -> None:
    opts = status["options"]
    extras = [f"{k}={v}" for k, v in opts.items() if v not in (0, None, False) and k != "servers"]
    click.echo(f"lab {status['name']}: {status['topology']}"
               + (f" ({', '.join(extras)})" if extras else ""))
    for host in status["hosts"].values():
        behind = (f"behind {host['nat']} NAT {host['router']}" if host["router"]
                  else "public")
        click.echo(f"  {host['name']:<7}{host['address']:<16}public {host['public_address']:<16}"
                   f"{behind}  [ns {host['namespace']}]")
    srv = status["servers"]
    if srv:
        click.echo(f"  STUN/TURN {srv['turn']['address']} user {srv['turn']['user']}"
                   f"/{srv['turn']['password']} realm {srv['turn']['realm']}")
        users = ", ".join(f"{u}/{p}" for u, p in srv["sip"]["users"].items())
        click.echo(f"  SIP {srv['sip']['registrar']} domain {srv['sip']['domain']} users {users}")
    for name, proc in status["processes"].items():
        state = "running" if proc["alive"] else "DEAD"
        click.echo(f"  {name}: pid {proc['pid']} {state} (log {status['state_dir']}/{name}.log)")


@lab.command()
@click.argument("topology", metavar="TOPOLOGY")
@_NAME
@click.option("--delay", type=float, default=0.0, help="Delay (ms) of each packet crossing the "
              "internet.")
@click.option("--jitter", type=float, default=0.0, help="Uniform +/- jitter (ms) on the delay; "
              "reorders packets.")
@click.option("--loss", type=float, default=0.0, help="Share (%) of packets crossing the "
              "internet that are dropped.")
@click.option("--udp-timeout", type=int, default=None, help="UDP binding timeout (s) of the NATs.")
@click.option("--overlap", is_flag=True, help="Both homes use 192.168.1.0/24, same host address.")
@click.option("--no-servers", is_flag=True, help="Do not start coturn and Kamailio.")
@click.option("--reorder", type=float, default=0.0, help="Share (%) of packets crossing the "
              "internet held back 25 ms, so that later ones overtake them.")
@click.option("--duplicate", type=float, default=0.0, help="Share (%) of packets crossing the "
              "internet delivered twice.")
@click.option("--turn-lifetime", type=int, default=None, help="Longest TURN allocation "
              "lifetime (s) coturn grants.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def up(topology: str, name: str, delay: float, jitter: float, loss: float,
       udp_timeout: int | None, overlap: bool, no_servers: bool, reorder: float,
       duplicate: float, turn_lifetime: int | None, as_json: bool) -> None:
    """Build a lab."""
    the_lab = Lab.up(topology, name, delay_ms=delay, jitter_ms=jitter, loss_pct=loss,
                     udp_timeout=udp_timeout, overlap=overlap, servers=not no_servers,
                     reorder_pct=reorder, duplicate_pct=duplicate, turn_lifetime=turn_lifetime)
    status = the_lab.status()
    if as_json:
        click.echo(json.dumps(status, indent=2))
    else:
        _print_status(status)


up.help = f"Build a lab. TOPOLOGY: {TOPOLOGY_HELP}."


@lab.command()
@_NAME
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str, as_json: bool) -> None:
    """Hosts, their addresses, their NAT's public address, servers and processes."""
    check_environment()
    the_lab = Lab.attach(name)
    if as_json:
        click.echo(json.dumps(the_lab.status(), indent=2))
    else:
        _print_status(the_lab.status())
        others = [n for n in list_labs() if n != name]
        if others:
            click.echo(f"other labs: {', '.join(others)}")


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@_NAME
@click.argument("host")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, host: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in HOST (server, a, b, or nat-a, nat-b, nat, inet); exits with CMD's code."""
    check_environment()
    the_lab = Lab.attach(name)
    try:
        code = subprocess.call(the_lab.argv(host, list(cmd)))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


@lab.command()
@_NAME
@click.argument("host")
@click.argument("state", type=click.Choice(["up", "down"]))
def link(name: str, host: str, state: str) -> None:
    """Cut (down) or restore (up) HOST's uplink: its packets vanish in its NAT router."""
    check_environment()
    Lab.attach(name).link(host, state == "up")
    click.echo(f"lab {name}: {host} link {state}")


@lab.command()
@_NAME
def down(name: str) -> None:
    """Stop every process and remove every namespace of the lab (also after a crash)."""
    check_environment()
    if not teardown(name):
        raise UserError(f"no lab named {name!r}")
    click.echo(f"lab {name} removed")


@lab.command()
@click.option("--peers", default="sipua,baresip,aioice,linphone", show_default=True,
              help="Peers to pair sipua with (sipua = sipua calling sipua).")
@click.option("--scenarios", default=None, metavar="LIST",
              help="Scenarios (default all): pub-pub, prc-prc, prc-sym, sym-sym, full-sym, "
              "hairpin, overlap, lossy, short-binding.")
@click.option("--nomination", "nominations", default="regular,aggressive", show_default=True,
              help="Nominations of the controlling side.")
@click.option("--quick", is_flag=True, help="The CI subset: every scenario and peer once.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per cell, then a summary.")
@click.option("--write-docs", "docs_path", is_flag=False, flag_value="docs/interop.md",
              default=None, metavar="[PATH]",
              help="Rewrite the generated table of PATH (default docs/interop.md).")
@click.option("--name", "prefix", default="mx", show_default=True,
              help="Prefix of the labs' names (one lab per scenario: PREFIX0, PREFIX1, ...).")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the peers' logs and recordings there (default: a temporary directory).")
def matrix(peers: str, scenarios: str | None, nominations: str, quick: bool, as_json: bool,
           docs_path: str | None, prefix: str, work_dir: str | None) -> None:
    """Interop matrix: calls for every scenario x peer x who calls x nomination; exit 1 when a
    cell failed."""
    from sipua.lab.matrix import run_command

    sys.exit(run_command(peers=peers, scenarios=scenarios, nominations=nominations,
                         quick=quick, as_json=as_json, docs_path=docs_path, prefix=prefix,
                         work_dir=work_dir))
