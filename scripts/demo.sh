#!/usr/bin/env bash
# Install into .venv (Python 3.12, else 3.11) and run the whole pipeline on the embedded mini dataset,
# served by a local S3 server on loopback: download -> extract -> search -> eval -> submit, for phase 1
# and phase 2. Extra arguments go to isc-run (e.g. --model efficientnet_lite0 --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
"$VENV/bin/isc-run" --demo demo/ "$@"
