"""world_model.data.lazy / mixture / augment: lazy episode datasets, the held-out split, segment strides and
padding, weighted mixtures from YAML, augmentation and the bounded episode cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from world_model.data.augment import Augmentation, _hsv_to_rgb, _rgb_to_hsv, prepare_segment
from world_model.data.dataset import EpisodeDataset
from world_model.data.formats import get_format
from world_model.data.lazy import LazyEpisodeDataset, segment_indices, split_files
from world_model.data.mixture import MixtureDataset, _flatten, load_data

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mixtures"


def write_episodes(folder: Path, count: int, length: int, code: int = 0, key: str = "image", size=(8, 8),
                   action_dim: int | None = None) -> Path:
    """Episodes whose frame t holds the value code + t (and action rows code + t) in `{split}_eps_i.npz` files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        values = (code + np.arange(length)).astype(np.uint8)
        arrays = {key: np.broadcast_to(values[:, None, None, None], (length, *size, 3)).copy()}
        if action_dim:
            arrays["action"] = np.repeat((code + np.arange(length, dtype=np.float32))[:, None], action_dim, 1)
        np.savez_compressed(folder / f"train_eps_{i:08d}.npz", **arrays)
    return folder


def codes(frames: torch.Tensor) -> np.ndarray:
    """(B, T, 3, H, W) constant frames -> (B, T) values."""
    return frames[:, :, 0, 0, 0].numpy().astype(int)


# --------------------------------------------------------------------------------------- segments
def test_segment_stride_shrinks_and_short_episodes_pad():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):  # 40 frames, stride 3, 4 frames: fits (12 <= 40), start in [0, 28]
        idx = segment_indices(40, 4, 3, rng)
        assert np.all(np.diff(idx) == 3)
        starts.add(int(idx[0]))
    assert min(starts) == 0 and max(starts) == 28
    for _ in range(50):  # 10 frames: 3 x 4 > 10 -> stride 10 // 4 = 2, start in [0, 2]
        idx = segment_indices(10, 4, 3, rng)
        assert np.all(np.diff(idx) == 2) and 0 <= idx[0] <= 2
    assert segment_indices(3, 5, 3, rng).tolist() == [0, 1, 2, 2, 2]  # shorter than 5 at stride 1: padded


def test_lazy_dataset_pads_with_the_last_frame_and_zero_actions(tmp_path):
    write_episodes(tmp_path / "d", 2, 3, code=10, action_dim=2)
    data = LazyEpisodeDataset(tmp_path / "d", "metaworld", segment_length=5, split="all")
    batch = data.sample(4, np.random.default_rng(0))
    assert batch.frames.shape == (4, 5, 3, 8, 8) and batch.frames.dtype == torch.uint8
    assert (codes(batch.frames) == [10, 11, 12, 12, 12]).all()
    assert batch.actions.shape == (4, 5, 2) and batch.actions.dtype == torch.float32
    assert (batch.actions[:, :, 0].numpy() == [10, 11, 12, 0, 0]).all()
    assert batch.rewards is None


def test_lazy_dataset_applies_the_format_stride_and_key(tmp_path):
    write_episodes(tmp_path / "taco", 3, 40, key="rgb_static")  # taco_play: stride 5
    data = LazyEpisodeDataset(tmp_path / "taco", "taco_play", segment_length=4, split="all")
    values = codes(data.sample(50, np.random.default_rng(1)).frames)
    assert (np.diff(values, axis=1) == 5).all() and values[:, 0].max() <= 40 - 20
    assert data.action_dim is None
    with pytest.raises(ValueError, match=r"has no 'image' array \(it has rgb_static\)"):
        LazyEpisodeDataset(tmp_path / "taco", "bridge", segment_length=4, split="all")


# ------------------------------------------------------------------------------------------ split
def test_held_out_split_is_every_100th_file(tmp_path):
    files = [Path(f"train_eps_{i:08d}.npz") for i in range(250)]
    assert [f.name for f in split_files(files, "held_out")] == [f"train_eps_{i:08d}.npz" for i in (0, 100, 200)]
    train = split_files(files, "train")
    assert len(train) == 247 and files[0] not in train and files[1] in train
    assert split_files(files, "all") == files
    folder = write_episodes(tmp_path / "d", 101, 2, size=(2, 2))
    held = LazyEpisodeDataset(folder, "metaworld", 2, split="held_out")
    assert [f.name for f in held.files] == ["train_eps_00000000.npz", "train_eps_00000100.npz"]
    assert len(LazyEpisodeDataset(folder, "metaworld", 2, split="train")) == 99
    one = write_episodes(tmp_path / "one", 1, 2, size=(2, 2))
    with pytest.raises(ValueError, match="train split .* has no episodes .*pass split=all"):
        LazyEpisodeDataset(one, "metaworld", 2)


