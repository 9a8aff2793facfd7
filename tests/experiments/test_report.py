"""experiments/report.py on fake run folders: grouping, budgets, t-intervals, curves, outputs."""

from __future__ import annotations

import csv
import json
import math
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "experiments" / "report.py"
BUDGETS = (50_000, 100_000)
SEEDS = (1, 2, 3)
NO_WORLD_MODEL = {"name": "none"}
# method -> (agent, world model config, eval frames)
METHODS = {
    "drqv2": ("drqv2", NO_WORLD_MODEL, range(0, 100_001, 10_000)),
    "dreamerv3": ("dreamerv3", NO_WORLD_MODEL, range(10_000, 100_001, 10_000)),  # no evaluation at frame 0
    "mbpo-ivideogpt": (
        "drqv2",
        {"name": "ivideogpt", "pretrained": "/ckpt/oxe-64"},
        range(0, 100_001, 5_000),
    ),
    "mbpo-ivideogpt-scratch": ("drqv2", {"name": "ivideogpt", "pretrained": None}, range(0, 100_001, 20_000)),
}
TASKS = ("door_lock", "hammer")


def write_run(folder: Path, agent: str, world_model: dict, task: str, seed: int, frames, rng) -> list[dict]:
    """A run folder as mbrl.train leaves it: config.yaml + eval.csv (+ train.csv)."""
    folder.mkdir(parents=True)
    config = {
        "task": task,
        "seed": seed,
        "agent": {"name": agent},
        "world_model": world_model,
        "env": {"action_repeat": 2},
        "num_train_frames": 100_000,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    success = 0.0
    for frame in frames:
        success = min(1.0, success + rng.choice([0.0, 0.05, 0.1, 0.2]))
        rows.append(
            {
                "frame": frame,
                "step": frame // 2,
                "episode": frame // 200,
                "eval/episode_return": 100 * success + rng.normal(),
                "eval/success_rate": success,
                "eval/episode_length": 200,
                "total_time": frame / 10,
            }
        )
    with open(folder / "eval.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (folder / "train.csv").write_text("frame,train/episode_return\n200,1.0\n")
    return rows


@pytest.fixture
def runs(tmp_path) -> dict[tuple[str, str, int], list[dict]]:
    """Fake runs in two roots (as runs/ and a multirun folder), with the awkward cases of real ones."""
    rng = np.random.default_rng(0)
    kept = {}
    for method, (agent, world_model, frames) in METHODS.items():
        for task in TASKS:
            for seed in SEEDS:
                root = tmp_path / ("runs" if seed < 3 else "multirun/2026-01-01")
                spelled = "hammer-v3" if (task, seed) == ("hammer", 2) else task  # another spelling
                # One run still going: not at 100k frames yet.
                evaluated = range(0, 60_001, 5_000) if (method, seed) == ("mbpo-ivideogpt", 3) else frames
                folder = root / f"{method}_{task}_s{seed}"
                kept[method, task, seed] = write_run(
                    folder, agent, world_model, spelled, seed, evaluated, rng
                )
    # A shorter re-run of a kept run (ignored), a folder not evaluated yet, sheeprl's own config.yaml.
    write_run(
        tmp_path / "runs" / "rerun", "drqv2", NO_WORLD_MODEL, "door_lock", 1, range(0, 30_001, 10_000), rng
    )
    (tmp_path / "runs" / "fresh").mkdir()
    (tmp_path / "runs" / "fresh" / "config.yaml").write_text(yaml.safe_dump({"task": "hammer", "seed": 9}))
    (tmp_path / "runs" / "rerun" / "sheeprl").mkdir()
    (tmp_path / "runs" / "rerun" / "sheeprl" / "config.yaml").write_text("algo: {name: dreamer_v3}\n")
    return kept


def expected_at(rows: list[dict], budget: int) -> float | None:
    """Independent of report.py: success at the last evaluation at or before the budget, if evaluated that far."""
    if max(r["frame"] for r in rows) < budget:
        return None
    last = None
    for row in rows:
        if row["frame"] <= budget:
            last = row
    return last["eval/success_rate"]


def mean_and_t_half_width(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def run_report(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [
            sys.executable,
            str(REPORT),
            str(tmp_path / "runs"),
            str(tmp_path / "multirun"),
            "--budgets",
            ",".join(map(str, BUDGETS)),
            "--out",
            str(tmp_path / "report"),
            *args,
        ],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_report_tables_match_the_csvs(tmp_path, runs):
    result = run_report(tmp_path, "--json")
    table = json.loads(result.stdout)
    assert "appears twice" in result.stderr and "rerun" in result.stderr

    markdown = (tmp_path / "report" / "report.md").read_text()
    for budget in BUDGETS:
        section = markdown.split(f"## At {budget:,} env frames")[1].split("##")[0]
        header = next(line for line in section.splitlines() if line.startswith("| task"))
        methods = [m.strip() for m in header.strip("|").split("|")[1:]]
        assert sorted(methods) == sorted(METHODS)
        per_seed_means: dict[str, dict[int, list[float]]] = {m: {} for m in METHODS}
        for task in TASKS:
            line = next(line for line in section.splitlines() if line.startswith(f"| {task} |"))
            cells = dict(zip(methods, [c.strip() for c in line.strip("|").split("|")[1:]]))
            for method in METHODS:
                values = []
                for seed in SEEDS:
                    value = expected_at(runs[method, task, seed], budget)
                    if value is not None:
                        values.append(value)
                        per_seed_means[method].setdefault(seed, []).append(value)
                mean, half = mean_and_t_half_width(values)
                got = table[str(budget)][task][method]
                assert got["n"] == len(values)
                assert got["mean"] == pytest.approx(mean, abs=1e-9)
                if half is None:
                    assert got["half_width"] is None and cells[method] == f"{mean:.2f} (1)"
                else:
                    assert got["half_width"] == pytest.approx(half, abs=1e-9)
                    shown = re.fullmatch(r"([0-9.]+) ± ([0-9.]+) \((\d+)\)", cells[method])
                    assert shown, cells[method]
                    assert float(shown[1]) == pytest.approx(mean, abs=0.0051)
                    assert float(shown[2]) == pytest.approx(half, abs=0.0051)
                    assert int(shown[3]) == len(values)
        for method in METHODS:
            complete = [np.mean(v) for v in per_seed_means[method].values() if len(v) == len(TASKS)]
            mean, half = mean_and_t_half_width(complete)
            got = table[str(budget)]["mean over tasks"][method]
            assert got["n"] == len(complete) and got["mean"] == pytest.approx(mean, abs=1e-9)
    # The run still at 60k frames: counted at 50k, left out at 100k.
    assert table["50000"]["door_lock"]["mbpo-ivideogpt"]["n"] == 3
    assert table["100000"]["door_lock"]["mbpo-ivideogpt"]["n"] == 2
    for name in ("success_door_lock.png", "success_hammer.png", "success_mean_over_tasks.png"):
        path = tmp_path / "report" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in markdown


def test_curves_use_each_seeds_last_evaluation_within_its_range(tmp_path):
    report = runpy.run_path(str(REPORT))
    Run, RunKey = report["Run"], report["RunKey"]
    a = Run(tmp_path, RunKey("m", "t", 1), np.array([0, 10, 20]), np.array([0.0, 0.5, 1.0]))
    b = Run(tmp_path, RunKey("m", "t", 2), np.array([5, 15]), np.array([0.2, 0.4]))
    curves = report["learning_curves"]({r.key: r for r in (a, b)})
    frames, mean, low, high = curves["t"]["m"]
    np.testing.assert_array_equal(frames, [0, 5, 10, 15, 20])
    # Seed 2 has no value before its first (5) or after its last (15) evaluation.
    np.testing.assert_allclose(mean, [0.0, 0.1, 0.35, 0.45, 1.0])
    assert np.isnan(low[0]) and np.isnan(low[-1]) and not np.isnan(low[1])
    half = stats.t.ppf(0.975, 1) * np.std([0.5, 0.2], ddof=1) / np.sqrt(2)
    assert high[2] - mean[2] == pytest.approx(half)
    frames, mean, *_ = curves["mean over tasks"]["m"]
    np.testing.assert_allclose(mean, [0.0, 0.1, 0.35, 0.45, 1.0])


def test_report_explains_missing_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [sys.executable, str(REPORT), str(tmp_path / "empty")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no run folder" in result.stderr
    result = subprocess.run(
        [sys.executable, str(REPORT), str(tmp_path / "empty"), "--budgets", "50k"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--budgets" in result.stderr
