"""Configuration on the command line (--config, --set, SIPUA_*) and how mistakes are reported:
one line, the documented exit code, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import StartRegistrar

SIPUA = [sys.executable, "-m", "sipua"]
#: Every command that reads the configuration, with arguments that would otherwise run it.
COMMANDS = [
    ["call", "sip:bob@127.0.0.1:9"],
    ["answer"],
    ["phone"],
    ["register", "--user", "sip:alice@example.org"],
    ["registrar", "--users", "/nonexistent"],
    ["stun-server"],
    ["demo"],
]


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment (no SIPUA_* of the machine), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPUA_")}
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env.update(extra)
    return env


def run(home: Path, *args: str, timeout: float = 30, **env: str
        ) -> subprocess.CompletedProcess[str]:
    """``sipua ARGS`` in ``home`` as the working directory."""
    return subprocess.run([*SIPUA, *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(home, **env), cwd=home, check=False)


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int,
                          *fragments: str) -> None:
    """Exit ``code``, exactly one line on stderr starting with 'sipua: error:', no traceback."""
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stderr.startswith("sipua: error: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_reports_a_bad_config_file_on_one_line(tmp_path: Path,
                                                             command: list[str]) -> None:
    """--config with a misspelt key: exit 2, one line naming the file, the key and the
    suggestion, for every command."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[ice]\nnominaton = "aggressive"\n')
    done = run(tmp_path, *command, "--config", str(bad))
    assert_one_line_error(done, 2, "unknown key 'ice.nominaton'", str(bad),
                          "did you mean 'ice.nomination'?")


@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_every_command_checks_set_values(tmp_path: Path, command: list[str]) -> None:
    """--set with a bad value names the key and the expectation; exit 2."""
    done = run(tmp_path, *command, "--set", "ice.nomination=agressive")
    assert_one_line_error(done, 2, "'ice.nomination' on the command line",
                          "expected one of 'regular', 'aggressive'")


@pytest.mark.parametrize("args, fragments", [
    (["--set", "nodots"], ["--set expects KEY=VALUE", "'nodots'"]),
    (["--set", "ua.t1=fast"], ["'ua.t1'", "expected a number"]),
    (["--set", "ice.bogus=1"], ["unknown key 'ice.bogus'"]),
    (["--config", "missing.toml"], ["missing.toml"]),
], ids=["no-equals", "bad-number", "unknown-key", "missing-file"])
def test_set_and_config_mistakes(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    """Malformed --set, wrong types, unknown keys, a missing --config file: one line, exit 2."""
    done = run(tmp_path, "call", "sip:bob@127.0.0.1:9", *args)
    assert_one_line_error(done, 2, *fragments)


def test_invalid_toml_and_bad_environment(tmp_path: Path) -> None:
    """A TOML syntax error names the file and position; a bad SIPUA_* variable names the
    variable; both exit 2 in one line."""
    (tmp_path / "sipua.toml").write_text("[ice\nnomination = 1\n")
    done = run(tmp_path, "answer")  # ./sipua.toml is found by the default search
    assert_one_line_error(done, 2, "invalid TOML in", "sipua.toml")
    (tmp_path / "sipua.toml").unlink()
    done = run(tmp_path, "answer", SIPUA_ICE__RTCP_MUX="perhaps")
    assert_one_line_error(done, 2, "SIPUA_ICE__RTCP_MUX")


@pytest.mark.parametrize("args, fragments", [
    (["call"], ["Missing argument 'URI'", "sipua call --help"]),
    (["call", "sip:b@127.0.0.1", "--nomination", "eager"], ["'eager' is not one of"]),
    (["call", "sip:b@127.0.0.1", "--listen", "nowhere:xx"], ["nowhere:xx"]),
    (["call", "sip:b@127.0.0.1", "--frobnicate"], ["No such option", "--frobnicate"]),
    (["call", "sip:b@127.0.0.1", "--turn-user", "u"], ["--turn-user and --turn-password"]),
    (["frobnicate"], ["No such command 'frobnicate'"]),
    (["register"], ["missing --user"]),
], ids=["missing-uri", "bad-choice", "bad-listen", "unknown-option", "turn-user-alone",
        "unknown-command", "register-no-user"])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                fragments: list[str]) -> None:
    """Usage mistakes, click's own and ours: one line and exit 2."""
    assert_one_line_error(run(tmp_path, *args), 2, *fragments)


def _report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    return next(x for x in lines if x["event"] == "CallReport")


def test_precedence_file_then_set_then_flags(tmp_path: Path) -> None:
    """The file sets aggressive nomination and no rtcp-mux; --set overrides the file; a flag
    overrides --set. Seen in the call report (to a port nobody answers, with T1 = 10 ms so
    that the INVITE gives up at once: exit 7, no answer)."""
    config = tmp_path / "rig.toml"
    config.write_text('[ice]\nnomination = "aggressive"\n')
    base = ["call", "sip:nobody@127.0.0.1:9", "--listen", "127.0.0.1:0", "--json",
            "--config", str(config), "--set", "ua.t1=0.01", "--set", "ua.t2=0.04"]
    done = run(tmp_path, *base)
    assert done.returncode == 7, done.stderr
    assert _report(done)["ice"]["nomination"] == "aggressive"
    done = run(tmp_path, *base, "--set", "ice.nomination=regular")
    assert _report(done)["ice"]["nomination"] == "regular"
    done = run(tmp_path, *base, "--set", "ice.nomination=regular", "--nomination",
               "aggressive")
    assert _report(done)["ice"]["nomination"] == "aggressive"
    assert "Traceback" not in done.stderr


def test_register_takes_the_account_from_the_config(tmp_path: Path,
                                                    start_registrar: StartRegistrar) -> None:
    """`sipua register --config alice.toml` registers the file's account (uri, password,
    registrar) without --user; the password may come from SIPUA_ACCOUNTS__ALICE__PASSWORD."""
    registrar = start_registrar({"alice": "alicepw"})
    config = tmp_path / "alice.toml"
    config.write_text(f'[[accounts]]\nname = "alice"\nuri = "sip:alice@example.org"\n'
                      f'registrar = "{registrar}"\n')
    done = run(tmp_path, "register", "--config", str(config), "--listen", "127.0.0.1:0",
               "--json", "--expires", "60", SIPUA_ACCOUNTS__ALICE__PASSWORD="alicepw")
    assert done.returncode == 0, done.stderr
    (event,) = [json.loads(x) for x in done.stdout.splitlines()]
    assert event["event"] == "Registered" and event["expires"] == 60
    done = run(tmp_path, "register", "--config", str(config), "--listen", "127.0.0.1:0",
               SIPUA_ACCOUNTS__ALICE__PASSWORD="wrong")
    assert_one_line_error(done, 3, "registration failed")
