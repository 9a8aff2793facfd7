"""Our pixel Meta-World env as sheeprl's DreamerV3 sees it: a dict observation holding the newest frame."""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from mbrl.dreamerv3.config import OBS_KEY
from mbrl.envs import MetaWorldPixelEnv


class EpisodeSink(Protocol):
    """Receives what the train envs play (`mbrl.dreamerv3.session.Session`)."""

    def on_env_step(self) -> None:
        """One agent step was played (by any of the train envs)."""

    def on_episode_end(self, episode_return: float, success: bool, agent_steps: int) -> None:
        """An episode ended: its summed reward, whether it ever succeeded, its length in agent steps."""


class DictFrameEnv(gym.Wrapper):
    """`MetaWorldPixelEnv` with observations `{"rgb": (3, H, W) uint8}`, the newest frame only.

    Single frames, not our frame stack: DreamerV3's recurrent state carries the history (the paper feeds
    single frames), sheeprl's DreamerV3 forces `env.frame_stack=-1`, and its image pipeline takes 1 or 3
    channels per key. Actions, rewards, success and truncation are the wrapped env's (action repeat inside).

    Args:
        env: the pixel env (its own `frame_stack` does not matter here).
        sink: told about every agent step and every episode end (the train envs); None for evaluation.
    """

    def __init__(self, env: MetaWorldPixelEnv, sink: EpisodeSink | None = None) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Dict(
            {OBS_KEY: gym.spaces.Box(0, 255, env.frame_shape, dtype=np.uint8)}
        )
        self.sink = sink
        self._return, self._success, self._steps = 0.0, False, 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        self._return, self._success, self._steps = 0.0, False, 0
        return {OBS_KEY: info["frame"]}, info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        _, reward, terminated, truncated, info = self.env.step(action)
        self._return += reward
        self._success |= bool(info["success"])
        self._steps += 1
        if self.sink is not None:
            self.sink.on_env_step()
            if terminated or truncated:
                self.sink.on_episode_end(self._return, self._success, self._steps)
        return {OBS_KEY: info["frame"]}, reward, terminated, truncated, info
