"""A CPU-sized learning check of MBPO: pre-train a world model on scripted videos, then MBPO vs DrQ-v2.

    python experiments/learning_check.py [--out runs/learning_check] [--stages collect,pretrain,runs,summary]
        [--task reach] [--image-size 64] [--frames 6000] [--seed 1] [--pretrain-steps 3000] [--threads 1]
        [--pretrained DIR] [--methods drqv2,mbpo] [--mbpo-override KEY=VALUE ...]
    python experiments/learning_check.py --across runs/lc/s1 runs/lc/s2 runs/lc/s3

Not a paper setting: sized for a small CPU instead of days on a GPU. The stages, each a subprocess of
this project's own CLIs (argument lists, no shell):

1. ``collect``: scripted Meta-World episodes (``python -m mbrl.collect``, noise 0.1) of
   ``--pretrain-tasks`` (the target task is *not* among them) plus held-out ones, at ``--image-size``;
2. ``pretrain``: an action-free, reward-free world model on them (``python -m world_model.train``, the cpu
   preset), the way the paper pre-trains on robot videos before fine-tuning;
3. ``runs``: on ``--task``, same seed, same frames, ``demos`` scripted episodes in the replay: DrQ-v2 alone
   (``world_model=none``) and MBPO fine-tuning the pre-trained world model (action map and reward head added
   fresh), one after the other or ``--parallel`` (one core each). ``--pretrained`` fine-tunes another
   checkpoint (e.g. a longer pre-training run) instead of the ``pretrain`` stage's; ``--methods mbpo`` reruns
   MBPO alone (DrQ-v2 on one CPU thread is deterministic for a seed, so its run can be reused);
4. ``summary``: a Markdown table of evaluation success and return at each evaluation, and the MBPO run's
   validation: open-loop MSE of the world model on held-out real segments next to copying the last context
   frame (``val/mse``, ``val/copy_last_mse``), both runs' wall clock and MBPO's time per phase.

Seeds are separate checks: run one ``--out`` folder per ``--seed``, then ``--across`` those folders prints one
row per seed and their mean (:func:`across_seeds`).

Rerunning the script continues it: ``collect`` skips folders that hold episodes, and the training CLIs resume
from their checkpoints (``resume=auto``). What it showed on a 2-core CPU is in docs/mbpo.md ("What a CPU run
shows"): after 6,000 pre-training steps the world model still does not beat copying the last frame on reach;
its tokenizer reconstructs about as well as copy-last does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from core.logger import read_rows

PRETRAIN_TASKS = ("door_open", "drawer_open", "button_press", "push", "window_open", "drawer_close",
                  "handle_pull", "plate_slide")
HELD_OUT_TASKS = ("door_open", "push")


def run(args: list[str], log: Path | None = None, wait: bool = True) -> subprocess.Popen | None:
    """Runs ``python -m ...args`` (an argument list: nothing is parsed by a shell), logging to ``log``."""
    cmd = [sys.executable, "-m", *args]
    print("$ python -m " + " ".join(args), flush=True)
    if log is None:
        proc = subprocess.Popen(cmd)
    else:
        with open(log, "a") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    if not wait:
        return proc
    if proc.wait() != 0:
        raise SystemExit(f"failed ({proc.returncode}): python -m {' '.join(args)}" + (f"; see {log}" if log else ""))
    return None


def collect(a: argparse.Namespace, root: Path) -> None:
    for split, tasks, episodes, seed in (("train", a.pretrain_tasks, a.pretrain_episodes, 0),
                                         ("val", HELD_OUT_TASKS, 4, 1000)):
        for task in tasks:
            out = root / "data" / split / task
            if out.is_dir() and any(out.glob("*.npz")):
                continue
            run(["mbrl.collect", f"task={task}", f"episodes={episodes}", "noise=0.1", f"seed={seed}",
                 f"image_size={a.image_size}", f"out={out}"], root / "collect.log")


def pretrain(a: argparse.Namespace, root: Path) -> None:
    run(["world_model.train", f"data={root / 'data' / 'train'}", f"val_data={root / 'data' / 'val'}",
         "preset=cpu", f"steps={a.pretrain_steps}", "batch_size=8", "segment_length=8", "eval_every=500",
         "eval_segments=16", "checkpoint_every=250", "log_every=25", "transformer.lr=5e-4",
         "action_conditioned=false", "reward_head=false", f"num_threads={a.threads * (1 if a.parallel else 2)}",
         # no attention dropout in either part: CPU attention has no fused dropout (much slower steps with it)
         "attention_dropout=0.0", "tokenizer.dropout=false",
         "progress_bar=false", f"seed={a.seed}", f"out={root / 'pretrain'}"], root / "pretrain.log")


def train_args(a: argparse.Namespace, root: Path, method: str) -> list[str]:
    common = ["mbrl.train", f"task={a.task}", f"seed={a.seed}", f"demos={a.demos}", f"num_threads={a.threads}",
              f"num_train_frames={a.frames}", "agent.num_expl_steps=250", f"eval_every_frames={a.eval_every}",
              "num_eval_episodes=5", "checkpoint_every_frames=2000", f"env.image_size={a.image_size}",
              "logging.progress_bar=false", f"hydra.run.dir={root / method}"]
    if method == "drqv2":
        return [*common, "world_model=none"]
    return [*common, "world_model=ivideogpt", f"world_model.pretrained={pretrained_checkpoint(a, root)}",
            "world_model.attention_dropout=0.0",  # as pre-trained (a checkpoint otherwise gets the paper's 0.1)
            "world_model.schedule.init_train_steps=100", "world_model.schedule.imagination_start_frames=1000",
            "world_model.schedule.validate_every_episodes=2", *a.mbpo_overrides]


def pretrained_checkpoint(a: argparse.Namespace, root: Path) -> Path:
    """The world model MBPO fine-tunes: ``--pretrained`` or the ``pretrain`` stage's checkpoint."""
    return Path(a.pretrained) if a.pretrained else root / "pretrain" / "checkpoint"


