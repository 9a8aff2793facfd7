"""Entry point: ``python -m world_model.evaluate checkpoint=DIR data=DIR dataset=NAME out=DIR [key=value ...]``

Video-prediction evaluation of an iVideoGPT checkpoint with the paper's protocol (docs/video_prediction.md):
N samples per test clip, per-metric best-of-N of PSNR / SSIM / LPIPS / MSE averaged over clips, FVD of the real
clips against all generated ones. Writes into ``out``: ``metrics.json``, ``report.md`` (beside the paper's numbers),
``clips.csv`` (best-of-N per clip), ``samples.csv`` (every sample's scores), ``samples.gif`` (real clip, then a
few samples, for the first clips) and ``features/`` (I3D features per clip). A killed run started again with the
same ``out`` resumes after the clips already in ``clips.csv``.

Options (defaults in ``EvalConfig``): ``context_frames`` / ``segment_length`` / ``clips`` (auto: the dataset's
protocol), ``samples=100``, ``batch=100`` rollouts per reset, ``action_conditioned=auto|true|false``,
``score_context=true`` (headline numbers over all T frames, as the paper; false: predicted frames only),
``fvd.i3d=PATH`` (StyleGAN-V ``i3d_torchscript.pt``; without it FVD is skipped), ``lpips=DIR`` (LPIPS weights;
without them LPIPS is skipped), ``split=held_out|all``, ``temperature=1.0``, ``top_k=100``, ``device=auto``,
``seed=0``, ``precision=auto|float32|bfloat16`` (imagination engine), ``image_size=auto``, ``gif_clips=4``, ``gif_samples=3``, ``num_threads=auto``, ``progress_bar=true``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core.config import parse_key_values
from core.io import atomic_write
from core.runtime import configure_threads, pick_device
from world_model.clip_scoring import (
    METRICS,
    ClipScorer,
    SamplingSettings,
    load_checked_model,
    resolve_actions,
)
from world_model.data.formats import DatasetFormat, get_format, held_out_files, load_clip
from world_model.eval_outputs import (
    append_rows,
    read_rows,
    save_features,
    summarize,
    write_gif,
    write_report,
    write_rows,
)
from world_model.fvd import I3DFeatures
from world_model.lpips import LPIPS_FILENAME, VGG_FILENAMES, build_perceptual
from world_model.metrics import best_of_n
from world_model.model import IVideoGPT

I3D_BATCH = 16  # videos per I3D call (it resizes them to 224x224 inside)


@dataclass
class EvalConfig(SamplingSettings):
    """The settings of one evaluation (``key=value`` on the command line; ``fvd.i3d`` is ``fvd_i3d`` here)."""

    data: str = ""
    out: str = ""
    dataset: str = "metaworld"
    segment_length: str = "auto"
    clips: str = "auto"
    samples: int = 100
    batch: int = 100
    score_context: bool = True
    fvd_i3d: str | None = None
    lpips: str | None = None
    split: str = "held_out"
    image_size: str = "auto"
    gif_clips: int = 4
    gif_samples: int = 3
    progress_bar: bool = True

    # settings that must match for a run to resume in the same out folder
    RESUME_KEYS = ("checkpoint", "data", "dataset", "context_frames", "segment_length", "samples", "batch",
                   "action_conditioned", "score_context", "fvd_i3d", "lpips", "split", "temperature", "top_k",
                   "seed", "precision")

    @classmethod
    def from_args(cls, args: list[str]) -> EvalConfig:
        """Parse ``key=value`` arguments (one-line errors for unknown keys and bad values)."""
        values = parse_key_values(cls, args, dotted=("fvd.i3d",))
        config = cls(**values)
        for key in ("checkpoint", "data", "out"):
            if not getattr(config, key):
                raise ValueError(f"{key}=... is required: python -m world_model.evaluate checkpoint=DIR data=DIR "
                                 "dataset=NAME out=DIR")
        if config.samples < 1 or config.batch < 1:
            raise ValueError(f"samples and batch must be >= 1, got samples={config.samples} batch={config.batch}")
        if config.split not in ("held_out", "all"):
            raise ValueError(f"split={config.split!r} must be held_out (every 100th file) or all")
        return config


def _auto_int(value: str, default: int | None, name: str) -> int:
    if value != "auto":
        try:
            return int(value)
        except ValueError as err:
            raise ValueError(f"{name}={value!r} must be a number or auto") from err
    if default is None:
        raise ValueError(f"{name}=auto has no protocol value for this dataset; pass {name}=N")
    return default


@dataclass
class Plan:
    """What the evaluation will score, resolved from the config, the model and the data."""

    fmt: DatasetFormat
    files: list[Path]
    context_frames: int
    segment_length: int
    use_actions: bool
    setting: str  # action_free | action_conditioned
    notes: list[str]
    device: str = "cpu"


def make_plan(cfg: EvalConfig, model: IVideoGPT) -> Plan:
    """Check the request against the checkpoint and the data (one-line errors) and pick the test clips."""
    fmt = get_format(cfg.dataset)
    notes: list[str] = []
    t0 = _auto_int(cfg.context_frames, fmt.context_frames or model.context_frames, "context_frames")
    length = _auto_int(cfg.segment_length, fmt.segment_length, "segment_length")
    if t0 != model.context_frames:
        raise ValueError(f"the checkpoint's tokenizer has context_length {model.context_frames} but "
                         f"context_frames={t0} was asked; evaluate it with context_frames={model.context_frames}")
    horizon = length - t0
    if horizon < 1 or horizon > model.imaginer.max_horizon:
        raise ValueError(f"segment_length={length} with {t0} context frames asks for {horizon} imagined frames; "
                         f"this checkpoint can imagine 1 to {model.imaginer.max_horizon} (max_position_embeddings)")
    resolution = model.tokenizer.config.resolution
    if cfg.image_size != "auto" and _auto_int(cfg.image_size, None, "image_size") != resolution:
        raise ValueError(f"image_size={cfg.image_size} but the checkpoint's tokenizer takes {resolution}x"
                         f"{resolution} frames; pass image_size=auto (frames are resized to {resolution})")
    if cfg.split == "all":
        folder = Path(cfg.data)
        files = sorted(folder.rglob("*.npz")) if folder.is_dir() else []
        if not files:
            raise ValueError(f"no .npz episodes under {folder}; pass data=DIR of episode .npz files")
        notes.append(f"split=all: scoring the {len(files)} files under {folder} in sorted order")
    else:
        files, note = held_out_files(cfg.data)
        notes.append(note)
    wanted = _auto_int(cfg.clips, fmt.clips or len(files), "clips")
    if wanted < len(files):
        files = files[:wanted]
    elif wanted > len(files):
        notes.append(f"clips={wanted} asked but the split has {len(files)}; scoring {len(files)}")
    use_actions = resolve_actions(cfg.action_conditioned, model.action_dim, fmt)
    return Plan(fmt, files, t0, length, use_actions, "action_conditioned" if use_actions else "action_free", notes)


def _check_clip(file: Path, actions: np.ndarray | None, plan: Plan, action_dim: int | None) -> None:
    if not plan.use_actions:
        return
    if actions is None:
        raise ValueError(f"{file} has no 'action' array; the action-conditioned checkpoint needs one")
    if actions.shape[1] != action_dim:
        raise ValueError(f"{file} has {actions.shape[1]}-d actions but the checkpoint takes {action_dim}-d ones")


def evaluate(cfg: EvalConfig) -> dict:
    """Run (or resume) an evaluation; returns the ``metrics.json`` content."""
    out = Path(cfg.out)
    configure_threads(cfg.num_threads if cfg.num_threads == "auto" else int(cfg.num_threads))
    device = pick_device(cfg.device)
    model = load_checked_model(cfg.checkpoint, device, cfg.precision)
    plan = make_plan(cfg, model)
    plan.device = str(device)
    lpips_model = _lpips(cfg.lpips, device)
    i3d = I3DFeatures(cfg.fvd_i3d, device, batch=min(cfg.batch, I3D_BATCH)) if cfg.fvd_i3d else None
    for note in plan.notes + ([] if i3d else ["FVD skipped: no I3D detector given (fvd.i3d=PATH)"]) + \
            ([] if lpips_model else ["LPIPS skipped: no LPIPS weights given (lpips=DIR)"]):
        tqdm.write(note)
    _check_resume(out, cfg)
    done = {int(row["clip"]): row for row in read_rows(out / "clips.csv")}
    for clip, row in done.items():
        if clip >= len(plan.files) or row["file"] != str(plan.files[clip].relative_to(cfg.data)):
            raise ValueError(f"{out / 'clips.csv'} lists clip {clip} ({row['file']}), which is not clip {clip} of "
                             f"this test split of {len(plan.files)} clips; use a new out=DIR or the same clips=")
    # samples of clips that were not finished (killed between the two writes) are dropped
    write_rows(out / "samples.csv", [r for r in read_rows(out / "samples.csv") if int(r["clip"]) in done])
    scorer = ClipScorer(model, cfg.samples, cfg.batch, plan.use_actions, cfg.temperature, cfg.top_k, cfg.seed,
                        lpips_model, i3d, cfg.score_context)
    gif: list[tuple[np.ndarray, np.ndarray]] = []
    todo = [i for i in range(len(plan.files)) if i not in done]
    start = time.perf_counter()
    for i in tqdm(todo, desc="clips", disable=not cfg.progress_bar, dynamic_ncols=True):
        file = plan.files[i]
        frames, actions = load_clip(file, plan.fmt, plan.segment_length, with_actions=plan.use_actions)
        _check_clip(file, actions, plan, model.action_dim)
        result = scorer.score(i, frames, actions)
        if result.real_features is not None:
            save_features(out / "features" / f"clip_{i:05d}.npz", result.real_features, result.generated_features)
        names = list(result.scores)
        append_rows(out / "samples.csv", [{"clip": i, "sample": s, **{k: result.scores[k][s] for k in names}}
                                          for s in range(cfg.samples)])
        best = {k: float(best_of_n(v, METRICS[k.rsplit("_", 1)[0]])) for k, v in result.scores.items()}
        append_rows(out / "clips.csv", [{"clip": i, "file": str(file.relative_to(cfg.data)), **best}])
        if i < cfg.gif_clips:
            gif.append((result.real, result.generated[:cfg.gif_samples]))
            if len(gif) == min(cfg.gif_clips, len(plan.files)) or i == todo[-1]:
                write_gif(out / "samples.gif", gif)
    elapsed = time.perf_counter() - start
    summary = summarize(out, cfg, plan, len(todo), elapsed)
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2) + "\n"))
    write_report(out / "report.md", summary, plan.fmt)
    return summary


def _lpips(path: str | None, device: torch.device) -> torch.nn.Module | None:
    if not path:
        return None
    folder = Path(path)
    if not any((folder / n).is_file() for n in VGG_FILENAMES) or not (folder / LPIPS_FILENAME).is_file():
        raise FileNotFoundError(f"lpips={folder} must hold {' or '.join(VGG_FILENAMES)} and {LPIPS_FILENAME}; "
                                "leave lpips out to skip LPIPS")
    return build_perceptual(folder).to(device)


def _check_resume(out: Path, cfg: EvalConfig) -> None:
    record = {k: getattr(cfg, k) for k in EvalConfig.RESUME_KEYS}
    file = out / "config.json"
    if file.is_file():
        old = json.loads(file.read_text())
        changed = [k for k in EvalConfig.RESUME_KEYS if old.get(k) != record[k]]
        if changed:
            raise ValueError(f"{out} holds an evaluation with other settings ({', '.join(changed)}); "
                             "use a new out=DIR or the same settings to resume it")
        return
    atomic_write(file, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))


def main(argv: list[str] | None = None) -> int:
    """CLI; returns the exit code (2 with one line on stderr for a bad setting, path or file)."""
    try:
        cfg = EvalConfig.from_args(sys.argv[1:] if argv is None else argv)
        summary = evaluate(cfg)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tqdm.write(json.dumps({k: summary[k] for k in ("headline", "fvd") if k in summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
