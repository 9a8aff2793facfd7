import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import decode_step, prefill
from safetensors.torch import load_file

from world_model.layout import TokenLayout
from world_model.llama import TransformerConfig, single_query_attention
from world_model.transformer import KVCache, WorldModelTransformer, num_parameters


@pytest.fixture(scope="module")
def fixture(tiny_checkpoint):
    data = np.load(tiny_checkpoint / "fixture.npz")
    return {k: torch.from_numpy(data[k]) for k in ("tokens", "labels", "actions", "logits", "last_hidden",
                                                   "reward_pred", "loss")}


@pytest.fixture(scope="module")
def tiny_heads(tiny_checkpoint):
    cfg = TransformerConfig.from_json_dict(json.loads((tiny_checkpoint / "transformer_with_heads" /
                                                       "config.json").read_text()))
    model = WorldModelTransformer(cfg, action_dim=4, reward_head=True)
    model.load_state_dict(load_file(tiny_checkpoint / "transformer_with_heads" / "model.safetensors"), strict=True)
    return model.eval()


def fixture_layout(cfg: TransformerConfig) -> TokenLayout:
    codes = (cfg.vocab_size - 2) // 2  # the tiny checkpoint has equal codebooks
    return TokenLayout(2, 6, 256, 16, codes, codes)


