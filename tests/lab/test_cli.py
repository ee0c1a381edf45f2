"""``sipua lab`` as scripts use it: up, status --json, exec, down, and clean one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sipua.cli import cli
from sipua.exitcodes import ExitCode
from sipua.lab import netns
from sipua.lab.lab import STATE_ROOT, Lab, teardown
from sipua.lab.servers import read_pid_files
from sipua.lab.topology import NAMESPACE_SUFFIXES, NAT_WAN
from tests.lab.conftest import unique_name


def sipua(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed command line as a separate process."""
    return subprocess.run([sys.executable, "-m", "sipua", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def _leftovers(name: str) -> list[str]:
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(f"{name}-")]


def test_up_status_exec_down() -> None:
    """The four subcommands end to end; afterwards no namespace, process or state is left."""
    name = unique_name()
    try:
        up = sipua("lab", "up", "prc-sym", "--name", name, "--no-servers", "--udp-timeout", "20")
        assert up.returncode == 0, up.stderr
        assert "203.0.113.11" in up.stdout
        st = sipua("lab", "status", "--name", name, "--json")
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["topology"] == "prc-sym"
        assert status["hosts"]["a"]["public_address"] == NAT_WAN["a"]
        assert status["hosts"]["b"]["nat"] == "sym"
        assert status["options"]["udp_timeout"] == 20
        ok = sipua("lab", "exec", "--name", name, "a", "--", "ip", "-4", "-o", "addr", "show",
                   "eth0")
        assert ok.returncode == 0 and "10.0.1.10/24" in ok.stdout
        timeout = sipua("lab", "exec", "--name", name, "nat-a", "--", "sysctl", "-n",
                        "net.netfilter.nf_conntrack_udp_timeout")
        assert timeout.stdout.strip() == "20"
        failing = sipua("lab", "exec", "--name", name, "b", "--", "sh", "-c", "exit 7")
        assert failing.returncode == 7
        # A process started in the lab by someone else is ended by down, too.
        sleeper = subprocess.Popen(["ip", "netns", "exec", f"{name}-b", "sleep", "60"])
        down = sipua("lab", "down", "--name", name)
        assert down.returncode == 0, down.stderr
        assert sleeper.wait(timeout=5) != 0
        assert _leftovers(name) == []
        assert not (STATE_ROOT / name).exists()
        again = sipua("lab", "down", "--name", name)
        assert again.returncode == ExitCode.USAGE
        assert again.stderr.strip() == f"sipua: error: no lab named {name!r}"
    finally:
        teardown(name)


def test_down_cleans_up_after_a_crash() -> None:
    """With the state file gone (a crashed ``up``), down still removes the namespaces and the
    processes running in them (servers included) and never touches another lab's namespaces."""
    name = unique_name()
    neighbour = name + "x"  # shares the prefix: must survive
    lab = Lab.up("pub-prc", name, servers=True)
    other = Lab.up("pub-pub", neighbour, servers=False)
    try:
        server_pids = [pid for pid, _ in read_pid_files(lab.state_dir).values()]
        assert server_pids
        (lab.state_dir / "state.json").unlink()
        for pid_file in lab.state_dir.glob("*.pid"):
            pid_file.unlink()
        assert teardown(name)
        assert _leftovers(name) == []
        assert not any(netns.alive(pid) for pid in server_pids)
        assert all(netns.exists(f"{neighbour}-{s}") for s in ("inet", "server", "a", "b"))
    finally:
        teardown(name)
        other.down()
    assert not any(netns.exists(f"{neighbour}-{s}") for s in NAMESPACE_SUFFIXES)


def test_clean_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown topology, a bad name, a missing lab, not root, missing tools: one line each,
    the documented exit code, no traceback."""
    runner = CliRunner()
    cases = [
        (["lab", "up", "prc-nope", "--name", unique_name()], ExitCode.USAGE, "unknown topology"),
        (["lab", "up", "prc-sym", "--name", "Bad-Name"], ExitCode.USAGE, "bad lab name"),
        (["lab", "status", "--name", unique_name()], ExitCode.USAGE, "no lab named"),
        (["lab", "exec", "--name", unique_name(), "a", "--", "true"], ExitCode.USAGE,
         "no lab named"),
    ]
    for argv, code, text in cases:
        result = runner.invoke(cli, argv)
        assert result.exit_code == code, (argv, result.output)
        assert text in result.output and "Traceback" not in result.output
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = runner.invoke(cli, ["lab", "up", "prc-sym", "--name", unique_name()])
    assert result.exit_code == ExitCode.ENVIRONMENT
    assert "needs root" in result.output
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(Path("/nonexistent")))
    result = runner.invoke(cli, ["lab", "up", "prc-sym", "--name", unique_name()])
    assert result.exit_code == ExitCode.ENVIRONMENT
    assert "'ip' is missing" in result.output
