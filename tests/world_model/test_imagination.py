
import pytest
import torch
from helpers import checkpoint_folder, engine_rollout, reference_rollout, tiny_contexts

from core import cpu as core_cpu
from world_model.imagination import Imaginer
from world_model.imagination_config import EngineSettings, ImaginationConfig
from world_model.imagination_steps import no_capture, pad_rows, padded_batch_size, row_chunks
from world_model.model import IVideoGPT
from world_model.sampling import draw_noise, sample_codes, symexp


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("imagination")
    return {name: IVideoGPT.from_pretrained(checkpoint_folder(root / name, tiny_checkpoint, folder))
            for name, folder in (("heads", "transformer_with_heads"), ("bare", "transformer"))}


@pytest.fixture(scope="module")
def contexts(tiny_checkpoint):
    return tiny_contexts(tiny_checkpoint)


# ------------------------------------------------------------------------------------- sampling
def test_sample_codes_draws_from_the_top_k_softmax():
    logits = torch.tensor([[2.0, 0.5, 1.0, -1.0, 1.5, 0.0]])
    rows = 40_000
    gen = torch.Generator().manual_seed(0)
    for top_k, temperature in ((3, 2.0), (None, 1.0)):
        width = 6 if top_k is None else top_k
        draws = sample_codes(logits.expand(rows, -1), draw_noise((rows, width), gen, torch.device("cpu")),
                             temperature, top_k)
        expected = torch.softmax(logits[0] / temperature, 0)
        if top_k is not None:
            expected = torch.where(logits[0] >= logits[0].topk(top_k).values[-1], expected, 0.0)
            expected = expected / expected.sum()
        frequencies = torch.bincount(draws, minlength=6).float() / rows
        assert (frequencies[expected == 0] == 0).all()
        torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)
    assert sample_codes(logits, None, 0.0, 3).item() == 0
    with pytest.raises(ValueError, match="noise"):
        sample_codes(logits, None, 1.0, 3)


def test_padding_and_chunking_helpers():
    assert row_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert row_chunks(4, 8) == row_chunks(4, None) == [slice(0, 4)]
    sizes = (1, 2, 4, 8)
    assert [padded_batch_size(b, sizes) for b in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]
    x = torch.arange(6).view(3, 2)
    assert pad_rows(x, 3) is x
    assert pad_rows(x, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]


# ---------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name,batch,horizon,per_call_cache", [
    ("heads", 1, 3, False),
    ("heads", 3, 2, False),
    ("heads", 4, 3, True),
    ("bare", 2, 3, False),
    ("bare", 3, 1, True),
])
def test_engine_samples_exactly_the_reference_tokens(models, contexts, name, batch, horizon, per_call_cache):
    """Same draws, same codes: the KV-cached engine against a re-read of the whole sequence per frame (or per
    token); its frames and rewards (read at each frame's last code, actions at the slots) match too."""
    model = models[name]
    context = contexts[0][:batch]
    actions = None if name == "bare" else contexts[1][:batch, :horizon]
    codes, raw, frames = engine_rollout(model.imaginer, context, actions, horizon, seed=7)
    ref_frames, ref_rewards, ref_codes = reference_rollout(
        model, context, actions, horizon, generator=torch.Generator().manual_seed(7), per_call_cache=per_call_cache)
    assert torch.equal(codes, ref_codes)
    assert len(codes.unique()) > 1  # really sampled, not a constant
    torch.testing.assert_close(frames, ref_frames, atol=1e-5, rtol=0)
    if name == "bare":
        assert raw is None and ref_rewards is None
    else:
        torch.testing.assert_close(symexp(raw), ref_rewards, atol=1e-5, rtol=1e-5)
    # step() is sample() then decode()
    model.reset(context, horizon=horizon, generator=torch.Generator().manual_seed(7))
    first_frame, first_reward = model.step(None if actions is None else actions[:, 0])
    assert torch.equal(first_frame, frames[:, 0])
    assert first_reward is None if raw is None else torch.equal(first_reward, symexp(raw[:, 0]))


