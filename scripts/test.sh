#!/usr/bin/env bash
# The README's test command: set up .venv when absent, then run the test suite.
#   bash scripts/test.sh            (extra arguments go to pytest, e.g. -m "not slow" or -k records)
# Tests run in parallel, one pytest-xdist worker per core (MXR0_TEST_WORKERS=N to choose, 0 for none); a test
# file stays on one worker (--dist loadfile), so its module fixtures are built once, and the heavy session
# fixtures are built once for all workers (tests/conftest.py: shared_artifact).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
workers="${MXR0_TEST_WORKERS:-auto}"
if [ "$workers" = "0" ]; then
  exec python -m pytest "$@"
fi
exec python -m pytest -n "$workers" --dist loadfile "$@"
