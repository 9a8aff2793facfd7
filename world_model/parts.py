"""The trainable parts of a world model and the one update that trains any of them.

A :class:`TrainablePart` carries everything one optimizer step of a part needs: the module it trains, its
optimizer, its learning-rate schedule (the tokenizer has none), its loss (segments -> loss and named
sub-losses), its gradient clipping and the mode its module is in during the loss (the tokenizer's dropout on
or off; the transformer in training mode). :func:`update` is the step for any part: mode, autocast, loss,
backward, clip, step, schedule, metrics. :func:`tokenizer_part` and :func:`transformer_part` build the two
parts of an ``IVideoGPT``, each with its own optimizer so that each can run at its own cadence.

The inputs are ``SegmentBatch`` es in the segment convention: frames uint8 ``(B, T, 3, H, W)``, actions
``(B, T, A)`` (``actions[:, k]`` taken at frame k), rewards ``(B, T)`` (of the transition out of frame k); the
first T0 frames are context.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.batch import SegmentBatch
from core.precision import autocast
from world_model.codebook import CodebookMonitor, CodebookOptions
from world_model.model import IVideoGPT
from world_model.modes import module_mode

MAX_PIXEL = 255.0
Loss = Callable[[SegmentBatch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


# ---------------------------------------------------------------------------------------- helpers
def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float32 in [0, 1] (float frames are passed through); any shape, e.g. (B, T, 3, H, W)."""
    return frames.float() / MAX_PIXEL if frames.dtype == torch.uint8 else frames.float()


def model_device(model: nn.Module) -> torch.device:
    """The device of the module's (first) parameters."""
    return next(model.parameters()).device


def batch_actions(model: IVideoGPT, batch: SegmentBatch) -> torch.Tensor | None:
    """The batch's actions (B, T, A) as float when the model is action-conditioned, else None (one clear error
    when they are missing)."""
    if model.action_dim is None:
        return None
    if batch.actions is None:
        raise ValueError("the world model is action-conditioned but the batch has no actions; train on data with "
                         "actions or build the model action-free (action_conditioned=false)")
    return batch.actions.float()


def batch_rewards(model: IVideoGPT, batch: SegmentBatch) -> torch.Tensor | None:
    """The batch's rewards (B, T) as float when the model has a reward head, else None (one clear error when
    they are missing)."""
    if not model.has_reward_head:
        return None
    if batch.rewards is None:
        raise ValueError("the world model has a reward head but the batch has no rewards; train on data with "
                         "rewards or build the model without one (reward_head=false)")
    return batch.rewards.float()


