"""What the training loop shares with the world model plugged into it: the `WorldModelHooks` protocol,
`NoWorldModel` (`world_model=none`) and the `PhaseTimer` both account their wall-clock time to."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Protocol

from core.batch import TransitionBatch
from mbrl.replay import ReplayBuffer


class WorldModelHooks(Protocol):
    """What a world model adds to the loop. `world_model=none` is `NoWorldModel`."""

    def on_step(self, step: int) -> dict[str, float]:
        """Called once per agent step, after acting, with the agent step count: the world model runs its own
        scheduled work here (training, imagination) and returns metrics to log."""

    def agent_batch(self, batch_size: int) -> TransitionBatch:
        """The batch for one agent update (real replay, imagined data, or a mix)."""

    def status(self) -> dict[str, float]:
        """Cumulative counters logged as they are in every train row (names carry their section)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NoWorldModel:
    """Model-free training: every agent batch comes from the real replay."""

    def __init__(self, replay: ReplayBuffer) -> None:
        self.replay = replay

    def on_step(self, step: int) -> dict[str, float]:
        return {}

    def agent_batch(self, batch_size: int) -> TransitionBatch:
        return self.replay.sample(batch_size)

    def status(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PhaseTimer:
    """Cumulative wall-clock seconds per phase of the loop; `with timer.phase("env"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def totals(self) -> dict[str, float]:
        """`time/<phase>`: cumulative seconds of each phase, for the log rows."""
        return {f"time/{name}": seconds for name, seconds in sorted(self.seconds.items())}
