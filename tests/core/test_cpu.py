from __future__ import annotations

import pytest

from core import cpu
from core.cpu import CpuChoices, CpuInfo, cpu_choices, detect, parse_cpuinfo, report, report_lines

AVX2_ONLY = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma f16c
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma f16c
"""
SAPPHIRE = """model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
SKYLAKE = "model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: avx avx2 avx512f avx512bw avx512_vnni\n"
GENOA = "model name\t: AMD EPYC 9654\nflags\t\t: avx avx2 avx512f avx512bw avx512_bf16\n"

# What every auto choice resolves to per kind of CPU (docs/cpu.md has the same table and the measurements).
BF16_CPU = CpuChoices(bf16=True, chunk_rows=8, context_attention="matmul", groupnorm_detour=True)
FP32_CPU = CpuChoices(bf16=False, chunk_rows=None, context_attention="sdpa", groupnorm_detour=True)


def test_an_avx2_only_cpu():
    cpu = parse_cpuinfo(AVX2_ONLY)
    assert cpu.model == "AMD EPYC 7B13"
    assert cpu.isa() == {"avx2": True, "avx512": False, "avx512_bf16": False, "amx": False}
    assert not cpu.native_bf16
    assert cpu.describe() == "AMD EPYC 7B13 (avx2; no avx512 avx512_bf16 amx)"


def test_a_cpu_with_amx():
    cpu = parse_cpuinfo(SAPPHIRE)
    assert all(cpu.isa().values()) and cpu.native_bf16
    assert cpu.describe() == "Intel(R) Xeon(R) Platinum 8480+ (avx2 avx512 avx512_bf16 amx)"


def test_arm_features_and_an_unknown_family():
    cpu = parse_cpuinfo("Features\t: fp asimd sve bf16\n")
    assert cpu.flags == {"fp", "asimd", "sve", "bf16"} and not cpu.native_bf16
    assert "none of" in cpu.describe()
    with pytest.raises(ValueError, match="unknown instruction set 'sse9'"):
        CpuInfo("x", frozenset()).has("sse9")


def test_detect_reads_this_machine_once(tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(SAPPHIRE)
    assert detect(str(fake)).native_bf16
    assert detect(str(tmp_path / "missing")).flags == frozenset()
    assert detect() is detect()


@pytest.mark.parametrize("text, expected", [(AVX2_ONLY, FP32_CPU), (SKYLAKE, FP32_CPU), (GENOA, BF16_CPU),
                                            (SAPPHIRE, BF16_CPU), ("Features\t: fp asimd\n", FP32_CPU)])
def test_choices_per_kind_of_cpu(text, expected):
    assert cpu_choices(parse_cpuinfo(text)) == expected


@pytest.mark.parametrize("level, families", [
    ("none", set()), ("avx2", {"avx2"}), ("avx512", {"avx2", "avx512"}),
    ("avx512_bf16", {"avx2", "avx512", "avx512_bf16"}), ("amx", {"avx2", "avx512", "avx512_bf16", "amx"})])
def test_a_cap_drops_the_families_after_it(level, families):
    capped = parse_cpuinfo(SAPPHIRE).capped(level)
    assert {name for name, yes in capped.isa().items() if yes} == families
    assert capped.cap == level and "avx" in capped.flags  # families before AVX2 are kept
    assert capped.native_bf16 == (level in ("avx512_bf16", "amx"))
    assert f"capped at {level} by IVG_CPU_ISA" in capped.describe()
    if level == "avx512":
        assert {"avx512f", "avx512bw"} <= capped.flags and "avx512_bf16" not in capped.flags
    with pytest.raises(ValueError, match="IVG_CPU_ISA='avx3' must be one of"):
        capped.capped("avx3")


def test_the_environment_caps_the_detection(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text(GENOA)
    assert cpu_choices(detect(str(fake))) == BF16_CPU
    monkeypatch.setenv(cpu.ISA_ENV, "avx2")
    assert detect(str(fake)).cap == "avx2" and cpu_choices(detect(str(fake))) == FP32_CPU
    assert detect(str(fake)) is detect(str(fake))  # read once
    assert cpu.isa() == detect().isa()


def test_report_names_the_cpu_its_kernels_and_the_emulation(monkeypatch):
    monkeypatch.setattr(cpu, "detect", lambda cpuinfo="/proc/cpuinfo": parse_cpuinfo(AVX2_ONLY))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    got = report()
    assert got["model"] == "AMD EPYC 7B13" and got["isa"]["avx2"] and not got["isa"]["avx512_bf16"]
    assert got["choices"] == FP32_CPU.as_dict() and got["emulation"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert isinstance(got["torch_capability"], str)
    first, second = report_lines(got).splitlines()
    assert first.startswith("cpu AMD EPYC 7B13: avx2; no avx512 avx512_bf16 amx; torch kernels ")
    assert "EMULATED: ONEDNN_MAX_CPU_ISA=AVX2" in first
    assert second == ("cpu choices: bf16 off, chunk_rows whole batch, context_attention sdpa, "
                      "groupnorm_detour on")
