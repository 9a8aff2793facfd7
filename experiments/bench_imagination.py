"""Imagined transitions per second: the rollout engine against the official-style reference rollout.

    python experiments/bench_imagination.py [--json] [--preset cpu|paper64|tiny] [--batches 1,32,256]
        [--horizon 10] [--max-seconds 300] [--repeats 2] [--threads N] [--compile auto|true|false]
        [--precision auto|float32|bfloat16] [--chunk-rows auto|none|N]

`engine` is `IVideoGPT.reset/step` (`world_model.imagination.Imaginer`, default `ImaginationConfig`: compiled
and CUDA-graph-captured in bfloat16 on a GPU; eager on a CPU, float32 token steps with the context prefill and
the tokenizer in bf16 where the CPU has bf16 instructions; reset and frame decoding in chunks of
`cpu_chunk_rows` rollouts, as `core.cpu.cpu_choices` picks for the CPU, `--chunk-rows` to set it).
`--compile true` is the fastest CPU setting measured here: the token step compiled and in bf16 where the CPU
has bf16 instructions, the frame decoder eager (needs a C++ compiler; compiling takes tens of seconds and is
not timed). `reference` is
`experiments/reference_rollout.py`: the published rollout's algorithm written with this
project's modules (per imagined frame a fresh generate that re-reads the whole sequence, then detokenize;
bfloat16 autocast on a GPU as the official code), in eval mode and with the context's cross-attention
keys/values cached, so it is a *faster* baseline than the official code (see that module's docstring).

A transition is one imagined frame of one rollout: throughput = batch * horizon / seconds of one rollout batch
(`reset` + `horizon` steps, the model random-initialised from the preset, random actions). Times are the best
of `--repeats` runs after a warm-up (`reset` + one step: compilation and graph capture happen there and are
not counted), the engine's and the reference's runs taking turns. One more engine run, synchronised between
phases, gives the breakdown: `reset` and per-step token sampling / frame decoding (means over the `horizon`
steps; the reference's decoding is the mean of as many calls). Both paths decode every frame with the same
call, so `w/o decode` is the ratio with that shared cost taken out of both (an estimate: the engine's decode
time subtracted from each). Combos whose estimated time (extrapolated linearly in the batch from the last
measured one) exceeds `--max-seconds` are skipped and marked. On CUDA the table also gives the floor of
a token step implied by the bytes it must move (decode weights + the keys/values attended + written) at the
bandwidth of a large device copy, and the fraction of it the engine reaches. The load average is printed:
other processes on the machine slow CPU runs down. The first lines name the CPU, its instruction sets (and any
cap set to emulate an older CPU, `docs/cpu.md`) and the kernel choices made for it; the JSON has them under
`machine.cpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from reference_rollout import reference_rollout  # experiments/, this script's folder

from core.cpu import report, report_lines
from core.precision import autocast_to, dtype_name
from core.runtime import MALLOC_HELP, MALLOC_MODES, configure_malloc
from world_model.imagination_config import ImaginationConfig
from world_model.model import IVideoGPT
from world_model.transformer import WorldModelTransformer

ACTION_DIM = 4  # Meta-World
PRESETS = ("cpu", "paper64", "tiny")
# the official code's own rollout timings on a 2-core CPU (shared/README.md), for the sizes it was timed at
BASELINE = (Path(os.environ.get("IVG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
            / "reference" / "ivideogpt" / "baseline_cpu_timings.json")
BASELINE_SIZES = {"tiny": "tiny", "paper64": "paper"}


@dataclass
class Row:
    """One batch size: seconds per rollout batch for both paths, and what they imply."""

    preset: str
    device: str
    batch: int
    horizon: int
    engine_s: float | None = None
    reference_s: float | None = None
    engine_tps: float | None = None
    reference_tps: float | None = None
    ratio: float | None = None
    ratio_without_decode: float | None = None
    reset_s: float | None = None
    sample_ms_per_step: float | None = None
    decode_ms_per_step: float | None = None
    reference_decode_ms_per_step: float | None = None
    token_step_us: float | None = None
    floor_token_step_us: float | None = None
    floor_fraction: float | None = None
    notes: list[str] = field(default_factory=list)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., object], *args: object) -> float:
    """Wall seconds of ``fn(*args)``, device work included."""
    sync(device)
    start = time.perf_counter()
    fn(*args)
    sync(device)
    return time.perf_counter() - start


def make_inputs(model: IVideoGPT, batch: int, horizon: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Context frames (B, T0, 3, H, W) in [0, 1] and actions (B, horizon, A) in [-1, 1]."""
    gen = torch.Generator().manual_seed(batch)
    size = model.tokenizer.config.resolution
    frames = torch.rand(batch, model.context_frames, 3, size, size, generator=gen)
    actions = torch.rand(batch, horizon, ACTION_DIM, generator=gen) * 2 - 1
    return frames.to(device), actions.to(device)


