"""Replay buffer: n-step returns, frame stacks, segments, memory, checkpoints, wrap-around."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from mbrl.replay import ReplayBuffer

FRAME_SHAPE = (3, 4, 4)
STEP_CODE = 50  # frame value = episode * STEP_CODE + step, so a frame says where it came from


def frame(episode: int, step: int) -> np.ndarray:
    return np.full(FRAME_SHAPE, episode * STEP_CODE + step, dtype=np.uint8)


def action(episode: int, step: int) -> np.ndarray:
    """The action taken at frame `step` of `episode`."""
    return np.array([episode, step, -1.0, 0.5], dtype=np.float32)


def reward(episode: int, step: int) -> float:
    """The reward of the transition out of frame `step` of `episode`."""
    return 1.0 + step + 0.1 * episode


def fill(buffer: ReplayBuffer, lengths: list[int]) -> None:
    """Episodes of the given lengths (in transitions), added step by step."""
    for e, length in enumerate(lengths):
        buffer.add_first(frame(e, 0))
        for t in range(length):
            buffer.add(action(e, t), reward(e, t), frame(e, t + 1), success=t == 2, last=t == length - 1)


def decode(frames: np.ndarray) -> np.ndarray:
    """(..., C, H, W) frames -> (...) integer codes."""
    return frames[..., 0, 0, 0].astype(int)


def split_stack(obs: torch.Tensor) -> np.ndarray:
    """(B, S*C, H, W) -> (B, S) frame codes."""
    b = obs.shape[0]
    return decode(obs.numpy().reshape(b, -1, *FRAME_SHAPE))


def test_nstep_return_matches_hand_computation():
    length, nstep, gamma = 10, 3, 0.9
    buffer = ReplayBuffer(100, FRAME_SHAPE, 4, frame_stack=1, nstep=nstep, discount=gamma, seed=0)
    fill(buffer, [length])
    batch = buffer.sample(400)
    start = split_stack(batch.obs)[:, -1]
    # DrQ-v2: only starts with a full n-step window inside the episode
    assert set(start.tolist()) == set(range(length - nstep + 1))
    for i, j in enumerate(start):
        expected = sum(gamma**k * reward(0, j + k) for k in range(nstep))
        assert batch.reward[i, 0].item() == pytest.approx(expected, rel=1e-6)
        np.testing.assert_array_equal(batch.action[i].numpy(), action(0, j))
    assert split_stack(batch.next_obs)[:, -1].tolist() == (start + nstep).tolist()
    np.testing.assert_allclose(batch.discount.numpy(), gamma**nstep, rtol=1e-6)
    assert (
        batch.obs.dtype == torch.uint8 and batch.reward.shape == (400, 1) and batch.action.shape == (400, 4)
    )


def test_stacks_repeat_the_first_frame_at_episode_start():
    buffer = ReplayBuffer(100, FRAME_SHAPE, 4, frame_stack=3, nstep=1, discount=0.99, seed=1)
    fill(buffer, [6, 6])
    batch = buffer.sample(500)
    obs, next_obs = split_stack(batch.obs), split_stack(batch.next_obs)
    for stack, after in zip(obs, next_obs, strict=True):
        episode, step = divmod(stack[-1], STEP_CODE)
        want = [episode * STEP_CODE + max(0, step - k) for k in (2, 1, 0)]
        assert stack.tolist() == want
        assert after.tolist() == [episode * STEP_CODE + max(0, step + 1 - k) for k in (2, 1, 0)]
    assert {tuple(s) for s in obs} >= {(0, 0, 0), (0, 0, 1), (50, 50, 50), (50, 50, 51)}


def test_env_and_buffer_build_the_same_stacks():
    from mbrl.envs import EnvConfig, make_env

    cfg = EnvConfig(task="door_open", seed=0, episode_length=5)
    env = make_env(cfg)
    buffer = ReplayBuffer(
        50, env.frame_shape, env.action_dim, frame_stack=cfg.frame_stack, nstep=1, discount=0.99
    )
    rng = np.random.default_rng(0)
    try:
        obs, info = env.reset()
        observations = [obs]
        buffer.add_first(info["frame"])
        truncated = False
        while not truncated:
            obs, r, _, truncated, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
            observations.append(obs)
            buffer.add(np.zeros(4, np.float32), r, info["frame"], info["success"], last=truncated)
    finally:
        env.close()
    env_pairs = {(a.tobytes(), b.tobytes()) for a, b in itertools.pairwise(observations)}
    batch = buffer.sample(200)
    sampled = {
        (a.numpy().tobytes(), b.numpy().tobytes()) for a, b in zip(batch.obs, batch.next_obs, strict=True)
    }
    assert sampled == env_pairs


def test_segments_follow_the_official_convention_and_stay_in_one_episode():
    lengths = [5, 9, 12]
    buffer = ReplayBuffer(200, FRAME_SHAPE, 4, frame_stack=3, nstep=3, discount=0.99, seed=2)
    fill(buffer, lengths)
    T = 4
    segments = buffer.sample_segments(300, T)
    assert segments.frames.shape == (300, T, *FRAME_SHAPE) and segments.frames.dtype == torch.uint8
    assert segments.actions.shape == (300, T, 4) and segments.rewards.shape == (300, T)
    codes = decode(segments.frames.numpy())
    episode, step = np.divmod(codes, STEP_CODE)
    assert (episode == episode[:, :1]).all()  # one episode per segment
    assert (np.diff(step, axis=1) == 1).all()  # consecutive frames
    # the last action/reward lead out of the segment, so the step after it must exist
    assert (step[:, -1] < np.array(lengths)[episode[:, 0]]).all()
    for b in range(len(codes)):
        for k in range(T):
            np.testing.assert_array_equal(segments.actions[b, k].numpy(), action(episode[b, k], step[b, k]))
            assert segments.rewards[b, k].item() == pytest.approx(reward(episode[b, k], step[b, k]))
    with pytest.raises(ValueError, match="consecutive frames"):
        buffer.sample_segments(2, 13)


def test_memory_is_one_frame_per_step_plus_small_overhead():
    shape = (3, 64, 64)
    buffer = ReplayBuffer(1000, shape, 4, frame_stack=3)
    frame_bytes = int(np.prod(shape))
    assert frame_bytes < buffer.bytes_per_step < frame_bytes + 64
    assert buffer.nbytes == pytest.approx(buffer.bytes_per_step * 1000)


def test_state_dict_round_trip_gives_the_same_next_batch():
    buffer = ReplayBuffer(40, FRAME_SHAPE, 4, frame_stack=3, nstep=2, discount=0.9, seed=3)
    fill(buffer, [10, 10, 10, 7])  # wraps around: 42 frames in 40 slots
    buffer.sample(8)
    file = io.BytesIO()
    torch.save(buffer.state_dict(), file)
    file.seek(0)
    restored = ReplayBuffer(40, FRAME_SHAPE, 4, frame_stack=3, nstep=2, discount=0.9, seed=999)
    restored.load_state_dict(torch.load(file, weights_only=True))
    assert len(restored) == len(buffer)
    for a, b in [(buffer.sample(16), restored.sample(16)), (buffer.sample(16), restored.sample(16))]:
        for name in ("obs", "action", "reward", "discount", "next_obs"):
            assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(buffer.sample_segments(4, 3).frames, restored.sample_segments(4, 3).frames)
    with pytest.raises(ValueError, match="does not fit"):
        ReplayBuffer(41, FRAME_SHAPE, 4).load_state_dict(buffer.state_dict())


def test_capacity_wrap_around():
    capacity, length = 25, 10
    buffer = ReplayBuffer(capacity, FRAME_SHAPE, 4, frame_stack=3, nstep=1, discount=0.99, seed=4)
    fill(buffer, [length] * 4)  # 44 frames; the 25 newest survive: ep1 steps 8-10, ep2 and ep3 whole
    assert buffer.num_frames == capacity
    assert len(buffer) == 2 + length + length
    stacks = split_stack(buffer.sample(1000).obs)
    episodes = set((stacks // STEP_CODE).ravel().tolist())
    # ep1's stacks would need its overwritten earlier frames; ep0 is gone entirely
    assert episodes == {2, 3}
    # keeps working after many more wraps, and the memory never grows
    nbytes = buffer.nbytes
    fill(buffer, [length] * 5)  # 55 more frames: two more laps of the ring
    assert buffer.nbytes == nbytes and buffer.num_frames == capacity
    buffer.sample(10)


def test_add_episode_matches_step_by_step_adds():
    stepwise = ReplayBuffer(30, FRAME_SHAPE, 4, frame_stack=2, nstep=2, discount=0.9)
    fill(stepwise, [6, 6])
    bulk = ReplayBuffer(30, FRAME_SHAPE, 4, frame_stack=2, nstep=2, discount=0.9)
    for e in range(2):
        bulk.add_episode(
            np.stack([frame(e, t) for t in range(7)]),
            np.stack([action(e, t) for t in range(6)]),
            np.array([reward(e, t) for t in range(6)]),
            np.arange(6) == 2,
        )
    a, b = stepwise.state_dict(), bulk.state_dict()
    for key in ("frames", "actions", "rewards", "successes", "episode_start", "total"):
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
    assert len(bulk) == len(stepwise) == 12


def test_bad_input_gives_clear_errors():
    buffer = ReplayBuffer(10, FRAME_SHAPE, 4)
    with pytest.raises(RuntimeError, match="add_first"):
        buffer.add(action(0, 0), 0.0, frame(0, 1))
    with pytest.raises(ValueError, match="too few"):
        buffer.sample(4)
    with pytest.raises(ValueError, match="uint8"):
        buffer.add_first(frame(0, 0).astype(np.float32))
    with pytest.raises(ValueError, match="capacity"):
        buffer.add_episode(np.stack([frame(0, t) for t in range(11)]), np.zeros((10, 4)), np.zeros(10))


def add_collected(buffer: ReplayBuffer, folder: Path) -> int:
    """Adds every episode `.npz` of `folder` in the `mbrl.collect` layout: `image` uint8 `(T+1, H, W, 3)`,
    `action` `(T+1, A)`, `reward` and `success` `(T+1,)`, row t the step taken at frame t, the last row padding."""
    files = sorted(folder.glob("*.npz"))
    for file in files:
        with np.load(file) as episode:
            buffer.add_episode(episode["image"].transpose(0, 3, 1, 2), episode["action"][:-1],
                               episode["reward"][:-1], episode["success"][:-1])
    return len(files)


def test_episodes_in_the_collect_layout_go_in_whole(tmp_path):
    steps = 6
    images = np.stack([frame(0, t) for t in range(steps + 1)]).transpose(0, 2, 3, 1)
    actions = np.concatenate([np.stack([action(0, t) for t in range(steps)]), np.zeros((1, 4))])
    rewards = np.array([reward(0, t) for t in range(steps)] + [0.0], np.float32)
    np.savez_compressed(
        tmp_path / "demo.npz",
        image=images,
        action=actions.astype(np.float32),
        reward=rewards,
        success=np.zeros(steps + 1, bool),
    )
    buffer = ReplayBuffer(50, FRAME_SHAPE, 4, frame_stack=1, nstep=1, discount=0.99)
    assert add_collected(buffer, tmp_path) == 1
    assert len(buffer) == steps
    segments = buffer.sample_segments(20, steps)
    np.testing.assert_allclose(segments.rewards[0].numpy(), rewards[:-1])
    np.testing.assert_array_equal(segments.frames[0].numpy(), images.transpose(0, 3, 1, 2)[:steps])
