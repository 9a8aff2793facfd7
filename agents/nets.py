"""Networks of DrQ-v2: random-shift augmentation, conv encoder, actor, double-Q critic."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal


def shift_images(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """Translates each image by `shifts - pad` pixels, repeating the border pixels (replicate padding).

    Args:
        x: images `(B, C, H, W)`, any dtype (uint8 from the replay is cheapest).
        shifts: integer offsets `(B, 2)` in [0, 2 * pad] as (x, y), i.e. the crop corner in the padded image.
    Returns:
        `(B, C, H, W)`, same dtype: `out[b, :, i, j] = x[b, :, clamp(i + dy - pad), clamp(j + dx - pad)]`.
    """
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device) + shifts[:, 1:2] - pad).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=x.device) + shifts[:, 0:1] - pad).clamp_(0, w - 1)  # (B, W)
    # One gather over the flattened image: clamped indices are exactly replicate padding.
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(x.reshape(b, c, h * w), 2, index).view(b, c, h, w)


class RandomShift(nn.Module):
    """DrQ-v2's augmentation: a random translation by up to `pad` pixels per axis, replicate padding.

    The reference pads by replication and bilinearly samples (`grid_sample`) a window whose sampling points
    fall on pixel centres, i.e. an integer crop of the padded image; this computes that crop directly (an
    index gather: far cheaper than interpolation on a CPU, and it works on uint8). tests/agents/test_drqv2.py
    checks it against the grid_sample formulation.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W), each image shifted independently."""
        if self.pad == 0:
            return x
        shifts = torch.randint(0, 2 * self.pad + 1, (x.shape[0], 2), device=x.device)
        return shift_images(x, shifts, self.pad)


def orthogonal_init(module: nn.Module) -> None:
    """Orthogonal weights (ReLU gain for convs), zero biases: DrQ-v2's initialisation."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.orthogonal_(module.weight, nn.init.calculate_gain("relu"))
        nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """Conv stack: a stride-2 conv then `num_layers - 1` stride-1 convs, 3x3 kernels, ReLU.

    `repr_dim` (the flattened output size) is measured by a dummy forward, so any image size works.
    """

    def __init__(self, obs_shape: tuple[int, int, int], num_filters: int = 32, num_layers: int = 4) -> None:
        super().__init__()
        channels = obs_shape[0]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Conv2d(channels, num_filters, 3, stride=2 if i == 0 else 1), nn.ReLU(inplace=True)]
            channels = num_filters
        self.convnet = nn.Sequential(*layers)
        with torch.no_grad():
            self.repr_dim = int(self.convnet(torch.zeros(1, *obs_shape)).numel())
        self.apply(orthogonal_init)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, S*3, H, W) uint8 (or float in [0, 255]) -> (B, repr_dim).

        The memory format of `obs` is kept (channels-last input -> channels-last convolutions).
        """
        h = self.convnet(torch.mul(obs, 1.0 / 255.0).sub_(0.5))
        # Flatten in (H, W, C) order: a free view of a channels-last output, so the backward pass stays in
        # one memory format (mixing formats makes the ReLU backward many times slower on a CPU).
        return h.permute(0, 2, 3, 1).flatten(1)


def _trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class TruncatedNormal(Normal):
    """Normal whose samples are clamped into (low, high) with a straight-through gradient."""

    def __init__(
        self, loc: torch.Tensor, scale: torch.Tensor, low: float = -1.0, high: float = 1.0, eps: float = 1e-6
    ) -> None:
        super().__init__(loc, scale, validate_args=False)
        self.low, self.high, self.eps = low, high, eps

    def sample(self, clip: float | None = None, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """A reparameterised sample; the noise is clipped to +-`clip` before it is added to the mean."""
        noise = torch.randn(
            self._extended_shape(torch.Size(sample_shape)), dtype=self.loc.dtype, device=self.loc.device
        )
        noise = noise * self.scale
        if clip is not None:
            noise = noise.clamp(-clip, clip)
        x = self.loc + noise
        clamped = x.clamp(self.low + self.eps, self.high - self.eps)
        return x - x.detach() + clamped.detach()


class Actor(nn.Module):
    """Features -> trunk (Linear, LayerNorm, Tanh) -> MLP -> tanh mean of a truncated normal."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = _trunk(repr_dim, feature_dim)
        self.policy = _mlp(feature_dim, hidden_dim, action_dim)
        self.apply(orthogonal_init)

    def forward(self, features: torch.Tensor, std: float) -> TruncatedNormal:
        """(B, repr_dim) -> a distribution over (B, A) actions in (-1, 1)."""
        mu = torch.tanh(self.policy(self.trunk(features)))
        return TruncatedNormal(mu, torch.full_like(mu, std))


class Critic(nn.Module):
    """Double Q: a shared trunk, then two independent MLP heads on [features, action]."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = _trunk(repr_dim, feature_dim)
        self.q1 = _mlp(feature_dim + action_dim, hidden_dim, 1)
        self.q2 = _mlp(feature_dim + action_dim, hidden_dim, 1)
        self.apply(orthogonal_init)

    def forward(self, features: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, repr_dim), (B, A) -> two (B, 1) Q estimates."""
        h = torch.cat([self.trunk(features), action], dim=-1)
        return self.q1(h), self.q2(h)