def engine_run(model: IVideoGPT, frames: torch.Tensor, actions: torch.Tensor, steps: int) -> None:
    model.reset(frames, horizon=actions.shape[1], generator=torch.Generator(frames.device).manual_seed(0))
    for t in range(steps):
        model.step(actions[:, t])


def engine_breakdown(model: IVideoGPT, frames: torch.Tensor, actions: torch.Tensor, device: torch.device
                     ) -> tuple[float, float, float]:
    """Seconds of reset, and mean seconds per step of token sampling and of frame decoding (synchronised)."""
    imaginer, horizon = model.imaginer, actions.shape[1]
    start = time.perf_counter()
    model.reset(frames, horizon=horizon, generator=torch.Generator(device).manual_seed(0))
    sync(device)
    reset_s, sample_s, decode_s = time.perf_counter() - start, 0.0, 0.0
    for t in range(horizon):
        start = time.perf_counter()
        codes, _ = imaginer.sample(actions[:, t])
        sync(device)
        middle = time.perf_counter()
        imaginer.decode(codes)
        sync(device)
        sample_s, decode_s = sample_s + middle - start, decode_s + time.perf_counter() - middle
    return reset_s, sample_s / horizon, decode_s / horizon


def reference_precisions(model: IVideoGPT, device: torch.device, decoder: str
                         ) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(autocast, decoder_autocast) of the reference: the official code's (bf16 autocast on CUDA; float32 on
    a CPU, where its ``torch.cuda.amp.autocast`` does nothing), the tokenizer optionally at the engine's."""
    autocast = torch.bfloat16 if device.type == "cuda" else None
    if decoder == "official":
        return autocast, None
    engine_decoder = model.imaginer.config.resolve(device).decoder_dtype
    return autocast, None if engine_decoder == torch.float32 else engine_decoder


def reference_run(model: IVideoGPT, frames: torch.Tensor, actions: torch.Tensor, device: torch.device,
                  precisions: tuple[torch.dtype | None, torch.dtype | None]) -> None:
    autocast, decoder_autocast = precisions
    reference_rollout(model, frames, actions, actions.shape[1], generator=torch.Generator(device).manual_seed(0),
                      per_call_cache=True, autocast=autocast, decoder_autocast=decoder_autocast)


def reference_decode_s(model: IVideoGPT, frames: torch.Tensor, device: torch.device,
                       precisions: tuple[torch.dtype | None, torch.dtype | None], repeats: int = 10) -> float:
    """Seconds of one frame decoding in the reference's precision: the mean of ``repeats`` calls after a
    warm-up, as the engine's decode time is the mean over a rollout's steps (a best-of would favour it)."""
    dtype = precisions[1] or precisions[0]
    tokenizer, batch = model.tokenizer, frames.shape[0]
    codes = torch.zeros(batch, 1, model.layout(1).tokens_per_future_frame, dtype=torch.long, device=device)
    with torch.no_grad(), autocast_to(device, dtype):
        context = tokenizer.context_cache(tokenizer.encode_context(frames))
        tokenizer.decode_future(codes, context)
        return sum(timed(device, tokenizer.decode_future, codes, context) for _ in range(repeats)) / repeats


