"""DreamerV3 through sheeprl: env adapter, config translation, and short real runs that log our metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import read_csv, run_train_cli, wandb_record
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mbrl.dreamerv3 import run
from mbrl.dreamerv3.config import RunSpec, schedule_steps, sheeprl_config
from mbrl.dreamerv3.env import DictFrameEnv
from mbrl.dreamerv3.session import _our_metric_name
from mbrl.envs import EnvConfig, make_env

REPO = Path(__file__).resolve().parents[2]
# A tiny model on short episodes: each run is a few seconds on 2 cores. 20-step episodes at repeat 2 = 40
# frames each; 200 agent steps; training starts after 40 random steps (5 gradient steps per 20 agent steps).
TINY = ["agent=dreamerv3", "profile=paper", "task=reach", "seed=3", "num_threads=1", "env.image_size=32", "env.episode_length=20", "num_train_frames=400", "eval_every_frames=200", "checkpoint_every_frames=400", "num_eval_episodes=2", "agent.size=tiny", "agent.batch_sequences=2", "agent.sequence_length=8", "agent.learning_starts=40", "agent.replay_ratio=0.25", "agent.memmap_buffer=false", "logging.wandb.mode=disabled", "logging.console=false", "save_video=false"]
# Columns that hold wall-clock measurements (differ between identical runs).
TIMINGS = {"total_time", "train/fps", "train/updates_per_second"}


def train_config(*overrides: str):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


class RecordingSink:
    def __init__(self) -> None:
        self.steps = 0
        self.episodes: list[tuple[float, bool, int]] = []

    def on_env_step(self) -> None:
        self.steps += 1

    def on_episode_end(self, episode_return: float, success: bool, agent_steps: int) -> None:
        self.episodes.append((episode_return, success, agent_steps))


def test_dict_env_gives_the_newest_frame_and_reports_episodes():
    sink = RecordingSink()
    env = DictFrameEnv(
        make_env(EnvConfig(task="reach", image_size=32, episode_length=4, frame_stack=3)), sink
    )
    try:
        obs, info = env.reset(seed=0)
        assert obs["rgb"].shape == (3, 32, 32) and obs["rgb"].dtype == np.uint8
        assert env.observation_space.contains(obs)
        np.testing.assert_array_equal(obs["rgb"], info["frame"])
        rewards, successes = [], []
        for t in range(4):
            obs, reward, terminated, truncated, info = env.step(np.full(4, 0.5 - 0.3 * t, dtype=np.float32))
            rewards.append(reward)
            successes.append(info["success"])
            np.testing.assert_array_equal(obs["rgb"], env.env.render().transpose(2, 0, 1))  # the newest frame
        assert truncated and not terminated
        assert sink.steps == 4
        assert sink.episodes == [(pytest.approx(sum(rewards)), any(successes), 4)]
        obs, _ = env.reset(seed=1)  # a new episode starts from a zero return
        env.step(np.zeros(4, dtype=np.float32))
        assert sink.steps == 5 and len(sink.episodes) == 1
    finally:
        env.close()


@pytest.mark.parametrize(
    "override, message",
    [
        ("world_model.name=ivideogpt", "world_model=none"),
        ("demos=1 replay_capacity=16 env.episode_length=20", "cannot hold a demonstration episode"),
        ("env.image_size=48", "power of two"),
        ("+agent.batch_size=64", "agent.batch_size is not a DreamerV3 setting"),
        ("agent.size=XXL", "agent.size"),
        ("resume=maybe", "resume='maybe' must be auto, true or false"),
        ("replay_capacity=5", "replay_capacity"),
    ],
)
def test_settings_dreamerv3_cannot_honour_are_refused(override, message):
    with pytest.raises(ValueError, match=message):
        RunSpec.from_train_config(train_config(*override.split()))


def test_sheeprl_config_counts_agent_steps_and_repeats_actions_in_our_env(tmp_path):
    import torch

    spec = RunSpec.from_train_config(
        train_config("checkpoint_every_frames=300", "replay_capacity=150", "+agent.sheeprl.algo.horizon=7")
    )
    cfg = OmegaConf.to_container(
        sheeprl_config(spec, tmp_path / "sheeprl", "abc", torch.device("cpu"), 1), resolve=True
    )
    assert cfg["env"]["action_repeat"] == 1 and cfg["env"]["sync_env"] is True
    assert cfg["env"]["screen_size"] == 32
    assert cfg["env"]["wrapper"]["env"]["action_repeat"] == 2  # ours
    assert cfg["algo"]["total_steps"] == 400 // 2
    # Evaluation every 100 agent steps, checkpoints every 150: the hook runs at their gcd.
    assert cfg["checkpoint"]["every"] == schedule_steps(spec) == 50
    assert cfg["buffer"]["size"] == 150
    assert cfg["algo"]["cnn_keys"]["encoder"] == ["rgb"] and cfg["algo"]["mlp_keys"]["encoder"] == []
    assert cfg["algo"]["dense_units"] == 32  # size=tiny
    assert cfg["algo"]["world_model"]["encoder"]["dense_units"] == 32  # interpolations follow it
    assert cfg["algo"]["horizon"] == 7  # agent.sheeprl merged last
    assert cfg["fabric"]["accelerator"] == "cpu" and cfg["fabric"]["precision"] == "32-true"

    # the whole run fits when the capacity allows: a row per agent step and per episode end, the demonstrations'
    demos = RunSpec.from_train_config(train_config("demos=2"))
    cfg = OmegaConf.to_container(sheeprl_config(demos, tmp_path, "abc", torch.device("cpu"), 1), resolve=True)
    assert cfg["buffer"]["size"] == 200 + 200 // 20 + 2 * 21

    auto = RunSpec.from_train_config(train_config("agent.size=auto"))
    cfg = OmegaConf.to_container(sheeprl_config(auto, tmp_path, "abc", torch.device("cpu"), 1), resolve=True)
    assert cfg["algo"]["dense_units"] == 256  # sheeprl's XS on a CPU
    cfg = OmegaConf.to_container(sheeprl_config(auto, tmp_path, "abc", torch.device("cuda"), 1), resolve=True)
    assert cfg["algo"]["dense_units"] == 512 and cfg["fabric"]["precision"] == "bf16-mixed"  # S on a GPU


def test_sheeprl_metric_names_map_to_ours():
    assert _our_metric_name("Loss/world_model_loss") == "train/world_model_loss"
    assert _our_metric_name("State/kl") == "train/kl"
    assert _our_metric_name("Grads/actor") == "train/grad_norm_actor"
    assert _our_metric_name("Rewards/rew_avg") is None  # our train rows carry the returns
    assert _our_metric_name("Time/sps_env_interaction") is None


@pytest.mark.slow
def test_run_logs_our_metrics_against_env_frames(tmp_path):
    run(train_config("logging.wandb.mode=offline", "save_video=true"), tmp_path)

    evals = read_csv(tmp_path / "eval.csv")
    assert [int(r["frame"]) for r in evals] == [200, 400]
    assert [int(r["step"]) for r in evals] == [100, 200]
    assert all(float(r["eval/success_rate"]) in (0.0, 0.5, 1.0) for r in evals)  # 2 episodes each
    assert all(float(r["eval/episode_length"]) == 40 for r in evals)
    train = read_csv(tmp_path / "train.csv")
    assert [int(r["frame"]) for r in train] == list(range(40, 401, 40))  # one row per 20-step episode
    assert all(int(r["train/episode_length"]) == 40 and r["train/success"] in ("0.0", "1.0") for r in train)
    trained = [r for r in train if r.get("train/world_model_loss")]
    assert trained and np.isfinite(float(trained[-1]["train/world_model_loss"]))

    data = wandb_record(tmp_path, b"eval/success_rate")
    for name in (b"eval/success_rate", b"eval/episode_return", b"train/episode_return", b"frame"):
        assert name in data
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["eval_200.gif", "eval_400.gif"]
    sheeprl_cfg = yaml.safe_load((tmp_path / "sheeprl" / "config.yaml").read_text())
    assert sheeprl_cfg["algo"]["name"] == "dreamer_v3" and sheeprl_cfg["env"]["action_repeat"] == 1
    assert list((tmp_path / "sheeprl" / "checkpoint").glob("ckpt_200_*.ckpt"))  # agent step 200 = frame 400
    point = json.loads((tmp_path / "dreamerv3_resume.json").read_text())
    assert (point["step"], point["episode"], point["evaluated_frame"]) == (200, 10, 400)

    with pytest.raises(ValueError, match="DreamerV3 run .* already holds a checkpoint .*dreamerv3_resume"):
        run(train_config("resume=false"), tmp_path)
    # relaunched with a larger budget, the run continues from its checkpoint at frame 400
    run(train_config("num_train_frames=600", "logging.wandb.mode=offline"), tmp_path)
    assert [int(r["frame"]) for r in read_csv(tmp_path / "eval.csv")] == [200, 400, 600]
    train = read_csv(tmp_path / "train.csv")
    assert [int(r["frame"]) for r in train] == list(range(40, 601, 40))
    assert [int(r["episode"]) for r in train] == list(range(1, 16))
    assert float(train[-1]["total_time"]) > float(train[9]["total_time"])
    assert any(r.get("train/world_model_loss") for r in train[10:])  # the resumed run trains
    # at every hook the session checks sheeprl's step against its own (200 + steps played): a sheeprl that
    # had started over from step 0 would have stopped the run with an error
    assert json.loads((tmp_path / "dreamerv3_resume.json").read_text())["step"] == 300
    assert list((tmp_path / "sheeprl" / "checkpoint").glob("ckpt_300_*.ckpt"))


def test_demo_rows_are_written_as_sheeprl_writes_an_episode():
    from sheeprl.data.buffers import EnvIndependentReplayBuffer, SequentialReplayBuffer

    from mbrl.demos import DemoEpisode
    from mbrl.dreamerv3.demos import demo_rows, seeded_replay_factory

    rng = np.random.default_rng(0)
    episodes = [
        DemoEpisode(frames=rng.integers(0, 255, (steps + 1, 3, 8, 8), dtype=np.uint8),
                    actions=rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
                    rewards=rng.uniform(0, 10, steps).astype(np.float32), successes=np.zeros(steps, bool),
                    terminated=False, truncated=True)
        for steps in (3, 5, 2)
    ]
    rows = demo_rows(episodes[0])
    assert {k: v.shape for k, v in rows.items()} == {
        "rgb": (4, 1, 3, 8, 8), "actions": (4, 1, 4), "rewards": (4, 1, 1), "terminated": (4, 1, 1),
        "truncated": (4, 1, 1), "is_first": (4, 1, 1)}
    assert rows["is_first"][:, 0, 0].tolist() == [1, 0, 0, 0]
    assert rows["truncated"][:, 0, 0].tolist() == [0, 0, 0, 1] and not rows["terminated"].any()
    # row t: frame t, the reward that led to it, the action taken at it (none at the last frame)
    np.testing.assert_allclose(rows["rewards"][1:, 0, 0], episodes[0].rewards)
    assert rows["rewards"][0, 0, 0] == 0 and not rows["actions"][-1].any()
    np.testing.assert_array_equal(rows["actions"][:3, 0], episodes[0].actions)
    np.testing.assert_allclose(demo_rows(episodes[0], clip_rewards=True)["rewards"][1:, 0, 0],
                               np.tanh(episodes[0].rewards), rtol=1e-6)

    replay = seeded_replay_factory(EnvIndependentReplayBuffer, [demo_rows(e) for e in episodes])(
        16, n_envs=2, buffer_cls=SequentialReplayBuffer, obs_keys=("rgb",))
    assert type(replay) is EnvIndependentReplayBuffer  # sheeprl's own class: its checkpoints pickle it
    first_env, second_env = replay.buffer
    # episodes 0 and 2 in env 0, episode 1 in env 1, one after the other
    np.testing.assert_array_equal(first_env["rgb"][:4, 0], episodes[0].frames)
    np.testing.assert_array_equal(first_env["rgb"][4:7, 0], episodes[2].frames)
    np.testing.assert_array_equal(second_env["rgb"][:6, 0], episodes[1].frames)
    assert first_env["is_first"][:7, 0, 0].tolist() == [1, 0, 0, 0, 1, 0, 0]
    assert replay.sample_tensors(2, sequence_length=3, n_samples=1)["rgb"].shape[:3] == (1, 3, 2)


def test_run_starts_sheeprl_replay_with_the_demonstrations(tmp_path, monkeypatch, capsys):
    from mbrl.demos import demo_episodes
    from mbrl.dreamerv3 import demos

    built = []
    seeded = demos.seeded_replay_factory

    def recording(base, episodes):
        build = seeded(base, episodes)

        def record(*args, **kwargs):
            built.append(build(*args, **kwargs))
            return built[-1]

        return record

    monkeypatch.setattr(demos, "seeded_replay_factory", recording)
    # with checkpoints, which pickle the replay
    cfg = train_config("demos=1", "num_train_frames=120", "eval_every_frames=120", "checkpoint_every_frames=120",
                       "num_eval_episodes=1")
    run(cfg, tmp_path)
    assert "added 1 scripted demo episodes to the replay" in capsys.readouterr().out
    (replay,) = built
    spec = RunSpec.from_train_config(cfg)
    env = make_env(spec.env)
    try:
        (episode,) = demo_episodes(env, spec.task, 1, spec.seed)
    finally:
        env.close()
    rows = spec.env.episode_length + 1
    np.testing.assert_array_equal(replay.buffer[0]["rgb"][:rows, 0], episode.frames)
    np.testing.assert_array_equal(replay.buffer[0]["actions"][:rows - 1, 0], episode.actions)
    assert replay.buffer[0]["is_first"][rows, 0, 0] == 1  # the first episode sheeprl plays comes next
    train = read_csv(tmp_path / "train.csv")
    assert [int(r["frame"]) for r in train] == [40, 80, 120]  # the demonstrations used no frame budget
    assert list((tmp_path / "sheeprl" / "checkpoint").glob("ckpt_60_*.ckpt"))  # the replay pickled with it


def test_resume_point_refuses_what_it_cannot_continue(tmp_path):
    from mbrl.dreamerv3.session import ResumePoint, resume_point

    assert resume_point(tmp_path, "auto") is None
    assert resume_point(tmp_path, False) is None
    with pytest.raises(ValueError, match="resume=true but .*dreamerv3_resume.json does not exist"):
        resume_point(tmp_path, True)
    with pytest.raises(ValueError, match="resume='maybe' must be auto, true or false"):
        resume_point(tmp_path, "maybe")
    (tmp_path / "train.csv").write_text("frame\n40\n")
    for mode in ("auto", False):
        with pytest.raises(ValueError, match="no DreamerV3 checkpoint to resume from"):
            resume_point(tmp_path, mode)
    ckpt = tmp_path / "ckpt_10_0.ckpt"
    ResumePoint(str(ckpt), 10, 1, 0, 20, 1.5).save(tmp_path)
    with pytest.raises(ValueError, match="names the sheeprl checkpoint .* which does not exist"):
        resume_point(tmp_path, "auto")
    ckpt.write_bytes(b"")
    assert resume_point(tmp_path, True) == ResumePoint(str(ckpt), 10, 1, 0, 20, 1.5)
    assert resume_point(tmp_path, "auto").frame(2) == 20
    with pytest.raises(ValueError, match="already holds a checkpoint .*resume=auto to continue"):
        resume_point(tmp_path, False)


@pytest.mark.slow
def test_evaluation_leaves_training_unchanged_and_runs_repeat(tmp_path):
    def rows(folder: Path, evals: int) -> list[dict[str, str]]:
        run(train_config(f"num_eval_episodes={evals}", "agent.save_checkpoints=false"), folder)
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in read_csv(folder / "train.csv")]

    with_eval, without_eval = rows(tmp_path / "a", 2), rows(tmp_path / "b", 0)
    assert with_eval == without_eval
    assert not (tmp_path / "b" / "eval.csv").exists()
    assert not (tmp_path / "b" / "sheeprl" / "checkpoint").exists()


@pytest.mark.slow
def test_cli_trains_dreamerv3(tmp_path):
    overrides = [o for o in TINY if not o.startswith("logging.wandb.mode")]
    run_train_cli(*overrides, "task=door_open", "logging.wandb.mode=offline", f"hydra.run.dir={tmp_path}")
    evals = read_csv(tmp_path / "eval.csv")
    assert [int(r["frame"]) for r in evals] == [200, 400]
    assert {"eval/success_rate", "eval/episode_return"} <= set(evals[0])
    assert "train/episode_return" in read_csv(tmp_path / "train.csv")[0]
    assert b"eval/success_rate" in wandb_record(tmp_path, b"eval/success_rate")
    recorded = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert recorded["agent"]["name"] == "dreamerv3"
    assert recorded["world_model"] == {"name": "none"}  # implied by agent=dreamerv3, not named in TINY
