"""experiments/learning_check.py: the commands it builds and the summary it writes from finished runs."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "learning_check.py"
spec = importlib.util.spec_from_file_location("learning_check", SCRIPT)
learning_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning_check)


def write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in rows for k in r})
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def test_summary_puts_both_runs_and_the_validation_side_by_side(tmp_path):
    write_csv(tmp_path / "drqv2" / "eval.csv", [
        {"frame": 0, "eval/success_rate": 0.0, "eval/episode_return": 300, "total_time": 1},
        {"frame": 1000, "eval/success_rate": 0.2, "eval/episode_return": 900, "total_time": 600}])
    write_csv(tmp_path / "mbpo" / "eval.csv", [
        {"frame": 1000, "eval/success_rate": 0.4, "eval/episode_return": 1200, "total_time": 900}])
    phases = {f"time/{p}": 0 for p in learning_check.PHASES}
    write_csv(tmp_path / "mbpo" / "train.csv", [
        {"frame": 500, "train/episode_return": 1.0, **phases},
        {"frame": 600, "val/mse": 0.001, "val/copy_last_mse": 0.004, "val/recon_mse": 0.0005, "val/psnr": 30.0},
        {"frame": 1000, "train/episode_return": 2.0, **phases, "time/env": 5, "time/wm_update": 10},
    ])
    table = learning_check.summary(tmp_path).splitlines()
    assert "Wall clock: DrQ-v2 10.0 min, MBPO 15.0 min (1.50x)." in table
    assert ("MBPO seconds per 1,000 frames (frames 500-1000): env 10.0 s, agent_update 0.0 s, wm_update 20.0 s, "
            "imagination 0.0 s, wm_validation 0.0 s, eval 0.0 s; 30.0 s in all.") in table
    assert "| 0 | 0.00 | 300 | - | - |" in table
    assert "| 1000 | 0.20 | 900 | 0.40 | 1200 |" in table
    assert "| 600 | 0.00100 | 0.00400 | 0.25 | 0.00050 | 30.0 |" in table


def test_runs_compare_the_same_task_seed_and_frames_with_and_without_the_world_model(tmp_path):
    a = argparse.Namespace(task="reach", seed=3, demos=5, threads=1, frames=4000, eval_every=1000, image_size=32,
                           pretrained=None, mbpo_overrides=[])
    drqv2, mbpo = (learning_check.train_args(a, tmp_path, m) for m in ("drqv2", "mbpo"))
    assert "world_model=none" in drqv2 and "world_model=ivideogpt" in mbpo
    assert f"world_model.pretrained={tmp_path / 'pretrain' / 'checkpoint'}" in mbpo
    shared = {arg for arg in drqv2 if not arg.startswith(("world_model", "hydra.run.dir"))}
    assert shared <= set(mbpo) and {"task=reach", "seed=3", "num_train_frames=4000", "env.image_size=32"} <= shared
    a.mbpo_overrides.append("world_model.rollout.temperature=0")
    assert learning_check.train_args(a, tmp_path, "mbpo")[-1] == "world_model.rollout.temperature=0"
    assert learning_check.train_args(a, tmp_path, "drqv2") == drqv2


def test_the_target_task_is_refused_as_pretraining_data(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--task", "push", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "--task push is among --pretrain-tasks" in out.stderr


def test_a_given_checkpoint_replaces_the_pretrain_stage_and_a_missing_one_is_named(tmp_path):
    a = argparse.Namespace(task="reach", seed=1, demos=5, threads=1, frames=4000, eval_every=1000, image_size=64,
                           pretrained=str(tmp_path / "elsewhere"), methods=["mbpo"], parallel=False,
                           mbpo_overrides=[])
    assert f"world_model.pretrained={tmp_path / 'elsewhere'}" in learning_check.train_args(a, tmp_path, "mbpo")
    with pytest.raises(SystemExit, match="no pre-trained world model at .*elsewhere: run the pretrain stage"):
        learning_check.runs(a, tmp_path)


def test_unknown_methods_are_refused(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--methods", "mbpo,dreamer", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "--methods mbpo,dreamer: choose drqv2, mbpo or both" in out.stderr


def test_across_seeds_gives_each_check_a_row_and_their_mean(tmp_path):
    def check(root: Path, drqv2: list[tuple[int, float, float]], mbpo: list[tuple[int, float, float]],
              vals: list[tuple[int, float, float]]) -> None:
        for method, evals in (("drqv2", drqv2), ("mbpo", mbpo)):
            write_csv(root / method / "eval.csv", [{"frame": f, "eval/success_rate": s, "eval/episode_return": r}
                                                   for f, s, r in evals])
        write_csv(root / "mbpo" / "train.csv", [{"frame": 100, "train/episode_return": 1.0}]
                  + [{"frame": f, "val/mse": m, "val/copy_last_mse": c} for f, m, c in vals])

    # frames 0-4000: the second half is frames 2000, 3000, 4000; MBPO's last evaluation (5000) is not shared
    check(tmp_path / "s1", [(0, 0.0, 100), (2000, 0.2, 200), (3000, 0.4, 300), (4000, 0.6, 700)],
          [(0, 0.0, 100), (2000, 0.0, 300), (3000, 0.2, 300), (4000, 0.4, 900), (5000, 1.0, 5000)],
          [(1000, 9.0, 1.0), (2000, 0.003, 0.002), (4000, 0.001, 0.002)])
    check(tmp_path / "s2", [(0, 0.0, 100), (1000, 1.0, 400)], [(0, 0.0, 100), (1000, 0.0, 200)], [])
    lines = learning_check.across_seeds([tmp_path / "s1", tmp_path / "s2"]).splitlines()
    assert lines[2] == f"| {tmp_path / 's1'} | 4000 | 0.60 / 700 | 0.40 / 900 | 0.40 / 400 | 0.20 / 500 | 1.00 (2 validations) |"
    assert lines[3] == f"| {tmp_path / 's2'} | 1000 | 1.00 / 400 | 0.00 / 200 | 1.00 / 400 | 0.00 / 200 | - |"
    assert lines[4] == "| mean of 2 | | | | 0.70 / 400 | 0.10 / 350 | 1.00 |"


def test_across_seeds_names_a_check_whose_runs_share_no_evaluation(tmp_path):
    write_csv(tmp_path / "s1" / "drqv2" / "eval.csv", [{"frame": 0, "eval/success_rate": 0, "eval/episode_return": 1}])
    with pytest.raises(SystemExit, match="s1: no evaluation frame both drqv2/eval.csv and mbpo/eval.csv have"):
        learning_check.across_seeds([tmp_path / "s1"])
