"""Convolutional building blocks of the compressive tokenizer (a conditional VQGAN).

The layer structure, parameter names and numerics follow the diffusers VQModel encoder/decoder that the
official iVideoGPT tokenizer is built on (``DownEncoderBlock2D``, ``UpDecoderBlock2D``, ``ResnetBlock2D``,
``UNetMidBlock2D``) plus iVideoGPT's context cross-attention. Written from scratch so that the published
``tokenizer/`` state dicts load key for key; see ``world_model.tokenizer`` for how they are wired.

Shapes: images and feature maps are ``(N, C, H, W)``; a context for cross-attention is
``(B, T0, C, h, w)`` with ``N = B * K`` future frames attending to the same ``T0`` context frames.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# diffusers builds every ResnetBlock2D / mid-block GroupNorm with eps 1e-6; the cross-attention norms are
# plain GroupNorm (eps 1e-5). Both matter for reproducing published checkpoints.
RESNET_EPS = 1e-6
CROSS_ATTENTION_HEADS = 4
# The official cross-attention uses dropout 0.1 (attention weights and residual). The official MBRL loop
# keeps the tokenizer in eval mode even while fine-tuning it, so this only acts if a caller calls train().
CROSS_ATTENTION_DROPOUT = 0.1
# PyTorch's CPU group norm has a slow kernel for channels-last bf16 maps of at most this many positions
# (16x16); see ``GroupNorm``.
SLOW_CHANNELS_LAST_NORM_POSITIONS = 256


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict keys) that steps around a slow CPU kernel.

    On CPU, group norm of a channels-last bf16 map of at most 16x16 positions runs 4-10x slower than on the
    same map in channels-first layout (development CPU, 2 threads: 32 x 128 x 16 x 16 took 3.2 ms against
    0.7 ms with both layout copies; float32 and larger maps showed no such gap). Those maps are normalised in
    channels-first layout and handed back channels-last, so the convolutions around them keep their layout.
    Compiled code is left alone: inductor writes its own norm kernels.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _slow_norm_layout(x):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def _slow_norm_layout(x: torch.Tensor) -> bool:
    """Whether ``x`` ``(N, C, H, W)`` would take the CPU's slow channels-last group-norm path."""
    return (not torch.compiler.is_compiling()  # inductor generates its own norm kernels
            and x.device.type == "cpu" and x.dim() == 4 and x.dtype == torch.bfloat16
            and x.shape[2] * x.shape[3] <= SLOW_CHANNELS_LAST_NORM_POSITIONS
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1-projected when widths differ) skip connection."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=RESNET_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(groups, out_channels, eps=RESNET_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv with diffusers' asymmetric (right/bottom) zero padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv, computed as one stride-2 transposed conv.

    The two are the same linear map. Along each axis an output pixel of ``conv3x3(upsample(x))`` sees two
    input pixels: output ``2i`` gets ``w0 * x[i-1] + (w1 + w2) * x[i]`` and output ``2i+1`` gets
    ``(w0 + w1) * x[i] + w2 * x[i+1]`` (zero outside, as the conv's zero padding). That is a transposed conv
    (stride 2, padding 1) with the 4-tap kernel ``[w2, w1 + w2, w0 + w1, w0]`` along each axis: 16 taps per
    2x2 output block instead of 36, and the upsampled map is never written. On the development CPU (2
    threads, cpu preset) each of the decoder's two upsamplers ran 1.5-1.9x faster this way for 8 frames in
    bf16 (about 2.4 -> 1.4 ms) and 1.8-2.9x faster for 32 frames in float32 (``experiments/bench_upsample.py``).
    The parameters (``conv.weight``, ``conv.bias``) are the published layer's; the 4-tap kernel is derived from
    them on each call with plain additions, so it follows training and stays in the weights' precision.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, upsampling_kernel(self.conv.weight), self.conv.bias, stride=2, padding=1)


def upsampling_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv's weight ``(C_out, C_in, 3, 3)`` -> the ``conv_transpose2d`` weight ``(C_in, C_out, 4, 4)``
    that applies it to a nearest-neighbour x2 upsampled input (see ``Upsample``)."""

    def taps(w: torch.Tensor, dim: int) -> torch.Tensor:
        w0, w1, w2 = w.unbind(dim)
        return torch.stack([w2, w1 + w2, w0 + w1, w0], dim=dim)

    return taps(taps(weight, 2), 3).transpose(0, 1)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all positions of a feature map (diffusers' VAE mid-block attention)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = GroupNorm(groups, channels, eps=RESNET_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        out = self.to_out[0](out)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class MidBlock(nn.Module):
    """Resnet, (optional) self-attention, resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, add_attention: bool) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([SpatialSelfAttention(channels, groups)] if add_attention else [])
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class _ResnetStage(nn.Module):
    """``num_layers`` resnet blocks, then an optional resampling layer registered under ``resample_attr``."""

    resample_attr: str

    def __init__(
        self, in_channels: int, out_channels: int, num_layers: int, groups: int, resample: nn.Module | None
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)]
        )
        setattr(self, self.resample_attr, nn.ModuleList([] if resample is None else [resample]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (*self.resnets, *getattr(self, self.resample_attr)):
            x = layer(x)
        return x


class DownEncoderBlock(_ResnetStage):
    resample_attr = "downsamplers"


class UpDecoderBlock(_ResnetStage):
    resample_attr = "upsamplers"


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

    bf16 on a CPU (inference only): two bf16 matrix products around a softmax of the bf16 scores. On the
    development CPU the cpu preset's cross-attention of 8 frames (256 queries, 512 keys, 4 heads of 32) took
    2.3-2.6 ms this way against SDPA's 3.8-4.7 ms, and decoding those 8 frames 25.4-25.7 against 28.3-28.4 ms;
    the decoded frames were as far from a float32 decode as SDPA's. Inside a whole decode it needs the
    intermediate tensors served from reused memory (``core.runtime.configure_malloc``): with glibc's default
    settings the decode was 2 ms slower than with SDPA. Everywhere else (float32, where the flash kernel was
    faster, and CUDA) it is SDPA.
    """
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or torch.is_grad_enabled():
        return F.scaled_dot_product_attention(q, keys, values)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, keys.transpose(-1, -2))
    return torch.matmul(scores.softmax(dim=-1), values)


def _check_groups(channels: Sequence[int], groups: int) -> None:
    bad = [c for c in channels if c % groups]
    if bad:
        raise ValueError(f"block_out_channels {list(channels)} must be multiples of norm_num_groups={groups}")


class _Trunk(nn.Module):
    """Shared forward of the encoder and decoder: ``conv_in``, a sequence of *stages* (each may be
    followed by cross-attention to context features of the same stage), a tail, then norm-SiLU-``conv_out``.
    """

    conv_in: nn.Conv2d
    conv_norm_out: GroupNorm
    conv_out: nn.Conv2d
    cross_att_blocks: nn.ModuleList
    attention_stages: list[int]

    def _stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def features(self, x: torch.Tensor, stages: Sequence[int]) -> list[torch.Tensor]:
        """Feature maps after the given stages, running only as far as the deepest one needed."""
        out: list[torch.Tensor] = []
        x = self.conv_in(x)
        for i, block in enumerate(self._stages()[: max(stages) + 1]):
            x = block(x)
            if i in stages:
                out.append(x)
        return out

    def forward(
        self,
        x: torch.Tensor,
        context_kv: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
        feature_stages: Sequence[int] = (),
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Map ``x`` ``(N, C_in, H, W)`` to the output ``(N, C_out, H', W')``.

        Args:
            context_kv: one ``(keys, values)`` per cross-attention block (``CrossAttention.context_kv``);
                empty for a plain encoder/decoder.
            feature_stages: stages whose feature maps are also returned (in stage order), to condition a
                conditional counterpart on.
        """
        if len(context_kv) != len(self.cross_att_blocks):
            raise ValueError(f"expected {len(self.cross_att_blocks)} context key/values, got {len(context_kv)}")
        attention = dict(zip(self.attention_stages, zip(self.cross_att_blocks, context_kv)))
        features: list[torch.Tensor] = []
        x = self.conv_in(x)
        for i, block in enumerate(self._stages()):
            x = block(x)
            if i in feature_stages:
                features.append(x)
            if i in attention:
                module, kv = attention[i]
                x = module(x, kv)
        x = self._tail(x)
        return self.conv_out(F.silu(self.conv_norm_out(x))), features


class Encoder(_Trunk):
    """Image -> latent map (diffusers' VAE ``Encoder``); the conditional encoder also cross-attends.

    Stage i is "after down block i"; the mid block follows the last stage. A conditional encoder
    attends at every stage whose resolution is at most ``max_att_resolution``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        groups: int,
        mid_attention: bool,
        resolution: int,
        max_att_resolution: int | None = None,
        context_frames: int = 0,
    ) -> None:
        super().__init__()
        _check_groups(block_out_channels, groups)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        previous = block_out_channels[0]
        for i, channels in enumerate(block_out_channels):
            last = i == len(block_out_channels) - 1
            self.down_blocks.append(
                DownEncoderBlock(previous, channels, layers_per_block, groups, None if last else Downsample(channels))
            )
            previous = channels
        self.mid_block = MidBlock(block_out_channels[-1], groups, mid_attention)
        self.conv_norm_out = GroupNorm(groups, block_out_channels[-1], eps=RESNET_EPS)
        self.conv_out = nn.Conv2d(block_out_channels[-1], out_channels, 3, padding=1)
        self.cross_att_blocks = nn.ModuleList()
        self.attention_stages = []
        for i, channels in enumerate(block_out_channels):
            if i < len(block_out_channels) - 1:
                resolution //= 2
            if max_att_resolution is not None and resolution <= max_att_resolution:
                self.cross_att_blocks.append(CrossAttention(channels, resolution, context_frames, groups))
                self.attention_stages.append(i)

    def _stages(self) -> list[nn.Module]:
        return list(self.down_blocks)

    def _tail(self, x: torch.Tensor) -> torch.Tensor:
        return self.mid_block(x)


class Decoder(_Trunk):
    """Latent map -> image (diffusers' VAE ``Decoder``); the conditional decoder also cross-attends.

    Stage 0 is "after the mid block", stage i + 1 is "after up block i". A conditional decoder always
    attends at stage 0 (as the official one does) and at every later stage up to ``max_att_resolution``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        groups: int,
        mid_attention: bool,
        resolution: int,
        max_att_resolution: int | None = None,
        context_frames: int = 0,
    ) -> None:
        super().__init__()
        _check_groups(block_out_channels, groups)
        widths = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.up_blocks = nn.ModuleList()
        previous = widths[0]
        for i, channels in enumerate(widths):
            last = i == len(widths) - 1
            self.up_blocks.append(
                UpDecoderBlock(previous, channels, layers_per_block + 1, groups, None if last else Upsample(channels))
            )
            previous = channels
        self.mid_block = MidBlock(widths[0], groups, mid_attention)
        self.conv_norm_out = GroupNorm(groups, block_out_channels[0], eps=RESNET_EPS)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.cross_att_blocks = nn.ModuleList()
        self.attention_stages = []
        if max_att_resolution is not None:
            self.cross_att_blocks.append(CrossAttention(widths[0], resolution, context_frames, groups))
            self.attention_stages.append(0)
            for i, channels in enumerate(widths):
                if i < len(widths) - 1:
                    resolution *= 2
                if resolution <= max_att_resolution:
                    self.cross_att_blocks.append(CrossAttention(channels, resolution, context_frames, groups))
                    self.attention_stages.append(i + 1)

    def _stages(self) -> list[nn.Module]:
        return [self.mid_block, *self.up_blocks]
