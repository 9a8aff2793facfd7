"""Training and evaluation of the iVideoGPT world model, shared by ``python -m world_model.train`` and MBPO.

The inputs are ``SegmentBatch`` es (``mbrl.replay`` or ``world_model.data.EpisodeDataset``): frames uint8
``(B, T, 3, H, W)``, actions ``(B, T, A)``, rewards ``(B, T)`` in the segment convention (``actions[:, k]``
taken at frame k, ``rewards[:, k]`` of the transition out of frame k). The first T0 frames are context.

- :func:`tokenizer_update` / :func:`transformer_update`: one optimizer step of either part (separate
  optimizers, so each can run at its own cadence), gradient clipping, bf16 autocast on CUDA only.
- :func:`evaluate_open_loop`: imagine the future frames from the context under the real actions
  (``IVideoGPT.reset`` / ``step``) and score them against the real frames and a copy-last-frame baseline.
- :class:`WorldModelTrainer`: both optimizers, the transformer's cosine schedule and the update counters,
  with a resumable ``state_dict``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from core.batch import SegmentBatch
from core.precision import autocast
from world_model.imagination import ImaginationConfig, module_mode
from world_model.layout import RewardAlignment
from world_model.model import IVideoGPT, base_layout
from world_model.presets import get_preset
from world_model.tokenizer import CompressiveTokenizer, TokenizerConfig
from world_model.transformer import WorldModelTransformer

MAX_PIXEL = 255.0


@dataclass
class OptimConfig:
    """Optimizer settings of both parts (defaults: the MBRL fine-tuning settings, DESIGN §2, §5, §6).

    Attributes:
        tokenizer_lr: tokenizer learning rate (official tokenizer pre-training: 5e-4; fine-tuning: 1e-4).
        transformer_lr: peak transformer learning rate.
        weight_decay: AdamW weight decay of the transformer (none on embeddings, norms, biases); the
            tokenizer is trained without weight decay, as in the official tokenizer script.
        betas: Adam betas of both optimizers.
        grad_clip: max global gradient norm per part (0: no clipping).
        warmup_steps: linear warm-up of the transformer learning rate, in transformer updates.
        total_steps: transformer updates of the cosine schedule (to 0 at the end); None keeps the rate
            constant after warm-up (MBPO, where the run length is open-ended).
        max_target_frames: future frames per segment the tokenizer loss reconstructs.
        perceptual_weight: weight of the LPIPS term when a perceptual module is given.
        freeze_codebooks: keep both codebooks fixed (fine-tuning a pre-trained tokenizer, DESIGN §2).
        tokenizer_dropout: the cross-attention dropout (0.1) of the tokenizer in its updates. Off by default, as
            the official MBRL loop fine-tunes the tokenizer in eval mode; on a CPU it also makes an update about
            2.5x slower (CPU attention has no fused dropout, see ``docs/world_model.md``).
        mixed_precision: bf16 autocast where the hardware has bf16 arithmetic (``core.precision``).
    """

    tokenizer_lr: float = 1e-4
    transformer_lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup_steps: int = 0
    total_steps: int | None = None
    max_target_frames: int | None = 5
    perceptual_weight: float = 1.0
    freeze_codebooks: bool = False
    tokenizer_dropout: bool = False
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        for name in ("tokenizer_lr", "transformer_lr", "weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps} must be >= 1 or None (constant learning rate)")
        if self.max_target_frames is not None and self.max_target_frames < 1:
            raise ValueError(f"max_target_frames={self.max_target_frames} must be >= 1 or None (all)")


# ------------------------------------------------------------------------------------- building
def build_model(preset: str = "cpu", pretrained: str | os.PathLike | None = None, *, action_dim: int | None = None,
                reward_head: bool = False, image_size: int | None = None, context_frames: int | None = None,
                attention_dropout: float | None = None, reward_alignment: RewardAlignment = "clean",
                tokenizer_overrides: Mapping[str, Any] | None = None,
                transformer_overrides: Mapping[str, Any] | None = None,
                imagination: ImaginationConfig | None = None) -> IVideoGPT:
    """A world model to train: fresh from a named preset, or loaded from a checkpoint folder to fine-tune.

    Args:
        preset: size of a fresh model (``world_model.presets.PRESETS``); ignored with ``pretrained``.
        pretrained: checkpoint folder in the published layout (``tokenizer/``, ``transformer/``).
        action_dim: action size for an action-conditioned model (a checkpoint without an action map gets a
            fresh zero-initialised one), None for action-free.
        reward_head: add a reward head (a fresh one when the checkpoint has none).
        image_size: side of the training frames. A fresh tokenizer is built for it (its cross-attention
            resolution scaled with its latent map); a checkpoint must match it.
        context_frames: T0. A fresh tokenizer is built for it; a checkpoint's can only be shortened (the last
            frames' key position embeddings are kept, as the official code does). None: the preset's /
            checkpoint's.
        attention_dropout: transformer attention dropout (the paper trains with 0.1); None keeps the preset's
            / checkpoint's value.
        reward_alignment: ``clean`` or ``official`` (see ``IVideoGPT``).
        tokenizer_overrides / transformer_overrides: ``TokenizerConfig`` / ``TransformerConfig`` fields to
            change in a fresh model (e.g. a smaller test model); block types follow ``block_out_channels``.
        imagination: the rollout engine's knobs (default ``ImaginationConfig()``).

    Returns:
        the model on the CPU, in eval mode.
    """
    if pretrained is not None:
        if tokenizer_overrides or transformer_overrides:
            raise ValueError("tokenizer/transformer overrides change the architecture of a fresh model; they do "
                             "not apply to a pretrained checkpoint (drop them or the pretrained path)")
        model = IVideoGPT.from_pretrained(pretrained, action_dim=action_dim, reward_head=reward_head or None,
                                          attention_dropout=attention_dropout, reward_alignment=reward_alignment,
                                          imagination=imagination)
        tokenizer = model.tokenizer
        if image_size is not None and image_size != tokenizer.config.resolution:
            raise ValueError(f"the checkpoint's tokenizer takes {tokenizer.config.resolution}x"
                             f"{tokenizer.config.resolution} frames but the data has {image_size}x{image_size}; "
                             "record the data at the checkpoint's size")
        if context_frames is not None and context_frames != model.context_frames:
            tokenizer.set_context_length(context_frames)
            model = IVideoGPT(tokenizer, model.transformer, reward_alignment=reward_alignment,
                              imagination=imagination).eval()
        return model
    spec = get_preset(preset)
    base = TokenizerConfig.preset(spec.tokenizer)
    overrides = dict(tokenizer_overrides or {})
    if image_size is not None:
        overrides.setdefault("resolution", image_size)
    if context_frames is not None:
        overrides.setdefault("context_length", context_frames)
    if "block_out_channels" in overrides:
        depth = len(overrides["block_out_channels"])
        overrides.setdefault("down_block_types", (base.down_block_types[0],) * depth)
        overrides.setdefault("up_block_types", (base.up_block_types[0],) * depth)
    tok_cfg = _replace_checked(base, {k: v for k, v in overrides.items() if k != "max_att_resolution"}, "tokenizer")
    # cross-attention reaches the same share of the latent map at any frame size and depth (16 of 16 at 64x64)
    scaled = max(base.max_att_resolution * tok_cfg.latent_size // base.latent_size, 1)
    tok_cfg = replace(tok_cfg, max_att_resolution=overrides.get("max_att_resolution", scaled))
    tf_cfg = spec.transformer_config(base_layout(tok_cfg).vocab_size)
    tf_overrides = dict(transformer_overrides or {})
    if attention_dropout is not None:
        tf_overrides.setdefault("attention_dropout", attention_dropout)
    tf_cfg = _replace_checked(tf_cfg, tf_overrides, "transformer")
    transformer = WorldModelTransformer(tf_cfg, action_dim=action_dim, reward_head=reward_head)
    return IVideoGPT(CompressiveTokenizer(tok_cfg), transformer, reward_alignment=reward_alignment,
                     imagination=imagination).eval()


def _replace_checked(config: Any, overrides: Mapping[str, Any], what: str) -> Any:
    known = {f.name for f in fields(config)} - {"extra", "vocab_size"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; choose from {sorted(known)}")
    return replace(config, **overrides) if overrides else config


# ---------------------------------------------------------------------------------------- helpers
def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [0, 1] (float frames are passed through)."""
    return frames.float() / MAX_PIXEL if frames.dtype == torch.uint8 else frames.float()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _actions(model: IVideoGPT, batch: SegmentBatch) -> torch.Tensor | None:
    """The batch's actions when the model is action-conditioned (one clear error when they are missing)."""
    if model.action_dim is None:
        return None
    if batch.actions is None:
        raise ValueError("the world model is action-conditioned but the batch has no actions; train on data with "
                         "actions or build the model action-free (action_conditioned=false)")
    return batch.actions.float()


