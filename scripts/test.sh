#!/usr/bin/env bash
# Install into .venv (tested versions from constraints.txt) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -c constraints.txt -e '.[dev]'
# the HTML report's browser test needs Debian's chromium: installed when running as root, else that test skips
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "chromium could not be installed: the browser test will be skipped" >&2
fi
.venv/bin/python -m pytest -q "$@"
