"""Sampling-based trajectory optimizers for model-predictive control: MPPI and CEM.

Both share one interface (`Planner.plan(score_fn)`) and one sampler:
- a plan is a mean action sequence `(H, A)`; each control step starts from the previous plan shifted by one
  step (its last action repeated at the end), or from zeros after `reset()`;
- candidates are the mean plus time-correlated noise, `noise_0 = w_0`,
  `noise_t = beta * noise_{t-1} + (1 - beta) * w_t` with white `w_t ~ N(0, std^2)` (beta = 0 gives white
  noise; with beta = 0.5 the later steps' noise has about 0.58 of `std`), clipped to the action bounds;
- the sampling std is reset to `init_std` at every control step (only the mean is warm-started);
- all sampling uses the `torch.Generator` passed in, on the planner's device, so a seed fixes every plan.

MPPI (VP2's settings as defaults: 200 samples, horizon 10, one iteration): the new mean is the average of
the samples weighted by `exp((score - max score) / temperature)` with `temperature = 0.05` (a smaller
temperature is greedier; in PDDM's multiplicative convention this is `gamma = 1 / temperature = 20`). With the
`goal_image` objective on frames in [0, 1] the scores of 200 candidates spread over several units, so these
weights concentrate on the few best candidates.
CEM (VP2's: 200 samples, 3 iterations, 10 elites): the mean and std of the best `elites` samples.
Scores are "higher is better" (see `mbrl.planning.objectives`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch

#: Maps candidate action sequences (N, H, A) to their scores (N,), higher is better.
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PlannerConfig:
    """Settings of a planner; `None` means the planner's own default (`MPPI.defaults`, `CEM.defaults`).

    Attributes:
        samples: candidate sequences per iteration (N).
        horizon: actions per sequence (H).
        iterations: sampling rounds per control step.
        init_std: sampling std, one number or one per action dimension (reset every control step).
        noise_beta: time correlation of the sampling noise, in [0, 1).
        temperature: MPPI's weighting of scores (weights `exp((score - max) / temperature)`).
        elites: CEM's number of best samples that make the next distribution.
        action_low, action_high: bounds every sampled action is clipped to.
    """

    samples: int | None = None
    horizon: int | None = None
    iterations: int | None = None
    init_std: float | Sequence[float] | None = None
    noise_beta: float | None = None
    temperature: float | None = None
    elites: int | None = None
    action_low: float = -1.0
    action_high: float = 1.0


@dataclass(frozen=True)
class PlanResult:
    """One control step's optimization.

    Attributes:
        actions: (H, A) the optimized plan; its first action is the one to execute.
        samples: (N, H, A) the candidates of the last iteration.
        scores: (N,) their scores.
    """

    actions: torch.Tensor
    samples: torch.Tensor
    scores: torch.Tensor

    @property
    def best_score(self) -> float:
        return float(self.scores.max())


@dataclass
class _Settings:
    samples: int
    horizon: int
    iterations: int
    init_std: float | Sequence[float]
    noise_beta: float
    temperature: float
    elites: int
    action_low: float = -1.0
    action_high: float = 1.0


class Planner:
    """Base class: the shared sampler, warm start and loop; subclasses define `update` and `defaults`."""

    name: ClassVar[str] = "planner"
    defaults: ClassVar[PlannerConfig] = PlannerConfig()

    def __init__(self, action_dim: int, config: PlannerConfig | None = None,
                 generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> None:
        cfg = config or PlannerConfig()
        merged = {f.name: getattr(cfg, f.name) if getattr(cfg, f.name) is not None else getattr(self.defaults, f.name)
                  for f in fields(PlannerConfig)}
        self.settings = _Settings(**merged)
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self.generator = generator
        self._check()
        std = torch.as_tensor(self.settings.init_std, dtype=torch.float32, device=self.device).flatten()
        if std.numel() not in (1, self.action_dim):
            raise ValueError(f"init_std has {std.numel()} values for {self.action_dim} action dimensions; give one "
                             f"number or {self.action_dim}")
        self.init_std = std.expand(self.action_dim).clone()
        self._previous: torch.Tensor | None = None

    def _check(self) -> None:
        s = self.settings
        if self.action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {self.action_dim}")
        for key in ("samples", "horizon", "iterations"):
            if int(getattr(s, key)) < 1:
                raise ValueError(f"planner.{key} must be >= 1, got {getattr(s, key)}")
        if not 0.0 <= s.noise_beta < 1.0:
            raise ValueError(f"planner.noise_beta must be in [0, 1), got {s.noise_beta}")
        if not s.action_low < s.action_high:
            raise ValueError(f"planner.action_low ({s.action_low}) must be below action_high ({s.action_high})")
        if any(float(v) < 0 for v in torch.as_tensor(s.init_std).flatten()):
            raise ValueError(f"planner.init_std must be >= 0, got {s.init_std}")

    @property
    def horizon(self) -> int:
        return int(self.settings.horizon)

    @property
    def samples(self) -> int:
        return int(self.settings.samples)

    def reset(self) -> None:
        """Forget the previous plan (call at the start of every episode)."""
        self._previous = None

    def initial_mean(self) -> torch.Tensor:
        """(H, A): the previous plan shifted by one step (last action repeated), or zeros after `reset()`."""
        if self._previous is None:
            return torch.zeros(self.horizon, self.action_dim, device=self.device)
        return torch.cat([self._previous[1:], self._previous[-1:]])

    def sample(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Candidates around `mean` (H, A) with per-step std `std` (H, A) or (A,): (N, H, A), clipped.

        Time-correlated noise: `noise_0 = w_0`, `noise_t = beta * noise_{t-1} + (1 - beta) * w_t`.
        """
        s = self.settings
        white = torch.randn(self.samples, self.horizon, self.action_dim, generator=self.generator,
                            device=self.device) * std
        noise = white.clone()
        for t in range(1, self.horizon):
            noise[:, t] = s.noise_beta * noise[:, t - 1] + (1.0 - s.noise_beta) * white[:, t]
        return (mean + noise).clamp(s.action_low, s.action_high)

    def update(self, samples: torch.Tensor, scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next sampling distribution from scored samples (N, H, A), scores (N,): mean and std (H, A)."""
        raise NotImplementedError

    def plan(self, score_fn: ScoreFn) -> PlanResult:
        """Optimize the action sequence for this control step and remember it for the next one's warm start.

        Args:
            score_fn: candidates (N, H, A) -> scores (N,), higher is better.
        """
        mean = self.initial_mean()
        std = self.init_std.expand(self.horizon, self.action_dim).clone()
        samples = scores = None
        for _ in range(int(self.settings.iterations)):
            samples = self.sample(mean, std)
            scores = torch.as_tensor(score_fn(samples), device=self.device, dtype=torch.float32)
            if scores.shape != (self.samples,):
                raise ValueError(f"the score function returned shape {tuple(scores.shape)}; it must return one "
                                 f"score per candidate, ({self.samples},)")
            if not torch.isfinite(scores).all():
                raise ValueError("the score function returned NaN or infinite scores; check the model's predictions")
            mean, std = self.update(samples, scores, mean, std)
        mean = mean.clamp(self.settings.action_low, self.settings.action_high)
        self._previous = mean.clone()
        return PlanResult(actions=mean, samples=samples, scores=scores)


def mppi_weights(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N,) normalized weights `exp((score - max) / temperature) / sum` of scores (N,)."""
    weights = torch.exp((scores - scores.max()) / temperature)
    return weights / weights.sum()


class MPPI(Planner):
    """Model-predictive path integral control as VP2 runs it: one iteration per control step, weighted mean."""

    name = "mppi"
    defaults = PlannerConfig(samples=200, horizon=10, iterations=1, init_std=0.5, noise_beta=0.5, temperature=0.05,
                             elites=10)

    def _check(self) -> None:
        super()._check()
        if not self.settings.temperature > 0:
            raise ValueError(f"planner.temperature must be > 0, got {self.settings.temperature}")

    def update(self, samples: torch.Tensor, scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        weights = mppi_weights(scores, float(self.settings.temperature))
        return (weights[:, None, None] * samples).sum(0), std


class CEM(Planner):
    """Cross-entropy method: refit mean and std to the best `elites` samples, `iterations` times per step."""

    name = "cem"
    defaults = replace(MPPI.defaults, iterations=3)  # VP2's CEM: 200 samples, 3 iterations, 10 elites

    def _check(self) -> None:
        super()._check()
        if not 1 <= int(self.settings.elites) <= int(self.settings.samples):
            raise ValueError(f"planner.elites must be in [1, samples={self.settings.samples}], "
                             f"got {self.settings.elites}")

    def update(self, samples: torch.Tensor, scores: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        elites = samples[torch.topk(scores, int(self.settings.elites)).indices]
        return elites.mean(0), elites.std(0, unbiased=False)


PLANNERS: dict[str, type[Planner]] = {"mppi": MPPI, "cem": CEM}


def close_matches_hint(name: str, choices: Sequence[str]) -> str:
    """`"close matches: a, b"` (or `"no close match"`) for an unknown `name` among `choices`."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.4)
    return f"close matches: {', '.join(close)}" if close else "no close match"


def make_planner(name: str, action_dim: int, config: PlannerConfig | None = None,
                 generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> Planner:
    """The planner called `name` (`mppi` or `cem`)."""
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r} ({close_matches_hint(name, PLANNERS)}); "
                         f"choose one of {', '.join(PLANNERS)}")
    return PLANNERS[name](action_dim, config, generator=generator, device=device)


__all__ = ["CEM", "MPPI", "PLANNERS", "PlanResult", "Planner", "PlannerConfig", "ScoreFn", "make_planner",
           "mppi_weights"]
