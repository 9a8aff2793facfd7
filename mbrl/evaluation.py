"""Evaluation episodes, shared by every agent's loop so that all agents are scored the same way: the same start
states at the same agent step, the same metrics and a video of the first episode."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from core.runtime import derive_seed
from core.video import VideoRecorder

#: The seed stream of evaluation episodes (see `core.runtime.derive_seed`): episode i of the evaluation at agent
#: step s starts from `derive_seed(run_seed, EVAL_SEED_STREAM, s, i)`, whatever the agent.
EVAL_SEED_STREAM = 1


def run_eval_episodes(
    env: gym.Env,
    policy: Callable[[Any], np.ndarray],
    *,
    run_seed: int,
    step: int,
    num_episodes: int,
    action_repeat: int,
    video: VideoRecorder,
    on_reset: Callable[[], None] | None = None,
) -> dict[str, float] | None:
    """Plays `num_episodes` episodes with `policy(obs) -> action`, recording the first into `video` (the caller
    saves it). `on_reset` runs after every reset (e.g. a recurrent policy clearing its state).

    Returns:
        `eval/episode_return` and `eval/success_rate` (means over episodes) and `eval/episode_length` (env
        frames), or None when `num_episodes` is 0.
    """
    returns, successes, frames = [], [], 0
    for i in range(num_episodes):
        obs, info = env.reset(seed=derive_seed(run_seed, EVAL_SEED_STREAM, step, i))
        video.start(info["frame"], record=i == 0)
        if on_reset is not None:
            on_reset()
        done, episode_return, success = False, 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            video.add(info["frame"])
            done = terminated or truncated
            episode_return += reward
            success |= bool(info["success"])
            frames += action_repeat
        returns.append(episode_return)
        successes.append(success)
    if not returns:
        return None
    return {
        "eval/episode_return": float(np.mean(returns)),
        "eval/success_rate": float(np.mean(successes)),
        "eval/episode_length": frames / len(returns),
    }
