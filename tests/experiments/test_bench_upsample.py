"""experiments/bench_upsample.py end to end on the tiny preset: one row per upsampler, batch and precision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from core.cpu import cpu_choices
from core.precision import native_bf16

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "experiments" / "bench_upsample.py"


def test_bench_times_both_forms_of_every_upsampler():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--preset", "tiny", "--batches", "1,2", "--repeats", "1", "--threads", "1",
         "--device", "cpu", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(out.stdout)
    assert report["cpu"]["choices"] == cpu_choices().as_dict()
    dtypes = ["float32", "bfloat16"] if native_bf16(torch.device("cpu")) else ["float32"]
    # the tiny decoder upsamples twice: 64 channels 16 -> 32, then 32 channels 32 -> 64
    assert [(r["channels"], r["input"], r["batch"], r["dtype"]) for r in report["rows"]] == [
        (c, s, b, d) for c, s in ((64, 16), (32, 32)) for b in (1, 2) for d in dtypes
    ]
    for row in report["rows"]:
        assert row["upsample_conv_ms"] > 0 and row["transposed_conv_ms"] > 0
        assert row["max_abs_diff"] < (1e-4 if row["dtype"] == "float32" else 0.1)
