"""Model-predictive control episodes: re-plan at every step with a planner driving a model, act, repeat.

`goal_from_scripted` makes the goal image of an episode: Meta-World's scripted policy is played from the same
reset seed, and its last frame is the goal. `run_episode` then resets the env with that seed and runs MPC.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from mbrl.demos import scripted_episode
from mbrl.envs import MetaWorldPixelEnv, scripted_policy
from mbrl.planning.models import PlanningModel
from mbrl.planning.objectives import Objective
from mbrl.planning.planners import Planner


@dataclass
class EpisodeResult:
    """One MPC episode.

    Attributes:
        success: the env reported success at some step.
        episode_return: sum of the env's rewards.
        steps: control steps taken.
        first_success_step: 1-based step of the first success (None without one).
        seconds_per_step: mean wall-clock seconds of planning per control step (model rollouts and optimizer;
            not the real env step).
        video: (T, 3, h, 4 * w) uint8 panels [real frame after the step | the plan's first predicted frame |
            its last predicted frame | goal], when recorded.
    """

    success: bool
    episode_return: float
    steps: int
    first_success_step: int | None
    seconds_per_step: float
    video: list[np.ndarray] = field(default_factory=list)


def goal_from_scripted(env: MetaWorldPixelEnv, task: str, seed: int) -> tuple[np.ndarray, bool]:
    """The goal image of the episode reset with `seed`: the last frame of the scripted policy's episode from
    that reset. Returns the frame (3, H, W) uint8 and whether the scripted episode succeeded. Leaves `env`
    after a finished episode (reset it before use)."""
    episode = scripted_episode(env, scripted_policy(task), seed=seed)
    return episode.frames[-1].copy(), episode.success


def check_horizon(model: PlanningModel, planner: Planner) -> None:
    """A one-line error when the planner's horizon is longer than the model can imagine."""
    if model.max_horizon is not None and planner.horizon > model.max_horizon:
        raise ValueError(f"planner.horizon={planner.horizon} is longer than the world model can imagine "
                         f"({model.max_horizon} frames); pass planner.horizon<={model.max_horizon}")
    if model.action_dim != planner.action_dim:
        raise ValueError(f"the model takes {model.action_dim}-dim actions but the planner plans "
                         f"{planner.action_dim}-dim ones; build the planner with action_dim={model.action_dim}")


def _panel(frames: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(frames, axis=2)


def _to_uint8(frame: torch.Tensor) -> np.ndarray:
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def run_episode(env: MetaWorldPixelEnv, model: PlanningModel, planner: Planner, objective: Objective,
                seed: int, control_steps: int, goal: np.ndarray | None = None, record: bool = False,
                stop_on_success: bool = False, on_step: Callable[[], None] | None = None) -> EpisodeResult:
    """One MPC episode: reset `env` with `seed`, then `control_steps` times observe, plan, execute the plan's
    first action.

    Args:
        goal: (3, H, W) uint8 goal frame, shown in the video.
        record: collect video panels (one extra rollout of the chosen plan per step, not timed).
        stop_on_success: end the episode at the first success (the success flag is unchanged; the return
            then covers fewer steps).
        on_step: called after every control step (a progress bar).
    """
    if control_steps < 1:
        raise ValueError(f"control_steps must be >= 1, got {control_steps}")
    check_horizon(model, planner)
    planner.reset()
    _, info = env.reset(seed=seed)
    history = [info["frame"]]
    episode_return, success_step, plan_seconds, steps = 0.0, None, 0.0, 0
    video: list[np.ndarray] = []
    for step in range(1, control_steps + 1):
        start = time.perf_counter()
        model.observe(env, np.stack(history))
        result = planner.plan(lambda candidates: objective(model.rollout(candidates)))
        action = result.actions[0].detach().cpu().numpy().astype(np.float32)
        plan_seconds += time.perf_counter() - start
        predicted = model.rollout(result.actions[None]).frames[0] if record else None
        _, reward, terminated, truncated, info = env.step(action)
        history.append(info["frame"])
        episode_return += float(reward)
        steps = step
        if info["success"] and success_step is None:
            success_step = step
        if predicted is not None:
            panels = [info["frame"], _to_uint8(predicted[0]), _to_uint8(predicted[-1])]
            panels.append(goal if goal is not None else np.zeros_like(info["frame"]))
            video.append(_panel(panels))
        if on_step is not None:
            on_step()
        if terminated or truncated or (stop_on_success and success_step is not None):
            break
    return EpisodeResult(success=success_step is not None, episode_return=episode_return, steps=steps,
                         first_success_step=success_step, seconds_per_step=plan_seconds / max(steps, 1),
                         video=video)
