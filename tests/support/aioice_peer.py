"""aioice as a peer of the ICE peer line protocol: the program lives in
:mod:`sipua.lab.aioice_peer`; this path stays runnable for the tests' command lines
(``python tests/support/aioice_peer.py --role ...`` with the repository on ``PYTHONPATH``)."""

from __future__ import annotations

import sys

from sipua.lab.aioice_peer import main

if __name__ == "__main__":
    sys.exit(main())
