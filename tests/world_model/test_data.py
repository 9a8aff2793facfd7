"""World-model episode data: EpisodeDataset loading and sampling of episode `.npz` folders, and
experiments/bench_data.py on tiny counts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from world_model.data.dataset import EpisodeDataset


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


def test_integer_frames_are_read_as_uint8(tmp_path):
    """BAIR stores int64 frames in [0, 255]: converted; values outside are refused."""
    np.savez_compressed(tmp_path / "a.npz", image=np.full((4, 2, 2, 3), 200, np.int64))
    batch = EpisodeDataset(tmp_path, segment_length=2).sample(2)
    assert batch.frames.dtype == torch.uint8 and int(batch.frames.max()) == 200
    np.savez_compressed(tmp_path / "a.npz", image=np.full((4, 2, 2, 3), 300, np.int64))
    with pytest.raises(ValueError, match=r"values in \[300, 300\]"):
        EpisodeDataset(tmp_path, segment_length=2)


def test_bench_data_runs_on_tiny_counts():
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "experiments/bench_data.py", "--counts", "20,40", "--frames", "6", "--size", "8",
         "--segment", "4", "--batch", "4", "--batches", "2", "--json"],
        cwd=repo, capture_output=True, text=True, timeout=120, check=True)
    rows = json.loads(out.stdout)["rows"]
    assert [(r["loader"], r["episodes"]) for r in rows] == [("lazy", 20), ("lazy", 40), ("memory", 20)]
    assert all(r["segments_per_s"] > 0 and r["rss_sampled_mb"] > 0 for r in rows)


def test_a_file_that_is_not_an_episode_npz_is_named(tmp_path):
    np.savez_compressed(tmp_path / "ok.npz", image=np.zeros((6, 8, 8, 3), np.uint8))
    (tmp_path / "broken.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"broken.npz is not a readable episode .npz .*remove it"):
        EpisodeDataset(tmp_path, 4)

