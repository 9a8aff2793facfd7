"""Models a planner can drive: given the current state, predict frames and rewards of action sequences.

One interface (`PlanningModel`): `observe(env, history)` sets the current state from the real episode,
`rollout(actions (N, H, A))` returns the predicted frames (N, H, 3, h, w) in [0, 1] and rewards (N, H) of every
sequence from that state.

- `WorldModel`: an action-conditioned iVideoGPT. Each rollout batch restarts imagination from the last T0 real
  frames (repeated N times; at the start of an episode the first frame fills the missing ones) and imagines
  one frame per action, `chunk` sequences at a time.
- `OracleModel`: the simulator itself. It plays every sequence in its own env, restored to the real env's
  state before each one (`MetaWorldPixelEnv.get_sim_state` / `set_sim_state`), so its predictions are exact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from mbrl.envs import EnvConfig, MetaWorldPixelEnv, make_env

if TYPE_CHECKING:
    from mbrl.envs.metaworld import SimState
    from world_model.model import IVideoGPT

# The oracle's own env never ends an episode while planning beyond the real episode's end.
_ORACLE_EPISODE_LENGTH = 10**6


@dataclass(frozen=True)
class Rollout:
    """Predictions for N action sequences of H steps.

    Attributes:
        frames: (N, H, 3, h, w) float32 in [0, 1], the frame after each action.
        rewards: (N, H) float32, the reward of each action; None when the model predicts none.
    """

    frames: torch.Tensor
    rewards: torch.Tensor | None


class PlanningModel(Protocol):
    """What a planner needs from a model (see the module docstring)."""

    action_dim: int
    frame_shape: tuple[int, int, int]
    has_reward_head: bool
    max_horizon: int | None  # None: unlimited
    device: torch.device

    def observe(self, env: MetaWorldPixelEnv, history: np.ndarray) -> None: ...

    def rollout(self, actions: torch.Tensor) -> Rollout: ...

    def close(self) -> None: ...


def _check_actions(actions: torch.Tensor, action_dim: int, max_horizon: int | None) -> None:
    if actions.dim() != 3 or actions.shape[2] != action_dim or actions.shape[0] < 1 or actions.shape[1] < 1:
        raise ValueError(f"actions must be (N, H, {action_dim}) with N, H >= 1, got {tuple(actions.shape)}")
    if max_horizon is not None and actions.shape[1] > max_horizon:
        raise ValueError(f"horizon {actions.shape[1]} is longer than the model can imagine ({max_horizon} frames); "
                         f"pass planner.horizon<={max_horizon}")


class OracleModel:
    """The true simulator as a planning model (an upper bound for learned models).

    Args:
        env_cfg: the real env's config; the oracle builds its own env of the same task and image settings.
    """

    has_reward_head = True
    max_horizon = None

    def __init__(self, env_cfg: EnvConfig) -> None:
        self.env = make_env(dataclasses.replace(env_cfg, episode_length=_ORACLE_EPISODE_LENGTH))
        self.action_dim = self.env.action_dim
        self.frame_shape = self.env.frame_shape
        self.device = torch.device("cpu")
        self._state: SimState | None = None

    def observe(self, env: MetaWorldPixelEnv, history: np.ndarray) -> None:
        """Take the real env's current simulator state (`history` is not needed)."""
        self._state = env.get_sim_state()

    def rollout(self, actions: torch.Tensor) -> Rollout:
        """Play each sequence of `actions` (N, H, A) from the observed state: frames (N, H, 3, h, w), rewards
        (N, H) as the real env would give them."""
        if self._state is None:
            raise RuntimeError("rollout() before observe(): give the oracle the real env's state first")
        _check_actions(actions, self.action_dim, None)
        plans = actions.detach().cpu().numpy().astype(np.float32)
        count, horizon = plans.shape[:2]
        frames = np.empty((count, horizon, *self.frame_shape), dtype=np.uint8)
        rewards = np.empty((count, horizon), dtype=np.float32)
        for n in range(count):
            self.env.set_sim_state(self._state)
            for t in range(horizon):
                _, reward, _, _, info = self.env.step(plans[n, t])
                frames[n, t] = info["frame"]
                rewards[n, t] = reward
        return Rollout(torch.from_numpy(frames).float().div_(255.0), torch.from_numpy(rewards))

    def close(self) -> None:
        self.env.close()


