"""LLaMA-style transformer of iVideoGPT with the action and reward heads and a static KV cache.

Parameter names equal the published checkpoint keys (``llm.model.*``, ``llm.lm_head.weight``,
``action_linear.*``, ``reward_linear.*``), so a fine-tuned ``transformer/model.safetensors`` loads as is.
The LLaMA network itself (config, layers, attention kernels) is ``world_model.llama``. The module knows
nothing about the token layout: callers pass the positions of slot tokens (where actions are added) and of
reward read-outs (see ``layout.TokenLayout``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from world_model.llama import (
    LlamaForCausalLM,
    RMSNorm,
    TransformerConfig,
)


# ------------------------------------------------------------------------------------ KV cache
class KVCache:
    """Static keys/values for incremental decoding, allocated once per rollout batch.

    ``k`` and ``v`` are ``(layers, B, kv_heads, max_len, head_dim)``; all shapes are fixed so the decode step
    can be compiled or captured in a CUDA graph. Entries beyond the current position are masked, never read.
    """

    def __init__(self, cfg: TransformerConfig, batch_size: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"KV cache length {max_len} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}; imagine a shorter horizon")
        shape = (cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.positions = torch.arange(max_len, device=device)
        self._layer_ids = torch.arange(cfg.num_hidden_layers, device=device)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[index], self.v[index]

    def rows(self, rows: slice) -> KVCache:
        """The cache of rollouts ``rows`` as a view: writes through it (e.g. a prefill) land in this cache."""
        view = copy.copy(self)
        view.k, view.v = self.k[:, rows], self.v[:, rows]
        return view

    def write(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one token's keys/values ``(B, kv_heads, 1, head_dim)`` at position ``pos`` (1,) of ``layer``.

        Written into the stacked tensors by an index on the layer axis, not through a per-layer view: under
        ``torch.compile`` a write through a view of a graph input becomes a copy of the whole cache per token.
        Under autocast k/v may come out in a lower precision than the cache holds.
        """
        index = [self._layer_ids[layer:layer + 1], None, None, pos.reshape(1)]
        torch.ops.aten.index_put_(self.k, index, k.permute(2, 0, 1, 3).to(self.k.dtype))
        torch.ops.aten.index_put_(self.v, index, v.permute(2, 0, 1, 3).to(self.v.dtype))


# ------------------------------------------------------------------------------- full model
@dataclass
class TransformerOutput:
    """hidden: (B, S, H) after the final norm; logits: (B, S, V) or None when not asked for."""

    hidden: torch.Tensor
    logits: torch.Tensor | None