def _rewards(model: IVideoGPT, batch: SegmentBatch) -> torch.Tensor | None:
    """The batch's rewards when the model has a reward head (one clear error when they are missing)."""
    if not model.has_reward_head:
        return None
    if batch.rewards is None:
        raise ValueError("the world model has a reward head but the batch has no rewards; train on data with "
                         "rewards or build the model without one (reward_head=false)")
    return batch.rewards.float()


def _step(parameters: list[nn.Parameter], optimizer: torch.optim.Optimizer, loss: torch.Tensor,
          grad_clip: float) -> torch.Tensor:
    """Backward, clip, step; returns the gradient norm before clipping."""
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def _metrics(prefix: str, loss: torch.Tensor, parts: dict[str, torch.Tensor], grad_norm: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> dict[str, float]:
    # one host sync for all values
    values = torch.stack([loss.detach().float(), grad_norm.float(), *(p.float() for p in parts.values())]).tolist()
    out = {f"{prefix}/loss": values[0], f"{prefix}/grad_norm": values[1]}
    out.update({f"{prefix}/{name}": v for name, v in zip(parts, values[2:])})
    out[f"{prefix}/lr"] = optimizer.param_groups[0]["lr"]
    return out


# ------------------------------------------------------------------------------------ optimizers
def tokenizer_optimizer(model: IVideoGPT, lr: float, betas: tuple[float, float] = (0.9, 0.999)
                        ) -> torch.optim.Optimizer:
    """AdamW without weight decay over the tokenizer's trainable parameters (frozen codebooks left out:
    freeze them before building the optimizer)."""
    params = list(model.tokenizer.trainable_parameters())
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=0.0, fused=True)


