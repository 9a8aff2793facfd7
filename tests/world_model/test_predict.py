"""python -m world_model.predict: one episode in, one real | predicted video per sample out, with the dataset's
key, stride and actions, frames resized to the checkpoint's resolution, and one-line errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from helpers import SHARED, checkpoint_folder

from world_model.model import IVideoGPT
from world_model.predict import main

BAIR_SAMPLE = SHARED / "reference" / "datasets" / "bair_sample.npz"


@pytest.fixture(scope="module")
def bair_ckpt(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny action-conditioned checkpoint (4-d actions) re-saved with one context frame, as BAIR's."""
    root = tmp_path_factory.mktemp("bair_ck")
    model = IVideoGPT.from_pretrained(checkpoint_folder(root / "src", tiny_checkpoint, "transformer_with_heads"))
    model.tokenizer.set_context_length(1)
    IVideoGPT(model.tokenizer, model.transformer).save_pretrained(root / "t0_1")
    return root / "t0_1"


@pytest.fixture(scope="module")
def free_ckpt(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny action-free checkpoint, T0 = 2, 64x64."""
    return checkpoint_folder(tmp_path_factory.mktemp("free") / "ck", tiny_checkpoint, "transformer")


@pytest.fixture
def spy(monkeypatch) -> dict[str, list]:
    """Records what reaches `IVideoGPT.reset` (context shape) and `IVideoGPT.step` (actions)."""
    calls: dict[str, list] = {"reset": [], "step": []}
    reset, step = IVideoGPT.reset, IVideoGPT.step

    def spy_reset(self, context_frames, *args, **kwargs):
        calls["reset"].append(tuple(context_frames.shape))
        return reset(self, context_frames, *args, **kwargs)

    def spy_step(self, actions=None):
        calls["step"].append(None if actions is None else actions.detach().cpu().clone())
        return step(self, actions)

    monkeypatch.setattr(IVideoGPT, "reset", spy_reset)
    monkeypatch.setattr(IVideoGPT, "step", spy_step)
    return calls


def run(*args: str) -> int:
    return main([*args, "num_threads=1", "samples=2"])


def one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def test_bair_episode_with_context_1_uses_the_actions(bair_ckpt, tmp_path, spy, capsys):
    if not BAIR_SAMPLE.is_file():
        pytest.skip(f"BAIR sample not found at {BAIR_SAMPLE}")
    out = tmp_path / "out"
    assert run(f"checkpoint={bair_ckpt}", f"input={BAIR_SAMPLE}", "dataset=bair", "segment_length=4",
               "action_conditioned=true", f"out={out}") == 0
    videos = sorted(out.glob("*.gif"))
    assert [v.name for v in videos] == ["bair_sample_sample0.gif", "bair_sample_sample1.gif"]
    frames = imageio.mimread(videos[0])
    assert len(frames) == 4 and frames[0].shape[:2] == (64, 64 * 2 + 2)
    real = np.load(BAIR_SAMPLE)["aux1_image"][:4].astype(np.uint8)
    assert np.abs(frames[2][:, :64, :3].astype(int) - real[2]).mean() < 8  # left: the real clip (GIF palette)
    assert spy["reset"] == [(2, 1, 3, 64, 64)]
    expected = torch.from_numpy(np.load(BAIR_SAMPLE)["action"][:3].astype(np.float32))  # actions of frames 0..2
    assert len(spy["step"]) == 3
    for k, actions in enumerate(spy["step"]):
        assert torch.equal(actions, expected[k].expand(2, -1))
    printed = capsys.readouterr().out
    assert "action-conditioned, 1 context + 3 predicted" in printed and str(videos[0]) in printed


def test_a_256x320_episode_is_resized_and_mp4_is_written(free_ckpt, tmp_path, spy):
    frames = np.random.default_rng(0).integers(0, 256, size=(12, 256, 320, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "big.npz", image=frames)
    out = tmp_path / "out"
    assert run(f"checkpoint={free_ckpt}", f"input={tmp_path / 'big.npz'}", "dataset=bridge", "segment_length=4",
               f"out={out}", "format=mp4") == 0
    assert spy["reset"] == [(2, 2, 3, 64, 64)] and spy["step"] == [None, None]
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 2
    first = imageio.mimread(videos[0])
    assert len(first) == 4 and first[0].shape[:2] == (64, 130)


def test_bad_requests_fail_with_one_line(free_ckpt, bair_ckpt, tmp_path, capsys):
    episode = tmp_path / "ep.npz"
    np.savez_compressed(episode, image=np.zeros((40, 64, 64, 3), np.uint8))
    short = tmp_path / "short.npz"
    np.savez_compressed(short, image=np.zeros((2, 64, 64, 3), np.uint8), action=np.zeros((2, 4)))
    base = (f"checkpoint={free_ckpt}", f"input={episode}", f"out={tmp_path / 'o'}")
    assert "did you mean bair" in one_line_error(capsys, run(*base, "dataset=bair_pushing"))
    assert "has no 'rgb_static' array (it has image)" in one_line_error(capsys, run(*base, "dataset=taco_play"))
    assert "no more than the 2 context frames" in one_line_error(
        capsys, run(f"checkpoint={free_ckpt}", f"input={short}", "dataset=metaworld"))
    assert "context_length 2 but context_frames=1" in one_line_error(
        capsys, run(*base, "dataset=metaworld", "context_frames=1"))
    assert "can imagine 1 to 30" in one_line_error(capsys, run(*base, "dataset=metaworld", "segment_length=40"))
    assert "checkpoint is action-free" in one_line_error(
        capsys, run(*base, "dataset=metaworld", "action_conditioned=true"))
    assert "has no 'action' array" in one_line_error(
        capsys, run(f"checkpoint={bair_ckpt}", f"input={episode}", "dataset=metaworld"))
    assert "read without actions" in one_line_error(
        capsys, run(f"checkpoint={bair_ckpt}", f"input={episode}", "dataset=bridge"))
    assert "format='avi'" in one_line_error(capsys, run(*base, "dataset=metaworld", "format=avi"))
    assert "unknown argument" in one_line_error(capsys, run(*base, "dataset=metaworld", "sample=3"))
    assert "input=" in one_line_error(capsys, run(*base[:1], f"input={tmp_path / 'none.npz'}", "dataset=bair"))
    missing = tmp_path / "nock"
    shutil.copytree(free_ckpt / "tokenizer", missing / "tokenizer")
    assert "is missing" in one_line_error(capsys, run(f"checkpoint={missing}", f"input={episode}",
                                                     "dataset=metaworld"))


def test_goal_conditioned_prediction_starts_from_the_goal_and_the_first_frame(free_ckpt, tmp_path, spy, capsys):
    frames = np.zeros((6, 64, 64, 3), np.uint8)
    frames[:] = np.arange(6, dtype=np.uint8)[:, None, None, None] * 40  # frame t is uniformly 40 t
    np.savez_compressed(tmp_path / "ep.npz", image=frames)
    out = tmp_path / "goal"
    assert run(f"checkpoint={free_ckpt}", f"input={tmp_path / 'ep.npz'}", "dataset=metaworld", f"out={out}",
               "segment_length=6", "goal_conditioned=true") == 0
    assert spy["reset"] == [(2, 2, 3, 64, 64)] and len(spy["step"]) == 5  # (goal, o_1) in; o_2 .. o_6 out
    video = imageio.mimread(min(out.glob("*.gif")))
    assert len(video) == 7  # the goal, then o_1 .. o_6
    real_half = np.stack([v[..., :64, :3].mean() for v in video])
    np.testing.assert_allclose(real_half, [200, 0, 40, 80, 120, 160, 200], atol=1)
    assert "goal-conditioned" in capsys.readouterr().out
    assert run(f"checkpoint={free_ckpt}", f"input={tmp_path / 'ep.npz'}", "dataset=metaworld",
               "goal_conditioned=true", "action_conditioned=true") == 2