class WorldModelTransformer(nn.Module):
    """LLaMA plus the iVideoGPT heads.

    Args:
        cfg: LLaMA hyper-parameters.
        action_dim: size of the action added at slot tokens; None for an action-free model.
        reward_head: build the reward head (a linear map of the last hidden state to one value).
    """

    def __init__(self, cfg: TransformerConfig, action_dim: int | None = None, reward_head: bool = False) -> None:
        super().__init__()
        if action_dim is not None and action_dim < 1:
            raise ValueError(f"action_dim must be >= 1 or None (action-free), got {action_dim}")
        self.config = cfg
        self.llm = LlamaForCausalLM(cfg)
        self.action_linear = nn.Linear(action_dim, cfg.hidden_size) if action_dim else None
        self.reward_linear = nn.Linear(cfg.hidden_size, 1) if reward_head else None
        self.reset_parameters()

    @property
    def action_dim(self) -> int | None:
        return None if self.action_linear is None else self.action_linear.in_features

    @property
    def has_reward_head(self) -> bool:
        return self.reward_linear is not None

    def reset_parameters(self) -> None:
        """LLaMA init (normal(0, initializer_range), norms one); the action map starts at zero so that a
        pre-trained action-free model is unchanged by it; the reward head keeps PyTorch's Linear init."""
        std = self.config.initializer_range
        for module in self.llm.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if self.action_linear is not None:
            nn.init.zeros_(self.action_linear.weight)
            nn.init.zeros_(self.action_linear.bias)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups: no weight decay on embeddings, norms and biases."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                if name == "bias" or isinstance(module, (nn.Embedding, RMSNorm)):
                    no_decay.append(param)
                else:
                    decay.append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------------------ embedding
    def _embed(self, ids: torch.Tensor, slot_actions: torch.Tensor | None,
               slot_positions: torch.Tensor | None) -> torch.Tensor:
        x = self.llm.model.embed_tokens(ids)
        if slot_actions is None:
            return x
        if self.action_linear is None:
            raise ValueError("slot_actions given to an action-free model; build it with action_dim to use them")
        if slot_positions is None or slot_actions.shape[:2] != (ids.shape[0], slot_positions.shape[0]):
            raise ValueError(f"slot_actions {tuple(slot_actions.shape)} must be (B, K, A) with one action per "
                             f"slot position ({None if slot_positions is None else slot_positions.shape[0]})")
        # index_add keeps the add out-of-place for autograd and needs no mask over the whole sequence
        return x.index_add(1, slot_positions.to(ids.device), self.action_linear(slot_actions).to(x.dtype))

    def _check_length(self, length: int) -> None:
        if length > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {length} tokens exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}; use fewer frames")

    # -------------------------------------------------------------------------------- forward
    def forward(self, ids: torch.Tensor, slot_actions: torch.Tensor | None = None,
                slot_positions: torch.Tensor | None = None, return_logits: bool = True,
                cache: KVCache | None = None) -> TransformerOutput:
        """Full causal forward.

        Args:
            ids: (B, S) token ids.
            slot_actions: (B, K, A) action added to the embedding at each slot position, or None to add
                nothing (the facade insists on actions for an action-conditioned model).
            slot_positions: (K,) positions of the slot tokens in ``ids``.
            return_logits: also apply the LM head to every position.
            cache: also store every layer's keys/values of ``ids`` at positions 0 .. S - 1 of this cache
                (batch B, at least S long), so that decoding can go on from position S (a prefill).

        Returns:
            TransformerOutput with hidden (B, S, H) after the final norm and logits (B, S, V) or None.
        """
        self._check_length(ids.shape[1])
        if cache is not None:
            self._check_prefix(ids, cache)
        x = self._embed(ids, slot_actions, slot_positions)
        hidden = self._run(x, cache)
        return TransformerOutput(hidden, self.llm.lm_head(hidden) if return_logits else None)

    def _run(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        cos, sin = self._rotary_tables(x.shape[1])
        for index, layer in enumerate(self.llm.model.layers):
            x = layer(x, cos, sin, None if cache is None else cache.layer(index))
        return self.llm.model.norm(x)

    def _rotary_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (length, head_dim) for positions 0 .. length - 1."""
        rotary = self.llm.model.rotary
        return rotary.cos[:length], rotary.sin[:length]

    def rewards(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """Raw reward head output (symlog space) for hidden states (..., H) -> (...); None without head."""
        if self.reward_linear is None:
            return None
        return self.reward_linear(hidden).squeeze(-1)

    # ---------------------------------------------------------------------- incremental decoding
    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """A zeroed KV cache on this model's device (in the weights' dtype unless ``dtype`` is given)."""
        weight = self.llm.lm_head.weight
        return KVCache(self.config, batch_size, max_len, device=weight.device, dtype=dtype or weight.dtype)

    def fill_cache(self, ids: torch.Tensor, cache: KVCache, slot_actions: torch.Tensor | None = None,
                   slot_positions: torch.Tensor | None = None) -> None:
        """Store the keys/values of a prefix ``ids`` (B, S) at positions 0 .. S - 1 of ``cache``, for a caller
        that feeds the next token itself: :meth:`forward` with a cache, minus what only its outputs need (the
        last layer's attention and MLP, the final norm, the head).

        Args:
            ids: (B, S) prefix ids, S <= cache.max_len.
            cache: static cache of batch B.
            slot_actions, slot_positions: as in :meth:`forward` (only for slots inside the prefix).
        """
        self._check_prefix(ids, cache)
        x = self._embed(ids, slot_actions, slot_positions)
        cos, sin = self._rotary_tables(x.shape[1])
        *layers, last = self.llm.model.layers
        for index, layer in enumerate(layers):
            x = layer(x, cos, sin, cache.layer(index))
        last.store(x, cos, sin, cache.layer(len(layers)))

    @staticmethod
    def _check_prefix(ids: torch.Tensor, cache: KVCache) -> None:
        if ids.shape[1] > cache.max_len or ids.shape[0] != cache.batch_size:
            raise ValueError(f"prefix {tuple(ids.shape)} does not fit a KV cache of batch {cache.batch_size} "
                             f"and length {cache.max_len}")

    def action_embedding(self, action: torch.Tensor | None) -> torch.Tensor | None:
        """What a slot token's embedding gets added: the action map of ``action`` (B, A) -> (B, H)."""
        if action is None:
            return None
        if self.action_linear is None:
            raise ValueError("an action was given to an action-free model")
        return self.action_linear(action)

    def decode_hidden(self, token: torch.Tensor, pos: torch.Tensor, cache: KVCache,
                      embed_add: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row at position ``pos`` using and extending the cache: its hidden state.

        Args:
            token: (B, 1) ids.
            pos: 0-dim or (1,) int64 device tensor, the position of ``token`` (same for the whole batch).
            cache: KV cache filled up to ``pos - 1``.
            embed_add: (B, H) added to the token embedding (a slot's action map, see
                :meth:`action_embedding`), or None.

        Returns:
            (B, H) the hidden state of ``token`` after the final norm. Static shapes and no host syncs, so it
            can be compiled and captured in a CUDA graph.
        """
        pos = pos.reshape(1)
        x = self.llm.model.embed_tokens(token)
        if embed_add is not None:
            x = x + embed_add.unsqueeze(1).to(x.dtype)
        rotary = self.llm.model.rotary
        cos, sin = rotary.cos.index_select(0, pos), rotary.sin.index_select(0, pos)
        mask = (cache.positions <= pos).view(1, 1, 1, -1)
        for index, layer in enumerate(self.llm.model.layers):
            x = layer.decode(x, cos, sin, pos, mask, cache, index)
        return self.llm.model.norm(x)[:, 0]


def num_parameters(module: nn.Module) -> int:
    """Parameter count (works on the ``meta`` device)."""
    return sum(math.prod(p.shape) for p in module.parameters())
