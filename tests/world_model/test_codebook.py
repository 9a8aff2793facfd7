"""Codebook health (world_model.codebook): use, perplexity and dead codes from known codes; the remedies
(codes from data, dead-code restarts, a codebook learning-rate scale) and their wiring into the tokenizer
update."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from core.batch import SegmentBatch
from world_model.build import build_model
from world_model.codebook import CodebookMonitor, CodebookOptions, CodebookUsage, set_codes
from world_model.training import OptimConfig, WorldModelTrainer
from world_model.vq import VectorQuantizer

TOKENIZER = {"block_out_channels": [16, 32], "norm_num_groups": 8, "latent_channels": 16,
             "num_vq_embeddings": 64, "num_dyn_embeddings": 64, "patch_size": 2}
SIZE = 16


def small_model():
    return build_model("cpu", image_size=SIZE, tokenizer_overrides=TOKENIZER,
                       transformer_overrides={"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128})


def frames_batch(seed: int = 0, b: int = 2, t: int = 4) -> SegmentBatch:
    g = torch.Generator().manual_seed(seed)
    return SegmentBatch(torch.randint(0, 256, (b, t, 3, SIZE, SIZE), dtype=torch.uint8, generator=g))


def values(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: v.item() for k, v in stats.items()}


def test_usage_perplexity_and_dead_codes_of_known_codes():
    usage = CodebookUsage(num_codes=4, window=2)
    usage.record(torch.tensor([[0, 0], [1, 1]]))  # codes 0 and 1 equally often
    assert values(usage.stats()) == pytest.approx({"codes_used": 0.5, "perplexity": 2.0, "dead_codes": 0.0})
    usage.record(torch.tensor([0, 0, 0, 0]))  # window: code 0 six times, code 1 twice
    p = torch.tensor([0.75, 0.25])
    assert values(usage.stats()) == pytest.approx(
        {"codes_used": 0.5, "perplexity": math.exp(-(p * p.log()).sum().item()), "dead_codes": 2.0})
    assert usage.dead().tolist() == [False, False, True, True]  # 2 and 3: never used in a full window
    usage.record(torch.tensor([0, 0, 0, 0]))  # the first update leaves the window: only code 0 remains
    assert values(usage.stats()) == pytest.approx({"codes_used": 0.25, "perplexity": 1.0, "dead_codes": 3.0})
    usage.record(torch.arange(4))
    assert values(usage.stats())["dead_codes"] == 0.0 and values(usage.stats())["codes_used"] == 1.0
    with pytest.raises(ValueError, match="window"):
        CodebookUsage(4, window=0)


def test_a_uniform_codebook_has_full_perplexity():
    usage = CodebookUsage(num_codes=8, window=3)
    for _ in range(3):
        usage.record(torch.arange(8).repeat(5))
    assert values(usage.stats()) == pytest.approx({"codes_used": 1.0, "perplexity": 8.0, "dead_codes": 0.0})


def test_restarting_codes_copies_latents_and_zeroes_their_moments():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=6, dim=3)
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=0.1)
    latents = torch.randn(2, 5, 3) * 4 + 10  # far from every initial code
    _, loss, _ = quantizer(latents)
    loss.backward()
    optimizer.step()
    before = quantizer.embedding.weight.detach().clone()
    set_codes(quantizer, torch.tensor([1, 4]), latents, optimizer, torch.Generator().manual_seed(0))
    weight = quantizer.embedding.weight.detach()
    for code in (1, 4):  # each restarted code is a latent plus a little noise
        nearest = (latents.reshape(-1, 3) - weight[code]).norm(dim=1).min()
        assert nearest < 0.1 * latents.std()
    assert torch.equal(weight[[0, 2, 3, 5]], before[[0, 2, 3, 5]])
    state = optimizer.state[quantizer.embedding.weight]
    assert state["exp_avg"][[1, 4]].abs().sum() == 0 and state["exp_avg_sq"][[1, 4]].abs().sum() == 0
    assert state["exp_avg_sq"][[0, 2, 3, 5]].abs().sum() > 0
    assert (quantizer.nearest(weight[[1, 4]]) == torch.tensor([1, 4])).all()


def test_monitor_restarts_dead_codes_and_gives_them_a_window():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=8, dim=2)
    monitor = CodebookMonitor({"q": quantizer}, window=2, restart_dead=True)
    latents = torch.randn(16, 2) + 5
    dead, restarted = [], []
    for _ in range(3):
        quantizer(latents)
        dead.append(values(monitor())["q_dead_codes"])
        restarted.append(monitor.restarted["q"])
    # update 0: no full window yet; update 1: the 7 never-picked codes are dead (reported, then restarted);
    # update 2: the restarted codes have a fresh window
    assert dead == [0.0, 7.0, 0.0] and restarted == [0, 7, 7]
    assert monitor.usage["q"].dead().sum() == 0
    assert quantizer.last_indices is None and quantizer.last_latents is None  # consumed
    used_after = quantizer(latents)[2].unique().numel()
    assert used_after > 1  # the restarted codes sit among the latents and get picked


def test_codebook_options_are_checked():
    with pytest.raises(ValueError, match="init"):
        CodebookOptions(init="kmeans")
    with pytest.raises(ValueError, match="lr_scale"):
        OptimConfig(codebook_lr_scale=0.0)


def test_tokenizer_update_logs_codebook_health_and_leaves_codebooks_alone_by_default():
    torch.manual_seed(0)
    model = small_model()
    trainer = WorldModelTrainer(model, OptimConfig(mixed_precision=False, codebook_window=1))
    metrics = trainer.update_tokenizer(frames_batch())
    for book, tokens in (("context", 2 * 2 * 64), ("dynamics", 2 * 2 * 16)):
        used = metrics[f"tokenizer/{book}_codes_used"]
        assert 0 < used <= min(tokens, 64) / 64
        assert 1.0 <= metrics[f"tokenizer/{book}_perplexity"] <= used * 64 + 1e-4
        assert metrics[f"tokenizer/{book}_dead_codes"] == pytest.approx(64 * (1 - used))  # window of 1
    assert not trainer.parts["tokenizer"].after_step.restart_dead
    assert sum(trainer.parts["tokenizer"].after_step.restarted.values()) == 0


def test_codebooks_from_data_and_their_own_learning_rate():
    torch.manual_seed(0)
    model = small_model()
    trainer = WorldModelTrainer(model, OptimConfig(tokenizer_lr=1e-3, mixed_precision=False, codebook_init="data",
                                                   codebook_lr_scale=10.0))
    groups = trainer.parts["tokenizer"].optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2])
    codebook = model.tokenizer.quantize.embedding.weight
    assert any(p is codebook for p in groups[1]["params"]) and not any(p is codebook for p in groups[0]["params"])
    initial_spread = codebook.detach().abs().max().item()  # U(-1/64, 1/64)
    trainer.update_tokenizer(frames_batch())
    assert codebook.detach().std().item() > 10 * initial_spread  # set from the latents
    assert trainer.parts["tokenizer"].after_step.restarted == {"context": 64, "dynamics": 64}
    second = trainer.update_tokenizer(frames_batch(1))  # first batch only
    assert trainer.parts["tokenizer"].after_step.restarted == {"context": 64, "dynamics": 64}
    assert second["tokenizer/context_codes_used"] > 0
    trainer.parts["tokenizer"].reset_learning_rate(2e-3)  # the scale survives a resumed run's rate
    assert [g["lr"] for g in groups] == pytest.approx([2e-3, 2e-2])


def test_a_resumed_trainer_never_replaces_its_codebooks_from_data():
    torch.manual_seed(0)
    model = small_model()
    cfg = OptimConfig(mixed_precision=False, codebook_init="data")
    first = WorldModelTrainer(model, cfg)
    first.update_tokenizer(frames_batch())
    resumed = WorldModelTrainer(model, cfg)
    assert resumed.parts["tokenizer"].after_step.init_pending
    state = first.state_dict()
    resumed.load_state_dict(state)
    assert not resumed.parts["tokenizer"].after_step.init_pending
    older = WorldModelTrainer(model, cfg)  # a checkpoint written before the windows were saved
    older.load_state_dict({k: v for k, v in state.items() if k != "tokenizer_codebooks"})
    assert not older.parts["tokenizer"].after_step.init_pending
    codebook = model.tokenizer.quantize.embedding.weight.detach().clone()
    resumed.update_tokenizer(frames_batch(1))
    assert resumed.parts["tokenizer"].after_step.restarted == {"context": 64, "dynamics": 64}  # restored, no more
    assert (model.tokenizer.quantize.embedding.weight.detach() - codebook).abs().max() < 0.01  # one Adam step


def test_the_codebook_windows_resume_exactly():
    """A trainer restored from a state dict restarts the same codes with the same latents as the original."""
    torch.manual_seed(0)
    cfg = OptimConfig(mixed_precision=False, codebook_window=2, restart_dead_codes=True, codebook_init="data")
    model = small_model()
    original = WorldModelTrainer(model, cfg)
    for seed in range(3):
        original.update_tokenizer(frames_batch(seed))
    twin = copy.deepcopy(model)
    resumed = WorldModelTrainer(twin, cfg)
    resumed.load_state_dict(copy.deepcopy(original.state_dict()))
    a, b = original.update_tokenizer(frames_batch(7)), resumed.update_tokenizer(frames_batch(7))
    assert a == b and a["tokenizer/context_dead_codes"] > 0  # restarts happened in this update
    assert original.parts["tokenizer"].after_step.restarted == resumed.parts["tokenizer"].after_step.restarted
    assert torch.equal(model.tokenizer.quantize.embedding.weight, twin.tokenizer.quantize.embedding.weight)
