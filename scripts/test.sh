#!/usr/bin/env bash
# The test command of the README (CI runs exactly this). Installs what it needs (the `test` extra, ruff
# included), lints with `ruff check .` (a lint error fails the command before any test runs), then runs pytest
# with the given arguments.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test || exit 1
echo "ruff check ." >&2
python3 -m ruff check . || { echo "ruff check . found lint errors (see above)" >&2; exit 1; }
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}" WANDB_MODE="${WANDB_MODE:-offline}"
export WANDB_SILENT=true
python3 -m pytest "$@"
rc=$?
# pytest exits 5 when it collected no test: that is a failure of the suite, not a pass.
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; fi
exit $rc
