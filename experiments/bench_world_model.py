"""World-model cost on the machine at hand: parameter counts, a training step of each part, imagination speed.

    python experiments/bench_world_model.py [--json] [--presets cpu,paper64] [--max-seconds 900]
        [--repeats 3] [--threads N]

Per preset (random-initialised, action-conditioned with 4-d actions and a reward head, 64x64 frames):
- parameters of the tokenizer and of the transformer (heads included);
- `tokenizer step`: one tokenizer update, `WorldModelTrainer.update_tokenizer` (the MBRL setting: T0 = 2 context
  frames plus at most 5 future frames reconstructed per segment; no LPIPS term, since no weights ship with the
  project);
- `transformer step`: one transformer update, `WorldModelTrainer.update_transformer`, which tokenizes the segments
  first (no grad) and then runs the transformer forward/backward; the tokenizing alone is timed too;
- `rollout`: `IVideoGPT.reset` on the context + `horizon` x `step` under random actions; reported as seconds per
  imagined step of the whole batch and milliseconds per imagined frame (= per transition).

Training batches are `--train-batch` segments of `--segment-length` frames (defaults: 16 x 12, the paper's
world-model batch; for paper64 on a CPU 4 x 12, the batch the official code was timed at). Rollouts are 32 x 10
(the paper's MBPO rollout batch; paper64 on a CPU: 4 x 2, again the official timing's setting). When a JSON file
of the official code's CPU timings is found (`reference/ivideogpt/baseline_cpu_timings.json` under the folder
named by the `IVG_SHARED` environment variable), its numbers at the same settings are printed beside ours.

Each measurement is one untimed warm-up, then the best of `--repeats` timed runs; a preset's measurements share
a `--max-seconds` budget: repeats are cut to what fits (at least one) and a measurement whose warm-up alone
would not fit is skipped and marked. The load average is printed: other processes slow CPU runs down. The
first lines name the CPU, its instruction sets and the kernel choices made for it (`core.cpu`; `cpu` in the
JSON).
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

from core.batch import SegmentBatch
from core.cpu import report, report_lines
from core.runtime import MALLOC_HELP, MALLOC_MODES, configure_malloc, configure_threads, pick_device
from world_model.model import IVideoGPT
from world_model.parts import to_unit
from world_model.training import OptimConfig, WorldModelTrainer
from world_model.transformer import num_parameters

ACTION_DIM = 4  # Meta-World
CPU_PAPER_TRAIN_BATCH, CPU_PAPER_ROLLOUT = 4, (4, 2)  # the official code's CPU timing settings
BASELINE = (Path(os.environ.get("IVG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
            / "reference" / "ivideogpt" / "baseline_cpu_timings.json")
BASELINE_SIZES = {"paper64": "paper", "tiny": "tiny"}


@dataclass
class Result:
    """One preset's numbers (seconds are wall clock, best of the timed runs)."""

    preset: str
    device: str
    threads: int
    tokenizer_params: int
    transformer_params: int
    train_batch: int
    segment_length: int
    tokenizer_step_s: float | None = None
    transformer_step_s: float | None = None
    tokenize_s: float | None = None
    rollout_batch: int = 0
    horizon: int = 0
    rollout_s: float | None = None
    rollout_step_s: float | None = None
    ms_per_imagined_frame: float | None = None
    official: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Budget:
    """Wall-clock seconds a preset may spend; decides how many timed repeats still fit."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def measure(name: str, fn: Callable[[], object], device: torch.device, repeats: int, budget: Budget,
            notes: list[str]) -> float | None:
    """Best wall time of ``fn`` over up to ``repeats`` runs after one warm-up; None when it does not fit."""

    def once() -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    if budget.left() <= 0:
        notes.append(f"{name}: skipped, --max-seconds budget spent")
        return None
    warm = once()
    fit = min(repeats, int(budget.left() // warm))
    if fit < 1:
        notes.append(f"{name}: warm-up only ({warm:.2f} s), no timed run fitted the budget")
        return warm
    if fit < repeats:
        notes.append(f"{name}: {fit} timed run(s) instead of {repeats} (budget)")
    return min(once() for _ in range(fit))


def random_segments(batch: int, length: int, size: int, device: torch.device,
                    generator: torch.Generator) -> SegmentBatch:
    frames = torch.randint(0, 256, (batch, length, 3, size, size), dtype=torch.uint8, generator=generator)
    actions = torch.rand(batch, length, ACTION_DIM, generator=generator) * 2 - 1
    return SegmentBatch(frames, actions, torch.rand(batch, length, generator=generator)).to(device)


def official_timings(preset: str, batch: int, rollout: tuple[int, int]) -> dict[str, float]:
    """The official code's quiet-machine median wall times at the same settings, where it was timed."""
    size = BASELINE_SIZES.get(preset)
    if size is None or not BASELINE.is_file():
        return {}
    wanted = {("update_tokenizer", batch, None): "tokenizer_step_s", ("update_model", batch, None): "transformer_step_s",
              ("rollout", rollout[0], rollout[1]): "rollout_s"}
    out = {}
    for run in json.loads(BASELINE.read_text())["results"]:
        key = (run["what"], run["batch"], run.get("horizon"))
        if (run["condition"] == "quiet" and run["size"] == size and run["threads"] == 2 and key in wanted
                and run.get("lpips", "none (zeros)") == "none (zeros)" and "not_official" not in run):
            out.setdefault(wanted[key], run["median_wall_s"])
    return out


