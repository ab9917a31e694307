#!/usr/bin/env bash
# The README's test command: set up .venv when absent, then run the test suite.
#   bash scripts/test.sh            (extra arguments go to pytest, e.g. -m "not slow" or -k records)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python -m pytest "$@"
