"""The real CLI (`python -m mbrl.train`) end to end on tiny budgets: outputs, resume, multirun, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import read_csv, run_train_cli, wandb_record
from hydra import compose, initialize_config_dir

from core.checkpoint import load_checkpoint
from mbrl.replay import ReplayBuffer
from mbrl.train import run_dir_for
from mbrl.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
# Tiny networks and episodes: each launch is a few seconds, mostly imports and env creation.
TINY = [
    "task=reach",
    "world_model=none",
    "profile=paper",
    "num_threads=1",
    "env.image_size=32",
    "env.episode_length=10",
    "agent.batch_size=8",
    "agent.hidden_dim=32",
    "agent.feature_dim=16",
    "agent.num_filters=8",
    "agent.num_expl_steps=10",
    "replay_capacity=1000",
    "num_eval_episodes=1",
    "logging.wandb.mode=disabled",
]


@pytest.mark.slow
def test_train_end_to_end_writes_every_output(tmp_path):
    run = tmp_path / "run"
    result = run_train_cli(
        *TINY,
        "env.image_size=64",
        "env.episode_length=20",
        "num_train_frames=200",
        "eval_every_frames=100",
        "checkpoint_every_frames=100",
        "demos=1",
        "agent.encoder_precision=bfloat16",
        "logging.wandb.mode=offline",
        f"hydra.run.dir={run}",
    )
    assert "added 1 scripted demo episodes" in result.stdout
    assert "DrQ-v2 encoder convolutions in bfloat16 (agent.encoder_precision=bfloat16" in result.stdout

    evals = read_csv(run / "eval.csv")
    assert [int(r["frame"]) for r in evals] == [0, 100, 200]
    assert all(0.0 <= float(r["eval/success_rate"]) <= 1.0 for r in evals)
    train = read_csv(run / "train.csv")
    assert [int(r["frame"]) for r in train] == [40, 80, 120, 160, 200]  # one row per 20-step episode
    assert {"train/episode_return", "train/success", "train/critic_loss", "train/actor_loss"} <= set(
        train[-1]
    )
    assert train[-1]["train/critic_loss"] != ""
    assert int(train[0]["train/buffer_size"]) == 20 + 20  # the demo episode, then the first train episode

    assert list(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert b"eval/success_rate" in wandb_record(run, b"eval/success_rate")
    assert sorted(p.name for p in (run / "videos").iterdir()) == [
        "eval_0.gif",
        "eval_100.gif",
        "eval_200.gif",
    ]
    config = (run / "config.yaml").read_text()
    assert "task: reach" in config and "num_train_frames: 200" in config
    assert (run / "git.txt").read_text().startswith(("commit:", "no git information"))
    assert (run / "agent.safetensors").stat().st_size > 0
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["counters"] == {"step": 100, "episode": 5, "frame": 200}


@pytest.mark.slow
def test_resumed_run_continues_exactly_like_an_uninterrupted_one(tmp_path):
    common = [*TINY, "checkpoint_every_frames=40", "eval_every_frames=0"]
    full, split = tmp_path / "full", tmp_path / "split"
    run_train_cli(*common, "num_train_frames=120", f"hydra.run.dir={full}")
    run_train_cli(
        *common, "num_train_frames=60", f"hydra.run.dir={split}"
    )  # 3 episodes of 20 frames, then "killed"
    assert load_checkpoint(split / "checkpoints" / "latest.pt")["counters"]["frame"] == 60
    resumed = run_train_cli(*common, "num_train_frames=120", f"hydra.run.dir={split}")  # same folder: continues
    assert "resumed from" in resumed.stdout + resumed.stderr

    a = load_checkpoint(full / "checkpoints" / "latest.pt")
    b = load_checkpoint(split / "checkpoints" / "latest.pt")
    assert a["counters"] == b["counters"] == {"step": 60, "episode": 6, "frame": 120}
    for name in ("encoder", "actor", "critic", "critic_target"):
        for key, value in a["agent"][name].items():
            assert torch.equal(value, b["agent"][name][key]), f"{name}.{key} differs"

    buffers = []
    for state in (a, b):
        replay = ReplayBuffer(1000, (3, 32, 32), 4, frame_stack=3, nstep=3, discount=0.99)
        replay.load_state_dict(state["replay"])
        buffers.append(replay)
    assert len(buffers[0]) == len(buffers[1]) == 60
    batch_a, batch_b = (replay.sample(8) for replay in buffers)
    assert torch.equal(batch_a.obs, batch_b.obs) and torch.equal(batch_a.reward, batch_b.reward)
    assert [r["frame"] for r in read_csv(full / "train.csv")] == [
        r["frame"] for r in read_csv(split / "train.csv")
    ]


@pytest.mark.slow
def test_multirun_launches_one_folder_per_job(tmp_path):
    run_train_cli("-m", *TINY, "num_train_frames=20", "seed=1,2", f"runs_dir={tmp_path}")
    jobs = sorted(p.parent.name for p in tmp_path.glob("multirun/*/*/eval.csv"))
    assert jobs == ["0_reach_drqv2_none_s1", "1_reach_drqv2_none_s2"]


@pytest.mark.slow
def test_unknown_task_is_one_line_with_close_matches(tmp_path):
    result = run_train_cli(*TINY, "task=door_opne", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "door_open" in lines[0], result.stderr


@pytest.mark.slow
def test_impossible_value_is_one_line(tmp_path):
    result = run_train_cli(*TINY, "env.frame_stack=0", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "frame_stack" in lines[0], result.stderr


def compose_config(*overrides: str) -> dict:
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, *overrides])
    return OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize(
    "override,words",
    [
        ("num_train_frames=-5", "num_train_frames"),
        ("eval_every_frames=1", "shorter than one agent step"),
        ("agent.batch_size=0", "batch_size"),
        ("agent.std_schedule=cosine", "schedule"),
        ("env.episode_length=2", "nstep"),
        ("resume=maybe", "resume"),
        ("demos=-1", "demos=-1 must be >= 0"),
        ("malloc=jemalloc", "malloc='jemalloc' must be one of tuned, system"),
        ("video_format=avi", "video_format"),
        ("logging.wandb.mode=on", "wandb.mode"),
        ("seed=abc", "whole number"),
        ("agent.hidden_dim=1.5", "agent.hidden_dim"),
        ("+typo=1", "typo"),
    ],
)
def test_bad_values_are_one_line_errors(override, words):
    cfg = compose_config(override)
    cfg["logging"]["wandb"].update(group="reach", name="drqv2-1")  # interpolations, unresolved here
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict(cfg)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_integral_floats_are_accepted():
    cfg = compose_config("num_train_frames=1e5")
    cfg["logging"]["wandb"].update(group="reach", name="drqv2-1")
    assert TrainConfig.from_dict(cfg).num_train_frames == 100_000


def test_profiles_compose():
    paper, cpu = compose_config(), compose_config("profile=cpu")
    assert paper["agent"]["batch_size"] == 8  # the test's own override wins over any profile
    assert (
        cpu["num_train_frames"]
        < compose_config("profile=paper", "num_train_frames=260000")["num_train_frames"]
    )
    assert cpu["agent"]["updates_per_step"] == 1 and paper["agent"]["updates_per_step"] == 2


def test_resume_true_finds_the_newest_run_with_a_checkpoint(tmp_path):
    for stamp, with_checkpoint in (
        ("2024-01-01_00-00-00", True),
        ("2024-01-02_00-00-00", True),
        ("2024-01-03_00-00-00", False),
    ):
        folder = tmp_path / f"{stamp}_door_open_drqv2_none_s1"
        (folder / "checkpoints").mkdir(parents=True)
        if with_checkpoint:
            (folder / "checkpoints" / "latest.pt").write_bytes(b"")
    found = run_dir_for(str(tmp_path), "door-open-v3", "drqv2", "none", 1, True)
    assert found == str(tmp_path / "2024-01-02_00-00-00_door_open_drqv2_none_s1")
    fresh = run_dir_for(str(tmp_path), "door_open", "drqv2", "none", 2, True)  # no earlier seed-2 run
    assert fresh.startswith(str(tmp_path)) and fresh.endswith("_door_open_drqv2_none_s2")
    assert run_dir_for(str(tmp_path), "door_open", "drqv2", "none", 1, "auto") != found
    dreamer = tmp_path / "2024-01-01_00-00-00_door_open_dreamerv3_none_s1"
    dreamer.mkdir()
    (dreamer / "dreamerv3_resume.json").write_text("{}")
    assert run_dir_for(str(tmp_path), "door_open", "dreamerv3", "none", 1, True) == str(dreamer)
