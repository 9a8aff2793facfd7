"""experiments/gpu_check.sh and its summary, on a CPU: arguments, the no-GPU exit, the step flow (with a stand-in
python that claims a GPU) and the layout of summary.json."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.gpu_check_summary import last_json, main, summarise

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "gpu_check.sh"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "OUT"}
    full_env.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, env=full_env,
                          check=False,
                          timeout=120)


def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = run_script(str(out))
    assert result.returncode == 0
    assert result.stdout.strip().count("\n") == 0 and "no CUDA GPU" in result.stdout
    assert not out.exists()


def test_bad_arguments_are_one_line_errors():
    assert run_script("--fast").returncode == 2
    two = run_script("a", "b")
    assert two.returncode == 2 and "one argument at most" in two.stderr
    usage = run_script("--help")
    assert usage.returncode == 0 and "gpu_check.sh [OUT_DIR]" in usage.stdout


def test_with_a_gpu_every_step_runs_and_is_summarised(tmp_path):
    """A stand-in interpreter claims a GPU, records every command and prints a bench-like JSON line; the
    summary step runs for real."""
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-c" ]; then echo "Fake GPU 80GB"; exit 0; fi
if [ "$1" = "experiments/gpu_check_summary.py" ]; then exec {sys.executable} "$@"; fi
echo "$*" >> {calls}
echo 'progress...'; echo '{{"rows": [{{"name": "x", "value": 1}}]}}'
case "$*" in *bench_world_model*) exit 3;; esac
""")
    stub.chmod(0o755)
    out = tmp_path / "out"
    result = run_script(str(out), env={"PYTHON": str(stub), "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, result.stdout + result.stderr  # one step failed
    lines = calls.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [
        "-m", "experiments/bench_imagination.py", "experiments/bench_drqv2.py", "experiments/bench_drqv2.py",
        "experiments/bench_world_model.py", "experiments/bench_planning.py", "-m"]
    # pytest, the benches (drqv2's --help probe first), mbrl.train
    assert "test_imagination_cuda.py" in lines[0] and "--preset paper64 --batches 32 --horizon 10" in lines[1]
    assert lines[-1].startswith("-m mbrl.train task=door_open profile=paper")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gpu"] == "Fake GPU 80GB" and summary["ok"] is False
    assert [s["name"] for s in summary["steps"]] == ["cuda_tests", "bench_imagination", "bench_drqv2",
                                                     "bench_world_model", "bench_planning", "mbpo"]
    assert [s["exit_code"] for s in summary["steps"]] == [0, 0, 0, 3, 0, 0]
    assert "--preset paper64 --samples 200 --horizon 10 --device cuda" in lines[5]
    assert summary["steps"][1]["result"] == {"rows": [{"name": "x", "value": 1}]}


def test_summary_layout_and_the_mbpo_split(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "steps.tsv").write_text("bench_imagination\t0\t12345\nmbpo\t124\t150000\n")
    (tmp_path / "logs" / "bench_imagination.log").write_text('warming up {not json}\n[{"a": 1}]\n{"b": [2, 3]}\nbye\n')
    (tmp_path / "logs" / "mbpo.log").write_text("no json here\n")
    (tmp_path / "mbpo_run").mkdir()
    (tmp_path / "mbpo_run" / "train.csv").write_text(
        "frame,step,time/env,time/wm_update\n200,100,10.0,0\n2000,1000,40.0,120.5\n")
    summary = summarise(tmp_path, "H100")
    assert summary["ok"] is False
    first, second = summary["steps"]
    assert first == {"name": "bench_imagination", "exit_code": 0, "seconds": 12.3, "timed_out": False,
                     "log": "logs/bench_imagination.log", "result": {"b": [2, 3]}}
    assert second["timed_out"] is True and second["result"] is None
    assert summary["mbpo"] == {"frames": 2000, "episodes": 2,
                               "seconds_per_1k_frames": {"env": 20.0, "wm_update": 60.25}}
    assert main([str(tmp_path)]) == 1 and json.loads((tmp_path / "summary.json").read_text())["steps"]


@pytest.mark.parametrize(("text", "expected"), [("", None), ("x {} y", None), ('{"a": 1} {"a": 2}', {"a": 2})])
def test_last_json(text, expected):
    assert last_json(text) == expected
