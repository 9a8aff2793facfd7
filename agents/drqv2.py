"""DrQ-v2 (Yarats et al., 2021): DDPG-style actor-critic on pixels with random-shift augmentation.

Defaults are the settings of the iVideoGPT Meta-World runs (its code's mbrl/cfgs and mbrl/drqv2.py): Adam
lr 1e-4 with weight decay 1e-6, feature dim 50, hidden 1024, tau 0.01, 3-step returns, discount 0.99, batch
256, two updates per env step, 2,000 uniformly random exploration steps, std linear(1.0, 0.1, 100k steps),
clip 0.3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import save_file

from agents.nets import Actor, Critic, Encoder, RandomShift
from core.config import coerce_ints
from core.precision import PRECISIONS, autocast_to, resolve_precision
from core.schedule import Schedule


class TransitionLike(Protocol):
    """What `DrQV2Agent.update` reads (mbrl.replay.TransitionBatch satisfies it)."""

    obs: torch.Tensor  # (B, S*3, H, W) uint8
    action: torch.Tensor  # (B, A)
    reward: torch.Tensor  # (B, 1) n-step discounted return
    discount: torch.Tensor  # (B, 1) gamma^n
    next_obs: torch.Tensor  # (B, S*3, H, W) uint8


@dataclass
class DrQV2Config:
    """Hyper-parameters of DrQ-v2 and of how the training loop feeds it (batch, n-step, update ratio)."""

    lr: float = 1e-4
    weight_decay: float = 1e-6
    feature_dim: int = 50
    hidden_dim: int = 1024
    num_filters: int = 32
    num_conv_layers: int = 4
    critic_target_tau: float = 0.01
    num_expl_steps: int = 2000
    std_schedule: str = "linear(1.0,0.1,100000)"
    std_clip: float = 0.3
    aug_pad: int = 4
    batch_size: int = 256
    nstep: int = 3
    discount: float = 0.99
    updates_per_step: float = 2.0
    channels_last: bool = True
    # dtype of the encoder's convolutions (autocast); its features and everything after them stay float32
    encoder_precision: str = "float32"

    def __post_init__(self) -> None:
        sizes = ("feature_dim", "hidden_dim", "num_filters", "num_conv_layers", "batch_size", "nstep")
        coerce_ints(self, (*sizes, "num_expl_steps", "aug_pad"), prefix="agent.")
        for name in ("lr", *sizes):
            if getattr(self, name) <= 0:
                raise ValueError(f"agent.{name}={getattr(self, name)} must be > 0")
        for name in ("weight_decay", "num_expl_steps", "std_clip", "aug_pad", "updates_per_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"agent.{name}={getattr(self, name)} must be >= 0")
        if not 0 < self.critic_target_tau <= 1:
            raise ValueError(f"agent.critic_target_tau={self.critic_target_tau} must be in (0, 1]")
        if not 0 <= self.discount <= 1:
            raise ValueError(f"agent.discount={self.discount} must be in [0, 1]")
        Schedule(self.std_schedule)  # fails early with a readable message
        if self.encoder_precision not in PRECISIONS:
            raise ValueError(f"agent.encoder_precision={self.encoder_precision!r} must be auto (bfloat16 where the "
                             "hardware has bf16 arithmetic), float32 or bfloat16")


class DrQV2Agent:
    """DrQ-v2 agent: `act` for one observation, `update` for one batch, `state_dict` for checkpoints."""

    def __init__(
        self,
        obs_shape: tuple[int, int, int],
        action_dim: int,
        cfg: DrQV2Config,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.std = Schedule(cfg.std_schedule)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.encoder_dtype = resolve_precision(cfg.encoder_precision, self.device)

        self.encoder = Encoder(obs_shape, cfg.num_filters, cfg.num_conv_layers)
        repr_dim = self.encoder.repr_dim
        self.actor = Actor(repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.critic = Critic(repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.critic_target = Critic(repr_dim, action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.encoder.to(self.device, memory_format=self.memory_format)
        for net in (self.actor, self.critic, self.critic_target):
            net.to(self.device)

        # Fused Adam is the fastest implementation on both CPU and GPU (fewer passes over the parameters).
        def adam(module: torch.nn.Module) -> torch.optim.Adam:
            return torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

        self.encoder_opt, self.actor_opt, self.critic_opt = (
            adam(self.encoder),
            adam(self.actor),
            adam(self.critic),
        )
        self.aug = RandomShift(cfg.aug_pad)
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.critic_target.parameters())
        self._actor_params = list(self.actor.parameters())

    def _images(self, obs: torch.Tensor, augment: bool) -> torch.Tensor:
        """(B, C, H, W) uint8 on any device -> encoder input on the agent's device, in its memory format.

        Images stay uint8 until the encoder: shifting and re-laying out bytes is 4x cheaper than floats.
        """
        obs = obs.to(self.device, non_blocking=True)
        if augment:
            obs = self.aug(obs)
        return obs.contiguous(memory_format=self.memory_format)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder features (B, repr_dim) in float32 of `_images` output; the convolutions run under autocast
        when `encoder_precision` is bfloat16 (the critic's Q values would lose too much in bf16)."""
        with autocast_to(self.device, self.encoder_dtype):
            features = self.encoder(images)
        return features.float()

    @torch.no_grad()
    def act(self, obs: np.ndarray, step: int, eval_mode: bool) -> np.ndarray:
        """One observation `(S*3, H, W)` uint8 -> an action `(A,)` float32 in [-1, 1] (see `act_batch`)."""
        action = self.act_batch(torch.as_tensor(obs).unsqueeze(0), step, eval_mode)
        return action[0].cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def act_batch(self, obs: torch.Tensor, step: int, eval_mode: bool) -> torch.Tensor:
        """Observations `(B, S*3, H, W)` uint8 on any device -> actions `(B, A)` in [-1, 1] on the agent's device
        (imagined rollouts act on whole batches).

        Evaluation returns the mean action; training samples it, uniformly at random during the first
        `num_expl_steps` agent steps.
        """
        dist = self.actor(self._encode(self._images(obs, augment=False)), self.std(step))
        if eval_mode:
            return dist.mean
        action = dist.sample()
        if step < self.cfg.num_expl_steps:
            action.uniform_(-1.0, 1.0)
        return action

    def update(self, batch: TransitionLike, step: int) -> dict[str, float]:
        """One critic (+ encoder) step, one actor step and a soft target update on `batch`.

        Returns scalar metrics (losses, Q values, the batch reward, the exploration std).
        """
        obs = self._images(batch.obs, augment=True)
        next_obs = self._images(batch.next_obs, augment=True)
        action = batch.action.to(self.device).float()
        reward = batch.reward.to(self.device).float()
        discount = batch.discount.to(self.device).float()
        std = self.std(step)

        features = self._encode(obs)
        with torch.no_grad():
            next_features = self._encode(next_obs)
        metrics = self._update_critic(features, action, reward, discount, next_features, std)
        metrics.update(self._update_actor(features.detach(), std))
        torch._foreach_lerp_(self._target_params, self._critic_params, self.cfg.critic_target_tau)
        metrics["batch_reward"] = reward.mean()
        # One host transfer for all metrics instead of one sync per value.
        names = list(metrics)
        values = torch.stack([metrics[k].detach().float() for k in names]).tolist()
        return {**dict(zip(names, values)), "std": std}

    def _update_critic(
        self,
        features: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        discount: torch.Tensor,
        next_features: torch.Tensor,
        std: float,
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            next_action = self.actor(next_features, std).sample(clip=self.cfg.std_clip)
            target_q1, target_q2 = self.critic_target(next_features, next_action)
            target_q = reward + discount * torch.min(target_q1, target_q2)
        q1, q2 = self.critic(features, action)
        critic_loss = (q1 - target_q).square().mean() + (q2 - target_q).square().mean()

        self.encoder_opt.zero_grad(set_to_none=True)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.encoder_opt.step()
        return {
            "critic_loss": critic_loss,
            "critic_q1": q1.mean(),
            "critic_q2": q2.mean(),
            "critic_target_q": target_q.mean(),
        }

    def _update_actor(self, features: torch.Tensor, std: float) -> dict[str, torch.Tensor]:
        dist = self.actor(features, std)
        action = dist.sample(clip=self.cfg.std_clip)
        q1, q2 = self.critic(features, action)
        actor_loss = -torch.min(q1, q2).mean()

        self.actor_opt.zero_grad(set_to_none=True)
        # Only the actor's gradients are needed: skip the critic's weight gradients.
        actor_loss.backward(inputs=self._actor_params)
        self.actor_opt.step()
        with torch.no_grad():
            log_prob = dist.log_prob(action).sum(-1).mean()
            entropy = dist.entropy().sum(-1).mean()
        return {"actor_loss": actor_loss, "actor_logprob": log_prob, "actor_ent": entropy}

    def state_dict(self) -> dict[str, Any]:
        """Networks, target network and optimizer states (tensors and python numbers only)."""
        return {
            "config": asdict(self.cfg),
            **{name: getattr(self, name).state_dict() for name in self._STATE},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()` output; networks must have the same shapes."""
        for name in self._STATE:
            getattr(self, name).load_state_dict(state[name])

    def save_weights(self, path: str | Path) -> None:
        """Exports the networks (no optimizer state) as safetensors, keys `<net>.<parameter>`."""
        tensors = {
            f"{name}.{key}": value.detach().contiguous().cpu()
            for name in self._NETWORKS
            for key, value in getattr(self, name).state_dict().items()
        }
        save_file(tensors, str(path))

    _NETWORKS = ("encoder", "actor", "critic", "critic_target")
    _STATE = _NETWORKS + ("encoder_opt", "actor_opt", "critic_opt")
