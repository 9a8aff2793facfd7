"""The compressive tokenizer against the official tiny checkpoint + fixture, and its training contract."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from world_model.blocks import SLOW_CHANNELS_LAST_NORM_POSITIONS, GroupNorm, Upsample, _slow_norm_layout
from world_model.cross_attention import context_attention
from world_model.tokenizer import CompressiveTokenizer, ContextCache, depatchify, patchify
from world_model.tokenizer_config import CONFIG_NAME, WEIGHTS_NAME, TokenizerConfig

MANIFEST = "manifest_paper64.json"
CONTEXT = 2  # the fixture's context_length


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two threads on two shared, busy cores are several times slower than one for these small models."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> dict[str, torch.Tensor]:
    with np.load(tiny_checkpoint / "fixture.npz") as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> CompressiveTokenizer:
    return CompressiveTokenizer.from_pretrained(tiny_checkpoint / "tokenizer")


@pytest.fixture(scope="module")
def manifest(tiny_checkpoint: Path) -> dict:
    return json.loads((tiny_checkpoint.parent / MANIFEST).read_text())


def fixture_codes(tokens: torch.Tensor, config: TokenizerConfig, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes out of the official token sequence: ctx (N) [scf ctx (N)]... then [sdf dyn (n)] per future frame."""
    n_ctx, n_dyn = config.tokens_per_context_frame, config.tokens_per_future_frame
    b = tokens.shape[0]
    prelude = (n_ctx + 1) * context - 1
    ctx = torch.cat([torch.full((b, 1), -1), tokens[:, :prelude]], 1).view(b, context, n_ctx + 1)[:, :, 1:]
    dyn = tokens[:, prelude:].reshape(b, -1, n_dyn + 1)[:, :, 1:] - config.num_vq_embeddings
    return ctx, dyn


def test_fixture_code_extraction_uses_the_documented_positions(reference, tokenizer) -> None:
    tokens = reference["tokens"]
    scf, sdf = tokenizer.config.num_vq_embeddings + tokenizer.config.num_dyn_embeddings + np.arange(2)
    assert (tokens[:, 256] == scf).all()
    assert (tokens[:, [513, 530, 547, 564]] == sdf).all()
    ctx, dyn = fixture_codes(tokens, tokenizer.config, CONTEXT)
    assert ctx.shape == (2, 2, 256) and dyn.shape == (2, 4, 16)
    assert ctx.max() < tokenizer.config.num_vq_embeddings and dyn.min() >= 0


# ---- config ---------------------------------------------------------------------------------------------
def test_config_from_published_json(tiny_checkpoint: Path, manifest: dict) -> None:
    published = json.loads((tiny_checkpoint / "tokenizer" / CONFIG_NAME).read_text())
    config = TokenizerConfig.from_json_dict(published)
    assert config == TokenizerConfig.tiny()
    assert config.to_json_dict() == published
    assert (config.latent_size, config.tokens_per_context_frame, config.tokens_per_future_frame) == (16, 256, 16)
    assert config.embed_dim == 32
    # The published 64x64 config.json leaves patch_size out: it must default like the official class.
    paper = TokenizerConfig.from_json_dict(manifest["tokenizer_config_json"])
    assert paper == TokenizerConfig.paper64() == TokenizerConfig.from_json_dict(manifest["tokenizer_effective_config"])
    assert set(paper.to_json_dict()) == set(manifest["tokenizer_effective_config"]) - {"_use_default_values"}


def test_config_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown tokenizer config keys.*block_channels"):
        TokenizerConfig.from_json_dict({"block_channels": [32]})
    with pytest.raises(ValueError, match="patch_size"):
        replace(TokenizerConfig.tiny(), patch_size=5)
    with pytest.raises(ValueError, match="same length"):
        replace(TokenizerConfig.tiny(), block_out_channels=(32, 64))
    with pytest.raises(ValueError, match="unknown tokenizer preset"):
        TokenizerConfig.preset("huge")
    assert replace(TokenizerConfig.tiny(), commitment_beta=0.25).to_json_dict()["commitment_beta"] == 0.25


