"""Planners (MPPI, CEM), objectives, planning models (oracle, world model) and the env's state save/restore."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mbrl.envs import EnvConfig, make_env
from mbrl.planning import (
    CEM,
    MPPI,
    OracleModel,
    PlannerConfig,
    Rollout,
    WorldModel,
    goal_from_scripted,
    make_objective,
    make_planner,
)
from mbrl.planning.mpc import check_horizon, run_episode
from mbrl.planning.planners import mppi_weights

SMALL_ENV = EnvConfig(task="reach", image_size=32, episode_length=12)
TARGET = torch.tensor([0.3, -0.5, 0.7, -0.2])


def quadratic(actions: torch.Tensor) -> torch.Tensor:
    """Scores (N,) of sequences (N, H, 4): minus the squared distance of every action to TARGET."""
    return -(actions - TARGET).square().sum((1, 2))


def planner(name: str, seed: int = 0, **overrides) -> MPPI | CEM:
    return make_planner(name, 4, PlannerConfig(**overrides), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ planners
def test_mppi_update_matches_hand_computed_weights_and_mean():
    mppi = planner("mppi", temperature=0.5, samples=3, horizon=1)
    samples = torch.tensor([0.0, 1.0, -1.0]).reshape(3, 1, 1).expand(3, 1, 4).clone()
    scores = torch.tensor([0.0, -1.0, -0.5])
    expected = torch.tensor([1.0, math.exp(-2.0), math.exp(-1.0)])
    expected /= expected.sum()
    assert torch.allclose(mppi_weights(scores, 0.5), expected)
    std = torch.full((1, 4), 0.5)
    mean, new_std = mppi.update(samples, scores, torch.zeros(1, 4), std)
    assert torch.allclose(mean, torch.full((1, 4), float(expected[1] - expected[2])))
    assert torch.equal(new_std, std)  # MPPI keeps the std; it is reset each control step anyway


def test_cem_update_fits_the_elites():
    cem = planner("cem", samples=4, horizon=1, elites=2)
    samples = torch.tensor([0.0, 1.0, 3.0, -1.0]).reshape(4, 1, 1).expand(4, 1, 4).clone()
    mean, std = cem.update(samples, torch.tensor([0.0, 5.0, 4.0, -3.0]), torch.zeros(1, 4), torch.ones(1, 4))
    assert torch.allclose(mean, torch.full((1, 4), 2.0)) and torch.allclose(std, torch.full((1, 4), 1.0))


@pytest.mark.parametrize("name", ["mppi", "cem"])
def test_planners_reach_the_optimum_of_a_quadratic(name):
    # MPPI's temperature must suit the scale of the scores (here a few units); at 0.05 it keeps about the best
    # of the 200 samples, which are 0.3 from the optimum in this 20-dim problem
    opt = planner(name, horizon=5, temperature=0.5)
    for _ in range(15):
        result = opt.plan(quadratic)
    assert result.actions.shape == (5, 4)
    assert (result.actions - TARGET).abs().max() < 0.15


@pytest.mark.parametrize("name", ["mppi", "cem"])
def test_mpc_drives_a_point_mass_to_its_goal(name):
    goal, position = torch.tensor([0.6, -0.4]), torch.zeros(2)
    opt = make_planner(name, 2, PlannerConfig(samples=64, horizon=6), generator=torch.Generator().manual_seed(1))

    def score(actions: torch.Tensor) -> torch.Tensor:  # x_{t+1} = x_t + 0.1 a_t
        path = position + 0.1 * actions.cumsum(1)
        return -(path - goal).square().sum((1, 2))

    for _ in range(25):
        position = position + 0.1 * opt.plan(score).actions[0]
    assert (position - goal).norm() < 0.05


def test_sampling_is_correlated_clipped_and_seeded():
    opt = planner("mppi", samples=4000, horizon=3, noise_beta=0.5, init_std=0.2)
    samples = opt.sample(torch.zeros(3, 4), opt.init_std)
    noise = samples
    # noise_1 = 0.5 noise_0 + 0.5 w_1: std 0.2 * sqrt(0.5), correlation with noise_0 is 1/sqrt(2)
    assert noise[:, 1].std().item() == pytest.approx(0.2 * math.sqrt(0.5), rel=0.05)
    corr = torch.corrcoef(torch.stack([noise[:, 0, 0], noise[:, 1, 0]]))[0, 1].item()
    assert corr == pytest.approx(1 / math.sqrt(2), abs=0.05)
    wide = planner("cem", init_std=5.0)
    assert wide.sample(torch.zeros(10, 4), wide.init_std).abs().max() <= 1.0
    a, b = planner("cem", seed=3).plan(quadratic), planner("cem", seed=3).plan(quadratic)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.samples, b.samples)


def test_warm_start_shifts_the_previous_plan():
    opt = planner("mppi", horizon=4)
    assert torch.equal(opt.initial_mean(), torch.zeros(4, 4))
    plan = opt.plan(quadratic).actions
    assert torch.equal(opt.initial_mean(), torch.cat([plan[1:], plan[-1:]]))
    opt.reset()
    assert torch.equal(opt.initial_mean(), torch.zeros(4, 4))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "mppj"}, "close matches: mppi"),
    ({"name": "cem", "elites": 300}, "elites"),
    ({"name": "mppi", "temperature": 0.0}, "temperature"),
    ({"name": "mppi", "noise_beta": 1.0}, "noise_beta"),
    ({"name": "mppi", "init_std": [0.5, 0.5]}, "init_std"),
])
def test_bad_planner_settings_are_one_line_errors(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message) as err:
        planner(name, **kwargs)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------- objectives
class FakeModel:
    action_dim, frame_shape, has_reward_head, max_horizon, device = 4, (3, 8, 8), False, 5, torch.device("cpu")


def test_goal_image_objective_is_minus_the_summed_squared_error():
    goal = np.full((3, 8, 8), 255, dtype=np.uint8)
    objective = make_objective("goal_image", FakeModel(), goal)
    frames = torch.zeros(2, 3, 3, 8, 8)
    frames[1] = 0.5
    scores = objective(Rollout(frames, None))
    assert torch.allclose(scores, torch.tensor([-3 * 192.0, -3 * 192 * 0.25]))


def test_reward_objective_sums_the_predicted_rewards():
    model = FakeModel()
    model.has_reward_head = True
    scores = make_objective("reward", model)(Rollout(torch.zeros(2, 3, 3, 8, 8), torch.tensor([[1.0, 2, 3], [0, 0, 1]])))
    assert torch.equal(scores, torch.tensor([6.0, 1.0]))


@pytest.mark.parametrize(("name", "goal", "message"), [
    ("goal_imag", None, "close matches: goal_image"),
    ("goal_image", np.zeros((3, 16, 16), np.uint8), r"goal image has shape \(3, 16, 16\)"),
    ("reward", None, "no reward head"),
])
def test_bad_objectives_are_one_line_errors(name, goal, message):
    with pytest.raises(ValueError, match=message) as err:
        make_objective(name, FakeModel(), goal)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ world model
def tiny_world_model(**kwargs) -> WorldModel:
    from world_model.build import build_model

    model = build_model("tiny", action_dim=kwargs.pop("action_dim", 4), reward_head=True, image_size=32)
    return WorldModel(model, generator=torch.Generator().manual_seed(0), **kwargs)


def test_world_model_rollouts_in_chunks_are_shaped_and_reproducible():
    wm = tiny_world_model(chunk=2)
    history = np.random.default_rng(0).integers(0, 255, (1, 3, 32, 32), dtype=np.uint8)
    wm.observe(None, history)
    actions = torch.rand(3, 2, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    first = wm.rollout(actions)
    assert first.frames.shape == (3, 2, 3, 32, 32) and first.rewards.shape == (3, 2)
    assert 0 <= first.frames.min() and first.frames.max() <= 1
    wm.generator.manual_seed(0)
    again = wm.rollout(actions)
    assert torch.equal(first.frames, again.frames) and torch.equal(first.rewards, again.rewards)


def test_world_model_bad_input_is_one_line_errors():
    with pytest.raises(ValueError, match="action-free"):
        tiny_world_model(action_dim=None)
    wm = tiny_world_model()
    with pytest.raises(ValueError, match="image_size"):
        wm.observe(None, np.zeros((2, 3, 64, 64), np.uint8))
    too_long = planner("mppi", horizon=wm.max_horizon + 1)
    with pytest.raises(ValueError, match=f"planner.horizon<={wm.max_horizon}"):
        check_horizon(wm, too_long)


# --------------------------------------------------------------------------- env state and oracle
def test_sim_state_restore_replays_the_same_frames_and_rewards():
    env, other = make_env(SMALL_ENV), make_env(dataclasses.replace(SMALL_ENV, seed=7, episode_length=50))
    try:
        env.reset(seed=3)
        other.reset(seed=11)
        rng = np.random.default_rng(0)
        for _ in range(3):
            env.step(rng.uniform(-1, 1, 4))
        state = env.get_sim_state()
        actions = rng.uniform(-1, 1, (6, 4)).astype(np.float32)

        def play(e):
            steps = [e.step(a) for a in actions]
            return [(obs, reward, info["success"], info["frame"]) for obs, reward, _, _, info in steps]

        first = play(env)
        for target in (env, other, env):  # restore twice: the state is not consumed
            target.set_sim_state(state)
            for a, b in zip(first, play(target)):
                assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
        # the restored step count ends the episode on time: 3 + 6 steps before, 12 in an episode
        assert [env.step(actions[0])[3] for _ in range(3)] == [False, False, True]
    finally:
        env.close()
        other.close()


def test_sim_state_of_another_task_is_refused():
    env = make_env(SMALL_ENV)
    try:
        env.reset(seed=0)
        state = dataclasses.replace(env.get_sim_state(), task_id="door-open-v3")
        with pytest.raises(ValueError, match="same config"):
            env.set_sim_state(state)
    finally:
        env.close()


def test_oracle_predicts_exactly_what_the_env_does_and_leaves_it_alone():
    env, oracle = make_env(SMALL_ENV), OracleModel(SMALL_ENV)
    try:
        _, info = env.reset(seed=5)
        oracle.observe(env, info["frame"][None])
        actions = torch.tensor(np.random.default_rng(1).uniform(-1, 1, (2, 3, 4)), dtype=torch.float32)
        rollout = oracle.rollout(actions)
        assert rollout.frames.shape == (2, 3, 3, 32, 32) and rollout.rewards.shape == (2, 3)
        for t in range(3):
            _, reward, _, _, step_info = env.step(actions[1, t].numpy())
            assert np.array_equal((rollout.frames[1, t] * 255).round().byte().numpy(), step_info["frame"])
            assert rollout.rewards[1, t].item() == pytest.approx(reward)
    finally:
        env.close()
        oracle.close()


def test_goal_comes_from_the_same_initial_state_and_an_episode_runs():
    env, oracle = make_env(SMALL_ENV), OracleModel(SMALL_ENV)
    try:
        _, info = env.reset(seed=9)
        goal, _ = goal_from_scripted(env, "reach", 9)
        assert goal.shape == (3, 32, 32)
        _, again = env.reset(seed=9)
        assert np.array_equal(info["frame"], again["frame"])
        opt = planner("mppi", samples=4, horizon=2)
        result = run_episode(env, oracle, opt, make_objective("goal_image", oracle, goal), seed=9, control_steps=3,
                             goal=goal, record=True)
        assert result.steps == 3 and len(result.video) == 3 and result.video[0].shape == (3, 32, 128)
        assert result.seconds_per_step > 0
    finally:
        env.close()
        oracle.close()