def runs(a: argparse.Namespace, root: Path) -> None:
    if "mbpo" in a.methods and not pretrained_checkpoint(a, root).is_dir():
        raise SystemExit(f"no pre-trained world model at {pretrained_checkpoint(a, root)}: run the pretrain stage "
                         "or pass --pretrained DIR")
    procs = []
    for method in a.methods:
        proc = run(train_args(a, root, method), root / f"{method}.log", wait=not a.parallel)
        if proc is not None:
            procs.append((method, proc))
    for method, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"the {method} run failed ({proc.returncode}); see {root / f'{method}.log'}")


def evaluations(root: Path) -> dict[str, dict[int, dict[str, str]]]:
    """Each run's evaluation rows (``drqv2`` and ``mbpo`` under ``root``) by frame; {} for a run not started."""
    return {m: {int(r["frame"]): r for r in read_rows(root / m / "eval.csv") if r.get("eval/success_rate")}
            for m in ("drqv2", "mbpo")}


def summary(root: Path) -> str:
    """Markdown: evaluation of both runs at each evaluated frame, then the MBPO run's validations."""
    evals = evaluations(root)
    lines = ["| frame | DrQ-v2 success | DrQ-v2 return | MBPO success | MBPO return |", "|---|---|---|---|---|"]

    def cell(row: dict[str, str] | None, key: str, spec: str) -> str:
        return "-" if row is None or not row.get(key) else format(float(row[key]), spec)

    for frame in sorted(set(evals["drqv2"]) | set(evals["mbpo"])):
        d, m = evals["drqv2"].get(frame), evals["mbpo"].get(frame)
        lines.append(f"| {frame} | {cell(d, 'eval/success_rate', '.2f')} | {cell(d, 'eval/episode_return', '.0f')} "
                     f"| {cell(m, 'eval/success_rate', '.2f')} | {cell(m, 'eval/episode_return', '.0f')} |")
    mbpo_train = read_rows(root / "mbpo" / "train.csv")
    vals = [r for r in mbpo_train if r.get("val/mse")]
    if vals:
        lines += ["", "| frame | world model open-loop MSE | copy-last MSE | ratio | tokenizer recon MSE | PSNR |",
                  "|---|---|---|---|---|---|"]
        for r in vals:
            mse, copy = float(r["val/mse"]), float(r["val/copy_last_mse"])
            recon = cell(r, "val/recon_mse", ".5f")
            lines.append(f"| {r['frame']} | {mse:.5f} | {copy:.5f} | {mse / copy:.2f} | {recon} | "
                         f"{cell(r, 'val/psnr', '.1f')} |")
    lines += time_summary(evals, mbpo_train)
    return "\n".join(lines)


def across_seeds(roots: list[Path]) -> str:
    """Markdown: one row per finished learning check (a folder each, usually one per seed), then their mean.

    Each row gives both runs' evaluation at the last frame they share, their mean success and return over the
    evaluations in the second half of it (frames >= half the last), and MBPO's world-model validation there: the
    summed open-loop MSE over the summed copy-last MSE (below 1: the world model beats copying the last frame).
    """
    lines = [("| run | last frame | DrQ-v2 success / return | MBPO success / return | DrQ-v2 mean, 2nd half "
              "| MBPO mean, 2nd half | MBPO open loop / copy-last, 2nd half |"), "|---|---|---|---|---|---|---|"]
    means: dict[str, list[float]] = {}
    for root in roots:
        evals = evaluations(root)
        shared = sorted(set(evals["drqv2"]) & set(evals["mbpo"]))
        if not shared:
            raise SystemExit(f"{root}: no evaluation frame both drqv2/eval.csv and mbpo/eval.csv have; "
                             "finish both runs (the runs stage) first")
        last = shared[-1]
        half = [f for f in shared if f >= last / 2]
        cells = [str(root), str(last)]
        for method in ("drqv2", "mbpo"):
            row = evals[method][last]
            cells.append(f"{float(row['eval/success_rate']):.2f} / {float(row['eval/episode_return']):.0f}")
        for method in ("drqv2", "mbpo"):
            success = sum(float(evals[method][f]["eval/success_rate"]) for f in half) / len(half)
            ret = sum(float(evals[method][f]["eval/episode_return"]) for f in half) / len(half)
            means.setdefault(f"{method} success", []).append(success)
            means.setdefault(f"{method} return", []).append(ret)
            cells.append(f"{success:.2f} / {ret:.0f}")
        vals = [r for r in read_rows(root / "mbpo" / "train.csv")
                if r.get("val/mse") and last / 2 <= int(r["frame"]) <= last]
        if vals:
            ratio = sum(float(r["val/mse"]) for r in vals) / sum(float(r["val/copy_last_mse"]) for r in vals)
            means.setdefault("ratio", []).append(ratio)
            cells.append(f"{ratio:.2f} ({len(vals)} validations)")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")

    def mean(key: str, spec: str) -> str:
        return format(sum(means[key]) / len(means[key]), spec) if key in means else "-"

    lines.append(f"| mean of {len(roots)} | | | | {mean('drqv2 success', '.2f')} / {mean('drqv2 return', '.0f')} "
                 f"| {mean('mbpo success', '.2f')} / {mean('mbpo return', '.0f')} | {mean('ratio', '.2f')} |")
    return "\n".join(lines)


