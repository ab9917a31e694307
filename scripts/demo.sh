#!/usr/bin/env bash
# The README's main command: set up .venv when absent, then run the end-to-end demo on phantom data.
#   bash scripts/demo.sh            (extra arguments go to `mxr0 demo`, e.g. --fast)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec mxr0 demo "$@"
