"""Run-time helpers every package shares: device, thread and allocator choice, seeding, a wall-clock timer."""

from __future__ import annotations

import ctypes
import os
import platform
import random
import time

import numpy as np
import torch


def pick_device(spec: str = "auto") -> torch.device:
    """`"auto"` -> cuda when present, else cpu; any other string is passed to `torch.device` after a check."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"device={spec!r} is not a torch device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} asked for CUDA but none is available; use device=auto or cpu")
    return device


def available_cpus() -> int:
    """CPU cores this process may run on (respects affinity masks and container limits)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(num_threads: int | str = "auto") -> int:
    """Sets torch's intra-op thread count and returns it.

    `"auto"` uses every core this process may run on; pass 1 when another job shares the machine (two threads
    can then be slower than one: `experiments/bench_drqv2.py` measures it).
    """
    n = available_cpus() if num_threads == "auto" else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads={num_threads!r} must be >= 1 or 'auto'")
    torch.set_num_threads(n)
    return n


MALLOC_MODES = ("tuned", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt() parameter numbers, from glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 32 << 20  # the largest M_MMAP_THRESHOLD glibc accepts on 64-bit systems
TRIM_THRESHOLD_BYTES = 1 << 30
MALLOC_HELP = "glibc malloc settings, as the training config's `malloc` (core.runtime.configure_malloc)"


def check_malloc(mode: str) -> None:
    """A one-line error unless `mode` is one of `MALLOC_MODES` (for config checks before anything runs)."""
    if mode not in MALLOC_MODES:
        raise ValueError(f"malloc={mode!r} must be one of {', '.join(MALLOC_MODES)}")


def configure_malloc(mode: str = "tuned") -> bool:
    """Makes glibc's malloc keep freed blocks of up to 32 MiB for reuse; returns whether it changed anything.

    PyTorch's CPU tensors come from malloc. By default glibc maps blocks above a threshold (128 KiB at first,
    raised as such blocks are freed) straight from the kernel and unmaps them on free, and it hands the top of
    the heap back once 128 KiB of it is free: a training step that allocates the same few-MB activations
    every time pays page faults and page zeroing for each. `"tuned"` sets the mmap threshold to 32 MiB and
    the trim threshold to 1 GiB, so those blocks are reused (a process holds up to that much freed memory; the
    measured gains are in the README's configuration table and docs/imagination.md). `"system"` leaves glibc's
    settings as they are. Settings apply to the whole process and cannot be undone; without glibc (macOS,
    Windows, musl) nothing happens.
    """
    check_malloc(mode)
    if mode == "system" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    # the mmap threshold first: setting either one also stops glibc from moving them on its own
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                   TRIM_THRESHOLD_BYTES))


def set_seed(seed: int) -> None:
    """Seeds python, numpy and torch (all devices) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derive_seed(*keys: int) -> int:
    """A 31-bit seed that depends on all `keys` (e.g. `(run_seed, stream, episode)`) and on nothing else.

    Seeding each episode from counters, not from a running generator, makes a resumed run reset its
    environments exactly as the uninterrupted run would have.
    """
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


class Timer:
    """Wall-clock seconds since start and since the last `lap()`."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed

    def total(self) -> float:
        return time.perf_counter() - self.start