# ------------------------------------------------------------------------------------ GPU floor
def copy_bandwidth(device: torch.device, gib: float = 1.0, runs: int = 10) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted), best of ``runs``."""
    src = torch.empty(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(device, dst.copy_, src) for _ in range(runs))
    return 2 * src.numel() * src.element_size() / best


def token_step_bytes(model: WorldModelTransformer, batch: int, prefix: int, horizon: int, block: int,
                     codes: int, dtype: torch.dtype) -> float:
    """Bytes one token step must move, averaged over a rollout: weights it reads + keys/values attended/written.

    The embedding table and the LM head's rows outside the dynamics codes are not read (one embedding row per
    rollout, negligible); the keys/values read are those of the positions before and at the token.
    """
    itemsize = torch.tensor([], dtype=dtype).element_size()
    llm = model.llm
    params = sum(p.numel() for name, p in model.named_parameters()
                 if not name.startswith(("llm.model.embed_tokens", "llm.lm_head")))
    params += codes * llm.lm_head.in_features
    cfg = model.config
    per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * batch * itemsize
    steps = horizon * block
    mean_attended = prefix + (steps + 1) / 2
    return params * itemsize + per_position * (mean_attended + 1)


def official_notes(preset: str, batch: int, horizon: int) -> list[str]:
    """The official code's measured throughput at this size, batch and horizon (quiet runs), if it was timed."""
    if preset not in BASELINE_SIZES or not BASELINE.is_file():
        return []
    notes = []
    for run in json.loads(BASELINE.read_text())["results"]:
        if (run["condition"], run["what"], run["size"], run["batch"], run.get("horizon")) == \
                ("quiet", "rollout", BASELINE_SIZES[preset], batch, horizon):
            mode = "training mode (official)" if run["transformer_training_mode"] else "eval mode (not official)"
            notes.append(f"official code on a 2-core CPU: {run['median_imagined_frames_per_s']:.1f} tr/s, "
                         f"{mode}, transformers {run['transformers']}, {run['threads']} threads "
                         f"({BASELINE.name})")
    return notes


# ----------------------------------------------------------------------------------------- main
def estimate(history: list[tuple[int, float]], batch: int, runs: int) -> float | None:
    """Seconds for ``runs`` runs at ``batch``, linear in the batch from the last measured one (None: unknown)."""
    if not history:
        return None
    last_batch, last_seconds = history[-1]
    return last_seconds * batch / last_batch * runs


