"""Scripted demonstrations in sheeprl's DreamerV3 replay (`demos=N`; the episodes are `mbrl.demos`'s).

sheeprl builds its replay inside its training function, so a fresh run with demonstrations hands it a replay
constructor whose replay holds them from the start (`seeded_replay_factory`). Each episode is written the way sheeprl's loop
writes the episodes it plays (`demo_rows`), into the env buffers in turn. A resumed run gets its replay,
demonstrations included, back from sheeprl's checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from mbrl.demos import DemoEpisode
from mbrl.dreamerv3.config import OBS_KEY


def demo_rows(episode: DemoEpisode, clip_rewards: bool = False) -> dict[str, np.ndarray]:
    """An episode of T steps as the T + 1 rows sheeprl's DreamerV3 loop writes for one env.

    Row t holds frame t, the reward of the step that led to it (0 on the first row, ``tanh``-ed when sheeprl
    clips rewards), ``is_first`` on the first row, ``terminated`` / ``truncated`` on the last, and the action
    taken at frame t (zeros on the last row, which no action leaves).

    Returns:
        arrays of shape (T + 1, 1, ...): ``rgb`` uint8 (3, H, W), ``actions`` float32 (A,), and ``rewards``,
        ``terminated``, ``truncated``, ``is_first`` float64 (1,), as sheeprl's loop first writes them.
    """
    rows = len(episode.frames)
    rewards = np.concatenate([[0.0], episode.rewards.astype(np.float64)])
    if clip_rewards:
        rewards = np.tanh(rewards)
    terminated, truncated, first = np.zeros(rows), np.zeros(rows), np.zeros(rows)
    terminated[-1], truncated[-1], first[0] = episode.terminated, episode.truncated, 1.0
    actions = np.concatenate([episode.actions, np.zeros_like(episode.actions[:1])]).astype(np.float32)
    column = {OBS_KEY: episode.frames, "actions": actions, "rewards": rewards[:, None],
              "terminated": terminated[:, None], "truncated": truncated[:, None], "is_first": first[:, None]}
    return {key: value[:, None] for key, value in column.items()}


def seeded_replay_factory(base: type, episodes: Sequence[dict[str, np.ndarray]]) -> Callable[..., Any]:
    """What sheeprl calls in place of its ``EnvIndependentReplayBuffer`` (``base``): the same constructor,
    returning a ``base`` that already holds ``episodes`` (``demo_rows`` each), episode i in env buffer
    ``i % n_envs``. A plain ``base``, so sheeprl's checkpoints pickle it as ever."""

    def build(*args: Any, **kwargs: Any) -> Any:
        replay = base(*args, **kwargs)
        for i, rows in enumerate(episodes):
            replay.add(rows, [i % replay.n_envs], validate_args=True)
        return replay

    return build


@contextmanager
def replay_with_demos(episodes: Sequence[dict[str, np.ndarray]]) -> Iterator[None]:
    """While open, sheeprl's DreamerV3 builds its replay holding ``episodes`` (``demo_rows`` each)."""
    from sheeprl.algos.dreamer_v3 import dreamer_v3

    original = getattr(dreamer_v3, "EnvIndependentReplayBuffer", None)
    if original is None:
        raise RuntimeError("this sheeprl version does not build DreamerV3's replay from EnvIndependentReplayBuffer; "
                           "demos need the sheeprl version pinned in pyproject.toml (or pass demos=0)")
    # only a fresh run gets here: sheeprl's one other use of the name, an isinstance check, is on resume
    dreamer_v3.EnvIndependentReplayBuffer = seeded_replay_factory(original, episodes)
    try:
        yield
    finally:
        dreamer_v3.EnvIndependentReplayBuffer = original
