"""The iVideoGPT token sequence, declared once.

Every token count, id offset, position and mask of the published layout is derived here from six
numbers, so no other module writes a token count down::

    ctx_1 (N) [scf] ctx_2 (N) ... ctx_T0 (N) [sdf] fut_1 (n) [sdf] fut_2 (n) ... [sdf] fut_K (n)

Ids: context codes ``0..C-1``, dynamics codes ``C..C+D-1``, ``scf = C+D``, ``sdf = C+D+1``. The official
layout drops the scf in front of the first context frame, so the context prefix is ``(N+1)*T0 - 1``
tokens long and the whole sequence ``L = (N+1)*T0 - 1 + (n+1)*K`` with ``K = T - T0`` future frames.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100
"""Label value that cross-entropy skips (the Hugging Face / PyTorch convention the checkpoints use)."""

RewardAlignment = Literal["clean", "official"]


@dataclass(frozen=True)
class TokenLayout:
    """Token roles of one segment of ``segment_length`` frames, the first ``context_frames`` of them context.

    Attributes:
        context_frames: T0, frames tokenized by the plain (context) encoder.
        segment_length: T, all frames of the segment; ``T - T0`` future frames follow the context. A rollout
            of horizon K uses ``segment_length = T0 + K`` (see :meth:`with_future_frames`).
        tokens_per_context_frame: N, context codes per context frame.
        tokens_per_future_frame: n, dynamics codes per future frame.
        context_vocab_size: C, entries of the context codebook.
        dynamics_vocab_size: D, entries of the dynamics codebook.
    """

    context_frames: int
    segment_length: int
    tokens_per_context_frame: int
    tokens_per_future_frame: int
    context_vocab_size: int
    dynamics_vocab_size: int

    def __post_init__(self) -> None:
        for name in ("context_frames", "tokens_per_context_frame", "tokens_per_future_frame",
                     "context_vocab_size", "dynamics_vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TokenLayout.{name} must be >= 1, got {getattr(self, name)}")
        if self.segment_length < self.context_frames:
            raise ValueError(
                f"TokenLayout.segment_length ({self.segment_length}) must be >= context_frames "
                f"({self.context_frames}): a segment holds the context frames plus the future frames")

    # ----------------------------------------------------------------------------------------- ids
    @property
    def vocab_size(self) -> int:
        """All ids: both codebooks plus the two separators."""
        return self.context_vocab_size + self.dynamics_vocab_size + 2

    @property
    def dynamics_offset(self) -> int:
        """Id of dynamics code 0."""
        return self.context_vocab_size

    @property
    def scf_id(self) -> int:
        """Separator between context frames."""
        return self.context_vocab_size + self.dynamics_vocab_size

    @property
    def sdf_id(self) -> int:
        """Slot token in front of each future frame (carries the action)."""
        return self.scf_id + 1

    # ----------------------------------------------------------------------------------- lengths
    @property
    def num_future_frames(self) -> int:
        """K = T - T0."""
        return self.segment_length - self.context_frames

    @property
    def prefix_length(self) -> int:
        """Tokens of the context part (context codes and scf separators, the first scf dropped)."""
        return (self.tokens_per_context_frame + 1) * self.context_frames - 1

    @property
    def future_block_length(self) -> int:
        """One slot token plus the codes of one future frame."""
        return self.tokens_per_future_frame + 1

    @property
    def sequence_length(self) -> int:
        """L = (N+1)*T0 - 1 + (n+1)*(T-T0)."""
        return self.prefix_length + self.future_block_length * self.num_future_frames

    @property
    def first_target_position(self) -> int:
        """First position whose label is a real id (everything up to and including the first slot is given)."""
        return self.prefix_length + 1

    def with_future_frames(self, num_future_frames: int) -> TokenLayout:
        """The same layout for another horizon K (rollouts run longer than training segments)."""
        if num_future_frames < 0:
            raise ValueError(f"num_future_frames must be >= 0, got {num_future_frames}")
        return dataclasses.replace(self, segment_length=self.context_frames + num_future_frames)

    def future_frames_in(self, sequence_length: int) -> int:
        """K for a sequence of ``sequence_length`` tokens; ValueError if no K gives that length."""
        extra = sequence_length - self.prefix_length
        if extra < 0 or extra % self.future_block_length:
            raise ValueError(
                f"a token sequence of length {sequence_length} does not fit this layout: it must be "
                f"{self.prefix_length} + {self.future_block_length} * K for K future frames")
        return extra // self.future_block_length

    # --------------------------------------------------------------------------------- positions
    @property
    def scf_positions(self) -> torch.Tensor:
        """(T0 - 1,) positions of the scf separators."""
        return torch.arange(1, self.context_frames) * (self.tokens_per_context_frame + 1) - 1

    @property
    def context_positions(self) -> torch.Tensor:
        """(T0, N) position of every context code."""
        starts = torch.arange(self.context_frames) * (self.tokens_per_context_frame + 1)
        return starts[:, None] + torch.arange(self.tokens_per_context_frame)

    @property
    def slot_positions(self) -> torch.Tensor:
        """(K,) position of the slot token in front of each future frame; the action is added there."""
        return self.prefix_length + torch.arange(self.num_future_frames) * self.future_block_length

    @property
    def future_positions(self) -> torch.Tensor:
        """(K, n) position of every dynamics code."""
        return self.slot_positions[:, None] + 1 + torch.arange(self.tokens_per_future_frame)

    @property
    def reward_positions(self) -> torch.Tensor:
        """(K,) last token of each future frame; the reward head reads the hidden state there."""
        return self.slot_positions + self.tokens_per_future_frame

    @property
    def label_mask(self) -> torch.Tensor:
        """(L,) bool, True where the label is a real id.

        As in the published code, the context and the first slot are masked; later slot tokens stay targets
        (they are always the same id, so they cost the model next to nothing).
        """
        return torch.arange(self.sequence_length) >= self.first_target_position

    # ------------------------------------------------------------------------------ conversions
    def labels(self, ids: torch.Tensor) -> torch.Tensor:
        """Labels for next-token cross-entropy: ``ids`` with masked positions set to ``IGNORE_INDEX``.

        Args:
            ids: (B, L) token ids in this layout.

        Returns:
            (B, L) int64; the shift happens in the loss (logits[:, i] predicts labels[:, i + 1]).
        """
        self._check_ids(ids)
        return ids.masked_fill(~self.label_mask.to(ids.device), IGNORE_INDEX)

    def prefix(self, ctx_codes: torch.Tensor) -> torch.Tensor:
        """Context part of the sequence.

        Args:
            ctx_codes: (B, T0, N) context codebook indices.

        Returns:
            (B, prefix_length) int64 ids.
        """
        self._check_codes("ctx_codes", ctx_codes, self.context_frames, self.tokens_per_context_frame)
        batch = ctx_codes.shape[0]
        scf = ctx_codes.new_full((batch, self.context_frames, 1), self.scf_id)
        # every frame gets a leading scf; the very first one is not part of the official layout
        return torch.cat([scf, ctx_codes], dim=2).reshape(batch, -1)[:, 1:].long()

    def assemble(self, ctx_codes: torch.Tensor, dyn_codes: torch.Tensor) -> torch.Tensor:
        """Interleave codes and separators into the published id layout.

        Args:
            ctx_codes: (B, T0, N) context codebook indices.
            dyn_codes: (B, K, n) dynamics codebook indices (not offset), K = segment_length - T0.

        Returns:
            (B, L) int64 ids.
        """
        self._check_codes("dyn_codes", dyn_codes, self.num_future_frames, self.tokens_per_future_frame)
        if dyn_codes.shape[0] != ctx_codes.shape[0]:
            raise ValueError(f"ctx_codes and dyn_codes have different batch sizes: "
                             f"{ctx_codes.shape[0]} vs {dyn_codes.shape[0]}")
        batch = dyn_codes.shape[0]
        sdf = dyn_codes.new_full((batch, self.num_future_frames, 1), self.sdf_id)
        future = torch.cat([sdf, dyn_codes + self.dynamics_offset], dim=2).reshape(batch, -1)
        return torch.cat([self.prefix(ctx_codes), future.long()], dim=1)

    def split(self, ids: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`assemble`.

        Args:
            ids: (B, L) token ids.
            check: verify that every code position holds an id of its codebook (one host sync).

        Returns:
            ctx_codes (B, T0, N) and dyn_codes (B, K, n), int64 codebook indices.
        """
        self._check_ids(ids)
        batch = ids.shape[0]
        lead = ids.new_full((batch, 1), self.scf_id)
        ctx = torch.cat([lead, ids[:, :self.prefix_length]], dim=1)
        ctx = ctx.reshape(batch, self.context_frames, self.tokens_per_context_frame + 1)[:, :, 1:]
        fut = ids[:, self.prefix_length:].reshape(batch, self.num_future_frames, self.future_block_length)
        dyn = fut[:, :, 1:] - self.dynamics_offset
        if check:
            bad_ctx = bool(((ctx < 0) | (ctx >= self.context_vocab_size)).any())
            bad_dyn = bool(((dyn < 0) | (dyn >= self.dynamics_vocab_size)).any())
            if bad_ctx or bad_dyn:
                where = "context" if bad_ctx else "future-frame"
                raise ValueError(
                    f"ids at {where} code positions fall outside their codebook (context ids 0.."
                    f"{self.context_vocab_size - 1}, dynamics ids {self.dynamics_offset}.."
                    f"{self.scf_id - 1}); sample only from the codebook of each position")
        return ctx.long(), dyn.long()

    def slot_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions added at the slot tokens, from segment actions.

        Segment convention: ``actions[:, k]`` is taken at frame k, so the slot in front of future frame
        ``T0 + j`` carries ``actions[:, T0 - 1 + j]`` (the action that leads to it). The actions of frames
        ``0..T0-2`` and of the last frame lead nowhere inside the segment and are unused.

        Args:
            actions: (B, T, A) with T = segment_length.

        Returns:
            (B, K, A).
        """
        if actions.dim() != 3 or actions.shape[1] != self.segment_length:
            raise ValueError(f"actions must be (B, T={self.segment_length}, A) in the segment convention, "
                             f"got {tuple(actions.shape)}")
        return actions[:, self.context_frames - 1:self.segment_length - 1]

    def reward_targets(self, rewards: torch.Tensor, alignment: RewardAlignment = "clean") -> torch.Tensor:
        """Rewards the head at each future frame is trained on.

        Args:
            rewards: (B, T); ``rewards[:, k]`` is the reward of the transition out of frame k.
            alignment: ``"clean"``: frame k is trained on ``rewards[:, k - 1]``, the transition into it, which
                the model has seen the action of. ``"official"``: frame k on ``rewards[:, k]``, as the
                published MBRL code does (that reward depends on an action the model has not seen yet).

        Returns:
            (B, K).
        """
        if rewards.dim() != 2 or rewards.shape[1] != self.segment_length:
            raise ValueError(f"rewards must be (B, T={self.segment_length}), got {tuple(rewards.shape)}")
        if alignment == "clean":
            start = self.context_frames - 1
        elif alignment == "official":
            start = self.context_frames
        else:
            raise ValueError(f"reward alignment must be 'clean' or 'official', got {alignment!r}")
        return rewards[:, start:start + self.num_future_frames]

    # ---------------------------------------------------------------------------------- checks
    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.dim() != 2 or ids.shape[1] != self.sequence_length:
            raise ValueError(f"token ids must be (B, L={self.sequence_length}) for T0={self.context_frames}, "
                             f"T={self.segment_length}; got {tuple(ids.shape)}")

    @staticmethod
    def _check_codes(name: str, codes: torch.Tensor, frames: int, per_frame: int) -> None:
        if codes.dim() != 3 or codes.shape[1:] != (frames, per_frame):
            raise ValueError(f"{name} must be (B, {frames}, {per_frame}), got {tuple(codes.shape)}")
