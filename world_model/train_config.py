"""The configuration of `python -m world_model.train` (configs/world_model_train.yaml), typed and checked.

`PartConfig` says when a part (tokenizer or transformer) updates and with which optimizer settings;
`WorldModelTrainConfig` is the whole resolved Hydra config, with its `auto` values resolved by properties
(pre-training vs fine-tuning learning rates, frozen codebooks, warm-up length) and `optim()` building the
trainer's `OptimConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import coerce_ints
from core.logger import WandbConfig
from core.runtime import check_malloc
from core.schedule import Cadence
from world_model.data.goal import GOAL_CONTEXT_FRAMES
from world_model.training import OptimConfig

PRETRAIN_TOKENIZER_LR, FINETUNE_TOKENIZER_LR = 5e-4, 1e-4  # the official tokenizer scripts
MAX_WARMUP_STEPS, WARMUP_FRACTION = 5000, 0.05  # the official transformer runs warm up for 5000 steps
_AUTO = "auto"


@dataclass
class PartConfig:
    """When one part (tokenizer or transformer) updates, and its own optimizer settings."""

    every: int = 1
    start: int = 0
    stop: int | None = None  # no updates from this iteration on (e.g. a tokenizer frozen for the rest); None: none
    lr: float | str = _AUTO
    # tokenizer only
    max_target_frames: int = 5
    freeze_codebooks: bool | str = _AUTO
    lpips_weights: str | None = None
    perceptual_weight: float = 1.0
    dropout: bool = True  # cross-attention dropout 0.1 in the updates (off: eval mode, as MBRL fine-tuning)
    codebook_window: int = 100  # updates over which codebook use is logged; unused that long: a dead code
    restart_dead_codes: bool | str = _AUTO  # dead codes set to latents of the batch; auto: from scratch only
    codebook_init: str = _AUTO  # uniform (as built) | data (codes set to first-batch latents); auto: data from scratch
    codebook_lr_scale: float = 1.0  # the codebooks' rate as a multiple of lr
    random_order: int = 0  # K > 0: K frames of each segment in random order (goal-conditioned fine-tuning)
    # transformer only
    warmup_steps: int | str = _AUTO
    weight_decay: float = 0.01

    @property
    def cadence(self) -> Cadence | None:
        """Iterations `start`, `start + every`, ... (a `core.schedule.Cadence` over iterations); None when
        `every` is 0: the part never updates."""
        return Cadence("update", self.start, self.every) if self.every > 0 else None

    def due(self, step: int) -> bool:
        """Whether the part updates at (0-based) iteration `step` (never from `stop` on)."""
        cadence = self.cadence
        return cadence is not None and (self.stop is None or step < self.stop) and cadence.runs(step, 1) > 0

    def updates_in(self, steps: int) -> int:
        """Updates during iterations 0 .. steps - 1."""
        cadence = self.cadence
        end = steps if self.stop is None else min(steps, self.stop)
        return 0 if cadence is None or end < 1 else cadence.total_runs(end - 1)


@dataclass
class WorldModelTrainConfig:
    """The resolved Hydra config, typed and checked (`from_dict`); `auto` values are resolved by properties."""

    data: str
    tokenizer: PartConfig
    transformer: PartConfig
    wandb: WandbConfig
    val_data: str | None = None
    image_key: str = "image"
    preset: str = "cpu"
    pretrained: str | None = None
    action_conditioned: bool | str = _AUTO
    reward_head: bool | str = _AUTO
    reward_alignment: str = "clean"
    attention_dropout: float | None = 0.1
    tokenizer_overrides: dict[str, Any] = field(default_factory=dict)
    transformer_overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 10_000
    batch_size: int = 16
    segment_length: int = 12
    context_frames: int | None = 2
    goal_conditioned: bool = False  # segments [o_T, o_1, ..., o_T]: the goal, then the first frame (T0 = 2)
    grad_accumulation: int = 1  # micro-batches per step (same step, a fraction of the activation memory)
    grad_clip: float = 1.0
    mixed_precision: bool = True
    eval_every: int = 1000
    eval_segments: int = 32
    eval_temperature: float = 1.0
    eval_top_k: int | None = 100
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 1
    device: str = "auto"
    num_threads: int | str = _AUTO
    malloc: str = "tuned"  # core.runtime.configure_malloc: tuned | system
    resume: bool | str = _AUTO
    out: str = "runs/world_model"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        coerce_ints(self, ("steps", "batch_size", "segment_length", "eval_every", "eval_segments",
                           "checkpoint_every", "log_every", "grad_accumulation"))
        for name, part in (("tokenizer", self.tokenizer), ("transformer", self.transformer)):
            coerce_ints(part, ("every", "start", "max_target_frames", "codebook_window", "random_order")
                        + (("stop",) if part.stop is not None else ()), prefix=f"{name}.")
            if part.every < 0 or part.start < 0:
                raise ValueError(f"{name}.every={part.every} and {name}.start={part.start} must be >= 0")
            if part.stop is not None and part.stop <= part.start:
                raise ValueError(f"{name}.stop={part.stop} must be after {name}.start={part.start} (null: no stop)")
        for name in ("steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 1 <= self.grad_accumulation <= self.batch_size:
            raise ValueError(f"grad_accumulation={self.grad_accumulation} must be in [1, batch_size="
                             f"{self.batch_size}]")
        order = self.tokenizer.random_order
        if order and not (self.context_frames or 0) < order <= self.segment_length:
            raise ValueError(f"tokenizer.random_order={order} must exceed context_frames={self.context_frames} "
                             f"and be at most segment_length={self.segment_length}; 0 turns it off")
        if self.goal_conditioned and (self.context_frames != GOAL_CONTEXT_FRAMES
                                      or True in (self.action_conditioned, self.reward_head)):
            raise ValueError(f"goal_conditioned=true trains on [goal, first frame, ...] with context_frames="
                             f"{GOAL_CONTEXT_FRAMES}, action- and reward-free; set context_frames="
                             f"{GOAL_CONTEXT_FRAMES} and leave action_conditioned and reward_head at auto or false")
        for name in ("batch_size", "log_every", "eval_segments"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.context_frames is not None and self.segment_length <= self.context_frames:
            raise ValueError(f"segment_length={self.segment_length} must exceed context_frames="
                             f"{self.context_frames}: the frames after the context are the prediction targets")
        check_malloc(self.malloc)
        for name in ("action_conditioned", "reward_head", "resume"):
            if getattr(self, name) not in (_AUTO, True, False):
                raise ValueError(f"{name}={getattr(self, name)!r} must be auto, true or false")
        if self.tokenizer.freeze_codebooks not in (_AUTO, True, False):
            raise ValueError(f"tokenizer.freeze_codebooks={self.tokenizer.freeze_codebooks!r} must be auto, true "
                             "or false")
        if self.tokenizer.restart_dead_codes not in (_AUTO, True, False):
            raise ValueError(f"tokenizer.restart_dead_codes={self.tokenizer.restart_dead_codes!r} must be auto, "
                             "true or false")
        if self.tokenizer.codebook_init not in (_AUTO, "uniform", "data"):
            raise ValueError(f"tokenizer.codebook_init={self.tokenizer.codebook_init!r} must be auto, uniform or "
                             "data")
        if self.transformer.warmup_steps != _AUTO:
            coerce_ints(self.transformer, ("warmup_steps",), prefix="transformer.")
        if self.tokenizer.every == 0 and self.transformer.every == 0:
            raise ValueError("tokenizer.every=0 and transformer.every=0: nothing would be trained")

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> WorldModelTrainConfig:
        """From the resolved Hydra config (`OmegaConf.to_container(cfg, resolve=True)`)."""
        cfg = dict(cfg)
        try:
            parts = {name: PartConfig(**cfg.pop(name)) for name in ("tokenizer", "transformer")}
            return cls(**parts, wandb=WandbConfig(**cfg.pop("wandb")), **cfg)
        except TypeError as err:  # an unknown or missing key
            raise ValueError(f"bad configuration: {err}") from None

    # ----------------------------------------------------------------------------- derived values
    @property
    def fine_tuning(self) -> bool:
        return self.pretrained is not None

    @property
    def tokenizer_lr(self) -> float:
        lr = self.tokenizer.lr
        if lr == _AUTO:
            return FINETUNE_TOKENIZER_LR if self.fine_tuning else PRETRAIN_TOKENIZER_LR
        return float(lr)

    @property
    def transformer_lr(self) -> float:
        return 1e-4 if self.transformer.lr == _AUTO else float(self.transformer.lr)

    @property
    def frozen_codebooks(self) -> bool:
        freeze = self.tokenizer.freeze_codebooks
        return self.fine_tuning if freeze == _AUTO else bool(freeze)

    @property
    def restart_dead_codes(self) -> bool:
        restart = self.tokenizer.restart_dead_codes
        return not self.fine_tuning if restart == _AUTO else bool(restart)

    @property
    def codebook_init(self) -> str:
        init = self.tokenizer.codebook_init
        return ("uniform" if self.fine_tuning else "data") if init == _AUTO else init

    @property
    def warmup_steps(self) -> int:
        if self.transformer.warmup_steps != _AUTO:
            return int(self.transformer.warmup_steps)
        return min(MAX_WARMUP_STEPS, int(WARMUP_FRACTION * self.transformer.updates_in(self.steps)))

    def optim(self) -> OptimConfig:
        """The trainer's optimizer settings, `auto` values resolved."""
        return OptimConfig(
            tokenizer_lr=self.tokenizer_lr, transformer_lr=self.transformer_lr,
            weight_decay=self.transformer.weight_decay, grad_clip=self.grad_clip,
            warmup_steps=self.warmup_steps, total_steps=max(self.transformer.updates_in(self.steps), 1),
            max_target_frames=self.tokenizer.max_target_frames, perceptual_weight=self.tokenizer.perceptual_weight,
            freeze_codebooks=self.frozen_codebooks, tokenizer_dropout=self.tokenizer.dropout,
            mixed_precision=self.mixed_precision, codebook_window=self.tokenizer.codebook_window,
            restart_dead_codes=self.restart_dead_codes, codebook_init=self.codebook_init,
            codebook_lr_scale=self.tokenizer.codebook_lr_scale)

    def plan(self, processes: int = 1) -> list[str]:
        """The global batch (over `processes` data-parallel processes) and each part's cadence and learning-rate
        schedule, as lines for the log's head."""
        segments = self.batch_size * processes
        split = [f"{processes} processes x {self.batch_size}"] if processes > 1 else []
        if self.grad_accumulation > 1:
            split.append(f"{self.grad_accumulation} micro-batches per process")
        batch = (f"global batch: {segments} segments" + (f" ({', '.join(split)})" if split else "")
                 + f" x {self.segment_length} frames = {segments * self.segment_length} frames per step, "
                 f"{self.steps} steps")
        lines = [batch]
        for name, part in (("tokenizer", self.tokenizer), ("transformer", self.transformer)):
            updates = part.updates_in(self.steps)
            if not updates:
                lines.append(f"{name}: no updates")
                continue
            if name == "tokenizer":
                schedule = f"constant lr {self.tokenizer_lr:g}"
                tok = self.tokenizer
                if tok.codebook_lr_scale != 1.0:
                    schedule += f" (codebooks x{tok.codebook_lr_scale:g})"
                remedies = [r for r, on in (("codebooks from data", self.codebook_init == "data"),
                                            ("dead codes restarted", self.restart_dead_codes)) if on]
                schedule += "".join(f", {r}" for r in remedies)
            else:
                schedule = (f"lr {self.transformer_lr:g} peak: linear warm-up over {self.warmup_steps} updates, "
                            f"cosine to 0 at update {max(updates, 1)}")
            until = "" if part.stop is None or part.stop >= self.steps else f" until step {part.stop}"
            lines.append(f"{name}: {updates} updates (every {part.every} steps from step {part.start}{until}), "
                         f"{schedule}")
        return lines


def resolve_auto(setting: bool | str, available: bool, what: str, key: str, folder: str) -> bool:
    """Resolve an `auto | true | false` setting against what the data has (one line when it cannot be met)."""
    if setting == _AUTO:
        return available
    if setting and not available:
        raise ValueError(f"{key}=true but the episodes under {folder} have no {what}; pass {key}=false")
    return bool(setting)
