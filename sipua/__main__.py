"""Allow ``python -m sipua``."""

from sipua.cli import main

main()