# ---------------------------------------------------------------------------------------- mixture
def test_mixture_proportions_keys_strides_and_sizes(tmp_path):
    write_episodes(tmp_path / "bridge", 4, 30, code=0, size=(8, 8))  # image, stride 2
    write_episodes(tmp_path / "taco", 4, 60, code=100, key="rgb_static", size=(12, 10))  # stride 5
    spec = {"root": str(tmp_path), "image_size": 8, "split": "all", "datasets": [
        {"name": "bridge", "path": "bridge", "weight": 3}, {"name": "taco_play", "path": "taco", "weight": 1}]}
    mix = MixtureDataset.from_spec(spec, segment_length=4, seed=0)
    assert np.allclose(mix.weights, [0.75, 0.25]) and len(mix) == 8 and mix.frame_shape == (3, 8, 8)
    values = codes(mix.sample(4000, np.random.default_rng(0)).frames)
    from_taco = values[:, 0] >= 100
    assert abs(from_taco.mean() - 0.25) < 0.03
    assert (np.diff(values[from_taco], axis=1) == 5).all() and (np.diff(values[~from_taco], axis=1) == 2).all()
    a, b = mix.sample(6, np.random.default_rng(3)), mix.sample(6, np.random.default_rng(3))
    assert torch.equal(a.frames, b.frames)


def test_mixture_actions_only_when_all_agree(tmp_path):
    write_episodes(tmp_path / "a", 2, 6, action_dim=4)
    write_episodes(tmp_path / "b", 2, 6, action_dim=4)
    write_episodes(tmp_path / "c", 2, 6, action_dim=7)
    entry = lambda p: {"name": "metaworld", "path": str(tmp_path / p), "weight": 1}
    same = MixtureDataset.from_spec({"split": "all", "datasets": [entry("a"), entry("b")]}, 4)
    assert same.action_dim == 4 and same.sample(3).actions.shape == (3, 4, 4) and not same.notes
    mixed = MixtureDataset.from_spec({"split": "all", "datasets": [entry("a"), entry("c")]}, 4)
    assert mixed.action_dim is None and mixed.sample(3).actions is None
    assert mixed.notes == ["the mixture is action-free: its datasets' actions differ (metaworld 4-d, metaworld 7-d)"]


def test_mixture_errors_are_one_line(tmp_path):
    write_episodes(tmp_path / "a", 2, 6)
    good = {"name": "metaworld", "path": str(tmp_path / "a"), "weight": 1}
    cases = [
        ([{**good, "name": "brige"}], ValueError, "unknown dataset 'brige'; did you mean bridge"),
        ([{**good, "path": str(tmp_path / "nope")}], FileNotFoundError, "nope of dataset metaworld does not exist"),
        ([{**good, "weight": -1}], ValueError, "must be a positive number"),
        ([{"name": "metaworld", "path": "x"}], ValueError, "missing weight"),
        ({"datasets": [good], "colour": 1}, ValueError, "unknown option"),
    ]
    for spec, kind, text in cases:
        with pytest.raises(kind, match=text) as err:
            MixtureDataset.from_spec(spec, 4, split="all")
        assert "\n" not in str(err.value)
    skipped = MixtureDataset.from_spec({"skip_missing": True, "split": "all", "datasets": [
        good, {**good, "path": str(tmp_path / "nope")}]}, 4)
    assert len(skipped.datasets) == 1 and "skipped 1" in skipped.notes[0]


def test_load_data_picks_the_loader_and_yaml_groups_share_weight(tmp_path):
    write_episodes(tmp_path / "a", 3, 6)
    assert isinstance(load_data(tmp_path / "a", 4), EpisodeDataset)
    file = tmp_path / "mix.yaml"
    file.write_text(yaml.safe_dump({"root": str(tmp_path), "split": "all", "datasets": [
        {"name": "metaworld", "path": "a", "weight": 0.5},
        {"weight": 0.5, "datasets": [{"name": "bridge", "path": "a"}, {"name": "kuka", "path": "a"}]}]}))
    mix = load_data(file, 4)
    assert isinstance(mix, MixtureDataset) and np.allclose(mix.weights, [0.5, 0.25, 0.25])
    assert mix.sample(2).frames.shape == (2, 4, 3, 8, 8)
    with pytest.raises(ValueError, match="no .npz episodes under .*missing; record some"):
        load_data(tmp_path / "missing", 4)


@pytest.mark.parametrize("name", ["oxe_select.yaml", "oxe_select_sthsth.yaml", "two_datasets.yaml",
                                  "metaworld50.yaml"])
