"""LLaMA-style transformer of iVideoGPT with the action and reward heads and a static KV cache.

Parameter names equal the published checkpoint keys (``llm.model.*``, ``llm.lm_head.weight``,
``action_linear.*``, ``reward_linear.*``), so a fine-tuned ``transformer/model.safetensors`` loads as is.
Pure PyTorch: no Hugging Face dependency. The module knows nothing about the token layout: callers pass
the positions of slot tokens (where actions are added) and of reward read-outs (see ``layout.TokenLayout``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Keys of the Hugging Face LLaMA config whose values this implementation cannot honour.
_UNSUPPORTED = {
    "hidden_act": ("silu",),
    "tie_word_embeddings": (False,),
    "attention_bias": (False,),
    "mlp_bias": (False,),
    "rope_scaling": (None,),
    "pretraining_tp": (1,),
}


@dataclass
class TransformerConfig:
    """LLaMA hyper-parameters, read from / written to the published ``transformer/config.json``.

    The published file may say ``torch_dtype: float16``; the model is always built in float32 (mixed
    precision is the trainer's business). Keys this class does not use are kept in ``extra`` and written
    back unchanged.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        """Build from a Hugging Face LLaMA ``config.json`` dict (extra keys tolerated and kept)."""
        model_type = data.get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(f"transformer config has model_type {model_type!r}; only 'llama' is supported")
        for key, allowed in _UNSUPPORTED.items():
            if key in data and data[key] not in allowed:
                raise ValueError(f"transformer config sets {key}={data[key]!r}; only {allowed[0]!r} is supported")
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if k not in data]
        if missing:
            raise ValueError(f"transformer config.json lacks {missing}; is it a LLaMA config?")
        kwargs = {k: v for k, v in data.items() if k in known}
        # the weights are always float32 here, whatever dtype the file names
        extra = {k: v for k, v in data.items() if k not in known and k not in ("torch_dtype", "dtype")}
        return cls(**kwargs, extra=extra)

    def to_json_dict(self) -> dict[str, Any]:
        """The Hugging Face LLaMA ``config.json`` dict (float32 weights)."""
        out: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                               "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False}
        out.update(self.extra)
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        out["torch_dtype"] = "float32"
        return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------- blocks
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position up to ``max_position_embeddings`` (non-persistent buffers)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_positions, self.theta = head_dim, max_positions, theta
        cos, sin = self._tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.int64).float()
                                         / self.head_dim))
        freqs = torch.arange(self.max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, S, D); cos/sin (S, D)."""
    return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (cfg.num_attention_heads, cfg.num_key_value_heads,
                                                            cfg.head_dim)
        self.dropout = cfg.attention_dropout
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)

    def _project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        return (_apply_rotary(q, cos, sin), *self._keys_values(x, cos, sin))

    def _keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length, _ = x.shape
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return _apply_rotary(k, cos, sin), v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                causal: bool) -> torch.Tensor:
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        batch, _, length, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Causal self-attention over the whole of ``x`` (B, S, H); writes k/v to ``cache[:, :, :S]``."""
        q, k, v = self._project(x, cos, sin)
        if cache is not None:
            cache[0][:, :, :k.shape[2]] = k
            cache[1][:, :, :v.shape[2]] = v
        return self._attend(q, k, v, None, causal=True)

    def store(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              cache: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Only the cache half of :meth:`forward`: write the keys/values of ``x`` (B, S, H) to
        ``cache[:, :, :S]``, attend to nothing."""
        k, v = self._keys_values(x, cos, sin)
        cache[0][:, :, :k.shape[2]] = k
        cache[1][:, :, :v.shape[2]] = v

    def decode(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
               mask: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        """One token ``x`` (B, 1, H) at position ``pos`` (1,) attending to cache layer ``layer`` under ``mask``."""
        q, k, v = self._project(x, cos, sin)
        cache.write(layer, pos, k, v)
        keys, values = cache.layer(layer)
        q = q.to(keys.dtype)
        if q.device.type == "cpu":
            out = single_query_attention(q, keys, values, mask)
        else:
            # grouped heads are broadcast by the kernel: repeating them would copy the whole cache every token
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                 enable_gqa=self.num_heads != self.num_kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], 1, -1))


def single_query_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
    """Attention of one new token to a cache, as two batched matrix products.

    For a single query, CPU ``scaled_dot_product_attention`` (a flash kernel built for long queries) was
    about 1.4x slower than this on the development machine (B=32, 4 heads, 683 cached positions): the step
    reads the whole cache either way, and here nothing else is done. Grouped query heads are folded into the
    query rows of their key/value head, so no key or value is copied.

    Args:
        q: (B, heads, 1, head_dim); keys, values: (B, kv_heads, L, head_dim); mask: bool, broadcastable to
            (B, kv_heads, 1, L), True where a position may be attended.

    Returns:
        (B, heads, 1, head_dim).
    """
    batch, heads, _, dim = q.shape
    kv_heads = keys.shape[1]
    rows = q.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(rows, keys.transpose(-1, -2)) * dim**-0.5
    probs = scores.masked_fill(~mask, float("-inf")).float().softmax(dim=-1).to(values.dtype)
    return torch.matmul(probs, values).reshape(batch, heads, 1, dim)


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))

    def store(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              cache: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Write this layer's keys/values of ``x`` (B, S, H) to ``cache`` without computing its output."""
        self.self_attn.store(self.input_layernorm(x), cos, sin, cache)

    def decode(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
               mask: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        x = x + self.self_attn.decode(self.input_layernorm(x), cos, sin, pos, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Embedding, decoder stack and final norm (the ``model.*`` keys of ``LlamaForCausalLM``)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta)


class LlamaForCausalLM(nn.Module):
    """The ``llm`` child: ``model`` plus an untied ``lm_head``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)


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
                slot_positions: torch.Tensor | None = None, return_logits: bool = True) -> TransformerOutput:
        """Full causal forward.

        Args:
            ids: (B, S) token ids.
            slot_actions: (B, K, A) action added to the embedding at each slot position, or None to add
                nothing (the facade insists on actions for an action-conditioned model).
            slot_positions: (K,) positions of the slot tokens in ``ids``.
            return_logits: also apply the LM head to every position.

        Returns:
            TransformerOutput with hidden (B, S, H) after the final norm and logits (B, S, V) or None.
        """
        self._check_length(ids.shape[1])
        x = self._embed(ids, slot_actions, slot_positions)
        hidden = self._run(x, cache=None)
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

    def prefill(self, ids: torch.Tensor, cache: KVCache, slot_actions: torch.Tensor | None = None,
                slot_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a prefix from position 0 and store its keys/values in ``cache``.

        Args:
            ids: (B, S) prefix ids, S <= cache.max_len.
            cache: static cache of batch B.
            slot_actions, slot_positions: as in :meth:`forward` (only for slots inside the prefix).

        Returns:
            logits (B, V) and hidden (B, H) of the last prefix position.
        """
        self._check_prefix(ids, cache)
        hidden = self._run(self._embed(ids, slot_actions, slot_positions), cache)[:, -1]
        return self.llm.lm_head(hidden), hidden

    def fill_cache(self, ids: torch.Tensor, cache: KVCache, slot_actions: torch.Tensor | None = None,
                   slot_positions: torch.Tensor | None = None) -> None:
        """:meth:`prefill` for a caller that feeds the next token itself: store the prefix's keys/values
        and skip what only the outputs need (the last layer's attention and MLP, the final norm, the head).

        Args: as :meth:`prefill`.
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

    def decode_step(self, token: torch.Tensor, pos: torch.Tensor, cache: KVCache,
                    action: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed one token per row at position ``pos`` using and extending the cache (no host syncs).

        Args:
            token: (B, 1) ids.
            pos: 0-dim or (1,) int64 device tensor, the position of ``token`` (same for the whole batch).
            cache: KV cache filled up to ``pos - 1``.
            action: (B, A) added to the embedding when ``token`` is a slot token, else None.

        Returns:
            logits (B, V) for the next token and hidden (B, H) of ``token`` after the final norm.
        """
        hidden = self.decode_hidden(token, pos, cache, self.action_embedding(action))
        return self.llm.lm_head(hidden), hidden

    def action_embedding(self, action: torch.Tensor | None) -> torch.Tensor | None:
        """What a slot token's embedding gets added: the action map of ``action`` (B, A) -> (B, H)."""
        if action is None:
            return None
        if self.action_linear is None:
            raise ValueError("an action was given to an action-free model")
        return self.action_linear(action)

    def decode_hidden(self, token: torch.Tensor, pos: torch.Tensor, cache: KVCache,
                      embed_add: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`decode_step` without the LM head: the hidden state (B, H) of ``token`` (B, 1) at ``pos``.

        ``embed_add`` (B, H) is added to the token embedding (see :meth:`action_embedding`). Static shapes and
        no host syncs, so it can be compiled and captured in a CUDA graph.
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
