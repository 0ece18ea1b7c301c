#!/usr/bin/env bash
# Install into .venv and run the whole pipeline on the embedded mini dataset, served by a local S3
# server on loopback: download -> extract -> search -> eval -> submit, for phase 1 and phase 2.
# Extra arguments go to isc-run (e.g. --model efficientnet_lite0 --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -c constraints.txt -e '.[dev]'
.venv/bin/isc-run --demo demo/ "$@"
