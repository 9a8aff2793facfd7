"""The encoders and decoders of the compressive tokenizer (diffusers' VAE ``Encoder`` / ``Decoder``).

A plain encoder maps an image to a latent map and a plain decoder maps it back; their conditional
counterparts also cross-attend (``world_model.cross_attention``) to the context frames' feature maps at the
stages whose resolution is at most ``max_att_resolution``. See ``world_model.tokenizer`` for how the four are
wired. Shapes: images and feature maps are ``(N, C, H, W)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from world_model.blocks import (
    RESNET_EPS,
    DownEncoderBlock,
    Downsample,
    GroupNorm,
    MidBlock,
    UpDecoderBlock,
    Upsample,
)
from world_model.cross_attention import CrossAttention


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