def transformer_optimizer(model: IVideoGPT, lr: float, weight_decay: float,
                          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """AdamW over the transformer with no decay on embeddings, norms and biases (its ``param_groups``)."""
    return torch.optim.AdamW(model.transformer.param_groups(weight_decay), lr=lr, betas=betas, fused=True)


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int,
                    total_steps: int | None) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps`` (constant if None)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None:
            return 1.0
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------- updates
def tokenizer_update(model: IVideoGPT, optimizer: torch.optim.Optimizer, batch: SegmentBatch,
                     max_target_frames: int | None = 5, perceptual: nn.Module | None = None,
                     perceptual_weight: float = 1.0, grad_clip: float = 1.0,
                     mixed_precision: bool = True, dropout: bool = False) -> dict[str, float]:
    """One tokenizer step on a batch of segments (context frames: plain path; future frames: conditional).

    Args:
        model: the world model (only its tokenizer is trained here).
        optimizer: built by :func:`tokenizer_optimizer`.
        batch: frames uint8 (B, T, 3, H, W) on the model's device, T > T0.
        max_target_frames: future frames reconstructed per segment (a random subset when there are more).
        perceptual: LPIPS module (inputs in [-1, 1]) or None.
        perceptual_weight: weight of the LPIPS terms.
        grad_clip: max gradient norm (0: none).
        mixed_precision: bf16 autocast where native (``core.precision``).
        dropout: the tokenizer in training mode (its cross-attention dropout on); False: eval mode, as the
            official MBRL fine-tuning (dropout is all that differs between the modes).

    Returns:
        ``tokenizer/loss``, ``tokenizer/<part>`` (``recon_l1``, ``ref_recon_l1``, ``commit``, ``dyn_commit``,
        perceptual terms), ``tokenizer/grad_norm``, ``tokenizer/lr``.
    """
    device = model_device(model)
    frames = to_unit(batch.frames.to(device, non_blocking=True))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with module_mode(dropout, model.tokenizer), autocast(device, mixed_precision):
        loss, parts = model.tokenizer_loss(frames, max_target_frames=max_target_frames, perceptual=perceptual,
                                           perceptual_weight=perceptual_weight)
    grad_norm = _step(params, optimizer, loss, grad_clip)
    return _metrics("tokenizer", loss, {k: v.detach() for k, v in parts.items()}, grad_norm, optimizer)


