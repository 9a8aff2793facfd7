"""Entry point: ``python -m world_model.predict checkpoint=DIR input=episode.npz dataset=NAME [key=value ...]``

Video prediction from one episode file, as the official ``inference/predict.py``: the dataset's image key and
frame stride are applied, frames are resized to the checkpoint's resolution (bilinear, antialiased; e.g.
256x320 -> 64x64), the first ``context_frames`` are reconstructed by the tokenizer and the rest of the
``segment_length`` frames are imagined through ``model.reset`` / ``model.step`` (under the episode's actions when
action-conditioned). Each of ``samples`` rollouts is written as one video of real | predicted side by side.

Options: ``context_frames=auto`` (the checkpoint's T0), ``segment_length=16`` (shortened to the episode when it
is shorter), ``samples=5``, ``action_conditioned=auto|true|false`` (auto: follow the checkpoint),
``goal_conditioned=false`` (true: a goal-conditioned checkpoint such as ``oxe-64-goal-cond`` gets the
segment's last frame as its goal, ``[o_T, o_1, ..., o_T]``, and predicts ``o_2 ... o_T`` from the goal and
``o_1``; action-free), ``out=DIR`` (default ``runs/predict/<episode name>``), ``seed=0``, ``temperature=1.0``,
``top_k=100``, ``format=gif|mp4``, ``fps=4``, ``device=auto``, ``precision=auto``, ``num_threads=auto``.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.batch import SegmentBatch
from core.config import parse_key_values
from core.runtime import configure_threads, pick_device
from core.video import VIDEO_FORMATS, VideoRecorder
from world_model.clip_scoring import (
    ClipScorer,
    SamplingSettings,
    load_checked_model,
    resolve_actions,
    to_model_frames,
)
from world_model.data.formats import DatasetFormat, get_format, load_episode
from world_model.data.goal import GOAL_CONTEXT_FRAMES, goal_first
from world_model.model import IVideoGPT

GAP = 2  # white pixels between the real and the predicted frame


@dataclass
class PredictConfig(SamplingSettings):
    """The settings of one prediction run (``key=value`` on the command line)."""

    input: str = ""
    segment_length: int = 16
    goal_conditioned: str = "false"
    out: str = ""
    format: str = "gif"
    fps: int = 4

    @classmethod
    def from_args(cls, args: list[str]) -> PredictConfig:
        """Parse ``key=value`` arguments (one-line errors for unknown keys and bad values)."""
        values = parse_key_values(cls, args)
        cfg = cls(**values)
        for key in ("checkpoint", "input", "dataset"):
            if not getattr(cfg, key):
                raise ValueError(f"{key}=... is required: python -m world_model.predict checkpoint=DIR "
                                 "input=episode.npz dataset=NAME")
        if cfg.samples < 1 or cfg.segment_length < 2 or cfg.fps < 1:
            raise ValueError(f"samples, fps must be >= 1 and segment_length >= 2, got samples={cfg.samples} "
                             f"fps={cfg.fps} segment_length={cfg.segment_length}")
        if cfg.format not in VIDEO_FORMATS:
            raise ValueError(f"format={cfg.format!r} must be one of {', '.join(VIDEO_FORMATS)}")
        if cfg.goal_conditioned not in ("true", "false"):
            raise ValueError(f"goal_conditioned={cfg.goal_conditioned!r} must be true or false")
        if cfg.goal_conditioned == "true" and cfg.action_conditioned == "true":
            raise ValueError("goal_conditioned=true predicts action-free; drop action_conditioned=true")
        return cfg


def use_actions(flag: str, model: IVideoGPT, fmt: DatasetFormat, actions: np.ndarray | None, file: Path) -> bool:
    """Whether the rollouts are action-conditioned (one-line errors when the checkpoint or episode cannot)."""
    if not resolve_actions(flag, model.action_dim, fmt):
        return False
    if actions is None:
        raise ValueError(f"{file} has no 'action' array but the checkpoint is action-conditioned; use an "
                         "action-free checkpoint or an episode with actions")
    if actions.shape[1] != model.action_dim:
        raise ValueError(f"{file} has {actions.shape[1]}-d actions but the checkpoint takes {model.action_dim}-d")
    return True


def side_by_side(real: np.ndarray, predicted: np.ndarray) -> list[np.ndarray]:
    """Frames (3, H, 2W + GAP) uint8 of real | predicted from two (T, 3, H, W) uint8 videos."""
    t, _, h, w = real.shape
    canvas = np.full((t, 3, h, 2 * w + GAP), 255, dtype=np.uint8)
    canvas[..., :w], canvas[..., w + GAP:] = real, predicted
    return list(canvas)


def predict(cfg: PredictConfig) -> list[Path]:
    """Run one prediction; returns the written videos (one per sample)."""
    fmt = get_format(cfg.dataset)
    file = Path(cfg.input)
    if not file.is_file():
        raise FileNotFoundError(f"input={file} does not exist; pass one episode .npz file")
    configure_threads(cfg.num_threads if cfg.num_threads == "auto" else int(cfg.num_threads))
    device = pick_device(cfg.device)
    frames, actions, _ = load_episode(file, fmt)  # the key first: a wrong dataset fails before the model loads
    model = load_checked_model(cfg.checkpoint, device, cfg.precision)
    t0 = model.context_frames
    goal = cfg.goal_conditioned == "true"
    if goal and (t0 != GOAL_CONTEXT_FRAMES or model.action_dim is not None):
        raise ValueError(f"goal_conditioned=true needs an action-free checkpoint with {GOAL_CONTEXT_FRAMES} context "
                         f"frames (the goal, then the first frame); this one has {t0} and action_dim="
                         f"{model.action_dim}")
    if cfg.context_frames not in ("auto", str(t0)):
        raise ValueError(f"the checkpoint's tokenizer has context_length {t0} but context_frames="
                         f"{cfg.context_frames} was asked; pass context_frames={t0} or auto")
    frames = frames[::fmt.stride]
    actions = None if actions is None else actions[::fmt.stride]
    if len(frames) <= t0 - goal:
        raise ValueError(f"{file} has {len(frames)} frames after stride {fmt.stride} of dataset={fmt.name}: no "
                         f"more than the {t0} context frames; use a longer episode")
    length = min(cfg.segment_length, len(frames))
    if length < cfg.segment_length:
        print(f"{file} has {len(frames)} frames after stride {fmt.stride}: predicting {length - t0}, not "
              f"{cfg.segment_length - t0}")
    horizon = length + goal - t0  # a goal-conditioned segment holds the goal twice
    if horizon > model.imaginer.max_horizon:
        raise ValueError(f"segment_length={length} with {t0} context frames asks for {horizon} imagined frames; "
                         f"this checkpoint can imagine 1 to {model.imaginer.max_horizon}; lower segment_length")
    act = None
    if not goal and use_actions(cfg.action_conditioned, model, fmt, actions, file):
        act = torch.from_numpy(actions[:length]).to(device, torch.float32).unsqueeze(0)
    resolution = model.tokenizer.config.resolution
    real = to_model_frames(frames[:length], resolution, device)
    if goal:
        real = goal_first(SegmentBatch(real)).frames  # (1, length + 1, 3, H, W): the goal in front
    scorer = ClipScorer(model, cfg.samples, cfg.samples, act is not None, cfg.temperature, cfg.top_k, cfg.seed)
    start = time.perf_counter()
    generated = scorer.imagine(real, act, 0)
    elapsed = time.perf_counter() - start
    as_uint8 = (lambda v: (v.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy())
    real_u8, generated_u8 = as_uint8(real[0]), as_uint8(generated)
    out = Path(cfg.out) if cfg.out else Path("runs") / "predict" / file.stem
    recorder = VideoRecorder(out, cfg.format, fps=cfg.fps)
    written = []
    for k in range(cfg.samples):
        frames_k = side_by_side(real_u8, generated_u8[k])
        recorder.start(frames_k[0])
        for frame in frames_k[1:]:
            recorder.add(frame)
        written.append(recorder.save(f"{file.stem}_sample{k}"))
    setting = "goal-conditioned" if goal else "action-conditioned" if act is not None else "action-free"
    height, width = frames.shape[1:3]
    print(f"{cfg.samples} samples ({setting}, {t0} context + {horizon} predicted frames at stride {fmt.stride}, "
          f"{height}x{width} -> {resolution}x{resolution}, {elapsed:.1f} s): real | predicted in")
    for path in written:
        print(f"  {path}")
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI; returns the exit code (2 with one line on stderr for a bad setting, path or file)."""
    try:
        predict(PredictConfig.from_args(sys.argv[1:] if argv is None else argv))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
