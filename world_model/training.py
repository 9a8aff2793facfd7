"""Training and evaluation of the iVideoGPT world model, shared by ``python -m world_model.train`` and MBPO.

The inputs are ``SegmentBatch`` es (``mbrl.replay`` or ``world_model.data.EpisodeDataset``): frames uint8
``(B, T, 3, H, W)``, actions ``(B, T, A)``, rewards ``(B, T)`` in the segment convention (``actions[:, k]``
taken at frame k, ``rewards[:, k]`` of the transition out of frame k). The first T0 frames are context.

- :class:`WorldModelTrainer`: the trainable parts (``world_model.parts``: tokenizer and transformer, each with
  its optimizer, schedule, loss and mode) updated by the one generic ``world_model.parts.update``, with a
  resumable ``state_dict``; :class:`OptimConfig` sets them up.
- ``world_model.evaluation``: open-loop imagination under the real actions scored against the real frames and
  a copy-last-frame baseline (:func:`evaluate_open_loop`), and teacher-forced losses.
- ``world_model.build``: :func:`build_model`, the one way to build a model to train.

"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.batch import SegmentBatch
from world_model.codebook import CodebookMonitor, CodebookOptions
from world_model.distributed import DDPLoss, Distributed
from world_model.evaluation import OpenLoop, evaluate_open_loop, teacher_forced_losses
from world_model.model import IVideoGPT
from world_model.parts import (
    TrainablePart,
    model_device,
    tokenizer_part,
    transformer_part,
    update,
)


@dataclass
class OptimConfig:
    """Optimizer settings of both parts (defaults: the MBRL fine-tuning settings).

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
        freeze_codebooks: keep both codebooks fixed (fine-tuning a pre-trained tokenizer).
        tokenizer_dropout: the cross-attention dropout (0.1) of the tokenizer in its updates. Off by default, as
            the official MBRL loop fine-tunes the tokenizer in eval mode; on a CPU it also makes an update
            several times slower (CPU attention has no fused dropout).
        mixed_precision: bf16 autocast where the hardware has bf16 arithmetic (``core.precision``).
        codebook_window: tokenizer updates over which codebook use is logged; a code unused that long is dead
            (``world_model.codebook``).
        restart_dead_codes: set dead codes to latents of the current batch (off: as the official training).
        codebook_init: ``uniform`` (as built) or ``data`` (every code set to a first-batch latent).
        codebook_lr_scale: the codebooks' learning rate as a multiple of ``tokenizer_lr``.
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
    codebook_window: int = 100
    restart_dead_codes: bool = False
    codebook_init: str = "uniform"
    codebook_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.codebook_options()  # checks the codebook settings
        for name in ("tokenizer_lr", "transformer_lr", "weight_decay", "grad_clip", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps={self.total_steps} must be >= 1 or None (constant learning rate)")
        if self.max_target_frames is not None and self.max_target_frames < 1:
            raise ValueError(f"max_target_frames={self.max_target_frames} must be >= 1 or None (all)")

    def codebook_options(self) -> CodebookOptions:
        return CodebookOptions(window=int(self.codebook_window), restart_dead=bool(self.restart_dead_codes),
                               init=self.codebook_init, lr_scale=float(self.codebook_lr_scale))


class WorldModelTrainer:
    """The trainable parts of a world model (tokenizer, transformer), each updated by the one generic
    :func:`world_model.parts.update`.

    MBPO calls :meth:`update_tokenizer` and :meth:`update_transformer` at their own cadences on batches
    from the replay; ``python -m world_model.train`` on batches from episode folders.

    Args:
        model: the world model, already on its device.
        cfg: optimizer settings; ``freeze_codebooks`` is applied before the tokenizer optimizer is built.
        perceptual: LPIPS module for the tokenizer loss (moved to the model's device), or None.
        distributed: this process's place in a ``torchrun`` job: in a world of more than one, each part's
            loss runs through ``DistributedDataParallel`` (gradients averaged over ranks); None: one process.
        accumulation: micro-batches per update (gradient accumulation, ``world_model.parts.update``).
    """

    def __init__(self, model: IVideoGPT, cfg: OptimConfig, perceptual: nn.Module | None = None,
                 distributed: Distributed | None = None, accumulation: int = 1) -> None:
        self.model, self.cfg, self.accumulation = model, cfg, accumulation
        self.device = model_device(model)
        self.perceptual = None if perceptual is None else perceptual.to(self.device)
        tokenizer = tokenizer_part(model, cfg.tokenizer_lr, cfg.betas, freeze_codebooks=cfg.freeze_codebooks,
                                   max_target_frames=cfg.max_target_frames, perceptual=self.perceptual,
                                   perceptual_weight=cfg.perceptual_weight, grad_clip=cfg.grad_clip,
                                   dropout=cfg.tokenizer_dropout, codebook=cfg.codebook_options())
        transformer = transformer_part(model, cfg.transformer_lr, cfg.weight_decay, cfg.betas,
                                       warmup_steps=cfg.warmup_steps, total_steps=cfg.total_steps,
                                       grad_clip=cfg.grad_clip)
        self.parts: dict[str, TrainablePart] = {part.name: part for part in (tokenizer, transformer)}
        if distributed is not None and distributed.enabled:
            for part in self.parts.values():
                part.loss = DDPLoss(part.module, part.loss, distributed)

    # ------------------------------------------------------------------------------------- updates
    def update(self, name: str, batch: SegmentBatch) -> dict[str, float]:
        """One optimizer step of the part ``name`` on ``batch`` (moved to the model's device once here).

        Args:
            name: ``tokenizer`` or ``transformer``.
            batch: frames uint8 (B, T, 3, H, W), T > T0; actions (B, T, A) for an action-conditioned model and
                rewards (B, T) for a model with a reward head (the transformer's loss needs them).

        Returns:
            ``<name>/loss``, its sub-losses (tokenizer: ``recon_l1``, ``ref_recon_l1``, ``commit``,
            ``dyn_commit``, perceptual terms and the codebook health ``{context,dynamics}_{codes_used,
            perplexity,dead_codes}``; transformer: ``ce``, ``reward``), ``<name>/grad_norm``,
            ``<name>/lr`` (the rate this step used).
        """
        part = self.parts[name]
        return update(part, batch.to(self.device, non_blocking=True), self.device, self.cfg.mixed_precision,
                      self.accumulation)

    def update_tokenizer(self, batch: SegmentBatch) -> dict[str, float]:
        """One tokenizer step (:meth:`update`)."""
        return self.update("tokenizer", batch)

    def update_transformer(self, batch: SegmentBatch) -> dict[str, float]:
        """One transformer step (:meth:`update`)."""
        return self.update("transformer", batch)

    @property
    def tokenizer_updates(self) -> int:
        return self.parts["tokenizer"].updates

    @property
    def transformer_updates(self) -> int:
        return self.parts["transformer"].updates

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, batch: SegmentBatch, temperature: float = 1.0, top_k: int | None = 100,
                 generator: torch.Generator | None = None, per_step: bool = False) -> OpenLoop:
        """Open-loop rollouts and scores (see :func:`evaluate_open_loop`; frames (B, T, 3, H, W)), the
        teacher-forced ``ce`` / ``reward`` added to the scores."""
        batch = batch.to(self.device)
        result = evaluate_open_loop(self.model, batch, temperature, top_k, generator, self.cfg.mixed_precision,
                                    per_step)
        result.scores.update(teacher_forced_losses(self.model, batch, self.cfg.mixed_precision))
        return result

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Per part: ``<name>_optimizer``, ``<name>_scheduler`` (parts with a schedule), ``<name>_updates`` and the
        tokenizer's codebook windows, ``tokenizer_codebooks`` (the weights are saved with ``save_pretrained``)."""
        state: dict[str, Any] = {}
        for name, part in self.parts.items():
            state[f"{name}_optimizer"] = part.optimizer.state_dict()
            if part.schedule is not None:
                state[f"{name}_scheduler"] = part.schedule.state_dict()
        state.update({f"{name}_updates": part.updates for name, part in self.parts.items()})
        for name, part in self.parts.items():
            if isinstance(part.after_step, CodebookMonitor):
                state[f"{name}_codebooks"] = part.after_step.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`. Learning rates follow this run's config, not the checkpoint's (the same
        numbers unless the config was changed for the resumed launch, e.g. a lower tokenizer rate; the optimizer
        state would keep the old); a schedule continues from its position with the new peak."""
        rates = {"tokenizer": self.cfg.tokenizer_lr, "transformer": self.cfg.transformer_lr}
        for name, part in self.parts.items():
            part.optimizer.load_state_dict(state[f"{name}_optimizer"])
            if part.schedule is not None:
                part.schedule.load_state_dict(state[f"{name}_scheduler"])
            part.updates = int(state[f"{name}_updates"])
            if isinstance(part.after_step, CodebookMonitor):
                if f"{name}_codebooks" in state:
                    part.after_step.load_state_dict(state[f"{name}_codebooks"])
                elif part.updates:  # an older checkpoint: empty windows, and never codebooks from data again
                    part.after_step.init_pending = False
            part.reset_learning_rate(rates[name])
