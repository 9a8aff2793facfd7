"""The one way to build a world model to train: fresh from a named preset, or loaded from a published
checkpoint folder (``tokenizer/`` + ``transformer/``) to fine-tune."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from world_model.imagination_config import ImaginationConfig
from world_model.layout import RewardAlignment
from world_model.model import IVideoGPT, base_layout
from world_model.presets import get_preset
from world_model.tokenizer import CompressiveTokenizer
from world_model.tokenizer_config import TokenizerConfig
from world_model.transformer import WorldModelTransformer


def build_model(preset: str = "cpu", pretrained: str | os.PathLike | None = None, *, action_dim: int | None = None,
                reward_head: bool = False, image_size: int | None = None, context_frames: int | None = None,
                attention_dropout: float | None = None, reward_alignment: RewardAlignment = "clean",
                tokenizer_overrides: Mapping[str, Any] | None = None,
                transformer_overrides: Mapping[str, Any] | None = None,
                imagination: ImaginationConfig | None = None) -> IVideoGPT:
    """A world model to train: fresh from a named preset, or loaded from a checkpoint folder to fine-tune.

    Args:
        preset: size of a fresh model (``world_model.presets.PRESETS``); ignored with ``pretrained``.
        pretrained: checkpoint folder in the published layout (``tokenizer/``, ``transformer/``).
        action_dim: action size for an action-conditioned model (a checkpoint without an action map gets a
            fresh zero-initialised one), None for action-free.
        reward_head: add a reward head (a fresh one when the checkpoint has none).
        image_size: side of the training frames. A fresh tokenizer is built for it (its cross-attention
            resolution scaled with its latent map); a checkpoint must match it.
        context_frames: T0. A fresh tokenizer is built for it; a checkpoint's can only be shortened (the last
            frames' key position embeddings are kept, as the official code does). None: the preset's /
            checkpoint's.
        attention_dropout: transformer attention dropout (the paper trains with 0.1); None keeps the preset's
            / checkpoint's value.
        reward_alignment: ``clean`` or ``official`` (see ``IVideoGPT``).
        tokenizer_overrides / transformer_overrides: ``TokenizerConfig`` / ``TransformerConfig`` fields to
            change in a fresh model (e.g. a smaller test model); block types follow ``block_out_channels``.
        imagination: the rollout engine's knobs (default ``ImaginationConfig()``).

    Returns:
        the model on the CPU, in eval mode.
    """
    if pretrained is not None:
        if tokenizer_overrides or transformer_overrides:
            raise ValueError("tokenizer/transformer overrides change the architecture of a fresh model; they do "
                             "not apply to a pretrained checkpoint (drop them or the pretrained path)")
        model = IVideoGPT.from_pretrained(pretrained, action_dim=action_dim, reward_head=reward_head or None,
                                          attention_dropout=attention_dropout, reward_alignment=reward_alignment,
                                          imagination=imagination)
        tokenizer = model.tokenizer
        if image_size is not None and image_size != tokenizer.config.resolution:
            raise ValueError(f"the checkpoint's tokenizer takes {tokenizer.config.resolution}x"
                             f"{tokenizer.config.resolution} frames but the data has {image_size}x{image_size}; "
                             "record the data at the checkpoint's size")
        if context_frames is not None and context_frames != model.context_frames:
            tokenizer.set_context_length(context_frames)
            model = IVideoGPT(tokenizer, model.transformer, reward_alignment=reward_alignment,
                              imagination=imagination).eval()
        return model
    spec = get_preset(preset)
    base = TokenizerConfig.preset(spec.tokenizer)
    overrides = dict(tokenizer_overrides or {})
    if image_size is not None:
        overrides.setdefault("resolution", image_size)
    if context_frames is not None:
        overrides.setdefault("context_length", context_frames)
    if "block_out_channels" in overrides:
        depth = len(overrides["block_out_channels"])
        overrides.setdefault("down_block_types", (base.down_block_types[0],) * depth)
        overrides.setdefault("up_block_types", (base.up_block_types[0],) * depth)
    tok_cfg = _replace_checked(base, {k: v for k, v in overrides.items() if k != "max_att_resolution"}, "tokenizer")
    # cross-attention reaches the same share of the latent map at any frame size and depth (16 of 16 at 64x64)
    scaled = max(base.max_att_resolution * tok_cfg.latent_size // base.latent_size, 1)
    tok_cfg = replace(tok_cfg, max_att_resolution=overrides.get("max_att_resolution", scaled))
    tf_cfg = spec.transformer_config(base_layout(tok_cfg).vocab_size)
    tf_overrides = dict(transformer_overrides or {})
    if attention_dropout is not None:
        tf_overrides.setdefault("attention_dropout", attention_dropout)
    tf_cfg = _replace_checked(tf_cfg, tf_overrides, "transformer")
    transformer = WorldModelTransformer(tf_cfg, action_dim=action_dim, reward_head=reward_head)
    return IVideoGPT(CompressiveTokenizer(tok_cfg), transformer, reward_alignment=reward_alignment,
                     imagination=imagination).eval()


def _replace_checked(config: Any, overrides: Mapping[str, Any], what: str) -> Any:
    known = {f.name for f in fields(config)} - {"extra", "vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; choose from {sorted(known)}")
    return replace(config, **overrides) if overrides else config
