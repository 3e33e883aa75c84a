#!/usr/bin/env bash
# Install neural-tangents 0.6.5 (+ frozendict) into the project venv for ntk_vs_nn/kernels/{nt,infinite}.py:
# pinned by hash in requirements-nt.lock, --no-deps (its declared tensorflow/tf2jax are only for the
# `experimental` TensorFlow bridge, which ntk_vs_nn.kernels.nt_compat never loads). ~0.5 MB, a few seconds.
# Usage: bash scripts/install_nt.sh [VENV]   (default $VENV or .venv; `make install` creates it)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${VENV:-.venv}}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "error: $PY not found: run \`make install\` first" >&2
  exit 2
fi
STAMP="$VENV/.installed-nt"
check='from ntk_vs_nn.kernels import nt_compat as b; nt = b.import_neural_tangents(); print("neural-tangents", nt.__version__, "imports")'
if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements-nt.lock ] && "$PY" -c "$check" >/dev/null 2>&1; then
  exit 0
fi
"$PY" -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements-nt.lock
"$PY" -c "$check"
touch "$STAMP"
