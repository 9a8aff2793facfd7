"""experiments/wm_quality.py: the tokenizer quality probe runs end to end on a few random episodes and reports
reconstruction next to copy-last, codebook health and the motion share."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import wm_quality


def write_episodes(folder: Path, size: int = 16, length: int = 10) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        np.savez_compressed(folder / f"episode_{index}.npz",
                            image=rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8))


def test_probe_reports_reconstruction_codebooks_and_motion(tmp_path):
    write_episodes(tmp_path / "data")
    common = ["--data", str(tmp_path / "data"), "--segment", "4", "--eval-segments", "2"]
    rows = wm_quality.main([*common, "--preset", "tiny", "--steps", "2", "--eval-every", "1", "--batch", "2",
                            "--window", "1", "--restart-dead", "--codebook-init", "data",
                            "--out", str(tmp_path / "rows.json")])
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["future_mse"] > 0 and row["copy_last_mse"] > 0 and row["context_mse"] > 0
    assert rows[0]["copy_last_mse"] == rows[-1]["copy_last_mse"]  # the same scored segments every time
    for book in ("context", "dynamics"):
        assert 0 < rows[1][f"{book}_codes_used"] <= 1 and rows[1][f"{book}_perplexity"] >= 1
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == rows
    (motion,) = wm_quality.main([*common, "--motion-only"])
    assert motion["moving_frames"] == pytest.approx(1.0)  # random frames: every future frame differs
    assert 0 < motion["changed_pixels"] <= 1
