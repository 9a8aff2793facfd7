"""Goal-conditioned segments: which frame goes where, the loss positions, and a tiny goal-conditioned model that
trains and rolls out from (goal, first frame)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.batch import SegmentBatch
from world_model.build import build_model
from world_model.data.goal import GOAL_CONTEXT_FRAMES, goal_first, random_order
from world_model.layout import IGNORE_INDEX
from world_model.training import OptimConfig, WorldModelTrainer


def numbered(batch: int, length: int, size: int = 16) -> torch.Tensor:
    """Frames whose every pixel holds (segment * 16 + index): a frame's position is readable from its value."""
    values = torch.arange(batch)[:, None] * 16 + torch.arange(length)[None, :]
    return values[:, :, None, None, None].expand(batch, length, 3, size, size).to(torch.uint8).clone()


def test_goal_first_puts_the_last_frame_in_front():
    frames = numbered(2, 5)
    out = goal_first(SegmentBatch(frames, torch.zeros(2, 5, 4), torch.zeros(2, 5)))
    assert out.actions is None and out.rewards is None
    assert out.frames[:, :, 0, 0, 0].tolist() == [[4, 0, 1, 2, 3, 4], [20, 16, 17, 18, 19, 20]]
    with pytest.raises(ValueError, match="T >= 2"):
        goal_first(SegmentBatch(frames[:, :1]))


def test_random_order_draws_distinct_frames_per_segment():
    frames = numbered(15, 8)  # values stay below 256
    out = random_order(SegmentBatch(frames), 5, np.random.default_rng(0)).frames[:, :, 0, 0, 0]
    assert out.shape == (15, 5)
    for segment, row in enumerate(out.tolist()):
        assert len(set(row)) == 5 and all(segment * 16 <= v < segment * 16 + 8 for v in row)
    assert any(row != sorted(row) for row in out.tolist())  # not in time order
    again = random_order(SegmentBatch(frames), 5, np.random.default_rng(0)).frames[:, :, 0, 0, 0]
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="count=9"):
        random_order(SegmentBatch(frames), 9, np.random.default_rng(0))


def test_a_goal_conditioned_model_masks_the_goal_and_the_first_frame_and_rolls_out_from_them():
    torch.manual_seed(0)
    model = build_model("tiny", context_frames=GOAL_CONTEXT_FRAMES, image_size=16)
    assert model.action_dim is None and model.context_frames == 2
    segments = goal_first(SegmentBatch(torch.randint(0, 256, (3, 4, 3, 16, 16), dtype=torch.uint8)))
    layout = model.layout(segments.frames.shape[1] - GOAL_CONTEXT_FRAMES)
    labels = layout.labels(torch.zeros(3, layout.sequence_length, dtype=torch.long))
    # no loss on the goal's or the first frame's tokens (the prefix): the first scored token is a predicted one
    scored = (labels[0] != IGNORE_INDEX).nonzero().flatten()
    assert layout.prefix_length == 2 * (layout.tokens_per_context_frame + 1) - 1  # two frames, one separator
    assert scored.min() == layout.first_target_position >= layout.prefix_length
    trainer = WorldModelTrainer(model, OptimConfig(tokenizer_lr=1e-3, transformer_lr=1e-3, max_target_frames=3))
    first = trainer.update_transformer(segments)["transformer/ce"]
    for _ in range(5):
        trainer.update_transformer(segments)
    assert trainer.update_transformer(segments)["transformer/ce"] < first
    goal, start = segments.frames[:, 0].float() / 255, segments.frames[:, 1:2].float() / 255
    model.reset(start, goal=goal, horizon=3, generator=torch.Generator().manual_seed(0))
    frames, _ = model.step(None)
    assert frames.shape == (3, 3, 16, 16)


@pytest.mark.slow
def test_world_model_train_goal_conditioned_cli(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from world_model.model import IVideoGPT

    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        (tmp_path / split).mkdir()
        for i in range(count):
            np.savez_compressed(tmp_path / split / f"episode_{i}.npz",
                                image=rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
                                action=rng.uniform(-1, 1, (8, 4)).astype(np.float32),
                                reward=rng.uniform(0, 1, 8).astype(np.float32))
    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[2]
    overrides = ["+tokenizer_overrides.block_out_channels=[16,32]", "+tokenizer_overrides.norm_num_groups=8",
                 "+tokenizer_overrides.latent_channels=16", "+tokenizer_overrides.patch_size=2",
                 "+transformer_overrides.hidden_size=64", "+transformer_overrides.num_hidden_layers=2",
                 "+transformer_overrides.intermediate_size=128"]
    result = subprocess.run(
        [sys.executable, "-m", "world_model.train", f"data={tmp_path / 'train'}", f"val_data={tmp_path / 'val'}",
         f"out={out}", "steps=2", "batch_size=2", "segment_length=5", "eval_every=2", "eval_segments=2",
         "num_threads=1", "wandb.mode=disabled", "goal_conditioned=true", "tokenizer.random_order=4",
         "attention_dropout=0.0", "tokenizer.dropout=false", *overrides],
        cwd=repo, env={**os.environ, "HYDRA_FULL_ERROR": "0"}, capture_output=True, text=True, timeout=300,
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    model = IVideoGPT.from_pretrained(out / "checkpoint")
    # the data have actions and rewards, but a goal-conditioned model uses neither
    assert model.context_frames == GOAL_CONTEXT_FRAMES and model.action_dim is None and not model.has_reward_head
    assert "| eval | step 2 |" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "world_model.train", f"data={tmp_path / 'train'}",
                          f"out={tmp_path / 'bad'}", "goal_conditioned=true", "action_conditioned=true"],
                         cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "goal_conditioned=true trains on [goal, first frame" in bad.stderr