def test_shipped_mixture_configs_name_known_formats(name):
    spec = yaml.safe_load((CONFIGS / name).read_text())
    entries = _flatten(spec["datasets"], name)
    for fmt, _, _ in entries:
        get_format(fmt)
    if name.startswith("oxe_select"):
        assert sum(w for _, _, w in entries) == pytest.approx(1.0)
        weights = {fmt: w for fmt, _, w in entries}
        scale = 0.85 if "sthsth" in name else 1.0
        assert weights["fractal20220817_data"] == pytest.approx(0.15 * scale)
        assert weights["language_table"] == pytest.approx(0.05 * scale)
        assert len(entries) == 38 + ("sthsth" in name)
        assert weights.get("something_something_v2", 0.15) == pytest.approx(0.15)
    if name == "metaworld50.yaml":  # one folder per task, as `mbrl.collect tasks=all` writes them
        from mbrl.envs import TASKS

        assert [Path(path).name for _, path, _ in entries] == list(TASKS)
        assert {w for _, _, w in entries} == {1}


# ----------------------------------------------------------------------------------- augmentation
def test_augmentation_keeps_shape_and_dtype_and_is_seeded():
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 20, 24, 3), dtype=np.uint8)
    aug = Augmentation()
    out = [prepare_segment(frames, (16, 16), aug, np.random.default_rng(s)) for s in (1, 1, 2)]
    assert out[0].shape == (5, 3, 16, 16) and out[0].dtype == torch.uint8
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])
    plain = prepare_segment(frames, (16, 16), None, np.random.default_rng(1))  # centre 20x20 crop, resized
    assert plain.shape == (5, 3, 16, 16)
    assert torch.equal(prepare_segment(frames, None, None, np.random.default_rng(1)),
                       torch.from_numpy(frames).permute(0, 3, 1, 2))
    x = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_hsv_to_rgb(_rgb_to_hsv(x)), x, atol=1e-5)


def test_lazy_dataset_with_augmentation_is_deterministic(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(3):
        np.savez_compressed(folder / f"e{i}.npz", image=np.random.default_rng(i).integers(
            0, 256, size=(6, 12, 16, 3), dtype=np.uint8))
    make = lambda: LazyEpisodeDataset(folder, "metaworld", 3, "all", image_size=8, augment=Augmentation())
    a, b = make().sample(4, np.random.default_rng(5)), make().sample(4, np.random.default_rng(5))
    assert a.frames.shape == (4, 3, 3, 8, 8) and torch.equal(a.frames, b.frames)


# ------------------------------------------------------------------------------------------ cache
def test_episode_cache_stays_bounded(tmp_path):
    folder = write_episodes(tmp_path / "d", 20, 6)
    data = LazyEpisodeDataset(folder, "metaworld", 4, split="all", cache_episodes=3)
    for _ in range(30):
        data.sample(4)
        assert len(data.cache) <= 3
    assert data.reads > 3 and data.cache.bytes <= 3 * 6 * 8 * 8 * 3
    tiny = LazyEpisodeDataset(folder, "metaworld", 4, split="all", cache_mb=1e-6)  # smaller than one episode
    tiny.sample(10)
    assert len(tiny.cache) == 1


@pytest.mark.slow
def test_world_model_train_takes_a_mixture_of_two_formats(tmp_path):
    """`python -m world_model.train data=<mixture.yaml>`: BAIR-style episodes (`aux1_image`, int64 frames, stride
    1, actions) three times as often as bridge-style ones (`image`, stride 2, read without actions): the mixture
    trains action-free and says so."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for name, key, dtype in (("bair", "aux1_image", np.int64), ("bridge", "image", np.uint8)):
        (tmp_path / name).mkdir()
        for i in range(3):
            frames = rng.integers(0, 256, (12, 16, 16, 3)).astype(dtype)
            np.savez_compressed(tmp_path / name / f"ep_{i}.npz", **{key: frames}, action=np.zeros((12, 4)))
    mixture = tmp_path / "mix.yaml"
    mixture.write_text(yaml.safe_dump({"root": str(tmp_path), "image_size": 16, "split": "all", "datasets": [
        {"name": "bair", "path": "bair", "weight": 3}, {"name": "bridge", "path": "bridge", "weight": 1}]}))
    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "world_model.train", f"data={mixture}", f"out={out}", "steps=2", "batch_size=2",
         "segment_length=4", "num_threads=1", "wandb.mode=disabled", "attention_dropout=0.0",
         "tokenizer.dropout=false", "+tokenizer_overrides.block_out_channels=[16,32]",
         "+tokenizer_overrides.norm_num_groups=8", "+tokenizer_overrides.latent_channels=16",
         "+tokenizer_overrides.patch_size=2", "+transformer_overrides.hidden_size=64",
         "+transformer_overrides.num_hidden_layers=2", "+transformer_overrides.intermediate_size=128"],
        cwd=repo, env={**os.environ, "HYDRA_FULL_ERROR": "0"}, capture_output=True, text=True, timeout=300,
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "action-free" in result.stdout + result.stderr
    from world_model.model import IVideoGPT

    model = IVideoGPT.from_pretrained(out / "checkpoint")
    assert model.action_dim is None and model.tokenizer.config.resolution == 16
    train = (out / "train.csv").read_text().splitlines()
    assert len(train) == 2 and "tokenizer/recon_l1" in train[0]  # one row (log_every=50 > steps: at the end)
