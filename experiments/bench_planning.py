"""Seconds per MPC control step: one planner update (every candidate rolled out by the model and scored) plus
one real env step, with the simulator (`oracle`) or an iVideoGPT world model (`ivideogpt`) as the model.

    python experiments/bench_planning.py [--json] [--models oracle,ivideogpt] [--preset tiny,cpu]
        [--samples 10,20,20] [--horizon 5,5,10] [--planner mppi|cem] [--steps 3] [--warmup 1]
        [--max-seconds 60] [--device auto|cpu|cuda] [--threads 1] [--chunk N] [--task reach]

The GPU setting of the paper's planner (VP2's MPPI: 200 sequences of 10 actions, one iteration):

    python experiments/bench_planning.py --preset paper64 --samples 200 --horizon 10 --device cuda --json

`--samples` and `--horizon` are paired position by position (one value is used for every pair). Each row is
one model at one (samples, horizon) pair: the pixel Meta-World env (`--task`, 64x64, `fast` rendering) is
reset, then `--warmup` control steps (compilation and graph capture happen there; not counted) and up to
`--steps` timed ones, each `observe` + `plan` (`plan_s`) and the env step (`env_s`) of the plan's first action,
as `python -m mbrl.plan` runs them. A row stops early, after at least one timed step, when another would pass
`--max-seconds`. The objective is `goal_image` with the first frame as the goal (the cost does not depend on
the goal). The world models are untrained (`build_model(preset, action_dim=4)`): the time of a rollout does not
depend on the weights. The oracle plays every candidate in its own simulator on the CPU whatever `--device`
says. `imagined_per_s` is candidate steps predicted per second of planning (samples * horizon * iterations /
plan_s). The CPU, the device and the load average before and after are printed: other processes slow CPU runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from core.cpu import detect
from core.runtime import configure_threads, pick_device
from mbrl.envs import EnvConfig, make_env  # first: headless rendering
from mbrl.planning import OracleModel, PlannerConfig, PlanningModel, WorldModel, make_objective, make_planner
from mbrl.planning.mpc import check_horizon

MODELS = ("oracle", "ivideogpt")
PLANNERS = ("mppi", "cem")


@dataclass
class Row:
    """One model at one (samples, horizon) pair: mean seconds per timed control step and its parts."""

    model: str
    preset: str | None
    samples: int
    horizon: int
    iterations: int
    device: str
    steps: int = 0
    control_step_s: float | None = None
    min_control_step_s: float | None = None
    plan_s: float | None = None
    env_s: float | None = None
    imagined_per_s: float | None = None
    notes: list[str] = field(default_factory=list)


def int_list(text: str) -> list[int]:
    """`"10,20"` -> [10, 20] (positive integers)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers, e.g. 10,20")
    return values


def name_list(choices: tuple[str, ...] | None) -> type:
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [n for n in names if choices is not None and n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(choices or ())}")
        return names
    return parse  # type: ignore[return-value]


def pairs(samples: list[int], horizons: list[int]) -> list[tuple[int, int]]:
    """(samples, horizon) pairs, position by position; a single value goes with every value of the other."""
    if len(samples) == 1:
        samples = samples * len(horizons)
    if len(horizons) == 1:
        horizons = horizons * len(samples)
    if len(samples) != len(horizons):
        raise ValueError(f"--samples has {len(samples)} values and --horizon {len(horizons)}: give as many of "
                         "each (they are paired position by position) or one of either")
    return list(zip(samples, horizons))


