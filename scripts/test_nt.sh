#!/usr/bin/env bash
# Run the neural-tangents cross-checks (pytest marker `nt`, tests/kernels/test_nt_crosscheck.py) for real:
# installs neural-tangents into the venv first (scripts/install_nt.sh) and fails, instead of
# skipping, when it does not import (NTK_VS_NN_REQUIRE_NT=1), or when no nt test ran.
# Usage: [VENV=.venv] bash scripts/test_nt.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
bash scripts/install_nt.sh "$VENV"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
NTK_VS_NN_REQUIRE_NT=1 "$VENV/bin/python" -m pytest -q -m nt -p no:cacheprovider tests/kernels/test_nt_crosscheck.py "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
  exit "$rc"
fi
if ! grep -Eq '^[0-9]+ passed' "$log" || grep -Eq '[0-9]+ skipped' "$log"; then
  echo "error: no neural-tangents test ran, or some were skipped" >&2
  exit 1
fi
