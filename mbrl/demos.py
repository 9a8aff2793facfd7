"""Scripted demonstrations: episodes of Meta-World's scripted policy in our pixel env.

With `demos=N`, every agent starts with the same N episodes in its real replay (DrQ-v2 and MBPO through
`mbrl.trainer`, DreamerV3 through its sheeprl replay, `mbrl.dreamerv3.demos`): episode i is reset with the
seed `derive_seed(seed, DEMO_SEED_STREAM, i)`, so methods compared at one seed see the same demonstrations.
Demonstrations use no frame budget.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from core.runtime import derive_seed
from mbrl.envs import MetaWorldPixelEnv, scripted_policy
from mbrl.envs.tasks import ScriptedPolicy

# Seed stream of demonstration episodes (with the run seed and the episode index, see core.runtime.derive_seed).
# Training episodes use stream 0, evaluation 1 (mbrl.evaluation.EVAL_SEED_STREAM), the replay's sampler 3.
DEMO_SEED_STREAM = 2


@dataclass(frozen=True)
class DemoEpisode:
    """One scripted episode, step by step.

    Attributes:
        frames: (T + 1, 3, H, W) uint8, the frame after reset and then the frame after every step.
        actions: (T, A) float32 in [-1, 1], the action of every step.
        rewards: (T,) float32.
        successes: (T,) bool, the env's success flag after every step.
        terminated, truncated: how the episode ended.
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    successes: np.ndarray
    terminated: bool
    truncated: bool

    @property
    def success(self) -> bool:
        return bool(self.successes.any())


def scripted_episode(env: MetaWorldPixelEnv, policy: ScriptedPolicy, seed: int | None = None, noise: float = 0.0,
                     rng: np.random.Generator | None = None) -> DemoEpisode:
    """One episode of ``policy`` in ``env``, reset with ``seed`` (None: the env's own next seed).

    ``noise`` > 0 adds Gaussian noise of that scale (drawn from ``rng``) to every action before clipping to
    [-1, 1] (``mbrl.collect`` records noisy experts that way).
    """
    if noise > 0 and rng is None:
        raise ValueError("action noise needs a random generator: pass rng=np.random.default_rng(seed)")
    _, info = env.reset(seed=seed)
    frames, actions, rewards, successes = [info["frame"]], [], [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = policy.get_action(env.state_obs)
        if noise > 0:
            action = action + noise * rng.standard_normal(action.shape)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        _, reward, terminated, truncated, info = env.step(action)
        frames.append(info["frame"])
        actions.append(action)
        rewards.append(reward)
        successes.append(bool(info["success"]))
    return DemoEpisode(np.stack(frames), np.stack(actions), np.asarray(rewards, dtype=np.float32),
                       np.asarray(successes), bool(terminated), bool(truncated))


def demo_episodes(env: MetaWorldPixelEnv, task: str, count: int, seed: int) -> Iterator[DemoEpisode]:
    """Plays `count` episodes of `task`'s scripted policy in `env` (reset with the demonstration seeds)."""
    policy = scripted_policy(task)
    for i in range(count):
        yield scripted_episode(env, policy, seed=derive_seed(seed, DEMO_SEED_STREAM, i))


def demos_added(episodes: list[DemoEpisode]) -> str:
    """The line a run prints once its demonstrations are in the replay."""
    successes = sum(episode.success for episode in episodes)
    return f"added {len(episodes)} scripted demo episodes to the replay ({successes} successful)"
