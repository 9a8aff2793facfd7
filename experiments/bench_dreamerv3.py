"""DreamerV3 (sheeprl) throughput on our pixel Meta-World env, in env frames per second, per model size.

    python experiments/bench_dreamerv3.py [--sizes tiny,XS] [--steps tiny=400,XS=40] [--json]

Each size runs the real pipeline (`mbrl.dreamerv3.run`: our env at 64x64, action repeat 2, sheeprl's
DreamerV3 at the configured replay ratio, batch and sequence length) without evaluations or checkpoints:
first `agent.sequence_length` agent steps of random actions (sheeprl trains once every env has played a
whole sequence), then `--steps` agent steps with training. Reported, from the run's train.csv:
- `random fps`: env frames/s while acting randomly (env + replay only);
- `train fps`: env frames/s once training runs (env + policy + replay_ratio gradient steps per agent step);
- `updates/s`: gradient steps per second (sheeprl's timer).
Episodes are shortened to `--episode-length` agent steps so that every few steps give a train.csv row;
the per-step costs do not depend on it. Other processes on the cores make the numbers noisy: the load
average is printed with them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir

from mbrl import dreamerv3

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = {"tiny": 400, "XS": 40, "S": 20, "M": 10, "L": 10, "XL": 10}


def bench(size: str, steps: int, episode_length: int, task: str, threads: int, overrides: list[str]) -> dict:
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        base = compose("train", overrides=["agent=dreamerv3", "profile=paper"])
    warmup = int(base.agent.sequence_length)
    total = warmup + steps
    total += -total % episode_length  # whole episodes
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "agent=dreamerv3",
                "profile=paper",
                f"task={task}",
                f"agent.size={size}",
                f"num_threads={threads}",
                f"env.episode_length={episode_length}",
                f"agent.learning_starts={warmup}",
                f"num_train_frames={total * base.env.action_repeat}",
                "eval_every_frames=0",
                "num_eval_episodes=0",
                "checkpoint_every_frames=0",
                "agent.save_checkpoints=false",
                "agent.memmap_buffer=false",
                "save_video=false",
                "logging.wandb.mode=disabled",
                "logging.console=false",
                *overrides,
            ],
        )
    with tempfile.TemporaryDirectory() as run_dir:
        dreamerv3.run(cfg, Path(run_dir))
        with open(Path(run_dir) / "train.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        algo = yaml.safe_load((Path(run_dir) / "sheeprl" / "config.yaml").read_text())["algo"]

    def fps(selected: list[dict]) -> float:
        frames = [int(r["train/episode_length"]) for r in selected]
        seconds = sum(n / float(r["train/fps"]) for n, r in zip(frames, selected))
        return sum(frames) / seconds if seconds else float("nan")

    # The row of the episode in which training starts mixes both phases: left out of both.
    random_rows = [r for r in rows if int(r["step"]) <= warmup]
    train_rows = [r for r in rows if int(r["step"]) - episode_length > warmup]
    updates = [float(r["train/updates_per_second"]) for r in train_rows if r.get("train/updates_per_second")]
    return {
        "size": size,
        "dense_units": algo["dense_units"],
        "recurrent_state": algo["world_model"]["recurrent_model"]["recurrent_state_size"],
        "cnn_multiplier": algo["world_model"]["encoder"]["cnn_channels_multiplier"],
        "batch": f"{algo['per_rank_batch_size']}x{algo['per_rank_sequence_length']}",
        "replay_ratio": algo["replay_ratio"],
        "random_fps": fps(random_rows),
        "train_fps": fps(train_rows),
        "updates_per_s": sum(updates) / len(updates) if updates else float("nan"),
        "train_agent_steps": sum(int(r["train/episode_length"]) for r in train_rows)
        // base.env.action_repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,XS", help="comma separated: tiny, XS, S, M, L, XL")
    parser.add_argument(
        "--steps",
        default="",
        help=f"agent steps with training per size, e.g. tiny=400,XS=40 (defaults: {DEFAULT_STEPS})",
    )
    parser.add_argument("--episode-length", type=int, default=10, help="agent steps per episode")
    parser.add_argument("--task", default="door_open")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on 2 shared cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("overrides", nargs="*", help="extra mbrl.train overrides, e.g. agent.replay_ratio=1")
    args = parser.parse_args()
    steps = dict(DEFAULT_STEPS)
    for item in filter(None, args.steps.split(",")):
        size, _, value = item.partition("=")
        steps[size] = int(value)

    load_before = os.getloadavg()
    results = [
        bench(size, steps[size], args.episode_length, args.task, args.threads, args.overrides)
        for size in args.sizes.split(",")
    ]
    load = {
        "load_avg_1min_before": load_before[0],
        "load_avg_1min_after": os.getloadavg()[0],
        "threads": args.threads,
    }
    if args.json:
        print(json.dumps({"results": results, **load}))
        return
    print(
        f"DreamerV3 (sheeprl) on {args.task}, 64x64, action repeat 2; threads {args.threads}, load average "
        f"{load_before[0]:.1f} -> {load['load_avg_1min_after']:.1f}"
    )
    print(
        f"{'size':>5} {'units':>6} {'deter':>6} {'cnn':>4} {'batch':>6} {'ratio':>6} {'random fps':>11} "
        f"{'train fps':>10} {'updates/s':>10} {'steps':>6}"
    )
    for r in results:
        print(
            f"{r['size']:>5} {r['dense_units']:>6} {r['recurrent_state']:>6} {r['cnn_multiplier']:>4} "
            f"{r['batch']:>6} {r['replay_ratio']:>6} {r['random_fps']:>11.1f} {r['train_fps']:>10.2f} "
            f"{r['updates_per_s']:>10.3f} {r['train_agent_steps']:>6}"
        )


if __name__ == "__main__":
    main()
