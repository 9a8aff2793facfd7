"""Agent steps per second of the pixel Meta-World env at each render quality, and how far each look is from
Meta-World's own (`paper`).

    python experiments/bench_env.py [--task door_open] [--steps 300] [--json]

Every quality runs the same seeded random actions from the same seed, so the simulator states agree and the
frames can be compared pixel by pixel. Resets (at episode ends) are included in the timing. The machine's
load average is printed with the numbers: other processes on the cores make them noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from mbrl.envs import RENDER_PRESETS, EnvConfig, make_env  # sets MUJOCO_GL=egl unless chosen already

REFERENCE_QUALITY = "paper"


def run(task: str, quality: str, steps: int, seed: int) -> tuple[float, np.ndarray]:
    """Seconds for `steps` agent steps (resets included) and the frames seen, uint8 (steps, 3, H, W)."""
    env = make_env(EnvConfig(task=task, seed=seed, render_quality=quality))
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, env.action_dim)).astype(np.float32)
    frames = np.empty((steps, *env.frame_shape), dtype=np.uint8)
    try:
        env.reset()
        start = time.perf_counter()
        for t in range(steps):
            _, _, _, truncated, info = env.step(actions[t])
            frames[t] = info["frame"]
            if truncated:
                env.reset()
        seconds = time.perf_counter() - start
    finally:
        env.close()
    return seconds, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="door_open")
    parser.add_argument("--steps", type=int, default=300, help="agent steps per quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    load_before = os.getloadavg()
    results = {quality: run(args.task, quality, args.steps, args.seed) for quality in RENDER_PRESETS}
    reference = results[REFERENCE_QUALITY][1].astype(np.int16)
    rows = []
    for quality, (seconds, frames) in results.items():
        rows.append(
            {
                "quality": quality,
                "agent_steps_per_s": args.steps / seconds,
                "ms_per_agent_step": 1000 * seconds / args.steps,
                "mean_abs_pixel_diff_vs_paper": float(np.abs(frames.astype(np.int16) - reference).mean()),
            }
        )
    report = {
        "task": args.task,
        "steps": args.steps,
        "mujoco_gl": os.environ.get("MUJOCO_GL", "default"),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_1m_before": load_before[0],
        "loadavg_1m_after": os.getloadavg()[0],
        "results": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"task {args.task}, {args.steps} agent steps per quality, MUJOCO_GL={report['mujoco_gl']}, "
        f"{report['cpu_count']} CPUs, load average (1 min) {load_before[0]:.2f} before / "
        f"{report['loadavg_1m_after']:.2f} after"
    )
    print(f"{'quality':<8} {'agent steps/s':>14} {'ms/step':>9} {'|diff| vs paper (of 255)':>26}")
    for row in rows:
        print(
            f"{row['quality']:<8} {row['agent_steps_per_s']:>14.1f} {row['ms_per_agent_step']:>9.2f} "
            f"{row['mean_abs_pixel_diff_vs_paper']:>26.2f}"
        )


if __name__ == "__main__":
    main()
