"""Entry point: `python -m world_model.train data=DIR [val_data=DIR] [preset=cpu] [pretrained=PATH] [steps=N] ...`

Pre-trains (from a preset) or fine-tunes (from a checkpoint folder) the iVideoGPT tokenizer and transformer on
folders of episode `.npz` files (configs/world_model_train.yaml, docs/world_model.md). Every step draws one batch
of segments; the tokenizer and the transformer each update on it when their cadence is due (separate
optimizers, `world_model.training.WorldModelTrainer`); every "is it due" question (part updates, validation,
checkpoints, log rows) is a `core.schedule` predicate of the step counter, so a resumed run fires where the
uninterrupted one would have. Held-out episodes are scored open loop: frames imagined under the real actions
vs the real ones and vs copying the last context frame.

Run folder (`out=`): `checkpoint/` (the published layout, loadable by `IVideoGPT.from_pretrained`, plus
`training_state.pt` for resuming), `train.csv`, `eval.csv`, `config.yaml`, `git.txt`, `wandb/`. The CSV and W&B
x-axis `frame` counts video frames trained on (steps x batch_size x segment_length); `step` is there too. Each
train row carries the training throughput since the previous row (`throughput/segments_per_s`,
`throughput/frames_per_s`: world-model samples per second, validation and checkpoints left out) and both
codebooks' health (`tokenizer/{context,dynamics}_{codes_used,perplexity,dead_codes}`, `world_model.codebook`);
the first lines of the output give the global batch and each part's learning-rate schedule.

`data=` is a folder of episodes (read into memory) or a mixture `.yaml` (`configs/mixtures/`, read lazily).
`goal_conditioned=true` trains a goal-conditioned model (`world_model.data.goal`: `[o_T, o_1, ..., o_T]`, T0 = 2,
action-free); `tokenizer.random_order=K` trains the tokenizer on K frames of each segment in random order.

Data parallel under `torchrun --nproc_per_node=N -m world_model.train out=DIR ...` (`world_model.distributed`):
each process samples `batch_size` segments from its own seed stream, gradients are averaged over processes
(the global batch is `batch_size x N`), rank 0 alone logs and writes checkpoints, validation is sharded and
gathered. `grad_accumulation=K` runs each batch as K micro-batches. A run resumes under the same or another
process count (the log says how the global batch changes).
"""
from __future__ import annotations

import shutil
import sys
import time
from collections import defaultdict
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
from core.cpu import report_lines as cpu_report_lines
from core.logger import Logger, resume_checked, save_run_info
from core.runtime import Timer, configure_malloc, configure_threads, derive_seed, pick_device, set_seed
from core.schedule import Every
from world_model.build import build_model
from world_model.data.goal import goal_first, random_order
from world_model.data.mixture import load_data
from world_model.distributed import Distributed
from world_model.evaluation import weighted_means
from world_model.lpips import build_perceptual
from world_model.model import IVideoGPT
from world_model.train_config import PartConfig, WorldModelTrainConfig, resolve_auto
from world_model.training import WorldModelTrainer
from world_model.transformer import num_parameters

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "training_state.pt"
STATE_VERSION = 1
# Independent seed streams (core.runtime.derive_seed).
_DATA, _EVAL_SEGMENTS, _EVAL_SAMPLING, _RESEED = range(4)


