"""The world-model quality curve of a `python -m world_model.train` run: a plot and a Markdown table.

    python experiments/plot_wm_quality.py RUN_DIR [--out FILE.png] [--steps 1000,2500]

Reads the run's ``eval.csv`` (held-out open-loop validation) and ``train.csv`` and draws four panels over
training steps:

1. reconstruction PSNR of context frames (the plain path) and of future frames (the conditional path), the
   10-step open-loop PSNR (mean over imagined steps), each against copying the last context frame;
2. open-loop PSNR at each imagined step k under the real actions, against copy-last at step k, for the
   validations named by ``--steps`` (default: the first with a trained transformer and the last);
3. reward error of the imagined rollouts (``eval/reward_mse``) and the teacher-forced reward loss;
4. codebook use: the fraction of each codebook in use over the last window of updates.

It prints a Markdown table of every validation (PSNRs in dB, and future reconstruction MSE as a multiple of
copy-last's: the issue's target is at most 0.5) and writes the plot beside the run (``quality.png``) unless
``--out`` says otherwise. Needs matplotlib (the ``report`` extra).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from core.logger import read_rows

COLUMNS = ("step", "context recon PSNR", "future recon PSNR", "future recon / copy-last MSE", "open-loop PSNR",
           "copy-last PSNR", "open-loop - copy-last", "step-H PSNR (copy-last)", "reward MSE", "CE")


def _num(row: dict[str, str], key: str) -> float | None:
    value = row.get(key, "")
    return float(value) if value not in ("", None) else None


def horizon_of(row: dict[str, str]) -> int:
    """How many imagined steps a validation row scores apart (``eval/psnr_k`` columns)."""
    return sum(1 for key in row if key.startswith("eval/psnr_") and row[key] != "")


def table(evals: list[dict[str, str]]) -> str:
    """One Markdown row per validation of ``eval.csv``."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in evals:
        h = horizon_of(row)
        last = (f"{_num(row, f'eval/psnr_{h}'):.2f} ({_num(row, f'eval/copy_last_psnr_{h}'):.2f})" if h else "-")
        cells = [str(int(float(row["step"]))), f"{_num(row, 'eval/context_recon_psnr'):.2f}",
                 f"{_num(row, 'eval/recon_psnr'):.2f}",
                 f"{_num(row, 'eval/recon_mse') / _num(row, 'eval/copy_last_mse'):.2f}",
                 f"{_num(row, 'eval/psnr'):.2f}", f"{_num(row, 'eval/copy_last_psnr'):.2f}",
                 f"{_num(row, 'eval/psnr') - _num(row, 'eval/copy_last_psnr'):+.2f}", last,
                 "-" if _num(row, "eval/reward_mse") is None else f"{_num(row, 'eval/reward_mse'):.3g}",
                 f"{_num(row, 'eval/ce'):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(run_dir: Path, out: Path, steps: list[int] | None = None) -> Path:
    """Draws the four panels of the run's logs into ``out`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = read_rows(run_dir / "eval.csv")
    train = read_rows(run_dir / "train.csv")
    if not evals:
        raise SystemExit(f"{run_dir / 'eval.csv'} has no validation rows: run world_model.train with val_data=")
    x = [float(r["step"]) for r in evals]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))

    ax = axes[0, 0]
    for key, label in (("eval/context_recon_psnr", "context reconstruction"),
                       ("eval/recon_psnr", "future reconstruction"), ("eval/psnr", "open loop (mean over steps)"),
                       ("eval/copy_last_psnr", "copy last context frame")):
        ax.plot(x, [_num(r, key) for r in evals], marker="o", label=label,
                linestyle="--" if "copy_last" in key else "-")
    ax.set(xlabel="training step", ylabel="PSNR (dB)", title="held-out reconstruction and prediction")
    ax.legend()

    ax = axes[0, 1]
    chosen = steps or sorted({int(x[i]) for i in (_first_with_transformer(evals), len(evals) - 1)})
    baselines = set()  # the validation segments are the same every time: one copy-last line per distinct one
    for row in evals:
        if int(float(row["step"])) not in chosen:
            continue
        h = horizon_of(row)
        k = list(range(1, h + 1))
        ax.plot(k, [_num(row, f"eval/psnr_{i}") for i in k], marker="o",
                label=f"world model, step {int(float(row['step']))}")
        baseline = tuple(_num(row, f"eval/copy_last_psnr_{i}") for i in k)
        if baseline not in baselines:
            ax.plot(k, baseline, linestyle="--", color="black", label="copy last context frame")
            baselines.add(baseline)
    ax.set(xlabel="imagined step k", ylabel="PSNR (dB)", title="open-loop PSNR per imagined step (real actions)")
    ax.legend()

    ax = axes[1, 0]
    if any(_num(r, "eval/reward_mse") is not None for r in evals):
        ax.plot(x, [_num(r, "eval/reward_mse") for r in evals], marker="o", label="open loop (reward MSE, reward units)")
    if any(_num(r, "eval/reward") is not None for r in evals):
        ax.plot(x, [_num(r, "eval/reward") for r in evals], marker="s", label="teacher forced (MSE in symlog space)")
    ax.set(xlabel="training step", ylabel="error", title="reward", yscale="log")
    ax.legend()

    ax = axes[1, 1]
    tx = [float(r["step"]) for r in train]
    for key in ("tokenizer/context_codes_used", "tokenizer/dynamics_codes_used"):
        if train and key in train[0]:
            ax.plot(tx, [_num(r, key) for r in train], label=key.split("/")[1].replace("_", " "))
    ax.set(xlabel="training step", ylabel="fraction of the codebook", title="codebook use (last window)",
           ylim=(0, 1.05))
    ax.legend()

    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _first_with_transformer(evals: list[dict[str, str]]) -> int:
    """Index of the first validation whose open loop beats its first one (the transformer has started); else 0."""
    first = _num(evals[0], "eval/psnr")
    return next((i for i, r in enumerate(evals) if _num(r, "eval/psnr") > first + 0.5), 0)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--steps", help="comma-separated validation steps for the per-step panel")
    args = p.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")] if args.steps else None
    out = plot(args.run_dir, args.out or args.run_dir / "quality.png", steps)
    text = table(read_rows(args.run_dir / "eval.csv"))
    print(text)
    print(f"\nplot: {out}")
    return text


if __name__ == "__main__":
    main()