def bench(preset: str, batches: list[int], horizon: int, repeats: int, max_seconds: float,
          device: torch.device, bandwidth: float | None, reference_decoder: str = "official",
          engine: ImaginationConfig | None = None) -> list[Row]:
    """Both paths at every batch size (ascending); ``bandwidth`` (bytes/s) gives the token-step floor;
    ``reference_decoder``: ``official`` or ``engine`` precision for the reference's tokenizer calls;
    ``engine``: the engine's knobs (default ``ImaginationConfig()``)."""
    torch.manual_seed(0)
    model = IVideoGPT.from_preset(preset, action_dim=ACTION_DIM, reward_head=True,
                                  imagination=engine).to(device).eval()
    layout = model.layout(horizon)
    dtype = model.imaginer.config.resolve(device).dtype
    precisions = reference_precisions(model, device, reference_decoder)
    engine_history: list[tuple[int, float]] = []
    reference_history: list[tuple[int, float]] = []
    rows = []
    for batch in sorted(batches):
        row = Row(preset, str(device), batch, horizon)
        frames, actions = make_inputs(model, batch, horizon, device)
        # engine: warm-up (reset + 1 step, compile and capture) + repeats + one synchronised breakdown run
        guess = estimate(engine_history, batch, repeats + 2)
        run_engine = guess is None or guess <= max_seconds
        if not run_engine:
            row.notes.append(f"engine skipped: est. {guess:.3g} s > --max-seconds {max_seconds:g}")
        guess = estimate(reference_history, batch, repeats)
        run_reference = guess is None or guess <= max_seconds
        if not run_reference:
            row.notes.append(f"reference skipped: est. {guess:.3g} s > --max-seconds {max_seconds:g}")
        if run_engine:
            engine_run(model, frames, actions, steps=1)
        # the two paths take turns, so that a machine that speeds up or slows down meanwhile affects both alike
        engine_times, reference_times = [], []
        for _ in range(repeats):
            if run_engine:
                engine_times.append(timed(device, engine_run, model, frames, actions, horizon))
            if run_reference:
                reference_times.append(timed(device, reference_run, model, frames, actions, device, precisions))
        if run_engine:
            row.engine_s = min(engine_times)
            engine_history.append((batch, row.engine_s))
            row.reset_s, sample_s, decode_s = engine_breakdown(model, frames, actions, device)
            row.sample_ms_per_step, row.decode_ms_per_step = 1e3 * sample_s, 1e3 * decode_s
            row.token_step_us = 1e6 * sample_s / layout.future_block_length
            row.engine_tps = batch * horizon / row.engine_s
            if bandwidth is not None:
                moved = token_step_bytes(model.transformer, batch, layout.prefix_length, horizon,
                                         layout.future_block_length, layout.dynamics_vocab_size, dtype)
                row.floor_token_step_us = 1e6 * moved / bandwidth
                row.floor_fraction = row.floor_token_step_us / row.token_step_us
            model.imaginer.release()
        if run_reference:
            row.reference_s = min(reference_times)
            row.reference_decode_ms_per_step = 1e3 * reference_decode_s(model, frames[:, :layout.context_frames],
                                                                        device, precisions, horizon)
            reference_history.append((batch, row.reference_s))
            row.reference_tps = batch * horizon / row.reference_s
        if row.engine_s is not None and row.reference_s is not None:
            row.ratio = row.reference_s / row.engine_s
            # both paths decode each frame once with the same module (each in its own precision): the rest
            row.ratio_without_decode = ((row.reference_s - horizon * row.reference_decode_ms_per_step / 1e3)
                                        / (row.engine_s - horizon * row.decode_ms_per_step / 1e3))
        if device.type == "cpu":
            row.notes.extend(official_notes(preset, batch, horizon))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec`` (which starts with the width), or a right-aligned dash."""
    width = int(spec.split(".")[0])
    return "-".rjust(width) if value is None else format(value, spec)


def print_table(rows: list[Row], machine: dict) -> None:
    print(report_lines(machine["cpu"]))
    print(f"device {machine['device']}, torch {machine['torch']}, threads {machine['threads']}, "
          f"load average at start {machine['load_average']}, "
          f"malloc {'tuned' if machine['malloc_tuned'] else 'as the system set it'}"
          + (f", copy bandwidth {machine['bandwidth_gb_s']:.0f} GB/s" if machine.get("bandwidth_gb_s") else ""))
    compiled = ("token step and decoder compiled" if machine["engine_decoder_compiled"] else "token step compiled"
                ) if machine["engine_compiled"] else "eager"
    chunks = (f", reset and decoding in chunks of {machine['engine_chunk_rows']} rollouts"
              if machine["engine_chunk_rows"] else ", reset and decoding on the whole batch")
    print(f"precision: engine {machine['engine_precision']} ({compiled}{chunks}); "
          f"reference {machine['reference_precision']}")
    header = (f"{'preset':8} {'batch':>5} {'H':>3} | {'engine tr/s':>11} {'reference tr/s':>14} {'ratio':>6} "
              f"{'w/o decode':>10} | "
              f"{'reset s':>7} {'tokens ms/step':>14} {'decode ms/step':>14} {'ref decode ms':>14} | "
              f"{'token us':>8} {'floor us':>8} "
              f"{'of floor':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.preset:8} {r.batch:>5} {r.horizon:>3} | {fmt(r.engine_tps, '11.1f')} "
              f"{fmt(r.reference_tps, '14.1f')} {fmt(r.ratio, '6.1f')} {fmt(r.ratio_without_decode, '10.1f')} | "
              f"{fmt(r.reset_s, '7.2f')} "
              f"{fmt(r.sample_ms_per_step, '14.1f')} {fmt(r.decode_ms_per_step, '14.1f')} "
              f"{fmt(r.reference_decode_ms_per_step, '14.1f')} | "
              f"{fmt(r.token_step_us, '8.0f')} {fmt(r.floor_token_step_us, '8.0f')} {fmt(r.floor_fraction, '8.0%')}")
        for note in r.notes:
            print(f"{'':14}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--batches", default="1,32,256", help="comma-separated batch sizes")
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path; the best is kept")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="skip a path at a batch size when its estimated time exceeds this")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--reference-decoder", choices=("official", "engine"), default="official",
                        help="precision of the reference's tokenizer calls: the official code's (float32 on a "
                             "CPU, bf16 autocast on CUDA) or the engine's")
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto",
                        help="torch.compile the engine's token step and frame decoder (auto: on CUDA only; on a "
                             "CPU it needs a C++ compiler, and compiling is not timed)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="the engine's transformer precision (ImaginationConfig.precision; auto: bfloat16 on "
                             "CUDA, float32 on a CPU, where eager bf16 token steps are slower)")
    parser.add_argument("--chunk-rows", default="auto", help="ImaginationConfig.cpu_chunk_rows: auto, none or N")
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="tuned", help=MALLOC_HELP)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not batches or min(batches) < 1 or args.horizon < 1 or args.repeats < 1:
        parser.error("--batches, --horizon and --repeats must be positive")
    if args.chunk_rows not in ("auto", "none") and not args.chunk_rows.isdigit():
        parser.error(f"--chunk-rows must be auto, none or a number, got {args.chunk_rows!r}")
    chunk_rows = {"auto": "auto", "none": None}[args.chunk_rows] if not args.chunk_rows.isdigit() \
        else int(args.chunk_rows)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    malloc_tuned = configure_malloc(args.malloc)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    machine = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average": [round(x, 2) for x in os.getloadavg()], "malloc_tuned": malloc_tuned,
               "cpu": report()}
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    if bandwidth is not None:
        machine["bandwidth_gb_s"] = bandwidth / 1e9
    config = ImaginationConfig(compile={"auto": "auto", "true": True, "false": False}[args.compile],
                               precision=args.precision, cpu_chunk_rows=chunk_rows)
    engine = config.resolve(device)
    machine["engine_precision"] = (f"transformer {dtype_name(engine.dtype)} (prefill {dtype_name(engine.prefill_dtype)}), "
                                   f"tokenizer {dtype_name(engine.decoder_dtype)}")
    machine["engine_compiled"] = engine.compile
    machine["engine_decoder_compiled"] = engine.compile_decoder
    machine["engine_chunk_rows"] = engine.chunk_rows
    ref_autocast = "bfloat16 autocast" if device.type == "cuda" else "float32"
    machine["reference_precision"] = (f"{ref_autocast} (the official code's)" if args.reference_decoder == "official"
                                      else f"transformer {ref_autocast}, tokenizer as the engine's")
    rows = bench(args.preset, batches, args.horizon, args.repeats, args.max_seconds, device, bandwidth,
                 args.reference_decoder, config)
    if args.json:
        print(json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=1))
    else:
        print_table(rows, machine)


if __name__ == "__main__":
    main()
