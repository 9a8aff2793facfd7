"""DrQ-v2 update throughput: this project's agent against a reference-style update, per thread count.

    python experiments/bench_drqv2.py [--batch 256] [--threads 1 2] [--updates 5] [--json]

`reference-style` re-creates the reference implementation's costs with this project's networks: float
images, replicate pad + bilinear `grid_sample` augmentation, NCHW convolutions, per-parameter Adam, and an
actor loss whose backward also computes the critic's weight gradients. `drqv2` is `agents.drqv2.DrQV2Agent`
as configured for training (uint8 crop augmentation, channels-last convolutions, fused Adam, actor-only
backward); `drqv2 nchw` is the same without channels-last. Timings are medians over `--updates` updates after
one warm-up update; other processes on the machine slow them down (the load average is printed). The first
lines name the CPU, its instruction sets and the kernel choices made for it (`core.cpu`); the JSON is
`{"cpu": ..., "load_average": ..., "rows": [...]}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agents.drqv2 import DrQV2Agent, DrQV2Config
from core.batch import TransitionBatch
from core.cpu import report, report_lines
from core.runtime import MALLOC_HELP, MALLOC_MODES, configure_malloc

BF16_VARIANT = "drqv2 bf16-encoder"  # the agent with agent.encoder_precision=bfloat16
FOREACH_VARIANT = "drqv2 foreach-adam"  # the agent with multi-tensor (foreach) Adam instead of fused Adam


def make_batch(batch_size: int, obs_shape: tuple[int, int, int], action_dim: int) -> TransitionBatch:
    g = torch.Generator().manual_seed(0)
    return TransitionBatch(
        obs=torch.randint(0, 256, (batch_size, *obs_shape), dtype=torch.uint8, generator=g),
        action=torch.rand(batch_size, action_dim, generator=g) * 2 - 1,
        reward=torch.rand(batch_size, 1, generator=g),
        discount=torch.full((batch_size, 1), 0.99**3),
        next_obs=torch.randint(0, 256, (batch_size, *obs_shape), dtype=torch.uint8, generator=g),
    )


def grid_sample_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Random shift as the reference computes it: replicate pad, bilinear sampling of a shifted window."""
    b, _, h, _ = x.shape
    x = F.pad(x, (pad,) * 4, mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    line = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad)[:h]
    base = torch.stack([line.expand(h, h), line[:, None].expand(h, h)], dim=-1)
    shift = torch.randint(0, 2 * pad + 1, (b, 1, 1, 2)).float() * (2.0 / (h + 2 * pad))
    return F.grid_sample(x, base[None] + shift, padding_mode="zeros", align_corners=False)


class ReferenceStyleUpdate:
    """The reference update's data path and optimizer choices around this project's networks."""

    def __init__(self, agent: DrQV2Agent) -> None:
        self.agent = agent
        cfg = agent.cfg
        self.opts = [
            torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
            for m in (agent.encoder, agent.actor, agent.critic)
        ]

    def __call__(self, batch: TransitionBatch, step: int) -> None:
        a, cfg = self.agent, self.agent.cfg
        encoder_opt, actor_opt, critic_opt = self.opts
        obs = grid_sample_shift(batch.obs.float(), cfg.aug_pad)
        next_obs = grid_sample_shift(batch.next_obs.float(), cfg.aug_pad)
        features = a.encoder(obs)
        with torch.no_grad():
            next_features = a.encoder(next_obs)
        std = a.std(step)
        with torch.no_grad():
            next_action = a.actor(next_features, std).sample(clip=cfg.std_clip)
            target = batch.reward + batch.discount * torch.min(*a.critic_target(next_features, next_action))
        q1, q2 = a.critic(features, batch.action)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        encoder_opt.zero_grad(set_to_none=True)
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_opt.step()
        encoder_opt.step()
        features = features.detach()
        action = a.actor(features, std).sample(clip=cfg.std_clip)
        actor_loss = -torch.min(*a.critic(features, action)).mean()
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        actor_opt.step()
        for p, tp in zip(a.critic.parameters(), a.critic_target.parameters()):
            tp.data.copy_(cfg.critic_target_tau * p.data + (1 - cfg.critic_target_tau) * tp.data)
        critic_loss.item(), actor_loss.item()


@dataclass
class Row:
    variant: str
    threads: int
    batch: int
    seconds_per_update: float
    updates_per_s: float


def time_updates(update, batch: TransitionBatch, n: int) -> float:
    update(batch, 0)  # warm-up: allocations, oneDNN kernel selection
    times = []
    for i in range(n):
        start = time.perf_counter()
        update(batch, i + 1)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--obs", default="9x64x64", help="observation shape CxHxW")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--updates", type=int, default=5, help="timed updates per variant")
    parser.add_argument("--variants", nargs="+", default=["reference-style", "drqv2 nchw", "drqv2"],
                        help=f"also: '{BF16_VARIANT}' (agent.encoder_precision=bfloat16), '{FOREACH_VARIANT}'")
    parser.add_argument("--malloc", choices=MALLOC_MODES, default="tuned", help=MALLOC_HELP)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    obs_shape = tuple(int(d) for d in args.obs.split("x"))
    malloc = "tuned" if configure_malloc(args.malloc) else "as the system set it"
    batch = make_batch(args.batch, obs_shape, action_dim=4)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for variant in args.variants:
            torch.manual_seed(0)
            agent = DrQV2Agent(
                obs_shape, 4, DrQV2Config(batch_size=args.batch, channels_last=variant in ("drqv2", BF16_VARIANT),
                                          encoder_precision="bfloat16" if variant == BF16_VARIANT else "float32")
            )
            if variant == FOREACH_VARIANT:
                agent.encoder_opt, agent.actor_opt, agent.critic_opt = (
                    torch.optim.Adam(m.parameters(), lr=agent.cfg.lr, weight_decay=agent.cfg.weight_decay,
                                     foreach=True) for m in (agent.encoder, agent.actor, agent.critic))
            update = ReferenceStyleUpdate(agent) if variant == "reference-style" else agent.update
            seconds = time_updates(update, batch, args.updates)
            rows.append(Row(variant, threads, args.batch, seconds, 1.0 / seconds))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.json:
        print(json.dumps({"cpu": report(), "load_average": load, "rows": [row.__dict__ for row in rows]}, indent=2))
        return
    print(report_lines())
    print(
        f"DrQ-v2 update, batch {args.batch}, obs {args.obs}, torch {torch.__version__}, malloc {malloc}, "
        f"load avg {load:.2f}"
    )
    print(f"{'variant':<18}{'threads':>8}{'s/update':>10}{'updates/s':>11}{'speed-up':>10}")
    base = {r.threads: r.seconds_per_update for r in rows if r.variant == "reference-style"}
    for r in rows:
        speedup = f"{base[r.threads] / r.seconds_per_update:.2f}x" if r.threads in base else "-"
        print(
            f"{r.variant:<18}{r.threads:>8}{r.seconds_per_update:>10.3f}{r.updates_per_s:>11.2f}{speedup:>10}"
        )


if __name__ == "__main__":
    main()