PHASES = ("env", "agent_update", "wm_update", "imagination", "wm_validation", "eval")


def time_summary(evals: dict[str, dict[int, dict[str, str]]], mbpo_train: list[dict[str, str]]) -> list[str]:
    """Markdown lines: each run's wall clock (its last evaluation's ``total_time``) and MBPO's seconds per phase
    per 1,000 frames over the second half of its run (the ``time/*`` counters are cumulative)."""
    clocks = {m: float(rows[max(rows)]["total_time"]) for m, rows in evals.items()
              if rows and rows[max(rows)].get("total_time")}
    lines = []
    if len(clocks) == 2:
        lines += ["", (f"Wall clock: DrQ-v2 {clocks['drqv2'] / 60:.1f} min, MBPO {clocks['mbpo'] / 60:.1f} min "
                       f"({clocks['mbpo'] / clocks['drqv2']:.2f}x).")]
    timed = [r for r in mbpo_train if r.get("time/env")]
    if len(timed) >= 2:
        end = timed[-1]
        start = min(timed, key=lambda r: abs(int(r["frame"]) - int(end["frame"]) / 2))
        per_k = (int(end["frame"]) - int(start["frame"])) / 1000
        if per_k > 0:
            parts = {p: (float(end.get(f"time/{p}") or 0) - float(start.get(f"time/{p}") or 0)) / per_k
                     for p in PHASES}
            split = ", ".join(f"{p} {v:.1f} s" for p, v in parts.items())
            lines += ["", (f"MBPO seconds per 1,000 frames (frames {start['frame']}-{end['frame']}): {split}; "
                           f"{sum(parts.values()):.1f} s in all.")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/learning_check", help="folder of every stage's output")
    parser.add_argument("--stages", default="collect,pretrain,runs,summary")
    parser.add_argument("--task", default="reach")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=6000, help="env frames of each run")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--demos", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pretrain-tasks", default=",".join(PRETRAIN_TASKS))
    parser.add_argument("--pretrain-episodes", type=int, default=24, help="scripted episodes per task")
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--parallel", action="store_true", help="run DrQ-v2 and MBPO at the same time")
    parser.add_argument("--pretrained", default=None,
                        help="world-model checkpoint MBPO fine-tunes (default: OUT/pretrain/checkpoint)")
    parser.add_argument("--methods", default="drqv2,mbpo", help="runs of the runs stage: drqv2, mbpo or both")
    parser.add_argument("--mbpo-override", dest="mbpo_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a Hydra override for the MBPO run only, e.g. world_model.rollout.temperature=0 "
                             "(repeatable; the DrQ-v2 run is unchanged, so it stays the same baseline)")
    parser.add_argument("--across", nargs="+", metavar="DIR", default=None,
                        help="only print one table over finished checks (each an --out folder, e.g. one per seed)")
    a = parser.parse_args()
    if a.across:
        print(across_seeds([Path(d) for d in a.across]))
        return
    a.methods = [m for m in a.methods.split(",") if m]
    if not a.methods or set(a.methods) - {"drqv2", "mbpo"}:
        parser.error(f"--methods {','.join(a.methods)}: choose drqv2, mbpo or both (comma-separated)")
    a.pretrain_tasks = [t for t in a.pretrain_tasks.split(",") if t]
    if a.task in a.pretrain_tasks:
        parser.error(f"--task {a.task} is among --pretrain-tasks: pre-train on other tasks")
    stages = [s for s in a.stages.split(",") if s]
    unknown = sorted(set(stages) - {"collect", "pretrain", "runs", "summary"})
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from collect, pretrain, runs, summary")
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MUJOCO_GL", "egl")
    if "collect" in stages:
        collect(a, root)
    if "pretrain" in stages:
        pretrain(a, root)
    if "runs" in stages:
        runs(a, root)
    if "summary" in stages:
        table = summary(root)
        (root / "summary.md").write_text(table + "\n")
        print(table)


if __name__ == "__main__":
    main()
