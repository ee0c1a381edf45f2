"""Fixtures of the NAT lab tests: skip cleanly where a lab cannot exist, and never leak one.

Every test builds its own lab under a unique name and removes it, so the tests can run in
parallel and after a crashed run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sipua.lab.lab import Lab, teardown


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the NAT lab needs root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"'{tool}' is missing (apt-get install {package})"
    probe = f"skipchk{uuid.uuid4().hex[:6]}"
    done = subprocess.run(
        ["ip", "netns", "add", probe], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return f"cannot create network namespaces: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return None


_REASON = _skip_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here ``lab``; skip them all, with the reason, where no lab can run."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.lab)
            if _REASON:
                item.add_marker(pytest.mark.skip(reason=_REASON))


def unique_name() -> str:
    """A lab name no other test (or parallel run) uses."""
    return "t" + uuid.uuid4().hex[:8]


def have_servers() -> bool:
    """Whether coturn and Kamailio are installed."""
    return bool(shutil.which("turnserver") and shutil.which("kamailio"))


def have_nfqueue() -> bool:
    """Whether the NetfilterQueue package (the delayer) is importable."""
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """``make_lab(topology, **options)``: a lab with a unique name, removed after the test."""
    names: list[str] = []

    def make(topology: str, **options: Any) -> Lab:
        options.setdefault("servers", False)
        name = unique_name()
        names.append(name)
        return Lab.up(topology, name, **options)

    yield make
    for name in names:
        teardown(name)
