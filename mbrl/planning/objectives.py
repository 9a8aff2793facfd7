"""Planning objectives: score predicted rollouts, higher is better.

- `goal_image`: minus the summed squared error between every predicted frame and the goal image, frames in
  [0, 1] (VP2's pixel objective): `-sum_{t, c, y, x} (frame_t - goal)^2`.
- `reward`: the sum of the predicted rewards (needs a model with a reward head).

`make_objective(name, model, goal)` checks the name and that the model can serve the objective.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from mbrl.planning.models import PlanningModel, Rollout
from mbrl.planning.planners import close_matches_hint


class Objective(Protocol):
    """Scores rollouts: `objective(rollout) -> (N,)`, higher is better."""

    name: str

    def __call__(self, rollout: Rollout) -> torch.Tensor: ...


def as_goal_tensor(goal: np.ndarray | torch.Tensor, frame_shape: tuple[int, int, int],
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """A goal frame (3, H, W), uint8 in [0, 255] or float in [0, 1], as float32 in [0, 1] on `device`."""
    tensor = torch.as_tensor(np.asarray(goal) if not isinstance(goal, torch.Tensor) else goal)
    if tuple(tensor.shape) != tuple(frame_shape):
        raise ValueError(f"goal image has shape {tuple(tensor.shape)} but the model predicts frames of "
                         f"{tuple(frame_shape)}; render the goal at the model's image size (3, H, W)")
    tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    return tensor.to(device)


class GoalImage:
    """Minus the summed squared error of all predicted frames (N, H, 3, h, w) against a goal (3, h, w)."""

    name = "goal_image"

    def __init__(self, goal: torch.Tensor) -> None:
        self.goal = goal

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        diff = rollout.frames - self.goal.to(rollout.frames.device)
        return -diff.square().flatten(1).sum(1)


class PredictedReward:
    """The sum of the predicted rewards (N, H) over the horizon."""

    name = "reward"

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        if rollout.rewards is None:
            raise ValueError("objective=reward needs predicted rewards but the model returned none; use a model "
                             "with a reward head or objective=goal_image")
        return rollout.rewards.sum(1)


OBJECTIVES = ("goal_image", "reward")


def make_objective(name: str, model: PlanningModel, goal: np.ndarray | torch.Tensor | None = None) -> Objective:
    """The objective called `name` for rollouts of `model`.

    Args:
        name: `goal_image` or `reward`.
        model: the model whose rollouts will be scored (its frame shape, reward head).
        goal: (3, H, W) goal frame, uint8 or float in [0, 1]; needed by `goal_image`.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} ({close_matches_hint(name, OBJECTIVES)}); "
                         f"choose one of {', '.join(OBJECTIVES)}")
    if name == "reward":
        if not model.has_reward_head:
            raise ValueError("objective=reward needs a model that predicts rewards, but this world model has no "
                             "reward head; use objective=goal_image or a checkpoint with a reward head")
        return PredictedReward()
    if goal is None:
        raise ValueError("objective=goal_image needs a goal image (3, H, W)")
    return GoalImage(as_goal_tensor(goal, model.frame_shape, model.device))
