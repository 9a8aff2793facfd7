"""The `world_model=ivideogpt` settings (configs/world_model/ivideogpt.yaml), typed and checked, and the
settings of the loop MBPO runs in."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from core.config import coerce_ints
from world_model.imagination_config import ImaginationConfig
from world_model.training import OptimConfig

PRESET_AUTO = "auto"


@dataclass
class ScheduleConfig:
    """MBPO cadences in env frames (the paper's schedule by default). `seed_frames: auto` = the agent's random
    exploration (its exploration steps x action repeat, 4,000 frames at the paper's settings)."""

    seed_frames: int | str = "auto"
    init_train_steps: int = 1000
    transformer_every_frames: int = 10
    tokenizer_every_frames: int = 40
    imagination_start_frames: int = 4000
    init_rollout_batches: int = 20
    rollout_every_frames: int = 200
    validate_every_episodes: int = 5

    def __post_init__(self) -> None:
        names = [f.name for f in fields(self) if f.name != "seed_frames"]
        coerce_ints(self, tuple(names), prefix="world_model.schedule.")
        if self.seed_frames != "auto":
            coerce_ints(self, ("seed_frames",), prefix="world_model.schedule.")
        for name in names + ([] if self.seed_frames == "auto" else ["seed_frames"]):
            if getattr(self, name) < 0:
                raise ValueError(f"world_model.schedule.{name}={getattr(self, name)} must be >= 0")


@dataclass
class RolloutConfig:
    """Imagined rollouts: `batch_size` rollouts of `horizon` steps per firing; token sampling settings."""

    batch_size: int = 32
    horizon: int = 10
    temperature: float = 1.0
    top_k: int | None = 100

    def __post_init__(self) -> None:
        coerce_ints(self, ("batch_size", "horizon"), prefix="world_model.rollout.")
        if self.batch_size < 1 or self.horizon < 1:
            raise ValueError(f"world_model.rollout.batch_size={self.batch_size} and horizon={self.horizon} "
                             "must be >= 1")


@dataclass
class ValidationConfig:
    """Open-loop validation on the newest real episodes (the ones the world model has trained on least)."""

    batch_size: int = 8
    episodes: int = 2
    video_segments: int = 2
    video_rollouts: int = 4

    def __post_init__(self) -> None:
        coerce_ints(self, tuple(f.name for f in fields(self)), prefix="world_model.validation.")
        if self.batch_size < 1 or self.episodes < 1:
            raise ValueError("world_model.validation.batch_size and episodes must be >= 1")


@dataclass
class MBPOConfig:
    """`world_model=ivideogpt` (configs/world_model/ivideogpt.yaml)."""

    preset: str = PRESET_AUTO
    pretrained: str | None = None
    reward_alignment: str = "clean"
    attention_dropout: float = 0.1
    perceptual_weights: str | None = None
    freeze_codebooks: bool | str = "auto"
    real_ratio: float = 0.5
    imagined_capacity: int = 500_000
    segment_batch_size: int = 16
    segment_length: int = 12
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    imagination: ImaginationConfig = field(default_factory=ImaginationConfig)

    def __post_init__(self) -> None:
        coerce_ints(self, ("imagined_capacity", "segment_batch_size", "segment_length"), prefix="world_model.")
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ValueError(f"world_model.real_ratio={self.real_ratio} must be in [0, 1]")
        if self.reward_alignment not in ("clean", "official"):
            raise ValueError(f"world_model.reward_alignment={self.reward_alignment!r} must be clean or official")
        if self.freeze_codebooks not in ("auto", True, False):
            raise ValueError(f"world_model.freeze_codebooks={self.freeze_codebooks!r} must be auto, true or false")
        if self.segment_batch_size < 1:
            raise ValueError(f"world_model.segment_batch_size={self.segment_batch_size} must be >= 1")
        if self.pretrained is not None and not Path(self.pretrained).is_dir():
            raise ValueError(f"world_model.pretrained={self.pretrained} is not a folder; point it at a checkpoint "
                             "in the published layout (tokenizer/ and transformer/), or null to train from scratch")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> MBPOConfig:
        """From the resolved `world_model` node (its `name` key removed)."""
        cfg = dict(cfg)
        nested = {"schedule": ScheduleConfig, "rollout": RolloutConfig, "validation": ValidationConfig,
                  "imagination": ImaginationConfig}
        try:
            for key, kind in nested.items():
                try:
                    cfg[key] = kind(**cfg.get(key, {}))
                except ValueError as err:  # the engine's config names itself, not the CLI key
                    raise ValueError(str(err).replace("ImaginationConfig.", "world_model.imagination.")) from None
            optim = dict(cfg.pop("optim", {}))
            if "freeze_codebooks" in optim:
                raise ValueError("set world_model.freeze_codebooks (auto, true or false), not "
                                 "world_model.optim.freeze_codebooks")
            return cls(**cfg, optim=OptimConfig(**optim))
        except TypeError as err:  # an unknown or missing key
            raise ValueError(f"bad world_model configuration: {err}") from None

    @property
    def frozen_codebooks(self) -> bool:
        """`freeze_codebooks` resolved: `auto` freezes them when fine-tuning a published checkpoint."""
        return self.pretrained is not None if self.freeze_codebooks == "auto" else bool(self.freeze_codebooks)


@dataclass(frozen=True)
class LoopSettings:
    """The training loop MBPO runs in.

    Attributes:
        frame_stack: frames per agent observation (imagined stacks are rebuilt the same way).
        action_repeat: env frames per agent step (MBPO's cadences count env frames).
        episode_length: agent steps per episode.
        nstep, discount: the agent's n-step return settings, used for imagined transitions too.
        seed: run seed (the world model's own generators derive from it).
        device: where the world model, its rollouts and the imagined replay live.
        run_dir: the run folder (videos go to `run_dir/videos`).
    """

    frame_stack: int
    action_repeat: int
    episode_length: int
    nstep: int
    discount: float
    seed: int
    device: torch.device
    run_dir: Path
