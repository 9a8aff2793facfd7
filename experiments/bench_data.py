"""Memory and sampling speed of the episode loaders: the lazy ``LazyEpisodeDataset`` (LRU cache of episodes)
for a small and a large folder, and the in-memory ``EpisodeDataset`` beside it on the small one.

    python experiments/bench_data.py [--counts 1000,20000] [--frames 20] [--size 16] [--segment 8] [--batch 32]
        [--batches 50] [--cache-episodes 64] [--folder DIR] [--json]

The episodes (``--frames`` frames of ``--size`` x ``--size``, a smooth pattern that compresses quickly, and 4-d
actions) are written once with ``np.savez_compressed`` into ``--folder/n<count>/`` (a temporary folder by
default; a kept ``--folder`` is reused). Each case runs in
a fresh process on one thread; resident memory (``VmRSS`` of ``/proc/self/status``) is read after the imports,
after building the dataset and after sampling, and throughput is segments per second over ``--batches``
batches of ``--batch`` segments after one warm-up batch.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Resident set size of this process in MiB (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (not Linux?)")


def write_episodes(folder: Path, count: int, frames: int, size: int) -> float:
    """``count`` episodes in ``folder`` (files already there are kept); returns the seconds taken."""
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size]
    base = (x + y) * (255 // max(2 * size - 2, 1))
    for i in range(count):
        file = folder / f"train_eps_{i:08d}.npz"
        if file.exists():
            continue
        shift = np.arange(frames) + i
        video = ((base[None] + shift[:, None, None]) % 256).astype(np.uint8)[..., None].repeat(3, axis=-1)
        np.savez_compressed(file, image=video, action=np.full((frames, 4), i % 7, np.float32))
    return time.perf_counter() - start


def run_case(args: argparse.Namespace) -> dict:
    """One measurement in this process (called through ``--case``)."""
    import torch

    from world_model.data.dataset import EpisodeDataset
    from world_model.data.lazy import LazyEpisodeDataset

    torch.set_num_threads(1)
    before = rss_mb()
    start = time.perf_counter()
    if args.case == "lazy":
        data = LazyEpisodeDataset(args.case_folder, "metaworld", args.segment, split="all",
                                  cache_episodes=args.cache_episodes)
    else:
        data = EpisodeDataset(args.case_folder, args.segment)
    build_s = time.perf_counter() - start
    built = rss_mb()
    rng = np.random.default_rng(0)
    data.sample(args.batch, rng)
    start = time.perf_counter()
    for _ in range(args.batches):
        data.sample(args.batch, rng)
    elapsed = time.perf_counter() - start
    row = {"loader": args.case, "episodes": len(data), "build_s": round(build_s, 3),
           "rss_imports_mb": round(before, 1), "rss_built_mb": round(built, 1), "rss_sampled_mb": round(rss_mb(), 1),
           "segments_per_s": round(args.batches * args.batch / elapsed, 1)}
    if args.case == "lazy":
        row["cache_hit_rate"] = round(data.cache.hits / max(data.cache.hits + data.cache.misses, 1), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1000,20000", help="episode counts, small first (memory loader on it)")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--segment", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--cache-episodes", type=int, default=64)
    parser.add_argument("--folder", default=None, help="where the episodes are written (kept); default: a temp dir")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--case", choices=("lazy", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--case-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return
    counts = [int(c) for c in args.counts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder or tmp)
        root.mkdir(parents=True, exist_ok=True)
        write_s = sum(write_episodes(root / f"n{c}", c, args.frames, args.size) for c in counts)
        cases = [("lazy", c) for c in counts] + [("memory", counts[0])]
        rows = []
        for loader, count in cases:
            command = [sys.executable, __file__, "--case", loader, "--case-folder", str(root / f"n{count}"),
                       "--segment", str(args.segment), "--batch", str(args.batch), "--batches", str(args.batches),
                       "--cache-episodes", str(args.cache_episodes)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    report = {"settings": {"frames": args.frames, "size": args.size, "segment": args.segment, "batch": args.batch,
                           "batches": args.batches, "cache_episodes": args.cache_episodes,
                           "write_s": round(write_s, 1)}, "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{sum(counts)} episodes of {args.frames} frames {args.size}x{args.size} written in {write_s:.1f} s; "
          f"segments of {args.segment}, batches of {args.batch}")
    print("| loader | episodes | build s | RSS after imports MiB | RSS built MiB | RSS after sampling MiB | "
          "segments/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['loader']} | {r['episodes']} | {r['build_s']} | {r['rss_imports_mb']} | {r['rss_built_mb']} | "
              f"{r['rss_sampled_mb']} | {r['segments_per_s']} |")


if __name__ == "__main__":
    main()
