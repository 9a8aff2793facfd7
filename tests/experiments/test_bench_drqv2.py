"""experiments/bench_drqv2.py end to end at a tiny batch: JSON rows and the CPU it ran on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "experiments" / "bench_drqv2.py"


def test_bench_times_every_variant_and_names_the_cpu():
    variants = ["reference-style", "drqv2", "drqv2 foreach-adam"]
    out = subprocess.run(
        [sys.executable, str(BENCH), "--batch", "4", "--obs", "9x64x64", "--threads", "1", "--updates", "1",
         "--variants", *variants, "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(out.stdout)
    assert [row["variant"] for row in report["rows"]] == variants
    assert all(row["seconds_per_update"] > 0 for row in report["rows"])
    assert set(report["cpu"]["isa"]) == {"avx2", "avx512", "avx512_bf16", "amx"}
    assert "chunk_rows" in report["cpu"]["choices"]
