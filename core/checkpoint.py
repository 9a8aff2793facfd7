"""Resumable checkpoints: plain state dicts written atomically, read with `torch.load(weights_only=True)`.

`torch.load(weights_only=True)` accepts tensors and python primitives but not numpy arrays, so numpy arrays
(replay storage, numpy RNG states) are stored as tagged tensors and turned back into arrays on load.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.io import atomic_write

_NDARRAY_TAG = "__ndarray__"


def to_serializable(obj: Any) -> Any:
    """Recursively replaces numpy arrays and numpy scalars by types `weights_only` loading accepts."""
    if isinstance(obj, np.ndarray):
        return {_NDARRAY_TAG: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_serializable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_serializable(v) for v in obj)
    return obj


def from_serializable(obj: Any) -> Any:
    """Inverse of `to_serializable`."""
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY_TAG}:
            return obj[_NDARRAY_TAG].numpy()
        return {k: from_serializable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_serializable(v) for v in obj)
    return obj


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes `state` to `path` atomically (`core.io.atomic_write`)."""
    return atomic_write(path, lambda tmp: torch.save(to_serializable(state), tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a checkpoint written by `save_checkpoint` (tensors and primitives only: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    return from_serializable(torch.load(path, map_location=map_location, weights_only=True))


def rng_state() -> dict[str, Any]:
    """The global python, numpy and torch (CPU and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what `rng_state` returned (lists come back from a checkpoint where tuples went in)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


RESUME_MODES = ("auto", True, False)


def should_resume(checkpoint: str | Path, mode: str | bool, run: str = "the run folder",
                  where: str = "hydra.run.dir=<old run folder>") -> bool:
    """The one resume policy: whether a launch continues from `checkpoint`, for `resume` = `mode`.

    - `auto`: continue when the checkpoint exists, start fresh otherwise;
    - `True`: continue; a missing checkpoint is an error;
    - `False`: start fresh; an existing checkpoint is an error (nothing is overwritten).

    Args:
        run: the run folder as the message should name it.
        where: how the user names an old run folder on this command line (for the fix in the message).

    Raises:
        ValueError: one line naming the problem and the fix.
    """
    if mode not in RESUME_MODES:
        raise ValueError(f"resume={mode!r} must be auto, true or false")
    exists = Path(checkpoint).is_file()
    if mode is True and not exists:
        raise ValueError(f"resume=true but {checkpoint} does not exist; start a new run with resume=auto, or "
                         f"name the old run folder ({where})")
    if mode is False and exists:
        raise ValueError(f"{run} already holds a checkpoint ({checkpoint}); pass resume=auto to continue it or "
                         "choose another folder")
    return exists
