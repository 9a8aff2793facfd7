import pytest
import torch

from core import precision
from core.precision import (
    autocast,
    autocast_to,
    cpu_has_native_bf16,
    dtype_name,
    native_bf16,
    resolve_precision,
)


@pytest.mark.parametrize("flags, expected", [("fpu sse avx512f avx512_bf16 avx2", True),
                                              ("fpu amx_tile amx_bf16", True),
                                              ("fpu sse avx512f avx512bw", False)])
def test_native_bf16_cpu_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(info)) is expected
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_environment_forces_the_cpu_answer_and_autocast_follows(monkeypatch):
    x = torch.ones(2, 2)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert native_bf16(torch.device("cpu"))
    with autocast(torch.device("cpu")):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), enabled=False):
        assert (x @ x).dtype == torch.float32
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert not native_bf16(torch.device("cpu"))
    with autocast(torch.device("cpu")):
        assert (x @ x).dtype == torch.float32
    monkeypatch.setenv(precision.CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="IVG_CPU_BF16 must be 0 or 1"):
        native_bf16(torch.device("cpu"))
    assert not native_bf16(torch.device("meta"))


def test_precision_settings_resolve_per_device_and_autocast_to_them(monkeypatch):
    cpu, x = torch.device("cpu"), torch.ones(2, 2)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("auto", cpu, fallback=torch.bfloat16) == torch.bfloat16
    assert resolve_precision("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")
    assert resolve_precision("auto", cpu) == torch.bfloat16
    assert resolve_precision("float32", cpu) == torch.float32
    with pytest.raises(ValueError, match="'half' must be one of auto, float32, bfloat16"):
        resolve_precision("half", cpu)
    assert [resolve_precision(dtype_name(d), cpu) for d in (torch.float32, torch.bfloat16)] == \
        [torch.float32, torch.bfloat16]  # a dtype's name is its setting
    with autocast_to(cpu, torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16
        with autocast_to(cpu, None), autocast_to(cpu, torch.float32):  # no-ops: the outer precision stays
            assert (x @ x).dtype == torch.bfloat16
    with autocast_to(cpu, torch.float32):
        assert (x @ x).dtype == torch.float32


def test_the_bf16_answer_comes_from_the_one_cpu_detection(monkeypatch):
    from core import cpu

    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    for text, native in (("flags\t: avx2 avx512f avx512_bf16\n", True), ("flags\t: avx2\n", False)):
        monkeypatch.setattr(cpu, "detect", lambda cpuinfo="/proc/cpuinfo", text=text: cpu.parse_cpuinfo(text))
        assert native_bf16(torch.device("cpu")) is native
        assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16 if native else torch.float32)
    monkeypatch.setenv(precision.CPU_BF16_ENV, "1")  # the override still wins
    assert native_bf16(torch.device("cpu"))
