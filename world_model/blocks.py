"""Convolutional building blocks of the compressive tokenizer (a conditional VQGAN).

The layer structure, parameter names and numerics follow the diffusers VQModel encoder/decoder that the
official iVideoGPT tokenizer is built on (``DownEncoderBlock2D``, ``UpDecoderBlock2D``, ``ResnetBlock2D``,
``UNetMidBlock2D``). Written from scratch so that the published ``tokenizer/`` state dicts load key for key.
iVideoGPT's context cross-attention is ``world_model.cross_attention``; the encoders and decoders built from
these blocks are ``world_model.encoder_decoder``.

Shapes: images and feature maps are ``(N, C, H, W)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.cpu import cpu_choices

# diffusers builds every ResnetBlock2D / mid-block GroupNorm with eps 1e-6; the cross-attention norms are
# plain GroupNorm (eps 1e-5). Both matter for reproducing published checkpoints.
RESNET_EPS = 1e-6
# PyTorch's CPU group norm has a slow kernel for channels-last bf16 maps of at most this many positions
# (16x16); see ``GroupNorm``.
SLOW_CHANNELS_LAST_NORM_POSITIONS = 256


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state-dict keys) that steps around a slow CPU kernel.

    On CPU, group norm of a channels-last bf16 map of at most 16x16 positions runs several times slower than
    on the same map in channels-first layout, even counting both layout copies (float32 and larger maps have
    no such gap; measurements in ``docs/imagination.md``). Those maps are normalised in channels-first layout
    and handed back channels-last, so the convolutions around them keep their layout, where
    ``core.cpu.cpu_choices().groupnorm_detour`` says so for the CPU. Compiled code is left alone: inductor
    writes its own norm kernels.
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
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and cpu_choices().groupnorm_detour)


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
    2x2 output block instead of 36, and the upsampled map is never written, so it runs faster in inference
    and training alike (``experiments/bench_upsample.py`` times both forms; results in ``docs/imagination.md``).
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
