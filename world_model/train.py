"""Entry point: `python -m world_model.train data=DIR [val_data=DIR] [preset=cpu] [pretrained=PATH] [steps=N] ...`

Pre-trains (from a preset) or fine-tunes (from a checkpoint folder) the iVideoGPT tokenizer and transformer on
folders of episode `.npz` files (configs/world_model_train.yaml, docs/world_model.md). Every step draws one batch
of segments; the tokenizer and the transformer each update on it when their cadence is due (separate
optimizers, `world_model.training.WorldModelTrainer`). Held-out episodes are scored open loop: frames imagined
under the real actions vs the real ones and vs copying the last context frame.

Run folder (`out=`): `checkpoint/` (the published layout, loadable by `IVideoGPT.from_pretrained`, plus
`training_state.pt` for resuming), `train.csv`, `eval.csv`, `config.yaml`, `git.txt`, `wandb/`. The CSV and W&B
x-axis `frame` counts video frames trained on (steps x batch_size x segment_length); `step` is there too.
"""
from __future__ import annotations

import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from core.batch import SegmentBatch
from core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, should_resume
from core.config import coerce_ints
from core.logger import Logger, WandbConfig, resume_checked, save_run_info
from core.runtime import (
    Timer,
    check_malloc,
    configure_malloc,
    configure_threads,
    derive_seed,
    pick_device,
    set_seed,
)
from world_model.data.dataset import EpisodeDataset
from world_model.lpips import build_perceptual
from world_model.model import IVideoGPT
from world_model.training import OptimConfig, WorldModelTrainer, build_model
from world_model.transformer import num_parameters

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "training_state.pt"
STATE_VERSION = 1
PRETRAIN_TOKENIZER_LR, FINETUNE_TOKENIZER_LR = 5e-4, 1e-4  # the official tokenizer scripts
MAX_WARMUP_STEPS, WARMUP_FRACTION = 5000, 0.05  # the official transformer runs warm up for 5000 steps
# Independent seed streams (core.runtime.derive_seed).
_DATA, _EVAL_SEGMENTS, _EVAL_SAMPLING = range(3)
_AUTO = "auto"


