"""DrQ-v2: augmentation, encoder size, act, update, target update, schedule, state round trip."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agents.drqv2 import DrQV2Agent, DrQV2Config
from agents.nets import Encoder, RandomShift, shift_images
from core.checkpoint import load_checkpoint, save_checkpoint
from core.schedule import Schedule


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one thread avoids thread hand-off overhead when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


OBS_SHAPE = (9, 24, 24)  # 3 stacked RGB frames, small enough for fast tests
ACTION_DIM = 4


@dataclass
class FakeBatch:
    """Stands in for mbrl.replay.TransitionBatch (same field names and dtypes)."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_obs: torch.Tensor


def make_batch(batch_size: int = 8, seed: int = 0) -> FakeBatch:
    g = torch.Generator().manual_seed(seed)
    return FakeBatch(
        obs=torch.randint(0, 256, (batch_size, *OBS_SHAPE), dtype=torch.uint8, generator=g),
        action=torch.rand(batch_size, ACTION_DIM, generator=g) * 2 - 1,
        reward=torch.rand(batch_size, 1, generator=g),
        discount=torch.full((batch_size, 1), 0.99**3),
        next_obs=torch.randint(0, 256, (batch_size, *OBS_SHAPE), dtype=torch.uint8, generator=g),
    )


def make_agent(**overrides) -> DrQV2Agent:
    torch.manual_seed(0)
    cfg = DrQV2Config(hidden_dim=32, feature_dim=16, num_expl_steps=10, **overrides)
    return DrQV2Agent(OBS_SHAPE, ACTION_DIM, cfg, device="cpu")


def grid_sample_shift(x: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """The reference formulation: replicate pad, then bilinear grid_sample at shifted pixel centres."""
    b, _, h, _ = x.shape
    xp = F.pad(x.float(), (pad,) * 4, mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    line = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad)[:h]
    base = torch.stack([line.expand(h, h), line[:, None].expand(h, h)], dim=-1)
    grid = base[None] + shifts.view(b, 1, 1, 2).float() * (2.0 / (h + 2 * pad))
    return F.grid_sample(xp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def test_shift_matches_reference_grid_sample():
    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [8, 8], [4, 4], [0, 8], [3, 5], [7, 1]])
    ours = shift_images(x, shifts, pad=4)
    assert ours.dtype == torch.uint8
    torch.testing.assert_close(ours.float(), grid_sample_shift(x, shifts, 4), atol=0.01, rtol=0)
    assert torch.equal(ours[2], x[2])  # shift (pad, pad) is the identity
    assert not torch.equal(ours[1], x[1])


def test_random_shift_draws_per_image_offsets():
    torch.manual_seed(0)
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).repeat(32, 1, 1, 1)
    y = RandomShift(pad=4)(x)
    assert y.shape == x.shape
    assert len({tuple(img.flatten()[:3].tolist()) for img in y}) > 1


@pytest.mark.parametrize("size", [24, 64, 84])
def test_encoder_output_size_is_measured(size):
    enc = Encoder((9, size, size), num_filters=32, num_layers=4)
    side = (size - 3) // 2 + 1 - 2 * 3  # one stride-2 conv, three stride-1 convs, 3x3 kernels, no padding
    assert enc.repr_dim == 32 * side * side
    assert enc(torch.zeros(2, 9, size, size, dtype=torch.uint8)).shape == (2, enc.repr_dim)


def test_std_schedule_values():
    s = Schedule("linear(1.0,0.1,100000)")
    assert s(0) == pytest.approx(1.0)
    assert s(50000) == pytest.approx(0.55)
    assert s(100000) == pytest.approx(0.1)
    assert s(10**7) == pytest.approx(0.1)
    assert Schedule("0.2")(12345) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="linear"):
        Schedule("cosine(1,0,10)")


def test_act_shapes_ranges_exploration_and_eval_determinism():
    agent = make_agent()
    obs = np.random.default_rng(0).integers(0, 256, OBS_SHAPE, dtype=np.uint8)
    explore = np.stack([agent.act(obs, step=0, eval_mode=False) for _ in range(64)])
    assert explore.shape == (64, ACTION_DIM) and explore.dtype == np.float32
    assert np.all(np.abs(explore) <= 1.0)
    assert explore.std(0).min() > 0.4  # uniform on [-1, 1] has std 0.58
    a1, a2 = agent.act(obs, 10_000, eval_mode=True), agent.act(obs, 10_000, eval_mode=True)
    np.testing.assert_array_equal(a1, a2)
    assert np.all(np.abs(a1) < 1.0)
    train_actions = np.stack([agent.act(obs, 10_000, eval_mode=False) for _ in range(16)])
    assert np.all(np.abs(train_actions) <= 1.0) and train_actions.std(0).max() > 0