def bench_preset(preset: str, device: torch.device, threads: int, args: argparse.Namespace) -> Result:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = IVideoGPT.from_preset(preset, action_dim=ACTION_DIM, reward_head=True).to(device)
    cpu_paper = device.type == "cpu" and preset == "paper64"
    train_batch = args.train_batch or (CPU_PAPER_TRAIN_BATCH if cpu_paper else 16)
    rollout_batch, horizon = (args.rollout_batch, args.horizon) if args.rollout_batch else \
        (CPU_PAPER_ROLLOUT if cpu_paper else (32, 10))
    result = Result(preset, str(device), threads, num_parameters(model.tokenizer), num_parameters(model.transformer),
                    train_batch, args.segment_length, rollout_batch=rollout_batch, horizon=horizon)
    if cpu_paper and not args.train_batch:
        result.notes.append(f"paper64 on a CPU: training batch {train_batch} and rollouts {rollout_batch} x "
                            f"{horizon} (the official CPU timing's settings) instead of 16 x 12 and 32 x 10")
    budget = Budget(args.max_seconds)
    size = model.tokenizer.config.resolution
    batch = random_segments(train_batch, args.segment_length, size, device, generator)
    trainer = WorldModelTrainer(model, OptimConfig())

    result.tokenizer_step_s = measure("tokenizer step", lambda: trainer.update_tokenizer(batch), device,
                                      args.repeats, budget, result.notes)
    result.transformer_step_s = measure("transformer step", lambda: trainer.update_transformer(batch), device,
                                        args.repeats, budget, result.notes)
    result.tokenize_s = measure("tokenize", lambda: model.tokenize(to_unit(batch.frames)), device, args.repeats,
                                budget, result.notes)

    context = to_unit(random_segments(rollout_batch, model.context_frames, size, device, generator).frames)
    actions = torch.rand(horizon, rollout_batch, ACTION_DIM, generator=generator).mul(2).sub(1).to(device)
    sampling = torch.Generator(device).manual_seed(0)

    def rollout() -> None:
        model.reset(context, horizon=horizon, generator=sampling)
        for step_actions in actions:
            model.step(step_actions)

    result.rollout_s = measure("rollout", rollout, device, args.repeats, budget, result.notes)
    if result.rollout_s is not None:
        result.rollout_step_s = result.rollout_s / horizon
        result.ms_per_imagined_frame = 1e3 * result.rollout_s / (horizon * rollout_batch)
    if device.type == "cpu":
        result.official = official_timings(preset, train_batch, (rollout_batch, horizon))
    return result


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[Result]) -> str:
    lines = [("| preset | device | threads | tokenizer params | transformer params | train batch | tokenizer step s "
              "| transformer step s (tokenize s) | rollout B x H | s / imagined step | ms / imagined frame |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.preset} | {r.device} | {r.threads} | {r.tokenizer_params / 1e6:.1f}M | "
            f"{r.transformer_params / 1e6:.1f}M | {r.train_batch} x {r.segment_length} | {fmt(r.tokenizer_step_s)} | "
            f"{fmt(r.transformer_step_s)} ({fmt(r.tokenize_s)}) | {r.rollout_batch} x {r.horizon} | "
            f"{fmt(r.rollout_step_s, '.3f')} | {fmt(r.ms_per_imagined_frame, '.1f')} |")
    for r in results:
        if r.official:
            ours = {"tokenizer_step_s": r.tokenizer_step_s, "transformer_step_s": r.transformer_step_s,
                    "rollout_s": r.rollout_s}
            parts = [f"{k} {v:.2f} (ours {fmt(ours[k])})" for k, v in r.official.items()]
            lines.append(f"\n{r.preset}: official code, same settings, quiet 2-core run: " + "; ".join(parts))
        for note in r.notes:
            lines.append(f"\n{r.preset}: {note}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="cpu,paper64", help="comma-separated world_model.presets names")
    parser.add_argument("--train-batch", type=int, default=None, help="segments per training batch (default: "
                        f"16; paper64 on a CPU {CPU_PAPER_TRAIN_BATCH})")
    parser.add_argument("--segment-length", type=int, default=12)
    parser.add_argument("--rollout-batch", type=int, default=None, help="rollouts per batch (with --horizon)")
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="wall-clock budget per preset")
    parser.add_argument("--threads", default="auto", help="torch CPU threads (auto: all usable cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="tuned", help=MALLOC_HELP)
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    if args.repeats < 1 or args.max_seconds <= 0:
        parser.error("--repeats must be >= 1 and --max-seconds > 0")

    threads = configure_threads(args.threads)
    malloc = "tuned" if configure_malloc(args.malloc) else "as the system set it"
    device = pick_device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results = [bench_preset(name.strip(), device, threads, args) for name in args.presets.split(",") if name.strip()]
    if args.json:
        print(json.dumps({"load_average_at_start": load, "torch": torch.__version__, "malloc": malloc,
                          "cpu": report(), "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(report_lines())
        print(f"torch {torch.__version__}, {device}, {threads} thread(s), malloc {malloc}, "
              f"load average at start {load:.2f}\n")
        print(table(results))


if __name__ == "__main__":
    main()
