"""`MBPO`: the `mbrl.loop.WorldModelHooks` that turn the DrQ-v2 loop into MBPO.

Everything the world model adds runs from `MBPO.on_step(step)`, driven by one `MBPOSchedule` of cadences in
env frames (agent steps x action repeat); `MBPO.agent_batch` gives the agent real transitions only until the
first rollouts exist, and from then on an exact split: `round(real_ratio * B)` real rows, then imagined rows.
The world model's weights, both optimizers, the imagined replay and every generator are in `state_dict`.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from core.batch import SegmentBatch, TransitionBatch
from mbrl.imagined_replay import ImaginedReplay, imagine, mix_batches, to_uint8
from mbrl.loop import PhaseTimer
from mbrl.mbpo.build import describe, model_arguments
from mbrl.mbpo.config import LoopSettings, MBPOConfig
from mbrl.mbpo.schedule import build_schedule
from mbrl.mbpo.videos import rollout_video, save_video, side_by_side
from mbrl.replay import ReplayBuffer
from world_model.build import build_model
from world_model.lpips import build_perceptual
from world_model.training import WorldModelTrainer


class ExplorationSettings(Protocol):
    num_expl_steps: int  # agent steps of uniform random actions at the start of the run


class ImaginationAgent(Protocol):
    """What MBPO uses of the agent: its policy acts in imagination; its exploration steps set `seed_frames: auto`."""

    cfg: ExplorationSettings

    def act_batch(self, obs: torch.Tensor, step: int, eval_mode: bool) -> torch.Tensor:
        """Actions `(B, A)` for frame stacks `(B, S*3, H, W)` at agent step `step`."""


class VideoSink(Protocol):
    """Where saved videos are reported (the trainer's `core.logger.Logger`)."""

    def log_video(self, key: str, path: str | Path, frame: int) -> None: ...


class MBPO:
    """The world model's part of the training loop.

    Args:
        cfg: the `world_model` settings.
        agent: the agent whose policy acts in imagination.
        replay: the real replay (segments for the world model, real rows of agent batches).
        loop: the loop's settings (frame stack, action repeat, episode length, n-step, seed, device, run folder).
        timer: accounts wall-clock time to the phases `wm_update`, `wm_validation` and `imagination`.
        videos: where saved videos are reported; None reports none.
        video_format: gif or mp4; None saves no videos.
    """

    def __init__(self, cfg: MBPOConfig, agent: ImaginationAgent, replay: ReplayBuffer, loop: LoopSettings, *,
                 timer: PhaseTimer | None = None, videos: VideoSink | None = None,
                 video_format: str | None = "gif") -> None:
        self.cfg, self.agent, self.replay, self.loop = cfg, agent, replay, loop
        self.device, self.action_repeat = torch.device(loop.device), loop.action_repeat
        self.video_folder = Path(loop.run_dir) / "videos"
        self.timer = timer or PhaseTimer()
        self.videos, self.video_format = videos, video_format
        frame_shape = replay.frame_shape
        # Built from its own seed stream: the run's global stream (the agent's exploration, its updates) then
        # starts exactly as with world_model=none, so both compare on the same early data.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(_seed(loop.seed, 5))
            arguments, origin = model_arguments(cfg, replay.action_dim, self.device, frame_shape[1])
            self.model = build_model(**arguments)
            description = describe(self.model, origin, replay.action_dim)
            self.model.to(self.device)
        self._check_fit(frame_shape)
        optim = replace(cfg.optim, freeze_codebooks=cfg.frozen_codebooks)
        perceptual = None if cfg.perceptual_weights is None else build_perceptual(cfg.perceptual_weights)
        self.trainer = WorldModelTrainer(self.model, optim, perceptual)

        # Real frames before each rollout: T0 for the model's context, and enough for the policy's first
        # frame stack to be made of real frames, as the env's observations are.
        self.history = max(self.model.context_frames, loop.frame_stack)
        self.imagined = ImaginedReplay(cfg.imagined_capacity, frame_shape, replay.action_dim, self.history,
                                       cfg.rollout.horizon, loop.frame_stack, loop.nstep, loop.discount,
                                       self.device, seed=_seed(loop.seed, 0))
        self.schedule = build_schedule(cfg.schedule, loop.action_repeat, agent.cfg.num_expl_steps,
                                       loop.episode_length)
        self.segment_rng = np.random.default_rng(_seed(loop.seed, 1))  # world-model batches and rollout starts
        self.validation_rng = np.random.default_rng(_seed(loop.seed, 2))
        # token sampling; validation has its own stream so that it (and its videos) never change training
        self.generator = torch.Generator(self.device).manual_seed(_seed(loop.seed, 3))
        self.validation_generator = torch.Generator(self.device).manual_seed(_seed(loop.seed, 4))
        self.counters = {"init_updates": 0, "rollout_batches": 0, "validations": 0, "agent_batches": 0,
                         "real_transitions": 0, "imagined_transitions": 0}
        self._last_mix = (0, 0)
        tqdm.write(f"world model: iVideoGPT {description} on {self.device}; codebooks "
                   f"{'frozen' if cfg.frozen_codebooks else 'trained'}; tokenizer loss "
                   f"{'with' if perceptual is not None else 'without'} LPIPS")
        tqdm.write(f"MBPO schedule (env frames): {self.schedule.describe()}; rollouts of {cfg.rollout.batch_size} x "
                   f"{cfg.rollout.horizon} steps; agent batches {cfg.real_ratio:.0%} real once imagination starts")

    def _check_fit(self, frame_shape: tuple[int, ...]) -> None:
        """The env's frames and episodes fit the model's tokenizer and the configured segments."""
        resolution = self.model.tokenizer.config.resolution
        if frame_shape[1:] != (resolution, resolution):
            raise ValueError(f"env frames are {frame_shape[1]}x{frame_shape[2]} but the world model's tokenizer "
                             f"works on {resolution}x{resolution}; use env.image_size={resolution}")
        t0, length = self.model.context_frames, self.cfg.segment_length
        if length <= t0:
            raise ValueError(f"world_model.segment_length={length} must exceed the model's {t0} context frames")
        if length > self.loop.episode_length:
            raise ValueError(f"world_model.segment_length={length} does not fit episodes of "
                             f"{self.loop.episode_length} steps; shorten it or lengthen env.episode_length")

    # ------------------------------------------------------------------------------------------- hooks
    def on_step(self, step: int) -> dict[str, float]:
        """Runs whatever the schedule has due at agent step `step` (env frame `step * action_repeat`); returns
        the metrics of what ran."""
        frame = step * self.action_repeat
        due = self.schedule.due(frame)
        metrics: dict[str, float] = {}
        if due["init_train"] or due.get("tokenizer") or due.get("transformer"):
            with self.timer.phase("wm_update"):
                metrics.update(self._train(due["init_train"], due.get("tokenizer", 0), due.get("transformer", 0)))
        if due.get("validate"):
            with self.timer.phase("wm_validation"):
                metrics.update(self.validate(frame))
        if due["imagine"]:
            with self.timer.phase("imagination"):
                metrics.update(self._imagine(due["imagine"], step))
        return metrics

    def agent_batch(self, batch_size: int) -> TransitionBatch:
        """All real until the first rollouts exist; then `round(real_ratio * B)` real rows + imagined rows."""
        if self.imagined.total_rollouts == 0:
            real, imagined = batch_size, 0
        else:
            real = round(self.cfg.real_ratio * batch_size)
            imagined = batch_size - real
        self.counters["agent_batches"] += 1
        self.counters["real_transitions"] += real
        self.counters["imagined_transitions"] += imagined
        self._last_mix = (real, imagined)
        if imagined == 0:
            return self.replay.sample(batch_size)
        if real == 0:
            return self.imagined.sample(imagined)
        return mix_batches(self.replay.sample(real), self.imagined.sample(imagined), self.device)

    def status(self) -> dict[str, float]:
        """Counters for the episode's log row (cumulative over the run)."""
        real, imagined = self._last_mix
        return {
            "wm/init_updates": self.counters["init_updates"],
            "wm/tokenizer_updates": self.trainer.tokenizer_updates,
            "wm/transformer_updates": self.trainer.transformer_updates,
            "wm/validations": self.counters["validations"],
            "imagination/rollout_batches": self.counters["rollout_batches"],
            "imagination/rollouts": self.imagined.total_rollouts,
            "imagination/buffer_size": len(self.imagined),
            "mbpo/agent_batches": self.counters["agent_batches"],
            "mbpo/real_transitions": self.counters["real_transitions"],
            "mbpo/imagined_transitions": self.counters["imagined_transitions"],
            "mbpo/last_batch_real": real,
            "mbpo/last_batch_imagined": imagined,
        }

    # ------------------------------------------------------------------------------------------- parts
    def _segments(self) -> SegmentBatch:
        try:
            batch = self.replay.sample_segments(self.cfg.segment_batch_size, self.cfg.segment_length,
                                                generator=self.segment_rng)
        except ValueError as err:
            raise ValueError(f"world-model training needs real segments of {self.cfg.segment_length} frames: "
                             f"{err}; start it later (world_model.schedule.seed_frames) or add demos") from None
        return batch.to(self.device, non_blocking=True)

    def _train(self, init_steps: int, tokenizer: int, transformer: int) -> dict[str, float]:
        """`init_steps` updates of both parts, then the periodic ones (one shared batch when both are due).

        Returns the means over this call's updates (the trainer then averages calls over the episode), among
        them the codebook health `wm/tokenizer/{context,dynamics}_{codes_used,perplexity,dead_codes}`
        (`world_model.codebook`), and `wm/segments_per_s`, the real segments trained on per wall-clock second.
        """
        periodic = max(tokenizer, transformer)
        steps = [(True, True)] * init_steps + [(i < tokenizer, i < transformer) for i in range(periodic)]
        if init_steps:
            tqdm.write(f"world model: initial training, {init_steps} updates of tokenizer and transformer")
        start = time.perf_counter()
        sums: dict[str, float] = {}
        for update_tokenizer, update_transformer in tqdm(steps, desc="world model", leave=False,
                                                         disable=None if init_steps else True):
            batch = self._segments()
            step_metrics = {}
            if update_tokenizer:
                step_metrics.update(self.trainer.update_tokenizer(batch))
            if update_transformer:
                step_metrics.update(self.trainer.update_transformer(batch))
            for key, value in step_metrics.items():
                sums[key] = sums.get(key, 0.0) + value
        seconds = time.perf_counter() - start
        self.counters["init_updates"] += init_steps
        counts = {"tokenizer": init_steps + tokenizer, "transformer": init_steps + transformer}
        metrics = {f"wm/{key}": value / counts[key.split("/")[0]] for key, value in sums.items()}
        metrics["wm/segments_per_s"] = len(steps) * self.cfg.segment_batch_size / max(seconds, 1e-9)
        if init_steps:  # one line for logs where the progress bar is off (pipes, cluster jobs)
            tqdm.write(f"world model: initial training done in {seconds:.0f} s; mean "
                       f"transformer ce {metrics['wm/transformer/ce']:.3f}, tokenizer recon L1 "
                       f"{metrics['wm/tokenizer/recon_l1']:.4f}; codes used (last "
                       f"{self.trainer.cfg.codebook_window} updates): context "
                       f"{metrics['wm/tokenizer/context_codes_used']:.0%}, dynamics "
                       f"{metrics['wm/tokenizer/dynamics_codes_used']:.0%}")
        return metrics

    def _imagine(self, batches: int, step: int) -> dict[str, float]:
        """`batches` rounds of rollouts from real starts under the current policy, into the imagined replay.

        Returns the mean imagined reward and `imagination/transitions_per_s`: imagined transitions per
        wall-clock second of the rollout calls.
        """
        def policy(obs: torch.Tensor) -> torch.Tensor:  # a sample from the agent's current distribution
            return self.agent.act_batch(obs, step, eval_mode=False)

        rewards, seconds = [], 0.0
        rollout = self.cfg.rollout
        for _ in range(batches):
            history = self.replay.sample_segments(rollout.batch_size, self.history,
                                                  generator=self.segment_rng).frames.to(self.device)
            start = time.perf_counter()
            # the rollout engine picks its own precision (bf16 on CUDA); the policy runs in float32
            rollouts = imagine(self.model, policy, history, rollout.horizon, self.loop.frame_stack,
                               rollout.temperature, rollout.top_k, self.generator)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds += time.perf_counter() - start
            self.imagined.add(rollouts)
            rewards.append(rollouts.rewards.mean())
            self.counters["rollout_batches"] += 1
        transitions = batches * rollout.batch_size * rollout.horizon
        return {"imagination/reward_mean": torch.stack(rewards).mean().item(),
                "imagination/transitions_per_s": transitions / max(seconds, 1e-9)}

    @torch.no_grad()
    def validate(self, frame: int) -> dict[str, float]:
        """Open-loop scores of the newest real episodes under their real actions, plus videos (named after env
        frame `frame`) of them and of the latest imagined rollouts. Empty when the newest episodes hold no full
        segment yet."""
        cfg = self.cfg.validation
        window = cfg.episodes * (self.loop.episode_length + 1)
        batch = self.replay.sample_recent_segments(cfg.batch_size, self.cfg.segment_length, window,
                                                    self.validation_rng)
        if batch is None:
            return {}
        batch = batch.to(self.device)
        result = self.trainer.evaluate(batch, self.cfg.rollout.temperature, self.cfg.rollout.top_k,
                                       self.validation_generator)
        self.counters["validations"] += 1
        # the teacher-forced losses (real tokens in, no sampling) next to the open-loop scores
        renamed = {"ce": "teacher_forced_ce", "reward": "teacher_forced_reward"}
        metrics = {f"val/{renamed.get(key, key)}": value for key, value in result.scores.items()
                   if key != "horizon"}
        if self.video_format is not None:
            self._validation_videos(batch, result.predicted, frame)
        return metrics

    def _validation_videos(self, batch: SegmentBatch, predicted: torch.Tensor, frame: int) -> None:
        """Videos of the scored rollouts (real | imagined | error) and of the latest imagined experience."""
        count = self.cfg.validation.video_segments
        if count > 0:
            real = batch.frames[:count]
            imagined = torch.cat([real[:, :self.model.context_frames], to_uint8(predicted[:count])], dim=1)
            self._save_video("val/video", f"val_{frame}", side_by_side(real, imagined), frame)
        if self.cfg.validation.video_rollouts > 0 and self.imagined.num_rollouts:
            latest = self.imagined.latest(self.cfg.validation.video_rollouts)
            self._save_video("imagination/video", f"imagined_{frame}", rollout_video(latest, self.history), frame)

    def _save_video(self, key: str, name: str, frames: np.ndarray, frame: int) -> None:
        assert self.video_format is not None
        path = save_video(self.video_folder, name, self.video_format, frames)
        if path is not None and self.videos is not None:
            self.videos.log_video(key, path, frame)

    # -------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Weights, optimizers, imagined replay, counters and generator states."""
        return {
            "model": self.model.state_dict(),
            "trainer": self.trainer.state_dict(),
            "imagined": self.imagined.state_dict(),
            "counters": dict(self.counters),
            "segment_rng": self.segment_rng.bit_generator.state,
            "validation_rng": self.validation_rng.bit_generator.state,
            "generator": self.generator.get_state(),
            "validation_generator": self.validation_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.trainer.load_state_dict(state["trainer"])
        self.imagined.load_state_dict(state["imagined"])
        self.counters = dict(state["counters"])
        self.segment_rng.bit_generator.state = state["segment_rng"]
        self.validation_rng.bit_generator.state = state["validation_rng"]
        self.generator.set_state(state["generator"].cpu())
        self.validation_generator.set_state(state["validation_generator"].cpu())


def _seed(seed: int, stream: int) -> int:
    """A seed for one of the world model's random streams, independent of the trainer's streams."""
    return int(np.random.SeedSequence([seed, 0x4D425030, stream]).generate_state(1)[0] >> 1)
