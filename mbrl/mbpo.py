"""MBPO with an iVideoGPT world model: the `WorldModelHooks` that `mbrl.trainer.Trainer` calls.

Everything the world model adds to the DrQ-v2 loop runs from `MBPO.on_frame(frame)`, driven by one
`MBPOSchedule` of `Cadence`s in env frames (DESIGN.md section 6 by default):

    initial training  once, at `seed_frames`            `init_train_steps` tokenizer + transformer updates
    transformer       every 10 frames after that         one update on a batch of real segments
    tokenizer         every 40 frames after that         one update (on the same batch when both are due)
    validation        every N episodes from seed_frames  open-loop scores on the newest real episodes, videos
    imagination       from 4,000 frames, every 200       one batch of rollouts into the imagined replay
                                                         (`init_rollout_batches` at the first firing)

`MBPO.agent_batch` then gives the agent real transitions only until the first rollouts exist, and from then
on an exact split: `round(real_ratio * B)` real rows followed by imagined rows.

Cadences are pure functions of the frame counter, so a resumed run fires exactly where the uninterrupted run
would have; the world model's weights, both optimizers, the imagined replay and every generator are in
`state_dict` (the trainer's checkpoint).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from core.batch import SegmentBatch, TransitionBatch
from core.config import coerce_ints
from core.schedule import Cadence
from core.video import VideoRecorder
from mbrl.imagined_replay import ImaginedReplay, Policy, Rollouts, imagine, mix_batches, to_uint8
from mbrl.replay import ReplayBuffer
from world_model.imagination import ImaginationConfig
from world_model.lpips import build_perceptual
from world_model.model import IVideoGPT
from world_model.training import OptimConfig, WorldModelTrainer, build_model
from world_model.transformer import num_parameters

PRESET_AUTO = "auto"
# Rollouts kept for the videos of imagined experience, and how fast those videos play.
VIDEO_FPS = 4


# ------------------------------------------------------------------------------------------ schedule
class MBPOSchedule:
    """The cadences of MBPO, in env frames. `due(frame)` -> runs of each, for the agent step at `frame`."""

    def __init__(self, cadences: list[Cadence], action_repeat: int) -> None:
        names = [c.name for c in cadences]
        if len(set(names)) != len(names):
            raise ValueError(f"cadence names must be unique, got {names}")
        self.cadences = {c.name: c for c in cadences}
        self.action_repeat = action_repeat

    def due(self, frame: int) -> dict[str, int]:
        return {name: c.runs(frame, self.action_repeat) for name, c in self.cadences.items()}

    def total_runs(self, frame: int) -> dict[str, int]:
        """Runs of each cadence at agent steps up to and including the one at `frame`."""
        return {name: c.total_runs(frame) for name, c in self.cadences.items()}

    def describe(self) -> str:
        parts = []
        for c in self.cadences.values():
            when = f"at {c.start}" + (f" then every {c.every}" if c.every else "")
            times = f" x{c.first_times} first" if c.first_times not in (None, c.times) else ""
            parts.append(f"{c.name} {when}{times}")
        return "; ".join(parts)


# -------------------------------------------------------------------------------------------- config
@dataclass
class ScheduleConfig:
    """MBPO cadences in env frames (DESIGN.md section 6). `seed_frames: auto` = the agent's random exploration
    (`agent.num_expl_steps` x action repeat, 4,000 frames at the paper's settings)."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------- building
def build_schedule(cfg: ScheduleConfig, action_repeat: int, num_expl_steps: int, episode_length: int) -> MBPOSchedule:
    """MBPO's cadences from the config (DESIGN.md section 6 by default).

    Initial training fires once at `seed_frames` (`auto`: the agent's exploration steps x action repeat); the
    periodic tokenizer and transformer updates start one period after it; validation fires at `seed_frames`
    (right after the initial training) and then every `validate_every_episodes` episodes; imagination fires
    at `imagination_start_frames` (`init_rollout_batches` batches) and then every `rollout_every_frames`.
    A period of 0 turns the periodic part off.
    """
    seed_frames = num_expl_steps * action_repeat if cfg.seed_frames == "auto" else cfg.seed_frames
    if cfg.imagination_start_frames < seed_frames:
        raise ValueError(f"world_model.schedule.imagination_start_frames={cfg.imagination_start_frames} comes before "
                         f"the world model's initial training at {seed_frames} frames (schedule.seed_frames)")
    for name in ("transformer_every_frames", "tokenizer_every_frames", "rollout_every_frames"):
        if 0 < getattr(cfg, name) < action_repeat:
            raise ValueError(f"world_model.schedule.{name}={getattr(cfg, name)} is shorter than one agent step "
                             f"({action_repeat} frames)")

    def periodic(name: str, every: int, start: int) -> list[Cadence]:
        return [Cadence(name, start, every)] if every > 0 else []

    return MBPOSchedule([
        Cadence("init_train", seed_frames, 0, times=cfg.init_train_steps),
        *periodic("tokenizer", cfg.tokenizer_every_frames, seed_frames + cfg.tokenizer_every_frames),
        *periodic("transformer", cfg.transformer_every_frames, seed_frames + cfg.transformer_every_frames),
        *periodic("validate", cfg.validate_every_episodes * episode_length * action_repeat, seed_frames),
        Cadence("imagine", cfg.imagination_start_frames, cfg.rollout_every_frames,
                first_times=cfg.init_rollout_batches),
    ], action_repeat)


def resolve_preset(preset: str, device: torch.device) -> tuple[str, str]:
    """The preset to build and why (`auto`: paper64 on CUDA, cpu otherwise)."""
    if preset != PRESET_AUTO:
        return preset, "world_model.preset; profile=cpu and profile=paper set it"
    if device.type == "cuda":
        return "paper64", "auto: CUDA device"
    return "cpu", "auto: no CUDA device; the paper's 250M-parameter model is impractical on a CPU"


def build_world_model(cfg: MBPOConfig, action_dim: int, device: torch.device,
                      image_size: int | None = None) -> tuple[IVideoGPT, str]:
    """An action-conditioned iVideoGPT with a reward head, from scratch or a published checkpoint.

    Args:
        image_size: side of the env's frames: a fresh tokenizer is built for it (token counts follow); a
            checkpoint keeps its own. None: the preset's (64).

    Returns:
        the model on `device` (codebooks frozen or not as configured) and a one-line description.
    """
    if cfg.pretrained is not None:
        # its frame size is checked against the env's by the caller, which names the fix
        model = build_model(pretrained=cfg.pretrained, action_dim=action_dim, reward_head=True,
                            attention_dropout=cfg.attention_dropout, reward_alignment=cfg.reward_alignment,
                            imagination=cfg.imagination)
        origin = f"fine-tuned from {cfg.pretrained}"
    else:
        preset, why = resolve_preset(cfg.preset, device)
        model = build_model(preset, action_dim=action_dim, reward_head=True, image_size=image_size,
                            reward_alignment=cfg.reward_alignment, imagination=cfg.imagination)
        size = f", {image_size}x{image_size} frames" if image_size is not None else ""
        origin = f"preset {preset} ({why}{size}), from scratch"
    if model.action_dim != action_dim:
        raise ValueError(f"the world model takes {model.action_dim}-d actions but the env has {action_dim}")
    params = num_parameters(model.tokenizer) + num_parameters(model.transformer)
    return model.to(device), f"{origin}, {params / 1e6:.1f}M parameters"


def agent_policy(agent: Any, step: int) -> Policy:
    """The agent's training-time policy on batches of frame stacks (a sample from its current distribution,
    uniform during its exploration steps)."""
    return lambda obs: agent.act_batch(obs, step, eval_mode=False)


# ------------------------------------------------------------------------------------------- videos
# 3x5 pixel glyphs for reward read-outs drawn into the video frames (no font files or OpenCV needed).
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
}


