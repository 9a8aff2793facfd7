"""World-model training: update functions, open-loop evaluation, the `python -m world_model.train` CLI (outputs,
resume, fine-tuning the reference checkpoint with frozen codebooks) and a short convergence run.

The data are scripted door_open episodes with action noise, recorded on the fly with `mbrl.collect` (the
convergence check needs real motion); the fine-tuning test writes random episode files directly. The
convergence run uses a "test" size of the cpu preset (TEST_TOKENIZER / TEST_TRANSFORMER: 16x16 frames, 0.4M + 0.1M parameters) so
that a few hundred updates stay cheap on one CPU core.
"""
from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_csv
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from core.batch import SegmentBatch
from core.precision import autocast
from mbrl.collect import CollectConfig, collect
from world_model import parts
from world_model.build import build_model
from world_model.data.dataset import EpisodeDataset
from world_model.evaluation import evaluate_open_loop, psnr
from world_model.model import IVideoGPT
from world_model.parts import cosine_schedule, tokenizer_optimizer, transformer_optimizer
from world_model.train import STATE_FILE, WorldModelRun
from world_model.train_config import PartConfig, WorldModelTrainConfig
from world_model.training import OptimConfig, WorldModelTrainer

REPO = Path(__file__).resolve().parents[2]
# A smaller "test" configuration of the cpu preset: 16x16 frames, two down blocks (an 8x8 latent: 64 context
# tokens per frame), 2x2 patches (16 dynamics tokens per frame), 64-entry codebooks and a 2-layer transformer.
TEST_TOKENIZER = {"block_out_channels": [16, 32], "norm_num_groups": 8, "latent_channels": 16,
                  "num_vq_embeddings": 64, "num_dyn_embeddings": 64, "patch_size": 2}
TEST_TRANSFORMER = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128}
TEST_OVERRIDES = [f"+tokenizer_overrides.{k}={v}".replace(" ", "") for k, v in TEST_TOKENIZER.items()] + \
                 [f"+transformer_overrides.{k}={v}" for k, v in TEST_TRANSFORMER.items()]
SEGMENT = 12  # 2 context + 10 imagined frames
# Action repeat 4 (instead of the MBRL protocol's 2): frames change enough within a segment that copying the
# last context frame is a baseline a model has to predict motion to beat.
EPISODE = {"task": "door_open", "image_size": 16, "episode_length": 30, "noise": 0.3, "action_repeat": 4}


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    """8 training and 3 held-out scripted episodes (31 frames each), under train/ and val/."""
    root = tmp_path_factory.mktemp("episodes")
    collect(CollectConfig(out=str(root / "train"), episodes=8, seed=0, **EPISODE))
    collect(CollectConfig(out=str(root / "val"), episodes=3, seed=100, **EPISODE))
    return root


def write_random_episodes(folder: Path, episodes: int, length: int, size: int, action_dim: int = 4) -> None:
    """Episode files in the recorded layout (frames uint8 (T, H, W, 3), actions (T, A), rewards (T,)) with
    random contents."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for index in range(episodes):
        np.savez_compressed(folder / f"episode_{index}.npz",
                            image=rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8),
                            action=rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
                            reward=rng.uniform(0, 1, length).astype(np.float32))


def small_model(**kwargs) -> IVideoGPT:
    return build_model("cpu", image_size=EPISODE["image_size"], tokenizer_overrides=TEST_TOKENIZER,
                       transformer_overrides=TEST_TRANSFORMER, **kwargs)


def compose_config(*overrides: str) -> WorldModelTrainConfig:
    """The CLI's config (configs/world_model_train.yaml) with command-line style overrides."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="world_model_train", overrides=list(overrides))
    return WorldModelTrainConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))


