"""``sipua lab``: bring a NAT lab up, inspect it, run commands in it, take it down."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """Network-namespace NAT lab with real Linux NAT (needs root)."""