def draw_text(frame: np.ndarray, text: str) -> np.ndarray:
    """Writes `text` (digits, '.', '-') in white on a black box into the top-left corner of a uint8
    `(3, H, W)` frame (in place; returned for chaining)."""
    width = 4 * len(text) + 1
    frame[:, :7, :width] = 0
    for i, char in enumerate(text):
        glyph = np.array([int(c) for c in _GLYPHS[char]], dtype=bool).reshape(5, 3)
        frame[:, 1:6, 1 + 4 * i:4 + 4 * i][:, glyph] = 255
    return frame


def side_by_side(real: torch.Tensor, imagined: torch.Tensor) -> np.ndarray:
    """Videos `(B, T, 3, H, W)` uint8 -> `(T, 3, B*H, 3*W)`: each row real | imagined | abs error."""
    error = (real.int() - imagined.int()).abs().to(torch.uint8)
    rows = torch.cat([real, imagined, error], dim=-1)  # (B, T, 3, H, 3W)
    return rows.permute(1, 2, 0, 3, 4).flatten(2, 3).cpu().numpy()


def rollout_video(rollouts: Rollouts, history: int) -> np.ndarray:
    """Imagined rollouts -> `(L + H, 3, B*H, W)` uint8, rows = rollouts; each imagined frame shows the
    predicted reward of the transition into it."""
    frames = rollouts.frames.cpu().numpy().copy()  # (B, L + H, 3, H, W)
    rewards = rollouts.rewards.cpu().numpy()
    for b in range(frames.shape[0]):
        for t in range(rollouts.horizon):
            draw_text(frames[b, history + t], f"{rewards[b, t]:.2f}")
    return frames.transpose(1, 2, 0, 3, 4).reshape(frames.shape[1], 3, -1, frames.shape[-1])


