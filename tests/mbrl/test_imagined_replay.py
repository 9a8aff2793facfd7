"""Imagined replay: rollouts under a policy, FIFO storage, n-step sampling with stacks rebuilt on the fly."""
from __future__ import annotations

import pytest
import torch

from core.batch import TransitionBatch
from mbrl.imagined_replay import ImaginedReplay, Rollouts, imagine, mix_batches, stack_frames, to_uint8

FRAME = (3, 4, 4)
ACTION_DIM = 2


def marked_rollouts(batch: int, history: int, horizon: int, first_id: int = 0) -> Rollouts:
    """Frame t of rollout b is filled with the value 10 * (first_id + b) + t; action t is (b, t), reward t is
    (t + 1) * 10 ** b-ish values that make every n-step sum distinct."""
    ids = torch.arange(first_id, first_id + batch)
    t = torch.arange(history + horizon)
    values = (10 * ids[:, None] + t).to(torch.uint8)  # (B, L + H)
    frames = values[:, :, None, None, None].expand(batch, history + horizon, *FRAME).contiguous()
    steps = torch.arange(horizon, dtype=torch.float32)
    actions = torch.stack([ids[:, None].float().expand(batch, horizon), steps.expand(batch, horizon)], dim=-1)
    rewards = (ids[:, None].float() + 1) * (2.0 ** steps)
    return Rollouts(frames, actions, rewards)


def make_replay(capacity: int = 100, history: int = 3, horizon: int = 5, frame_stack: int = 3, nstep: int = 3,
                discount: float = 0.5) -> ImaginedReplay:
    return ImaginedReplay(capacity, FRAME, ACTION_DIM, history, horizon, frame_stack, nstep, discount, seed=0)


def test_stack_frames_gathers_the_newest_frames_and_repeats_the_first():
    frames = torch.arange(2 * 5).view(2, 5, 1, 1, 1).expand(2, 5, 3, 1, 1)
    stacks = stack_frames(frames, torch.tensor([1, 4]), 3)
    assert stacks.shape == (2, 9, 1, 1)
    assert stacks[0, ::3].flatten().tolist() == [0, 0, 1]  # before the first frame: frame 0 repeated
    assert stacks[1, ::3].flatten().tolist() == [7, 8, 9]
    rows = stack_frames(frames, torch.tensor([2, 2, 2]), 2, rows=torch.tensor([1, 0, 1]))
    assert rows[:, ::3].flatten(1).tolist() == [[6, 7], [1, 2], [6, 7]]


def test_samples_are_nstep_transitions_with_stacks_rebuilt_from_stored_frames():
    history, horizon, nstep, stack, discount = 3, 5, 3, 3, 0.5
    replay = make_replay(history=history, horizon=horizon, frame_stack=stack, nstep=nstep, discount=discount)
    rollouts = marked_rollouts(4, history, horizon)
    replay.add(rollouts)
    batch = replay.sample(256)
    assert batch.obs.dtype == torch.uint8 and batch.obs.shape == (256, stack * 3, 4, 4)
    rollout = batch.action[:, 0].long()
    start = batch.action[:, 1].long()
    assert set(start.tolist()) == set(range(horizon - nstep + 1))  # every start with a full n-step window
    assert set(rollout.tolist()) == {0, 1, 2, 3}
    newest = history - 1 + start  # the observation at step t ends at stored frame L - 1 + t
    for offset in range(stack):
        expected = 10 * rollout + newest - (stack - 1 - offset)
        assert torch.equal(batch.obs[:, 3 * offset, 0, 0].long(), expected)
        assert torch.equal(batch.next_obs[:, 3 * offset, 0, 0].long(), expected + nstep)
    expected_reward = sum(discount ** k * rollouts.rewards[rollout, start + k] for k in range(nstep))
    assert torch.allclose(batch.reward[:, 0], expected_reward)
    assert torch.allclose(batch.discount, torch.full((256, 1), discount ** nstep))


def test_short_history_repeats_the_first_frame_in_the_first_stack():
    replay = make_replay(history=1, horizon=3, frame_stack=3, nstep=1)
    replay.add(marked_rollouts(1, 1, 3))
    batch = replay.sample(64)
    first = batch.action[:, 1] == 0
    assert first.any()
    assert batch.obs[first][:, ::3, 0, 0].unique(dim=0).tolist() == [[0, 0, 0]]
    assert batch.next_obs[first][:, ::3, 0, 0].unique(dim=0).tolist() == [[0, 0, 1]]


def test_fifo_keeps_the_newest_rollouts():
    replay = make_replay(capacity=10, horizon=5)  # 2 rollouts of 5 steps
    assert replay.max_rollouts == 2
    replay.add(marked_rollouts(1, 3, 5, first_id=0))
    replay.add(marked_rollouts(2, 3, 5, first_id=1))
    replay.add(marked_rollouts(1, 3, 5, first_id=3))
    assert replay.total_rollouts == 4 and replay.num_rollouts == 2 and len(replay) == 10
    assert set(replay.sample(200).action[:, 0].long().tolist()) == {2, 3}
    assert replay.latest(5).actions[:, 0, 0].tolist() == [2.0, 3.0]
    replay.add(marked_rollouts(3, 3, 5, first_id=5))  # more than fit at once: only the newest stay
    assert replay.latest(2).actions[:, 0, 0].tolist() == [6.0, 7.0] and replay.total_rollouts == 7


