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
runs eagerly. See ``docs/imagination.md``.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from core.precision import PRECISIONS, autocast_to, resolve_precision
from world_model.layout import TokenLayout
from world_model.tokenizer import CompressiveTokenizer, ContextCache
from world_model.transformer import KVCache, WorldModelTransformer

Flag = bool | Literal["auto"]
Precision = Literal["auto", "float32", "bfloat16"]
Capture = Callable[[Callable[[], None]], Callable[[], None]]
"""Turns a function that runs one imagined step on static buffers into one that replays it."""

GRAPH_WARMUP_RUNS = 2
"""Eager runs before a CUDA graph capture (lazy initialisation, compilation, cuBLAS workspaces)."""


def symlog(x: torch.Tensor) -> torch.Tensor:
    """The reward head's target space (DreamerV3's squashing)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`: the reward head's output back in reward units."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


@contextlib.contextmanager
def module_mode(training: bool, *modules: nn.Module) -> Iterator[None]:
    """Switch modules to training (`True`) or eval mode for the block and restore their previous modes."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.train(training)
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def eval_mode(*modules: nn.Module) -> contextlib.AbstractContextManager[None]:
    """`module_mode(False, ...)`: no dropout inside the block."""
    return module_mode(False, *modules)


# ------------------------------------------------------------------------------------- sampling
def noise_width(num_codes: int, top_k: int | None) -> int:
    """Exponential draws per sampled token: one per candidate (the top k, or every code)."""
    return num_codes if top_k is None else min(top_k, num_codes)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Exp(1) noise for :func:`sample_codes`, from ``generator`` (on ``device``) or the default one."""
    return torch.empty(shape, device=device, dtype=torch.float32).exponential_(1.0, generator=generator)


def sample_codes(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float,
                 top_k: int | None) -> torch.Tensor:
    """Draw one index per row from softmax(logits / temperature) restricted to the top k, given the noise.

    ``argmax(p_i / E_i)`` with ``E_i ~ Exp(1)`` is an exact draw from ``p`` (the exponential race, i.e. the
    Gumbel-max trick in log space), so sampling is a fixed sequence of tensor ops: no host sync, no
    ``multinomial``, and two code paths that consume the same noise sample the same index.

    Args:
        logits: (B, V).
        noise: (B, noise_width(V, top_k)) Exp(1) draws (see :func:`draw_noise`); ignored when greedy.
        temperature: softmax temperature; <= 0 picks the arg-max.
        top_k: keep the k largest logits (None: all).

    Returns:
        (B,) int64 indices into the last axis of ``logits``.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if noise is None:
        raise ValueError("sampling with temperature > 0 needs noise; draw it with draw_noise()")
    scaled = logits.float() / temperature
    if top_k is None or top_k >= logits.shape[-1]:
        return (scaled - noise.log()).argmax(dim=-1)
    values, indices = scaled.topk(top_k, dim=-1)
    pick = (values - noise.log()).argmax(dim=-1, keepdim=True)
    return indices.gather(-1, pick).squeeze(-1)


