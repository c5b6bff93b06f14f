#!/usr/bin/env bash
# Install Debian's PostgreSQL server for the distributed-sweep test
# (tests/experiments/sweep/test_sweep_storage.py), once: a machine that has it already is left alone.
# The test starts its own throwaway server on 127.0.0.1; the package's own cluster is not used.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install-postgres: not root and no sudo; install Debian's postgresql package by hand" >&2
        exit 1
    fi
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101 keeps the package from starting its default cluster as a service: nothing
# should listen beyond what the test starts and stops itself.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    trap '$SUDO rm -f "$POLICY"' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
ls /usr/lib/postgresql/*/bin/postgres