def test_greedy_engine_equals_greedy_reference(models, contexts):
    model, (context, actions) = models["heads"], contexts
    codes, _, _ = engine_rollout(model.imaginer, context[:2], actions[:2], 2, seed=0, temperature=0.0)
    _, _, ref_codes = reference_rollout(model, context[:2], actions[:2], 2, temperature=0.0)
    assert torch.equal(codes, ref_codes)


# ---------------------------------------------------------------------------- static buffers
def test_static_path_pads_reuses_captures_and_clones(models, contexts):
    """The CUDA-graph path's bookkeeping, run on CPU with a capture that only counts."""
    model, (context, actions) = models["heads"], contexts
    captured = []

    def counting_capture(run):
        captured.append(run)
        return no_capture(run)

    imaginer = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout,
                        ImaginationConfig(graph_batch_sizes=(2, 4)), capture=counting_capture)
    codes, raw, frames = engine_rollout(imaginer, context[:3], actions[:3], 3, seed=3)
    assert len(captured) == 1 and imaginer._active.state.batch_size == 4
    plain, plain_raw, plain_frames = engine_rollout(model.imaginer, context[:3], actions[:3], 3, seed=3)
    assert torch.equal(codes, plain)
    torch.testing.assert_close(raw, plain_raw, atol=1e-6, rtol=0)
    torch.testing.assert_close(frames, plain_frames, atol=1e-6, rtol=0)

    # outputs are copies: later steps overwrite the static buffers, never what was returned
    imaginer.reset(context[:3], horizon=2, generator=torch.Generator().manual_seed(0))
    first, _ = imaginer.sample(actions[:3, 0])
    kept = first.clone()
    imaginer.sample(actions[:3, 1])
    assert torch.equal(first, kept) and not torch.equal(first, imaginer._active.state.codes[:3])
    assert len(captured) == 2  # horizon 2 needs a cache of another length

    # the same padded size and cache length reuse the captured step, other sizes get their own
    engine_rollout(imaginer, context[:4], actions[:4], 3, seed=3)
    assert len(captured) == 2
    engine_rollout(imaginer, context[:1], actions[:1], 3, seed=3)
    assert len(captured) == 3 and imaginer._active.state.batch_size == 2
    imaginer.release()
    with pytest.raises(RuntimeError, match="reset"):
        imaginer.sample(actions[:1, 0])


def test_a_batch_of_the_same_shape_reuses_the_cache_and_samples_as_a_fresh_engine(models, contexts):
    """The eager engine keeps the latest batch's buffers: the next batch of that shape writes over the old
    cache (its stale tail masked, never attended) and samples exactly what a fresh engine samples."""
    model, (context, actions) = models["heads"], contexts
    imaginer = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout)
    engine_rollout(imaginer, context[:3], actions[:3], 3, seed=1)  # fills the whole cache
    cache = imaginer._active.state.cache
    codes, raw, frames = engine_rollout(imaginer, context[1:4], actions[1:4], 3, seed=2)
    assert imaginer._active.state.cache is cache
    fresh = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout)
    want_codes, want_raw, want_frames = engine_rollout(fresh, context[1:4], actions[1:4], 3, seed=2)
    assert torch.equal(codes, want_codes) and torch.equal(raw, want_raw) and torch.equal(frames, want_frames)
    engine_rollout(imaginer, context[:2], actions[:2], 3, seed=1)  # another batch size: new buffers
    assert imaginer._active.state.cache is not cache
    imaginer.release()
    assert imaginer._eager is None


