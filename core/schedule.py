"""When things are due: one family of predicates over step or frame counters, and scalar schedules.

Every predicate is a pure function of a counter, so a resumed run fires exactly where the uninterrupted run
would have. `Cadence` is the general form (a start, a period, runs per firing, counted per window of
frames); `Every`, `Until`, `Ratio` and `crossed` are the shapes the loops ask for most.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


class Until:
    """`until(step)` is True while fewer than `frames` env frames were done (`frames=None`: forever).

    Counts agent steps, configured in env frames (frames = agent steps x action repeat).
    """

    def __init__(self, frames: int | None, action_repeat: int = 1) -> None:
        self.steps = None if frames is None else frames // action_repeat

    def __call__(self, step: int) -> bool:
        return self.steps is None or step < self.steps


class Every:
    """`every(step)` is True at agent steps 0, k, 2k, ... with k = `frames // action_repeat`.

    `frames` of None or 0 means never.
    """

    def __init__(self, frames: int | None, action_repeat: int = 1) -> None:
        if frames and frames < action_repeat:
            raise ValueError(
                f"a period of {frames} frames is shorter than one agent step ({action_repeat} frames)"
            )
        self.steps = frames // action_repeat if frames else None
        # the cadence counted in agent steps, looked at one step at a time
        self._cadence = None if self.steps is None else Cadence("every", start=0, every=self.steps)

    def __call__(self, step: int) -> bool:
        return self._cadence is not None and self._cadence.runs(step, 1) > 0


class Ratio:
    """How many updates are due at an agent step for a fixed updates-per-step `ratio` (may be fractional).

    Stateless (a function of the step counter only), so a resumed run keeps the exact update cadence:
    ratio 2 -> 2 at every step; ratio 0.5 -> 1 at every other step.
    """

    def __init__(self, ratio: float) -> None:
        if ratio < 0:
            raise ValueError(f"an updates-per-step ratio must be >= 0, got {ratio}")
        self.ratio = ratio

    def __call__(self, step: int) -> int:
        return math.floor(self.ratio * (step + 1)) - math.floor(self.ratio * step)


class Schedule:
    """A scalar schedule over agent steps, parsed once: a constant (`"0.2"`) or `"linear(init,final,n)"`."""

    _LINEAR = re.compile(r"^\s*linear\(([^,]+),([^,]+),([^,]+)\)\s*$")

    def __init__(self, spec: str | float) -> None:
        self.spec = str(spec)
        try:
            self.init = self.final = float(spec)
            self.duration = 1.0
            return
        except ValueError:
            pass
        match = self._LINEAR.match(self.spec)
        try:
            self.init, self.final, self.duration = (float(g) for g in match.groups())  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            raise ValueError(
                f"schedule {self.spec!r} is not understood; write a number or linear(init,final,steps), "
                "e.g. linear(1.0,0.1,100000)"
            ) from None
        if self.duration <= 0:
            raise ValueError(f"schedule {self.spec!r}: the duration must be > 0 steps")

    def __call__(self, step: int) -> float:
        mix = min(max(step / self.duration, 0.0), 1.0)
        return (1.0 - mix) * self.init + mix * self.final


@dataclass(frozen=True)
class Cadence:
    """Something that runs at env frames `start`, `start + every`, `start + 2 * every`, ...

    Args:
        name: what runs (how a schedule of several cadences names it).
        start: env frame of the first firing.
        every: env frames between firings; 0 fires once, at `start`.
        times: runs per firing.
        first_times: runs at the first firing (None: `times`).
    """

    name: str
    start: int
    every: int = 0
    times: int = 1
    first_times: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0 or self.every < 0 or self.times < 0 or (self.first_times or 0) < 0:
            raise ValueError(f"cadence {self.name!r}: start, every and times must be >= 0, got {self}")

    def runs(self, frame: int, span: int) -> int:
        """Runs due for the window of env frames `(frame - span, frame]`: the loop calls this once per agent
        step with `span` = the action repeat, so every firing frame lands in exactly one window."""
        if frame < self.start:
            return 0
        previous = frame - span
        last = (frame - self.start) // self.every if self.every else 0
        before = -1 if previous < self.start else ((previous - self.start) // self.every if self.every else 0)
        count = last - before
        if count <= 0:
            return 0
        first = self.times if self.first_times is None else self.first_times
        return count * self.times + (first - self.times if before < 0 else 0)

    def total_runs(self, frame: int) -> int:
        """Runs at frames <= `frame` (all windows up to it)."""
        return self.runs(frame, frame + 1)


def crossed(previous: int, current: int, every: int) -> bool:
    """True when a multiple of `every` lies in `(previous, current]` (`every` 0: never): "is a checkpoint or an
    evaluation due now that the counter moved from `previous` to `current`", for counters that advance by
    more than one at a time (episode ends)."""
    return every > 0 and current // every > previous // every