def test_matches_official_outputs(tiny_heads, fixture):
    layout = fixture_layout(tiny_heads.config)
    with torch.no_grad():
        out = tiny_heads(fixture["tokens"], layout.slot_actions(fixture["actions"]), layout.slot_positions)
        rewards = tiny_heads.rewards(out.hidden[:, layout.reward_positions])
    torch.testing.assert_close(out.logits, fixture["logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.hidden, fixture["last_hidden"], atol=1e-5, rtol=0)
    torch.testing.assert_close(rewards, fixture["reward_pred"][..., 0], atol=1e-5, rtol=0)
    loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), fixture["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, fixture["loss"], rtol=1e-5, atol=0)


def test_bare_llama_weights_load(tiny_checkpoint, tiny_heads, fixture):
    cfg = TransformerConfig.from_json_dict(json.loads((tiny_checkpoint / "transformer" / "config.json").read_text()))
    bare = WorldModelTransformer(cfg)
    bare.llm.load_state_dict(load_file(tiny_checkpoint / "transformer" / "model.safetensors"), strict=True)
    bare.eval()
    tokens = fixture["tokens"]
    with torch.no_grad():
        ref = tiny_heads.llm.model.embed_tokens.weight
        assert torch.equal(bare.llm.model.embed_tokens.weight, ref)
        logits = bare(tokens).logits
        # the only difference to the fine-tuned checkpoint is the action added at the slots
        layout = fixture_layout(cfg)
        first_slot = int(layout.slot_positions[0])
        torch.testing.assert_close(logits[:, :first_slot], fixture["logits"][:, :first_slot], atol=1e-5, rtol=0)


def test_config_roundtrip_keeps_extra_keys_and_forces_float32(tiny_checkpoint):
    raw = json.loads((tiny_checkpoint / "transformer" / "config.json").read_text())
    raw["torch_dtype"] = "float16"
    cfg = TransformerConfig.from_json_dict(raw)
    out = cfg.to_json_dict()
    assert out["torch_dtype"] == "float32" and out["bos_token_id"] == raw["bos_token_id"]
    assert TransformerConfig.from_json_dict(out) == cfg
    assert WorldModelTransformer(cfg).llm.lm_head.weight.dtype == torch.float32
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        TransformerConfig.from_json_dict({**raw, "tie_word_embeddings": True})


def small_config(**overrides) -> TransformerConfig:
    base = {"vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 48, "max_position_embeddings": 64}
    return TransformerConfig(**{**base, **overrides})


def randomised(model: WorldModelTransformer, seed: int = 0) -> WorldModelTransformer:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("prefix", [1, 7, 20])
def test_kv_cached_decoding_equals_full_forward(kv_heads, prefix):
    torch.manual_seed(0)
    model = randomised(WorldModelTransformer(small_config(num_key_value_heads=kv_heads), action_dim=3,
                                             reward_head=True))
    batch, length = 3, 30
    ids = torch.randint(0, 40, (batch, length))
    slots = torch.tensor([p for p in (prefix - 1, prefix + 4, prefix + 11) if 0 <= p < length])
    actions = torch.randn(batch, len(slots), 3)
    with torch.no_grad():
        full = model(ids, actions, slots)
        cache = model.new_cache(batch, max_len=length + 5)  # longer than used: masked tail must not leak in
        cache.k.normal_(), cache.v.normal_()
        in_prefix = slots < prefix
        logits, hidden = prefill(model, ids[:, :prefix], cache, actions[:, in_prefix], slots[in_prefix])
        torch.testing.assert_close(logits, full.logits[:, prefix - 1], atol=1e-5, rtol=0)
        pos = torch.tensor(prefix)
        for t in range(prefix, length):
            slot = (slots == t).nonzero()
            action = actions[:, int(slot)] if len(slot) else None
            logits, hidden = decode_step(model, ids[:, t:t + 1], pos, cache, action)
            torch.testing.assert_close(logits, full.logits[:, t], atol=1e-5, rtol=0)
            torch.testing.assert_close(hidden, full.hidden[:, t], atol=1e-5, rtol=0)
            pos += 1


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_fill_cache_stores_what_prefill_stores(kv_heads):
    torch.manual_seed(0)
    model = randomised(WorldModelTransformer(small_config(num_key_value_heads=kv_heads), action_dim=3))
    ids, slots = torch.randint(0, 40, (3, 12)), torch.tensor([4, 9])
    actions = torch.randn(3, 2, 3)
    with torch.no_grad():
        prefilled, filled = model.new_cache(3, max_len=15), model.new_cache(3, max_len=15)
        prefill(model, ids, prefilled, actions, slots)
        assert model.fill_cache(ids, filled, actions, slots) is None
    torch.testing.assert_close(filled.k, prefilled.k, atol=0, rtol=0)
    torch.testing.assert_close(filled.v, prefilled.v, atol=0, rtol=0)
    assert filled.k[:, :, :, 12:].abs().sum() == 0  # nothing past the prefix


def test_fill_cache_and_a_cached_forward_refuse_a_prefix_that_does_not_fit():
    model = WorldModelTransformer(small_config())
    with pytest.raises(ValueError, match="does not fit a KV cache"):
        model.fill_cache(torch.zeros(2, 9, dtype=torch.long), model.new_cache(2, max_len=8))
    with pytest.raises(ValueError, match="does not fit a KV cache"):
        model(torch.zeros(2, 9, dtype=torch.long), cache=model.new_cache(2, max_len=8))
    with pytest.raises(ValueError, match="does not fit a KV cache"):
        model(torch.zeros(3, 4, dtype=torch.long), cache=model.new_cache(2, max_len=8))


def test_actions_only_affect_positions_from_their_slot():
    torch.manual_seed(0)
    model = randomised(WorldModelTransformer(small_config(), action_dim=2))
    ids = torch.randint(0, 40, (2, 25))
    slots = torch.tensor([5, 12, 19])
    actions = torch.randn(2, 3, 2)
    with torch.no_grad():
        base = model(ids, actions, slots).logits
        for index, slot in enumerate(slots.tolist()):
            changed = actions.clone()
            changed[:, index] += 1.0
            diff = (model(ids, changed, slots).logits - base).abs().amax(dim=(0, 2))
            assert diff[:slot].max() == 0
            assert (diff[slot:] > 1e-6).all()


def test_action_free_model_rejects_actions_and_action_map_starts_at_zero():
    model = WorldModelTransformer(small_config())
    with pytest.raises(ValueError, match="action-free"):
        model(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 1, 2), torch.tensor([2]))
    conditioned = WorldModelTransformer(small_config(), action_dim=2).eval()
    conditioned.load_state_dict(model.state_dict(), strict=False)
    ids = torch.randint(0, 40, (1, 9))
    with torch.no_grad():
        assert torch.equal(conditioned(ids, torch.randn(1, 2, 2), torch.tensor([3, 6])).logits, model.eval()(ids).logits)


def test_attention_dropout_only_in_training():
    model = randomised(WorldModelTransformer(small_config(attention_dropout=0.5)))
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        torch.manual_seed(1)
        assert not torch.allclose(model(ids).logits, model.eval()(ids).logits)


def test_cache_and_length_limits():
    cfg = small_config()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        KVCache(cfg, 1, cfg.max_position_embeddings + 1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        WorldModelTransformer(cfg)(torch.zeros(1, cfg.max_position_embeddings + 1, dtype=torch.long))


def test_param_groups_cover_every_parameter_once():
    model = WorldModelTransformer(small_config(), action_dim=2, reward_head=True)
    groups = model.param_groups(0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    no_decay = {id(p) for p in groups[1]["params"]}
    assert id(model.llm.model.embed_tokens.weight) in no_decay and id(model.llm.model.norm.weight) in no_decay
    assert id(model.action_linear.bias) in no_decay and id(model.llm.lm_head.weight) not in no_decay


def test_parameter_count_formula():
    cfg = small_config(num_key_value_heads=2)
    model = WorldModelTransformer(cfg)
    h, i, v, kv = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_key_value_heads * cfg.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    assert num_parameters(model) == 2 * v * h + cfg.num_hidden_layers * per_layer + h


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (4, 1)])
def test_single_query_attention_equals_sdpa(heads, kv_heads):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(3, heads, 1, 8, generator=gen)
    k, v = torch.randn(2, 3, kv_heads, 10, 8, generator=gen)
    mask = (torch.arange(10) <= 6).view(1, 1, 1, -1)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=heads != kv_heads)
    torch.testing.assert_close(single_query_attention(q, k, v, mask), expected, atol=1e-6, rtol=1e-5)
    # masked positions do not matter
    k2 = k.clone()
    k2[:, :, 7:] = 1e4
    torch.testing.assert_close(single_query_attention(q, k2, v, mask), expected, atol=1e-6, rtol=1e-5)
