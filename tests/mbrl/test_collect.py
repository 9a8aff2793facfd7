"""Episode recording (`python -m mbrl.collect`): the documented `.npz` layout, determinism, argument checks,
and that the recorded folder loads as world-model data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbrl.collect import main, parse_args
from world_model.data.dataset import EpisodeDataset

TASK = "handle_press"


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

    # the frames are the training env's: the first one equals a fresh env's reset frame for the episode's seed
    from mbrl.collect import episode_seed
    from mbrl.envs import EnvConfig, make_env

    cfg = parse_args(args)
    env = make_env(EnvConfig(task=TASK, seed=3, image_size=32, episode_length=4))
    try:
        reset_frame = env.reset(seed=episode_seed(cfg, TASK, 0))[1]["frame"]
    finally:
        env.close()
    with np.load(files[0]) as episode:
        np.testing.assert_array_equal(episode["image"][0], reset_frame.transpose(1, 2, 0))

    # same seed -> same data, in one process or two; the same command again records nothing new
    again = main([*args[:2], f"out={tmp_path / 'again'}", *args[3:], "workers=2"])
    for a, b in zip(files, again, strict=True):
        with np.load(a) as x, np.load(b) as y:
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key])
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert main(args) == files and [f.stat().st_mtime_ns for f in files] == mtimes
    with pytest.raises(ValueError, match=r"other settings \(noise\)"):
        main([*args[:-2], "noise=0.2", "seed=3"])

    # the collected folder loads as world-model data
    dataset = EpisodeDataset(out, segment_length=3)
    batch = dataset.sample(6, np.random.default_rng(0))
    assert batch.frames.shape == (6, 3, 3, 32, 32) and batch.frames.dtype == torch.uint8
    assert batch.actions.shape == (6, 3, 4) and batch.rewards.shape == (6, 3)


def test_collect_arguments_are_checked():
    assert parse_args(["out=x", "episodes=3", "noise=0.5"]).episodes == 3
    with pytest.raises(ValueError, match="missing out="):
        parse_args(["episodes=2"])
    with pytest.raises(ValueError, match="unknown argument"):
        parse_args(["out=x", "episode=2"])
    with pytest.raises(ValueError, match="must be a whole number"):
        parse_args(["out=x", "episodes=two"])
    with pytest.raises(ValueError, match="close matches"):
        parse_args(["out=x", "task=door_opn"]).env_config()


def test_many_tasks_resume_after_an_interruption(tmp_path):
    """`tasks=` writes one folder per task; a run cut short is completed by the same command, and the data equal
    those of an uninterrupted run."""
    out = tmp_path / "corpus"
    common = ["tasks=reach,handle_press", "episode_length=3", "image_size=16", "noise=0.1", "seed=1"]
    whole = main([*common, "episodes=3", f"out={tmp_path / 'whole'}"])
    assert [f.parent.name for f in whole] == ["reach"] * 3 + ["handle_press"] * 3
    main([*common, "episodes=1", f"out={out}"])  # "interrupted" after one episode of each task
    assert len(list(out.rglob("*.npz"))) == 2
    resumed = main([*common, "episodes=3", f"out={out}"])
    for a, b in zip(whole, resumed, strict=True):
        assert a.name == b.name
        with np.load(a) as x, np.load(b) as y:
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["action"], y["action"])
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        main(["tasks=reach,door_opn", f"out={tmp_path / 'bad'}"])
    with pytest.raises(ValueError, match="workers >= 1"):
        parse_args(["out=x", "workers=0"])

