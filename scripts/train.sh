#!/usr/bin/env bash
# The main job of the README: installs what it needs, then trains on door_open with defaults fit for this machine.
# Extra arguments are Hydra overrides, e.g. `bash scripts/train.sh agent=drqv2 world_model=none seed=3`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
exec python3 -m mbrl.train task=door_open "$@"
