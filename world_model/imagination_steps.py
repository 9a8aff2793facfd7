"""The imagined step as the rollout engine runs it: static buffers, ``torch.compile`` and CUDA-graph capture.

One imagined step (the slot token plus the frame's n dynamics codes, one token at a time through a static KV
cache) reads and writes only the buffers of a :class:`StaticRollout`, never waits on the host and never
branches on tensor values. So on a GPU it is captured once per padded batch size as a CUDA graph, with the
token step compiled; on a CPU the same function runs eagerly. :class:`CapturedSteps` builds these steps,
keeps them for reuse and falls back to uncompiled / uncaptured steps, with a warning, where compilation or
capture fails. ``world_model.imagination.Imaginer`` drives them.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from world_model.imagination_config import EngineSettings, ImaginationConfig
from world_model.layout import TokenLayout
from world_model.sampling import dynamics_logits, noise_width, sample_codes
from world_model.transformer import KVCache, WorldModelTransformer

Capture = Callable[[Callable[[], None]], Callable[[], None]]
"""Turns a function that runs one imagined step on static buffers into one that replays it."""

GRAPH_WARMUP_RUNS = 2
"""Eager runs before a CUDA graph capture (lazy initialisation, compilation, cuBLAS workspaces)."""


def row_chunks(batch: int, rows: int | None) -> list[slice]:
    """Consecutive slices of at most ``rows`` rows that cover ``batch`` rows (one slice when ``rows`` is None)."""
    step = batch if rows is None else rows
    return [slice(start, min(start + step, batch)) for start in range(0, batch, step)]


def padded_batch_size(batch: int, sizes: tuple[int, ...]) -> int:
    """The smallest of ``sizes`` that holds ``batch`` rows, or ``batch`` itself when none does."""
    return next((size for size in sorted(sizes) if size >= batch), batch)


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """Grow dim 0 to ``rows`` by repeating the last row (padding rows run real, discarded computations)."""
    missing = rows - x.shape[0]
    return x if missing == 0 else torch.cat([x, x[-1:].expand(missing, *x.shape[1:])])


def cuda_graph_capture(run: Callable[[], None]) -> Callable[[], None]:
    """Capture ``run`` (already warmed up) into a CUDA graph and return its replay."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


def no_capture(run: Callable[[], None]) -> Callable[[], None]:
    """Replay by running again: the static-buffer path without a graph (tests exercise padding with it)."""
    return run


# ---------------------------------------------------------------------------------- rollout state
@dataclass
class StaticRollout:
    """Buffers of one (padded) batch of rollouts; an imagined step reads and writes only these.

    Attributes:
        cache: the KV cache, prefix plus horizon long.
        pos: (1,) int64, position of the next token fed (advanced on the device by every token step).
        slot: (B, 1) the slot token id.
        action: (B, A) action of the current step (None for an action-free model).
        noise: (n, B, k) exponential draws of the current step (None when greedy).
        codes: (B, n) sampled dynamics codes of the current step (output).
        reward: (B,) raw reward head output of the current step (output; None without a reward head).
        replay: runs one imagined step on these buffers (a CUDA graph replay, or the step itself).
    """

    cache: KVCache
    pos: torch.Tensor
    slot: torch.Tensor
    action: torch.Tensor | None
    noise: torch.Tensor | None
    codes: torch.Tensor
    reward: torch.Tensor | None
    replay: Callable[[], None] = field(init=False)

    @property
    def batch_size(self) -> int:
        return self.slot.shape[0]


