"""Open-loop evaluation of a world model on real segments, and its teacher-forced losses.

The inputs are ``SegmentBatch`` es: frames uint8 ``(B, T, 3, H, W)``, actions ``(B, T, A)``, rewards ``(B, T)``
in the segment convention; the first T0 frames are context, the rest are imagined and scored.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.batch import SegmentBatch
from core.precision import autocast
from world_model.model import IVideoGPT
from world_model.parts import batch_actions, batch_rewards, model_device, to_unit


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] from their mean squared error (floored at 1e-10)."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def weighted_means(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Scores of several batches merged: each key's mean over the batches weighted by their rows ``n``."""
    total = sum(n for n, _ in parts)
    return {key: sum(n * scores[key] for n, scores in parts) / total for key in parts[0][1]}


@dataclass
class OpenLoop:
    """What an open-loop evaluation scored and the frames it scored, so that videos show the same rollouts."""

    scores: dict[str, float]
    predicted: torch.Tensor  # float in [0, 1] (B, T - T0, 3, H, W): the imagined future frames, on the model's device


@torch.no_grad()
def evaluate_open_loop(model: IVideoGPT, batch: SegmentBatch, temperature: float = 1.0, top_k: int | None = 100,
                       generator: torch.Generator | None = None, mixed_precision: bool = True,
                       per_step: bool = False) -> OpenLoop:
    """Imagine each segment's future from its first T0 frames under its real actions and score it.

    The model runs as a batched environment (``reset`` on the context, ``step(actions[:, k])`` per frame),
    exactly as MBPO's rollouts do. Frame scores are means over every pixel of every imagined frame; PSNR is
    averaged per frame.

    Args:
        model: the world model.
        batch: frames uint8 (B, T, 3, H, W), T > T0; actions (B, T, A) for an action-conditioned model;
            rewards (B, T) to score the reward head.
        temperature, top_k: sampling of the dynamics codes (0 temperature: greedy).
        generator: random source on the model's device, for reproducible scores.
        mixed_precision: bf16 autocast where native (``core.precision``).
        per_step: also score each imagined step k = 1..H apart (``psnr_k``, ``copy_last_psnr_k``).

    Returns:
        the imagined frames and their scores: ``mse``, ``psnr`` of the imagined frames; ``copy_last_mse``,
        ``copy_last_psnr`` of repeating the last context frame; ``recon_mse``, ``recon_psnr`` of the tokenizer's
        reconstruction of the real future frames (the floor imagination can reach) and ``context_recon_mse``,
        ``context_recon_psnr`` of its context frames (the plain path); ``reward_mse`` (with a reward head and
        rewards; targets in the model's reward alignment); ``horizon``.
    """
    device = model_device(model)
    batch = batch.to(device)
    frames = to_unit(batch.frames)
    context_frames = model.context_frames
    horizon = frames.shape[1] - context_frames
    if horizon < 1:
        raise ValueError(f"segments of {frames.shape[1]} frames leave nothing to imagine after "
                         f"T0={context_frames} context frames")
    actions = batch_actions(model, batch)
    target = frames[:, context_frames:]
    # the imagination engine picks its own precision (bf16 on CUDA)
    model.reset(frames[:, :context_frames], horizon=horizon, temperature=temperature, top_k=top_k,
                generator=generator)
    imagined, rewards = [], []
    for k in range(horizon):
        frame, reward = model.step(None if actions is None else actions[:, context_frames - 1 + k])
        imagined.append(frame.float())
        rewards.append(reward)
    with autocast(device, mixed_precision):
        recon = model.detokenize(model.tokenize(frames)[0]).float().clamp(0.0, 1.0)
    prediction = torch.stack(imagined, dim=1)
    copy_last = frames[:, context_frames - 1:context_frames].expand_as(target)

    def frame_mse(x: torch.Tensor, real: torch.Tensor = target) -> torch.Tensor:
        return (x - real).pow(2).mean(dim=(2, 3, 4))  # (B, K)

    errors = {"mse": frame_mse(prediction), "copy_last_mse": frame_mse(copy_last),
              "recon_mse": frame_mse(recon[:, context_frames:]),
              "context_recon_mse": frame_mse(recon[:, :context_frames], frames[:, :context_frames])}
    scores = {name: e.mean() for name, e in errors.items()}
    for name in ("psnr", "copy_last_psnr", "recon_psnr", "context_recon_psnr"):
        scores[name] = psnr(errors[name.replace("psnr", "mse")]).mean()
    if per_step:
        for k in range(horizon):
            scores[f"psnr_{k + 1}"] = psnr(errors["mse"][:, k]).mean()
            scores[f"copy_last_psnr_{k + 1}"] = psnr(errors["copy_last_mse"][:, k]).mean()
    if model.has_reward_head and batch.rewards is not None:
        targets = model.layout(horizon).reward_targets(batch.rewards.float(), model.reward_alignment)
        scores["reward_mse"] = (torch.stack(rewards, dim=1).float() - targets).pow(2).mean()
    out = dict(zip(scores, torch.stack(list(scores.values())).tolist()))
    out["horizon"] = float(horizon)
    return OpenLoop(out, prediction)


@torch.no_grad()
def teacher_forced_losses(model: IVideoGPT, batch: SegmentBatch, mixed_precision: bool = True
                          ) -> dict[str, float]:
    """The transformer's losses on real token sequences (eval mode, no dropout): ``ce`` and ``reward``."""
    device = model_device(model)
    batch = batch.to(device)
    actions, rewards = batch_actions(model, batch), batch_rewards(model, batch)
    was_training = model.transformer.training
    model.transformer.eval()
    try:
        with autocast(device, mixed_precision):
            _, parts = model.transformer_loss(to_unit(batch.frames), actions, rewards)
    finally:
        model.transformer.train(was_training)
    return dict(zip(parts, torch.stack([p.float() for p in parts.values()]).tolist()))