def test_the_engine_counts_imagined_transitions_and_its_seconds(models, contexts):
    model, (context, actions) = models["heads"], contexts
    imaginer = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout)
    assert (imaginer.imagined_transitions, imaginer.imagination_seconds, imaginer.transitions_per_s) == (0, 0.0, 0.0)
    imaginer.reset(context[:3], horizon=2)
    assert imaginer.imagined_transitions == 0 and imaginer.imagination_seconds > 0
    for t in range(2):
        imaginer.step(actions[:3, t])
    seconds = imaginer.imagination_seconds
    assert imaginer.imagined_transitions == 6
    assert imaginer.transitions_per_s == pytest.approx(6 / seconds)
    with pytest.raises(ValueError, match="horizon 2 reached"):
        imaginer.sample(actions[:3, 0])
    assert imaginer.imagined_transitions == 6  # a refused step imagines nothing
    imaginer.clear_counters()
    assert (imaginer.imagined_transitions, imaginer.imagination_seconds, imaginer.transitions_per_s) == (0, 0.0, 0.0)


@pytest.mark.parametrize("chunk_rows", [1, 2])
def test_chunked_reset_and_decoding_sample_as_the_whole_batch(models, contexts, chunk_rows):
    """cpu_chunk_rows splits the context encoding, the prefill and the frame decoding into row chunks (the
    last one shorter here): the same codes, and the same frames and rewards to float rounding."""
    model, (context, actions) = models["heads"], contexts
    whole = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout, ImaginationConfig(cpu_chunk_rows=None))
    chunked = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout,
                       ImaginationConfig(cpu_chunk_rows=chunk_rows))
    codes, raw, frames = engine_rollout(chunked, context[:3], actions[:3], 2, seed=4)
    assert len(chunked._active.contexts) == -(-3 // chunk_rows)
    want_codes, want_raw, want_frames = engine_rollout(whole, context[:3], actions[:3], 2, seed=4)
    assert len(whole._active.contexts) == 1
    assert torch.equal(codes, want_codes)
    torch.testing.assert_close(raw, want_raw, atol=1e-5, rtol=0)
    torch.testing.assert_close(frames, want_frames, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="3 rollouts"):
        chunked.decode(codes[:2, 0])


def test_compiled_token_step_has_no_graph_breaks(models, contexts):
    """fullgraph=True: tracing fails on a host sync or a Python branch on a tensor value."""
    model, (context, actions) = models["heads"], contexts
    compiled = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout,
                        ImaginationConfig(compile=True, compile_backend="eager"))
    codes, raw, frames = engine_rollout(compiled, context[:2], actions[:2], 2, seed=5)
    plain, plain_raw, plain_frames = engine_rollout(model.imaginer, context[:2], actions[:2], 2, seed=5)
    assert torch.equal(codes, plain) and torch.equal(raw, plain_raw) and torch.equal(frames, plain_frames)


@pytest.mark.parametrize("capture", [no_capture, None], ids=["static buffers", "eager"])
def test_compiler_failure_falls_back_to_eager_with_a_warning(models, contexts, capture):
    model, (context, actions) = models["heads"], contexts

    def broken_backend(graph, example_inputs):
        raise RuntimeError("this backend cannot compile")

    imaginer = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout,
                        ImaginationConfig(compile=True, compile_decoder=True, compile_backend=broken_backend),
                        capture=capture)
    with pytest.warns(RuntimeWarning, match="cannot compile") as caught:
        codes, raw, frames = engine_rollout(imaginer, context[:2], actions[:2], 1, seed=2)
    messages = " ".join(str(warning.message) for warning in caught)
    assert "token step" in messages and "frame decoder" in messages
    plain, plain_raw, plain_frames = engine_rollout(model.imaginer, context[:2], actions[:2], 1, seed=2)
    assert torch.equal(codes, plain) and torch.equal(raw, plain_raw) and torch.equal(frames, plain_frames)


