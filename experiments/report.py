"""Learning curves and success-rate tables across seeds, from the folders of finished or running runs.

    python experiments/report.py runs [more roots ...] --budgets 50000,100000 --out reports/paper [--json]

Every folder under the roots that holds a `config.yaml` (written by `mbrl.train`) and an `eval.csv` is a run;
runs are grouped by (method, task, seed) read from their `config.yaml`: the method is the agent's name
(`drqv2`, `dreamerv3`), or `mbpo-<world model>` when a world model is used (`-scratch` added when it was
not initialised from a pre-trained checkpoint, `world_model.pretrained: null`); task spellings are unified
(`door-open-v3` = `door_open`). When the same (method, task, seed) appears more than once (a re-run), the
run evaluated furthest is kept and the others are listed on stderr.

Numbers (all from `eval/success_rate` against the `frame` column, i.e. env frames):
- success of a run at a budget B: its success at its last evaluation at or before B; a run whose last
  evaluation is before B (it has not trained that long) has no value at B and is left out of that cell;
- across seeds: the mean and a 95% Student-t confidence interval, mean +- t(0.975, n-1) * sd / sqrt(n)
  (sd with n-1 degrees of freedom); no interval for a single seed;
- "mean over tasks": per seed, the mean over the tasks (only the seeds that have a value on every task
  of the method), then mean and t-interval across those seeds;
- curves: at every frame where some seed of the group was evaluated, each seed's last evaluation so far
  (only between its first and last evaluation), then mean and t-interval across the seeds present.

Writes `<out>/report.md` (tables + links), `<out>/success_<task>.png` per task and
`<out>/success_mean_over_tasks.png`, and prints the report (`--json`: the tables as one JSON object, with
`mean`, `half_width` and `n` per cell).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

CONFIDENCE = 0.95
SUCCESS = "eval/success_rate"
MEAN_OVER_TASKS = "mean over tasks"


@dataclass(frozen=True)
class RunKey:
    method: str
    task: str
    seed: int


@dataclass
class Run:
    """One run's evaluations: `frames` ascending env frames, `success` the success rate at each."""

    path: Path
    key: RunKey
    frames: np.ndarray
    success: np.ndarray

    def success_at(self, budget: int) -> float | None:
        """Success at the last evaluation at or before `budget`; None if the run was not evaluated at or
        after it (it has not trained that long) or not before it."""
        if len(self.frames) == 0 or self.frames[-1] < budget or self.frames[0] > budget:
            return None
        return float(self.success[np.searchsorted(self.frames, budget, side="right") - 1])


@dataclass(frozen=True)
class Estimate:
    """Mean over `n` seeds and the half width of its confidence interval (NaN for n < 2)."""

    mean: float
    half_width: float
    n: int


def method_label(config: dict) -> str:
    """`drqv2`, `dreamerv3`, `mbpo-ivideogpt` (pre-trained world model), `mbpo-ivideogpt-scratch`."""
    agent = (config.get("agent") or {}).get("name", "unknown")
    world_model = config.get("world_model") or {}
    name = world_model.get("name", "none")
    if name in (None, "none"):
        return agent
    from_scratch = "pretrained" in world_model and not world_model["pretrained"]
    return f"mbpo-{name}" + ("-scratch" if from_scratch else "")


def task_label(task: str) -> str:
    from mbrl.envs.tasks import resolve_task, short_name

    try:
        return short_name(resolve_task(str(task)))
    except ValueError:  # not a Meta-World task: keep the name as written
        return str(task)


