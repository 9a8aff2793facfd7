"""Open-loop prediction of a world-model checkpoint on held-out episodes, against copying the last frame.

    python experiments/wm_open_loop.py --checkpoint RUN/checkpoint --data DIR [--segments 128]
        [--segment-length 12] [--temperatures 1.0,0] [--top-k 100] [--batch 32] [--seed 0] [--threads 2]
        [--reward-alignment clean] [--json FILE]

Draws ``--segments`` segments (seeded) from the episodes under ``--data``, imagines each one's future from its
first T0 frames under its real actions (``world_model.evaluation.evaluate_open_loop``, the engine MBPO's rollouts
use) once per sampling temperature (0: greedy), in batches of ``--batch``, and prints one Markdown row per
temperature: open-loop PSNR (mean over the imagined steps, and at the last one) next to copy-last's, the
tokenizer's reconstruction of the future and context frames (the floor the open loop can reach), the future
reconstruction MSE as a multiple of copy-last's, and the reward MSE. More segments than a training run's
validation and a greedy row separate the model's error from sampling noise.

A second table looks at the tokens: the transformer's teacher-forced greedy accuracy on the future frames' codes
(each predicted from the real tokens before it), the PSNR of the frames decoded from those predictions, and the
accuracy of copying each code from the previous future frame (frames 2..H, where there is one): a transformer
below that baseline has not yet learned that most codes persist from frame to frame.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from core.batch import SegmentBatch
from core.runtime import configure_threads
from world_model.data.mixture import load_data
from world_model.evaluation import evaluate_open_loop, psnr, weighted_means
from world_model.model import IVideoGPT
from world_model.parts import batch_actions, micro_batches, to_unit

TOKEN_HEADER = ("segments", "teacher-forced code accuracy", "same, frames 2..H", "copy-previous-code accuracy (2..H)",
                "teacher-forced decoded PSNR", "future recon PSNR")
HEADER = ("temperature", "segments", "open-loop PSNR", "copy-last PSNR", "difference", "step-H PSNR (copy-last)",
          "future recon PSNR", "context recon PSNR", "future recon / copy-last MSE", "reward MSE")


def score(model: IVideoGPT, batches: list[SegmentBatch], temperature: float, top_k: int | None,
          seed: int) -> dict[str, float]:
    """Row-weighted means of ``evaluate_open_loop``'s per-step scores over ``batches``."""
    generator = torch.Generator().manual_seed(seed)
    parts = [(b.frames.shape[0], evaluate_open_loop(model, b, temperature, top_k, generator, per_step=True).scores)
             for b in batches]
    return weighted_means(parts) | {"segments": float(sum(n for n, _ in parts))}


@torch.no_grad()
def token_scores(model: IVideoGPT, batch: SegmentBatch) -> dict[str, float]:
    """Teacher-forced greedy accuracy on the future codes of ``batch`` (frames (B, T, 3, H, W)), the PSNR of
    the frames those predictions decode to, and the accuracy of copying each code from the previous frame (the
    tokenizer's own reconstruction is ``evaluate_open_loop``'s ``recon_psnr``)."""
    frames = to_unit(batch.frames)
    tokens, _ = model.tokenize(frames)
    layout = model.layout_for(tokens)
    logits, _ = model.logits(tokens, batch_actions(model, batch))
    positions = layout.future_positions.to(tokens.device)  # (K, n) ids of each future frame's codes
    dynamics = slice(layout.dynamics_offset, layout.dynamics_offset + layout.dynamics_vocab_size)
    predicted = tokens.clone()
    predicted[:, positions] = logits[:, positions - 1, dynamics].argmax(-1) + layout.dynamics_offset
    hit = predicted[:, positions] == tokens[:, positions]  # (B, K, n)
    copy_hit = tokens[:, positions[1:]] == tokens[:, positions[:-1]]
    t0 = model.context_frames

    def frame_psnr(y: torch.Tensor) -> float:
        mse = (y[:, t0:].float().clamp(0, 1) - frames[:, t0:]).pow(2).mean(dim=(2, 3, 4))
        return psnr(mse).mean().item()

    return {"tf_accuracy": hit.float().mean().item(), "tf_accuracy_2": hit[:, 1:].float().mean().item(),
            "copy_previous_accuracy": copy_hit.float().mean().item(),
            "tf_psnr": frame_psnr(model.detokenize(predicted))}


def row(temperature: float, s: dict[str, float]) -> str:
    h = int(s["horizon"])
    reward = f"{s['reward_mse']:.3g}" if "reward_mse" in s else "-"
    cells = [f"{temperature:g}", str(int(s["segments"])), f"{s['psnr']:.2f}", f"{s['copy_last_psnr']:.2f}",
             f"{s['psnr'] - s['copy_last_psnr']:+.2f}", f"{s[f'psnr_{h}']:.2f} ({s[f'copy_last_psnr_{h}']:.2f})",
             f"{s['recon_psnr']:.2f}", f"{s['context_recon_psnr']:.2f}",
             f"{s['recon_mse'] / s['copy_last_mse']:.2f}", reward]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--segments", type=int, default=128)
    p.add_argument("--segment-length", type=int, default=12)
    p.add_argument("--temperatures", default="1.0,0")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reward-alignment", default="clean", choices=("clean", "official"),
                   help="the alignment the reward head was trained with (world_model.train's reward_alignment)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.threads:
        configure_threads(args.threads)
    model = IVideoGPT.from_pretrained(args.checkpoint, reward_alignment=args.reward_alignment).eval()
    data = load_data(args.data, args.segment_length)
    drawn = data.sample(args.segments, np.random.default_rng(args.seed))
    batches = micro_batches(drawn, math.ceil(args.segments / args.batch))
    results = {}
    print("| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER))
    for temperature in (float(t) for t in args.temperatures.split(",")):
        results[temperature] = score(model, batches, temperature, args.top_k, args.seed)
        print(row(temperature, results[temperature]), flush=True)
    tokens = weighted_means([(b.frames.shape[0], token_scores(model, b)) for b in batches])
    recon = next(iter(results.values()))["recon_psnr"]  # the tokenizer's: the same at every temperature
    print("\n| " + " | ".join(TOKEN_HEADER) + " |\n|" + "---|" * len(TOKEN_HEADER))
    print(f"| {args.segments} | {tokens['tf_accuracy']:.3f} | {tokens['tf_accuracy_2']:.3f} | "
          f"{tokens['copy_previous_accuracy']:.3f} | {tokens['tf_psnr']:.2f} | {recon:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(t): s for t, s in results.items()} | {"tokens": dict(tokens)}, f, indent=1)
    return results | {"tokens": dict(tokens)}


if __name__ == "__main__":
    main()
