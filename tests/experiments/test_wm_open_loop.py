"""experiments/wm_open_loop.py: a checkpoint's open loop on held-out episodes, sampled and greedy, next to
copy-last."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from world_model.build import build_model
from world_model.data.dataset import EpisodeDataset
from world_model.model import IVideoGPT

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
import wm_open_loop

TOKENIZER = {"block_out_channels": [16, 32], "norm_num_groups": 8, "latent_channels": 16}
TRANSFORMER = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128}


def write_episodes(folder: Path, size: int = 16, length: int = 10) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        np.savez_compressed(folder / f"episode_{index}.npz",
                            image=rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8),
                            action=rng.uniform(-1, 1, (length, 4)).astype(np.float32),
                            reward=rng.uniform(0, 1, length).astype(np.float32))


def test_sampled_and_greedy_rows_next_to_copy_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_episodes(tmp_path / "data")
    build_model("cpu", image_size=16, action_dim=4, reward_head=True, tokenizer_overrides=TOKENIZER,
                transformer_overrides=TRANSFORMER).save_pretrained(tmp_path / "checkpoint")
    args = ["--checkpoint", str(tmp_path / "checkpoint"), "--data", str(tmp_path / "data"), "--segments", "5",
            "--segment-length", "5", "--batch", "2", "--json", str(tmp_path / "scores.json")]
    results = wm_open_loop.main(args)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(lines) == 5 and lines[1].startswith("| 1 | 5 |") and lines[2].startswith("| 0 | 5 |")
    # copy-last of the same seeded segments, computed here
    drawn = EpisodeDataset(tmp_path / "data", 5).sample(5, np.random.default_rng(0))
    x = drawn.frames.float() / 255
    per_frame = (x[:, 2:] - x[:, 1:2]).pow(2).mean(dim=(2, 3, 4))
    assert results[0.0]["copy_last_mse"] == pytest.approx(per_frame.mean().item(), rel=1e-5)
    assert results[0.0]["segments"] == 5 and results[0.0]["horizon"] == 3 and "reward_mse" in results[0.0]
    assert wm_open_loop.main(args)[0.0] == results[0.0]  # greedy and seeded: the same scores again
    assert set(json.loads((tmp_path / "scores.json").read_text())) == {"1.0", "0.0", "tokens"}
    # the token table: copying each code from the previous future frame, computed here from the codes
    model = IVideoGPT.from_pretrained(tmp_path / "checkpoint")
    with torch.no_grad():
        tokens, _ = model.tokenize(x)
    _, dyn = model.layout_for(tokens).split(tokens)  # (B, K, n)
    tokens_row = results["tokens"]
    assert tokens_row["copy_previous_accuracy"] == pytest.approx((dyn[:, 1:] == dyn[:, :-1]).float().mean().item())
    assert 0 <= tokens_row["tf_accuracy"] <= 1 and 0 <= tokens_row["tf_accuracy_2"] <= 1
    assert lines[4].endswith(f"| {results[0.0]['recon_psnr']:.2f} |")  # the tokenizer's, as the open loop scored it
