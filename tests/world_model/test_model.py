import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import checkpoint_folder
from safetensors.torch import load_file, save_file

from world_model.model import IVideoGPT
from world_model.sampling import sample_top_k, symexp, symlog
from world_model.transformer import num_parameters

FIXTURE_KEYS = ("frames", "actions", "tokens", "labels", "recon", "logits", "loss", "reward_pred")


@pytest.fixture(scope="module")
def fixture(tiny_checkpoint):
    data = np.load(tiny_checkpoint / "fixture.npz")
    return {k: torch.from_numpy(data[k]) for k in FIXTURE_KEYS}


@pytest.fixture(scope="module")
def tiny_heads(tiny_checkpoint, tmp_path_factory):
    return IVideoGPT.from_pretrained(checkpoint_folder(tmp_path_factory.mktemp("heads") / "ckpt", tiny_checkpoint,
                                                       "transformer_with_heads"))


@pytest.fixture(scope="module")
def tiny_bare(tiny_checkpoint, tmp_path_factory):
    return IVideoGPT.from_pretrained(checkpoint_folder(tmp_path_factory.mktemp("bare") / "ckpt", tiny_checkpoint,
                                                       "transformer"))


# ------------------------------------------------------------------------------- published numerics
def test_tokenize_and_detokenize_match_fixture(tiny_heads, fixture):
    tokens, labels = tiny_heads.tokenize(fixture["frames"])
    assert tokens.dtype == labels.dtype == torch.int64
    assert torch.equal(tokens, fixture["tokens"]) and torch.equal(labels, fixture["labels"])
    torch.testing.assert_close(tiny_heads.detokenize(fixture["tokens"]), fixture["recon"], atol=1e-4, rtol=0)


