"""`python -m mbrl.train task=door_open` with the iVideoGPT world model (MBPO), end to end on tiny settings:
the schedule's counts, the agent-batch mix, validation outputs and exact resume."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import read_csv, run_train_cli

from core.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
# 10-step episodes (20 frames), the tiny world model, 2-segment world-model batches of 4 frames, 4 rollouts of
# 3 steps per imagination. No profile named: the automatic one (cpu here); what the counts below depend on is
# set explicitly.
TINY = [
    "task=door_open", "world_model=ivideogpt", "num_threads=1", "env.episode_length=10", "agent.batch_size=8",
    "agent.hidden_dim=32", "agent.feature_dim=16", "agent.num_filters=8", "agent.num_expl_steps=10", "agent.updates_per_step=1",
    "replay_capacity=1000", "eval_every_frames=0", "num_eval_episodes=0", "checkpoint_every_frames=40",
    "logging.wandb.mode=disabled", "world_model.preset=tiny", "world_model.segment_batch_size=2",
    "world_model.segment_length=4", "world_model.imagined_capacity=300", "world_model.real_ratio=0.5",
    "world_model.schedule.init_train_steps=2", "world_model.schedule.transformer_every_frames=10",
    "world_model.schedule.tokenizer_every_frames=40", "world_model.schedule.imagination_start_frames=40",
    "world_model.schedule.init_rollout_batches=2", "world_model.schedule.rollout_every_frames=20",
    "world_model.schedule.validate_every_episodes=2", "world_model.rollout.batch_size=4",
    "world_model.rollout.horizon=3", "world_model.validation.batch_size=2",
]


def number(row: dict[str, str], key: str) -> float:
    return float(row[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One uninterrupted 120-frame run, and one stopped at 60 frames then relaunched to 120 in its folder."""
    root = tmp_path_factory.mktemp("mbpo")
    full, split = root / "full", root / "split"
    first = run_train_cli(*TINY, "num_train_frames=120", f"hydra.run.dir={full}")
    run_train_cli(*TINY, "num_train_frames=60", "save_video=false", f"hydra.run.dir={split}")
    resumed = run_train_cli(*TINY, "num_train_frames=120", "save_video=false", f"hydra.run.dir={split}")
    (full / "console.txt").write_text(first.stderr + first.stdout)
    (split / "console.txt").write_text(resumed.stderr + resumed.stdout)
    return {"full": full, "split": split}


@pytest.mark.slow
def test_first_lines_say_which_world_model_and_profile_run(runs):
    lines = (runs["full"] / "console.txt").read_text().splitlines()
    head = "\n".join(lines[:4])
    assert "world model: iVideoGPT preset tiny" in head and "MBPO schedule (env frames)" in head
    if not torch.cuda.is_available():
        assert "no GPU found: using profile=cpu" in head


@pytest.mark.slow
def test_world_model_training_and_imagination_follow_the_schedule(runs):
    rows = read_csv(runs["full"] / "train.csv")
    last = rows[-1]
    assert int(last["frame"]) == 120 and len(rows) == 6
    # Agent steps act at frames 0, 2, ..., 118. Seed frames = 10 exploration steps x 2 = 20.
    assert number(last, "wm/init_updates") == 2  # once, at frame 20
    assert number(last, "wm/transformer_updates") == 2 + len(range(30, 119, 10))  # init + every 10 frames
    assert number(last, "wm/tokenizer_updates") == 2 + len(range(60, 119, 40))  # init + every 40 frames
    rollout_batches = 2 + len(range(60, 119, 20))  # 2 at frame 40, then every 20 frames
    assert number(last, "imagination/rollout_batches") == rollout_batches
    assert number(last, "imagination/rollouts") == 4 * rollout_batches
    assert number(last, "imagination/buffer_size") == 4 * rollout_batches * 3  # transitions of horizon 3
    # Counts grow episode by episode exactly as the schedule says (frame of the row = end of its episode).
    assert [number(r, "imagination/rollout_batches") for r in rows] == [0, 0, 2, 3, 4, 5]
    assert [number(r, "wm/transformer_updates") for r in rows] == [0, 3, 5, 7, 9, 11]
    assert all(number(r, "time/wm_update") > 0 for r in rows[1:]) and number(last, "time/imagination") > 0
    assert number(last, "time/env") > 0 and number(last, "time/agent_update") > 0
    assert float(rows[1]["wm/transformer/ce"]) > 0 and float(rows[1]["wm/tokenizer/recon_l1"]) > 0


