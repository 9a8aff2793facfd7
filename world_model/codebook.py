"""Codebook health of the tokenizer's two quantizers while it trains, and the remedies for collapse.

:class:`CodebookUsage` keeps, for one codebook, how often each code was picked in each of the last ``window``
updates and the update at which each code was last picked. From those it reports

- ``codes_used``: the fraction of the codebook picked at least once in the window;
- ``perplexity``: ``exp(entropy)`` of the code frequencies over the window (1: one code; ``num_codes``:
  all codes equally often);
- ``dead_codes``: how many codes were not picked in the last ``window`` updates (0 until ``window`` updates
  have passed: a code is only dead after a full window without use).

:class:`CodebookMonitor` runs after each tokenizer update (``world_model.parts.update``): it reads the codes
and latents the quantizers saw in that update's loss (``VectorQuantizer.last_indices`` / ``last_latents``),
records them and returns ``<codebook>_codes_used``, ``<codebook>_perplexity``, ``<codebook>_dead_codes`` for
``context`` and ``dynamics`` (as they were before that update's remedies, so dead codes show even when they are
restarted). Two optional remedies (off by default; see docs/world_model.md, "Quality on
Meta-World"): ``init_from_data`` sets every code to a latent of the first batch; ``restart_dead`` sets each
dead code to a random latent of the current batch (its Adam moments zeroed) and gives it a fresh window.
The windows are part of the trainer's state (``WorldModelTrainer.state_dict``); a checkpoint written before
they were starts them empty.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from world_model.vq import VectorQuantizer

CODEBOOK_INITS = ("uniform", "data")


@dataclass(frozen=True)
class CodebookOptions:
    """How the tokenizer's codebooks are watched and treated while it trains (defaults: watched only).

    Attributes:
        window: tokenizer updates over which code use is counted; a code unused for that long is dead.
        restart_dead: set each dead code to a latent of the current batch.
        init: ``uniform``: the codebooks as built (a checkpoint's, or ``U(-1/K, 1/K)`` from scratch);
            ``data``: every code set to a latent of the first batch after the first update.
        lr_scale: the codebooks' learning rate as a multiple of the tokenizer's.
    """

    window: int = 100
    restart_dead: bool = False
    init: str = "uniform"
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"codebook window={self.window} must be >= 1")
        if self.init not in CODEBOOK_INITS:
            raise ValueError(f"codebook init={self.init!r} must be one of {CODEBOOK_INITS}")
        if self.lr_scale <= 0:
            raise ValueError(f"codebook lr_scale={self.lr_scale} must be > 0")


class CodebookUsage:
    """Use of one codebook over the last ``window`` updates (the counts live on ``device``)."""

    def __init__(self, num_codes: int, window: int = 100, device: torch.device | str = "cpu") -> None:
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        self.num_codes, self.window = num_codes, window
        self.counts = torch.zeros(window, num_codes, dtype=torch.int64, device=device)  # a ring of updates
        self.last_used = torch.full((num_codes,), -1, dtype=torch.int64, device=device)
        self.updates = 0

    def record(self, indices: torch.Tensor) -> None:
        """Codes picked in one update: integer ``indices`` of any shape."""
        counts = torch.bincount(indices.flatten().to(self.counts.device), minlength=self.num_codes)
        self.counts[self.updates % self.window] = counts
        self.last_used[counts > 0] = self.updates
        self.updates += 1

    def dead(self) -> torch.Tensor:
        """Boolean ``(num_codes,)``: codes not picked in the last ``window`` updates."""
        return self.last_used < self.updates - self.window

    def revive(self, codes: torch.Tensor) -> None:
        """Count ``codes`` as just used (a restarted code gets a full window before it can be dead again)."""
        self.last_used[codes] = self.updates - 1

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"counts": self.counts.clone(), "last_used": self.last_used.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, torch.Tensor | int]) -> None:
        if tuple(state["counts"].shape) != tuple(self.counts.shape):
            raise ValueError(f"codebook usage of shape {tuple(state['counts'].shape)} does not fit this monitor's "
                             f"{tuple(self.counts.shape)} (window x codes); was codebook_window changed?")
        self.counts.copy_(state["counts"])
        self.last_used.copy_(state["last_used"])
        self.updates = int(state["updates"])

    def stats(self) -> dict[str, torch.Tensor]:
        """``codes_used`` (fraction), ``perplexity`` and ``dead_codes`` (count), as 0-d float tensors."""
        total = self.counts.sum(0).float()
        p = total / total.sum().clamp_min(1.0)
        entropy = -(p * p.clamp_min(1e-12).log()).sum()
        return {"codes_used": (total > 0).float().mean(), "perplexity": entropy.exp(),
                "dead_codes": self.dead().sum().float()}


def _spread(latents: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random rows of ``latents`` ``(M, dim)``, distinct while ``count <= M``, each with a little
    noise (1% of the latents' spread) so that repeated picks are not identical codes."""
    m = latents.shape[0]
    if count <= m:
        rows = torch.randperm(m, generator=generator, device=generator.device)[:count]
    else:
        rows = torch.randint(m, (count,), generator=generator, device=generator.device)
    picked = latents[rows.to(latents.device)].float()
    noise = torch.randn(picked.shape, generator=generator, device=generator.device).to(latents.device)
    return picked + 0.01 * latents.float().std() * noise


@torch.no_grad()
def set_codes(quantizer: VectorQuantizer, codes: torch.Tensor, latents: torch.Tensor,
              optimizer: torch.optim.Optimizer | None, generator: torch.Generator) -> None:
    """Codes ``codes`` (int64 ``(k,)``) of ``quantizer`` set to random rows of ``latents`` ``(..., dim)``; their
    Adam moments (if the optimizer has any for the codebook yet) are zeroed."""
    weight = quantizer.embedding.weight
    weight[codes] = _spread(latents.reshape(-1, quantizer.dim).detach(), codes.numel(), generator).to(weight.dtype)
    state = optimizer.state.get(weight) if optimizer is not None else None
    for key in ("exp_avg", "exp_avg_sq"):
        if state and key in state:
            state[key][codes] = 0


class CodebookMonitor:
    """Called after each tokenizer update: records both codebooks' use, applies the optional remedies and
    returns the metrics (0-d tensors, ``<codebook>_<stat>``).

    Args:
        quantizers: name -> quantizer (``context``, ``dynamics``).
        optimizer: the tokenizer's optimizer (its codebook moments are zeroed on a restart).
        window: updates over which use is counted and after which an unused code is dead.
        restart_dead: set dead codes to latents of the current batch.
        init_from_data: set all codes to latents of the first batch, after its update (``init_pending``; a
            resumed trainer restores it, so a checkpoint's codebooks are never replaced).
        seed: the remedies' random source.
    """

    def __init__(self, quantizers: dict[str, VectorQuantizer], optimizer: torch.optim.Optimizer | None = None,
                 window: int = 100, restart_dead: bool = False, init_from_data: bool = False, seed: int = 0) -> None:
        self.quantizers, self.optimizer = quantizers, optimizer
        self.restart_dead = restart_dead
        self.init_pending = init_from_data  # cleared after the first update (and by a resumed trainer)
        device = next(iter(quantizers.values())).embedding.weight.device
        self.usage = {name: CodebookUsage(q.num_codes, window, device) for name, q in quantizers.items()}
        self.generator = torch.Generator(device).manual_seed(seed)
        self.restarted = {name: 0 for name in quantizers}  # codes set from data so far, per codebook

    def state_dict(self) -> dict[str, object]:
        """The windows, the remedies' random state and counters: a resumed run restarts codes exactly where the
        uninterrupted one would have."""
        return {"usage": {name: u.state_dict() for name, u in self.usage.items()},
                "generator": self.generator.get_state(), "restarted": dict(self.restarted),
                "init_pending": self.init_pending}

    def load_state_dict(self, state: dict[str, object]) -> None:
        for name, usage in self.usage.items():
            usage.load_state_dict(state["usage"][name])
        self.generator.set_state(state["generator"].cpu())
        self.restarted = dict(state["restarted"])
        self.init_pending = bool(state["init_pending"])

    def __call__(self) -> dict[str, torch.Tensor]:
        metrics: dict[str, torch.Tensor] = {}
        for name, quantizer in self.quantizers.items():
            usage = self.usage[name]
            if quantizer.last_indices is None:
                continue
            usage.record(quantizer.last_indices)
            metrics.update({f"{name}_{key}": value for key, value in usage.stats().items()})  # before remedies
            trainable = quantizer.embedding.weight.requires_grad
            first = self.init_pending
            if trainable and (self.restart_dead or first):
                codes = torch.arange(quantizer.num_codes, device=usage.last_used.device) if first else \
                    usage.dead().nonzero().squeeze(1)
                if codes.numel():
                    set_codes(quantizer, codes, quantizer.last_latents, self.optimizer, self.generator)
                    usage.revive(codes)
                    self.restarted[name] += codes.numel()
            quantizer.last_indices = quantizer.last_latents = None
        self.init_pending = False
        return metrics