# ------------------------------------------------------------------------------------------ units
def test_cosine_schedule_warms_up_then_decays_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    schedule = cosine_schedule(opt, warmup_steps=4, total_steps=12)
    rates = []
    for _ in range(12):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0) and rates[8] == pytest.approx(0.5)
    assert all(a > b for a, b in itertools.pairwise(rates[4:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    constant = cosine_schedule(torch.optim.SGD([param], lr=1.0), warmup_steps=0, total_steps=None)
    assert constant.get_last_lr() == [1.0]


def test_optimizers_leave_frozen_codebooks_and_norms_alone():
    model = small_model(action_dim=4, reward_head=True)
    model.tokenizer.freeze_codebooks()
    tok_params = {id(p) for g in tokenizer_optimizer(model, 1e-3).param_groups for p in g["params"]}
    assert id(model.tokenizer.quantize.embedding.weight) not in tok_params
    assert id(model.tokenizer.dynamics_quantize.embedding.weight) not in tok_params
    assert len(tok_params) == sum(p.requires_grad for p in model.tokenizer.parameters())
    groups = transformer_optimizer(model, 1e-4, weight_decay=0.01).param_groups
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    llm = model.transformer.llm
    assert id(llm.model.embed_tokens.weight) in no_decay and id(llm.model.norm.weight) in no_decay
    assert id(llm.lm_head.weight) not in no_decay
    assert {g["weight_decay"] for g in groups} == {0.0, 0.01}


def test_tokenizer_dropout_is_a_switch_of_the_update():
    """dropout=False (MBPO's default, as the official MBRL loop) updates in eval mode: no random numbers are
    drawn and equal starts give equal steps; dropout=True draws its masks."""
    size = EPISODE["image_size"]
    frames = torch.randint(0, 256, (2, 5, 3, size, size), dtype=torch.uint8)
    batch = SegmentBatch(frames)  # 3 future frames <= max_target_frames: no random subset either

    def update(dropout: bool) -> tuple[torch.Tensor, bool]:
        torch.manual_seed(0)
        model = small_model()
        part = parts.tokenizer_part(model, 1e-3, dropout=dropout)
        state = torch.get_rng_state()
        metrics = parts.update(part, batch, torch.device("cpu"), mixed_precision=False)
        assert not model.tokenizer.training  # the mode is restored
        assert part.updates == 1 and {"tokenizer/loss", "tokenizer/recon_l1", "tokenizer/grad_norm",
                                      "tokenizer/lr"} <= set(metrics)
        weight = next(model.tokenizer.parameters()).detach().clone()
        return weight, torch.equal(state, torch.get_rng_state())

    (off, untouched), (off_again, _), (on, drew) = update(False), update(False), update(True)
    assert untouched and not drew
    assert torch.equal(off, off_again) and not torch.equal(off, on)


def test_one_update_trains_each_part_with_its_own_optimizer_and_schedule():
    """The generic update steps only the named part's parameters, steps its schedule after the step (the
    metrics carry the rate the step used) and counts it; the batch may live on any device."""
    torch.manual_seed(0)
    model = small_model(action_dim=4, reward_head=True)
    trainer = WorldModelTrainer(model, OptimConfig(warmup_steps=2, total_steps=4, mixed_precision=False))
    size = EPISODE["image_size"]
    batch = SegmentBatch(torch.randint(0, 256, (2, 4, 3, size, size), dtype=torch.uint8),
                         torch.rand(2, 4, 4) * 2 - 1, torch.rand(2, 4))
    tokenizer_before = [p.detach().clone() for p in model.tokenizer.parameters()]
    transformer_before = [p.detach().clone() for p in model.transformer.parameters()]
    first = trainer.update_transformer(batch)
    second = trainer.update("transformer", batch)
    assert {"transformer/loss", "transformer/ce", "transformer/reward", "transformer/grad_norm",
            "transformer/lr"} <= set(first)
    assert (first["transformer/lr"], second["transformer/lr"]) == pytest.approx((0.5e-4, 1e-4))
    assert all(torch.equal(a, b) for a, b in zip(tokenizer_before, model.tokenizer.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(transformer_before, model.transformer.parameters()))
    assert (trainer.tokenizer_updates, trainer.transformer_updates) == (0, 2)
    assert model.transformer.training is False  # the mode of the loss is restored
    tokenizer = trainer.update_tokenizer(batch)
    assert {"tokenizer/loss", "tokenizer/recon_l1", "tokenizer/commit", "tokenizer/lr"} <= set(tokenizer)
    assert tokenizer["tokenizer/lr"] == 1e-4 and trainer.tokenizer_updates == 1


def test_a_resumed_trainer_takes_its_learning_rates_from_its_config():
    model = small_model()
    cfg = OptimConfig(tokenizer_lr=5e-4, transformer_lr=5e-4, warmup_steps=2, total_steps=10)
    trainer = WorldModelTrainer(model, cfg)
    transformer = trainer.parts["transformer"]
    for _ in range(4):
        transformer.optimizer.step()  # no gradients: only the schedule moves
        transformer.schedule.step()
    state = trainer.state_dict()
    # the keys existing checkpoints hold, and the codebook windows (optional on load: test_codebook.py)
    assert set(state) == {"tokenizer_optimizer", "transformer_optimizer", "transformer_scheduler",
                          "tokenizer_updates", "transformer_updates", "tokenizer_codebooks"}
    same = WorldModelTrainer(model, cfg)
    same.load_state_dict(state)
    assert [g["lr"] for g in same.parts["transformer"].optimizer.param_groups] == \
        [g["lr"] for g in transformer.optimizer.param_groups]  # an unchanged config resumes exactly
    lower = WorldModelTrainer(model, replace(cfg, tokenizer_lr=1e-4, transformer_lr=1e-4))
    lower.load_state_dict(state)
    assert {g["lr"] for g in lower.parts["tokenizer"].optimizer.param_groups} == {1e-4}
    factor = transformer.optimizer.param_groups[0]["lr"] / 5e-4
    lower_transformer = lower.parts["transformer"]
    assert lower_transformer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * factor)
    lower_transformer.optimizer.step()
    lower_transformer.schedule.step()  # and the schedule continues from the new peak
    assert lower_transformer.optimizer.param_groups[0]["lr"] == pytest.approx(
        1e-4 * transformer.schedule.lr_lambdas[0](5))


def test_autocast_is_off_on_cpu():
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_build_model_derives_sizes_and_rejects_bad_settings(tiny_checkpoint):
    model = build_model("cpu", image_size=32, context_frames=1)
    cfg = model.tokenizer.config
    # the preset's cross-attention covers its whole 16x16 latent at 64x64: the whole 8x8 latent at 32x32
    assert (cfg.resolution, cfg.latent_size, cfg.max_att_resolution, model.context_frames) == (32, 8, 8, 1)
    with pytest.raises(ValueError, match="unknown tokenizer settings"):
        build_model("cpu", tokenizer_overrides={"latent_chanels": 8})
    with pytest.raises(ValueError, match="do not apply to a pretrained"):
        build_model("cpu", tiny_checkpoint, tokenizer_overrides={"latent_channels": 8})
    with pytest.raises(ValueError, match="64x64 frames but the data has 32x32"):
        build_model("cpu", tiny_checkpoint, image_size=32)
    shortened = build_model("cpu", tiny_checkpoint, action_dim=4, context_frames=1)
    assert shortened.context_frames == 1 and shortened.action_dim == 4


def test_evaluate_open_loop_per_step_and_context_reconstruction_scores():
    torch.manual_seed(0)
    model = small_model(action_dim=4, reward_head=True)
    frames = torch.randint(0, 256, (2, 5, 3, 16, 16), dtype=torch.uint8)
    batch = SegmentBatch(frames, torch.rand(2, 5, 4) * 2 - 1, torch.rand(2, 5))
    result = evaluate_open_loop(model, batch, generator=torch.Generator().manual_seed(0), per_step=True)
    scores, x = result.scores, frames.float() / 255
    per_frame = (result.predicted - x[:, 2:]).pow(2).mean(dim=(2, 3, 4))  # (B, K)
    copy_last = (x[:, 2:] - x[:, 1:2]).pow(2).mean(dim=(2, 3, 4))
    for k in range(3):
        assert scores[f"psnr_{k + 1}"] == pytest.approx(psnr(per_frame[:, k]).mean().item(), rel=1e-5)
        assert scores[f"copy_last_psnr_{k + 1}"] == pytest.approx(psnr(copy_last[:, k]).mean().item(), rel=1e-5)
    assert "psnr_4" not in scores
    with torch.no_grad():
        recon = model.detokenize(model.tokenize(x)[0]).float().clamp(0, 1)
    context = (recon[:, :2] - x[:, :2]).pow(2).mean(dim=(2, 3, 4))
    assert scores["context_recon_mse"] == pytest.approx(context.mean().item(), rel=1e-4)
    assert scores["context_recon_psnr"] == pytest.approx(psnr(context).mean().item(), rel=1e-4)
    assert scores["recon_psnr"] > 0
    plain = evaluate_open_loop(model, batch, generator=torch.Generator().manual_seed(0)).scores
    assert "psnr_1" not in plain and plain["mse"] == scores["mse"]


def test_evaluate_open_loop_scores_against_real_frames_and_copy_last():
    torch.manual_seed(0)
    model = small_model(action_dim=4, reward_head=True)
    frames = torch.randint(0, 256, (3, 5, 3, 16, 16), dtype=torch.uint8)
    frames[0] = frames[0, 1]  # a static segment: copying the last context frame is exact
    batch = SegmentBatch(frames, torch.rand(3, 5, 4) * 2 - 1, torch.rand(3, 5))
    result = evaluate_open_loop(model, batch, generator=torch.Generator().manual_seed(0))
    scores = result.scores
    x = frames.float() / 255
    copy_last = (x[:, 2:] - x[:, 1:2]).pow(2).mean(dim=(2, 3, 4))
    assert copy_last[0].eq(0).all()
    assert scores["copy_last_mse"] == pytest.approx(copy_last.mean().item(), rel=1e-5)
    assert scores["copy_last_psnr"] == pytest.approx(psnr(copy_last).mean().item(), rel=1e-5)
    assert scores["psnr"] == pytest.approx(-10 * math.log10(scores["mse"]), abs=3.0)  # per-frame mean vs overall
    assert scores["mse"] > 0 and scores["recon_mse"] > 0 and scores["reward_mse"] >= 0
    assert scores["horizon"] == 3
    # the scores are those of the frames it returns
    assert result.predicted.shape == (3, 3, 3, 16, 16)
    per_frame = (result.predicted - x[:, 2:]).pow(2).mean(dim=(2, 3, 4))
    assert scores["mse"] == pytest.approx(per_frame.mean().item(), rel=1e-5)
    again = evaluate_open_loop(model, batch, generator=torch.Generator().manual_seed(0))
    assert again.scores == scores and torch.equal(again.predicted, result.predicted)  # seeded: reproducible
    with pytest.raises(ValueError, match="batch has no actions"):
        evaluate_open_loop(model, SegmentBatch(frames))


def test_part_cadence_and_config_errors(episodes):
    cfg = compose_config(f"data={episodes / 'train'}", "steps=10", "transformer.start=4", "transformer.every=3")
    assert [s for s in range(10) if cfg.transformer.due(s)] == [4, 7]
    assert cfg.transformer.updates_in(10) == 2 and cfg.tokenizer.updates_in(10) == 10
    # the cadence is the modulo rule (every=0: never), cut at `stop`
    for every, start, stop in itertools.product(range(4), range(4), (None, 2, 5, 9)):
        if stop is not None and stop <= start:
            continue
        part = PartConfig(every=every, start=start, stop=stop)
        due = [s for s in range(12) if every > 0 and s >= start and (s - start) % every == 0
               and (stop is None or s < stop)]
        assert [s for s in range(12) if part.due(s)] == due
        assert [part.updates_in(n) for n in range(12)] == [sum(s < n for s in due) for n in range(12)]
    staged = compose_config(f"data={episodes / 'train'}", "steps=10", "tokenizer.stop=6", "transformer.start=3")
    assert [s for s in range(10) if staged.tokenizer.due(s)] == [0, 1, 2, 3, 4, 5]
    assert staged.tokenizer.updates_in(10) == 6 and staged.transformer.updates_in(10) == 7
    assert "tokenizer: 6 updates (every 1 steps from step 0 until step 6)" in "\n".join(staged.plan())
    with pytest.raises(ValueError, match="tokenizer.stop=3 must be after tokenizer.start=3"):
        compose_config(f"data={episodes}", "tokenizer.start=3", "tokenizer.stop=3")
    assert cfg.tokenizer_lr == 5e-4 and not cfg.frozen_codebooks  # from scratch: the pre-training settings
    tuned = compose_config(f"data={episodes / 'train'}", "pretrained=/some/checkpoint")
    assert tuned.tokenizer_lr == 1e-4 and tuned.frozen_codebooks
    # codebook remedies: on from scratch, off when fine-tuning (a checkpoint's codebooks stay as published)
    assert (cfg.restart_dead_codes, cfg.codebook_init) == (True, "data")
    assert (tuned.restart_dead_codes, tuned.codebook_init) == (False, "uniform")
    assert (tuned.optim().restart_dead_codes, tuned.optim().codebook_init) == (False, "uniform")
    with pytest.raises(ValueError, match="codebook_init='kmeans' must be auto, uniform or data"):
        compose_config(f"data={episodes}", "tokenizer.codebook_init=kmeans")
    with pytest.raises(ValueError, match="action_conditioned='yes' must be auto, true or false"):
        compose_config(f"data={episodes}", "action_conditioned=yes")
    with pytest.raises(ValueError, match="segment_length=2 must exceed context_frames=2"):
        compose_config(f"data={episodes}", "segment_length=2")
    with pytest.raises(ValueError, match="malloc='system32' must be one of tuned, system"):
        compose_config(f"data={episodes}", "malloc=system32")
    with pytest.raises(ValueError, match="nothing would be trained"):
        compose_config(f"data={episodes}", "tokenizer.every=0", "transformer.every=0")


# ----------------------------------------------------------------------------------- convergence
@pytest.mark.slow
def test_training_converges_and_imagination_beats_copying_the_last_frame(episodes):
    """300 tokenizer updates, then 200 transformer updates (the official two-stage order), batch 4.

    Learning rates are 1e-3 for this 0.5M-parameter model and a few hundred updates (the paper-size settings,
    5e-4 / 1e-4, are the CLI's defaults)."""
    torch.manual_seed(0)
    data = EpisodeDataset(episodes / "train", SEGMENT, seed=0)
    held_out = EpisodeDataset(episodes / "val", SEGMENT).sample(24, np.random.default_rng(1))
    model = small_model(action_dim=data.action_dim, reward_head=True)
    trainer = WorldModelTrainer(model, OptimConfig(tokenizer_lr=1e-3, transformer_lr=1e-3, warmup_steps=20,
                                                   total_steps=200, max_target_frames=2))
    before = evaluate_open_loop(model, held_out, generator=torch.Generator().manual_seed(0)).scores

    tokenizer = [trainer.update_tokenizer(data.sample(4))["tokenizer/recon_l1"] for _ in range(300)]
    transformer = [trainer.update_transformer(data.sample(4))["transformer/ce"] for _ in range(200)]
    after = trainer.evaluate(held_out, generator=torch.Generator().manual_seed(0)).scores

    assert np.mean(tokenizer[-10:]) < 0.25 * tokenizer[0]
    assert after["recon_mse"] < 0.1 * before["recon_mse"]
    # the initial cross-entropy is about ln(64) (uniform over a 64-entry codebook)
    assert np.mean(transformer[-10:]) < 0.3 * transformer[0]
    assert after["ce"] < 0.3 * transformer[0]  # on held-out segments, teacher forced
    # open loop under the real actions, 10 frames ahead, sampled at temperature 1 / top-k 100 as in MBPO
    assert after["mse"] < 0.85 * after["copy_last_mse"], after
    assert after["psnr"] > after["copy_last_psnr"], after
    assert (trainer.tokenizer_updates, trainer.transformer_updates) == (300, 200)


# ------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_end_to_end_writes_a_loadable_checkpoint_and_logs(episodes, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    args = [sys.executable, "-m", "world_model.train", f"data={episodes / 'train'}", f"val_data={episodes / 'val'}",
            f"out={out}", "steps=4", "batch_size=2", "eval_every=2", "eval_segments=2", "checkpoint_every=2",
            "log_every=2", "num_threads=1", "tokenizer.max_target_frames=2", "tokenizer.stop=2", "wandb.mode=offline",
            *TEST_OVERRIDES]
    result = subprocess.run(args, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LPIPS term of the tokenizer loss is off" in result.stdout + result.stderr
    assert "attention_dropout=0.0 tokenizer.dropout=false turns it off" in result.stdout + result.stderr

    model = IVideoGPT.from_pretrained(out / "checkpoint")
    assert model.action_dim == 4 and model.has_reward_head and model.tokenizer.config.resolution == 16
    train = read_csv(out / "train.csv")
    assert [int(r["step"]) for r in train] == [2, 4]
    assert [int(r["frame"]) for r in train] == [2 * 2 * SEGMENT, 4 * 2 * SEGMENT]
    assert {"tokenizer/recon_l1", "transformer/ce", "transformer/reward", "transformer/lr"} <= set(train[0])
    for book in ("context", "dynamics"):  # codebook health (world_model.codebook)
        used = float(train[0][f"tokenizer/{book}_codes_used"])
        assert 0 < used <= 1 and 1 <= float(train[0][f"tokenizer/{book}_perplexity"]) <= used * 64 + 1e-3
        assert 0 <= float(train[0][f"tokenizer/{book}_dead_codes"]) <= 64
    # tokenizer.stop=2: updates at steps 0 and 1 only; the transformer goes on
    assert train[-1].get("tokenizer/recon_l1", "") == "" and train[-1]["transformer/ce"] != ""
    assert "tokenizer: 2 updates (every 1 steps from step 0 until step 2)" in result.stdout
    for row in train:  # throughput: world-model samples per second over the row's steps
        segments, frames = float(row["throughput/segments_per_s"]), float(row["throughput/frames_per_s"])
        assert segments > 0 and frames == pytest.approx(segments * SEGMENT)
    assert f"global batch: 2 segments x {SEGMENT} frames = {2 * SEGMENT} frames per step" in result.stdout
    assert "transformer: 4 updates (every 1 steps from step 0), lr 0.0001 peak" in result.stdout
    assert "constant lr 0.0005, codebooks from data, dead codes restarted" in result.stdout
    evals = read_csv(out / "eval.csv")
    assert [int(r["step"]) for r in evals] == [0, 2, 4]
    assert {"eval/mse", "eval/copy_last_mse", "eval/psnr", "eval/reward_mse", "eval/ce", "eval/context_recon_psnr",
            "eval/psnr_1", f"eval/copy_last_psnr_{SEGMENT - 2}"} <= set(evals[0])
    assert "steps: 4" in (out / "config.yaml").read_text()
    assert list(out.glob("wandb/offline-run-*"))

    bad = subprocess.run([*args[:3], f"data={tmp_path / 'missing'}", f"out={tmp_path / 'bad'}"], check=False,
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: no .npz episodes")


@pytest.mark.slow
def test_resume_continues_the_step_counter_exactly(episodes, tmp_path):
    common = [f"data={episodes / 'train'}", f"val_data={episodes / 'val'}", "batch_size=2", "eval_every=3",
              "eval_segments=2", "checkpoint_every=3", "log_every=1", "num_threads=1", "wandb.mode=disabled",
              "progress_bar=false", "tokenizer.max_target_frames=2", *TEST_OVERRIDES]
    WorldModelRun(compose_config(*common, "steps=6", f"out={tmp_path / 'full'}"), tmp_path / "full").train()
    split = tmp_path / "split"
    interrupted = WorldModelRun(compose_config(*common, "steps=6", f"out={split}"), split)
    interrupted.cfg.steps = 3  # the process stops right after its checkpoint at step 3
    interrupted.train()
    resumed = WorldModelRun(compose_config(*common, "steps=6", f"out={split}"), split)
    assert resumed.step == 3
    resumed.train()

    assert [int(r["step"]) for r in read_csv(split / "train.csv")] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in read_csv(split / "eval.csv")] == [0, 3, 6]
    for part, file in (("tokenizer", "diffusion_pytorch_model.safetensors"), ("transformer", "model.safetensors")):
        full = load_file(tmp_path / "full" / "checkpoint" / part / file)
        cont = load_file(split / "checkpoint" / part / file)
        assert all(torch.equal(full[k], cont[k]) for k in full), f"resumed {part} differs from the uninterrupted run"
    assert read_csv(split / "train.csv")[-1]["transformer/ce"] == read_csv(tmp_path / "full" / "train.csv")[-1][
        "transformer/ce"]
    assert not (split / ".checkpoint.tmp").exists() and (split / "checkpoint" / STATE_FILE).is_file()
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        WorldModelRun(compose_config(*common, "steps=6", "resume=false", f"out={split}"), split)


@pytest.mark.slow
def test_resume_with_a_config_that_builds_another_model_names_the_changed_settings(episodes, tmp_path):
    """An action-free run resumed by a launch whose defaults make it action-conditioned (the data has
    actions) fails in one error that names the settings that changed, not in an optimizer message alone."""
    common = [f"data={episodes / 'train'}", f"val_data={episodes / 'val'}", "batch_size=2", "eval_every=0",
              "checkpoint_every=2", "num_threads=1", "wandb.mode=disabled", "progress_bar=false",
              "tokenizer.max_target_frames=2", *TEST_OVERRIDES]
    run_dir = tmp_path / "run"
    first = compose_config(*common, "steps=2", "action_conditioned=false", "reward_head=false")
    WorldModelRun(first, run_dir).train()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(asdict(first)))  # what the CLI saves
    again = compose_config(*common, "steps=4")
    with pytest.raises(ValueError, match=r"cannot resume .*action_conditioned: False -> auto.*reward_head: "
                                         r"False -> auto.*steps: 2 -> 4"):
        WorldModelRun(again, run_dir, asdict(again))


@pytest.mark.slow
def test_fine_tuning_the_reference_checkpoint_keeps_codebooks_frozen(tiny_checkpoint, tmp_path):
    data = tmp_path / "episodes64"
    write_random_episodes(data, episodes=2, length=8, size=64)
    out = tmp_path / "finetune"
    cfg = compose_config(f"data={data}", f"pretrained={tiny_checkpoint}", f"out={out}", "steps=2", "batch_size=2",
                         "segment_length=6", "eval_every=0", "checkpoint_every=0", "num_threads=1",
                         "wandb.mode=disabled", "progress_bar=false", "tokenizer.max_target_frames=2")
    run = WorldModelRun(cfg, out)
    assert run.trainer.parts["tokenizer"].optimizer.param_groups[0]["lr"] == 1e-4
    run.train()

    original, tuned = (load_file(p / "tokenizer" / "diffusion_pytorch_model.safetensors")
                       for p in (tiny_checkpoint, out / "checkpoint"))
    for key in ("quantize.embedding.weight", "dynamics_quantize.embedding.weight"):
        assert torch.equal(original[key], tuned[key]), f"{key} changed although the codebooks are frozen"
    changed = [k for k in original if not torch.equal(original[k], tuned[k])]
    assert len(changed) > len(original) // 2  # the rest of the tokenizer did train
    model = IVideoGPT.from_pretrained(out / "checkpoint")
    assert model.action_dim == 4 and model.has_reward_head
    bare = load_file(tiny_checkpoint / "transformer" / "model.safetensors")
    assert not torch.equal(bare["lm_head.weight"], model.transformer.llm.lm_head.weight)
