"""Shared test fixtures and environment set-up (CPU, offscreen rendering, W&B offline)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest
import torch

# One intra-op thread: on 2 shared cores two threads per test process are often slower, and results stay
# bit-reproducible across machines with different core counts.
torch.set_num_threads(int(os.environ.get("IVG_TEST_THREADS", "1")))
# float32 world-model arithmetic on every CPU (bf16 autocast is used where the CPU has bf16 instructions, so
# results would depend on the machine); the tests of the bf16 paths turn it on themselves
os.environ.setdefault("IVG_CPU_BF16", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IVG_SHARED", REPO_ROOT.parent / "shared"))  # as tests/helpers.SHARED
TINY_CHECKPOINT = SHARED / "reference" / "ivideogpt" / "tiny"


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """The published-layout tiny iVideoGPT checkpoint in ../shared (CI has it beside the clone)."""
    if not TINY_CHECKPOINT.exists():
        pytest.fail(f"reference checkpoint not found at {TINY_CHECKPOINT}; set IVG_SHARED to the shared/ folder")
    return TINY_CHECKPOINT