@pytest.mark.slow
def test_agent_batches_mix_real_and_imagined_once_imagination_starts(runs):
    rows = read_csv(runs["full"] / "train.csv")
    # Updates from step 10 (frame 20), one per step: 10 all-real batches of 8 before frame 40, then 40 of 4 + 4.
    last = rows[-1]
    assert number(last, "mbpo/agent_batches") == 50
    assert number(last, "mbpo/real_transitions") == 10 * 8 + 40 * 4
    assert number(last, "mbpo/imagined_transitions") == 40 * 4
    assert (number(rows[1], "mbpo/last_batch_real"), number(rows[1], "mbpo/last_batch_imagined")) == (8, 0)
    assert (number(last, "mbpo/last_batch_real"), number(last, "mbpo/last_batch_imagined")) == (4, 4)


@pytest.mark.slow
def test_validation_metrics_and_videos_are_logged(runs):
    rows = read_csv(runs["full"] / "train.csv")
    validated = [int(r["frame"]) for r in rows if r.get("val/psnr")]
    assert validated == [40, 80, 120]  # validations at frames 20, 60, 100, logged with their episode's row
    for row in rows:
        if row.get("val/psnr"):
            assert float(row["val/mse"]) > 0 and float(row["val/copy_last_mse"]) > 0
            assert float(row["val/reward_mse"]) >= 0 and float(row["val/psnr"]) > 0
    videos = sorted(p.name for p in (runs["full"] / "videos").iterdir())
    assert videos == ["imagined_100.gif", "imagined_60.gif", "val_100.gif", "val_20.gif", "val_60.gif"]


@pytest.mark.slow
def test_a_stopped_run_resumes_exactly_where_its_checkpoint_left_off(runs):
    assert "resumed from" in (runs["split"] / "console.txt").read_text()
    a = load_checkpoint(runs["full"] / "checkpoints" / "latest.pt")
    b = load_checkpoint(runs["split"] / "checkpoints" / "latest.pt")
    assert a["counters"] == b["counters"] == {"step": 60, "episode": 6, "frame": 120}
    assert a["world_model"]["counters"] == b["world_model"]["counters"]
    assert a["world_model"]["imagined"]["total_rollouts"] == b["world_model"]["imagined"]["total_rollouts"] == 20
    assert torch.equal(a["world_model"]["imagined"]["frames"], b["world_model"]["imagined"]["frames"])
    assert torch.equal(a["world_model"]["imagined"]["rewards"], b["world_model"]["imagined"]["rewards"])
    for key, value in a["world_model"]["model"].items():
        assert torch.equal(value, b["world_model"]["model"][key]), key
    for key, value in a["agent"]["critic"].items():
        assert torch.equal(value, b["agent"]["critic"][key]), key
    counts = ("wm/transformer_updates", "imagination/buffer_size", "mbpo/imagined_transitions")
    full_rows, split_rows = read_csv(runs["full"] / "train.csv"), read_csv(runs["split"] / "train.csv")
    assert [[r[k] for k in counts] for r in full_rows] == [[r[k] for k in counts] for r in split_rows]


def test_a_damaged_pretrained_checkpoint_is_one_line_naming_the_file(tmp_path, tiny_checkpoint):

    folder = tmp_path / "ck"  # a copy: the shared fixture itself must never be written
    shutil.copytree(tiny_checkpoint / "tokenizer", folder / "tokenizer")
    shutil.copytree(tiny_checkpoint / "transformer", folder / "transformer")
    weights = folder / "tokenizer" / "diffusion_pytorch_model.safetensors"
    assert not weights.is_symlink()
    weights.write_bytes(b"\xff" * 64)  # a header length far beyond the file
    result = subprocess.run([sys.executable, "-m", "mbrl.train", "task=reach", f"world_model.pretrained={folder}",
                             f"hydra.run.dir={tmp_path / 'run'}", "logging.wandb.mode=disabled"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {weights} is damaged") and "Traceback" not in result.stderr

