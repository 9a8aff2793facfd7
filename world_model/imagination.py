"""Fast imagination: the world model as a batched, KV-cached environment.

``Imaginer.reset(context_frames)`` tokenizes the context once, computes the context's decoder features once
(``CompressiveTokenizer.context_cache``) and prefills a static KV cache sized for the prefix plus the whole
horizon (sizes from ``TokenLayout``). Every ``step(actions)`` then feeds the slot token (its embedding plus the
action map) and the frame's n dynamics codes one token at a time through that cache, sampling each code among
the dynamics codes only, reads the reward head at the frame's last code (the position the head is trained
at), and decodes the new frame once. All rollouts of a batch move in lockstep.

The per-token step never waits on the host: positions are device tensors, the sampler is a Gumbel-max race
on pre-drawn exponential noise (``sample_codes``), and nothing branches on tensor values. So on a GPU the
whole imagined step (n + 1 token steps) is captured once per padded batch size as a CUDA graph, with the
token step compiled by ``torch.compile``; the transformer runs from a bf16 copy of its weights (refreshed at
``reset`` only when the weights changed) and the frame decoder under bf16 autocast. On a CPU the same code
runs eagerly. The engine counts the transitions it imagines and the seconds it spends
(:attr:`Imaginer.transitions_per_s`). See ``docs/imagination.md``.

The pieces live by concern: the knobs in ``world_model.imagination_config``, the sampler in
``world_model.sampling``, the compiled / captured step in ``world_model.imagination_steps``.
"""
from __future__ import annotations

import copy
import functools
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from core.precision import autocast_to
from world_model.imagination_config import ImaginationConfig
from world_model.imagination_steps import (
    Capture,
    CapturedSteps,
    StaticRollout,
    pad_rows,
    padded_batch_size,
    row_chunks,
)
from world_model.layout import TokenLayout
from world_model.modes import eval_mode
from world_model.sampling import (
    draw_noise,
    symexp,
)
from world_model.tokenizer import CompressiveTokenizer, ContextCache
from world_model.transformer import WorldModelTransformer

T = TypeVar("T")


