"""Small helpers shared by test modules (importable as `helpers`: tests/ is on sys.path through conftest.py)."""
from __future__ import annotations

import csv
import time
from pathlib import Path


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
