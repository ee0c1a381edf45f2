"""The shape rules of docs/architecture.md, checked on the source.

Sans-IO cores never touch sockets, reactors, the clock or a random source of their own: they get
``now`` and an ``rng`` from the caller, which is what makes the fake-clock and seeded tests
deterministic. Every module is a core unless it is listed here as an adapter (I/O glue) or a tool.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ice", "media", "sipua")

#: Modules allowed to do I/O: Twisted glue, sockets, processes, the command line, the lab.
NOT_CORES = {
    "ice.driver", "ice.udp", "ice.peer", "ice.interfaces", "ice.__main__", "ice.server_udp",
    "media.audio", "media.stream", "media.clock",
    "sipua.cli", "sipua.__main__", "sipua.transport", "sipua.useragent", "sipua.resolver",
    "sipua.demo", "sipua.pytest_plugin", "sipua.settings", "sipua.config", "sipua.pcap",
    "sipua.account", "sipua.registrar_server", "sipua.call", "sipua.phone", "sipua.probe",
}
NOT_CORE_PACKAGES = ("sipua.lab",)

FORBIDDEN_IMPORTS = {"twisted", "socket", "asyncio", "select", "selectors", "time", "secrets",
                     "threading", "subprocess"}
ALLOWED_RANDOM_ATTRS = {"Random", "SystemRandom"}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts)
            if name.endswith(".__init__"):
                name = name[: -len(".__init__")]
            found.append((name, path))
    return found


def _cores() -> list[tuple[str, Path]]:
    return [
        (name, path)
        for name, path in _modules()
        if name not in NOT_CORES and not name.startswith(NOT_CORE_PACKAGES)
    ]


def _violations(tree: ast.AST) -> list[str]:
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_IMPORTS:
                    out.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in FORBIDDEN_IMPORTS:
                out.append(f"line {node.lineno}: from {node.module} import ...")
            if top == "random":
                bad = [a.name for a in node.names if a.name not in ALLOWED_RANDOM_ATTRS]
                if bad:
                    out.append(f"line {node.lineno}: from random import {', '.join(bad)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "random"
            and node.func.attr not in ALLOWED_RANDOM_ATTRS
        ):
            out.append(f"line {node.lineno}: random.{node.func.attr}() (take an rng instead)")
    return out


def test_rule_catches_forbidden_code() -> None:
    """The checker itself flags each kind of violation (so the real check can fail)."""
    src = "import time\nfrom twisted.internet import reactor\nimport random\nx = random.random()\n"
    found = _violations(ast.parse(src))
    assert len(found) == 3, found
    assert _violations(ast.parse("import random\nr: random.Random = random.Random(1)\n")) == []


@pytest.mark.parametrize("name,path", _cores(), ids=[n for n, _ in _cores()])
def test_core_is_sans_io(name: str, path: Path) -> None:
    """A core module imports no I/O framework and reads no clock or global random source."""
    problems = _violations(ast.parse(path.read_text(), filename=str(path)))
    assert not problems, f"{name} is a sans-IO core but has: {problems}"
