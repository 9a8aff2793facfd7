"""Segment layouts of goal-conditioned prediction (the published `oxe-64-goal-cond` model).

- `goal_first`: a segment `[o_1, ..., o_T]` becomes `[o_T, o_1, ..., o_T]`: the goal (the segment's last frame)
  in front as a context frame, then the first frame as the second context frame (T0 = 2), then the frames to
  predict, the last of which is the goal again. Action-free: the actions are dropped (there is none to put
  before the goal), and so are the rewards.
- `random_order`: the tokenizer's fine-tuning mode for that model: `count` frames of each segment in a random
  order (a fresh permutation per segment), so that its context/dynamics split does not assume time order.
"""
from __future__ import annotations

import numpy as np
import torch

from core.batch import SegmentBatch

GOAL_CONTEXT_FRAMES = 2  # the goal, then the first frame


def goal_first(batch: SegmentBatch) -> SegmentBatch:
    """`[o_1, ..., o_T]` -> `[o_T, o_1, ..., o_T]` (frames uint8 (B, T, 3, H, W) -> (B, T + 1, 3, H, W)),
    action- and reward-free.

    Raises:
        ValueError: a segment of fewer than 2 frames (nothing would be predicted).
    """
    frames = batch.frames
    if frames.dim() != 5 or frames.shape[1] < 2:
        raise ValueError(f"goal-conditioned segments need frames (B, T >= 2, 3, H, W), got {tuple(frames.shape)}")
    return SegmentBatch(torch.cat([frames[:, -1:], frames], dim=1))


def random_order(batch: SegmentBatch, count: int, rng: np.random.Generator) -> SegmentBatch:
    """`count` distinct frames of each segment, in a random order drawn from `rng` (frames (B, T, 3, H, W) ->
    (B, count, 3, H, W)); actions and rewards are dropped (their order no longer means anything).

    Raises:
        ValueError: `count` is not in [1, T].
    """
    frames = batch.frames
    length = frames.shape[1]
    if not 1 <= count <= length:
        raise ValueError(f"random_order: count={count} frames must be in [1, {length}] (the segment length)")
    order = np.stack([rng.permutation(length)[:count] for _ in range(frames.shape[0])])
    index = torch.as_tensor(order, device=frames.device)
    return SegmentBatch(frames[torch.arange(frames.shape[0], device=frames.device)[:, None], index])
