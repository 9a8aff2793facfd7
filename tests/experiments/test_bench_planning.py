"""experiments/bench_planning.py end to end with the smallest settings: both models, JSON rows, bad input."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "experiments" / "bench_planning.py"


def load_bench() -> ModuleType:
    """The bench as a module, registered in sys.modules (its dataclasses need that)."""
    spec = importlib.util.spec_from_file_location("experiments_bench_planning", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)


def test_times_both_models_at_the_smallest_setting():
    out = bench("--models", "oracle,ivideogpt", "--preset", "tiny", "--samples", "2", "--horizon", "1",
                "--steps", "1", "--warmup", "0", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["machine"]["device"] == "cpu" and report["machine"]["threads"] == 1
    assert report["machine"]["cpu"] and len(report["machine"]["load_average_before"]) == 3
    rows = report["rows"]
    assert [(r["model"], r["preset"], r["samples"], r["horizon"]) for r in rows] == [
        ("oracle", None, 2, 1), ("ivideogpt", "tiny", 2, 1)]
    for r in rows:
        assert r["steps"] == 1 and r["iterations"] == 1
        assert abs(r["control_step_s"] - r["plan_s"] - r["env_s"]) < 1e-9
        assert abs(r["imagined_per_s"] * r["plan_s"] - r["samples"] * r["horizon"]) < 1e-6


def test_samples_and_horizons_pair_by_position():
    pairs = load_bench().pairs
    assert pairs([200], [10]) == [(200, 10)]
    assert pairs([10, 20, 20], [5, 5, 10]) == [(10, 5), (20, 5), (20, 10)]
    assert pairs([20], [5, 10]) == [(20, 5), (20, 10)] and pairs([10, 20], [5]) == [(10, 5), (20, 5)]


def test_bad_settings_fail_with_one_line(capsys):
    main = load_bench().main
    cases = [
        (["--samples", "2,3", "--horizon", "1,2,3"], "paired position by position"),
        (["--models", "oracle", "--preset", "huge"], "unknown world-model preset 'huge'"),
        (["--models", "ivideogpt", "--preset", "tiny", "--samples", "2", "--horizon", "31", "--steps", "1",
          "--warmup", "0", "--device", "cpu"], "pass planner.horizon<=30"),
    ]
    for args, message in cases:
        assert main([*args, "--json"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
