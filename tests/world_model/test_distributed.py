"""world_model.distributed: torchrun's environment, and a 2-process gloo job whose DDP steps equal single-process
steps on the concatenated batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from world_model.distributed import DDPLoss, Distributed

STEPS, PER_RANK, WORLD = 3, 4, 2


def test_from_env():
    assert Distributed.from_env({}) == Distributed(0, 0, 1) and not Distributed.from_env({}).enabled
    job = Distributed.from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert job == Distributed(3, 1, 4) and job.enabled and not job.is_main
    assert job.shard(list(range(10))) == [3, 7]
    assert job.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert job.device(torch.device("cpu")) == torch.device("cpu")
    single = Distributed()
    assert single.rank_seed(5) == 5 and single.gather([1]) == [1] and single.mean({"a": 1.0}) == {"a": 1.0}
    assert job.rank_seed(5) != Distributed(2, 0, 4).rank_seed(5)
    with pytest.raises(ValueError, match="do not describe a process"):
        Distributed.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="must be integers"):
        Distributed.from_env({"RANK": "x", "WORLD_SIZE": "2"})


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(WORLD * PER_RANK, 6, generator=generator), torch.randn(WORLD * PER_RANK, 1, generator=generator)


def _model() -> nn.Module:
    torch.manual_seed(0)
    # the second head is never used by the loss: DDP must cope with unused parameters
    return nn.ModuleDict({"body": nn.Linear(6, 1), "unused": nn.Linear(6, 1)})


def _train(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters()], lr=0.1)
    for step in range(STEPS):
        loss = loss_fn(x + step, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 0.5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    job = Distributed.from_env({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)})
    job.init(torch.device("cpu"))
    try:
        model = _model()
        with torch.no_grad():  # different initial weights per rank: DDP starts every rank from rank 0's
            model["body"].weight.add_(rank)
        loss = DDPLoss(model, lambda x, y: (model["body"](x) - y).pow(2).mean(), job)
        x, y = _data()
        mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        _train(model, loss, x[mine], y[mine])
        out[rank] = {
            "params": [p.detach().clone() for p in model.parameters()],
            "gathered": job.gather([f"row of rank {rank}"]),
            "mean": job.mean({"x": float(rank)}),
            "shard": job.shard(list(range(5))),
        }
    finally:
        job.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one_process_with_the_global_batch():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
        results = dict(out)
    single = _model()
    x, y = _data()
    _train(single, lambda a, b: (single["body"](a) - b).pow(2).mean(), x, y)
    for rank in range(WORLD):
        for mine, theirs, reference in zip(results[rank]["params"], results[0]["params"], single.parameters(),
                                           strict=True):
            assert torch.equal(mine, theirs)  # identical on every rank
            torch.testing.assert_close(mine, reference.detach(), rtol=1e-6, atol=1e-6)
        assert results[rank]["gathered"] == ["row of rank 0", "row of rank 1"]
        assert results[rank]["mean"] == {"x": 0.5}
    assert results[0]["shard"] == [0, 2, 4] and results[1]["shard"] == [1, 3]
    assert not torch.equal(results[0]["params"][0], _model()["body"].weight)  # it trained
