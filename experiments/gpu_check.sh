#!/usr/bin/env bash
# Every GPU check of the project in one call of at most ~10 minutes: the CUDA tests, the imagination, DrQ-v2,
# world-model and planning benches at the paper's sizes, and two minutes of profile=paper MBPO with its time split.
#
#   bash experiments/gpu_check.sh [OUT_DIR]       (default: $OUT when set, else ./gpu_check)
#
# Writes OUT_DIR/summary.json (experiments/gpu_check_summary.py: one entry per step with its exit status,
# seconds and parsed JSON output, plus MBPO's seconds per 1k env frames per phase) and OUT_DIR/logs/<step>.log.
# Each step has its own time limit (GPU_CHECK_LIMITS overrides them, e.g. "cuda_tests=60 mbpo=120"); a step
# that fails or runs out of time is recorded and the next one runs. On a machine without a CUDA GPU it says
# so in one line and exits 0 without running anything.
# IVG_SHARED: the shared/ folder with the reference checkpoint (default: ../shared, then ./shared).
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  -*) echo "gpu_check: unknown option $1 (usage: bash experiments/gpu_check.sh [OUT_DIR])" >&2; exit 2 ;;
esac
if [ "$#" -gt 1 ]; then
  echo "gpu_check: one argument at most, the output folder (got $#)" >&2; exit 2
fi
out="${1:-${OUT:-gpu_check}}"
PY="${PYTHON:-python3}"

gpu="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)"
if [ -z "$gpu" ]; then
  echo "gpu_check: no CUDA GPU visible to torch on this machine; nothing to check (run it where a GPU is)"
  exit 0
fi

mkdir -p "$out/logs"
export MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}" WANDB_MODE=disabled
if [ -z "${IVG_SHARED:-}" ]; then
  for candidate in ../shared shared; do
    [ -d "$candidate/reference" ] && export IVG_SHARED="$(cd "$candidate" && pwd)" && break
  done
fi
steps="$out/steps.tsv"
: > "$steps"
declare -A limit=([cuda_tests]=90 [bench_imagination]=120 [bench_drqv2]=45 [bench_world_model]=90 [bench_planning]=90
                  [mbpo]=120)
for pair in ${GPU_CHECK_LIMITS:-}; do limit[${pair%%=*}]="${pair#*=}"; done

# run NAME CMD...: runs CMD under NAME's time limit, its output in logs/NAME.log, one row (name, exit status, milliseconds) in steps.tsv
run() {
  local name="$1"; shift
  local start rc
  echo "gpu_check: $name (limit ${limit[$name]} s)"
  start=$(date +%s%N)
  timeout "${limit[$name]}" "$@" > "$out/logs/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - start) / 1000000 ))" >> "$steps"
  echo "gpu_check: $name exit $rc"
}

run cuda_tests "$PY" -m pytest -q -p no:cacheprovider tests/world_model/test_imagination_cuda.py
run bench_imagination "$PY" experiments/bench_imagination.py --preset paper64 --batches 32 --horizon 10 --json
drqv2_args=(--json)
"$PY" experiments/bench_drqv2.py --help 2>/dev/null | grep -q -- "--device" && drqv2_args+=(--device cuda)
run bench_drqv2 "$PY" experiments/bench_drqv2.py "${drqv2_args[@]}"
run bench_world_model "$PY" experiments/bench_world_model.py --presets paper64 --json
# the planning target: paper64, 200 sequences at horizon 10, at most 1 s per control step
run bench_planning "$PY" experiments/bench_planning.py --models ivideogpt --preset paper64 --samples 200 \
  --horizon 10 --device cuda --steps 5 --max-seconds 30 --json
# A shortened paper-profile MBPO run: every phase (exploration, initial world-model training, periodic updates,
# imagination) happens within the limit; train.csv's cumulative time/<phase> columns give the split.
run mbpo "$PY" -m mbrl.train task=door_open profile=paper seed=1 hydra.run.dir="$out/mbpo_run" \
  num_train_frames=3000 eval_every_frames=0 num_eval_episodes=0 save_video=false checkpoint_every_frames=0 \
  agent.num_expl_steps=500 world_model.schedule.init_train_steps=50 \
  world_model.schedule.imagination_start_frames=1200 world_model.schedule.validate_every_episodes=0

"$PY" experiments/gpu_check_summary.py "$out" --gpu "$gpu"
