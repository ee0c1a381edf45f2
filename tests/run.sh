#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run every check:
# ruff, mypy (strict), the import contracts, and pytest. Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages for the NAT lab and the interop peers (installed only when missing, only as root).
DEBS=(iproute2 iptables nftables conntrack kamailio kamailio-extra-modules coturn baresip-core
      linphone-cli libnetfilter-queue-dev build-essential tcpdump)
missing=()
for pkg in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "tests/run.sh: installing Debian packages: ${missing[*]}"
        # Keep package scripts from starting daemons (kamailio, coturn) on the machine's ports:
        # the lab starts its own, inside its namespaces.
        policy=/usr/sbin/policy-rc.d
        had_policy=0; [ -e "$policy" ] && had_policy=1
        [ "$had_policy" = 1 ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; }
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
        [ "$had_policy" = 1 ] || rm -f "$policy"
    else
        echo "tests/run.sh: not root, cannot install ${missing[*]}: lab and interop tests will skip"
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# NetfilterQueue drives the lab's delay/jitter/reorder; it builds against libnetfilter-queue-dev.
python3 -m pip install -q --disable-pip-version-check 'NetfilterQueue>=1.1' || \
    echo "tests/run.sh: NetfilterQueue did not install: lab delay tests will skip"

echo "== ruff"; ruff check .
echo "== mypy"; mypy
echo "== import contracts"; lint-imports
echo "== pytest"; python3 -m pytest "$@"
