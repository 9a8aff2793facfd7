"""What the processor has: its model name and the instruction sets our CPU kernel choices depend on.

Detected once per process from `/proc/cpuinfo` (Linux; elsewhere the model comes from `platform` and no flag is
known, so every choice falls back to its portable path). Benchmarks print `describe()` and the choices
(`cpu_choices`) beside their figures, so that tables from different machines can be told apart.

`IVG_CPU_ISA=avx2` (or `none`, `avx512`, `avx512_bf16`) caps the detection at that family: the flags of the
families above it are dropped, so every choice resolves as on such a CPU. With PyTorch's, oneDNN's and MKL's
own caps (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2`) that emulates an
older CPU on a newer one (`docs/cpu.md`).
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
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

ISA_ENV = "IVG_CPU_ISA"
"""Caps the detected instruction sets at one of `ISA_LEVELS` (to emulate an older CPU; `docs/cpu.md`)."""
ISA_LEVELS = ("none", "avx2", "avx512", "avx512_bf16", "amx")
"""Caps, oldest first; a cap drops the flags that show the families after it."""


@dataclass(frozen=True)
class CpuInfo:
    """A CPU's model name and its flags (lower case, as `/proc/cpuinfo` spells them)."""

    model: str
    flags: frozenset[str]
    cap: str | None = None
    """The `ISA_LEVELS` entry the flags were capped at (`IVG_CPU_ISA`), None when they are the CPU's own."""

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
        capped = f"; capped at {self.cap} by {ISA_ENV}" if self.cap else ""
        return f"{self.model} ({has}" + (f"; no {' '.join(absent)}" if absent and present else "") + capped + ")"

    def capped(self, level: str) -> CpuInfo:
        """This CPU as one that has the families up to `level` (one of `ISA_LEVELS`) and none after it."""
        if level not in ISA_LEVELS:
            raise ValueError(f"{ISA_ENV}={level!r} must be one of {', '.join(ISA_LEVELS)}")
        dropped = ISA_LEVELS[ISA_LEVELS.index(level) + 1:]
        flags = frozenset(flag for flag in self.flags if not flag.startswith(dropped))  # avx512f, avx512_vnni...
        return CpuInfo(self.model, flags, level)


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


def detect(cpuinfo: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU (read once per process), capped at `IVG_CPU_ISA` when that is set."""
    return _detect(cpuinfo, os.environ.get(ISA_ENV) or None)


@functools.lru_cache(maxsize=4)
def _detect(cpuinfo: str, cap: str | None) -> CpuInfo:
    try:
        info = parse_cpuinfo(Path(cpuinfo).read_text())
    except OSError:
        info = CpuInfo(platform.processor() or platform.machine() or "unknown CPU", frozenset())
    return info if cap is None else info.capped(cap)


@dataclass(frozen=True)
class CpuChoices:
    """Every CPU kernel choice the code makes by itself ("auto"), resolved for one CPU.

    What each choice is and the measurements behind it: `docs/cpu.md`.

    Attributes:
        bf16: bf16 autocast where a precision setting is "auto" (tokenizer and context prefill of the rollout
            engine, world-model training, the DrQ-v2 encoder): only with bf16 arithmetic in hardware.
        chunk_rows: rollouts per chunk of the rollout engine's `reset` and frame decoding on a CPU
            (`ImaginationConfig.cpu_chunk_rows="auto"`); None: the whole batch at once. Row chunks pay in bf16
            on a bf16 CPU; float32 decoding on an AVX2 CPU was slower in them.
        context_attention: the decoder's context cross-attention in bf16 inference: "matmul" (two bf16 matrix
            products around a softmax) on a bf16 CPU, else "sdpa" (emulated bf16 matrix products are slow).
        groupnorm_detour: normalise small channels-last bf16 maps channels-first (`world_model.blocks`); on for
            every kind measured (PyTorch's channels-last bf16 group norm is slow with AVX2 and AVX-512 kernels
            alike).
    """

    bf16: bool
    chunk_rows: int | None
    context_attention: str
    groupnorm_detour: bool

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """One line, e.g. `bf16 on, chunk_rows 8, context_attention matmul, groupnorm_detour on`."""
        def word(value: object) -> str:
            return "on" if value is True else "off" if value is False else "whole batch" if value is None \
                else str(value)
        return ", ".join(f"{name} {word(value)}" for name, value in self.as_dict().items())


BF16_CHUNK_ROWS = 8


def cpu_choices(info: CpuInfo | None = None) -> CpuChoices:
    """The kernel choices for `info` (default: this machine's CPU, `detect()`)."""
    return _choices(detect() if info is None else info)


@functools.lru_cache(maxsize=8)
def _choices(info: CpuInfo) -> CpuChoices:
    bf16 = info.native_bf16
    return CpuChoices(bf16=bf16, chunk_rows=BF16_CHUNK_ROWS if bf16 else None,
                      context_attention="matmul" if bf16 else "sdpa", groupnorm_detour=True)


def isa() -> dict[str, bool]:
    """This machine's instruction-set families (`CpuInfo.isa`)."""
    return detect().isa()


EMULATION_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", ISA_ENV)
"""Environment variables that cap the instruction sets of PyTorch's, oneDNN's, MKL's and our own kernels."""


def report() -> dict[str, object]:
    """What a benchmark's JSON carries about the CPU: model, families, cap, the kernels PyTorch dispatches to
    (`torch.backends.cpu.get_cpu_capability()`), the capping variables that are set, and the choices."""
    import torch  # only the benches need it

    info = detect()
    return {"model": info.model, "isa": info.isa(), "cap": info.cap,
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "emulation": {name: os.environ[name] for name in EMULATION_ENV if os.environ.get(name)},
            "choices": cpu_choices(info).as_dict()}


def report_lines(cpu: dict[str, object] | None = None) -> str:
    """`report()` as the two lines a benchmark's table starts with."""
    cpu = report() if cpu is None else cpu
    isa = cpu["isa"]
    assert isinstance(isa, dict)
    present = " ".join(name for name, yes in isa.items() if yes) or "none"
    absent = " ".join(name for name, yes in isa.items() if not yes)
    emulation = cpu["emulation"]
    assert isinstance(emulation, dict)
    capped = " ".join(f"{name}={value}" for name, value in emulation.items())
    choices = cpu["choices"]
    assert isinstance(choices, dict)
    line = (f"cpu {cpu['model']}: {present}" + (f"; no {absent}" if absent else "")
            + f"; torch kernels {cpu['torch_capability']}" + (f"; EMULATED: {capped}" if capped else ""))
    return line + "\ncpu choices: " + CpuChoices(**choices).describe()
