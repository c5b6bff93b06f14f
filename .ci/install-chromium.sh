#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the report's browser test
# (tests/experiments/test_report.py), once: a machine that has it already is left alone.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install-chromium: not root and no sudo; install Debian's chromium package by hand" >&2
        exit 1
    fi
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Recommends are skipped (they pull in desktop pieces); a font is named so text renders.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
