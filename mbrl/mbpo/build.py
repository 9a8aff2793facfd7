"""The world model MBPO trains: its config translated into one `world_model.training.build_model` call, and
a one-line description of what was built."""
from __future__ import annotations

from typing import Any

import torch

from mbrl.mbpo.config import PRESET_AUTO, MBPOConfig
from world_model.model import IVideoGPT
from world_model.transformer import num_parameters


def resolve_preset(preset: str, device: torch.device) -> tuple[str, str]:
    """The preset to build and why (`auto`: paper64 on CUDA, cpu otherwise)."""
    if preset != PRESET_AUTO:
        return preset, "world_model.preset; profile=cpu and profile=paper set it"
    if device.type == "cuda":
        return "paper64", "auto: CUDA device"
    return "cpu", "auto: no CUDA device; the paper's 250M-parameter model is impractical on a CPU"


def model_arguments(cfg: MBPOConfig, action_dim: int, device: torch.device,
                    image_size: int | None = None) -> tuple[dict[str, Any], str]:
    """The `build_model` arguments of an action-conditioned model with a reward head, and where it comes from.

    Args:
        image_size: side of the env's frames: a fresh tokenizer is built for it (token counts follow); a
            checkpoint keeps its own (the caller checks it against the env's and names the fix). None: the
            preset's (64).

    Returns:
        keyword arguments of `world_model.training.build_model`, and its origin in words.
    """
    common = {"action_dim": action_dim, "reward_head": True, "reward_alignment": cfg.reward_alignment,
              "imagination": cfg.imagination}
    if cfg.pretrained is not None:
        return ({"pretrained": cfg.pretrained, "attention_dropout": cfg.attention_dropout, **common},
                f"fine-tuned from {cfg.pretrained}")
    preset, why = resolve_preset(cfg.preset, device)
    size = f", {image_size}x{image_size} frames" if image_size is not None else ""
    return {"preset": preset, "image_size": image_size, **common}, f"preset {preset} ({why}{size}), from scratch"


def describe(model: IVideoGPT, origin: str, action_dim: int) -> str:
    """`origin` with the model's size; checks that it takes the env's actions."""
    if model.action_dim != action_dim:
        raise ValueError(f"the world model takes {model.action_dim}-d actions but the env has {action_dim}")
    params = num_parameters(model.tokenizer) + num_parameters(model.transformer)
    return f"{origin}, {params / 1e6:.1f}M parameters"