def sample_top_k(logits: torch.Tensor, temperature: float, top_k: int | None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`sample_codes` with fresh noise from ``generator``: (B, V) logits -> (B,) int64 indices."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    width = noise_width(logits.shape[-1], top_k)
    return sample_codes(logits, draw_noise((logits.shape[0], width), generator, logits.device), temperature, top_k)


def dynamics_logits(transformer: WorldModelTransformer, hidden: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Next-token logits over the dynamics codes only: (B, H) -> (B, D). Skips the LM head's other rows."""
    weight = transformer.llm.lm_head.weight[layout.dynamics_offset:layout.scf_id]
    return F.linear(hidden, weight.to(hidden.dtype))


# ------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ImaginationConfig:
    """Performance knobs of the rollout engine (sampling settings are arguments of ``reset``).

    Attributes:
        compile: ``torch.compile`` the per-token decode step; ``"auto"``: on CUDA only.
        compile_decoder: ``torch.compile`` the frame decoder; ``"auto"``: when the token step is compiled, on
            CUDA only (on the development CPU the compiled decoder was no faster than the eager channels-last
            one at batch 32, 141 vs 145 ms, and slower in 8-row chunks, 151 vs 136 ms).
        cuda_graphs: capture each imagined step as a CUDA graph per padded batch size; ``"auto"``: on CUDA.
        precision: dtype of the transformer's decode weights and KV cache; ``"auto"``: bfloat16 where it is
            native when the token step is compiled (always on CUDA), else float32 (eager on a CPU, bf16 token
            steps were slower than float32 ones; compiled, faster: 47 vs 57 ms per imagined step at batch 32).
        decoder_precision: autocast dtype of the tokenizer's convolutions (context encoding at ``reset``, the
            frame decoder at every step); ``"auto"``: bfloat16 where it is native (a bf16 GPU, or a CPU with
            AVX512-BF16 / AMX, see ``core.precision``), float32 elsewhere.
        prefill_precision: autocast dtype of the context prefill at ``reset`` (long matrix products, unlike the
            token steps); its keys/values are stored in the cache's own dtype. ``"auto"``: bfloat16 where it is
            native, float32 elsewhere (on this project's development CPU, B=32: 0.42 s -> 0.27 s per prefill).
        graph_batch_sizes: padded batch sizes graphs are captured for; a batch runs in the smallest one that
            holds it (a larger batch gets a graph of its own size).
        cpu_chunk_rows: on a CPU, ``reset`` (context encoding, the context's decoder features, the prefill)
            and frame decoding run the batch this many rollouts at a time, so that their activations stay in
            the CPU's cache instead of streaming through memory (the token steps always run the whole batch);
            None: the whole batch at once. On GPUs the whole batch always runs at once.
        compile_backend: ``torch.compile`` backend, a name or a callable (``"eager"`` traces without code
            generation: a check that the step has no graph breaks or host syncs).
    """

    compile: Flag = "auto"
    compile_decoder: Flag = "auto"
    cuda_graphs: Flag = "auto"
    precision: Precision = "auto"
    decoder_precision: Precision = "auto"
    prefill_precision: Precision = "auto"
    graph_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    cpu_chunk_rows: int | None = 8
    compile_backend: str | Callable = "inductor"

    def __post_init__(self) -> None:
        for name in ("compile", "compile_decoder", "cuda_graphs"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(f"ImaginationConfig.{name} must be True, False or 'auto', got {getattr(self, name)!r}")
        for name in ("precision", "decoder_precision", "prefill_precision"):
            if getattr(self, name) not in PRECISIONS:
                raise ValueError(f"ImaginationConfig.{name} must be one of {', '.join(PRECISIONS)}, "
                                 f"got {getattr(self, name)!r}")
        if not self.graph_batch_sizes or min(self.graph_batch_sizes) < 1:
            raise ValueError(f"graph_batch_sizes must be positive batch sizes, got {self.graph_batch_sizes}")
        object.__setattr__(self, "graph_batch_sizes", tuple(sorted(set(self.graph_batch_sizes))))
        if self.cpu_chunk_rows is not None and (isinstance(self.cpu_chunk_rows, bool)
                                                or not isinstance(self.cpu_chunk_rows, int)
                                                or self.cpu_chunk_rows < 1):
            raise ValueError("ImaginationConfig.cpu_chunk_rows must be a positive number of rollouts or None "
                             f"(the whole batch), got {self.cpu_chunk_rows!r}")

    def resolve(self, device: torch.device) -> EngineSettings:
        """What these knobs mean on ``device``; explicit CUDA graphs off CUDA are an error."""
        cuda = device.type == "cuda"
        if self.cuda_graphs is True and not cuda:
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device (it is on {device}); "
                             "use cuda_graphs='auto' to capture graphs only on CUDA")

        use_compile = cuda if self.compile == "auto" else bool(self.compile)
        if self.precision != "auto":
            dtype = getattr(torch, self.precision)
        elif cuda or use_compile:
            dtype = resolve_precision("auto", device)
        else:  # eager token steps on a CPU: its bf16 matrix-vector products over the cache are slow
            dtype = torch.float32
        return EngineSettings(
            compile=use_compile,
            cuda_graphs=cuda if self.cuda_graphs == "auto" else bool(self.cuda_graphs),
            dtype=dtype,
            decoder_dtype=resolve_precision(self.decoder_precision, device),
            prefill_dtype=resolve_precision(self.prefill_precision, device, fallback=dtype),
            chunk_rows=self.cpu_chunk_rows if device.type == "cpu" else None,
            compile_decoder=(use_compile and cuda) if self.compile_decoder == "auto" else bool(self.compile_decoder),
        )


@dataclass(frozen=True)
class EngineSettings:
    """:class:`ImaginationConfig` resolved on a device.

    Attributes:
        compile, cuda_graphs: whether the token step is compiled / the imagined step captured.
        dtype: the transformer's decode weights and KV cache.
        decoder_dtype: autocast dtype of the tokenizer calls.
        prefill_dtype: autocast dtype of the context prefill.
        chunk_rows: rollouts per chunk of ``reset`` and frame decoding; None: the whole batch at once.
        compile_decoder: whether the frame decoder is compiled.
    """

    compile: bool
    cuda_graphs: bool
    dtype: torch.dtype
    decoder_dtype: torch.dtype
    prefill_dtype: torch.dtype
    chunk_rows: int | None = None
    compile_decoder: bool = False


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
class Imaginer:
    """Batched imagination with a static KV cache: prefill the context once, then a token step at a time.

    Args:
        transformer: the world-model transformer.
        tokenizer: the compressive tokenizer.
        layout: the token layout (any horizon; only its per-frame counts and ids are used).
        config: performance knobs (compile, CUDA graphs, precision).
        capture: how a static step is captured; default a CUDA graph. Passing one (e.g. :func:`no_capture`)
            forces the padded static-buffer path on any device, which is how it is tested without a GPU.
    """

    def __init__(self, transformer: WorldModelTransformer, tokenizer: CompressiveTokenizer, layout: TokenLayout,
                 config: ImaginationConfig | None = None, capture: Capture | None = None) -> None:
        self.transformer, self.tokenizer = transformer, tokenizer
        self.layout = layout.with_future_frames(0)
        self.config = config or ImaginationConfig()
        self._capture = capture
        self._replica: WorldModelTransformer | None = None
        self._static: dict[tuple, StaticRollout] = {}
        self._eager: tuple[tuple, WorldModelTransformer, StaticRollout] | None = None
        self._compiled: dict[str, Callable] = {}
        self._active: _Active | None = None

    # --------------------------------------------------------------------------------- settings
    @property
    def max_horizon(self) -> int:
        """Most imagined frames that fit ``max_position_embeddings``."""
        free = self.transformer.config.max_position_embeddings - self.layout.prefix_length
        return max(free // self.layout.future_block_length, 0)

    @property
    def device(self) -> torch.device:
        return self.transformer.llm.lm_head.weight.device

    def _settings(self) -> EngineSettings:
        settings = self.config.resolve(self.device)
        return replace(settings, cuda_graphs=settings.cuda_graphs or self._capture is not None)

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

    # ---------------------------------------------------------------------------------- reset
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

    def release(self) -> None:
        """Free the captured graphs and the buffers kept for reuse (per padded batch size; the latest
        uncaptured batch)."""
        self._static, self._eager, self._active = {}, None, None

    # ----------------------------------------------------------------------------------- step
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
        reward = None if state.reward is None else state.reward[:batch].to(torch.float32, copy=True)
        return state.codes[:batch].clone(), reward

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