class CapturedSteps:
    """Builds, keeps and warms up the imagined steps of a rollout engine (the base of ``Imaginer``).

    Keeps one captured step per padded batch size, cache length and sampler (``_static``), the buffers of the
    latest uncaptured batch (``_eager``) and the compiled functions (``_compiled``).

    Args:
        transformer: the world-model transformer (its device is the engine's).
        layout: the token layout (only its per-frame counts and ids are used).
        config: performance knobs (compile, CUDA graphs, precision).
        capture: how a static step is captured; default a CUDA graph. Passing one (e.g. :func:`no_capture`)
            forces the padded static-buffer path on any device, which is how it is tested without a GPU.
    """

    def __init__(self, transformer: WorldModelTransformer, layout: TokenLayout, config: ImaginationConfig,
                 capture: Capture | None) -> None:
        self.transformer, self.layout, self.config = transformer, layout, config
        self._capture = capture
        self._static: dict[tuple, StaticRollout] = {}
        self._eager: tuple[tuple, WorldModelTransformer, StaticRollout] | None = None
        self._compiled: dict[str, Callable] = {}

    @property
    def device(self) -> torch.device:
        return self.transformer.llm.lm_head.weight.device

    def _settings(self) -> EngineSettings:
        settings = self.config.resolve(self.device)
        return replace(settings, cuda_graphs=settings.cuda_graphs or self._capture is not None)

    def _new_rollout(self, model: WorldModelTransformer, rows: int, cache_len: int, temperature: float,
                     top_k: int | None, use_compile: bool | None = None) -> StaticRollout:
        """Fresh buffers for ``rows`` rollouts whose ``replay`` runs the (maybe compiled) step eagerly."""
        layout, device = self.layout, self.device
        dtype = model.llm.lm_head.weight.dtype
        width = noise_width(layout.dynamics_vocab_size, top_k)
        state = StaticRollout(
            cache=model.new_cache(rows, cache_len),
            pos=torch.full((1,), layout.prefix_length, device=device, dtype=torch.long),
            slot=torch.full((rows, 1), layout.sdf_id, device=device, dtype=torch.long),
            action=None if model.action_dim is None else torch.zeros(rows, model.action_dim, device=device,
                                                                    dtype=dtype),
            noise=torch.ones(layout.tokens_per_future_frame, rows, width, device=device) if temperature > 0 else None,
            codes=torch.zeros(rows, layout.tokens_per_future_frame, device=device, dtype=torch.long),
            reward=torch.zeros(rows, device=device, dtype=dtype) if model.has_reward_head else None,
        )
        if use_compile is None:
            use_compile = self._settings().compile
        state.replay = self._step_function(model, state, temperature, top_k, use_compile)
        return state

    def _eager_rollout(self, model: WorldModelTransformer, rows: int, cache_len: int, temperature: float,
                       top_k: int | None) -> StaticRollout:
        """Buffers for an uncaptured rollout batch, reused from the previous batch when it had the same
        shape: no fresh cache to allocate and zero (its stale entries lie beyond the position and are
        never attended). Only the latest such batch is kept."""
        use_compile = self._settings().compile
        key = ("eager", self.device, model.llm.lm_head.weight.dtype, rows, cache_len, temperature, top_k,
               use_compile)
        kept = self._eager
        if kept is not None and kept[0] == key and kept[1] is model:
            return kept[2]
        self._eager = None  # free the old cache before allocating the new one
        if use_compile:
            state = self._warmed_rollout(model, rows, cache_len, temperature, top_k)
        else:
            state = self._new_rollout(model, rows, cache_len, temperature, top_k, use_compile=False)
        self._eager = (key, model, state)
        return state

    def _static_rollout(self, model: WorldModelTransformer, rows: int, cache_len: int, temperature: float,
                        top_k: int | None) -> StaticRollout:
        """The captured step for this padded batch size, cache length and sampler (built on first use)."""
        key = (self.device, model.llm.lm_head.weight.dtype, rows, cache_len, temperature, top_k)
        if key in self._static:
            return self._static[key]
        state = self._warmed_rollout(model, rows, cache_len, temperature, top_k)
        run = state.replay
        try:
            state.replay = (self._capture or cuda_graph_capture)(run)
        except RuntimeError as err:  # an op that cannot be captured: run the step uncaptured instead
            warnings.warn(f"CUDA graph capture of the imagination step failed ({err}); running it uncaptured",
                          RuntimeWarning, stacklevel=3)
            state.replay = run
        self._static[key] = state
        return state

    def _warmed_rollout(self, model: WorldModelTransformer, rows: int, cache_len: int, temperature: float,
                        top_k: int | None) -> StaticRollout:
        """Fresh buffers whose step has already run (compiled, if asked): a compiler failure shows here, and
        the step falls back to running uncompiled, with a warning."""
        state = self._new_rollout(model, rows, cache_len, temperature, top_k)
        try:
            self._warm_up(state)
        except Exception as err:  # compiler errors come in many types; without compile, re-raise
            if not self._settings().compile:
                raise
            warnings.warn(f"torch.compile of the imagination token step failed ({type(err).__name__}: {err}); "
                          "running it eagerly", RuntimeWarning, stacklevel=4)
            state = self._new_rollout(model, rows, cache_len, temperature, top_k, use_compile=False)
            self._warm_up(state)
        return state

    def _warm_up(self, state: StaticRollout) -> None:
        """Run the step a few times (before a capture: on a side stream on CUDA, as capture requires); it
        writes past the prefix of the cache, which ``reset`` then prefills and masks."""
        cuda = self.device.type == "cuda" and self._capture is None
        stream = torch.cuda.Stream(self.device) if cuda else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _ in range(GRAPH_WARMUP_RUNS):
                state.pos.fill_(self.layout.prefix_length)
                state.replay()
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)

    def _token_step(self, model: WorldModelTransformer, cache: KVCache, token: torch.Tensor, pos: torch.Tensor,
                    embed_add: torch.Tensor | None, noise: torch.Tensor | None, temperature: float,
                    top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed ``token`` (B, 1) at ``pos``, advance ``pos``, sample the next dynamics code.

        Returns:
            the sampled code (B,) (a dynamics codebook index) and the hidden state (B, H) of ``token``.
        """
        hidden = model.decode_hidden(token, pos, cache, embed_add)
        pos.add_(1)
        code = sample_codes(dynamics_logits(model, hidden, self.layout), noise, temperature, top_k)
        return code, hidden

    def _compiled_token_step(self, use_compile: bool) -> Callable:
        if not use_compile:
            return self._token_step
        if "token" not in self._compiled:
            # default dynamic shapes: a second batch size recompiles once with a symbolic batch instead of
            # once per size (which would soon exceed dynamo's recompile limit)
            self._compiled["token"] = torch.compile(self._token_step, fullgraph=True,
                                                    backend=self.config.compile_backend)
        return self._compiled["token"]

    def _step_function(self, model: WorldModelTransformer, state: StaticRollout, temperature: float,
                       top_k: int | None, use_compile: bool) -> Callable[[], None]:
        """One imagined step on ``state``'s buffers: the slot token plus the n codes of the frame."""
        token_step = self._compiled_token_step(use_compile)
        offset = self.layout.dynamics_offset
        n = self.layout.tokens_per_future_frame

        def run() -> None:
            token, embed_add = state.slot, model.action_embedding(state.action)
            for i in range(n):
                noise = None if state.noise is None else state.noise[i]
                code, _ = token_step(model, state.cache, token, state.pos, embed_add, noise, temperature, top_k)
                state.codes[:, i] = code
                token, embed_add = (code + offset).unsqueeze(1), None
            # feeding the frame's last code stores its keys/values and gives the reward read-out; the code it
            # samples would be the next slot's and is dropped
            _, hidden = token_step(model, state.cache, token, state.pos, None, noise, temperature, top_k)
            if state.reward is not None:
                state.reward.copy_(model.rewards(hidden))

        return run
