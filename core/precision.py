"""Where bfloat16 pays: one decision shared by world-model training, validation and imagination.

bf16 autocast halves the bytes every convolution and matrix product moves, but only hardware with native bf16
arithmetic turns that into speed: CUDA GPUs that support it, and CPUs with AVX512-BF16 or AMX-BF16 (recent
Xeon / EPYC). Elsewhere oneDNN emulates bf16 and it is slower than float32, so there autocast stays off.

On a CPU with bf16 instructions, bf16 autocast speeds up tokenizer and transformer training steps and frame
decoding (measurements in ``docs/imagination.md``). bf16 *attention* kernels there are slower than float32
ones, which is why the rollout engine keeps its eager token steps in float32 on CPUs (see
``world_model.imagination_config.ImaginationConfig``).
"""
from __future__ import annotations

import contextlib
import os

import torch

from core import cpu

NATIVE_BF16_CPU_FLAGS = cpu.NATIVE_BF16_FLAGS
"""``/proc/cpuinfo`` flags of CPUs with bf16 arithmetic in hardware."""

PRECISIONS = ("auto", "float32", "bfloat16")
"""Values of a precision setting: ``auto`` is bfloat16 where it is native (:func:`native_bf16`)."""

CPU_BF16_ENV = "IVG_CPU_BF16"
"""Set to 0 / 1 to force the CPU answer of :func:`native_bf16` (e.g. bit-for-bit comparisons across machines)."""


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises AVX512-BF16 or AMX-BF16 (Linux; False where the flags cannot be read).

    The one detection is ``core.cpu.detect`` (so ``IVG_CPU_ISA`` caps this answer too).
    """
    return cpu.cpu_choices(cpu.detect(cpuinfo)).bf16


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast makes ``device`` faster: a bf16-capable GPU, or a CPU with bf16 instructions.

    On CPUs the environment variable ``IVG_CPU_BF16=0`` / ``1`` overrides the detection.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        forced = os.environ.get(CPU_BF16_ENV)
        if forced is not None:
            if forced not in ("0", "1"):
                raise ValueError(f"{CPU_BF16_ENV} must be 0 or 1, got {forced!r}")
            return forced == "1"
        return cpu_has_native_bf16()
    return False


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where it is native (:func:`native_bf16`), else a no-op (float32)."""
    return autocast_to(device, torch.bfloat16 if enabled and native_bf16(device) else None)


def resolve_precision(setting: str, device: torch.device, fallback: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype a precision setting (one of :data:`PRECISIONS`) means on ``device``: ``auto`` is bfloat16
    where it is native, else ``fallback``."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r} must be one of {', '.join(PRECISIONS)}")
    if setting == "auto":
        return torch.bfloat16 if native_bf16(device) else fallback
    return getattr(torch, setting)


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; a no-op for None or float32 (whatever precision is in force stays)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling of a precision setting."""
    return str(dtype).removeprefix("torch.")
