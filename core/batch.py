"""The batch types every package passes around: agent transitions and world-model video segments."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class TransitionBatch:
    """n-step transitions for the agent (torch tensors)."""

    obs: torch.Tensor  # uint8 (B, S*3, H, W)
    action: torch.Tensor  # float32 (B, A)
    reward: torch.Tensor  # float32 (B, 1) n-step discounted sum
    discount: torch.Tensor  # float32 (B, 1) discount^n
    next_obs: torch.Tensor  # uint8 (B, S*3, H, W)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TransitionBatch:
        return TransitionBatch(
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        )


@dataclass
class SegmentBatch:
    """Video segments in the official convention (see the module docstring)."""

    frames: torch.Tensor  # uint8 (B, T, 3, H, W)
    actions: torch.Tensor | None = None  # float32 (B, T, A); None for action-free data
    rewards: torch.Tensor | None = None  # float32 (B, T); None where the data has no rewards

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SegmentBatch:
        return SegmentBatch(
            **{
                f.name: None
                if getattr(self, f.name) is None
                else getattr(self, f.name).to(device, non_blocking=non_blocking)
                for f in fields(self)
            }
        )