def load_run(run_dir: Path) -> Run | None:
    """The run in `run_dir`, or None when it has no evaluation yet."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    for key in ("task", "seed"):
        if key not in config:
            raise ValueError(f"{run_dir / 'config.yaml'} has no `{key}`: is it an mbrl.train run folder?")
    evals = pd.read_csv(run_dir / "eval.csv")
    if SUCCESS not in evals or "frame" not in evals:
        raise ValueError(f"{run_dir / 'eval.csv'} lacks the `frame` or `{SUCCESS}` column")
    evals = evals.dropna(subset=["frame", SUCCESS]).sort_values("frame")
    if evals.empty:
        return None
    key = RunKey(method_label(config), task_label(config["task"]), int(config["seed"]))
    return Run(run_dir, key, evals["frame"].to_numpy(np.int64), evals[SUCCESS].to_numpy(np.float64))


def find_runs(roots: list[Path]) -> dict[RunKey, Run]:
    """All runs under `roots`, one per (method, task, seed): the one evaluated furthest."""
    runs: dict[RunKey, Run] = {}
    for root in roots:
        if not root.exists():
            raise ValueError(f"run root {root} does not exist")
        for config in sorted(root.rglob("config.yaml")):
            if not (config.parent / "eval.csv").is_file():
                continue  # sheeprl's and Hydra's own config.yaml files, runs not evaluated yet
            run = load_run(config.parent)
            if run is None:
                continue
            kept = runs.get(run.key)
            if kept is not None:
                if run.frames[-1] > kept.frames[-1]:
                    run, kept = kept, run
                print(
                    f"note: {run.key} appears twice; keeping {kept.path} (evaluated to frame "
                    f"{kept.frames[-1]}), ignoring {run.path}",
                    file=sys.stderr,
                )
                run = kept
            runs[run.key] = run
    return runs


def estimate(values: list[float]) -> Estimate:
    """Mean and Student-t confidence half width (CONFIDENCE) of `values` across seeds."""
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    mean = float(np.mean(values))
    if n < 2:
        return Estimate(mean, math.nan, 1)
    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    return Estimate(mean, float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sem, n)


def success_table(runs: dict[RunKey, Run], budgets: list[int]) -> dict[int, dict[str, dict[str, Estimate]]]:
    """`{budget: {task | MEAN_OVER_TASKS: {method: Estimate}}}`."""
    by_method_task: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs.values():
        by_method_task[run.key.method, run.key.task].append(run)
    methods = sorted({m for m, _ in by_method_task})
    tasks = sorted({t for _, t in by_method_task})
    table: dict[int, dict[str, dict[str, Estimate]]] = {}
    for budget in budgets:
        rows: dict[str, dict[str, Estimate]] = {task: {} for task in tasks}
        rows[MEAN_OVER_TASKS] = {}
        for method in methods:
            per_seed: dict[int, dict[str, float]] = defaultdict(dict)  # seed -> task -> success
            method_tasks = [t for t in tasks if (method, t) in by_method_task]
            for task in method_tasks:
                values = []
                for run in by_method_task[method, task]:
                    value = run.success_at(budget)
                    if value is not None:
                        values.append(value)
                        per_seed[run.key.seed][task] = value
                rows[task][method] = estimate(values)
            complete = [np.mean(list(v.values())) for v in per_seed.values() if len(v) == len(method_tasks)]
            rows[MEAN_OVER_TASKS][method] = estimate(complete)
        table[budget] = rows
    return table


def seed_curve(run: Run, grid: np.ndarray) -> np.ndarray:
    """The run's last evaluation at or before each grid frame; NaN outside its evaluated range."""
    index = np.searchsorted(run.frames, grid, side="right") - 1
    values = run.success[np.clip(index, 0, None)].astype(np.float64)
    values[(grid < run.frames[0]) | (grid > run.frames[-1])] = np.nan
    return values


def band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, lower and upper confidence bound across the rows (seeds) of `curves` (seeds, frames); NaNs
    are seeds without a value at that frame."""
    mean, low, high = (np.full(curves.shape[1], np.nan) for _ in range(3))
    for j in range(curves.shape[1]):
        column = curves[:, j]
        est = estimate(column[~np.isnan(column)].tolist())
        mean[j] = est.mean
        if est.n >= 2:
            low[j], high[j] = est.mean - est.half_width, est.mean + est.half_width
    return mean, low, high


def learning_curves(runs: dict[RunKey, Run]) -> dict[str, dict[str, tuple[np.ndarray, ...]]]:
    """`{task | MEAN_OVER_TASKS: {method: (frames, mean, low, high)}}`."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs.values():
        groups[run.key.method, run.key.task].append(run)
    curves: dict[str, dict[str, tuple[np.ndarray, ...]]] = defaultdict(dict)
    for (method, task), group in sorted(groups.items()):
        grid = np.unique(np.concatenate([r.frames for r in group]))
        curves[task][method] = (grid, *band(np.stack([seed_curve(r, grid) for r in group])))
    for method in sorted({m for m, _ in groups}):
        method_groups = {t: g for (m, t), g in groups.items() if m == method}
        grid = np.unique(np.concatenate([r.frames for g in method_groups.values() for r in g]))
        seeds = set.intersection(*({r.key.seed for r in g} for g in method_groups.values()))
        if not seeds:
            continue
        # Per seed: the mean over tasks, where every task has a value.
        per_seed = [
            np.mean(
                [seed_curve(next(r for r in g if r.key.seed == seed), grid) for g in method_groups.values()],
                axis=0,
            )
            for seed in sorted(seeds)
        ]
        curves[MEAN_OVER_TASKS][method] = (grid, *band(np.stack(per_seed)))
    return dict(curves)


