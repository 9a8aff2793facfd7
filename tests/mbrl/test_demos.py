"""Scripted demonstrations: the episodes every agent's replay starts with when `demos > 0`."""

from __future__ import annotations

import numpy as np
import pytest

from core.runtime import derive_seed
from mbrl.demos import DEMO_SEED_STREAM, demo_episodes
from mbrl.envs import EnvConfig, make_env


@pytest.fixture(scope="module")
def env():
    env = make_env(EnvConfig(task="reach", image_size=32, episode_length=6))
    yield env
    env.close()


def test_demo_episodes_are_whole_scripted_episodes_from_their_own_seeds(env):
    first, second = list(demo_episodes(env, "reach", 2, seed=4))
    for episode in (first, second):
        assert episode.frames.shape == (7, 3, 32, 32) and episode.frames.dtype == np.uint8
        assert episode.actions.shape == (6, 4) and episode.actions.dtype == np.float32
        assert np.abs(episode.actions).max() <= 1.0
        assert episode.rewards.shape == episode.successes.shape == (6,)
        assert episode.truncated and not episode.terminated  # Meta-World episodes end by time
        assert episode.success == bool(episode.successes.any())
    assert not np.array_equal(first.frames[0], second.frames[0])  # different start states
    again = next(demo_episodes(env, "reach", 1, seed=4))
    np.testing.assert_array_equal(again.frames, first.frames)
    np.testing.assert_array_equal(again.actions, first.actions)
    # episode i starts from the demonstration seed stream: the reset frame is the env's at that seed
    _, info = env.reset(seed=derive_seed(4, DEMO_SEED_STREAM, 1))
    np.testing.assert_array_equal(info["frame"], second.frames[0])


def test_the_scripted_policy_acts_on_the_task(env):
    """Not a random walk: over a longer episode the scripted reach policy gets closer to its goal."""
    long_env = make_env(EnvConfig(task="reach", image_size=32, episode_length=60))
    try:
        episode = next(demo_episodes(long_env, "reach", 1, seed=0))
    finally:
        long_env.close()
    assert episode.rewards[-10:].mean() > episode.rewards[:10].mean()


def test_scripted_episode_adds_action_noise_from_the_generator_it_is_given(env):
    from mbrl.demos import scripted_episode
    from mbrl.envs import scripted_policy

    policy = scripted_policy("reach")
    clean = scripted_episode(env, policy, seed=5)
    noisy = scripted_episode(env, policy, seed=5, noise=0.3, rng=np.random.default_rng(0))
    again = scripted_episode(env, policy, seed=5, noise=0.3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(noisy.frames[0], clean.frames[0])  # same start
    assert not np.allclose(noisy.actions, clean.actions) and np.abs(noisy.actions).max() <= 1.0
    np.testing.assert_array_equal(noisy.actions, again.actions)
    with pytest.raises(ValueError, match="random generator"):
        scripted_episode(env, policy, seed=5, noise=0.3)
