"""Pixel Meta-World protocol: shapes, upright frames, action repeat, bonus, truncation, stacks, GL."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import mujoco
import numpy as np
import pytest
from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

from mbrl.envs import TASKS, EnvConfig, MetaWorldPixelEnv, make_env, resolve_task, scripted_policy

# A task whose scripted policy succeeds within ~20 agent steps, so bonus tests stay short.
QUICK_TASK = "handle_press"
NOT_BLACK = 20  # mean pixel value; Meta-World scenes are around 100


def raw_env(task: str, seed: int, render_mode: str | None = None, size: int = 64):
    """An unwrapped Meta-World env prepared exactly as our wrapper documents (reset + one zero step)."""
    env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[resolve_task(task) + "-goal-observable"](
        seed=seed, render_mode=render_mode
    )
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True
    if render_mode:
        env.mujoco_renderer.camera_id = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, "corner")
        env.mujoco_renderer.width = env.mujoco_renderer.height = size
    env.reset()
    env.step(np.zeros(4, np.float32))
    return env


def close_raw(env) -> None:
    # Gymnasium leaves the MjrContext to the garbage collector; free it inside its own context first.
    viewer = env.mujoco_renderer._viewers.get("rgb_array")
    if viewer is not None:
        viewer.make_context_current()
        viewer.con.free()
    env.close()


@contextlib.contextmanager
def open_envs(*configs: EnvConfig) -> Iterator[list[MetaWorldPixelEnv]]:
    """Envs for `configs`, closed on the way out."""
    envs: list[MetaWorldPixelEnv] = []
    try:
        envs.extend(make_env(cfg) for cfg in configs)
        yield envs
    finally:
        for env in envs:
            env.close()


def test_observation_protocol():
    cfg = EnvConfig(task="door_open", seed=0, episode_length=3)
    with open_envs(cfg) as (env,):
        obs, info = env.reset()
        assert obs.shape == (cfg.frame_stack * 3, cfg.image_size, cfg.image_size) and obs.dtype == np.uint8
        assert env.observation_space.contains(obs)
        assert env.frame_shape == (3, cfg.image_size, cfg.image_size) and env.action_dim == 4
        assert env.state_obs.shape == (39,)
        first = info["frame"]
        assert first.shape == env.frame_shape and first.dtype == np.uint8 and not info["success"]
        # At reset the first frame fills the whole stack.
        np.testing.assert_array_equal(obs, np.concatenate([first] * cfg.frame_stack))

        frames = [first]
        for t in range(cfg.episode_length):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            frames.append(info["frame"])
            assert isinstance(reward, float) and terminated is False
            assert truncated == (t == cfg.episode_length - 1)
            # Newest frame last; frames before the episode start are the first frame.
            expected = [frames[max(0, len(frames) - cfg.frame_stack + k)] for k in range(cfg.frame_stack)]
            np.testing.assert_array_equal(obs, np.concatenate(expected))
        assert not np.array_equal(frames[0], frames[-1])  # random actions move the arm
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(4))
        np.testing.assert_array_equal(env.render(), frames[-1].transpose(1, 2, 0))


def test_paper_frames_equal_metaworld_render_flipped_upright():
    # MuJoCo renders the `corner` camera upside down (checked by eye); ours must be Meta-World's frame flipped.
    raw = raw_env("door_open", seed=3, render_mode="rgb_array")
    try:
        with open_envs(EnvConfig(task="door_open", seed=3, render_quality="paper")) as (env,):
            _, info = env.reset()
        raw_frame = raw.render()
    finally:
        close_raw(raw)
    np.testing.assert_array_equal(info["frame"], raw_frame[::-1].transpose(2, 0, 1))
    assert not np.array_equal(info["frame"], raw_frame.transpose(2, 0, 1))


def test_fast_quality_looks_close_to_paper():
    configs = [EnvConfig(task="door_open", seed=1, render_quality=quality) for quality in ("fast", "paper")]
    with open_envs(*configs) as envs:
        fast, paper = (env.reset()[1]["frame"].astype(np.int16) for env in envs)
    difference = np.abs(fast - paper).mean()
    assert 0 < difference < 10  # no shadows/multisampling/reflections: a small, non-zero change


def test_action_repeat_sums_reward_and_adds_bonus_once():
    cfg = EnvConfig(task=QUICK_TASK, seed=5, action_repeat=2, success_bonus=10.0)
    raw = raw_env(QUICK_TASK, seed=5)
    policy = scripted_policy(QUICK_TASK)
    with open_envs(cfg) as (env,):
        env.reset()
        np.testing.assert_allclose(env.state_obs, raw._last_stable_obs)
        saw_success = False
        for _ in range(30):
            action = np.clip(policy.get_action(env.state_obs), -1, 1).astype(np.float32)
            _, reward, _, _, info = env.step(action)
            raw_rewards, raw_successes = [], []
            for _ in range(cfg.action_repeat):
                _, r, _, _, raw_info = raw.step(action)
                raw_rewards.append(r)
                raw_successes.append(bool(raw_info["success"]))
            expected = sum(raw_rewards) + (cfg.success_bonus if any(raw_successes) else 0.0)
            assert reward == pytest.approx(expected, abs=1e-9)
            assert info["success"] == any(raw_successes)
            saw_success |= info["success"]
        assert saw_success, (
            "the scripted policy should succeed within 30 steps, making the bonus test meaningful"
        )
    raw.close()


def test_actions_are_clipped():
    with open_envs(EnvConfig(seed=2), EnvConfig(seed=2)) as (env_big, env_clipped):
        env_big.reset(), env_clipped.reset()
        big = np.array([5.0, -3.0, 2.0, -9.0], np.float32)
        obs_big, r_big, *_ = env_big.step(big)
        obs_clip, r_clip, *_ = env_clipped.step(np.clip(big, -1, 1))
        assert r_big == r_clip
        np.testing.assert_array_equal(obs_big, obs_clip)
        with pytest.raises(ValueError, match="finite"):
            env_big.step(np.array([np.nan, 0, 0, 0]))


def test_seeded_random_initial_positions():
    with open_envs(EnvConfig(seed=7), EnvConfig(seed=7)) as (env_a, env_b):
        starts_a = [env_a.reset()[1]["frame"] for _ in range(2)]
        starts_b = [env_b.reset()[1]["frame"] for _ in range(2)]
        np.testing.assert_array_equal(starts_a[0], starts_b[0])  # same seed, same episode
        np.testing.assert_array_equal(starts_a[1], starts_b[1])
        assert not np.array_equal(starts_a[0], starts_a[1])  # new positions every reset
        # reset(seed=...) restarts the sequence
        np.testing.assert_array_equal(env_a.reset(seed=11)[0], env_b.reset(seed=11)[0])


def test_task_names():
    assert len(TASKS) == 50
    for spelling in ("door_open", "door-open", "door-open-v3", "Door_Open", "door-open-v3-goal-observable"):
        assert resolve_task(spelling) == "door-open-v3"
    assert resolve_task("button_press_topdown_wall") == "button-press-topdown-wall-v3"
    with pytest.raises(ValueError, match="close matches: door_open"):
        resolve_task("door_opn")
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        EnvConfig(task="no_such_thing_at_all")
    with pytest.raises(ValueError, match="render_quality"):
        EnvConfig(render_quality="ultra")


def test_close_then_new_env_still_renders():
    # The sequence that blanks Gymnasium-rendered Meta-World envs: one env alive, a second made, closed and
    # collected, then the first renders again, and a third is made. The survivor's frames are checked
    # against a replay in a fresh env (a failed render would return black or a stale frame).
    actions = np.random.default_rng(0).uniform(-1, 1, size=(3, 4)).astype(np.float32)
    survivor = make_env(EnvConfig(seed=0))
    try:
        seen = [survivor.reset()[0]]
        closed = make_env(EnvConfig(task="coffee_push", seed=0))
        closed.reset()
        closed.close()
        closed.close()  # idempotent
        del closed
        gc.collect()
        seen.append(survivor.step(actions[0])[0])
        dropped = make_env(EnvConfig(task="hammer", seed=0))  # garbage-collected without close()
        dropped.reset()
        seen.append(survivor.step(actions[1])[0])  # the survivor's context is current when `dropped` is freed
        del dropped
        gc.collect()
        seen.append(survivor.step(actions[2])[0])
    finally:
        survivor.close()
    with pytest.raises(RuntimeError, match="close"):
        survivor.reset()

    with open_envs(EnvConfig(seed=0)) as (replay,):
        expected = [replay.reset()[0]] + [replay.step(action)[0] for action in actions]
    for got, want in zip(seen, expected, strict=True):
        assert want.mean() > NOT_BLACK
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(expected[-1], expected[-2])  # the arm moved: stale frames would be caught
