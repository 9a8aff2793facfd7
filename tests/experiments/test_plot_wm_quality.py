"""experiments/plot_wm_quality.py: the quality table and plot of a world_model.train run, from its CSV logs."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import plot_wm_quality

pytest.importorskip("matplotlib")


def write_csv(path: Path, rows: list[dict[str, float]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def eval_row(step: int, psnr: float) -> dict[str, float]:
    row = {"frame": step * 96, "step": step, "eval/mse": 0.004, "eval/copy_last_mse": 0.002,
           "eval/recon_mse": 0.001, "eval/context_recon_mse": 0.0008, "eval/psnr": psnr, "eval/copy_last_psnr": 27.0,
           "eval/recon_psnr": 30.0, "eval/context_recon_psnr": 31.0}
    for k in (1, 2, 3):
        row[f"eval/psnr_{k}"] = psnr + 1 - k
        row[f"eval/copy_last_psnr_{k}"] = 28.0 - k
    row.update({"eval/reward_mse": 0.5, "eval/horizon": 3, "eval/ce": 2.5, "eval/reward": 0.1})
    return row


def test_table_and_plot_from_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_csv(tmp_path / "eval.csv", [eval_row(100, 20.0), eval_row(200, 28.5)])
    write_csv(tmp_path / "train.csv", [{"frame": 96 * s, "step": s, "tokenizer/context_codes_used": 0.9,
                                        "tokenizer/dynamics_codes_used": 0.4} for s in (50, 100, 150, 200)])
    text = plot_wm_quality.main([str(tmp_path)])
    rows = [line for line in text.splitlines() if line.startswith(("| 1", "| 2"))]
    assert len(rows) == 2
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    # step, context PSNR, future PSNR, recon/copy-last MSE, open loop, copy-last, difference, step 3 (copy-last)
    assert cells[:8] == ["200", "31.00", "30.00", "0.50", "28.50", "27.00", "+1.50", "26.50 (25.00)"]
    assert (tmp_path / "quality.png").stat().st_size > 10_000
    assert "plot:" in capsys.readouterr().out
    assert plot_wm_quality.horizon_of({k: str(v) for k, v in eval_row(1, 1.0).items()}) == 3


def test_a_run_without_validation_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="val_data="):
        plot_wm_quality.main([str(tmp_path)])
