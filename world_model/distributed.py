"""Data parallelism for world-model training under `torchrun`: one process per device, gradients averaged by
`DistributedDataParallel`, the single-process run untouched.

`torchrun --nproc_per_node=N -m world_model.train ...` (or `--nnodes=M --rdzv-endpoint=HOST:PORT` across
nodes) starts N processes with `RANK`, `LOCAL_RANK` and `WORLD_SIZE` in their environment; `Distributed.from_env`
reads them. Without them (`python -m world_model.train`) it is a world of one and every method here is the
identity, so a plain run is exactly what it was.

- Each rank samples its own segments from its own seed stream (`rank_seed`); the global batch is the per-rank
  batch times the world size, and the gradients are averaged over ranks, so a step equals a single-process step
  on the concatenated batch (up to float summation order).
- Each trainable part's loss runs through a `DistributedDataParallel` wrapper (`ddp_loss`), which registers
  the part's trainable parameters and all-reduces their gradients during `backward`; `no_sync` skips that on
  the micro-steps of gradient accumulation but the last.
- Rank 0 alone logs, writes checkpoints and videos (`is_main`); held-out evaluation is sharded over ranks
  (`shard`) and the rows gathered on every rank (`gather`).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from core.runtime import derive_seed

T = TypeVar("T")
_RANK_SEED_STREAM = 7


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank (global), local rank (on its node) and world size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Distributed:
        """From `torchrun`'s variables (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`); a world of one without them.

        Raises:
            ValueError: the variables are set but inconsistent (one line naming them).
        """
        env = os.environ if env is None else env
        if "WORLD_SIZE" not in env:
            return cls()
        try:
            world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
            local = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ValueError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them); unset them "
                             "for a single-process run") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world} do not describe a process of "
                             "the job; start it with torchrun, or unset them for a single-process run")
        return cls(rank, local, world)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that logs and writes (rank 0)."""
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """The device of this rank: `cuda:<local rank>` when `requested` is CUDA, else `requested`."""
        if self.enabled and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def init(self, device: torch.device) -> None:
        """Joins the process group (NCCL on CUDA, gloo on a CPU); nothing in a world of one."""
        if not self.enabled or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank,
                                world_size=self.world_size)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def rank_seed(self, seed: int) -> int:
        """This rank's data seed: `seed` itself in a world of one (a plain run samples as before)."""
        return derive_seed(seed, _RANK_SEED_STREAM, self.rank) if self.enabled else seed

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of `items` (every `world_size`-th, from `rank`)."""
        return list(items[self.rank::self.world_size])

    def gather(self, rows: list[T]) -> list[T]:
        """Every rank's `rows`, concatenated in rank order, on every rank (picklable rows)."""
        if not self.enabled:
            return rows
        parts: list[list[T] | None] = [None] * self.world_size
        dist.all_gather_object(parts, rows)
        return [row for part in parts for row in (part or [])]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over ranks (for logging; every rank must pass the same keys)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return dict(zip(keys, (tensor / self.world_size).tolist(), strict=True))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


class _LossModule(nn.Module):
    """A module whose forward is a part's loss, so that DistributedDataParallel can wrap it."""

    def __init__(self, module: nn.Module, loss: Callable[..., Any]) -> None:
        super().__init__()
        self.part = module
        self.loss = loss

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.loss(*args, **kwargs)


class DDPLoss:
    """`loss(batch)` of one trainable part, run through `DistributedDataParallel` in a world of more than one.

    Call it like the loss; use `no_sync()` around the micro-steps of gradient accumulation but the last.
    """

    def __init__(self, module: nn.Module, loss: Callable[..., Any], distributed: Distributed) -> None:
        self.loss = loss
        self.ddp: nn.Module | None = None
        if distributed.enabled:
            device = next(module.parameters()).device
            # find_unused_parameters: a part's loss may leave heads unused (no rewards, action-free data)
            self.ddp = nn.parallel.DistributedDataParallel(
                _LossModule(module, loss), device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.loss(*args, **kwargs) if self.ddp is None else self.ddp(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        if self.ddp is None:
            yield
        else:
            with self.ddp.no_sync():
                yield
