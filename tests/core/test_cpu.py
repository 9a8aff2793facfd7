from __future__ import annotations

import pytest

from core.cpu import CpuInfo, detect, parse_cpuinfo

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
