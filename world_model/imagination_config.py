"""The rollout engine's performance knobs (``ImaginationConfig``) and what they resolve to on a device."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from core.cpu import cpu_choices
from core.precision import PRECISIONS, resolve_precision

Flag = bool | Literal["auto"]
Precision = Literal["auto", "float32", "bfloat16"]


@dataclass(frozen=True)
class ImaginationConfig:
    """Performance knobs of the rollout engine (sampling settings are arguments of ``reset``).

    The measurements behind the defaults are in ``docs/imagination.md``.

    Attributes:
        compile: ``torch.compile`` the per-token decode step; ``"auto"``: on CUDA only.
        compile_decoder: ``torch.compile`` the frame decoder; ``"auto"``: when the token step is compiled, on
            CUDA only (on a CPU the compiled decoder is no faster than the eager channels-last one, and slower
            in row chunks).
        cuda_graphs: capture each imagined step as a CUDA graph per padded batch size; ``"auto"``: on CUDA.
        precision: dtype of the transformer's decode weights and KV cache; ``"auto"``: bfloat16 where it is
            native when the token step is compiled (always on CUDA), else float32 (eager on a CPU, bf16 token
            steps are slower than float32 ones; compiled, faster).
        decoder_precision: autocast dtype of the tokenizer's convolutions (context encoding at ``reset``, the
            frame decoder at every step); ``"auto"``: bfloat16 where it is native (a bf16 GPU, or a CPU with
            AVX512-BF16 / AMX, see ``core.precision``), float32 elsewhere.
        prefill_precision: autocast dtype of the context prefill at ``reset`` (long matrix products, unlike the
            token steps); its keys/values are stored in the cache's own dtype. ``"auto"``: bfloat16 where it is
            native, float32 elsewhere.
        graph_batch_sizes: padded batch sizes graphs are captured for; a batch runs in the smallest one that
            holds it (a larger batch gets a graph of its own size).
        cpu_chunk_rows: on a CPU, ``reset`` (context encoding, the context's decoder features, the prefill)
            and frame decoding run the batch this many rollouts at a time, so that their activations stay in
            the CPU's cache instead of streaming through memory (the token steps always run the whole batch);
            None: the whole batch at once; ``"auto"``: as ``core.cpu.cpu_choices`` says for this CPU (8 on a
            CPU with bf16 instructions, the whole batch elsewhere: float32 decoding on an AVX2 CPU was slower
            in chunks; ``docs/cpu.md``). On GPUs the whole batch always runs at once.
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
    cpu_chunk_rows: int | None | Literal["auto"] = "auto"
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
        if self.cpu_chunk_rows not in (None, "auto") and (isinstance(self.cpu_chunk_rows, bool)
                                                          or not isinstance(self.cpu_chunk_rows, int)
                                                          or self.cpu_chunk_rows < 1):
            raise ValueError("ImaginationConfig.cpu_chunk_rows must be a positive number of rollouts, None "
                             f"(the whole batch) or 'auto', got {self.cpu_chunk_rows!r}")

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
            chunk_rows=self._chunk_rows() if device.type == "cpu" else None,
            compile_decoder=(use_compile and cuda) if self.compile_decoder == "auto" else bool(self.compile_decoder),
        )

    def _chunk_rows(self) -> int | None:
        return cpu_choices().chunk_rows if self.cpu_chunk_rows == "auto" else self.cpu_chunk_rows  # type: ignore


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
