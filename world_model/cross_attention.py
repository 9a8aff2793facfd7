"""iVideoGPT's context cross-attention: future-frame features attend to the context frames' features.

Parameter names follow the official ``CrossAttentionBlock`` (an ``nn.MultiheadAttention`` plus norms and
position embeddings), so published tokenizer checkpoints load unchanged. Shapes: a context for
cross-attention is ``(B, T0, C, h, w)``, with ``N = B * K`` future feature maps ``(N, C, h, w)`` attending to
the same ``T0`` context frames.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.cpu import cpu_choices
from world_model.blocks import GroupNorm

CROSS_ATTENTION_HEADS = 4
# The official cross-attention uses dropout 0.1 (attention weights and residual). The official MBRL loop
# keeps the tokenizer in eval mode even while fine-tuning it, so this only acts if a caller calls train().
CROSS_ATTENTION_DROPOUT = 0.1


class PackedAttentionWeights(nn.Module):
    """The parameters of ``nn.MultiheadAttention`` (same names, same init), applied by ``CrossAttention``.

    Keeping the packed layout lets published checkpoints load unchanged while the projections of the
    context (keys and values) are computed once per context instead of once per future frame.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(3 * channels, channels))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * channels))
        self.out_proj = nn.Linear(channels, channels)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)


class CrossAttention(nn.Module):
    """Future-frame features attend to the features of all context frames at the same resolution.

    Matches iVideoGPT's ``CrossAttentionBlock``: queries and keys/values are GroupNorm-ed, get learned
    (zero-initialised) position embeddings, go through 4-head attention, and the output is
    ``SiLU(z + attention)`` (activation after the residual add). The context frames are normalised
    jointly (the official code stacks them along the height axis before the GroupNorm).
    """

    def __init__(self, channels: int, resolution: int, context_frames: int, groups: int) -> None:
        super().__init__()
        if channels % CROSS_ATTENTION_HEADS:
            raise ValueError(
                f"cross-attention width {channels} is not divisible by {CROSS_ATTENTION_HEADS} heads; "
                "use block_out_channels that are multiples of it"
            )
        self.att = PackedAttentionWeights(channels)
        self.kv_norm = GroupNorm(groups, channels)
        self.q_norm = GroupNorm(groups, channels)
        self.kv_pos_emb = nn.Parameter(torch.zeros(context_frames * resolution * resolution, channels))
        self.q_pos_emb = nn.Parameter(torch.zeros(resolution * resolution, channels))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, heads, L, C / heads)."""
        b, length, c = x.shape
        return x.view(b, length, CROSS_ATTENTION_HEADS, c // CROSS_ATTENTION_HEADS).transpose(1, 2)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project context features to attention keys and values.

        Args:
            context: ``(B, T0, C, h, w)`` features of the ``T0`` context frames.
        Returns:
            keys, values: each ``(B, heads, T0 * h * w, C / heads)``.
        """
        b, t0, c, h, w = context.shape
        if t0 * h * w != self.kv_pos_emb.shape[0]:
            raise ValueError(
                f"context of {t0} frames at {h}x{w} does not fit this cross-attention "
                f"({self.kv_pos_emb.shape[0]} key positions); check the tokenizer's context_length"
            )
        # Stack the frames along the height axis so GroupNorm statistics span all context frames.
        stacked = context.transpose(1, 2).reshape(b, c, t0 * h, w)
        kv = self.kv_norm(stacked).flatten(2).transpose(1, 2) + self.kv_pos_emb  # (B, T0*h*w, C)
        _, w_k, w_v = self.att.in_proj_weight.chunk(3)
        _, b_k, b_v = self.att.in_proj_bias.chunk(3)
        return self._heads(F.linear(kv, w_k, b_k)), self._heads(F.linear(kv, w_v, b_v))

    def forward(self, z: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Attend from ``z`` ``(B * K, C, h, w)`` to a context ``kv`` from ``context_kv`` with batch ``B``."""
        keys, values = kv
        n, c, h, w = z.shape
        b = keys.shape[0]
        if n % b:
            raise ValueError(f"{n} future feature maps cannot be split over {b} contexts")
        q = self.q_norm(z).flatten(2).transpose(1, 2) + self.q_pos_emb  # (B*K, hw, C)
        q = F.linear(q, self.att.in_proj_weight[:c], self.att.in_proj_bias[:c])
        # Every query attends independently, so the K future frames of one context are folded into the
        # query axis: the context keys/values are shared, never repeated per future frame.
        q = self._heads(q.reshape(b, (n // b) * h * w, c))
        if self.training:
            out = F.scaled_dot_product_attention(q, keys, values, dropout_p=CROSS_ATTENTION_DROPOUT)
        else:
            out = context_attention(q, keys, values)
        out = self.att.out_proj(out.transpose(1, 2).reshape(n, h * w, c))
        out = F.dropout(out, CROSS_ATTENTION_DROPOUT, self.training)
        return F.silu(z + out.transpose(1, 2).reshape(n, c, h, w))


def context_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention without dropout of queries ``(B, heads, L, d)`` to context keys/values ``(B, heads, S, d)``.

    bf16 on a CPU with bf16 instructions (inference only; ``core.cpu.cpu_choices().context_attention``): two
    bf16 matrix products around a softmax of the bf16 scores, faster there than SDPA for the decoder's short
    key sequences, with decoded frames as far from a float32 decode as SDPA's. The gain needs the intermediate
    tensors served from reused memory (``core.runtime.configure_malloc``); with glibc's default settings a
    whole decode is slower than with SDPA (measurements in ``docs/imagination.md``). Everywhere else (float32,
    where the flash kernel is faster; a CPU that emulates bf16 matrix products; CUDA) it is SDPA.
    """
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or torch.is_grad_enabled() \
            or cpu_choices().context_attention != "matmul":
        return F.scaled_dot_product_attention(q, keys, values)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, keys.transpose(-1, -2))
    return torch.matmul(scores.softmax(dim=-1), values)
