"""What the processor has: its model name and the instruction sets our CPU kernel choices depend on.

Detected once per process from `/proc/cpuinfo` (Linux; elsewhere the model comes from `platform` and no flag is
known, so every choice falls back to its portable path). Benchmarks print `describe()` beside their figures,
so that tables from different machines can be told apart.
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

#: Instruction-set families by the `/proc/cpuinfo` flags that show them (any one flag is enough).
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "avx512_bf16": ("avx512_bf16",),
    "amx": ("amx_tile", "amx_bf16"),
}
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""Flags of CPUs with bf16 arithmetic in hardware (elsewhere oneDNN emulates bf16, slower than float32)."""


@dataclass(frozen=True)
class CpuInfo:
    """A CPU's model name and its flags (lower case, as `/proc/cpuinfo` spells them)."""

    model: str
    flags: frozenset[str]

    def has(self, isa: str) -> bool:
        """Whether the CPU has the instruction-set family `isa` (a key of `ISA_FLAGS`)."""
        if isa not in ISA_FLAGS:
            raise ValueError(f"unknown instruction set {isa!r}; one of {', '.join(ISA_FLAGS)}")
        return any(flag in self.flags for flag in ISA_FLAGS[isa])

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16)."""
        return bool(NATIVE_BF16_FLAGS & self.flags)

    def isa(self) -> dict[str, bool]:
        """Each family of `ISA_FLAGS` -> present (what the benches' JSON carries)."""
        return {name: self.has(name) for name in ISA_FLAGS}

    def describe(self) -> str:
        """One line, e.g. `AMD EPYC (avx2 avx512 avx512_bf16; no amx)`."""
        present = [name for name, yes in self.isa().items() if yes]
        absent = [name for name, yes in self.isa().items() if not yes]
        has = " ".join(present) or "none of " + " ".join(ISA_FLAGS)
        return f"{self.model} ({has}" + (f"; no {' '.join(absent)})" if absent and present else ")")


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name and flags in the text of `/proc/cpuinfo` (x86: `flags`; Arm:
    `Features`)."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.lower().split())
    return CpuInfo(model or platform.processor() or platform.machine() or "unknown CPU", flags)


@functools.lru_cache(maxsize=1)
def detect(cpuinfo: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU (read once per process)."""
    try:
        return parse_cpuinfo(Path(cpuinfo).read_text())
    except OSError:
        return CpuInfo(platform.processor() or platform.machine() or "unknown CPU", frozenset())