def transformer_update(model: IVideoGPT, optimizer: torch.optim.Optimizer, batch: SegmentBatch,
                       scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, grad_clip: float = 1.0,
                       mixed_precision: bool = True) -> dict[str, float]:
    """One transformer step: tokenize the segments with the current tokenizer (no grad), then next-token
    cross-entropy on the future frames' tokens plus the reward loss.

    Args:
        model: the world model (only its transformer is trained here).
        optimizer: built by :func:`transformer_optimizer`.
        batch: frames uint8 (B, T, 3, H, W), actions (B, T, A) for an action-conditioned model, rewards (B, T)
            for a model with a reward head; on the model's device.
        scheduler: learning-rate schedule stepped after the update, or None.
        grad_clip: max gradient norm (0: none).
        mixed_precision: bf16 autocast where native (``core.precision``).

    Returns:
        ``transformer/loss``, ``transformer/ce``, ``transformer/reward`` (with a reward head),
        ``transformer/grad_norm``, ``transformer/lr`` (the rate this step used).
    """
    device = model_device(model)
    batch = batch.to(device, non_blocking=True)
    actions, rewards = _actions(model, batch), _rewards(model, batch)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    with autocast(device, mixed_precision):
        tokens, _ = model.tokenize(to_unit(batch.frames))
        with module_mode(True, model.transformer):
            loss, parts = model.transformer_loss(tokens, actions, rewards)
    grad_norm = _step(params, optimizer, loss, grad_clip)
    metrics = _metrics("transformer", loss, parts, grad_norm, optimizer)
    if scheduler is not None:
        scheduler.step()
    return metrics


# ------------------------------------------------------------------------------------ evaluation
def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1] from their mean squared error (floored at 1e-10)."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


@dataclass
class OpenLoop:
    """What an open-loop evaluation scored and the frames it scored, so that videos show the same rollouts."""

    scores: dict[str, float]
    predicted: torch.Tensor  # float in [0, 1] (B, T - T0, 3, H, W): the imagined future frames, on the model's device


