"""Imagined experience for MBPO, kept on the world model's device: rollouts and a FIFO replay of them.

`imagine` runs a batch of rollouts: real start frames (sampled from the real replay) go into the world model
as context, the agent's stochastic policy acts on frame stacks built from the newest frames, and the world
model returns the next frame and the reward of each step. `ImaginedReplay` stores each rollout once, as uint8
frames on the device (`(B, L + H, 3, H, W)`: L real history frames, then H imagined ones) plus its actions
and rewards, and samples n-step transitions from it exactly as `mbrl.replay.ReplayBuffer.sample` does from
real episodes: same n, same discount, frame stacks rebuilt from the stored frames at sampling time. Nothing
goes through the disk or the host on the way from the world model to the agent's batch.

Indexing of a stored rollout (L history frames, horizon H): observation t (t = 0..H) is the stack of the
`frame_stack` frames ending at frame `L - 1 + t` (frame 0 repeated where the stack would reach before it,
as the env fills its first stack); `actions[t]` is taken at observation t and `rewards[t]` is the reward of
that transition. A sample starting at t needs t + nstep <= H.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from core.batch import TransitionBatch

Policy = Callable[[torch.Tensor], torch.Tensor]
"""Frame stacks uint8 `(B, S*3, H, W)` on the device -> actions `(B, A)` in [-1, 1]."""


class RolloutModel(Protocol):
    """What `imagine` uses of a world model (`world_model.IVideoGPT` is one)."""

    @property
    def context_frames(self) -> int:
        """T0: the real frames each rollout starts from."""

    def reset(self, context_frames: torch.Tensor, goal: torch.Tensor | None = None, horizon: int | None = None,
              temperature: float = 1.0, top_k: int | None = 100, generator: torch.Generator | None = None) -> None:
        """Starts rollouts from context frames `(B, T0, 3, H, W)` in [0, 1]."""

    def step(self, actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Actions `(B, A)` -> the next frames `(B, 3, H, W)` in [0, 1] and rewards `(B,)` (None without a
        reward head)."""


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Float frames in [0, 1] -> uint8 in [0, 255] (rounded), the dtype real replay frames have."""
    return frames.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def stack_frames(frames: torch.Tensor, end: torch.Tensor, frame_stack: int,
                 rows: torch.Tensor | None = None) -> torch.Tensor:
    """Frame stacks gathered from frame sequences (only the stacked frames are read).

    Args:
        frames: `(N, T, C, H, W)`, any dtype.
        end: `(B,)` index of each stack's newest frame; indices before 0 repeat frame 0.
        frame_stack: frames per stack (S).
        rows: `(B,)` which sequence each stack comes from; None: stack b from sequence b (B = N).

    Returns:
        `(B, S*C, H, W)`, oldest frame first (the env's observation layout).
    """
    offsets = torch.arange(1 - frame_stack, 1, device=frames.device)
    index = (end.to(frames.device)[:, None] + offsets).clamp_(min=0)  # (B, S)
    if rows is None:
        rows = torch.arange(frames.shape[0], device=frames.device)
    return frames[rows[:, None], index].flatten(1, 2)


@dataclass
class Rollouts:
    """A batch of imagined rollouts in the storage layout of `ImaginedReplay` (all on one device)."""

    frames: torch.Tensor  # uint8 (B, L + H, 3, H, W): L real history frames, then H imagined
    actions: torch.Tensor  # float32 (B, H, A), actions[:, t] taken at observation t
    rewards: torch.Tensor  # float32 (B, H), predicted reward of transition t

    @property
    def horizon(self) -> int:
        return self.actions.shape[1]


@torch.no_grad()
def imagine(world_model: RolloutModel, policy: Policy, history: torch.Tensor, horizon: int, frame_stack: int,
            temperature: float = 1.0, top_k: int | None = 100,
            generator: torch.Generator | None = None) -> Rollouts:
    """Roll the world model out under the policy from real frames.

    Args:
        world_model: the model rolled out (`world_model.IVideoGPT`, or any `RolloutModel`).
        policy: frame stacks uint8 `(B, S*3, H, W)` -> actions `(B, A)`.
        history: real frames uint8 `(B, L, 3, H, W)` on the model's device, L >= T0; the last T0 are the
            model's context, all L feed the policy's first stacks.
        horizon: imagined steps (H).
        frame_stack: frames per policy observation (S, the env's `frame_stack`).
        temperature, top_k, generator: sampling of the world model's tokens.

    Returns:
        `Rollouts` with the L history frames followed by the H imagined ones.
    """
    t0 = world_model.context_frames
    if history.dim() != 5 or history.shape[1] < t0 or history.dtype != torch.uint8:
        raise ValueError(f"history must be uint8 (B, L >= {t0}, 3, H, W), got {history.dtype} "
                         f"{tuple(history.shape)}")
    batch, length = history.shape[:2]
    frames = torch.empty((batch, length + horizon, *history.shape[2:]), dtype=torch.uint8, device=history.device)
    frames[:, :length] = history
    world_model.reset(history[:, -t0:].float().div_(255.0), horizon=horizon, temperature=temperature,
                      top_k=top_k, generator=generator)
    actions, rewards = [], []
    newest = torch.full((batch,), length - 1, device=history.device)
    for t in range(horizon):
        action = policy(stack_frames(frames, newest + t, frame_stack)).float()
        frame, reward = world_model.step(action)
        if reward is None:
            raise ValueError("the world model has no reward head; MBPO needs one (build it with reward_head=True)")
        frames[:, length + t] = to_uint8(frame)
        actions.append(action)
        rewards.append(reward.float())
    return Rollouts(frames, torch.stack(actions, dim=1), torch.stack(rewards, dim=1))


class ImaginedReplay:
    """FIFO of imagined rollouts on a device; samples n-step transitions like the real replay.

    Args:
        capacity: transitions kept (rounded down to whole rollouts of `horizon` steps); the oldest rollouts
            are overwritten first.
        frame_shape: `(C, H, W)` of one frame.
        action_dim: action size.
        history: real frames stored before each rollout's imagined ones (L).
        horizon: imagined steps per rollout (H); must be >= `nstep`.
        frame_stack: frames per observation (S).
        nstep, discount: as for the real replay (n-step return `sum_k discount^k r_{t+k}`, bootstrap
            discount `discount^nstep`; imagined rollouts never terminate).
        device: where the storage lives (the world model's device).
        seed: seed of the sampler (a numpy generator, part of `state_dict`).
    """

    def __init__(self, capacity: int, frame_shape: tuple[int, int, int], action_dim: int, history: int,
                 horizon: int, frame_stack: int, nstep: int, discount: float,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        if horizon < nstep:
            raise ValueError(f"imagination horizon {horizon} is shorter than agent.nstep={nstep}: no imagined "
                             "transition would have a full n-step return; raise the horizon")
        if history < 1 or frame_stack < 1:
            raise ValueError(f"need history >= 1 and frame_stack >= 1, got {history}, {frame_stack}")
        self.max_rollouts = int(capacity) // horizon
        if self.max_rollouts < 1:
            raise ValueError(f"imagined replay capacity {capacity} holds no rollout of {horizon} steps; "
                             f"raise it to at least {horizon}")
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.action_dim, self.history, self.horizon = int(action_dim), int(history), int(horizon)
        self.frame_stack, self.nstep, self.discount = int(frame_stack), int(nstep), float(discount)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        # Uninitialised: only filled slots are ever read, and on a CPU the pages are then committed only as
        # rollouts arrive (the full capacity can be gigabytes).
        self._frames = torch.empty((self.max_rollouts, history + horizon, *self.frame_shape), dtype=torch.uint8,
                                   device=self.device)
        self._actions = torch.empty((self.max_rollouts, horizon, action_dim), device=self.device)
        self._rewards = torch.empty((self.max_rollouts, horizon), device=self.device)
        self._discount_powers = self.discount ** torch.arange(self.nstep, device=self.device, dtype=torch.float32)
        self.total_rollouts = 0  # rollouts ever added

    # ----------------------------------------------------------------------------------------- writing
    def add(self, rollouts: Rollouts) -> None:
        """Store a batch of rollouts (overwriting the oldest when full)."""
        frames, actions, rewards = rollouts.frames, rollouts.actions, rollouts.rewards
        expected = (self.history + self.horizon, *self.frame_shape)
        if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != expected:
            raise ValueError(f"rollout frames must be uint8 (B, {', '.join(map(str, expected))}), got "
                             f"{frames.dtype} {tuple(frames.shape)}")
        batch = frames.shape[0]
        if actions.shape != (batch, self.horizon, self.action_dim) or rewards.shape != (batch, self.horizon):
            raise ValueError(f"rollout actions/rewards must be ({batch}, {self.horizon}, {self.action_dim}) / "
                             f"({batch}, {self.horizon}), got {tuple(actions.shape)} / {tuple(rewards.shape)}")
        if batch > self.max_rollouts:  # only the newest ones would survive anyway
            frames, actions, rewards = frames[-self.max_rollouts:], actions[-self.max_rollouts:], \
                rewards[-self.max_rollouts:]
            self.total_rollouts += batch - self.max_rollouts
            batch = self.max_rollouts
        slots = (self.total_rollouts + torch.arange(batch, device=self.device)) % self.max_rollouts
        self._frames[slots] = frames.to(self.device)
        self._actions[slots] = actions.to(self.device, torch.float32)
        self._rewards[slots] = rewards.to(self.device, torch.float32)
        self.total_rollouts += batch

    # ----------------------------------------------------------------------------------------- reading
    @property
    def num_rollouts(self) -> int:
        """Rollouts currently stored."""
        return min(self.total_rollouts, self.max_rollouts)

    def __len__(self) -> int:
        """Stored transitions."""
        return self.num_rollouts * self.horizon

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._frames, self._actions, self._rewards))

    def sample(self, batch_size: int) -> TransitionBatch:
        """`batch_size` n-step transitions, uniform over stored rollouts and start steps, on the device."""
        if self.num_rollouts == 0:
            raise ValueError("the imagined replay is empty: generate rollouts before sampling from it")
        rollout = torch.from_numpy(self.rng.integers(0, self.num_rollouts, size=batch_size)).to(self.device)
        start = torch.from_numpy(self.rng.integers(0, self.horizon - self.nstep + 1, size=batch_size)).to(self.device)
        newest = start + self.history - 1
        steps = start[:, None] + torch.arange(self.nstep, device=self.device)  # (B, n)
        rewards = self._rewards[rollout[:, None], steps] @ self._discount_powers
        return TransitionBatch(
            obs=stack_frames(self._frames, newest, self.frame_stack, rollout),
            action=self._actions[rollout, start],
            reward=rewards[:, None],
            discount=torch.full((batch_size, 1), self.discount ** self.nstep, device=self.device),
            next_obs=stack_frames(self._frames, newest + self.nstep, self.frame_stack, rollout),
        )

    def latest(self, count: int) -> Rollouts:
        """The `count` most recently added rollouts (fewer if fewer are stored), oldest first."""
        count = min(count, self.num_rollouts)
        slots = (self.total_rollouts - count + torch.arange(count, device=self.device)) % self.max_rollouts
        return Rollouts(self._frames[slots], self._actions[slots], self._rewards[slots])

    # ------------------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Stored rollouts (filled slots only, copied to the CPU), counters and the sampler state."""
        filled = self.num_rollouts
        # clone: torch.save of a slice would write the whole preallocated storage
        return {
            "frames": self._frames[:filled].to("cpu", copy=True),
            "actions": self._actions[:filled].to("cpu", copy=True),
            "rewards": self._rewards[:filled].to("cpu", copy=True),
            "total_rollouts": self.total_rollouts,
            "shape": [self.max_rollouts, self.history, self.horizon, *self.frame_shape, self.action_dim],
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` output into a replay built with the same sizes."""
        shape = [self.max_rollouts, self.history, self.horizon, *self.frame_shape, self.action_dim]
        if list(state["shape"]) != shape:
            raise ValueError(f"imagined replay state does not fit: saved (rollouts, history, horizon, C, H, W, A) "
                             f"= {list(state['shape'])}, this replay {shape}")
        filled = state["frames"].shape[0]
        self._frames[:filled] = state["frames"].to(self.device)
        self._actions[:filled] = state["actions"].to(self.device)
        self._rewards[:filled] = state["rewards"].to(self.device)
        self.total_rollouts = int(state["total_rollouts"])
        self.rng.bit_generator.state = state["rng"]


def mix_batches(real: TransitionBatch, imagined: TransitionBatch, device: torch.device | str) -> TransitionBatch:
    """Concatenate a real and an imagined batch (real rows first) on `device`."""
    real, imagined = real.to(device, non_blocking=True), imagined.to(device)
    return TransitionBatch(
        obs=torch.cat([real.obs, imagined.obs]),
        action=torch.cat([real.action, imagined.action.to(real.action.dtype)]),
        reward=torch.cat([real.reward, imagined.reward.to(real.reward.dtype)]),
        discount=torch.cat([real.discount, imagined.discount.to(real.discount.dtype)]),
        next_obs=torch.cat([real.next_obs, imagined.next_obs]),
    )