class WorldModel:
    """An action-conditioned iVideoGPT as a planning model.

    Args:
        model: the world model (on its device, eval mode).
        temperature, top_k: sampling of imagined tokens (the paper: 1.0, 100).
        chunk: sequences imagined in one batch; None: all N at once.
        generator: random source on the model's device (reproducible imagination).
    """

    def __init__(self, model: IVideoGPT, temperature: float = 1.0, top_k: int | None = 100,
                 chunk: int | None = None, generator: torch.Generator | None = None) -> None:
        if model.action_dim is None:
            raise ValueError("this world model is action-free: it cannot predict what planned actions do; use an "
                             "action-conditioned checkpoint (one fine-tuned with actions) or model=oracle")
        if chunk is not None and chunk < 1:
            raise ValueError(f"world_model.chunk must be >= 1 or null, got {chunk}")
        self.model = model.eval()
        self.temperature, self.top_k, self.chunk, self.generator = temperature, top_k, chunk, generator
        self.action_dim = int(model.action_dim)
        size = int(model.tokenizer.config.resolution)
        self.frame_shape = (3, size, size)
        self.has_reward_head = bool(model.has_reward_head)
        self.max_horizon = int(model.imaginer.max_horizon)
        self.device = model.imaginer.device
        self._context: torch.Tensor | None = None

    def observe(self, env: MetaWorldPixelEnv, history: np.ndarray) -> None:
        """Keep the last T0 real frames of `history` (T, 3, h, w) uint8 as the context (the oldest one repeated
        when fewer than T0 were seen)."""
        history = np.asarray(history)
        if history.ndim != 4 or tuple(history.shape[1:]) != self.frame_shape:
            raise ValueError(f"history must be (T, *{self.frame_shape}) frames, got {history.shape}; the env's "
                             f"image_size must equal the world model's ({self.frame_shape[1]})")
        t0 = self.model.context_frames
        recent = history[-t0:]
        if len(recent) < t0:
            recent = np.concatenate([np.repeat(recent[:1], t0 - len(recent), axis=0), recent])
        self._context = torch.from_numpy(recent).to(self.device).float().div_(255.0)

    @torch.no_grad()
    def rollout(self, actions: torch.Tensor) -> Rollout:
        """Imagine each sequence of `actions` (N, H, A) from the observed context: frames (N, H, 3, h, w) in
        [0, 1], rewards (N, H) (None without a reward head)."""
        if self._context is None:
            raise RuntimeError("rollout() before observe(): give the world model the real frames first")
        _check_actions(actions, self.action_dim, self.max_horizon)
        actions = actions.to(self.device, torch.float32)
        count, horizon = actions.shape[:2]
        step = count if self.chunk is None else self.chunk
        frames, rewards = [], []
        for start in range(0, count, step):
            part = actions[start:start + step]
            context = self._context.unsqueeze(0).expand(len(part), *self._context.shape)
            self.model.reset(context, horizon=horizon, temperature=self.temperature, top_k=self.top_k,
                             generator=self.generator)
            chunk_frames, chunk_rewards = [], []
            for t in range(horizon):
                frame, reward = self.model.step(part[:, t])
                chunk_frames.append(frame.float())
                chunk_rewards.append(None if reward is None else reward.float())
            frames.append(torch.stack(chunk_frames, 1))
            if chunk_rewards[0] is not None:
                rewards.append(torch.stack(chunk_rewards, 1))
        return Rollout(torch.cat(frames).clamp_(0.0, 1.0), torch.cat(rewards) if rewards else None)

    def close(self) -> None:
        """Nothing to free (the model stays usable)."""
