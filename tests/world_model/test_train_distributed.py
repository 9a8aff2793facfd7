"""Data-parallel world-model training on the CPU with the gloo backend and 2 processes: the same parameters on
every rank and as one process with the global batch; `torchrun -m world_model.train` writes one checkpoint,
gathers the evaluation rows of both ranks, and a killed job resumes (under 2 processes, then under 1)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from core.batch import SegmentBatch
from core.checkpoint import load_checkpoint
from world_model.build import build_model
from world_model.distributed import Distributed
from world_model.training import OptimConfig, WorldModelTrainer

REPO = Path(__file__).resolve().parents[2]
SIZE, LENGTH, ROWS = 16, 4, 4  # frames 16x16, segments of 2 context + 2 target frames, global batch 4
TOKENIZER = {"block_out_channels": [16, 32], "norm_num_groups": 8, "latent_channels": 16,
             "num_vq_embeddings": 64, "num_dyn_embeddings": 64, "patch_size": 2}
TRANSFORMER = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128}
OVERRIDES = [f"+tokenizer_overrides.{k}={v}".replace(" ", "") for k, v in TOKENIZER.items()] + \
            [f"+transformer_overrides.{k}={v}" for k, v in TRANSFORMER.items()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    return build_model("cpu", image_size=SIZE, action_dim=4, reward_head=True, attention_dropout=0.0,
                       tokenizer_overrides=TOKENIZER, transformer_overrides=TRANSFORMER)


def _batch() -> SegmentBatch:
    g = torch.Generator().manual_seed(1)
    return SegmentBatch(torch.randint(0, 256, (ROWS, LENGTH, 3, SIZE, SIZE), generator=g, dtype=torch.uint8),
                        torch.rand(ROWS, LENGTH, 4, generator=g) * 2 - 1, torch.rand(ROWS, LENGTH, generator=g))


def _train(trainer: WorldModelTrainer, batch: SegmentBatch) -> None:
    for _ in range(2):
        trainer.update_tokenizer(batch)
        trainer.update_transformer(batch)


# no frame subset (every target frame reconstructed), no dropout, float32: the steps are deterministic
OPTIM = OptimConfig(tokenizer_lr=1e-3, transformer_lr=1e-3, max_target_frames=LENGTH - 2, tokenizer_dropout=False,
                    mixed_precision=False)


def _rank(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    job = Distributed(rank, rank, 2)
    job.init(torch.device("cpu"))
    try:
        model = _model()
        batch = _batch()
        half = slice(rank * ROWS // 2, (rank + 1) * ROWS // 2)
        _train(WorldModelTrainer(model, OPTIM, None, job),
               SegmentBatch(batch.frames[half], batch.actions[half], batch.rewards[half]))
        out[rank] = {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        job.close()


def test_two_ranks_equal_one_process_with_the_global_batch():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(_free_port(), out), nprocs=2, join=True)
        ranks = dict(out)
    single = _model()
    _train(WorldModelTrainer(single, OPTIM), _batch())
    untouched = _model().state_dict()
    changed = 0
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # identical on both ranks
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-5, msg=key)
        changed += not torch.equal(value, untouched[key])
    assert changed > 10  # both parts trained


def test_gradient_accumulation_equals_the_whole_batch():
    whole, micro = _model(), _model()
    _train(WorldModelTrainer(whole, OPTIM), _batch())
    _train(WorldModelTrainer(micro, OPTIM, accumulation=2), _batch())
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(micro.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


# ------------------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("episodes")
    rng = np.random.default_rng(3)
    for split, count in (("train", 6), ("val", 3)):
        (root / split).mkdir()
        for i in range(count):
            np.savez_compressed(root / split / f"episode_{i}.npz",
                                image=rng.integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8),
                                action=rng.uniform(-1, 1, (10, 4)).astype(np.float32),
                                reward=rng.uniform(0, 1, 10).astype(np.float32))
    return root


def _command(data: Path, out: Path, steps: int, processes: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                f"--master_port={_free_port()}"] if processes > 1 else [sys.executable]
    return [*launcher, "-m", "world_model.train", f"data={data / 'train'}", f"val_data={data / 'val'}",
            f"out={out}", f"steps={steps}", "batch_size=2", f"segment_length={LENGTH}", "eval_every=2",
            "eval_segments=3", "checkpoint_every=2", "log_every=2", "num_threads=1", "tokenizer.max_target_frames=2",
            "wandb.mode=disabled", "attention_dropout=0.0", "tokenizer.dropout=false", *OVERRIDES]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}


def _run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_torchrun_two_processes_one_checkpoint_gathered_evaluation(data, tmp_path):
    out = tmp_path / "run"
    result = _run(_command(data, out, steps=4, processes=2))
    printed = result.stdout + result.stderr
    assert printed.count(f"global batch: 4 segments (2 processes x 2) x {LENGTH} frames") == 1  # rank 0 speaks
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("training_state.pt")) == [
        Path("run/checkpoint/training_state.pt")]
    state = load_checkpoint(out / "checkpoint" / STATE, map_location="cpu")
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["data_rng"] != state["ranks"][1]["data_rng"]  # each rank its own stream
    train = _rows(out / "train.csv")
    assert [int(r["step"]) for r in train] == [2, 4]  # one writer
    assert [int(r["frame"]) for r in train] == [2 * 4 * LENGTH, 4 * 4 * LENGTH]  # the global batch
    evals = _rows(out / "eval.csv")
    assert [int(r["step"]) for r in evals] == [0, 2, 4]
    assert all(float(r["eval/segments"]) == 3 for r in evals)  # 2 rows from rank 0, 1 from rank 1


STATE = "training_state.pt"


@pytest.mark.slow
def test_a_killed_two_process_job_resumes_under_two_then_one(data, tmp_path):
    out = tmp_path / "run"
    job = subprocess.Popen(_command(data, out, steps=10_000, processes=2), cwd=REPO, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state_file = out / "checkpoint" / STATE
    try:
        deadline = time.monotonic() + 300
        while not state_file.is_file() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
        assert state_file.is_file(), "no checkpoint within 300 s"
    finally:  # torchrun and its workers (they may sit in other process groups)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        subprocess.run(["pkill", "-9", "-f", f"out={out}"], check=False)
        while subprocess.run(["pgrep", "-f", f"out={out}"], capture_output=True, check=False).returncode == 0:
            time.sleep(0.2)
    step = load_checkpoint(state_file, map_location="cpu")["step"]
    assert step >= 2 and step % 2 == 0
    resumed = _run(_command(data, out, steps=step + 2, processes=2))
    assert f"resumed from {out / 'checkpoint'} at step {step}" in resumed.stdout + resumed.stderr
    assert load_checkpoint(state_file, map_location="cpu")["step"] == step + 2
    alone = _run(_command(data, out, steps=step + 4, processes=1))
    printed = alone.stdout + alone.stderr
    assert "resuming a run saved by 2 process(es) with 1: the global batch changes from 4 to 2" in printed
    final = load_checkpoint(state_file, map_location="cpu")
    assert final["step"] == step + 4 and final["world_size"] == 1
    assert [int(r["step"]) for r in _rows(out / "train.csv")][-1] == step + 4
