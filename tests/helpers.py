"""Small helpers shared by test modules (importable as `helpers`: tests/ is on sys.path through conftest.py)."""
from __future__ import annotations

import csv
import functools
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from world_model.imagination import Imaginer
    from world_model.model import IVideoGPT
    from world_model.transformer import KVCache, WorldModelTransformer

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the repository (CI has it there too), or the folder IVG_SHARED names
SHARED = Path(os.environ.get("IVG_SHARED", REPO.parent / "shared"))


def wandb_record(run_dir: Path, expected: bytes, wait_s: float = 60.0) -> bytes:
    """The bytes of the offline W&B record(s) under `run_dir` once they hold `expected` (W&B's service process
    may still be writing them for a moment after `finish()` returns or the run's process exits)."""
    deadline = time.monotonic() + wait_s
    while True:
        data = b"".join(p.read_bytes() for p in Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
        if expected in data or time.monotonic() > deadline:
            return data
        time.sleep(0.5)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_train_cli(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m mbrl.train *overrides` from the repository root (output captured, W&B quiet, short Hydra
    errors); with `check`, a non-zero exit fails the test with the end of its stderr."""
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, "-m", "mbrl.train", *overrides], check=False, cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"mbrl.train failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def checkpoint_folder(root: Path, tiny: Path, transformer: str) -> Path:
    """A published-layout folder pointing at the tiny checkpoint's tokenizer and one of its transformer folders
    (`transformer`: action-free, or `transformer_with_heads`: actions and a reward head)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer").symlink_to(tiny / "tokenizer", target_is_directory=True)
    (root / "transformer").symlink_to(tiny / transformer, target_is_directory=True)
    return root


def tiny_contexts(tiny: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Four different two-frame contexts (B=4, 2, 3, H, W) (two windows of each fixture video) and smooth
    actions (4, T, A)."""
    data = np.load(tiny / "fixture.npz")
    frames, actions = torch.from_numpy(data["frames"]), torch.from_numpy(data["actions"])
    return torch.cat([frames[:, 0:2], frames[:, 3:5]]), torch.cat([actions, actions.flip(1)])


def engine_rollout(imaginer: Imaginer, context: torch.Tensor, actions: torch.Tensor | None, horizon: int,
                   seed: int, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """codes (B, K, n), raw rewards (B, K) or None, frames (B, K, 3, H, W) via sample() + decode(), sampled
    with a generator on the engine's device seeded with `seed`."""
    imaginer.reset(context, horizon=horizon, generator=torch.Generator(imaginer.device).manual_seed(seed), **kwargs)
    codes, rewards, frames = [], [], []
    for t in range(horizon):
        code, reward = imaginer.sample(None if actions is None else actions[:, t])
        codes.append(code)
        rewards.append(reward)
        frames.append(imaginer.decode(code))
    raw = None if rewards[0] is None else torch.stack(rewards, 1)
    return torch.stack(codes, 1), raw, torch.stack(frames, 1)


@functools.cache
def experiment_module(name: str) -> ModuleType:
    """The module ``experiments/<name>.py`` (not an installed package), loaded once from its file."""
    key = f"experiments_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # registered first: dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def reference_rollout(model: IVideoGPT, context_frames: torch.Tensor, actions: torch.Tensor | None, horizon: int,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``experiments/reference_rollout.py``'s straightforward rollout: frames (B, K, 3, H, W), rewards (B, K)
    or None, codes (B, K, n)."""
    return experiment_module("reference_rollout").reference_rollout(model, context_frames, actions, horizon, **kwargs)


def prefill(model: WorldModelTransformer, ids: torch.Tensor, cache: KVCache, slot_actions: torch.Tensor | None = None,
            slot_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a prefix ``ids`` (B, S) from position 0, storing its keys/values in ``cache``: logits (B, V) and
    hidden state (B, H) of its last position."""
    hidden = model(ids, slot_actions, slot_positions, return_logits=False, cache=cache).hidden[:, -1]
    return model.llm.lm_head(hidden), hidden


def decode_step(model: WorldModelTransformer, token: torch.Tensor, pos: torch.Tensor, cache: KVCache,
                action: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed one token (B, 1) per row at position ``pos`` through the cache, with ``action`` (B, A) added when it
    is a slot token: next-token logits (B, V) and the token's hidden state (B, H)."""
    hidden = model.decode_hidden(token, pos, cache, model.action_embedding(action))
    return model.llm.lm_head(hidden), hidden
