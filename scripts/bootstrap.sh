#!/usr/bin/env bash
# Creates ./.venv when absent and installs mxr0 into it (torch pinned and installed first).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips work already done).
#   MXR0_VENV     where the virtual environment lives (default: <repo>/.venv)
#   MXR0_TORCH    the torch requirement installed first (default: torch==2.13.0, the CPU wheel here)
#   MXR0_EXTRAS   extras to install (default: dev)
set -euo pipefail
MXR0_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MXR0_VENV="${MXR0_VENV:-$MXR0_ROOT/.venv}"
MXR0_TORCH="${MXR0_TORCH:-torch==2.13.0}"
MXR0_EXTRAS="${MXR0_EXTRAS:-dev}"
PYTHON="${PYTHON:-python3}"

# pip's output goes to a log (shown in full when an install fails), so the demo's output stays readable.
_pip() {
  local log="$MXR0_VENV/pip-install.log"
  if ! "$MXR0_VENV/bin/python" -m pip "$@" >>"$log" 2>&1; then
    echo "[mxr0] pip $* failed; its log ($log):" >&2
    tail -n 60 "$log" >&2
    return 1
  fi
}

if [ ! -x "$MXR0_VENV/bin/python" ]; then
  echo "[mxr0] creating virtual environment in $MXR0_VENV"
  "$PYTHON" -m venv "$MXR0_VENV"
  _pip install -q --upgrade pip
fi
# Re-install only when pyproject.toml or the requested extras/torch changed.
stamp="$MXR0_VENV/.mxr0-installed"
want="$( (cat "$MXR0_ROOT/pyproject.toml"; echo "$MXR0_TORCH $MXR0_EXTRAS") | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[mxr0] installing $MXR0_TORCH first, then mxr0[$MXR0_EXTRAS] (a few minutes the first time)"
  _pip install -q "$MXR0_TORCH"
  _pip install -q -e "$MXR0_ROOT[$MXR0_EXTRAS]"
  echo "$want" > "$stamp"
fi
# The dev extras' benchmark reference scripts/bench_align.py measures against: open_clip's ClipLoss. Installed with
# --no-deps (its torchvision requirement would replace our torch); bench_align loads only its loss module.
if [[ ",$MXR0_EXTRAS," == *",dev,"* ]] && ! "$MXR0_VENV/bin/python" -c \
    "import importlib.util, sys; sys.exit(importlib.util.find_spec('open_clip') is None)" 2>/dev/null; then
  _pip install -q --no-deps "open_clip_torch==3.3.0"
fi
export PATH="$MXR0_VENV/bin:$PATH"

# Optional: the browser the web-page test drives (tests/unit/test_serve.py), Debian's chromium + chromium-driver (a browser
# download at run time fails offline). Only as root with apt-get, when missing and MXR0_BROWSER is not 0; a failure
# is logged and never fails the bootstrap (the test then reports NOT RUN).
if [ "${MXR0_BROWSER:-1}" != "0" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 \
   && [ ! -x /usr/bin/chromium ]; then
  echo "[mxr0] installing chromium + chromium-driver for the browser test (log: $MXR0_VENV/apt-chromium.log)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >"$MXR0_VENV/apt-chromium.log" 2>&1; then
    echo "[mxr0] chromium could not be installed (see $MXR0_VENV/apt-chromium.log); the browser test will be NOT RUN" >&2
  fi
fi