def test_logits_and_rewards_match_fixture(tiny_heads, fixture):
    with torch.no_grad():
        logits, rewards = tiny_heads.logits(fixture["tokens"], fixture["actions"])
    torch.testing.assert_close(logits, fixture["logits"], atol=1e-5, rtol=0)
    assert tiny_heads.layout(4).reward_positions.tolist() == [529, 546, 563, 580]
    torch.testing.assert_close(rewards, fixture["reward_pred"][..., 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("alignment,first", [("official", 2), ("clean", 1)])
def test_transformer_loss(tiny_heads, fixture, alignment, first):
    rewards = torch.linspace(-3.0, 5.0, 12).view(2, 6)
    tiny_heads.reward_alignment = alignment
    try:
        total, parts = tiny_heads.transformer_loss(fixture["tokens"], fixture["actions"], rewards)
        # frames are tokenized on the way in and give the same loss
        from_frames, _ = tiny_heads.transformer_loss(fixture["frames"], fixture["actions"], rewards)
    finally:
        tiny_heads.reward_alignment = "clean"
    torch.testing.assert_close(parts["ce"], fixture["loss"], rtol=1e-5, atol=0)
    expected = F.mse_loss(fixture["reward_pred"][..., 0], symlog(rewards[:, first:first + 4]))
    torch.testing.assert_close(parts["reward"], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(total.detach(), parts["ce"] + parts["reward"])
    torch.testing.assert_close(from_frames, total)


def test_transformer_loss_backpropagates_into_every_transformer_parameter(tiny_heads, fixture):
    tiny_heads.transformer.zero_grad()
    total, _ = tiny_heads.transformer_loss(fixture["tokens"], fixture["actions"], torch.zeros(2, 6))
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_heads.transformer.parameters())
    tiny_heads.transformer.zero_grad(set_to_none=True)


def test_actions_change_logits_only_from_their_slot(tiny_heads, fixture):
    tokens, actions = fixture["tokens"], fixture["actions"]
    layout = tiny_heads.layout(4)
    with torch.no_grad():
        base, _ = tiny_heads.logits(tokens, actions)
        for frame in range(actions.shape[1]):
            changed = actions.clone()
            changed[:, frame] += 0.5
            diff = (tiny_heads.logits(tokens, changed)[0] - base).abs().amax(dim=(0, 2))
            slot = frame - layout.context_frames + 1  # action k leads to frame k + 1
            if 0 <= slot < layout.num_future_frames:
                first = int(layout.slot_positions[slot])
                assert diff[:first].max() == 0 and diff[first:].min() > 0
            else:  # actions before the last context frame and the segment's last action lead nowhere
                assert diff.max() == 0


# ------------------------------------------------------------------------------------ loading
def test_bare_transformer_folder_loads_action_free(tiny_bare, tiny_heads, fixture, tiny_checkpoint):
    assert tiny_bare.action_dim is None and not tiny_bare.has_reward_head
    with torch.no_grad():
        logits, rewards = tiny_bare.logits(fixture["tokens"])
    first_slot = int(tiny_bare.layout(4).slot_positions[0])
    assert rewards is None
    torch.testing.assert_close(logits[:, :first_slot], fixture["logits"][:, :first_slot], atol=1e-5, rtol=0)
    published = load_file(tiny_checkpoint / "transformer" / "model.safetensors")
    exported = tiny_bare.export_state_dicts()["transformer"]
    assert exported.keys() == published.keys()
    assert all(torch.equal(exported[k], published[k]) for k in published)


def test_bare_transformer_with_requested_heads_gets_fresh_ones(tiny_checkpoint, tmp_path, fixture, tiny_bare):
    model = IVideoGPT.from_pretrained(checkpoint_folder(tmp_path / "ckpt", tiny_checkpoint, "transformer"),
                                      action_dim=4, reward_head=True)
    assert model.action_dim == 4 and model.has_reward_head
    assert model.transformer.action_linear.weight.abs().sum() == 0  # zero-init: same logits as action-free
    with torch.no_grad():
        logits, rewards = model.logits(fixture["tokens"], fixture["actions"])
        torch.testing.assert_close(logits, tiny_bare.logits(fixture["tokens"])[0])
    assert rewards.shape == (2, 4)


def test_checkpoint_mismatches_are_named(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="action_linear takes 4 inputs"):
        IVideoGPT.from_pretrained(checkpoint_folder(tmp_path / "a", tiny_checkpoint, "transformer_with_heads"),
                                  action_dim=6)
    state = load_file(tiny_checkpoint / "transformer_with_heads" / "model.safetensors")
    del state["llm.model.norm.weight"]
    state["llm.model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    state["extra.weight"] = torch.zeros(1)
    broken = tmp_path / "b"
    (broken / "transformer").mkdir(parents=True)
    (broken / "tokenizer").symlink_to(tiny_checkpoint / "tokenizer", target_is_directory=True)
    (broken / "transformer" / "config.json").write_text(
        (tiny_checkpoint / "transformer_with_heads" / "config.json").read_text())
    save_file(state, broken / "transformer" / "model.safetensors")
    with pytest.raises(ValueError) as err:
        IVideoGPT.from_pretrained(broken)
    message = str(err.value)
    assert "\n" not in message
    assert "missing keys (1): llm.model.norm.weight" in message and "unexpected keys (1): extra.weight" in message
    assert "llm.model.layers.0.mlp.up_proj.weight: checkpoint (3, 3) vs model (128, 64)" in message
    with pytest.raises(FileNotFoundError, match="transformer"):
        IVideoGPT.from_pretrained(tmp_path / "nothing")


def test_save_pretrained_roundtrip_keeps_published_layout(tiny_heads, tiny_checkpoint, tmp_path, fixture):
    tiny_heads.save_pretrained(tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "transformer" / "model.safetensors")
    published = load_file(tiny_checkpoint / "transformer_with_heads" / "model.safetensors")
    assert saved.keys() == published.keys() and all(torch.equal(saved[k], published[k]) for k in saved)
    tok_saved = load_file(tmp_path / "saved" / "tokenizer" / "diffusion_pytorch_model.safetensors")
    assert tok_saved.keys() == load_file(tiny_checkpoint / "tokenizer" /
                                         "diffusion_pytorch_model.safetensors").keys()
    config = json.loads((tmp_path / "saved" / "transformer" / "config.json").read_text())
    assert config["vocab_size"] == 514 and config["torch_dtype"] == "float32"
    again = IVideoGPT.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(again.logits(fixture["tokens"], fixture["actions"])[0], fixture["logits"],
                                   atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ presets
def test_paper64_preset_has_published_keys_shapes_and_size(tiny_checkpoint):
    manifest = json.loads((tiny_checkpoint.parent / "manifest_paper64.json").read_text())
    with torch.device("meta"):
        heads = IVideoGPT.from_preset("paper64", action_dim=4, reward_head=True)
        bare = IVideoGPT.from_preset("paper64")
        medium = IVideoGPT.from_preset("medium")

    def shapes(state):
        return {k: list(v.shape) for k, v in state.items()}

    def expected(name):
        return {k: v["shape"] for k, v in manifest[name].items()}

    exported = heads.export_state_dicts()
    assert shapes(exported["tokenizer"]) == expected("tokenizer_state_dict")
    assert shapes(exported["transformer"]) == expected("head_model_with_action_state_dict")
    assert shapes(bare.export_state_dicts()["transformer"]) == expected("llama_for_causal_lm_state_dict")
    counts = manifest["param_counts"]
    assert num_parameters(bare.transformer) == counts["llama_for_causal_lm_total"]
    assert num_parameters(heads.transformer) == counts["head_model_with_action_total"]
    assert round(num_parameters(medium.transformer) / 1e6) == 436
    assert heads.layout(10).sequence_length == manifest["token_layout"]["sequence_length"]


def test_unknown_preset_and_vocab_mismatch(tiny_heads):
    with pytest.raises(ValueError, match="unknown world-model preset"):
        IVideoGPT.from_preset("huge")
    with torch.device("meta"):
        other = IVideoGPT.from_preset("cpu")
    with pytest.raises(ValueError, match="vocab_size"):
        IVideoGPT(tiny_heads.tokenizer, other.transformer)


# -------------------------------------------------------------------------------- imagination
def test_sample_top_k_restricts_and_is_reproducible():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]]).repeat(500, 1)
    draws = sample_top_k(logits, 1.0, 2, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 2}
    assert torch.equal(draws, sample_top_k(logits, 1.0, 2, torch.Generator().manual_seed(0)))
    assert (sample_top_k(logits, 0.0, None) == 1).all()


def rollout(model, context, actions, seed, **kwargs):
    model.reset(context, horizon=actions.shape[1], generator=torch.Generator().manual_seed(seed), **kwargs)
    steps = [model.step(actions[:, t]) for t in range(actions.shape[1])]
    return torch.stack([f for f, _ in steps], 1), torch.stack([r for _, r in steps], 1)


def test_reset_step_shapes_and_determinism(tiny_heads, fixture):
    context, actions = fixture["frames"][:, :2], fixture["actions"]
    tiny_heads.train()
    frames, rewards = rollout(tiny_heads, context, actions, seed=0)
    assert tiny_heads.training and tiny_heads.transformer.training  # imagination restores the mode
    tiny_heads.eval()
    assert frames.shape == (2, 6, 3, 64, 64) and rewards.shape == (2, 6)
    assert frames.min() >= 0 and frames.max() <= 1
    again = rollout(tiny_heads, context, actions, seed=0)
    assert torch.equal(frames, again[0]) and torch.equal(rewards, again[1])
    other = rollout(tiny_heads, context, actions, seed=1)
    assert not torch.equal(frames, other[0])
    with pytest.raises(ValueError, match="horizon"):
        tiny_heads.step(actions[:, 0])
    with pytest.raises(ValueError, match=r"actions of shape \(2, 4\)"):
        tiny_heads.reset(context, horizon=2)
        tiny_heads.step(None)


def test_greedy_imagination_equals_full_forward_decoding(tiny_heads, fixture):
    """The KV-cached rollout samples exactly what a full re-read of the sequence would, and reads the
    reward at the same place as training."""
    model, horizon = tiny_heads, 3
    context, step_actions = fixture["frames"][:, :2], fixture["actions"][:, :horizon]
    frames, rewards = rollout(model, context, step_actions, seed=0, temperature=0.0)

    layout = model.layout(horizon)
    codes = model.tokenizer.encode_context(context)
    ids = layout.prefix(codes)
    segment_actions = torch.zeros(2, layout.segment_length, 4)
    segment_actions[:, layout.context_frames - 1:-1] = step_actions
    low, high = layout.dynamics_offset, layout.scf_id
    with torch.no_grad():
        for frame in range(horizon):
            ids = torch.cat([ids, torch.full((2, 1), layout.sdf_id)], dim=1)
            for _ in range(layout.tokens_per_future_frame):
                partial = layout.with_future_frames(frame + 1)
                pad = partial.sequence_length - ids.shape[1]
                padded = torch.cat([ids, torch.full((2, pad), low)], dim=1)
                actions = segment_actions[:, :partial.segment_length]
                logits, _ = model.logits(padded, actions)
                next_code = logits[:, ids.shape[1] - 1, low:high].argmax(-1) + low
                ids = torch.cat([ids, next_code[:, None]], dim=1)
        _, reference_rewards = model.logits(ids, segment_actions)
    expected = model.detokenize(ids)[:, layout.context_frames:].clamp(0, 1)
    torch.testing.assert_close(frames, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(rewards, symexp(reference_rewards), atol=1e-5, rtol=1e-5)


def test_action_free_and_goal_conditioned_imagination(tiny_bare, fixture):
    frames = fixture["frames"]
    tiny_bare.reset(frames[:, :2], horizon=2, generator=torch.Generator().manual_seed(0))
    image, reward = tiny_bare.step()
    assert image.shape == (2, 3, 64, 64) and reward is None
    with pytest.raises(ValueError, match="action-free"):
        tiny_bare.step(torch.zeros(2, 4))
    goal = frames[:, -1]
    tiny_bare.reset(frames[:, 1:2], goal=goal, horizon=1, generator=torch.Generator().manual_seed(0))
    goal_image, _ = tiny_bare.step()
    # the goal is just the first context frame
    tiny_bare.reset(torch.stack([goal, frames[:, 1]], 1), horizon=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(goal_image, tiny_bare.step()[0])
    with pytest.raises(ValueError, match=r"\(B, 1, 3, H, W\) plus a goal"):
        tiny_bare.reset(frames[:, :2], goal=goal)
    with pytest.raises(ValueError, match="horizon"):
        tiny_bare.reset(frames[:, :2], horizon=tiny_bare.imaginer.max_horizon + 1)


def test_input_errors(tiny_heads, tiny_bare, fixture):
    tokens, actions = fixture["tokens"], fixture["actions"]
    with pytest.raises(ValueError, match="action-conditioned"):
        tiny_heads.logits(tokens)
    with pytest.raises(ValueError, match="action-free"):
        tiny_bare.logits(tokens, actions)
    with pytest.raises(ValueError, match="rewards"):
        tiny_heads.transformer_loss(tokens, actions)
    with pytest.raises(ValueError, match="does not fit"):
        tiny_heads.logits(tokens[:, :-1], actions)
    with pytest.raises(RuntimeError, match="reset"):
        IVideoGPT(tiny_bare.tokenizer, tiny_bare.transformer).step()


def test_tokenizer_loss_delegates(tiny_heads, fixture):
    total, parts = tiny_heads.tokenizer_loss(fixture["frames"][:1, :4])
    assert total.requires_grad and {"recon_l1", "commit"} <= parts.keys()


@pytest.mark.slow
def test_cpu_preset_trains_and_imagines():
    torch.manual_seed(0)
    model = IVideoGPT.from_preset("cpu", action_dim=4, reward_head=True)
    frames, actions, rewards = torch.rand(2, 4, 3, 64, 64), torch.rand(2, 4, 4), torch.rand(2, 4)
    optimizer = torch.optim.AdamW(model.transformer.param_groups(0.01), lr=1e-3)
    tokens, _ = model.tokenize(frames)
    losses = []
    for _ in range(3):
        total, parts = model.transformer_loss(tokens, actions, rewards)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(parts["ce"].item())
    assert losses[-1] < losses[0]
    model.reset(frames[:, :2], horizon=2)
    image, reward = model.step(actions[:, 0])
    assert image.shape == (2, 3, 64, 64) and reward.shape == (2,)
