"""Scoring one test clip the iVideoGPT way: N imagined samples from its context, per-sample frame metrics and
FVD features (used by ``python -m world_model.evaluate``).

A generated video is the tokenizer's reconstruction of the T0 context frames followed by the T - T0 frames the
model imagines through ``reset`` / ``step`` (under the clip's real actions when it is action-conditioned).
Each sample's PSNR, SSIM (x100), LPIPS (x100) and MSE are averaged over the clip's frames, once over all T frames
and once over the predicted frames only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.precision import PRECISIONS
from core.runtime import derive_seed
from world_model import metrics
from world_model.data.formats import DatasetFormat, get_format
from world_model.fvd import I3DFeatures
from world_model.imagination_config import ImaginationConfig
from world_model.lpips import LPIPS
from world_model.model import (
    IVideoGPT,
)


@dataclass
class SamplingSettings:
    """What `world_model.evaluate` and `world_model.predict` both take: the checkpoint, the data's format, how
    the samples are drawn, and where they run (``key=value`` on their command lines)."""

    checkpoint: str = ""
    dataset: str = ""
    context_frames: str = "auto"
    samples: int = 5
    action_conditioned: str = "auto"  # auto: as the checkpoint | true | false
    temperature: float = 1.0
    top_k: int = 100
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # the imagination engine's (core.precision)
    num_threads: str = "auto"

    def __post_init__(self) -> None:
        """One-line errors for the settings both command lines share (their own are checked by each)."""
        if self.dataset:  # an unknown name fails before the model loads (a missing one: the CLI says so)
            get_format(self.dataset)
        if self.action_conditioned not in ("auto", "true", "false"):
            raise ValueError(f"action_conditioned={self.action_conditioned!r} must be auto, true or false")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}")
        if self.num_threads != "auto" and not (self.num_threads.isdigit() and int(self.num_threads) > 0):
            raise ValueError(f"num_threads={self.num_threads!r} must be auto or a positive number")


def resolve_actions(flag: str, action_dim: int | None, fmt: DatasetFormat) -> bool:
    """Whether the rollouts are action-conditioned, from ``action_conditioned`` (auto | true | false), the
    checkpoint's action size (None: action-free) and the dataset's format (one-line errors when they disagree)."""
    if action_dim is None:
        if flag == "true":
            raise ValueError("action_conditioned=true but the checkpoint is action-free (no action_linear); pass "
                             "action_conditioned=auto")
        return False
    if flag == "false":
        raise ValueError(f"action_conditioned=false but the checkpoint takes {action_dim}-d actions at every step; "
                         "run it action-conditioned (action_conditioned=auto)")
    if fmt.actions == "none":
        raise ValueError(f"the checkpoint is action-conditioned but dataset={fmt.name} is read without actions; "
                         "use an action-free checkpoint or a dataset with actions")
    return True


#: metric -> higher is better; SSIM and LPIPS are reported x100 as in the paper.
METRICS: dict[str, bool] = {"psnr": True, "ssim": True, "lpips": False, "mse": False}
SCALE = {"psnr": 1.0, "ssim": 100.0, "lpips": 100.0, "mse": 1.0}
SCOPES = ("all", "pred")  # all T frames (context reconstruction included) / predicted frames only


def load_checked_model(path: str | Path, device: torch.device, precision: str = "auto") -> IVideoGPT:
    """``IVideoGPT.from_pretrained`` after checking that each file of the folder can be read (one-line errors
    that name a missing or damaged file).

    Args:
        path: the checkpoint folder (published layout).
        device: where the model runs.
        precision: the imagination engine's precision for decode weights, frame decoder and prefill: ``auto``
            (the engine's choice: bfloat16 where native) or ``float32`` / ``bfloat16`` for all three.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} must be one of {', '.join(PRECISIONS)}")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint folder {root} does not exist; pass checkpoint=DIR in the published "
                                "layout (tokenizer/ + transformer/)")
    engine = ImaginationConfig(precision=precision, decoder_precision=precision, prefill_precision=precision)
    return IVideoGPT.from_pretrained(root, imagination=engine).to(device).eval()


def to_model_frames(frames: np.ndarray, resolution: int, device: torch.device) -> torch.Tensor:
    """uint8 frames ``(T, H, W, 3)`` -> float ``(1, T, 3, R, R)`` in [0, 1], resized (bilinear, antialiased)
    when they are not ``R x R``."""
    video = torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() / 255.0
    if video.shape[-2:] != (resolution, resolution):
        video = F.interpolate(video, size=(resolution, resolution), mode="bilinear", antialias=True,
                              align_corners=False).clamp(0.0, 1.0)
    return video.unsqueeze(0)


@dataclass
class ClipResult:
    """One clip's per-sample scores and what FVD and the GIF need.

    Attributes:
        scores: ``f"{metric}_{scope}"`` -> (N,) float64 per-sample values in the paper's units.
        real_features, generated_features: I3D features (1, D) and (N, D), None without a detector.
        real, generated: uint8 videos (T, 3, H, W) and (N, T, 3, H, W) as scored (model resolution).
    """

    scores: dict[str, np.ndarray]
    real_features: np.ndarray | None
    generated_features: np.ndarray | None
    real: np.ndarray
    generated: np.ndarray


