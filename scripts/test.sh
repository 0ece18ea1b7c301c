#!/usr/bin/env bash
# Install into .venv (Python 3.12, else 3.11; tested versions from constraints.txt) and run the test suite.
# Running as root, it also installs Debian's chromium for the HTML report's browser test (else that test skips).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "chromium could not be installed: the browser test will be skipped" >&2
fi
"$VENV/bin/python" -m pytest -q "$@"