# ------------------------------------------------------------------------------------ optimizers
def tokenizer_optimizer(model: IVideoGPT, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                        codebook_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """AdamW without weight decay over the tokenizer's trainable parameters (frozen codebooks left out:
    freeze them before building the optimizer). ``codebook_lr_scale != 1`` puts the trainable codebooks in a
    second param group at ``lr * codebook_lr_scale`` (its ``lr_scale``); 1: one group, as before."""
    params = list(model.tokenizer.trainable_parameters())
    codebooks = {id(q.embedding.weight) for q in (model.tokenizer.quantize, model.tokenizer.dynamics_quantize)}
    books = [p for p in params if id(p) in codebooks]
    if codebook_lr_scale == 1.0 or not books:
        groups: list[dict] = [{"params": params}]
    else:
        groups = [{"params": [p for p in params if id(p) not in codebooks]},
                  {"params": books, "lr": lr * codebook_lr_scale, "lr_scale": codebook_lr_scale}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=0.0, fused=True)


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


# ------------------------------------------------------------------------------------------ parts
@dataclass
class TrainablePart:
    """One trainable part of the world model and how it is updated.

    Attributes:
        name: the part's name, the prefix of its metrics (``tokenizer``, ``transformer``).
        module: the module whose mode ``train_mode`` sets during the loss.
        optimizer: steps exactly the parameters this part trains (its param groups).
        loss: segments on the model's device -> (scalar loss, named sub-losses).
        base_lr: the configured (peak) learning rate; a resumed part is set back to it.
        schedule: learning-rate schedule stepped after each update, or None (a constant rate).
        grad_clip: max global gradient norm (0: no clipping).
        train_mode: the module in training mode during the loss (dropout on) or in eval mode.
        updates: optimizer steps taken so far.
        after_step: called after each optimizer step; its named 0-d tensors join the metrics (the tokenizer's
            ``world_model.codebook.CodebookMonitor``), or None.
    """

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Loss
    base_lr: float
    schedule: torch.optim.lr_scheduler.LambdaLR | None = None
    grad_clip: float = 1.0
    train_mode: bool = True
    updates: int = 0
    after_step: Callable[[], dict[str, torch.Tensor]] | None = None

    def parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer steps."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def reset_learning_rate(self, lr: float) -> None:
        """Sets the (peak) rate to ``lr``, keeping the schedule's position (a resumed run with a changed rate)."""
        self.base_lr = lr
        if self.schedule is None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            return
        schedule = self.schedule
        schedule.base_lrs = [lr] * len(schedule.base_lrs)
        for group, factor in zip(self.optimizer.param_groups, schedule.lr_lambdas, strict=True):
            group["initial_lr"] = lr
            group["lr"] = lr * factor(schedule.last_epoch)


def micro_batches(batch: SegmentBatch, count: int) -> list[SegmentBatch]:
    """``batch`` split into ``count`` consecutive chunks along the batch dimension (sizes differ by at most one).

    Raises:
        ValueError: ``count`` is not in [1, B].
    """
    size = batch.frames.shape[0]
    if not 1 <= count <= size:
        raise ValueError(f"grad_accumulation={count} must be in [1, {size}] (the batch size)")
    bounds = [round(i * size / count) for i in range(count + 1)]
    return [SegmentBatch(*(None if t is None else t[a:b] for t in (batch.frames, batch.actions, batch.rewards)))
            for a, b in itertools.pairwise(bounds)]


def update(part: TrainablePart, batch: SegmentBatch, device: torch.device,
           mixed_precision: bool = True, accumulation: int = 1) -> dict[str, float]:
    """One optimizer step of ``part`` on ``batch`` (already on ``device``).

    Mode (``part.train_mode``) and bf16 autocast where native (``core.precision``) around the loss; then
    backward, gradient clipping, the optimizer step, the schedule step. With ``accumulation`` > 1 the batch
    runs as that many micro-batches whose gradients add up (each loss weighted by its share of the rows), so
    the step equals the one on the whole batch while activations take a fraction of the memory; under
    data parallelism (``world_model.distributed.DDPLoss``) only the last micro-batch synchronises gradients.

    Args:
        part: the part to train.
        batch: frames uint8 (B, T, 3, H, W), actions (B, T, A) and rewards (B, T) where the part's loss needs
            them, on ``device``.
        device: the model's device (it picks the autocast).
        mixed_precision: bf16 autocast where native; False: float32.
        accumulation: micro-batches per step.

    Returns:
        ``<name>/loss``, ``<name>/<sub-loss>`` for each named sub-loss (means over the micro-batches, weighted by
        rows) and each ``after_step`` value, ``<name>/grad_norm`` (before clipping) and ``<name>/lr`` (the rate
        this step used).
    """
    chunks = micro_batches(batch, accumulation) if accumulation > 1 else [batch]
    rows = batch.frames.shape[0]
    loss_sum, term_sums = None, {}
    for index, chunk in enumerate(chunks):
        weight = chunk.frames.shape[0] / rows
        last = index == len(chunks) - 1
        no_sync = getattr(part.loss, "no_sync", None)
        with contextlib.nullcontext() if last or no_sync is None else no_sync():
            with module_mode(part.train_mode, part.module), autocast(device, mixed_precision):
                loss, terms = part.loss(chunk)
            (loss * weight).backward() if len(chunks) > 1 else loss.backward()
        loss_sum = loss.detach() * weight if loss_sum is None else loss_sum + loss.detach() * weight
        for name, value in terms.items():
            term_sums[name] = term_sums.get(name, 0.0) + value.detach().float() * weight
    loss, terms = loss_sum, term_sums
    clip = part.grad_clip if part.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(part.parameters(), clip)
    part.optimizer.step()
    part.optimizer.zero_grad(set_to_none=True)
    if part.after_step is not None:
        terms = {**terms, **part.after_step()}
    # one host sync for all values
    values = torch.stack([loss.float(), grad_norm.float(),
                          *(torch.as_tensor(t).detach().float().to(loss.device) for t in terms.values())]).tolist()
    metrics = {f"{part.name}/loss": values[0], f"{part.name}/grad_norm": values[1]}
    metrics.update({f"{part.name}/{name}": v for name, v in zip(terms, values[2:])})
    metrics[f"{part.name}/lr"] = part.optimizer.param_groups[0]["lr"]
    if part.schedule is not None:
        part.schedule.step()
    part.updates += 1
    return metrics


def tokenizer_part(model: IVideoGPT, lr: float, betas: tuple[float, float] = (0.9, 0.999), *,
                   freeze_codebooks: bool = False, max_target_frames: int | None = 5,
                   perceptual: nn.Module | None = None, perceptual_weight: float = 1.0, grad_clip: float = 1.0,
                   dropout: bool = False, codebook: CodebookOptions | None = None) -> TrainablePart:
    """The tokenizer as a part: reconstruction of the context frames (plain path) and of up to
    ``max_target_frames`` future frames per segment (conditional path, a random subset when there are more).

    Args:
        model: the world model; its codebooks are frozen (or unfrozen) here, before the optimizer is built.
        lr: constant learning rate (no schedule, no weight decay, as the official tokenizer script).
        perceptual: LPIPS module (inputs in [-1, 1]) on the model's device, or None; ``perceptual_weight``
            weighs its terms.
        dropout: the tokenizer in training mode in its updates (its cross-attention dropout on); False: eval
            mode, as the official MBRL fine-tuning (dropout is all that differs between the modes).
        codebook: the codebook monitor's window, remedies and learning-rate scale (defaults: logging only).

    The loss's sub-losses: ``recon_l1``, ``ref_recon_l1``, ``commit``, ``dyn_commit`` and perceptual terms; the
    monitor adds ``{context,dynamics}_{codes_used,perplexity,dead_codes}`` (``world_model.codebook``).
    """
    model.tokenizer.freeze_codebooks(freeze_codebooks)
    codebook = codebook or CodebookOptions()
    optimizer = tokenizer_optimizer(model, lr, betas, codebook.lr_scale)
    monitor = CodebookMonitor({"context": model.tokenizer.quantize, "dynamics": model.tokenizer.dynamics_quantize},
                              optimizer, codebook.window, codebook.restart_dead, codebook.init == "data")

    def loss(batch: SegmentBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return model.tokenizer_loss(to_unit(batch.frames), max_target_frames=max_target_frames,
                                    perceptual=perceptual, perceptual_weight=perceptual_weight)

    return TrainablePart("tokenizer", model.tokenizer, optimizer, loss, lr, grad_clip=grad_clip,
                         train_mode=dropout, after_step=monitor)


def transformer_part(model: IVideoGPT, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                     *, warmup_steps: int = 0, total_steps: int | None = None, grad_clip: float = 1.0
                     ) -> TrainablePart:
    """The transformer as a part: the segments tokenized with the current tokenizer (no grad), then next-token
    cross-entropy on the future frames' tokens plus the reward loss (sub-losses ``ce``, ``reward``), in
    training mode (attention dropout on), under a warm-up + cosine schedule (:func:`cosine_schedule`).

    The batch needs actions (B, T, A) for an action-conditioned model and rewards (B, T) for a model with a
    reward head.
    """

    def loss(batch: SegmentBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        actions, rewards = batch_actions(model, batch), batch_rewards(model, batch)
        tokens, _ = model.tokenize(to_unit(batch.frames))
        return model.transformer_loss(tokens, actions, rewards)

    optimizer = transformer_optimizer(model, lr, weight_decay, betas)
    return TrainablePart("transformer", model.transformer, optimizer, loss, lr,
                         schedule=cosine_schedule(optimizer, warmup_steps, total_steps), grad_clip=grad_clip,
                         train_mode=True)
