"""Tokenizer quality probe: can a from-scratch tokenizer reconstruct future frames below copying the last frame?

    python experiments/wm_quality.py --data DIR [--val-data DIR] [--steps 300] [--eval-every 50] [--batch 4]
        [--segment 8] [--lr 5e-4] [--preset cpu] [--restart-dead] [--codebook-init data]
        [--codebook-lr-scale 1] [--window 25] [--beta 1.0] [--threads 1] [--seed 0] [--out FILE.json]
    python experiments/wm_quality.py --data DIR --motion-only

Trains only the tokenizer (``WorldModelTrainer.update_tokenizer``, no LPIPS, dropout off, float32) on segments
of the episodes under ``--data`` and, every ``--eval-every`` updates, scores a fixed batch of segments
(``--eval-segments``, drawn once from ``--val-data`` or else from the training episodes: the overfit check):
future-frame reconstruction MSE (tokenize -> detokenize, the frames after the T0 context frames) next to the MSE
of copying the last context frame, context-frame reconstruction MSE, and both codebooks' health (the trainer's
``tokenizer/{context,dynamics}_{codes_used,perplexity,dead_codes}``, means over the updates since the last row).
``--fixed-batch`` trains on the scored batch itself (can the tokenizer fit a few segments at all?).
``--motion-only`` prints what share of future frames differ from the last context frame (and by how much)
and exits. One JSON line per row on stdout; ``--out`` also writes them all to a file.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from core.batch import SegmentBatch
from world_model.build import build_model
from world_model.data.dataset import EpisodeDataset
from world_model.parts import to_unit
from world_model.training import OptimConfig, WorldModelTrainer

CONTEXT = 2
MOTION_THRESHOLD = 1e-3  # per-frame MSE to the last context frame above which a future frame "shows motion"


def motion(batch: SegmentBatch) -> dict[str, float]:
    """Share of future frames whose MSE to the last context frame exceeds ``MOTION_THRESHOLD``, that MSE's
    mean and median, and the share of pixels changed by more than 8/255 in any channel."""
    frames = to_unit(batch.frames)
    future, last = frames[:, CONTEXT:], frames[:, CONTEXT - 1:CONTEXT]
    per_frame = ((future - last) ** 2).mean(dim=(2, 3, 4)).flatten()
    changed = ((future - last).abs().amax(dim=2) > 8 / 255).float().mean()
    return {"moving_frames": (per_frame > MOTION_THRESHOLD).float().mean().item(),
            "copy_last_mse_mean": per_frame.mean().item(), "copy_last_mse_median": per_frame.median().item(),
            "changed_pixels": changed.item()}


@torch.no_grad()
def reconstruction(trainer: WorldModelTrainer, batch: SegmentBatch) -> dict[str, float]:
    """Future and context reconstruction MSE through the codes, and copy-last MSE, on ``batch``."""
    tokenizer = trainer.model.tokenizer
    was_training = tokenizer.training
    tokenizer.eval()
    frames = to_unit(batch.frames)
    ctx, dyn = tokenizer.tokenize(frames, CONTEXT)
    recon = tokenizer.detokenize(ctx, dyn).float()
    tokenizer.train(was_training)
    future = frames[:, CONTEXT:]
    return {"future_mse": ((recon[:, CONTEXT:] - future) ** 2).mean().item(),
            "context_mse": ((recon[:, :CONTEXT] - frames[:, :CONTEXT]) ** 2).mean().item(),
            "copy_last_mse": ((frames[:, CONTEXT - 1:CONTEXT] - future) ** 2).mean().item(),
            "eval_context_codes": int(ctx.unique().numel()), "eval_dynamics_codes": int(dyn.unique().numel())}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--val-data")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-segments", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--segment", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=None, help="commitment beta (default: the preset's)")
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--restart-dead", action="store_true")
    p.add_argument("--codebook-init", default="uniform", choices=("uniform", "data"))
    p.add_argument("--codebook-lr-scale", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fixed-batch", action="store_true", help="train on the eval batch itself (capacity check)")
    p.add_argument("--motion-only", action="store_true")
    p.add_argument("--out")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    data = EpisodeDataset(a.data, a.segment, seed=a.seed)
    eval_source = EpisodeDataset(a.val_data, a.segment) if a.val_data else data
    eval_batch = eval_source.sample(a.eval_segments, np.random.default_rng(a.seed + 1000))
    if a.motion_only:
        row = {"data": a.val_data or a.data, "segments": a.eval_segments, **motion(eval_batch)}
        print(json.dumps(row), flush=True)
        return [row]
    overrides = {} if a.beta is None else {"commitment_beta": a.beta}
    model = build_model(a.preset, None, action_dim=None, reward_head=False, image_size=data.frame_shape[1],
                        context_frames=CONTEXT, tokenizer_overrides=overrides)
    cfg = OptimConfig(tokenizer_lr=a.lr, mixed_precision=False, codebook_window=a.window,
                      restart_dead_codes=a.restart_dead, codebook_init=a.codebook_init,
                      codebook_lr_scale=a.codebook_lr_scale)
    trainer = WorldModelTrainer(model, cfg)
    rows: list[dict[str, float]] = []
    sums: dict[str, float] = defaultdict(float)
    count, seconds = 0, 0.0

    def report(step: int) -> None:
        row = {"step": step, **reconstruction(trainer, eval_batch),
               **{k.split("/", 1)[1]: v / max(count, 1) for k, v in sums.items()
                  if "codes" in k or "perplexity" in k or "recon_l1" in k},
               "train_s": round(seconds, 1)}
        rows.append(row)
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    report(0)
    for step in range(1, a.steps + 1):
        started = time.perf_counter()
        metrics = trainer.update_tokenizer(eval_batch if a.fixed_batch else data.sample(a.batch))
        seconds += time.perf_counter() - started
        for key, value in metrics.items():
            sums[key] += value
        count += 1
        if step % a.eval_every == 0 or step == a.steps:
            report(step)
            sums.clear()
            count = 0
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