def test_bfloat16_replica_is_refreshed_at_every_reset(models, contexts):
    model, (context, actions) = models["heads"], contexts
    imaginer = Imaginer(model.transformer, model.tokenizer, model.imaginer.layout,
                        ImaginationConfig(precision="bfloat16"))
    _, raw, frames = engine_rollout(imaginer, context[:2], actions[:2], 1, seed=0)
    assert frames.dtype == raw.dtype == torch.float32 and 0 <= frames.min() and frames.max() <= 1
    replica = imaginer.decoder_model(torch.bfloat16)
    head = model.transformer.llm.lm_head.weight
    assert replica is not model.transformer and replica.llm.lm_head.weight.dtype == torch.bfloat16
    torch.testing.assert_close(replica.llm.lm_head.weight.float(), head, atol=0.01, rtol=0.01)
    with torch.no_grad():
        head.add_(1.0)  # as an optimizer step between rollout batches would
    try:
        imaginer.reset(context[:2], horizon=1)
        assert imaginer.decoder_model(torch.bfloat16) is replica  # refreshed in place, graphs stay valid
        torch.testing.assert_close(replica.llm.lm_head.weight.float(), head, atol=0.02, rtol=0.01)
    finally:
        with torch.no_grad():
            head.sub_(1.0)
    assert head.dtype == torch.float32


def test_bfloat16_frame_decoder_decodes_the_same_codes_closely(models, contexts):
    """decoder_precision=bfloat16 (the default on CPUs with bf16 instructions) changes pixels, not tokens."""
    model, (context, actions) = models["heads"], contexts
    layout = model.imaginer.layout
    fp32 = Imaginer(model.transformer, model.tokenizer, layout, ImaginationConfig(decoder_precision="float32"))
    bf16 = Imaginer(model.transformer, model.tokenizer, layout, ImaginationConfig(decoder_precision="bfloat16"))
    codes, _, frames = engine_rollout(fp32, context[:2], actions[:2], 2, seed=0)
    bf16.reset(context[:2], horizon=2)
    decoded = torch.stack([bf16.decode(codes[:, t]) for t in range(2)], 1)
    assert decoded.dtype == torch.float32 and 0 <= decoded.min() and decoded.max() <= 1
    assert (decoded - frames).abs().mean() < 0.02
    assert not torch.equal(decoded, frames)  # it did run in bf16


def test_bfloat16_prefill_fills_a_float32_cache_closely(models, contexts):
    """prefill_precision=bfloat16 (the default on CPUs with bf16 instructions) runs the context prefill under
    autocast; the cache and the decode steps stay float32."""
    model, (context, _) = models["heads"], contexts
    layout = model.imaginer.layout
    caches = {}
    for precision in ("float32", "bfloat16"):
        imaginer = Imaginer(model.transformer, model.tokenizer, layout,
                            ImaginationConfig(prefill_precision=precision, decoder_precision="float32"))
        imaginer.reset(context[:2], horizon=1)
        caches[precision] = imaginer._require_active().state.cache
    fp32, bf16 = caches["float32"], caches["bfloat16"]
    assert bf16.k.dtype == torch.float32
    prefix = layout.prefix_length
    torch.testing.assert_close(bf16.k[..., :prefix, :], fp32.k[..., :prefix, :], atol=0.05, rtol=0.05)
    torch.testing.assert_close(bf16.v[..., :prefix, :], fp32.v[..., :prefix, :], atol=0.05, rtol=0.05)
    assert not torch.equal(bf16.k, fp32.k)  # it did run in bf16


# ----------------------------------------------------------------------------------- settings
def inject_cpu(monkeypatch, flags: str) -> None:
    """Make the one CPU detection (``core.cpu.detect``) answer a CPU with these flags."""
    info = core_cpu.parse_cpuinfo(f"model name\t: injected\nflags\t: {flags}\n")
    monkeypatch.setattr(core_cpu, "detect", lambda cpuinfo="/proc/cpuinfo": info)
    monkeypatch.delenv("IVG_CPU_BF16", raising=False)


@pytest.mark.parametrize("flags, bf16_cpu", [("avx avx2 fma", False), ("avx2 avx512f avx512bw", False),
                                              ("avx2 avx512f avx512_bf16", True), ("avx2 amx_tile amx_bf16", True)])