class ClipScorer:
    """Samples and scores clips with one model.

    Args:
        model: the world model (eval mode, on its device).
        samples: N, rollouts per clip.
        batch: most rollouts per ``reset`` (a clip's samples go in ``ceil(N / batch)`` batches).
        use_actions: feed the clip's actions to ``step`` (the model must be action-conditioned).
        temperature, top_k: sampling of the dynamics codes (the paper: 1.0, 100).
        seed: run seed; batch j of clip i samples with seed ``derive_seed(seed, i, j)``.
        lpips_model: LPIPS network for the LPIPS score (None: no LPIPS).
        i3d: FVD feature extractor (None: no features).
        score_context: FVD on all T frames (True) or on the predicted frames only.
    """

    def __init__(self, model: IVideoGPT, samples: int, batch: int, use_actions: bool, temperature: float = 1.0,
                 top_k: int | None = 100, seed: int = 0, lpips_model: LPIPS | None = None,
                 i3d: I3DFeatures | None = None, score_context: bool = True) -> None:
        self.model, self.samples, self.batch, self.use_actions = model, samples, batch, use_actions
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self.lpips_model, self.i3d, self.score_context = lpips_model, i3d, score_context
        self.device = model.transformer.llm.lm_head.weight.device
        self.resolution = model.tokenizer.config.resolution

    @torch.no_grad()
    def imagine(self, real: torch.Tensor, actions: torch.Tensor | None, clip_index: int) -> torch.Tensor:
        """N generated videos of one clip.

        Args:
            real: (1, T, 3, H, W) float in [0, 1].
            actions: (1, T, A) or None.
            clip_index: seeds the sampling.

        Returns:
            (N, T, 3, H, W) float in [0, 1]: reconstructed context frames, then the imagined ones.
        """
        t0, horizon = self.model.context_frames, real.shape[1] - self.model.context_frames
        context = real[:, :t0]
        tok = self.model.tokenizer
        recon = tok.decode_context(tok.encode_context(context)).float().clamp(0.0, 1.0)
        videos = []
        for j, start in enumerate(range(0, self.samples, self.batch)):
            rows = min(self.batch, self.samples - start)
            generator = torch.Generator(self.device).manual_seed(derive_seed(self.seed, clip_index, j))
            self.model.reset(context.expand(rows, -1, -1, -1, -1), horizon=horizon, temperature=self.temperature,
                             top_k=self.top_k, generator=generator)
            frames = []
            for k in range(horizon):
                step_actions = None if actions is None else actions[:, t0 - 1 + k].expand(rows, -1)
                frame, _ = self.model.step(step_actions)
                frames.append(frame.float().clamp(0.0, 1.0))
            videos.append(torch.cat([recon.expand(rows, -1, -1, -1, -1), torch.stack(frames, dim=1)], dim=1))
        return torch.cat(videos)

    def per_frame(self, generated: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """metric -> (N, T) per-frame values in the paper's units."""
        n, t = generated.shape[:2]
        x = generated.flatten(0, 1)
        y = real.expand_as(generated).flatten(0, 1)
        values = {"psnr": metrics.psnr(x, y), "ssim": metrics.ssim(x, y), "mse": metrics.mse(x, y)}
        if self.lpips_model is not None:
            values["lpips"] = metrics.lpips(self.lpips_model, x, y)
        return {name: (v * SCALE[name]).view(n, t) for name, v in values.items()}

    def score(self, clip_index: int, frames: np.ndarray, actions: np.ndarray | None) -> ClipResult:
        """Sample and score one clip.

        Args:
            clip_index: position of the clip in the test split (seeds its sampling).
            frames: uint8 (T, H, W, 3).
            actions: float (T, A) (``actions[t]`` taken at frame t) or None.
        """
        real = to_model_frames(frames, self.resolution, self.device)
        act = None
        if self.use_actions:
            if actions is None:
                raise ValueError("the evaluation is action-conditioned but a clip has no actions; pass "
                                 "action_conditioned=false with an action-free checkpoint")
            act = torch.from_numpy(actions).to(self.device, torch.float32).unsqueeze(0)
        generated = self.imagine(real, act, clip_index)
        t0 = self.model.context_frames
        scores: dict[str, np.ndarray] = {}
        for name, values in self.per_frame(generated, real).items():
            scores[f"{name}_all"] = values.mean(dim=1).double().cpu().numpy()
            scores[f"{name}_pred"] = values[:, t0:].mean(dim=1).double().cpu().numpy()
        real_feat = gen_feat = None
        if self.i3d is not None:
            first = 0 if self.score_context else t0
            real_feat = self.i3d(real[:, first:]).numpy()
            gen_feat = self.i3d(generated[:, first:]).numpy()
        as_uint8 = (lambda v: (v * 255.0).round().to(torch.uint8).cpu().numpy())
        return ClipResult(scores, real_feat, gen_feat, as_uint8(real[0]), as_uint8(generated))


def _uint8(video: torch.Tensor) -> np.ndarray:
    return (video * 255.0).round().to(torch.uint8).cpu().numpy()
