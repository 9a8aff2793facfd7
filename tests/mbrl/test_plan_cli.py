"""`python -m mbrl.plan` end to end on tiny budgets: the world-model path, outputs, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import read_csv

from mbrl.plan import load_config, main

REPO = Path(__file__).resolve().parents[2]
# 32x32 frames and 8-step env episodes (the scripted goal episode is one of them): seconds per launch.
SMALL = ["task=reach", "env.image_size=32", "env.episode_length=8", "wandb.mode=disabled", "num_threads=1"]


def test_ivideogpt_planning_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    args = [*SMALL, "model=ivideogpt", "world_model.preset=tiny", "planner=mppi", "objective=goal_image",
            "episodes=1", "control_steps=2", "planner.samples=3", "planner.horizon=2", "world_model.chunk=2",
            f"out={out}"]
    env = {**os.environ, "WANDB_SILENT": "true"}
    result = subprocess.run([sys.executable, "-m", "mbrl.plan", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(out / "eval.csv")
    assert [row["episode"] for row in rows] == ["0"] and rows[0]["steps"] == "2"
    assert float(rows[0]["seconds_per_step"]) > 0
    assert (out / "videos" / "episode_0.gif").is_file() and (out / "config.yaml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 1 and summary["seconds_per_control_step"] > 0
    assert "1 successful" in result.stdout or "0/1 successful" in result.stdout


def test_oracle_run_resumes_over_episodes(tmp_path, capsys):
    out = tmp_path / "oracle"
    args = [*SMALL, "model=oracle", "planner=cem", "planner.samples=4", "planner.horizon=2", "planner.elites=2",
            "control_steps=2", "video=false", f"out={out}"]
    assert main([*args, "episodes=1"]) == 0
    first = read_csv(out / "eval.csv")
    assert main([*args, "episodes=2"]) == 0  # episode 0 is skipped, episode 1 added
    rows = read_csv(out / "eval.csv")
    assert [row["episode"] for row in rows] == ["0", "1"] and rows[0] == first[0]
    assert rows[0]["reset_seed"] != rows[1]["reset_seed"]
    assert "2 successful" in capsys.readouterr().out or json.loads((out / "summary.json").read_text())["episodes"] == 2


@pytest.mark.parametrize(("args", "message"), [
    (["planner=mppj"], "unknown planner 'mppj' (close matches: mppi)"),
    (["objective=goal_imag"], "unknown objective 'goal_imag' (close matches: goal_image)"),
    (["model=orakle"], "unknown model 'orakle' (close matches: oracle)"),
    (["planner.sample=5"], "unknown setting 'planner.sample' (close matches: planner.samples"),
    (["model=ivideogpt"], "needs world_model.pretrained=DIR"),
    (["control_steps=20"], "control_steps=20 must be in [1, env.episode_length=8]"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert main([*SMALL, *args, "out=/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_action_free_checkpoint_and_wrong_image_size_are_refused(tmp_path, tiny_checkpoint, capsys):
    from helpers import checkpoint_folder

    action_free = checkpoint_folder(tmp_path / "af", tiny_checkpoint, "transformer")
    base = [*SMALL, "env.image_size=64", "model=ivideogpt", f"out={tmp_path / 'x'}"]
    assert main([*base, f"world_model.pretrained={action_free}"]) == 2
    assert "action-free" in capsys.readouterr().err
    with_heads = checkpoint_folder(tmp_path / "heads", tiny_checkpoint, "transformer_with_heads")
    assert main([*base, f"world_model.pretrained={with_heads}", "planner.horizon=500"]) == 2
    assert "planner.horizon<=" in capsys.readouterr().err


def test_picking_a_planner_by_name_and_setting_fields():
    cfg = load_config(["planner=cem", "planner.samples=7", "planner.init_std=[0.5, 0.5, 0.5, 0]"])
    assert cfg.planner.name == "cem" and cfg.planner.samples == 7 and list(cfg.planner.init_std) == [0.5, 0.5, 0.5, 0]
