"""experiments/bench_imagination.py end to end on the tiny preset: JSON rows, ratio, the time-budget skip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.cpu import cpu_choices

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "experiments" / "bench_imagination.py"


def test_bench_reports_both_paths_and_skips_over_budget():
    # batch 1 always runs (nothing to extrapolate from); batch 3 is estimated from it and exceeds the budget
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--preset",
            "tiny",
            "--batches",
            "3,1",
            "--horizon",
            "2",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--max-seconds",
            "0.001",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["machine"]["device"] == "cpu" and report["machine"]["threads"] == 1
    first, second = report["rows"]
    assert (first["batch"], second["batch"]) == (1, 3)
    assert first["engine_tps"] > 0 and first["reference_tps"] > 0
    assert abs(first["ratio"] - first["reference_s"] / first["engine_s"]) < 1e-9
    assert abs(first["engine_tps"] * first["engine_s"] - first["batch"] * first["horizon"]) < 1e-9
    assert first["sample_ms_per_step"] > 0 and first["decode_ms_per_step"] > 0
    assert first["floor_token_step_us"] is None  # the bandwidth floor is a GPU figure
    assert second["engine_s"] is None and second["reference_s"] is None and second["ratio"] is None
    assert any("engine skipped" in note for note in second["notes"])
    assert any("reference skipped" in note for note in second["notes"])


def test_bench_passes_the_engine_settings_it_is_given():
    out = subprocess.run(
        [sys.executable, str(BENCH), "--preset", "tiny", "--batches", "1", "--horizon", "1", "--repeats", "1",
         "--threads", "1", "--precision", "bfloat16", "--compile", "false", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(out.stdout)
    assert report["machine"]["engine_precision"].startswith("transformer bfloat16")
    assert report["machine"]["engine_compiled"] is False and report["machine"]["engine_decoder_compiled"] is False
    assert report["machine"]["engine_chunk_rows"] == cpu_choices().chunk_rows  # "auto": the CPU's choice
    assert report["machine"]["cpu"]["choices"] == cpu_choices().as_dict()
    assert set(report["machine"]["cpu"]["isa"]) == {"avx2", "avx512", "avx512_bf16", "amx"}
    assert report["rows"][0]["engine_tps"] > 0


def test_table_names_the_cpu_and_an_emulated_cap():
    """The table's first lines: the CPU, its instruction sets, the caps set to emulate an older one, the
    choices made (here for an AVX2 CPU: float32, the whole batch at once)."""
    out = subprocess.run(
        [sys.executable, str(BENCH), "--preset", "tiny", "--batches", "1", "--horizon", "1", "--repeats", "1",
         "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True, env={**os.environ, "IVG_CPU_ISA": "avx2"},
    )
    lines = out.stdout.splitlines()
    assert lines[0].startswith("cpu ") and "avx2; no avx512 avx512_bf16 amx" in lines[0]
    assert "EMULATED: IVG_CPU_ISA=avx2" in lines[0]
    assert lines[1].startswith("cpu choices: bf16 off, chunk_rows whole batch, context_attention sdpa")
    assert "tokenizer float32 (eager, reset and decoding on the whole batch)" in out.stdout
