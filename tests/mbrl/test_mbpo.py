"""MBPO: the schedule's firing frames, building the world model, the config checks, the agent-batch mix and
the resumable state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.drqv2 import DrQV2Agent, DrQV2Config
from core.schedule import Cadence
from mbrl.mbpo import (
    MBPO,
    LoopSettings,
    MBPOConfig,
    ScheduleConfig,
    build_schedule,
    describe,
    draw_text,
    model_arguments,
)
from mbrl.replay import ReplayBuffer
from world_model.build import build_model
from world_model.imagination_config import ImaginationConfig

REPEAT = 2


def firing_frames(cadence: Cadence, last_frame: int, span: int = REPEAT) -> dict[int, int]:
    """{frame: runs} over the agent steps at frames 0, span, 2 span, ... <= last_frame."""
    runs = {frame: cadence.runs(frame, span) for frame in range(0, last_frame + 1, span)}
    return {frame: n for frame, n in runs.items() if n}


def test_paper_schedule_fires_at_the_papers_frames():
    schedule = build_schedule(ScheduleConfig(), action_repeat=REPEAT, num_expl_steps=2000, episode_length=100)
    fired = {name: firing_frames(c, 6000) for name, c in schedule.cadences.items()}
    assert fired["init_train"] == {4000: 1000}  # once the 4,000 seed frames are in
    assert list(fired["transformer"]) == list(range(4010, 6001, 10)) and set(fired["transformer"].values()) == {1}
    assert list(fired["tokenizer"]) == list(range(4040, 6001, 40))
    assert fired["imagine"] == {4000: 20, **{f: 1 for f in range(4200, 6001, 200)}}
    assert list(fired["validate"]) == [4000, 5000, 6000]  # every 5 episodes of 200 frames
    assert schedule.total_runs(5000)["transformer"] == 100
    due = schedule.due(4040)
    assert due == {"init_train": 0, "tokenizer": 1, "transformer": 1, "validate": 0, "imagine": 0}


def test_schedule_periods_of_zero_turn_parts_off_and_bad_orders_are_rejected():
    cfg = ScheduleConfig(seed_frames=100, tokenizer_every_frames=0, validate_every_episodes=0,
                         imagination_start_frames=100)
    schedule = build_schedule(cfg, REPEAT, num_expl_steps=0, episode_length=10)
    assert set(schedule.cadences) == {"init_train", "transformer", "imagine"}
    with pytest.raises(ValueError, match="imagination_start_frames=50 comes before"):
        build_schedule(ScheduleConfig(seed_frames=100, imagination_start_frames=50), REPEAT, 0, 10)
    with pytest.raises(ValueError, match="shorter than one agent step"):
        build_schedule(ScheduleConfig(transformer_every_frames=1), REPEAT, 2000, 100)


@pytest.mark.parametrize("override,words", [
    ({"real_ratio": 1.5}, "real_ratio"),
    ({"reward_alignment": "late"}, "reward_alignment"),
    ({"schedule": {"init_train_steps": -1}}, "init_train_steps"),
    ({"schedule": {"seed_frames": 1.5}}, "whole number"),
    ({"rollout": {"horizon": 0}}, "horizon"),
    ({"optim": {"freeze_codebooks": True}}, "world_model.freeze_codebooks"),
    ({"pretrained": "/no/such/folder"}, "not a folder"),
    ({"imagination": {"precision": "half"}}, "world_model.imagination.precision"),
    ({"imagination": {"graphs": True}}, "graphs"),
    ({"imagination": {"cpu_chunk_rows": 0}}, "world_model.imagination.cpu_chunk_rows"),
    ({"imagination": {"compile_decoder": "yes"}}, "world_model.imagination.compile_decoder"),
    ({"typo": 1}, "typo"),
])
def test_bad_config_values_are_one_line_errors(override, words):
    with pytest.raises(ValueError) as err:
        MBPOConfig.from_dict(override)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_the_engine_knobs_reach_the_world_model(tmp_path, tiny_checkpoint):
    mbpo = tiny_mbpo(filled_replay(), tmp_path, imagination={"compile": False, "prefill_precision": "bfloat16"})
    assert mbpo.model.imaginer.config == ImaginationConfig(compile=False, prefill_precision="bfloat16")
    assert MBPOConfig.from_dict({}).imagination == ImaginationConfig()
    engine = ImaginationConfig(cuda_graphs=False, decoder_precision="float32")
    arguments, origin = model_arguments(MBPOConfig(pretrained=str(tiny_checkpoint), imagination=engine), 4,
                                        torch.device("cpu"))
    tuned = build_model(**arguments)
    assert tuned.imaginer.config == engine
    assert origin == f"fine-tuned from {tiny_checkpoint}" and describe(tuned, origin, 4).endswith("M parameters")
    with pytest.raises(ValueError, match="takes 4-d actions but the env has 3"):
        describe(tuned, origin, 3)


def test_the_preset_follows_the_device_unless_named():
    arguments, origin = model_arguments(MBPOConfig(), 4, torch.device("cpu"), image_size=32)
    assert arguments["preset"] == "cpu" and arguments["image_size"] == 32 and arguments["reward_head"]
    assert origin.startswith("preset cpu (auto: no CUDA device") and "32x32 frames" in origin
    assert model_arguments(MBPOConfig(), 4, torch.device("cuda"))[0]["preset"] == "paper64"
    assert model_arguments(MBPOConfig(preset="tiny"), 4, torch.device("cuda"))[0]["preset"] == "tiny"


def test_codebooks_are_frozen_when_fine_tuning(tiny_checkpoint):
    assert not MBPOConfig().frozen_codebooks
    assert MBPOConfig(pretrained=str(tiny_checkpoint)).frozen_codebooks
    assert not MBPOConfig(pretrained=str(tiny_checkpoint), freeze_codebooks=False).frozen_codebooks


# --------------------------------------------------------------------------------- MBPO on real parts
EPISODE = 12


def filled_replay(episodes: int = 3, seed: int = 0, size: int = 64) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    replay = ReplayBuffer(200, (3, size, size), 4, frame_stack=3, nstep=3, discount=0.99, seed=seed)
    for _ in range(episodes):
        replay.add_episode(rng.integers(0, 256, (EPISODE + 1, 3, size, size), dtype=np.uint8),
                           rng.uniform(-1, 1, (EPISODE, 4)), rng.uniform(0, 1, EPISODE))
    return replay


def tiny_agent(size: int = 64) -> DrQV2Agent:
    torch.manual_seed(0)
    return DrQV2Agent((9, size, size), 4, DrQV2Config(hidden_dim=16, feature_dim=8, num_filters=4, num_conv_layers=1,
                                                  num_expl_steps=0), "cpu")


def tiny_mbpo(replay: ReplayBuffer, tmp_path, agent: DrQV2Agent | None = None, **overrides) -> MBPO:
    agent = agent or tiny_agent()
    cfg = MBPOConfig.from_dict({
        "preset": "tiny", "segment_batch_size": 2, "segment_length": 4, "imagined_capacity": 30,
        "schedule": {"seed_frames": 0, "init_train_steps": 1, "transformer_every_frames": 0,
                     "tokenizer_every_frames": 0, "imagination_start_frames": 4, "init_rollout_batches": 1,
                     "rollout_every_frames": 4, "validate_every_episodes": 0},
        "rollout": {"batch_size": 2, "horizon": 3}, **overrides,
    })
    loop = LoopSettings(frame_stack=3, action_repeat=REPEAT, episode_length=EPISODE, nstep=3, discount=0.99, seed=1,
                        device=torch.device("cpu"), run_dir=tmp_path)
    return MBPO(cfg, agent, replay, loop, video_format=None)


def test_agent_batches_are_real_until_imagination_then_split_exactly(tmp_path):
    replay = filled_replay()
    mbpo = tiny_mbpo(replay, tmp_path, real_ratio=0.25)
    metrics = mbpo.on_step(0)  # initial training (1 update of each part)
    assert mbpo.status()["wm/init_updates"] == 1 and "wm/transformer/ce" in metrics
    assert metrics["wm/segments_per_s"] > 0 and "imagination/transitions_per_s" not in metrics
    state = replay.rng.bit_generator.state
    batch = mbpo.agent_batch(8)
    replay.rng.bit_generator.state = state
    assert torch.equal(batch.obs, replay.sample(8).obs)  # all real before any rollout

    metrics = mbpo.on_step(2)  # agent step 2 = frame 4, the first imagination: 1 batch of 2 rollouts of 3 steps
    assert "imagination/reward_mean" in metrics and len(mbpo.imagined) == 6
    assert metrics["imagination/transitions_per_s"] > 0 and "wm/segments_per_s" not in metrics
    assert mbpo.on_step(3) == {}  # frame 6: nothing due
    state = replay.rng.bit_generator.state
    batch = mbpo.agent_batch(8)
    replay.rng.bit_generator.state = state
    real = replay.sample(2)  # round(0.25 * 8) real rows, first
    assert batch.obs.shape == (8, 9, 64, 64) and torch.equal(batch.obs[:2], real.obs)
    imagined_frames = mbpo.imagined.latest(2).frames
    for row in batch.obs[2:]:  # the other 6 rows are stacks of stored imagined rollouts
        newest = row[-3:]
        assert any(torch.equal(newest, f) for f in imagined_frames.flatten(0, 1))
    status = mbpo.status()
    assert (status["mbpo/last_batch_real"], status["mbpo/last_batch_imagined"]) == (2, 6)
    assert status["mbpo/real_transitions"] == 8 + 2 and status["mbpo/imagined_transitions"] == 6


def test_state_dict_restores_model_optimizers_imagined_replay_and_generators(tmp_path):
    replay = filled_replay()
    mbpo = tiny_mbpo(replay, tmp_path)
    mbpo.on_step(0)
    mbpo.on_step(2)
    state = mbpo.state_dict()
    other = tiny_mbpo(filled_replay(), tmp_path)
    other.load_state_dict(state)
    assert other.status() == mbpo.status()
    for key, value in mbpo.model.state_dict().items():
        assert torch.equal(value, other.model.state_dict()[key]), key
    torch.manual_seed(5)
    mbpo.on_step(4)  # a second imagination on each: same rollouts
    torch.manual_seed(5)
    other.on_step(4)
    assert torch.equal(mbpo.imagined.latest(4).frames, other.imagined.latest(4).frames)
    assert torch.equal(mbpo.imagined.sample(4).reward, other.imagined.sample(4).reward)


def test_validation_scores_the_newest_episodes_and_writes_videos(tmp_path):
    mbpo = tiny_mbpo(filled_replay(), tmp_path, validation={"batch_size": 2, "video_segments": 1,
                                                            "video_rollouts": 2})
    mbpo.video_format = "gif"
    mbpo.on_step(0)
    mbpo.on_step(2)
    logged = []

    class Sink:
        def log_video(self, key: str, path, frame: int) -> None:
            logged.append((key, path, frame))

    mbpo.videos = Sink()
    metrics = mbpo.validate(frame=4)
    assert {"val/psnr", "val/mse", "val/copy_last_mse", "val/reward_mse"} <= set(metrics)
    assert metrics["val/psnr"] == pytest.approx(-10 * np.log10(metrics["val/mse"]), rel=0.2)
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["imagined_4.gif", "val_4.gif"]
    assert [args[0] for args in logged] == ["val/video", "imagination/video"] and {a[2] for a in logged} == {4}


def test_validation_segments_come_from_the_newest_frames_only():
    replay = filled_replay(episodes=3)
    window = EPISODE + 1  # the last episode's frames
    batch = replay.sample_recent_segments(16, 4, window, np.random.default_rng(0))
    last_episode = torch.from_numpy(replay._frames[2 * window:3 * window])
    for segment in batch.frames:
        assert any(torch.equal(segment[0], f) for f in last_episode)
    assert replay.sample_recent_segments(4, 20, window, np.random.default_rng(0)) is None  # longer than an episode


def test_building_the_world_model_leaves_the_global_random_stream_alone(tmp_path):
    agent = tiny_agent()
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    tiny_mbpo(filled_replay(), tmp_path, agent)
    assert torch.equal(torch.rand(4), expected)  # the agent explores as with world_model=none


def test_a_fresh_world_model_is_built_for_the_env_frame_size(tmp_path, tiny_checkpoint):
    mbpo = tiny_mbpo(filled_replay(size=32), tmp_path, tiny_agent(32))
    layout = mbpo.model.layout(3)
    assert mbpo.model.tokenizer.config.resolution == 32
    assert (layout.tokens_per_context_frame, layout.tokens_per_future_frame) == (64, 4)  # 8x8 latent, 4x4 patches
    mbpo.on_step(0)  # initial training, then the first rollouts
    mbpo.on_step(2)
    assert mbpo.status()["imagination/rollouts"] > 0
    assert mbpo.agent_batch(8).obs.shape == (8, 9, 32, 32)
    with pytest.raises(ValueError, match="use env.image_size=64"):  # a checkpoint keeps its frame size
        tiny_mbpo(filled_replay(size=32), tmp_path, tiny_agent(32), pretrained=str(tiny_checkpoint))


def test_a_published_checkpoint_is_fine_tuned_with_new_heads_and_frozen_codebooks(tmp_path, tiny_checkpoint):
    mbpo = tiny_mbpo(filled_replay(), tmp_path, pretrained=str(tiny_checkpoint), preset="paper64")
    model = mbpo.model
    assert model.action_dim == 4 and model.has_reward_head
    assert torch.count_nonzero(model.transformer.action_linear.weight) == 0  # fresh, zero-initialised
    codebook = model.tokenizer.quantize.embedding.weight
    assert not codebook.requires_grad
    before = codebook.clone()
    mbpo.on_step(0)  # initial training updates everything else
    assert torch.equal(codebook, before) and torch.count_nonzero(model.transformer.action_linear.weight) > 0


def test_draw_text_writes_digits():
    frame = np.full((3, 16, 32), 100, dtype=np.uint8)
    draw_text(frame, "-1.5")
    assert frame[:, :7, :17].max() == 255 and frame[:, :7, :17].min() == 0  # white glyphs on a black box
    assert (frame[:, 8:] == 100).all() and (frame[:, :, 17:] == 100).all()
