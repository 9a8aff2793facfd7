"""Derived seeds, device and allocator choice."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.runtime import configure_malloc, derive_seed, pick_device


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(1, 0, 5) == derive_seed(1, 0, 5)
    seeds = {derive_seed(seed, stream, i) for seed in (1, 2) for stream in range(3) for i in range(50)}
    assert len(seeds) == 2 * 3 * 50
    assert all(0 <= s < 2**31 for s in seeds)


def test_pick_device():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        pick_device("tpu9")


def test_malloc_modes():
    assert configure_malloc("system") is False
    with pytest.raises(ValueError, match="malloc='fast' must be one of tuned, system"):
        configure_malloc("fast")


_HEAP_PROBE = """
import ctypes, sys
from core.runtime import MMAP_THRESHOLD_BYTES, configure_malloc

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    print("no mallinfo2")
    sys.exit()
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mapped_blocks_added(size):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    added = libc.mallinfo2().hblks - before
    libc.free(block)
    return added

below, above = MMAP_THRESHOLD_BYTES - (1 << 20), 2 * MMAP_THRESHOLD_BYTES
print(mapped_blocks_added(below), configure_malloc("tuned"), mapped_blocks_added(below), mapped_blocks_added(above))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_malloc_serves_large_blocks_from_the_heap():
    """glibc's counter of mapped blocks, in a fresh interpreter (no other threads allocating): with its
    defaults a block just under 32 MiB is mapped from the kernel; after tuning it comes from the heap, and a
    block above the threshold is still mapped."""
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    if out == ["no", "mallinfo2"]:
        pytest.skip("glibc < 2.33 has no mallinfo2")
    assert out == ["1", "True", "0", "1"]