def build_model(name: str, preset: str | None, env_cfg: EnvConfig, device: torch.device,
                chunk: int | None) -> PlanningModel:
    """The oracle, or an untrained action-conditioned iVideoGPT of `preset` on `device`."""
    if name == "oracle":
        return OracleModel(env_cfg)
    from world_model.build import build_model as build_world_model

    model = build_world_model(str(preset), action_dim=4, image_size=env_cfg.image_size)
    return WorldModel(model.to(device).eval(), chunk=chunk, generator=torch.Generator(device).manual_seed(0))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(row: Row, model: PlanningModel, env_cfg: EnvConfig, args: argparse.Namespace) -> Row:
    """Fill `row` with the control steps of one short MPC episode (the planner on the model's device)."""
    device = model.device
    env = make_env(env_cfg)
    try:
        planner = make_planner(args.planner, model.action_dim,
                               PlannerConfig(samples=row.samples, horizon=row.horizon),
                               generator=torch.Generator(device).manual_seed(0), device=device)
        check_horizon(model, planner)
        row.iterations = int(planner.settings.iterations)
        _, info = env.reset(seed=0)
        history = [info["frame"]]
        objective = make_objective("goal_image", model, info["frame"])
        plan_times, env_times = [], []
        for step in range(args.warmup + args.steps):
            sync(device)
            start = time.perf_counter()
            model.observe(env, np.stack(history))
            result = planner.plan(lambda candidates: objective(model.rollout(candidates)))
            action = result.actions[0].detach().cpu().numpy().astype(np.float32)
            sync(device)
            planned = time.perf_counter()
            _, _, terminated, truncated, info = env.step(action)
            done = time.perf_counter()
            history.append(info["frame"])
            if step >= args.warmup:
                plan_times.append(planned - start)
                env_times.append(done - planned)
                spent = sum(plan_times) + sum(env_times)
                if len(plan_times) < args.steps and spent + spent / len(plan_times) > args.max_seconds:
                    row.notes.append(f"stopped after {len(plan_times)} of {args.steps} steps (--max-seconds)")
                    break
            if terminated or truncated:
                _, info = env.reset(seed=0)
                history = [info["frame"]]
    finally:
        env.close()
    totals = [p + e for p, e in zip(plan_times, env_times)]
    row.steps = len(totals)
    row.control_step_s, row.min_control_step_s = float(np.mean(totals)), float(np.min(totals))
    row.plan_s, row.env_s = float(np.mean(plan_times)), float(np.mean(env_times))
    row.imagined_per_s = row.samples * row.horizon * row.iterations / row.plan_s
    return row


def machine(device: torch.device, threads: int, load_before: tuple[float, ...]) -> dict[str, object]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"cpu": detect().describe(), "device": str(device), "gpu": gpu, "threads": threads,
            "torch": torch.__version__, "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def rate(value: float) -> str:
    """A per-second rate: whole numbers from 10 on, two decimals below."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2f}"


def table(report: dict) -> str:
    m = report["machine"]
    gpu = f" ({m['gpu']})" if m["gpu"] else ""
    device = (f"device: {m['device']}{gpu}, {m['threads']} thread(s), torch {m['torch']}, load average "
              f"{m['load_average_before']} before, {m['load_average_after']} after")
    header = ("| model | preset | samples x horizon | steps | control step s (min) | plan s | env step s "
              "| imagined steps/s |")
    lines = [f"CPU: {m['cpu']}", device,
             f"planner {report['planner']}, task {report['task']}; seconds per control step = plan + env step",
             header, "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['model']} | {r['preset'] or '-'} | {r['samples']} x {r['horizon']} | {r['steps']} | "
                     f"{r['control_step_s']:.3f} ({r['min_control_step_s']:.3f}) | {r['plan_s']:.3f} | "
                     f"{r['env_s']:.4f} | {rate(r['imagined_per_s'])} |" + "".join(f" {n}" for n in r["notes"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=name_list(MODELS), default=list(MODELS))
    p.add_argument("--preset", type=name_list(None), default=["tiny", "cpu"], help="world-model presets")
    p.add_argument("--samples", type=int_list, default=[10, 20, 20])
    p.add_argument("--horizon", type=int_list, default=[5, 5, 10])
    p.add_argument("--planner", choices=PLANNERS, default="mppi")
    p.add_argument("--steps", type=int, default=3, help="timed control steps per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed control steps first")
    p.add_argument("--max-seconds", type=float, default=60.0, help="timed seconds per row, about")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=None, help="sequences per imagination batch (default: all)")
    p.add_argument("--task", default="reach")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.threads < 1 or (args.chunk is not None and args.chunk < 1):
        p.error("--steps, --threads and --chunk must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = pairs(args.samples, args.horizon)
        from world_model.presets import get_preset

        for preset in args.preset:
            get_preset(preset)
        device = pick_device(args.device)
        env_cfg = EnvConfig(task=args.task, seed=0, render_quality="fast")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    threads = configure_threads(args.threads)
    rows = []
    for name in args.models:
        for preset in (args.preset if name == "ivideogpt" else [None]):
            model = build_model(name, preset, env_cfg, device, args.chunk)
            try:
                for samples, horizon in settings:
                    row = Row(name, preset, samples, horizon, 0, str(model.device))
                    try:
                        rows.append(asdict(measure(row, model, env_cfg, args)))
                    except ValueError as err:  # e.g. a horizon longer than the model can imagine
                        print(f"error: {err}", file=sys.stderr)
                        return 2
                    if not args.json:
                        print(f"{name} {preset or ''} {samples}x{horizon}: {row.control_step_s:.3f} s per control "
                              "step", file=sys.stderr)
            finally:
                model.close()
    report = {"machine": machine(device, threads, load_before), "planner": args.planner, "task": args.task,
              "rows": rows}
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