def test_state_dict_round_trip_continues_the_same_samples():
    replay = make_replay(capacity=10)
    for i in range(3):
        replay.add(marked_rollouts(1, 3, 5, first_id=i))
    replay.sample(7)
    state = replay.state_dict()
    assert state["frames"].shape[0] == 2 and state["frames"].untyped_storage().nbytes() == state["frames"].nbytes
    restored = make_replay(capacity=10)
    restored.load_state_dict(state)
    a, b = replay.sample(16), restored.sample(16)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward) and torch.equal(a.next_obs, b.next_obs)
    replay.add(marked_rollouts(1, 3, 5, first_id=9))
    restored.add(marked_rollouts(1, 3, 5, first_id=9))
    assert torch.equal(replay.latest(2).frames, restored.latest(2).frames)
    with pytest.raises(ValueError, match="does not fit"):
        make_replay(capacity=20).load_state_dict(state)


@pytest.mark.parametrize("kwargs,words", [
    ({"horizon": 2, "nstep": 3}, "shorter than agent.nstep"),
    ({"capacity": 4, "horizon": 5}, "holds no rollout"),
])
def test_bad_settings_are_one_line_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        make_replay(**kwargs)


def test_bad_rollout_shapes_are_rejected():
    replay = make_replay()
    good = marked_rollouts(2, 3, 5)
    with pytest.raises(ValueError, match="uint8"):
        replay.add(Rollouts(good.frames.float(), good.actions, good.rewards))
    with pytest.raises(ValueError, match="actions/rewards"):
        replay.add(Rollouts(good.frames, good.actions[:, :4], good.rewards))
    with pytest.raises(ValueError, match="empty"):
        replay.sample(1)


class CountingWorldModel:
    """A stand-in world model: the imagined frame after action a is (a[0] + step) / 255 everywhere; the
    reward is 10 * step + a[0]."""

    context_frames = 2

    def reset(self, context, horizon, temperature, top_k, generator):
        assert context.dtype == torch.float32 and context.max() <= 1.0
        self.context, self.horizon, self.t = context, horizon, 0

    def step(self, actions):
        self.t += 1
        value = (actions[:, 0] + self.t) / 255.0
        return value[:, None, None, None].expand(-1, *FRAME), 10.0 * self.t + actions[:, 0]


def test_imagine_feeds_the_policy_stacks_of_imagined_frames():
    history = torch.tensor([[7, 8, 9], [17, 18, 19]], dtype=torch.uint8)[:, :, None, None, None].expand(2, 3, *FRAME)
    seen = []

    def policy(obs):
        seen.append(obs[:, ::3, 0, 0].tolist())
        return torch.tensor([[1.0, 0.0], [2.0, 0.0]])

    model = CountingWorldModel()
    rollouts = imagine(model, policy, history.contiguous(), horizon=3, frame_stack=3)
    assert model.context[:, :, 0, 0, 0].mul(255).round().tolist() == [[8, 9], [18, 19]]  # the last T0 frames
    # first stack: real frames; then each imagined frame enters the stack (step k yields action[0] + k)
    assert seen == [[[7, 8, 9], [17, 18, 19]], [[8, 9, 2], [18, 19, 3]], [[9, 2, 3], [19, 3, 4]]]
    assert rollouts.frames.dtype == torch.uint8 and rollouts.frames.shape == (2, 6, *FRAME)
    assert rollouts.frames[:, 3:, 0, 0, 0].tolist() == [[2, 3, 4], [3, 4, 5]]
    assert rollouts.rewards.tolist() == [[11.0, 21.0, 31.0], [12.0, 22.0, 32.0]]
    assert rollouts.actions.shape == (2, 3, 2)


def test_imagine_rejects_too_short_history():
    with pytest.raises(ValueError, match="L >= 2"):
        imagine(CountingWorldModel(), lambda obs: obs, torch.zeros(1, 1, *FRAME, dtype=torch.uint8), 2, 3)


def test_to_uint8_rounds_and_clamps():
    assert to_uint8(torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5])).tolist() == [0, 0, 128, 255, 255]


def test_mix_batches_puts_real_rows_first():
    def batch(value: int, size: int) -> TransitionBatch:
        return TransitionBatch(obs=torch.full((size, 9, 2, 2), value, dtype=torch.uint8),
                               action=torch.full((size, 2), float(value)), reward=torch.full((size, 1), 1.0),
                               discount=torch.full((size, 1), 0.9), next_obs=torch.zeros(size, 9, 2, 2, dtype=torch.uint8))

    mixed = mix_batches(batch(1, 3), batch(2, 5), "cpu")
    assert mixed.obs.shape[0] == 8 and mixed.action[:, 0].tolist() == [1.0] * 3 + [2.0] * 5
