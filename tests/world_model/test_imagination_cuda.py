"""The rollout engine's CUDA paths: the bf16 replica, the compiled token step and frame decoder, CUDA-graph
capture and replay. They run only where a CUDA GPU is present; the development machine and CI have none, so
there they are skipped (docs/imagination.md, "GPU: what is unverified", says what that leaves unchecked).
The CPU tests in test_imagination.py cover the same bookkeeping with a capture that only counts.

To run them on a GPU machine, the tiny checkpoint must be reachable: `IVG_SHARED=<path to shared/>`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import REPO, checkpoint_folder, engine_rollout, reference_rollout, tiny_contexts

from world_model.imagination import Imaginer
from world_model.imagination_config import ImaginationConfig
from world_model.model import IVideoGPT
from world_model.sampling import symexp

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def model(tiny_checkpoint, tmp_path_factory):
    folder = checkpoint_folder(tmp_path_factory.mktemp("cuda") / "heads", tiny_checkpoint, "transformer_with_heads")
    return IVideoGPT.from_pretrained(folder).to(CUDA).eval()


@pytest.fixture(scope="module")
def contexts(tiny_checkpoint):
    frames, actions = tiny_contexts(tiny_checkpoint)
    return frames.to(CUDA), actions.to(CUDA)


@pytest.fixture
def no_tf32():
    """float32 matrix products in full float32 (TF32 would let the two paths round differently)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rollout(imaginer: Imaginer, context: torch.Tensor, actions: torch.Tensor, horizon: int, seed: int):
    """`engine_rollout`, with a compiler or capture fallback (a RuntimeWarning) failing the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return engine_rollout(imaginer, context, actions, horizon, seed)


def test_compiled_captured_float32_engine_samples_the_reference_codes(model, contexts, no_tf32):
    """In float32 the compiled, graph-captured engine must sample exactly the codes of the per-frame
    `generate` reference given the same CUDA generator, with its frames and rewards close."""
    context, actions = contexts[0][:3], contexts[1][:3]
    imaginer = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout,
                        ImaginationConfig(precision="float32", decoder_precision="float32",
                                          prefill_precision="float32"))
    settings = imaginer.config.resolve(CUDA)
    assert settings.compile and settings.compile_decoder and settings.cuda_graphs
    codes, raw, frames = rollout(imaginer, context, actions, horizon=3, seed=7)
    assert imaginer._active.state.batch_size == 4  # 3 rollouts padded to the graph for 4
    ref_frames, ref_rewards, ref_codes = reference_rollout(
        model, context, actions, 3, generator=torch.Generator(CUDA).manual_seed(7), per_call_cache=True)
    assert torch.equal(codes, ref_codes) and len(codes.unique()) > 1
    torch.testing.assert_close(frames, ref_frames, atol=1e-4, rtol=0)
    torch.testing.assert_close(symexp(raw), ref_rewards, atol=1e-4, rtol=1e-4)


def test_default_bf16_engine_captures_per_padded_batch_and_decodes_its_codes(model, contexts):
    """The default CUDA engine (bf16 replica and cache, compiled step and decoder, graphs): a graph per padded
    batch size and cache length, frames in [0, 1] that are the float32 decoding of its codes up to bf16
    rounding, and the same codes again from the same seed (replays are deterministic)."""
    imaginer = model.imaginer
    context, actions = contexts[0][:3], contexts[1][:3]
    codes, raw, frames = rollout(imaginer, context, actions, horizon=2, seed=1)
    assert codes.shape == (3, 2, model.tokenizer.config.tokens_per_future_frame) and raw.shape == (3, 2)
    assert frames.dtype == torch.float32 and 0.0 <= frames.min() and frames.max() <= 1.0
    again, _, _ = rollout(imaginer, context, actions, horizon=2, seed=1)
    assert torch.equal(codes, again)
    graphs = len(imaginer._static)
    rollout(imaginer, context[:1], actions[:1], horizon=2, seed=1)
    assert len(imaginer._static) == graphs + 1  # batch 1 gets its own graph
    with torch.no_grad():
        ctx_codes = model.tokenizer.encode_context(context)
        exact = model.tokenizer.decode_future(codes, model.tokenizer.context_cache(ctx_codes)).clamp(0, 1)
    torch.testing.assert_close(frames, exact, atol=0.05, rtol=0)


def test_bench_reports_the_token_step_floor_on_cuda():
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_imagination.py"), "--preset", "tiny", "--device", "cuda",
         "--batches", "1,4", "--horizon", "2", "--repeats", "1", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=True,
    )
    report = json.loads(out.stdout)
    assert report["machine"]["bandwidth_gb_s"] > 0
    for row in report["rows"]:
        assert row["ratio"] > 0 and row["floor_token_step_us"] > 0 and 0 < row["floor_fraction"] <= 1.5
