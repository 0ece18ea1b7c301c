#!/usr/bin/env bash
# Install into .venv (tested versions from constraints.txt) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -c constraints.txt -e '.[dev]'
.venv/bin/python -m pytest -q "$@"
