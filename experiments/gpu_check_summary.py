"""Summarise a run of `experiments/gpu_check.sh` into one JSON file and a short table.

    python experiments/gpu_check_summary.py OUT_DIR [--gpu NAME]

Reads `OUT_DIR/steps.tsv` (one row per step: name, exit status, milliseconds), each step's log
(`OUT_DIR/logs/<name>.log`, whose last JSON document is the step's machine-readable result, as the benches print
with `--json`) and the MBPO run's `OUT_DIR/mbpo_run/train.csv`; writes `OUT_DIR/summary.json`:

    {"gpu": ..., "torch": ..., "ok": all steps exited 0,
     "steps": [{"name", "exit_code", "seconds", "timed_out", "log", "result"}, ...],
     "mbpo": {"frames": ..., "seconds_per_1k_frames": {"env": ..., "wm_update": ..., ...}} or null}
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

TIMEOUT_CODES = (124, 137)  # `timeout`'s exit status, and SIGKILL's


def last_json(text: str) -> Any:
    """The last complete JSON object or array in `text` (logs mix progress lines with the bench's output)."""
    decoder = json.JSONDecoder()
    found = None
    index = 0
    while index < len(text):
        starts = [i for i in (text.find("{", index), text.find("[", index)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        if isinstance(value, (dict, list)) and value:
            found = value
        index = end
    return found


def mbpo_split(train_csv: Path) -> dict[str, Any] | None:
    """Seconds per 1k env frames of each phase, from the last row's cumulative `time/<phase>` columns."""
    if not train_csv.is_file():
        return None
    with open(train_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    last = rows[-1]
    frames = float(last.get("frame") or 0)
    if frames <= 0:
        return None
    split = {key.removeprefix("time/"): round(float(value) * 1000 / frames, 3)
             for key, value in last.items() if key.startswith("time/") and value not in ("", None)}
    return {"frames": int(frames), "episodes": len(rows), "seconds_per_1k_frames": split}


def summarise(out: Path, gpu: str | None = None) -> dict[str, Any]:
    """The summary of the run in `out` (see the module docstring)."""
    steps = []
    tsv = out / "steps.tsv"
    lines = tsv.read_text().splitlines() if tsv.is_file() else []
    for line in lines:
        if not line.strip():
            continue
        name, code, millis = line.split("\t")
        log = out / "logs" / f"{name}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        steps.append({"name": name, "exit_code": int(code), "seconds": round(int(millis) / 1000, 1),
                      "timed_out": int(code) in TIMEOUT_CODES, "log": str(log.relative_to(out)),
                      "result": last_json(text)})
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {"gpu": gpu, "torch": torch_version, "ok": bool(steps) and all(s["exit_code"] == 0 for s in steps),
            "steps": steps, "mbpo": mbpo_split(out / "mbpo_run" / "train.csv")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder gpu_check.sh wrote")
    parser.add_argument("--gpu", default=None, help="the GPU's name, recorded in the summary")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        parser.error(f"{args.out} is not a folder written by experiments/gpu_check.sh")
    summary = summarise(args.out, args.gpu)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{'step':<20} {'exit':>4} {'seconds':>8}")
    for step in summary["steps"]:
        print(f"{step['name']:<20} {step['exit_code']:>4} {step['seconds']:>8.1f}"
              + ("  (timed out)" if step["timed_out"] else ""))
    if summary["mbpo"]:
        split = ", ".join(f"{k} {v}" for k, v in summary["mbpo"]["seconds_per_1k_frames"].items())
        print(f"MBPO, seconds per 1k frames over {summary['mbpo']['frames']} frames: {split}")
    print(f"summary: {args.out / 'summary.json'}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
