"""Sampling the dynamics codes, and the reward head's squashing.

The sampler is a fixed sequence of tensor ops on pre-drawn noise (no host sync, no ``multinomial``), so the
rollout engine can compile it and capture it in a CUDA graph, and two code paths that consume the same noise
sample the same codes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from world_model.layout import TokenLayout
    from world_model.transformer import WorldModelTransformer


def symlog(x: torch.Tensor) -> torch.Tensor:
    """The reward head's target space (DreamerV3's squashing)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`: the reward head's output back in reward units."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def noise_width(num_codes: int, top_k: int | None) -> int:
    """Exponential draws per sampled token: one per candidate (the top k, or every code)."""
    return num_codes if top_k is None else min(top_k, num_codes)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Exp(1) noise for :func:`sample_codes`, from ``generator`` (on ``device``) or the default one."""
    return torch.empty(shape, device=device, dtype=torch.float32).exponential_(1.0, generator=generator)


def sample_codes(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float,
                 top_k: int | None) -> torch.Tensor:
    """Draw one index per row from softmax(logits / temperature) restricted to the top k, given the noise.

    ``argmax(p_i / E_i)`` with ``E_i ~ Exp(1)`` is an exact draw from ``p`` (the exponential race, i.e. the
    Gumbel-max trick in log space), so sampling is a fixed sequence of tensor ops: no host sync, no
    ``multinomial``, and two code paths that consume the same noise sample the same index.

    Args:
        logits: (B, V).
        noise: (B, noise_width(V, top_k)) Exp(1) draws (see :func:`draw_noise`); ignored when greedy.
        temperature: softmax temperature; <= 0 picks the arg-max.
        top_k: keep the k largest logits (None: all).

    Returns:
        (B,) int64 indices into the last axis of ``logits``.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if noise is None:
        raise ValueError("sampling with temperature > 0 needs noise; draw it with draw_noise()")
    scaled = logits.float() / temperature
    if top_k is None or top_k >= logits.shape[-1]:
        return (scaled - noise.log()).argmax(dim=-1)
    values, indices = scaled.topk(top_k, dim=-1)
    pick = (values - noise.log()).argmax(dim=-1, keepdim=True)
    return indices.gather(-1, pick).squeeze(-1)


def sample_top_k(logits: torch.Tensor, temperature: float, top_k: int | None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`sample_codes` with fresh noise from ``generator``: (B, V) logits -> (B,) int64 indices."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    width = noise_width(logits.shape[-1], top_k)
    return sample_codes(logits, draw_noise((logits.shape[0], width), generator, logits.device), temperature, top_k)


def dynamics_logits(transformer: WorldModelTransformer, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Next-token logits over the dynamics codes only: (B, H) -> (B, D). Skips the LM head's other rows."""
    weight = transformer.llm.lm_head.weight[layout.dynamics_offset:layout.scf_id]
    return F.linear(hidden, weight.to(hidden.dtype))