def plot_curves(curves: dict[str, dict[str, tuple[np.ndarray, ...]]], out: Path) -> dict[str, Path]:
    """One PNG per task (and the mean over tasks); returns {task: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    for task, methods in curves.items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, (frames, mean, low, high) in sorted(methods.items()):
            (line,) = ax.plot(frames, mean, label=method)
            ax.fill_between(frames, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set(
            title=task.replace("_", " "), xlabel="env frames", ylabel="eval success rate", ylim=(-0.02, 1.02)
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"success_{task.replace(' ', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths[task] = path
    return paths


def cell(est: Estimate | None) -> str:
    if est is None or est.n == 0:
        return "-"
    if est.n == 1:
        return f"{est.mean:.2f} (1)"
    return f"{est.mean:.2f} ± {est.half_width:.2f} ({est.n})"


def markdown(
    table: dict[int, dict[str, dict[str, Estimate]]],
    plots: dict[str, Path],
    roots: list[Path],
    runs: dict[RunKey, Run],
) -> str:
    methods = sorted({r.key.method for r in runs.values()})
    lines = [
        "# Success rates across seeds",
        "",
        (
            f"{len(runs)} runs from {', '.join(str(r) for r in roots)}. Cells: mean ± half width of the "
            f"{CONFIDENCE:.0%} Student-t interval across seeds (number of seeds). A run counts at a budget with its "
            'last evaluation at or before it, if it was evaluated that far. "mean over tasks": per seed the mean '
            "over the method's tasks (seeds with every task only), then across seeds."
        ),
    ]
    for budget, rows in table.items():
        lines += [
            "",
            f"## At {budget:,} env frames",
            "",
            "| task | " + " | ".join(methods) + " |",
            "|---" * (len(methods) + 1) + "|",
        ]
        for task, by_method in rows.items():
            lines.append(f"| {task} | " + " | ".join(cell(by_method.get(m)) for m in methods) + " |")
    lines += ["", "## Learning curves", ""]
    lines += [f"![{task}]({path.name})" for task, path in plots.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders searched for run folders (e.g. runs)")
    parser.add_argument("--budgets", default="50000,100000", help="env-frame budgets, comma separated")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where report.md and PNGs go")
    parser.add_argument("--json", action="store_true", help="print the tables as one JSON object instead")
    args = parser.parse_args(argv)
    try:
        budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        parser.error(
            f"--budgets={args.budgets!r}: write env-frame counts separated by commas, e.g. 50000,100000"
        )
    try:
        runs = find_runs(args.roots)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    if not runs:
        parser.exit(
            2, f"error: no run folder (config.yaml + eval.csv) under {', '.join(map(str, args.roots))}\n"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    table = success_table(runs, budgets)
    plots = plot_curves(learning_curves(runs), args.out)
    report = markdown(table, plots, args.roots, runs)
    (args.out / "report.md").write_text(report)
    if not args.json:
        print(report)
        return

    def plain(est: Estimate) -> dict[str, float | int | None]:
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in vars(est).items()}

    print(
        json.dumps(
            {
                str(b): {task: {m: plain(e) for m, e in row.items()} for task, row in rows.items()}
                for b, rows in table.items()
            }
        )
    )


if __name__ == "__main__":
    main()