@torch.no_grad()
def evaluate_open_loop(model: IVideoGPT, batch: SegmentBatch, temperature: float = 1.0, top_k: int | None = 100,
                       generator: torch.Generator | None = None, mixed_precision: bool = True) -> OpenLoop:
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

    Returns:
        the imagined frames and their scores: ``mse``, ``psnr`` of the imagined frames; ``copy_last_mse``, ``copy_last_psnr`` of repeating the last
        context frame; ``recon_mse`` of the tokenizer's reconstruction of the real future frames (the floor
        imagination can reach); ``reward_mse`` (with a reward head and rewards; targets in the model's reward
        alignment); ``horizon``.
    """
    device = model_device(model)
    batch = batch.to(device)
    frames = to_unit(batch.frames)
    context_frames = model.context_frames
    horizon = frames.shape[1] - context_frames
    if horizon < 1:
        raise ValueError(f"segments of {frames.shape[1]} frames leave nothing to imagine after "
                         f"T0={context_frames} context frames")
    actions = _actions(model, batch)
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
        recon = model.detokenize(model.tokenize(frames)[0])[:, context_frames:].float().clamp(0.0, 1.0)
    prediction = torch.stack(imagined, dim=1)
    copy_last = frames[:, context_frames - 1:context_frames].expand_as(target)

    def frame_mse(x: torch.Tensor) -> torch.Tensor:
        return (x - target).pow(2).mean(dim=(2, 3, 4))  # (B, K)

    errors = {"mse": frame_mse(prediction), "copy_last_mse": frame_mse(copy_last), "recon_mse": frame_mse(recon)}
    scores = {name: e.mean() for name, e in errors.items()}
    scores["psnr"] = psnr(errors["mse"]).mean()
    scores["copy_last_psnr"] = psnr(errors["copy_last_mse"]).mean()
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
    actions, rewards = _actions(model, batch), _rewards(model, batch)
    was_training = model.transformer.training
    model.transformer.eval()
    try:
        with autocast(device, mixed_precision):
            _, parts = model.transformer_loss(to_unit(batch.frames), actions, rewards)
    finally:
        model.transformer.train(was_training)
    return dict(zip(parts, torch.stack([p.float() for p in parts.values()]).tolist()))


# ------------------------------------------------------------------------------------- trainer
class WorldModelTrainer:
    """Both optimizers of a world model, the transformer's schedule and the update counters.

    MBPO calls :meth:`update_tokenizer` and :meth:`update_transformer` at their own cadences on batches
    from the replay; ``python -m world_model.train`` on batches from episode folders.

    Args:
        model: the world model, already on its device.
        cfg: optimizer settings; ``freeze_codebooks`` is applied here, before the tokenizer optimizer is built.
        perceptual: LPIPS module for the tokenizer loss (moved to the model's device), or None.
    """

    def __init__(self, model: IVideoGPT, cfg: OptimConfig, perceptual: nn.Module | None = None) -> None:
        self.model, self.cfg = model, cfg
        self.device = model_device(model)
        self.perceptual = None if perceptual is None else perceptual.to(self.device)
        model.tokenizer.freeze_codebooks(cfg.freeze_codebooks)
        self.tokenizer_optimizer = tokenizer_optimizer(model, cfg.tokenizer_lr, cfg.betas)
        self.transformer_optimizer = transformer_optimizer(model, cfg.transformer_lr, cfg.weight_decay, cfg.betas)
        self.transformer_scheduler = cosine_schedule(self.transformer_optimizer, cfg.warmup_steps, cfg.total_steps)
        self.tokenizer_updates = 0
        self.transformer_updates = 0

    def update_tokenizer(self, batch: SegmentBatch) -> dict[str, float]:
        """One tokenizer step (see :func:`tokenizer_update`)."""
        metrics = tokenizer_update(self.model, self.tokenizer_optimizer, batch.to(self.device),
                                   max_target_frames=self.cfg.max_target_frames, perceptual=self.perceptual,
                                   perceptual_weight=self.cfg.perceptual_weight, grad_clip=self.cfg.grad_clip,
                                   mixed_precision=self.cfg.mixed_precision, dropout=self.cfg.tokenizer_dropout)
        self.tokenizer_updates += 1
        return metrics

    def update_transformer(self, batch: SegmentBatch) -> dict[str, float]:
        """One transformer step (see :func:`transformer_update`)."""
        metrics = transformer_update(self.model, self.transformer_optimizer, batch.to(self.device),
                                     scheduler=self.transformer_scheduler, grad_clip=self.cfg.grad_clip,
                                     mixed_precision=self.cfg.mixed_precision)
        self.transformer_updates += 1
        return metrics

    def evaluate(self, batch: SegmentBatch, temperature: float = 1.0, top_k: int | None = 100,
                 generator: torch.Generator | None = None) -> OpenLoop:
        """Open-loop rollouts and scores (see :func:`evaluate_open_loop`), the teacher-forced ``ce`` / ``reward``
        added to the scores."""
        batch = batch.to(self.device)
        result = evaluate_open_loop(self.model, batch, temperature, top_k, generator, self.cfg.mixed_precision)
        result.scores.update(teacher_forced_losses(self.model, batch, self.cfg.mixed_precision))
        return result

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and schedule states and counters (the weights are saved with ``save_pretrained``)."""
        return {
            "tokenizer_optimizer": self.tokenizer_optimizer.state_dict(),
            "transformer_optimizer": self.transformer_optimizer.state_dict(),
            "transformer_scheduler": self.transformer_scheduler.state_dict(),
            "tokenizer_updates": self.tokenizer_updates,
            "transformer_updates": self.transformer_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokenizer_optimizer.load_state_dict(state["tokenizer_optimizer"])
        self.transformer_optimizer.load_state_dict(state["transformer_optimizer"])
        self.transformer_scheduler.load_state_dict(state["transformer_scheduler"])
        self.tokenizer_updates = int(state["tokenizer_updates"])
        self.transformer_updates = int(state["transformer_updates"])
        # Learning rates follow this run's config, not the checkpoint's (the same numbers unless the config was
        # changed for the resumed launch, e.g. a lower tokenizer rate; the optimizer state would keep the old).
        for group in self.tokenizer_optimizer.param_groups:
            group["lr"] = self.cfg.tokenizer_lr
        scheduler = self.transformer_scheduler
        scheduler.base_lrs = [self.cfg.transformer_lr] * len(scheduler.base_lrs)
        for group, factor in zip(self.transformer_optimizer.param_groups, scheduler.lr_lambdas, strict=True):
            group["initial_lr"] = self.cfg.transformer_lr
            group["lr"] = self.cfg.transformer_lr * factor(scheduler.last_epoch)