class WorldModelRun:
    """Builds data, model, trainer and logger from a config, then trains, evaluates and checkpoints (resumable).

    Args:
        cfg: the checked config.
        run_dir: the run folder.
        config_record: the resolved config, stored with the W&B run.
    """

    def __init__(self, cfg: WorldModelTrainConfig, run_dir: str | Path,
                 config_record: dict[str, Any] | None = None, distributed: Distributed | None = None) -> None:
        self.cfg = cfg
        self.dist = distributed or Distributed()
        self.say = tqdm.write if self.dist.is_main else _silent  # one voice: rank 0's
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / CHECKPOINT_DIR
        resume = self._should_resume()
        configure_threads(cfg.num_threads)
        configure_malloc(cfg.malloc)
        set_seed(cfg.seed)
        self.device = self.dist.device(pick_device(cfg.device))

        self.data = load_data(cfg.data, cfg.segment_length, cfg.image_key,
                              seed=self.dist.rank_seed(derive_seed(cfg.seed, _DATA)))
        for note in getattr(self.data, "notes", []):
            self.say(note)
        has_rewards = self.data.sample(1, np.random.default_rng(0)).rewards is not None
        goal = cfg.goal_conditioned  # action- and reward-free by construction
        action_dim = self.data.action_dim if not goal and resolve_auto(
            cfg.action_conditioned, self.data.has_actions, "actions", "action_conditioned", cfg.data) else None
        reward_head = not goal and resolve_auto(cfg.reward_head, has_rewards, "rewards", "reward_head", cfg.data)
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
            self.say("attention dropout is on: CPU attention has no fused dropout, which makes a training step "
                       f"several times slower; {' '.join(dropout_on)} turns it off")
        perceptual = None
        if cfg.tokenizer.every and cfg.tokenizer.lpips_weights is None:
            self.say("LPIPS term of the tokenizer loss is off: set tokenizer.lpips_weights to a folder with the "
                       "VGG16 and LPIPS weights (the paper trains with it)")
        elif cfg.tokenizer.every:
            perceptual = build_perceptual(cfg.tokenizer.lpips_weights)  # warns once when the files are missing
        self.trainer = WorldModelTrainer(self.model, cfg.optim(), perceptual, self.dist, cfg.grad_accumulation)
        if self.dist.enabled:  # each rank its own dropout and frame-subset draws
            torch.manual_seed(self.dist.rank_seed(cfg.seed))
        self.eval_batch = self._eval_segments()

        self.step = 0
        self._elapsed_before = 0.0
        if resume:
            resume_checked(self.run_dir, config_record or {}, self._load, self.say)
        self.timer = Timer()
        self.logger: Logger | _NoLogger = _NoLogger()
        if self.dist.is_main:
            self.logger = Logger(self.run_dir, cfg.wandb, config_record, console=False,
                                 resume_frame=self.frame if resume else None)

    @property
    def global_batch(self) -> int:
        """Segments per step over all processes."""
        return self.cfg.batch_size * self.dist.world_size

    @property
    def frame(self) -> int:
        """Video frames trained on so far: the x-axis of the logs."""
        return self.step * self.global_batch * self.cfg.segment_length

    def _should_resume(self) -> bool:
        previous = self.run_dir / f".{CHECKPOINT_DIR}.old"
        if self.dist.is_main and not self.checkpoint_dir.exists() and (previous / STATE_FILE).is_file():
            previous.rename(self.checkpoint_dir)  # a save was cut off between its two renames
        self.dist.barrier()
        return should_resume(self.checkpoint_dir / STATE_FILE, self.cfg.resume, str(self.run_dir),
                             where="out=<old run folder>")

    def _eval_segments(self) -> SegmentBatch | None:
        """The held-out segments every validation scores (drawn once, with their own seed)."""
        if self.cfg.val_data is None:
            return None
        val = load_data(self.cfg.val_data, self.cfg.segment_length, self.cfg.image_key, split="held_out")
        if val.frame_shape != self.data.frame_shape:
            raise ValueError(f"validation frames {val.frame_shape} differ from training frames "
                             f"{self.data.frame_shape}")
        rng = np.random.default_rng(derive_seed(self.cfg.seed, _EVAL_SEGMENTS))
        return self._layout(val.sample(self.cfg.eval_segments, rng)).to(self.device)

    def _layout(self, batch: SegmentBatch) -> SegmentBatch:
        """The segments as the transformer trains on them (goal first for a goal-conditioned model)."""
        return goal_first(batch) if self.cfg.goal_conditioned else batch

    def _batches(self) -> dict[str, SegmentBatch]:
        """This step's batch for each part: one draw of segments, laid out per part."""
        batch = self.data.sample(self.cfg.batch_size).to(self.device, non_blocking=True)
        order = self.cfg.tokenizer.random_order
        tokenizer = random_order(batch, order, self.data.rng) if order else batch
        return {"tokenizer": tokenizer, "transformer": self._layout(batch)}

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
        for line in [self.describe(), *cfg.plan(self.dist.world_size), cpu_report_lines()]:
            self.say(line)
        bar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps), unit="step", dynamic_ncols=True,
                   disable=None if cfg.progress_bar and self.dist.is_main else True, mininterval=1.0)
        eval_due, checkpoint_due, log_due = Every(cfg.eval_every), Every(cfg.checkpoint_every), Every(cfg.log_every)
        parts: list[tuple[str, PartConfig]] = [("tokenizer", cfg.tokenizer), ("transformer", cfg.transformer)]
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        window_steps, window_seconds = 0, 0.0  # training iterations and their time since the last row
        last_eval = saved = None
        while self.step < cfg.steps:
            if eval_due(self.step):
                self.evaluate()
                last_eval = self.step
            started = time.perf_counter()
            batches = self._batches()
            metrics: dict[str, float] = {}
            for name, part in parts:
                if part.due(self.step):
                    metrics.update(self.trainer.update(name, batches[name]))
            window_seconds += time.perf_counter() - started
            window_steps += 1
            for key, value in metrics.items():
                sums[key] += value
                counts[key] += 1
            self.step += 1
            bar.update(1)
            if log_due(self.step) or self.step == cfg.steps:
                row = self.dist.mean({key: sums[key] / counts[key] for key in sums})  # over processes
                self._log_train(row, window_steps, window_seconds)
                bar.set_postfix({k.split("/")[1]: f"{v:.4g}" for k, v in row.items()
                                 if k in ("tokenizer/recon_l1", "transformer/ce")}, refresh=False)
                sums.clear()
                counts.clear()
                window_steps, window_seconds = 0, 0.0
            if checkpoint_due(self.step):
                self.save()
                saved = self.step
        bar.close()
        if saved != self.step:
            self.save()
        if last_eval != self.step:
            self.evaluate()
        self.logger.close()

    def _log_train(self, row: dict[str, float], steps: int, seconds: float) -> None:
        """A train row: the means of `row`, and the throughput of the `steps` iterations that took `seconds`."""
        segments_per_s = steps * self.global_batch / max(seconds, 1e-9)
        self.logger.log("train", {
            "step": self.step,
            "tokenizer_updates": self.trainer.tokenizer_updates,
            "transformer_updates": self.trainer.transformer_updates,
            **row,
            "throughput/segments_per_s": segments_per_s,
            "throughput/frames_per_s": segments_per_s * self.cfg.segment_length,
            "total_time": self._elapsed_before + self.timer.total(),
        }, self.frame)

    def evaluate(self) -> dict[str, float]:
        """Open-loop scores on the held-out segments (same segments and sampling noise every time); each process
        scores its share of the segments and the scores are gathered, weighted by rows (`eval/segments`)."""
        if self.eval_batch is None:
            return {}
        generator = torch.Generator(self.device).manual_seed(
            self.dist.rank_seed(derive_seed(self.cfg.seed, _EVAL_SAMPLING)))
        batch = self.eval_batch
        if self.dist.enabled:
            batch = SegmentBatch(*(None if t is None else t[self.dist.rank::self.dist.world_size]
                                   for t in (batch.frames, batch.actions, batch.rewards)))
        rows = batch.frames.shape[0]
        mine = self.trainer.evaluate(batch, self.cfg.eval_temperature, self.cfg.eval_top_k,
                                     generator, per_step=True).scores if rows else {}
        gathered = [(n, part) for n, part in self.dist.gather([(rows, mine)]) if n]
        scores = dict(mine) if len(gathered) == 1 else weighted_means(gathered)
        scores["segments"] = float(sum(n for n, _ in gathered))
        self.logger.log("eval", {"step": self.step, **{f"eval/{k}": v for k, v in scores.items()},
                                 "total_time": self._elapsed_before + self.timer.total()}, self.frame)
        reward = f" | reward MSE {scores['reward_mse']:.4g}" if "reward_mse" in scores else ""
        self.say(f"| eval | step {self.step} | imagined MSE {scores['mse']:.5f} (PSNR {scores['psnr']:.2f}) | "
                 f"copy-last MSE {scores['copy_last_mse']:.5f} (PSNR {scores['copy_last_psnr']:.2f}) | "
                 f"tokenizer recon MSE {scores['recon_mse']:.5f} (context {scores['context_recon_mse']:.5f}) | CE {scores['ce']:.4f}{reward}")
        return scores

    # ------------------------------------------------------------------------------------ checkpoints
    def _rank_state(self) -> dict[str, Any]:
        return {"data_rng": self.data.rng.bit_generator.state, "rng": rng_state()}

    def save(self) -> None:
        """Weights (published layout) and training state into `checkpoint/`, replaced as a whole: the folder is
        written beside it and renamed into place, so a crash leaves the previous checkpoint intact. Every process
        hands rank 0 its random states; rank 0 alone writes."""
        ranks = self.dist.gather([self._rank_state()])
        if self.dist.is_main:
            tmp = self.run_dir / f".{CHECKPOINT_DIR}.tmp"
            old = self.run_dir / f".{CHECKPOINT_DIR}.old"
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            save_checkpoint(tmp / STATE_FILE, {
                "version": STATE_VERSION,
                "step": self.step,
                "elapsed": self._elapsed_before + self.timer.total(),
                "trainer": self.trainer.state_dict(),
                **ranks[0],  # a single-process run's state, as before
                "world_size": self.dist.world_size,
                "batch_size": self.cfg.batch_size,
                "ranks": ranks if self.dist.enabled else [],
            })
            shutil.rmtree(old, ignore_errors=True)
            if self.checkpoint_dir.exists():
                self.checkpoint_dir.rename(old)
            tmp.rename(self.checkpoint_dir)
            shutil.rmtree(old, ignore_errors=True)
        self.dist.barrier()

    def _load(self) -> None:
        state = load_checkpoint(self.checkpoint_dir / STATE_FILE, map_location=self.device)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"{self.checkpoint_dir / STATE_FILE} has version {state.get('version')}, this code "
                             f"reads version {STATE_VERSION}")
        self.trainer.load_state_dict(state["trainer"])
        self.step = int(state["step"])
        self._elapsed_before = float(state["elapsed"])
        saved_world = int(state.get("world_size", 1))
        if saved_world == self.dist.world_size:
            mine = state["ranks"][self.dist.rank] if self.dist.enabled else state
            self.data.rng.bit_generator.state = mine["data_rng"]
            set_rng_state(mine["rng"])
        else:  # fresh streams for this process count, still a function of (seed, rank, step)
            before = int(state.get("batch_size", self.cfg.batch_size)) * saved_world
            self.say(f"resuming a run saved by {saved_world} process(es) with {self.dist.world_size}: the global "
                     f"batch changes from {before} to {self.global_batch} segments per step; the data and sampling "
                     "streams restart from the seed, the step count and the schedules carry on")
            seed = derive_seed(self.cfg.seed, _RESEED, self.step)
            self.data.rng = np.random.default_rng(self.dist.rank_seed(seed))
            torch.manual_seed(self.dist.rank_seed(seed))
        self.say(f"resumed from {self.checkpoint_dir} at step {self.step}")


def _silent(_: str) -> None:
    """What processes other than rank 0 print."""


class _NoLogger:
    """The logger of processes other than rank 0: they log nothing."""

    def log(self, section: str, metrics: dict[str, Any], frame: int) -> None:
        pass

    def close(self) -> None:
        pass


@hydra.main(config_path="../configs", config_name="world_model_train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    record = OmegaConf.to_container(cfg, resolve=True)
    dist = Distributed()
    try:
        dist = Distributed.from_env()
        config = WorldModelTrainConfig.from_dict(record)
        dist.init(dist.device(pick_device(config.device)))
        run_dir = Path(dist.gather([str(run_dir)])[0])  # rank 0's folder (out= may hold a per-process time)
        run = WorldModelRun(config, run_dir, record, dist)
    except (ValueError, FileNotFoundError) as err:  # a bad setting or path: one line that names it
        print(f"error: {err}", file=sys.stderr)
        dist.close()
        sys.exit(2)
    if dist.is_main:
        save_run_info(run_dir, OmegaConf.to_yaml(cfg, resolve=True), REPO_ROOT)
    try:
        run.train()
        dist.barrier()  # every rank done (rank 0 closes its logger last) before the process group goes away
    finally:
        dist.close()


if __name__ == "__main__":
    main()
