"""File writes that a crash cannot tear (`atomic_write`, the one used everywhere) and checked state-dict loading."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn


def load_checked(module: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                 allow_missing: frozenset[str] | set[str] = frozenset()) -> None:
    """Loads `state` into `module` after checking every key and shape.

    Raises:
        ValueError: one line naming every missing key (other than `allow_missing`), unexpected key and shape
            mismatch, with the checkpoint's and the model's shapes.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state) - set(allow_missing))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = [f"{label} ({len(items)}): {_preview(items)}" for label, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    if problems:
        raise ValueError(f"{what} checkpoint does not fit the model config: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=not allow_missing)


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... {len(items) - limit} more" if len(items) > limit else "")


def atomic_write(target: str | Path, write: Callable[[str], object]) -> Path:
    """Calls `write(tmp_path)` for a temporary file beside `target`, flushes it to disk, then renames it over
    `target`: a reader, or a crash, never sees a half-written file. Creates the parent folder. Returns `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