@dataclass
class PartConfig:
    """When one part (tokenizer or transformer) updates, and its own optimizer settings."""

    every: int = 1
    start: int = 0
    lr: float | str = _AUTO
    # tokenizer only
    max_target_frames: int = 5
    freeze_codebooks: bool | str = _AUTO
    lpips_weights: str | None = None
    perceptual_weight: float = 1.0
    dropout: bool = True  # cross-attention dropout 0.1 in the updates (off: eval mode, as MBRL fine-tuning)
    # transformer only
    warmup_steps: int | str = _AUTO
    weight_decay: float = 0.01

    def due(self, step: int) -> bool:
        """Whether the part updates at (0-based) iteration `step`."""
        return self.every > 0 and step >= self.start and (step - self.start) % self.every == 0

    def updates_in(self, steps: int) -> int:
        """Updates during iterations 0 .. steps - 1."""
        return 0 if self.every == 0 or steps <= self.start else (steps - self.start - 1) // self.every + 1


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
                           "checkpoint_every", "log_every"))
        for name, part in (("tokenizer", self.tokenizer), ("transformer", self.transformer)):
            coerce_ints(part, ("every", "start", "max_target_frames"), prefix=f"{name}.")
            if part.every < 0 or part.start < 0:
                raise ValueError(f"{name}.every={part.every} and {name}.start={part.start} must be >= 0")
        for name in ("steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
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
    def warmup_steps(self) -> int:
        if self.transformer.warmup_steps != _AUTO:
            return int(self.transformer.warmup_steps)
        return min(MAX_WARMUP_STEPS, int(WARMUP_FRACTION * self.transformer.updates_in(self.steps)))

    def optim(self) -> OptimConfig:
        return OptimConfig(
            tokenizer_lr=self.tokenizer_lr, transformer_lr=self.transformer_lr,
            weight_decay=self.transformer.weight_decay, grad_clip=self.grad_clip,
            warmup_steps=self.warmup_steps, total_steps=max(self.transformer.updates_in(self.steps), 1),
            max_target_frames=self.tokenizer.max_target_frames, perceptual_weight=self.tokenizer.perceptual_weight,
            freeze_codebooks=self.frozen_codebooks, tokenizer_dropout=self.tokenizer.dropout,
            mixed_precision=self.mixed_precision)


def _wants(setting: bool | str, available: bool, what: str, key: str, folder: str) -> bool:
    """Resolve an `auto | true | false` setting against what the data has (one line when it cannot be met)."""
    if setting == _AUTO:
        return available
    if setting and not available:
        raise ValueError(f"{key}=true but the episodes under {folder} have no {what}; pass {key}=false")
    return bool(setting)


class WorldModelRun:
    """Builds data, model, trainer and logger from a config, then trains, evaluates and checkpoints (resumable).

    Args:
        cfg: the checked config.
        run_dir: the run folder.
        config_record: the resolved config, stored with the W&B run.
    """

    def __init__(self, cfg: WorldModelTrainConfig, run_dir: str | Path,
                 config_record: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / CHECKPOINT_DIR
        resume = self._should_resume()
        configure_threads(cfg.num_threads)
        configure_malloc(cfg.malloc)
        set_seed(cfg.seed)
        self.device = pick_device(cfg.device)

        self.data = EpisodeDataset(cfg.data, cfg.segment_length, cfg.image_key, seed=derive_seed(cfg.seed, _DATA))
        has_rewards = self.data.sample(1, np.random.default_rng(0)).rewards is not None
        action_dim = self.data.action_dim if _wants(cfg.action_conditioned, self.data.has_actions, "actions",
                                                    "action_conditioned", cfg.data) else None
        reward_head = _wants(cfg.reward_head, has_rewards, "rewards", "reward_head", cfg.data)
        _, height, width = self.data.frame_shape
        if height != width:
            raise ValueError(f"frames under {cfg.data} are {height}x{width}; the tokenizer needs square frames")

        source = self.checkpoint_dir if resume else cfg.pretrained
        self.model: IVideoGPT = build_model(
            cfg.preset, source, action_dim=action_dim, reward_head=reward_head, image_size=height,
            context_frames=cfg.context_frames, attention_dropout=cfg.attention_dropout,
            reward_alignment=cfg.reward_alignment,
            tokenizer_overrides=None if resume else cfg.tokenizer_overrides,
            transformer_overrides=None if resume else cfg.transformer_overrides,
        ).to(self.device)
        if self.model.action_dim is not None and self.model.action_dim != self.data.action_dim:
            raise ValueError(f"the model takes {self.model.action_dim}-d actions but the data has "
                             f"{self.data.action_dim}-d ones ({cfg.data})")
        dropout_on = [name for name, on in (
            ("attention_dropout=0.0", cfg.transformer.every and self.model.transformer.config.attention_dropout > 0),
            ("tokenizer.dropout=false", cfg.tokenizer.every and cfg.tokenizer.dropout)) if on]
        if self.device.type == "cpu" and dropout_on:
            tqdm.write("attention dropout is on: CPU attention has no fused dropout, which makes a training step "
                       f"2-4x slower here; {' '.join(dropout_on)} turns it off")
        perceptual = None
        if cfg.tokenizer.every and cfg.tokenizer.lpips_weights is None:
            tqdm.write("LPIPS term of the tokenizer loss is off: set tokenizer.lpips_weights to a folder with the "
                       "VGG16 and LPIPS weights (the paper trains with it)")
        elif cfg.tokenizer.every:
            perceptual = build_perceptual(cfg.tokenizer.lpips_weights)  # warns once when the files are missing
        self.trainer = WorldModelTrainer(self.model, cfg.optim(), perceptual)
        self.eval_batch = self._eval_segments()

        self.step = 0
        self._elapsed_before = 0.0
        if resume:
            resume_checked(self.run_dir, config_record or {}, self._load)
        self.timer = Timer()
        self.logger = Logger(self.run_dir, cfg.wandb, config_record, console=False,
                             resume_frame=self.frame if resume else None)

    @property
    def frame(self) -> int:
        """Video frames trained on so far: the x-axis of the logs."""
        return self.step * self.cfg.batch_size * self.cfg.segment_length

    def _should_resume(self) -> bool:
        previous = self.run_dir / f".{CHECKPOINT_DIR}.old"
        if not self.checkpoint_dir.exists() and (previous / STATE_FILE).is_file():
            previous.rename(self.checkpoint_dir)  # a save was cut off between its two renames
        return should_resume(self.checkpoint_dir / STATE_FILE, self.cfg.resume, str(self.run_dir),
                             where="out=<old run folder>")

    def _eval_segments(self) -> SegmentBatch | None:
        """The held-out segments every validation scores (drawn once, with their own seed)."""
        if self.cfg.val_data is None:
            return None
        val = EpisodeDataset(self.cfg.val_data, self.cfg.segment_length, self.cfg.image_key)
        if val.frame_shape != self.data.frame_shape:
            raise ValueError(f"validation frames {val.frame_shape} differ from training frames "
                             f"{self.data.frame_shape}")
        rng = np.random.default_rng(derive_seed(self.cfg.seed, _EVAL_SEGMENTS))
        return val.sample(self.cfg.eval_segments, rng).to(self.device)

    def describe(self) -> str:
        """One line: where the model comes from, its size, what it is trained on."""
        model, cfg = self.model, self.cfg
        origin = f"fine-tuning {cfg.pretrained}" if cfg.fine_tuning else f"preset {cfg.preset} from scratch"
        if self.step:
            origin = f"{origin}, resumed at step {self.step}"
        frozen = ", codebooks frozen" if cfg.frozen_codebooks else ""
        return (f"world model ({origin}{frozen}): tokenizer {num_parameters(model.tokenizer) / 1e6:.1f}M, transformer "
                f"{num_parameters(model.transformer) / 1e6:.1f}M parameters, action_dim={model.action_dim}, "
                f"reward head={model.has_reward_head}; {len(self.data)} episodes, "
                f"{'no validation' if self.eval_batch is None else f'{cfg.eval_segments} held-out segments'}; "
                f"{self.device}")

    # ------------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        """Runs to `steps` iterations, validating and checkpointing on the way and at the end."""
        cfg = self.cfg
        tqdm.write(self.describe())
        bar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps), unit="step", dynamic_ncols=True,
                   disable=None if cfg.progress_bar else True, mininterval=1.0)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        last_eval = saved = None
        while self.step < cfg.steps:
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.evaluate()
                last_eval = self.step
            batch = self.data.sample(cfg.batch_size).to(self.device, non_blocking=True)
            metrics: dict[str, float] = {}
            if cfg.tokenizer.due(self.step):
                metrics.update(self.trainer.update_tokenizer(batch))
            if cfg.transformer.due(self.step):
                metrics.update(self.trainer.update_transformer(batch))
            for key, value in metrics.items():
                sums[key] += value
                counts[key] += 1
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                row = {key: sums[key] / counts[key] for key in sums}
                self._log_train(row)
                bar.set_postfix({k.split("/")[1]: f"{v:.4g}" for k, v in row.items()
                                 if k in ("tokenizer/recon_l1", "transformer/ce")}, refresh=False)
                sums.clear()
                counts.clear()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
                saved = self.step
        bar.close()
        if saved != self.step:
            self.save()
        if last_eval != self.step:
            self.evaluate()
        self.logger.close()

    def _log_train(self, row: dict[str, float]) -> None:
        self.logger.log("train", {
            "step": self.step,
            "tokenizer_updates": self.trainer.tokenizer_updates,
            "transformer_updates": self.trainer.transformer_updates,
            **row,
            "total_time": self._elapsed_before + self.timer.total(),
        }, self.frame)

    def evaluate(self) -> dict[str, float]:
        """Open-loop scores on the held-out segments (same segments and sampling noise every time)."""
        if self.eval_batch is None:
            return {}
        generator = torch.Generator(self.device).manual_seed(derive_seed(self.cfg.seed, _EVAL_SAMPLING))
        scores = self.trainer.evaluate(self.eval_batch, self.cfg.eval_temperature, self.cfg.eval_top_k,
                                       generator).scores
        self.logger.log("eval", {"step": self.step, **{f"eval/{k}": v for k, v in scores.items()},
                                 "total_time": self._elapsed_before + self.timer.total()}, self.frame)
        reward = f" | reward MSE {scores['reward_mse']:.4g}" if "reward_mse" in scores else ""
        tqdm.write(f"| eval | step {self.step} | imagined MSE {scores['mse']:.5f} (PSNR {scores['psnr']:.2f}) | "
                   f"copy-last MSE {scores['copy_last_mse']:.5f} (PSNR {scores['copy_last_psnr']:.2f}) | "
                   f"tokenizer recon MSE {scores['recon_mse']:.5f} | CE {scores['ce']:.4f}{reward}")
        return scores

    # ------------------------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        """Weights (published layout) and training state into `checkpoint/`, replaced as a whole: the folder is
        written beside it and renamed into place, so a crash leaves the previous checkpoint intact."""
        tmp = self.run_dir / f".{CHECKPOINT_DIR}.tmp"
        old = self.run_dir / f".{CHECKPOINT_DIR}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        save_checkpoint(tmp / STATE_FILE, {
            "version": STATE_VERSION,
            "step": self.step,
            "elapsed": self._elapsed_before + self.timer.total(),
            "trainer": self.trainer.state_dict(),
            "data_rng": self.data.rng.bit_generator.state,
            "rng": rng_state(),
        })
        shutil.rmtree(old, ignore_errors=True)
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        shutil.rmtree(old, ignore_errors=True)

    def _load(self) -> None:
        state = load_checkpoint(self.checkpoint_dir / STATE_FILE, map_location=self.device)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.checkpoint_dir / STATE_FILE} has version {state.get('version')}, this code "
                             f"reads version {STATE_VERSION}")
        self.trainer.load_state_dict(state["trainer"])
        self.data.rng.bit_generator.state = state["data_rng"]
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self._elapsed_before = float(state["elapsed"])
        tqdm.write(f"resumed from {self.checkpoint_dir} at step {self.step}")


@hydra.main(config_path="../configs", config_name="world_model_train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = OmegaConf.to_container(cfg, resolve=True)
    try:
        run = WorldModelRun(WorldModelTrainConfig.from_dict(record), run_dir, record)
    except (ValueError, FileNotFoundError) as err:  # a bad setting or path: one line that names it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    save_run_info(run_dir, OmegaConf.to_yaml(cfg, resolve=True), REPO_ROOT)
    run.train()


if __name__ == "__main__":
    main()
