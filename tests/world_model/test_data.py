"""World-model episode data: the collect CLI's files and EpisodeDataset sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbrl.collect import main, parse_args
from world_model.data.dataset import EpisodeDataset

TASK = "handle_press"


def write_episode(path, length: int, code: int, actions: bool = True, rewards: bool = True, size: int = 4):
    """A synthetic episode whose frame t is filled with code + t (and action/reward rows carry t too)."""
    arrays = {
        "image": (code + np.arange(length, dtype=np.uint8))[:, None, None, None]
        * np.ones((1, size, size, 3), np.uint8)
    }
    if actions:
        arrays["action"] = np.stack([np.full(2, code + t, np.float32) for t in range(length)])
    if rewards:
        arrays["reward"] = (code + np.arange(length)).astype(np.float32)
    np.savez_compressed(path, **arrays)


def test_collect_writes_the_documented_layout(tmp_path):
    out = tmp_path / "demos"
    args = [
        f"task={TASK}",
        "episodes=2",
        f"out={out}",
        "episode_length=4",
        "image_size=32",
        "noise=0.1",
        "seed=3",
    ]
    files = main(args)
    assert len(files) == 2 and sorted(out.glob("*.npz")) == sorted(files)
    for file in files:
        with np.load(file) as episode:
            assert set(episode.files) == {"image", "action", "reward", "success"}
            assert episode["image"].shape == (5, 32, 32, 3) and episode["image"].dtype == np.uint8
            assert episode["action"].shape == (5, 4) and episode["action"].dtype == np.float32
            assert episode["reward"].shape == (5,) and episode["reward"].dtype == np.float32
            assert episode["success"].shape == (5,) and episode["success"].dtype == bool
            assert np.abs(episode["action"]).max() <= 1.0
            # the final frame has no step out of it: zero padding
            assert (
                not episode["action"][-1].any() and episode["reward"][-1] == 0 and not episode["success"][-1]
            )
            assert (episode["reward"][:-1] > 0).all()

    # the frames are the training env's: the first one equals a fresh env's reset frame for the same seed
    from mbrl.envs import EnvConfig, make_env

    env = make_env(EnvConfig(task=TASK, seed=3, image_size=32, episode_length=4))
    try:
        reset_frame = env.reset()[1]["frame"]
    finally:
        env.close()
    with np.load(files[0]) as episode:
        np.testing.assert_array_equal(episode["image"][0], reset_frame.transpose(1, 2, 0))

    # same seed -> same data; a used folder is refused
    again = main([*args[:2], f"out={tmp_path / 'again'}", *args[3:]])
    for a, b in zip(files, again, strict=True):
        with np.load(a) as x, np.load(b) as y:
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key])
    with pytest.raises(ValueError, match="already holds episodes"):
        main(args)

    # the collected folder loads as world-model data
    dataset = EpisodeDataset(out, segment_length=3)
    batch = dataset.sample(6, np.random.default_rng(0))
    assert batch.frames.shape == (6, 3, 3, 32, 32) and batch.frames.dtype == torch.uint8
    assert batch.actions.shape == (6, 3, 4) and batch.rewards.shape == (6, 3)


def test_collect_arguments_are_checked():
    assert parse_args(["out=x", "episodes=3", "noise=0.5"]).episodes == 3
    with pytest.raises(ValueError, match="missing out="):
        parse_args(["episodes=2"])
    with pytest.raises(ValueError, match="key in"):
        parse_args(["out=x", "episode=2"])
    with pytest.raises(ValueError, match="not a valid int"):
        parse_args(["out=x", "episodes=two"])
    with pytest.raises(ValueError, match="close matches"):
        parse_args(["out=x", "task=door_opn"]).env_config()


def test_dataset_samples_windows_within_episodes(tmp_path):
    lengths = {0: 5, 100: 8, 200: 3}  # code -> frames; the 3-frame episode is too short for T=4
    for code, length in lengths.items():
        write_episode(tmp_path / f"ep{code}.npz", length, code)
    with pytest.warns(UserWarning, match="skipping 1 of 3"):
        dataset = EpisodeDataset(tmp_path, segment_length=4)
    assert len(dataset) == 2 and dataset.num_segments == (5 - 3) + (8 - 3) and dataset.action_dim == 2
    batch = dataset.sample(400, np.random.default_rng(1))
    frames = batch.frames.numpy()[:, :, 0, 0, 0].astype(int)  # (B, T) codes
    assert batch.frames.shape == (400, 4, 3, 4, 4)
    code, step = np.divmod(frames, 100)
    assert (code == code[:, :1]).all() and (np.diff(step, axis=1) == 1).all()
    assert (step[:, -1] < np.array([lengths[100 * c] for c in code[:, 0]])).all()
    # actions/rewards are aligned with their frames; all 7 windows show up
    np.testing.assert_array_equal(batch.actions.numpy()[..., 0], frames)
    np.testing.assert_array_equal(batch.rewards.numpy(), frames)
    assert len({tuple(f) for f in frames}) == dataset.num_segments
    # the same generator state gives the same batch
    a, b = dataset.sample(5, np.random.default_rng(7)), dataset.sample(5, np.random.default_rng(7))
    assert torch.equal(a.frames, b.frames)


def test_action_free_folders_load(tmp_path):
    for code in (0, 100):
        write_episode(tmp_path / f"ep{code}.npz", 6, code, actions=False, rewards=False)
    dataset = EpisodeDataset(tmp_path, segment_length=6)
    assert not dataset.has_actions
    batch = dataset.sample(3)
    assert batch.frames.shape == (3, 6, 3, 4, 4) and batch.actions is None and batch.rewards is None
    batch.to("cpu")


def test_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="no .npz episodes"):
        EpisodeDataset(tmp_path, segment_length=4)
    write_episode(tmp_path / "short.npz", 3, 0)
    with pytest.raises(ValueError, match="shorter than segment_length=4"):
        EpisodeDataset(tmp_path, segment_length=4)
    with pytest.raises(ValueError, match="no 'rgb' array"):
        EpisodeDataset(tmp_path, segment_length=2, image_key="rgb")
    np.savez_compressed(tmp_path / "bad.npz", image=np.zeros((4, 4, 4, 3), np.uint8), action=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="3 rows for 4 frames"):
        EpisodeDataset(tmp_path, segment_length=2)
