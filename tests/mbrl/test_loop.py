"""What the loop shares with a world model: `NoWorldModel` and `PhaseTimer`."""
from __future__ import annotations

import numpy as np
import torch

from mbrl.loop import NoWorldModel, PhaseTimer
from mbrl.replay import ReplayBuffer


def test_no_world_model_samples_the_real_replay_only():
    rng = np.random.default_rng(0)
    replay = ReplayBuffer(50, (3, 8, 8), 2, frame_stack=2, nstep=1, discount=0.99, seed=0)
    replay.add_episode(rng.integers(0, 256, (11, 3, 8, 8), dtype=np.uint8), rng.uniform(-1, 1, (10, 2)),
                       rng.uniform(0, 1, 10))
    hooks = NoWorldModel(replay)
    assert hooks.on_step(0) == {} and hooks.status() == {} and hooks.state_dict() == {}
    state = replay.rng.bit_generator.state
    batch = hooks.agent_batch(4)
    replay.rng.bit_generator.state = state
    assert torch.equal(batch.obs, replay.sample(4).obs)


def test_phase_timer_accumulates_seconds_per_phase():
    timer = PhaseTimer()
    for _ in range(2):
        with timer.phase("env"):
            pass
    try:
        with timer.phase("eval"):
            raise RuntimeError
    except RuntimeError:
        pass  # time until the error still counts
    totals = timer.totals()
    assert list(totals) == ["time/env", "time/eval"] and all(v >= 0 for v in totals.values())
