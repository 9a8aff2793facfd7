"""The files ``python -m world_model.evaluate`` writes: CSV rows, the summary (``metrics.json``), ``report.md``
and the GIF grid of real clips beside generated samples."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imageio.v2 as imageio
import numpy as np

from core.io import atomic_write
from world_model.clip_scoring import METRICS, SCOPES
from world_model.data.formats import DatasetFormat
from world_model.metrics import FeatureStats, fvd_from_stats

if TYPE_CHECKING:
    from world_model.evaluate import EvalConfig, Plan

SCOPE_NAMES = {"all": "all_frames", "pred": "predicted_frames"}
UNITS = "psnr dB; ssim x100; lpips x100; mse on [0, 1] frames; fvd on I3D features"


# ---------------------------------------------------------------------------------------------- CSV
def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file (none when it does not exist)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a CSV file with ``rows`` (removed when there are none)."""
    if not rows:
        path.unlink(missing_ok=True)
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows to a CSV file (header written first when the file is new), flushed to disk."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def save_features(path: Path, real: np.ndarray, generated: np.ndarray) -> None:
    """One clip's I3D features (real (1, D), generated (N, D)), written atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, real=real, generated=generated)

    atomic_write(path, write)


# ------------------------------------------------------------------------------------------ summary
def mean_scores(rows: list[dict[str, str]]) -> dict[str, dict[str, float]]:
    """Per-clip best-of-N rows -> scope name -> metric -> mean over clips."""
    out: dict[str, dict[str, float]] = {}
    for scope in SCOPES:
        values = {m: float(np.mean([float(r[f"{m}_{scope}"]) for r in rows]))
                  for m in METRICS if rows and f"{m}_{scope}" in rows[0]}
        out[SCOPE_NAMES[scope]] = values
    return out


def fvd_of(out: Path, clips: list[int]) -> float:
    """FVD of every clip's real features against all its generated samples' features (files in features/)."""
    real = generated = None
    for clip in clips:
        file = out / "features" / f"clip_{clip:05d}.npz"
        if not file.is_file():
            raise ValueError(f"{file} is missing: clip {clip} was scored without fvd.i3d; use a new out=DIR")
        with np.load(file) as data:
            if real is None:
                real, generated = FeatureStats(data["real"].shape[1]), FeatureStats(data["real"].shape[1])
            real.update(data["real"])
            generated.update(data["generated"])
    if real is None or real.count < 2:
        raise ValueError("FVD needs at least 2 clips; score more clips (clips=N)")
    return fvd_from_stats(real, generated)


def summarize(out: Path, cfg: EvalConfig, plan: Plan, new_clips: int, elapsed: float) -> dict[str, Any]:
    """The content of ``metrics.json`` from ``clips.csv`` (and the FVD features), resumed clips included."""
    rows = read_rows(out / "clips.csv")
    scores = mean_scores(rows)
    headline_scope = SCOPE_NAMES["all" if cfg.score_context else "pred"]
    fvd = fvd_of(out, [int(r["clip"]) for r in rows]) if cfg.fvd_i3d and len(rows) >= 2 else None
    notes = list(plan.notes)
    if cfg.fvd_i3d and fvd is None:
        notes.append("FVD needs at least 2 clips: not computed")
    return {
        "dataset": plan.fmt.name, "setting": plan.setting, "checkpoint": str(cfg.checkpoint),
        "clips": len(rows), "samples": cfg.samples, "context_frames": plan.context_frames,
        "segment_length": plan.segment_length, "temperature": cfg.temperature, "top_k": cfg.top_k,
        "seed": cfg.seed, "precision": cfg.precision, "device": str(plan.device), "score_context": cfg.score_context, "units": UNITS,
        "headline": {**scores[headline_scope], "fvd": fvd},
        "headline_frames": headline_scope,
        **scores,
        "fvd": fvd, "fvd_frames": headline_scope if cfg.fvd_i3d else None,
        "throughput": {"clips_this_run": new_clips, "seconds": round(elapsed, 3),
                       "clips_per_s": round(new_clips / elapsed, 4) if new_clips and elapsed > 0 else None},
        "notes": notes,
    }


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_report(path: Path, summary: dict[str, Any], fmt: DatasetFormat) -> None:
    """``report.md``: our numbers (headline, all frames, predicted frames) beside the paper's for the setting."""
    paper = fmt.paper.get(summary["setting"], {})
    lines = [
        f"# Video prediction: {summary['dataset']} ({summary['setting'].replace('_', '-')})",
        "",
        (f"Checkpoint `{summary['checkpoint']}`; {summary['clips']} clips of {summary['segment_length']} frames "
        f"({summary['context_frames']} context), {summary['samples']} samples each (temperature "
        f"{summary['temperature']}, top-k {summary['top_k']}, seed {summary['seed']}); best of the samples per "
        f"metric, then the mean over clips. Headline: {summary['headline_frames'].replace('_', ' ')}."),
        "",
        "| metric | ours | ours, all frames | ours, predicted frames | paper (64x64) |",
        "|---|---|---|---|---|",
    ]
    for metric in ("fvd", "psnr", "ssim", "lpips", "mse"):
        digits = 5 if metric == "mse" else 2
        all_frames = summary["all_frames"].get(metric) if metric != "fvd" else None
        predicted = summary["predicted_frames"].get(metric) if metric != "fvd" else None
        lines.append(f"| {metric} | {_cell(summary['headline'].get(metric), digits)} | {_cell(all_frames, digits)} "
                     f"| {_cell(predicted, digits)} | {_cell(paper.get(metric), 1)} |")
    lines += ["", f"Units: {summary['units']}. A dash: not measured (no weights given) or not reported."]
    lines += [f"- {note}" for note in summary["notes"]]
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ---------------------------------------------------------------------------------------------- GIF
def grid_frames(clips: list[tuple[np.ndarray, np.ndarray]], gap: int = 2) -> list[np.ndarray]:
    """Frames of a grid video: one row per clip, the real clip then its samples, white gaps between.

    Args:
        clips: per clip (real (T, 3, H, W), samples (S, T, 3, H, W)) uint8.

    Returns:
        T frames (H', W', 3) uint8.
    """
    columns = max(1 + len(samples) for _, samples in clips)
    t, _, h, w = clips[0][0].shape
    height, width = len(clips) * (h + gap) - gap, columns * (w + gap) - gap
    frames = []
    for k in range(t):
        canvas = np.full((height, width, 3), 255, dtype=np.uint8)
        for row, (real, samples) in enumerate(clips):
            for col, video in enumerate([real, *samples]):
                y, x = row * (h + gap), col * (w + gap)
                canvas[y:y + h, x:x + w] = video[k].transpose(1, 2, 0)
        frames.append(canvas)
    return frames


def write_gif(path: Path, clips: list[tuple[np.ndarray, np.ndarray]], fps: int = 4) -> None:
    """The grid video of :func:`grid_frames` as a looping GIF."""
    frames = grid_frames(clips)
    atomic_write(path, lambda tmp: imageio.mimsave(tmp, frames, format="GIF", duration=1000 / fps, loop=0))
