import numpy as np
import pytest
import torch

from world_model.layout import IGNORE_INDEX, TokenLayout


def make(t0=2, t=6, n_ctx=256, n_dyn=16, c=256, d=256) -> TokenLayout:
    return TokenLayout(t0, t, n_ctx, n_dyn, c, d)


@pytest.mark.parametrize("t0,t,n_ctx,n_dyn,expected", [
    (2, 12, 256, 16, 683),   # DESIGN example
    (2, 6, 256, 16, 581),    # tiny fixture
    (1, 12, 256, 16, 443),   # one context frame (manifest ctx1)
    (3, 5, 64, 4, 3 * 65 - 1 + 2 * 5),
    (2, 2, 16, 4, 33),       # no future frames: the prefix alone
])
def test_sequence_length(t0, t, n_ctx, n_dyn, expected):
    layout = make(t0, t, n_ctx, n_dyn)
    assert layout.sequence_length == expected
    assert layout.prefix_length == (n_ctx + 1) * t0 - 1


def test_published_positions():
    layout = make(2, 12, 256, 16, 8192, 8192)
    assert layout.vocab_size == 16386
    assert (layout.scf_id, layout.sdf_id, layout.dynamics_offset) == (16384, 16385, 8192)
    assert layout.scf_positions.tolist() == [256]
    assert layout.slot_positions.tolist() == [513, 530, 547, 564, 581, 598, 615, 632, 649, 666]
    assert layout.reward_positions.tolist() == [529, 546, 563, 580, 597, 614, 631, 648, 665, 682]
    assert layout.first_target_position == 514
    assert int(layout.label_mask.sum()) == 169
    one = make(1, 12, 256, 16, 8192, 8192)
    assert one.scf_positions.tolist() == [] and one.slot_positions[0] == 256 and one.first_target_position == 257


def test_positions_cover_sequence_exactly():
    layout = make(3, 7, 10, 3, 50, 40)
    everything = torch.cat([layout.scf_positions, layout.context_positions.flatten(), layout.slot_positions,
                            layout.future_positions.flatten()])
    assert sorted(everything.tolist()) == list(range(layout.sequence_length))
    assert torch.equal(layout.reward_positions, layout.future_positions[:, -1])


def test_assemble_split_roundtrip_and_ids():
    layout = make(2, 5, 6, 3, 11, 7)
    gen = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, 11, (4, 2, 6), generator=gen)
    dyn = torch.randint(0, 7, (4, 3, 3), generator=gen)
    ids = layout.assemble(ctx, dyn)
    assert ids.shape == (4, layout.sequence_length) and ids.dtype == torch.int64
    assert (ids[:, layout.scf_positions] == layout.scf_id).all()
    assert (ids[:, layout.slot_positions] == layout.sdf_id).all()
    assert torch.equal(ids[:, layout.context_positions], ctx)
    assert torch.equal(ids[:, layout.future_positions], dyn + 11)
    ctx2, dyn2 = layout.split(ids)
    assert torch.equal(ctx2, ctx) and torch.equal(dyn2, dyn)
    assert torch.equal(layout.prefix(ctx), ids[:, :layout.prefix_length])


def test_split_rejects_out_of_codebook_ids():
    layout = make(2, 4, 4, 2, 5, 5)
    ids = layout.assemble(torch.zeros(1, 2, 4, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    ids[0, layout.future_positions[1, 0]] = 2  # a context id where a dynamics id belongs
    with pytest.raises(ValueError, match="future-frame"):
        layout.split(ids)


def test_labels_match_fixture(tiny_checkpoint):
    data = np.load(tiny_checkpoint / "fixture.npz")
    tokens = torch.from_numpy(data["tokens"])
    layout = make(2, 6, 256, 16, 256, 256)
    assert layout.sequence_length == tokens.shape[1]
    assert np.array_equal(layout.labels(tokens).numpy(), data["labels"])
    # and the fixture ids sit where the layout says they do
    assert (tokens[:, layout.slot_positions] == layout.sdf_id).all()
    assert (tokens[:, layout.scf_positions] == layout.scf_id).all()
    ctx, dyn = layout.split(tokens)
    assert torch.equal(layout.assemble(ctx, dyn), tokens)


def test_labels_mask_context_and_first_slot_only():
    layout = make(2, 4, 4, 2, 5, 5)
    ids = layout.assemble(torch.ones(1, 2, 4, dtype=torch.long), torch.ones(1, 2, 2, dtype=torch.long))
    labels = layout.labels(ids)[0]
    assert (labels[:layout.prefix_length + 1] == IGNORE_INDEX).all()
    assert labels[layout.slot_positions[1]] == layout.sdf_id  # later slots stay targets, as published
    assert (labels[layout.prefix_length + 1:] != IGNORE_INDEX).all()


def test_horizon_and_length_inference():
    layout = make(2, 6, 8, 3)
    long = layout.with_future_frames(10)
    assert long.num_future_frames == 10 and long.context_frames == 2
    assert layout.future_frames_in(long.sequence_length) == 10
    with pytest.raises(ValueError, match="does not fit"):
        layout.future_frames_in(long.sequence_length + 1)


def test_slot_actions_and_reward_targets():
    layout = make(2, 6, 8, 3)
    actions = torch.arange(6.0).view(1, 6, 1)
    assert layout.slot_actions(actions).flatten().tolist() == [1, 2, 3, 4]  # action k leads to frame k+1
    rewards = torch.arange(6.0).view(1, 6) * 10
    assert layout.reward_targets(rewards, "clean").flatten().tolist() == [10, 20, 30, 40]
    assert layout.reward_targets(rewards, "official").flatten().tolist() == [20, 30, 40, 50]
    with pytest.raises(ValueError, match="alignment"):
        layout.reward_targets(rewards, "other")
    with pytest.raises(ValueError, match=r"\(B, T=6, A\)"):
        layout.slot_actions(actions[:, 1:])


def test_bad_construction_and_shapes():
    with pytest.raises(ValueError, match="segment_length"):
        make(3, 2)
    with pytest.raises(ValueError, match="context_frames"):
        make(0, 2)
    layout = make(2, 4, 4, 2, 5, 5)
    with pytest.raises(ValueError, match="ctx_codes"):
        layout.assemble(torch.zeros(1, 3, 4, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        layout.labels(torch.zeros(1, 7, dtype=torch.long))
