"""The decoder's upsamplers two ways: nearest x2 upsampling then a 3x3 conv, and the one transposed conv
that ``world_model.blocks.Upsample`` runs instead.

    python experiments/bench_upsample.py [--preset cpu] [--batches 8,32] [--threads N] [--repeats 30] [--json]

For each upsampler of the preset's frame decoder (its width and input size), each batch size and each of
float32 and bfloat16 (autocast; bf16 rows only where the CPU or GPU runs it natively), it times both forms on
the same input in the layout inference uses (``inference_layout``), reports the best of ``--repeats`` calls
after warm-up, and checks that the two agree. The imagination engine decodes in chunks of
``ImaginationConfig.cpu_chunk_rows`` rows on a CPU (auto: 8 with bf16 instructions, else the whole batch), the
whole batch on a GPU. The table's first lines and the JSON's ``cpu`` name the CPU (``core.cpu``).
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from core.cpu import report, report_lines
from core.precision import dtype_name, native_bf16
from core.runtime import MALLOC_HELP, MALLOC_MODES, configure_malloc, configure_threads, pick_device
from world_model.blocks import Upsample
from world_model.tokenizer import CompressiveTokenizer, inference_layout
from world_model.tokenizer_config import TokenizerConfig


def best_ms(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> float:
    """Best wall-clock time of ``fn`` over ``repeats`` calls after three warm-up calls, in milliseconds."""
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def upsamplers(config: TokenizerConfig) -> list[tuple[int, int, Upsample]]:
    """(channels, input size, layer) of each upsampler of the frame decoder, in decoding order."""
    decoder = CompressiveTokenizer(config).cond_decoder
    size, found = config.latent_size, []
    for block in decoder.up_blocks:
        for layer in block.upsamplers:
            found.append((layer.conv.in_channels, size, layer))
            size *= 2
    return found


@torch.no_grad()
def measure(layer: Upsample, x: torch.Tensor, dtype: torch.dtype, repeats: int, device: torch.device
            ) -> dict[str, float]:
    """Both forms of ``layer`` on ``x`` ``(N, C, h, w)`` under ``dtype`` autocast: their times and largest gap."""
    def two_ops() -> torch.Tensor:
        return layer.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        return {"upsample_conv_ms": best_ms(two_ops, repeats, device),
                "transposed_conv_ms": best_ms(lambda: layer(x), repeats, device),
                "max_abs_diff": (two_ops().float() - layer(x).float()).abs().max().item()}


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="tokenizer preset: tiny, cpu or paper64")
    parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="tuned", help=MALLOC_HELP)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    configure_threads("auto" if args.threads is None else args.threads)
    configure_malloc(args.malloc)
    device = pick_device(args.device)
    torch.manual_seed(0)
    dtypes = [torch.float32] + ([torch.bfloat16] if native_bf16(device) else [])
    rows = []
    for channels, size, layer in upsamplers(TokenizerConfig.preset(args.preset)):
        layer = layer.to(device).eval()
        for batch in (int(b) for b in args.batches.split(",")):
            x = inference_layout(torch.randn(batch, channels, size, size, device=device))
            for dtype in dtypes:
                rows.append({"channels": channels, "input": size, "batch": batch, "dtype": dtype_name(dtype),
                             **measure(layer, x, dtype, args.repeats, device)})
    if args.json:
        print(json.dumps({"preset": args.preset, "device": str(device), "threads": torch.get_num_threads(),
                          "cpu": report(), "rows": rows}, indent=2))
        return
    print(report_lines())
    print(f"preset {args.preset}, {device}, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'upsampler':>16} {'batch':>5} {'dtype':>8} {'upsample+conv':>14} {'transposed':>11} {'speed-up':>8} "
          f"{'max diff':>9}")
    for r in rows:
        name = f"{r['channels']}ch {r['input']}->{2 * r['input']}"
        print(f"{name:>16} {r['batch']:>5} {r['dtype']:>8} {r['upsample_conv_ms']:>11.2f} ms "
              f"{r['transposed_conv_ms']:>8.2f} ms {r['upsample_conv_ms'] / r['transposed_conv_ms']:>7.2f}x "
              f"{r['max_abs_diff']:>9.1e}")


if __name__ == "__main__":
    main()