def test_paper64_preset_matches_published_layout(manifest: dict) -> None:
    with torch.device("meta"):
        model = CompressiveTokenizer(TokenizerConfig.paper64())
    published = manifest["tokenizer_state_dict"]
    state = model.state_dict()
    assert list(state) == list(published)
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in published.items()}
    counts = manifest["param_counts"]
    assert sum(p.numel() for p in model.parameters()) == counts["tokenizer_total"]
    assert {n: sum(p.numel() for p in c.parameters()) for n, c in model.named_children()} == counts["tokenizer_by_child"]
    model.set_context_length(1)
    assert sum(p.numel() for p in model.parameters()) == counts["tokenizer_ctx1_total"]
    for key, change in manifest["tokenizer_ctx1_changes"]["changed_keys"].items():
        assert list(model.state_dict()[key].shape) == change["ctx1_shape_after_set_context_length"]


def test_other_presets_build_with_paper_token_counts() -> None:
    for name in ("tiny", "cpu"):
        config = TokenizerConfig.preset(name)
        assert (config.tokens_per_context_frame, config.tokens_per_future_frame) == (256, 16)
        assert config.block_out_channels != TokenizerConfig.paper64().block_out_channels


# ---- loading --------------------------------------------------------------------------------------------
def test_strict_loading_names_every_problem(tiny_checkpoint: Path) -> None:
    state = load_file(str(tiny_checkpoint / "tokenizer" / WEIGHTS_NAME))
    model = CompressiveTokenizer(TokenizerConfig.tiny())
    broken = dict(state)
    del broken["quant_conv.bias"]
    broken["extra.weight"] = torch.zeros(1)
    broken["quantize.embedding.weight"] = torch.zeros(7, 32)
    with pytest.raises(ValueError) as error:
        model.load_published_state_dict(broken)
    message = str(error.value)
    assert "missing keys (1): quant_conv.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "quantize.embedding.weight: checkpoint (7, 32) vs model (256, 32)" in message
    with pytest.raises(ValueError, match="shape mismatches"):
        CompressiveTokenizer(replace(TokenizerConfig.tiny(), latent_channels=64)).load_published_state_dict(state)


