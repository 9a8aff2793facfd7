"""The public iVideoGPT world model: tokenizer + transformer behind one facade.

``IVideoGPT`` loads and saves the published checkpoint layout, turns videos into token sequences and back,
gives the training losses, and imagines rollouts as a batched environment (``reset`` / ``step``) through the
rollout engine ``world_model.imagination.Imaginer`` (static KV cache, compiled and graph-captured on GPU).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from core.io import atomic_write, load_checked
from world_model.imagination import Imaginer
from world_model.imagination_config import ImaginationConfig
from world_model.layout import IGNORE_INDEX, RewardAlignment, TokenLayout
from world_model.llama import TransformerConfig
from world_model.modes import eval_mode
from world_model.presets import get_preset
from world_model.sampling import symlog
from world_model.tokenizer import CompressiveTokenizer
from world_model.tokenizer_config import CONFIG_NAME as TOKENIZER_CONFIG
from world_model.tokenizer_config import WEIGHTS_NAME as TOKENIZER_WEIGHTS
from world_model.tokenizer_config import TokenizerConfig
from world_model.transformer import WorldModelTransformer

TOKENIZER_DIR = "tokenizer"
TRANSFORMER_DIR, TRANSFORMER_CONFIG, TRANSFORMER_WEIGHTS = "transformer", "config.json", "model.safetensors"
LLM_PREFIX = "llm."


def check_checkpoint_files(root: Path) -> None:
    """One line naming a missing or damaged file of the checkpoint folder `root` (published layout), before
    anything is loaded from it: a config that is not JSON, weights whose safetensors header does not read.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file is damaged.
    """
    for folder, config, weights in ((TOKENIZER_DIR, TOKENIZER_CONFIG, TOKENIZER_WEIGHTS),
                                    (TRANSFORMER_DIR, TRANSFORMER_CONFIG, TRANSFORMER_WEIGHTS)):
        config_file, weights_file = root / folder / config, root / folder / weights
        for file in (config_file, weights_file):
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing; a checkpoint folder holds tokenizer/ and transformer/ "
                                        "with config.json and safetensors weights")
        try:
            json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config_file} is damaged (not JSON: {err}); restore the checkpoint") from err
        try:
            with safe_open(str(weights_file), framework="pt") as f:
                f.keys()
        except Exception as err:  # safetensors raises its own error type for a bad header or a short file
            raise ValueError(f"{weights_file} is damaged ({err}); restore or re-download the checkpoint") from err


def base_layout(cfg: TokenizerConfig) -> TokenLayout:
    """The token layout of a tokenizer configuration, with no future frames."""
    return TokenLayout(context_frames=cfg.context_length, segment_length=cfg.context_length,
                       tokens_per_context_frame=cfg.tokens_per_context_frame,
                       tokens_per_future_frame=cfg.tokens_per_future_frame,
                       context_vocab_size=cfg.num_vq_embeddings, dynamics_vocab_size=cfg.num_dyn_embeddings)


# ------------------------------------------------------------------------------------ facade
class IVideoGPT(nn.Module):
    """iVideoGPT world model: compressive tokenizer + LLaMA transformer with action and reward heads.

    Args:
        tokenizer: the compressive tokenizer (its config fixes T0, tokens per frame and the codebooks).
        transformer: the transformer; its vocabulary must equal the tokenizer's codebooks plus two separators.
        reward_alignment: which reward the head at future frame k learns: ``"clean"`` (default) the reward
            of the transition into frame k, ``"official"`` the one out of it (the published MBRL code).
        reward_weight: weight of the reward MSE in :meth:`transformer_loss`.
        imagination: performance knobs of the rollout engine behind :meth:`reset` / :meth:`step`.
    """

    def __init__(self, tokenizer: CompressiveTokenizer, transformer: WorldModelTransformer,
                 reward_alignment: RewardAlignment = "clean", reward_weight: float = 1.0,
                 imagination: ImaginationConfig | None = None) -> None:
        super().__init__()
        if reward_alignment not in ("clean", "official"):
            raise ValueError(f"reward_alignment must be 'clean' or 'official', got {reward_alignment!r}")
        self.tokenizer, self.transformer = tokenizer, transformer
        self._layout = base_layout(tokenizer.config)
        if transformer.config.vocab_size != self._layout.vocab_size:
            raise ValueError(f"transformer vocab_size {transformer.config.vocab_size} does not match the tokenizer "
                             f"({self._layout.context_vocab_size} + {self._layout.dynamics_vocab_size} codes + 2 "
                             f"separators = {self._layout.vocab_size})")
        self.reward_alignment: RewardAlignment = reward_alignment
        self.reward_weight = reward_weight
        self.imaginer = Imaginer(transformer, tokenizer, self._layout, imagination)

    # ------------------------------------------------------------------------------ properties
    @property
    def context_frames(self) -> int:
        """T0."""
        return self._layout.context_frames

    @property
    def action_dim(self) -> int | None:
        return self.transformer.action_dim

    @property
    def has_reward_head(self) -> bool:
        return self.transformer.has_reward_head

    def layout(self, num_future_frames: int) -> TokenLayout:
        """Token layout for T0 context frames and ``num_future_frames`` future frames."""
        return self._layout.with_future_frames(num_future_frames)

    def layout_for(self, tokens: torch.Tensor) -> TokenLayout:
        """Token layout matching a (B, L) id tensor."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, L), got {tuple(tokens.shape)}")
        return self.layout(self._layout.future_frames_in(tokens.shape[1]))

    # --------------------------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, name: str, action_dim: int | None = None, reward_head: bool = False,
                    **kwargs: Any) -> IVideoGPT:
        """A freshly initialised model of a named size (``paper64``, ``medium``, ``cpu``, ``tiny``).

        Build it under ``with torch.device("meta"):`` to inspect shapes without allocating.

        Args:
            name: preset name (see ``world_model.presets.PRESETS``).
            action_dim: action size for an action-conditioned model, None for action-free.
            reward_head: add the reward head.
            **kwargs: passed to the constructor (``reward_alignment``, ``reward_weight``, ``imagination``).
        """
        preset = get_preset(name)
        tok_cfg = TokenizerConfig.preset(preset.tokenizer)
        tokenizer = CompressiveTokenizer(tok_cfg)
        transformer = WorldModelTransformer(preset.transformer_config(base_layout(tok_cfg).vocab_size),
                                            action_dim=action_dim, reward_head=reward_head)
        return cls(tokenizer, transformer, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, action_dim: int | None = None,
                        reward_head: bool | None = None, attention_dropout: float | None = None,
                        **kwargs: Any) -> IVideoGPT:
        """Load a checkpoint folder in the published layout (``tokenizer/`` and ``transformer/``).

        The transformer file may be a bare ``LlamaForCausalLM`` state dict (action-free pre-training: keys
        ``model.*``, ``lm_head.weight``) or a fine-tuned one (``llm.*``, ``action_linear.*``,
        ``reward_linear.*``), as :meth:`save_pretrained` writes it.

        Returned in eval mode (call ``train()`` to fine-tune).

        Args:
            path: the checkpoint folder.
            action_dim: None keeps whatever the checkpoint has; a number adds a fresh zero-initialised action
                map when the checkpoint has none (it must match the checkpoint's otherwise).
            reward_head: None keeps what the checkpoint has; True adds a fresh head when it has none.
            attention_dropout: override the config's value (training uses 0.1 in the paper).
            **kwargs: passed to the constructor (``reward_alignment``, ``reward_weight``).
        """
        check_checkpoint_files(Path(path))
        root = Path(path)
        tok_dir, tf_dir = root / TOKENIZER_DIR, root / TRANSFORMER_DIR
        for file in (tok_dir / TOKENIZER_CONFIG, tok_dir / TOKENIZER_WEIGHTS,
                     tf_dir / TRANSFORMER_CONFIG, tf_dir / TRANSFORMER_WEIGHTS):
            if not file.is_file():
                raise FileNotFoundError(f"{file} is missing; a checkpoint folder holds {TOKENIZER_DIR}/"
                                        f"{{{TOKENIZER_CONFIG}, {TOKENIZER_WEIGHTS}}} and {TRANSFORMER_DIR}/"
                                        f"{{{TRANSFORMER_CONFIG}, {TRANSFORMER_WEIGHTS}}}")
        tokenizer = CompressiveTokenizer.from_pretrained(tok_dir)
        tf_cfg = TransformerConfig.from_json_dict(json.loads((tf_dir / TRANSFORMER_CONFIG).read_text()))
        if attention_dropout is not None:
            tf_cfg.attention_dropout = attention_dropout
        state = transformer_state_from_file(load_file(tf_dir / TRANSFORMER_WEIGHTS))
        file_action_dim = state["action_linear.weight"].shape[1] if "action_linear.weight" in state else None
        file_reward = "reward_linear.weight" in state
        if action_dim is not None and file_action_dim is not None and action_dim != file_action_dim:
            raise ValueError(f"action_dim={action_dim} requested but the checkpoint's action_linear takes "
                             f"{file_action_dim} inputs; pass action_dim=None or {file_action_dim}")
        if reward_head is False and file_reward:
            raise ValueError("reward_head=False but the checkpoint has reward_linear.*; pass reward_head=None")
        action_dim = file_action_dim if action_dim is None else action_dim
        reward_head = file_reward if reward_head is None else reward_head
        transformer = WorldModelTransformer(tf_cfg, action_dim=action_dim, reward_head=reward_head)
        # heads the checkpoint lacks keep their fresh init (the action map starts at zero)
        fresh = {k for k in transformer.state_dict() if not k.startswith(LLM_PREFIX) and k not in state}
        load_checked(transformer, state, "transformer", allow_missing=fresh)
        return cls(tokenizer, transformer, **kwargs).eval()

    def export_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """State dicts as written to disk: ``tokenizer`` and ``transformer`` (bare LLaMA keys when the model has
        neither head, as the action-free published checkpoints; else ``llm.*`` plus the heads)."""
        transformer = self.transformer.state_dict()
        if self.action_dim is None and not self.has_reward_head:
            transformer = {k.removeprefix(LLM_PREFIX): v for k, v in transformer.items()}
        return {"tokenizer": self.tokenizer.state_dict(), "transformer": transformer}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the published folder layout: safetensors weights plus config.json for both parts."""
        root = Path(path)
        self.tokenizer.save_pretrained(root / TOKENIZER_DIR)
        folder = root / TRANSFORMER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu", copy=True).contiguous()
                   for k, v in self.export_state_dicts()["transformer"].items()}
        text = json.dumps(self.transformer.config.to_json_dict(), indent=2) + "\n"
        atomic_write(folder / TRANSFORMER_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        atomic_write(folder / TRANSFORMER_CONFIG, lambda tmp: Path(tmp).write_text(text))

    # ------------------------------------------------------------------------------- tokens
    @torch.no_grad()
    def tokenize(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames to token ids in the published layout.

        Args:
            frames: (B, T, 3, H, W) in [0, 1], the first T0 are context.

        Returns:
            tokens (B, L) and labels (B, L), int64 (labels: ``IGNORE_INDEX`` where nothing is predicted).
        """
        if frames.dim() != 5 or frames.shape[1] <= self.context_frames:
            raise ValueError(f"frames must be (B, T, 3, H, W) with T > T0={self.context_frames}, "
                             f"got {tuple(frames.shape)}")
        layout = self.layout(frames.shape[1] - self.context_frames)
        with eval_mode(self.tokenizer):
            ctx_codes, dyn_codes = self.tokenizer.tokenize(frames, self.context_frames)
        tokens = layout.assemble(ctx_codes, dyn_codes)
        return tokens, layout.labels(tokens)

    @torch.no_grad()
    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids back to frames (not clamped).

        Args:
            tokens: (B, L) ids in the published layout.

        Returns:
            (B, T, 3, H, W).
        """
        ctx_codes, dyn_codes = self.layout_for(tokens).split(tokens)
        with eval_mode(self.tokenizer):
            context = self.tokenizer.decode_context(ctx_codes)
            future = self.tokenizer.decode_future(dyn_codes, self.tokenizer.context_cache(ctx_codes))
        return torch.cat([context, future], dim=1)

    # ------------------------------------------------------------------------------ transformer
    def _slot_actions(self, layout: TokenLayout, actions: torch.Tensor | None) -> torch.Tensor | None:
        if self.action_dim is None:
            if actions is not None:
                raise ValueError("actions given to an action-free world model; build it with action_dim")
            return None
        if actions is None:
            raise ValueError(f"this world model is action-conditioned: pass actions "
                             f"(B, T={layout.segment_length}, {self.action_dim})")
        return layout.slot_actions(actions)

    def logits(self, tokens: torch.Tensor, actions: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits and raw reward predictions for a token sequence.

        Args:
            tokens: (B, L) ids in the published layout.
            actions: (B, T, A) segment actions (``actions[:, k]`` taken at frame k); required iff the model is
                action-conditioned.

        Returns:
            logits (B, L, V) and rewards (B, T - T0) in symlog space (None without a reward head).
        """
        layout = self.layout_for(tokens)
        out = self.transformer(tokens, self._slot_actions(layout, actions), layout.slot_positions)
        return out.logits, self.transformer.rewards(out.hidden[:, layout.reward_positions.to(tokens.device)])

    def transformer_loss(self, inputs: torch.Tensor, actions: torch.Tensor | None = None,
                         rewards: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Next-token cross-entropy on future-frame tokens plus the reward MSE in symlog space.

        Args:
            inputs: frames (B, T, 3, H, W) in [0, 1] (tokenized here, no grad) or token ids (B, L).
            actions: (B, T, A) segment actions; required iff the model is action-conditioned.
            rewards: (B, T) segment rewards (``rewards[:, k]`` of the transition out of frame k); required iff
                the model has a reward head.

        Returns:
            total loss and detached parts ``{"ce": ..., "reward": ...}`` (``reward`` only with a reward head).
        """
        tokens = inputs if not torch.is_floating_point(inputs) else self.tokenize(inputs)[0]
        layout = self.layout_for(tokens)
        if layout.num_future_frames < 1:
            raise ValueError("the segment needs at least one future frame to have prediction targets")
        if self.has_reward_head != (rewards is not None):
            raise ValueError("pass rewards (B, T) exactly when the model has a reward head "
                             f"(it {'has' if self.has_reward_head else 'has not'} one)")
        out = self.transformer(tokens, self._slot_actions(layout, actions), layout.slot_positions,
                               return_logits=False)
        # only positions from the first slot on predict a target: skip the LM head on the rest of the prefix
        start = layout.first_target_position - 1
        logits = self.transformer.llm.lm_head(out.hidden[:, start:-1])
        targets = layout.labels(tokens)[:, start + 1:]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        parts = {"ce": ce.detach()}
        total = ce
        if rewards is not None:
            pred = self.transformer.rewards(out.hidden[:, layout.reward_positions.to(tokens.device)])
            target = symlog(layout.reward_targets(rewards, self.reward_alignment).to(pred.dtype))
            reward_loss = F.mse_loss(pred.float(), target.float())
            parts["reward"] = reward_loss.detach()
            total = total + self.reward_weight * reward_loss
        return total, parts

    def tokenizer_loss(self, frames: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tokenizer's reconstruction objective on a segment (see ``CompressiveTokenizer.loss``).

        Args:
            frames: (B, T, 3, H, W) in [0, 1], the first T0 are context.
            **kwargs: passed on (``max_target_frames``, ``perceptual``, ``generator``).
        """
        return self.tokenizer.loss(frames, self.context_frames, **kwargs)

    # ----------------------------------------------------------------------------- imagination
    def reset(self, context_frames: torch.Tensor, goal: torch.Tensor | None = None, horizon: int | None = None,
              temperature: float = 1.0, top_k: int | None = 100, generator: torch.Generator | None = None) -> None:
        """Start imagined rollouts; see :meth:`Imaginer.reset`."""
        self.imaginer.reset(context_frames, goal=goal, horizon=horizon, temperature=temperature, top_k=top_k,
                            generator=generator)

    def step(self, actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Imagine one frame per rollout; see :meth:`Imaginer.step`.

        Args:
            actions: (B, A), or None for an action-free model.

        Returns:
            frames (B, 3, H, W) in [0, 1] and rewards (B,) (None without a reward head).
        """
        return self.imaginer.step(actions)


# ----------------------------------------------------------------------------------- loading
def transformer_state_from_file(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map either published transformer layout onto ``WorldModelTransformer`` keys."""
    # older transformers versions saved the rotary inverse frequencies; they follow from rope_theta
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if any(k.startswith(LLM_PREFIX) for k in state):
        return state
    if "lm_head.weight" in state or any(k.startswith("model.") for k in state):
        return {LLM_PREFIX + k: v for k, v in state.items()}
    raise ValueError("transformer weights have neither the fine-tuned layout (llm.*) nor the bare LLaMA layout "
                     "(model.*, lm_head.weight)")