def test_update_moves_parameters_and_reports_metrics():
    agent = make_agent()
    before = {
        name: [p.detach().clone() for p in getattr(agent, name).parameters()]
        for name in ("encoder", "actor", "critic", "critic_target")
    }
    metrics = agent.update(make_batch(), step=100)
    for name, params in before.items():
        moved = any(not torch.equal(p0, p1) for p0, p1 in zip(params, getattr(agent, name).parameters()))
        assert moved, f"{name} did not change"
    for key in ("critic_loss", "actor_loss", "critic_q1", "critic_target_q", "batch_reward", "std"):
        assert np.isfinite(metrics[key]), key
    assert metrics["std"] == pytest.approx(Schedule(agent.cfg.std_schedule)(100))


def test_critic_loss_falls_on_a_fixed_batch():
    agent = make_agent(lr=1e-3)
    batch = make_batch(seed=1)
    losses = [agent.update(batch, step=100)["critic_loss"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_soft_target_update_math():
    agent = make_agent()
    agent.critic_opt.param_groups[0]["lr"] = 0.0  # freeze the critic: only the target update moves things
    agent.encoder_opt.param_groups[0]["lr"] = 0.0
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    critic = [p.detach().clone() for p in agent.critic.parameters()]
    target = [p.detach().clone() for p in agent.critic_target.parameters()]
    agent.update(make_batch(), step=100)
    tau = agent.cfg.critic_target_tau
    for c, t_old, t_new in zip(critic, target, agent.critic_target.parameters()):
        torch.testing.assert_close(t_new, (1 - tau) * t_old + tau * c)


def test_channels_last_matches_contiguous():
    a, b = make_agent(channels_last=True), make_agent(channels_last=False)
    batch = make_batch()
    torch.manual_seed(3)
    ma = a.update(batch, step=100)
    torch.manual_seed(3)
    mb = b.update(batch, step=100)
    assert ma["critic_loss"] == pytest.approx(mb["critic_loss"], rel=1e-4)


def test_bfloat16_encoder_keeps_features_and_heads_float32(monkeypatch):
    """encoder_precision=bfloat16 runs the convolutions under autocast: close to float32, float32 features,
    float32 parameters and Q values; `auto` follows the bf16 detection (the tests pin it off)."""
    fp32, bf16 = make_agent(), make_agent(encoder_precision="bfloat16")
    images = fp32._images(make_batch().obs, augment=False)
    features = bf16._encode(images)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, fp32._encode(images), atol=0.05, rtol=0.05)
    assert not torch.equal(features, fp32._encode(images))  # it did run in bf16
    batch = make_batch()
    torch.manual_seed(3)
    m32 = fp32.update(batch, step=100)
    torch.manual_seed(3)
    m16 = bf16.update(batch, step=100)
    assert m16["critic_loss"] == pytest.approx(m32["critic_loss"], rel=0.05)
    assert all(p.dtype == torch.float32 for p in bf16.encoder.parameters())
    assert make_agent(encoder_precision="auto").encoder_dtype == torch.float32  # IVG_CPU_BF16=0 in tests
    monkeypatch.setenv("IVG_CPU_BF16", "1")
    assert make_agent(encoder_precision="auto").encoder_dtype == torch.bfloat16


def test_state_dict_round_trip_continues_identically(tmp_path):
    a = make_agent()
    a.update(make_batch(seed=1), step=100)
    save_checkpoint(tmp_path / "agent.pt", a.state_dict())
    b = make_agent()
    b.load_state_dict(load_checkpoint(tmp_path / "agent.pt"))
    torch.manual_seed(7)
    ma = a.update(make_batch(seed=2), step=101)
    torch.manual_seed(7)
    mb = b.update(make_batch(seed=2), step=101)
    assert ma == mb
    for pa, pb in zip(a.actor.parameters(), b.actor.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(
    "bad",
    [
        {"batch_size": 0},
        {"critic_target_tau": 1.5},
        {"std_schedule": "linear(1,2)"},
        {"num_expl_steps": -1},
        {"encoder_precision": "half"},
    ],
)
def test_bad_config_is_one_line_error(bad):
    with pytest.raises(ValueError) as err:
        DrQV2Config(**bad)
    assert "\n" not in str(err.value)
