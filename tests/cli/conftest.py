"""Fixtures of the command-line tests: processes a user would start alongside the one tested."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from sipua.lab.sipua_peer import clean_env

#: ``start_registrar(users)``: the registrar's ``host:port``.
StartRegistrar = Callable[[Mapping[str, str]], str]


@pytest.fixture
def start_registrar(tmp_path: Path) -> Iterator[StartRegistrar]:
    """``start_registrar({"alice": "alicepw", ...})``: ``sipua registrar`` for example.org
    with those users (name to password) on a free loopback UDP port; returns its
    ``host:port``. Every registrar started is terminated after the test."""
    procs: list[subprocess.Popen[str]] = []

    def start(users: Mapping[str, str]) -> str:
        path = tmp_path / f"users-{len(procs)}"
        path.write_text("".join(f"{name}:{password}\n" for name, password in users.items()))
        proc = subprocess.Popen([sys.executable, "-m", "sipua", "registrar", "--listen",
                                 "127.0.0.1:0", "--users", str(path), "--domain",
                                 "example.org"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=clean_env(tmp_path))
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "registrar listening on udp 127.0.0.1:" in line, line
        return line.split("udp ")[1].split(",")[0]

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