def save_video(folder: Path, name: str, fmt: str, frames: np.ndarray) -> Path | None:
    """Writes `(T, 3, H, W)` uint8 frames with `core.video.VideoRecorder`."""
    recorder = VideoRecorder(folder, fmt, fps=VIDEO_FPS)
    recorder.start(frames[0])
    for frame in frames[1:]:
        recorder.add(frame)
    return recorder.save(name)


# --------------------------------------------------------------------------------------------- hooks
PhaseTimer = Callable[[str], contextlib.AbstractContextManager]


@contextlib.contextmanager
def _untimed(_: str) -> Iterator[None]:
    yield


class MBPO:
    """The world model's part of the training loop (`mbrl.trainer.WorldModelHooks`).

    Args:
        cfg: the `world_model` settings.
        agent: the DrQ-v2 agent (its policy acts in imagination).
        replay: the real replay (segments for the world model, real rows of agent batches).
        frame_stack, action_repeat, episode_length: the env's settings (stacks, frames, episodes).
        nstep, discount: the agent's n-step return settings, used for imagined transitions too.
        seed: run seed (the world model's own generators derive from it).
        device: where the world model, its rollouts and the imagined replay live.
        run_dir: the run folder (videos go to `run_dir/videos`).
        timer: `timer(phase)` context manager that accounts wall-clock time to a phase.
        log_video: `log_video(key, path, frame)` (the trainer's logger).
        video_format: gif or mp4; None saves no videos.
    """

    def __init__(self, cfg: MBPOConfig, agent: Any, replay: ReplayBuffer, *, frame_stack: int, action_repeat: int,
                 episode_length: int, nstep: int, discount: float, seed: int, device: torch.device,
                 run_dir: str | Path, timer: PhaseTimer = _untimed,
                 log_video: Callable[[str, Path, int, int], None] | None = None,
                 video_format: str | None = "gif") -> None:
        self.cfg, self.agent, self.replay = cfg, agent, replay
        self.device, self.action_repeat, self.frame_stack = torch.device(device), action_repeat, frame_stack
        self.videos = Path(run_dir) / "videos"
        self.timer, self.log_video, self.video_format = timer, log_video, video_format
        frame_shape = replay.frame_shape
        # Built from its own seed stream: the run's global stream (the agent's exploration, its updates) then
        # starts exactly as with world_model=none, so both compare on the same early data.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(_seed(seed, 5))
            self.model, description = build_world_model(cfg, replay.action_dim, self.device, frame_shape[1])
        resolution = self.model.tokenizer.config.resolution
        if frame_shape[1:] != (resolution, resolution):
            raise ValueError(f"env frames are {frame_shape[1]}x{frame_shape[2]} but the world model's tokenizer "
                             f"works on {resolution}x{resolution}; use env.image_size={resolution}")
        t0 = self.model.context_frames
        if cfg.segment_length <= t0:
            raise ValueError(f"world_model.segment_length={cfg.segment_length} must exceed the model's "
                             f"{t0} context frames")
        if cfg.segment_length > episode_length:
            raise ValueError(f"world_model.segment_length={cfg.segment_length} does not fit episodes of "
                             f"{episode_length} steps; shorten it or lengthen env.episode_length")
        optim = replace(cfg.optim, freeze_codebooks=cfg.frozen_codebooks)
        perceptual = None if cfg.perceptual_weights is None else build_perceptual(cfg.perceptual_weights)
        self.trainer = WorldModelTrainer(self.model, optim, perceptual)

        # Real frames before each rollout: T0 for the model's context, and enough for the policy's first
        # frame stack to be made of real frames, as the env's observations are.
        self.history = max(t0, frame_stack)
        self.imagined = ImaginedReplay(cfg.imagined_capacity, frame_shape, replay.action_dim, self.history,
                                       cfg.rollout.horizon, frame_stack, nstep, discount, self.device,
                                       seed=_seed(seed, 0))
        self.schedule = build_schedule(cfg.schedule, action_repeat, agent.cfg.num_expl_steps, episode_length)
        self.episode_frames = episode_length * action_repeat
        self.segment_rng = np.random.default_rng(_seed(seed, 1))  # world-model batches and rollout starts
        self.validation_rng = np.random.default_rng(_seed(seed, 2))
        # token sampling; validation has its own stream so that it (and its videos) never change training
        self.generator = torch.Generator(self.device).manual_seed(_seed(seed, 3))
        self.validation_generator = torch.Generator(self.device).manual_seed(_seed(seed, 4))
        self.counters = {"init_updates": 0, "rollout_batches": 0, "validations": 0, "agent_batches": 0,
                         "real_transitions": 0, "imagined_transitions": 0}
        self._last_mix = (0, 0)
        tqdm.write(f"world model: iVideoGPT {description} on {self.device}; codebooks "
                   f"{'frozen' if cfg.frozen_codebooks else 'trained'}; tokenizer loss "
                   f"{'with' if perceptual is not None else 'without'} LPIPS")
        tqdm.write(f"MBPO schedule (env frames): {self.schedule.describe()}; rollouts of {cfg.rollout.batch_size} x "
                   f"{cfg.rollout.horizon} steps; agent batches {cfg.real_ratio:.0%} real once imagination starts")

    # ------------------------------------------------------------------------------------------- hooks
    def on_frame(self, frame: int) -> dict[str, float]:
        """Runs whatever the schedule has due at env frame `frame`; returns the metrics of what ran."""
        due = self.schedule.due(frame)
        metrics: dict[str, float] = {}
        if due["init_train"] or due.get("tokenizer") or due.get("transformer"):
            with self.timer("wm_update"):
                metrics.update(self._train(due["init_train"], due.get("tokenizer", 0), due.get("transformer", 0)))
        if due.get("validate"):
            with self.timer("wm_validation"):
                metrics.update(self.validate(frame))
        if due["imagine"]:
            with self.timer("imagination"):
                metrics.update(self._imagine(due["imagine"], frame // self.action_repeat))
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
        """`init_steps` updates of both parts, then the periodic ones (one shared batch when both are due)."""
        steps = [(True, True)] * init_steps + [(i < tokenizer, i < transformer) for i in range(max(tokenizer,
                                                                                                   transformer))]
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
        self.counters["init_updates"] += init_steps
        # means over this call's updates; the trainer then averages calls over the episode
        counts = {"tokenizer": init_steps + tokenizer, "transformer": init_steps + transformer}
        metrics = {f"wm/{key}": value / counts[key.split("/")[0]] for key, value in sums.items()}
        if init_steps:  # one line for logs where the progress bar is off (pipes, cluster jobs)
            tqdm.write(f"world model: initial training done in {time.perf_counter() - start:.0f} s; mean "
                       f"transformer ce {metrics['wm/transformer/ce']:.3f}, tokenizer recon L1 "
                       f"{metrics['wm/tokenizer/recon_l1']:.4f}")
        return metrics

    def _imagine(self, batches: int, step: int) -> dict[str, float]:
        """`batches` rounds of rollouts from real starts under the current policy, into the imagined replay."""
        policy, rewards = agent_policy(self.agent, step), []
        for _ in range(batches):
            history = self.replay.sample_segments(self.cfg.rollout.batch_size, self.history,
                                                  generator=self.segment_rng).frames.to(self.device)
            # the rollout engine picks its own precision (bf16 on CUDA); the policy runs in float32
            rollouts = imagine(self.model, policy, history, self.cfg.rollout.horizon, self.frame_stack,
                               self.cfg.rollout.temperature, self.cfg.rollout.top_k, self.generator)
            self.imagined.add(rollouts)
            rewards.append(rollouts.rewards.mean())
            self.counters["rollout_batches"] += 1
        return {"imagination/reward_mean": torch.stack(rewards).mean().item()}

    @torch.no_grad()
    def validate(self, frame: int) -> dict[str, float]:
        """Open-loop scores of the newest real episodes under their real actions, plus videos of them and of the
        latest imagined rollouts. Empty when the newest episodes hold no full segment yet."""
        cfg = self.cfg.validation
        window = cfg.episodes * (self.episode_frames // self.action_repeat + 1)
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
        path = save_video(self.videos, name, self.video_format, frames)
        if path is not None and self.log_video is not None:
            self.log_video(key, path, frame)

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
