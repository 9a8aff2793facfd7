#!/usr/bin/env bash
# Installs everything this project needs on a fresh machine (idempotent, quick when already done).
# Usage: bash scripts/setup_env.sh [extras]   e.g. extras="test" or "test,report"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"

# 1. torch first, so that no later install pulls a multi-gigabyte CUDA build. Keep any torch already there.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi

# 2. Offscreen rendering for MuJoCo (EGL through Mesa). Only asks apt when a library is missing.
if command -v ldconfig >/dev/null && ! ldconfig -p | grep -q "libEGL.so.1"; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    echo "warning: libEGL not found; install libegl1 + Mesa (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri)" >&2
  fi
fi

# 3. The project itself (editable), with the requested extras.
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"$PY" -m pip install -q -e "$spec" 2>&1 | grep -v -E "^(WARNING: (Location|Running pip))" || true
"$PY" -c "import torch, core, mbrl, agents, world_model" || { echo "setup failed: the project does not import" >&2; exit 1; }