def test_save_load_round_trip(tokenizer: CompressiveTokenizer, tiny_checkpoint: Path, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    published = json.loads((tiny_checkpoint / "tokenizer" / CONFIG_NAME).read_text())
    assert set(json.loads((tmp_path / CONFIG_NAME).read_text())) == set(published)
    loaded = CompressiveTokenizer.from_pretrained(tmp_path)
    assert loaded.config == tokenizer.config and not loaded.training
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert sorted(load_file(str(tmp_path / WEIGHTS_NAME))) == sorted(tokenizer.state_dict())
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        CompressiveTokenizer.from_pretrained(tmp_path / "missing")


# ---- numerics against the official implementation ------------------------------------------------------
def test_latents_match_fixture(tokenizer: CompressiveTokenizer, reference) -> None:
    # float64: its distance to the float32 fixture is the fixture's own rounding (~5e-6), the same on
    # any CPU; two float32 runs on different kernels could each add that much again.
    model = CompressiveTokenizer(tokenizer.config).double().eval()
    model.load_state_dict(tokenizer.state_dict())
    frames = reference["frames"].double()
    with torch.no_grad():
        latent, kv = model._context_latents(frames[:, :CONTEXT])
        dyn_latent = model._future_latents(frames[:, CONTEXT:], kv)
    torch.testing.assert_close(latent.float(), reference["ctx_latents"], atol=1e-5, rtol=0)
    torch.testing.assert_close(dyn_latent.float(), reference["dyn_latents"], atol=1e-5, rtol=0)


def test_codes_match_fixture_tokens(tokenizer: CompressiveTokenizer, reference) -> None:
    ctx, dyn = fixture_codes(reference["tokens"], tokenizer.config, CONTEXT)
    frames = reference["frames"]
    ctx_codes, dyn_codes = tokenizer.tokenize(frames, CONTEXT)
    assert ctx_codes.dtype == dyn_codes.dtype == torch.int64
    assert torch.equal(ctx_codes, ctx) and torch.equal(dyn_codes, dyn)
    assert torch.equal(tokenizer.encode_context(frames[:, :CONTEXT]), ctx)
    assert torch.equal(tokenizer.encode_future(frames[:, CONTEXT:], frames[:, :CONTEXT]), dyn)


def test_decoding_matches_fixture_recon(tokenizer: CompressiveTokenizer, reference) -> None:
    ctx, dyn = fixture_codes(reference["tokens"], tokenizer.config, CONTEXT)
    recon = reference["recon"]
    with torch.no_grad():
        cache = tokenizer.context_cache(ctx)
        torch.testing.assert_close(tokenizer.decode_context(ctx), recon[:, :CONTEXT], atol=1e-4, rtol=0)
        torch.testing.assert_close(tokenizer.decode_future(dyn, cache), recon[:, CONTEXT:], atol=1e-4, rtol=0)
        torch.testing.assert_close(tokenizer.detokenize(ctx, dyn), recon, atol=1e-4, rtol=0)


def test_loss_forward_matches_fixture(tokenizer: CompressiveTokenizer, reference) -> None:
    with torch.no_grad():
        total, parts = tokenizer.loss(reference["frames"], CONTEXT, max_target_frames=4)
    expected = {
        "recon_l1": "tok_fwd_recon_l1",
        "ref_recon_l1": "tok_fwd_ref_recon_l1",
        "commit": "tok_fwd_commit_loss",
        "dyn_commit": "tok_fwd_dyn_commit_loss",
    }
    assert set(parts) == set(expected)
    for part, key in expected.items():
        torch.testing.assert_close(parts[part], reference[key], rtol=1e-5, atol=0, msg=part)
    torch.testing.assert_close(total, sum(parts.values()))


# ---- rollout-facing behaviour ---------------------------------------------------------------------------
def test_context_cache_is_batch_independent_and_expandable(tokenizer: CompressiveTokenizer, reference) -> None:
    ctx, dyn = fixture_codes(reference["tokens"], tokenizer.config, CONTEXT)
    with torch.no_grad():
        cache = tokenizer.context_cache(ctx)
        full = tokenizer.decode_future(dyn, cache)
        # One frame at a time with the same cache = all frames at once.
        one_by_one = torch.cat([tokenizer.decode_future(dyn[:, k : k + 1], cache) for k in range(dyn.shape[1])], 1)
        torch.testing.assert_close(one_by_one, full, atol=1e-5, rtol=0)
        repeated = cache.repeat_interleave(3)
        assert isinstance(repeated, ContextCache) and repeated.batch_size == 6
        torch.testing.assert_close(
            tokenizer.decode_future(dyn.repeat_interleave(3, 0), repeated), full.repeat_interleave(3, 0),
            atol=1e-5, rtol=0,
        )
        swapped = tokenizer.decode_future(dyn.flip(0), cache.index_select(torch.tensor([1, 0])))
        torch.testing.assert_close(swapped, full.flip(0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="context cache has 2"):
        tokenizer.decode_future(dyn[:1], cache)


def test_bad_inputs_raise_clear_errors(tokenizer: CompressiveTokenizer, reference) -> None:
    frames = reference["frames"]
    with pytest.raises(ValueError, match=r"\(B, T, 3, 64, 64\)"):
        tokenizer.encode_context(frames[..., :32])
    with pytest.raises(ValueError, match="divide uint8 frames by 255"):
        tokenizer.encode_context((frames * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="context_length=2"):
        tokenizer.tokenize(frames, 1)
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        tokenizer.decode_future(torch.zeros(2, 1, 15, dtype=torch.long), tokenizer.context_cache(
            torch.zeros(2, 2, 256, dtype=torch.long)))


def test_patchify_round_trip_and_order() -> None:
    latent = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    patches = patchify(latent, 4)
    assert patches.shape == (2, 4, 48)
    # Patch 1 is the top-right 4x4 block; its vector is ordered (p_h, p_w, C).
    assert torch.equal(patches[0, 1].view(4, 4, 3), latent[0, :, :4, 4:].permute(1, 2, 0))
    assert torch.equal(depatchify(patches, 4, 2), latent)


# ---- training -------------------------------------------------------------------------------------------
class _MeanSquare(nn.Module):
    """Stand-in perceptual distance with LPIPS' interface: (N, 3, H, W) pairs in [-1, 1] -> (N, 1, 1, 1)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).pow(2).mean(dim=(1, 2, 3), keepdim=True)


def test_loss_target_subset_and_perceptual_term(tokenizer: CompressiveTokenizer, reference) -> None:
    frames = reference["frames"]
    with torch.no_grad():
        total, parts = tokenizer.loss(frames, CONTEXT, 2, _MeanSquare(), torch.Generator().manual_seed(0), 0.5)
        again, _ = tokenizer.loss(frames, CONTEXT, 2, _MeanSquare(), torch.Generator().manual_seed(0), 0.5)
        other, _ = tokenizer.loss(frames, CONTEXT, 2, _MeanSquare(), torch.Generator().manual_seed(3), 0.5)
    assert torch.equal(total, again) and not torch.equal(total, other)
    assert parts["perceptual"] > 0 and parts["ref_perceptual"] > 0
    plain = parts["recon_l1"] + parts["ref_recon_l1"] + parts["commit"] + parts["dyn_commit"]
    torch.testing.assert_close(total, plain + 0.5 * (parts["perceptual"] + parts["ref_perceptual"]))
    with pytest.raises(ValueError, match="no future frames"):
        tokenizer.loss(frames[:, :CONTEXT], CONTEXT)


def _small_config() -> TokenizerConfig:
    """The tiny architecture at 32x32 (8x8 latents, 4 dynamics tokens) so training tests take seconds."""
    return replace(TokenizerConfig.tiny(), resolution=32, max_att_resolution=8, num_vq_embeddings=64,
                   num_dyn_embeddings=64)


def _synthetic_videos(size: int, frames: int) -> torch.Tensor:
    """Two videos ``(2, T, 3, size, size)``: a bar sliding right over a vertical gradient."""
    grid = torch.linspace(0, 1, size)
    videos = []
    for phase in (0.0, 0.2):
        video = [
            torch.stack([
                ((grid[None, :] - (0.3 + 0.1 * k + phase)).abs() < 0.15).float().expand(size, size),
                grid[:, None].expand(size, size),
                torch.full((size, size), phase),
            ])
            for k in range(frames)
        ]
        videos.append(torch.stack(video))
    return torch.stack(videos)


def test_frozen_codebooks_get_no_gradient() -> None:
    torch.manual_seed(0)
    model = CompressiveTokenizer(_small_config()).eval()
    model.freeze_codebooks()
    codebooks = {id(model.quantize.embedding.weight), id(model.dynamics_quantize.embedding.weight)}
    trainable = list(model.trainable_parameters())
    assert len(trainable) == len(list(model.parameters())) - 2
    assert not codebooks & {id(p) for p in trainable}
    loss, _ = model.loss(_synthetic_videos(32, 4), CONTEXT)
    loss.backward()
    assert model.quantize.embedding.weight.grad is None and model.dynamics_quantize.embedding.weight.grad is None
    assert all(p.grad is not None for p in trainable)
    model.freeze_codebooks(False)
    assert len(list(model.trainable_parameters())) == len(list(model.parameters()))


def test_short_training_run_lowers_reconstruction_error() -> None:
    torch.manual_seed(0)
    model = CompressiveTokenizer(_small_config()).eval()  # eval: no attention dropout, as in official fine-tuning
    videos = _synthetic_videos(32, 4)

    def token_l1() -> float:
        with torch.no_grad():
            return (model.detokenize(*model.tokenize(videos, CONTEXT)) - videos).abs().mean().item()

    before = token_l1()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(40):
        loss, parts = model.loss(videos, CONTEXT)
        first = first or {k: v.item() for k, v in parts.items()}
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert parts["recon_l1"].item() < 0.5 * first["recon_l1"]
    assert parts["ref_recon_l1"].item() < 0.5 * first["ref_recon_l1"]
    assert token_l1() < 0.5 * before


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_matches_torch_in_every_layout(size: int, dtype: torch.dtype) -> None:
    """The tokenizer's GroupNorm takes a detour for small channels-last bf16 maps on CPU; it must give
    nn.GroupNorm's result in nn.GroupNorm's layout, with the same state-dict keys."""
    torch.manual_seed(0)
    ours = GroupNorm(8, 32, eps=1e-6)
    reference = nn.GroupNorm(8, 32, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(4, 32, size, size).to(dtype)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        got, want = ours(xl), reference(xl)
        assert got.dtype == want.dtype and got.is_contiguous(memory_format=layout)
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    detour = _slow_norm_layout(x.contiguous(memory_format=torch.channels_last))
    assert detour == (dtype == torch.bfloat16 and size * size <= SLOW_CHANNELS_LAST_NORM_POSITIONS)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_upsample_is_nearest_upsampling_then_conv(layout: torch.memory_format) -> None:
    """Upsample runs as one transposed conv; it must be the published layer's nearest x2 + 3x3 conv, in its
    output and in the gradients of its input and parameters (the tokenizer trains through it)."""
    torch.manual_seed(0)
    ours = Upsample(6)
    reference = nn.Conv2d(6, 6, 3, padding=1)
    reference.load_state_dict(ours.conv.state_dict())
    x = torch.randn(2, 6, 3, 5).contiguous(memory_format=layout)  # odd, non-square: every border case
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = ours(x_ours)
    want = reference(nn.functional.interpolate(x_ref, scale_factor=2.0, mode="nearest"))
    assert got.shape == want.shape == (2, 6, 6, 10)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(want)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.conv.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.conv.bias.grad, reference.bias.grad, atol=1e-4, rtol=1e-5)


def test_context_attention_matches_sdpa():
    """The cross-attention's bf16 CPU inference path (explicit matrix products) gives SDPA's result, within bf16
    rounding; other precisions and anything under autograd go to SDPA itself."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8)
    want = nn.functional.scaled_dot_product_attention(q, k, v)
    with torch.no_grad():
        got = context_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(context_attention(q, k, v), want)
    q.requires_grad_()
    out = context_attention(q, k, v)
    out.sum().backward()
    assert q.grad is not None and torch.equal(out.detach(), want)


@pytest.mark.parametrize("flags, matmul", [("avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16", True),
                                           ("avx2 avx512f", False), ("avx2", False)])
def test_context_attention_kernel_follows_the_cpu(monkeypatch, flags, matmul):
    """bf16 matrix products only where the CPU has bf16 instructions (elsewhere oneDNN emulates them, many
    times slower than SDPA); injected CPU flags, not the test machine's."""
    from core import cpu

    info = cpu.parse_cpuinfo(f"flags\t: {flags}\n")
    monkeypatch.setattr(cpu, "detect", lambda cpuinfo="/proc/cpuinfo": info)
    calls = []
    sdpa = nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    q, k, v = (torch.randn(1, 4, n, 8, dtype=torch.bfloat16) for n in (6, 10, 10))
    with torch.no_grad():
        context_attention(q, k, v)
    assert (not calls) == matmul