def _timed(method: Callable[..., T]) -> Callable[..., T]:
    """Add the wall-clock seconds of every call of an ``Imaginer`` method to its ``imagination_seconds``."""

    @functools.wraps(method)
    def timed(self: Imaginer, *args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.imagination_seconds += time.perf_counter() - start

    return timed


@dataclass
class _Active:
    """The rollout batch between ``reset`` and the last ``step``."""

    state: StaticRollout
    batch: int
    chunks: list[slice]
    contexts: list[ContextCache]
    horizon: int
    generator: torch.Generator | None
    steps: int = 0


# ------------------------------------------------------------------------------------------ engine
class Imaginer(CapturedSteps):
    """Batched imagination with a static KV cache: prefill the context once, then a token step at a time.

    The imagined steps themselves (buffers, compilation, capture and their reuse) come from
    :class:`~world_model.imagination_steps.CapturedSteps`; this class runs the rollouts.

    Args:
        transformer: the world-model transformer.
        tokenizer: the compressive tokenizer.
        layout: the token layout (any horizon; only its per-frame counts and ids are used).
        config: performance knobs (compile, CUDA graphs, precision).
        capture: how a static step is captured; default a CUDA graph. Passing one (e.g. :func:`no_capture`)
            forces the padded static-buffer path on any device, which is how it is tested without a GPU.

    Attributes:
        imagined_transitions: transitions imagined (one frame of one rollout each, counted by :meth:`sample`)
            since construction or :meth:`clear_counters`.
        imagination_seconds: wall-clock seconds spent in :meth:`reset`, :meth:`sample` and :meth:`decode` over
            the same span.
    """

    def __init__(self, transformer: WorldModelTransformer, tokenizer: CompressiveTokenizer, layout: TokenLayout,
                 config: ImaginationConfig | None = None, capture: Capture | None = None) -> None:
        super().__init__(transformer, layout.with_future_frames(0), config or ImaginationConfig(), capture)
        self.tokenizer = tokenizer
        self._replica: WorldModelTransformer | None = None
        self._active: _Active | None = None
        self.imagined_transitions, self.imagination_seconds = 0, 0.0

    # --------------------------------------------------------------------------------- settings
    @property
    def max_horizon(self) -> int:
        """Most imagined frames that fit ``max_position_embeddings``."""
        free = self.transformer.config.max_position_embeddings - self.layout.prefix_length
        return max(free // self.layout.future_block_length, 0)

    def decoder_model(self, dtype: torch.dtype) -> WorldModelTransformer:
        """The transformer the token steps run: itself in float32, else a copy of it in ``dtype``.

        The copy is refreshed in place at every call (once per rollout batch, so captured graphs stay valid
        and training between rollouts is always seen): one cast of the weights per batch instead of autocast
        re-casting every weight at every token.
        """
        source = self.transformer
        weight = source.llm.lm_head.weight
        if dtype == weight.dtype:
            return source
        replica = self._replica
        if replica is None or replica.llm.lm_head.weight.dtype != dtype or \
                replica.llm.lm_head.weight.device != weight.device:
            replica = copy.deepcopy(source).to(dtype).eval().requires_grad_(False)
            for param in replica.parameters():
                param.grad = None  # deepcopy copies gradients too
            self._replica, self._static = replica, {}
        else:
            with torch.no_grad():
                torch._foreach_copy_(list(replica.parameters()), list(source.parameters()))
        return replica

    # ------------------------------------------------------------------------------ throughput
    @property
    def transitions_per_s(self) -> float:
        """Imagined transitions per wall-clock second spent in the engine (0.0 before any).

        On CUDA the calls return before the device has finished their work, which a later call then waits for:
        read it over many steps.
        """
        return self.imagined_transitions / self.imagination_seconds if self.imagination_seconds > 0 else 0.0

    def clear_counters(self) -> None:
        """Start counting :attr:`imagined_transitions` and :attr:`imagination_seconds` from zero."""
        self.imagined_transitions, self.imagination_seconds = 0, 0.0

    # ---------------------------------------------------------------------------------- reset
    @_timed
    @torch.no_grad()
    def reset(self, context_frames: torch.Tensor, goal: torch.Tensor | None = None, horizon: int | None = None,
              temperature: float = 1.0, top_k: int | None = 100,
              generator: torch.Generator | None = None) -> None:
        """Start a batch of rollouts from real frames.

        Args:
            context_frames: (B, T0, 3, H, W) in [0, 1]; (B, T0 - 1, 3, H, W) when ``goal`` is given.
            goal: (B, 3, H, W) goal frame for a goal-conditioned model: it goes first, as a context frame.
            horizon: imagined frames this rollout will need (sizes the KV cache); default: as many as fit.
            temperature, top_k: sampling of the dynamics codes (the paper: 1.0, 100).
            generator: random source on the model's device, for reproducible rollouts.
        """
        layout = self.layout
        frames = context_frames if goal is None else torch.cat([goal.unsqueeze(1), context_frames], dim=1)
        if frames.dim() != 5 or frames.shape[1] != layout.context_frames:
            wanted = layout.context_frames - (goal is not None)
            raise ValueError(f"context_frames must be (B, {wanted}, 3, H, W)"
                             f"{' plus a goal (B, 3, H, W)' if goal is not None else ''}; "
                             f"got {tuple(context_frames.shape)}")
        if frames.shape[0] == 0:
            raise ValueError("context_frames holds no rollouts (batch 0); pass at least one")
        horizon = self.max_horizon if horizon is None else horizon
        if not 1 <= horizon <= self.max_horizon:
            raise ValueError(f"horizon must be in [1, {self.max_horizon}] (max_position_embeddings "
                             f"{self.transformer.config.max_position_embeddings}), got {horizon}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (all codes), got {top_k}")
        settings = self._settings()
        batch = frames.shape[0]
        cache_len = layout.prefix_length + horizon * layout.future_block_length
        with eval_mode(self.transformer, self.tokenizer):
            model = self.decoder_model(settings.dtype)
            if settings.cuda_graphs:
                rows = padded_batch_size(batch, self.config.graph_batch_sizes)
                state = self._static_rollout(model, rows, cache_len, temperature, top_k)
            else:
                state = self._eager_rollout(model, batch, cache_len, temperature, top_k)
            chunks = row_chunks(batch, settings.chunk_rows)
            with autocast_to(self.device, settings.decoder_dtype):
                ctx_codes = [self.tokenizer.encode_context(frames[rows]) for rows in chunks]
                contexts = [self.tokenizer.context_cache(codes) for codes in ctx_codes]
            prefix = pad_rows(layout.prefix(torch.cat(ctx_codes)), state.batch_size)
            # the prefill's long matrix products may run below the precision of float32 decode weights
            with autocast_to(self.device, settings.prefill_dtype):
                for rows in row_chunks(state.batch_size, settings.chunk_rows):
                    model.fill_cache(prefix[rows], state.cache.rows(rows))
        state.pos.fill_(layout.prefix_length)
        self._active = _Active(state, batch, chunks, contexts, horizon, generator)

    def release(self) -> None:
        """Free the captured graphs and the buffers kept for reuse (per padded batch size; the latest
        uncaptured batch)."""
        self._static, self._eager, self._active = {}, None, None

    # ----------------------------------------------------------------------------------- step
    @_timed
    @torch.no_grad()
    def sample(self, actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The token half of :meth:`step`: sample the next frame's codes of every rollout.

        Args:
            actions: (B, A) the action taken at the current frame; None for an action-free model.

        Returns:
            codes (B, n) dynamics codebook indices and the raw reward head output (B,) (symlog space), or None
            without a reward head. Both are fresh tensors (never views of graph buffers).
        """
        active = self._require_active()
        model, batch, state = self.transformer, active.batch, active.state
        if model.action_dim is None and actions is not None:
            raise ValueError("this world model is action-free: call step() without actions")
        if model.action_dim is not None and (actions is None or actions.shape != (batch, model.action_dim)):
            got = None if actions is None else tuple(actions.shape)
            raise ValueError(f"step() needs actions of shape ({batch}, {model.action_dim}), got {got}")
        if active.steps >= active.horizon:
            raise ValueError(f"rollout horizon {active.horizon} reached; pass a larger horizon to reset()")
        if state.action is not None:
            state.action[:batch].copy_(actions)
        if state.noise is not None:
            # drawn for the real rows only, so padding never changes which numbers a rollout gets
            shape = (state.noise.shape[0], batch, state.noise.shape[2])
            state.noise[:, :batch].copy_(draw_noise(shape, active.generator, state.noise.device))
        state.replay()
        active.steps += 1
        self.imagined_transitions += batch
        reward = None if state.reward is None else state.reward[:batch].to(torch.float32, copy=True)
        return state.codes[:batch].clone(), reward

    @_timed
    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The pixel half of :meth:`step`: (B, n) codes -> frames (B, 3, H, W) in [0, 1], float32."""
        active = self._require_active()
        if codes.dim() != 2 or codes.shape[0] != active.batch:
            raise ValueError(f"decode() needs codes (B, n) of the {active.batch} rollouts of this batch, "
                             f"got shape {tuple(codes.shape)}")
        settings = self._settings()
        use_compile, dtype = settings.compile_decoder, settings.decoder_dtype
        eager = self.tokenizer.decode_future
        if use_compile and "decode" not in self._compiled:
            self._compiled["decode"] = torch.compile(eager, backend=self.config.compile_backend)
        decode = self._compiled["decode"] if use_compile else eager
        codes = codes.unsqueeze(1)

        def in_chunks(fn: Callable[[torch.Tensor, ContextCache], torch.Tensor]) -> torch.Tensor:
            return torch.cat([fn(codes[rows], context) for rows, context in zip(active.chunks, active.contexts)])

        with eval_mode(self.tokenizer), autocast_to(self.device, dtype):
            try:
                frames = in_chunks(decode)
            except Exception as err:  # compiler errors come in many types; bad input fails again eagerly below
                if decode is eager:
                    raise
                warnings.warn(f"torch.compile of the frame decoder failed ({type(err).__name__}: {err}); "
                              "decoding eagerly", RuntimeWarning, stacklevel=2)
                self._compiled["decode"] = eager
                frames = in_chunks(eager)
        return frames[:, 0].float().clamp(0.0, 1.0)

    def step(self, actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Imagine the next frame of every rollout.

        Args:
            actions: (B, A) the action taken at the current frame; None for an action-free model.

        Returns:
            frames (B, 3, H, W) in [0, 1] and rewards (B,) of the transition (symexp of the head output),
            or None when the model has no reward head.
        """
        codes, reward = self.sample(actions)
        return self.decode(codes), None if reward is None else symexp(reward)

    def _require_active(self) -> _Active:
        if self._active is None:
            raise RuntimeError("call reset(context_frames) before step()")
        return self._active