def test_auto_settings_follow_the_cpu(monkeypatch, flags, bf16_cpu):
    """Per kind of CPU (injected flags): bf16 tokenizer and prefill and 8-row chunks on a bf16 CPU; float32
    and the whole batch at once elsewhere (float32 decoding was slower in chunks there); token steps float32."""
    inject_cpu(monkeypatch, flags)
    f32, bf16 = torch.float32, torch.bfloat16
    want = EngineSettings(False, False, f32, bf16, bf16, 8) if bf16_cpu else EngineSettings(False, False, f32, f32,
                                                                                            f32, None)
    assert ImaginationConfig().resolve(torch.device("cpu")) == want
    assert ImaginationConfig(cpu_chunk_rows=4).resolve(torch.device("cpu")).chunk_rows == 4  # explicit wins
    assert ImaginationConfig(compile=True).resolve(torch.device("cpu")).dtype == (bf16 if bf16_cpu else f32)


def test_config_resolution_and_errors(models, contexts, monkeypatch):
    cpu = torch.device("cpu")
    f32, bf16 = torch.float32, torch.bfloat16
    inject_cpu(monkeypatch, "avx2 avx512f avx512_bf16")
    monkeypatch.setenv("IVG_CPU_BF16", "0")
    assert ImaginationConfig().resolve(cpu) == EngineSettings(False, False, f32, f32, f32, 8)
    monkeypatch.setenv("IVG_CPU_BF16", "1")  # a CPU with bf16 instructions: bf16 convolutions and prefill
    assert ImaginationConfig().resolve(cpu) == EngineSettings(False, False, f32, bf16, bf16, 8)
    assert ImaginationConfig(cpu_chunk_rows=None).resolve(cpu).chunk_rows is None
    assert ImaginationConfig(precision="float32").resolve(torch.device("cuda")).chunk_rows is None  # GPUs: never
    assert ImaginationConfig(decoder_precision="float32").resolve(cpu).decoder_dtype == f32
    assert ImaginationConfig(compile=True).resolve(cpu).dtype == bf16  # compiled token steps: bf16 where native
    assert ImaginationConfig(compile=True, precision="float32").resolve(cpu).dtype == f32
    assert ImaginationConfig(prefill_precision="float32").resolve(cpu).prefill_dtype == f32
    monkeypatch.setenv("IVG_CPU_BF16", "0")
    assert ImaginationConfig(compile=True).resolve(cpu).dtype == f32
    assert ImaginationConfig(compile=True).resolve(cpu).compile is True
    assert ImaginationConfig(compile=True).resolve(cpu).compile_decoder is False  # eager is as fast on a CPU
    assert ImaginationConfig(compile_decoder=True).resolve(cpu).compile_decoder is True
    cuda = ImaginationConfig(precision="float32").resolve(torch.device("cuda"))
    assert cuda.compile and cuda.compile_decoder
    assert not ImaginationConfig(compile=False, precision="float32").resolve(torch.device("cuda")).compile_decoder
    with pytest.raises(ValueError, match="cuda_graphs=True needs"):
        ImaginationConfig(cuda_graphs=True).resolve(torch.device("cpu"))
    with pytest.raises(ValueError, match="compile"):
        ImaginationConfig(compile="yes")
    with pytest.raises(ValueError, match="compile_decoder"):
        ImaginationConfig(compile_decoder="no")
    with pytest.raises(ValueError, match="precision"):
        ImaginationConfig(precision="float16")
    with pytest.raises(ValueError, match="decoder_precision"):
        ImaginationConfig(decoder_precision="half")
    with pytest.raises(ValueError, match="prefill_precision"):
        ImaginationConfig(prefill_precision="fp8")
    for rows in (0, 2.5, True, "all"):
        with pytest.raises(ValueError, match="cpu_chunk_rows"):
            ImaginationConfig(cpu_chunk_rows=rows)
    model, (context, actions) = models["heads"], contexts
    with pytest.raises(ValueError, match="top_k"):
        model.reset(context[:1], horizon=1, top_k=0)
    with pytest.raises(ValueError, match="batch 0"):
        model.reset(context[:0], horizon=1)
    model.reset(context[:1], horizon=1)
    model.step(actions[:1, 0])
    with pytest.raises(ValueError, match="horizon 1 reached"):
        model.step(actions[:1, 1])
