"""The LLaMA network of the world-model transformer: its config, layers and attention kernels.

Parameter names equal a Hugging Face ``LlamaForCausalLM`` (``model.*``, ``lm_head.weight``), so published
transformer weights load as they are. Pure PyTorch: no Hugging Face dependency. ``world_model.transformer``
wraps it with the action and reward heads and the static KV cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from world_model.transformer import KVCache

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

    For a single query this is faster on a CPU than ``scaled_dot_product_attention``, whose CPU flash kernel
    is built for long queries (see ``docs/imagination.md``): the step reads the whole cache either way, and
    here nothing else is done. Grouped query heads are folded into the query rows of their key/value head, so
    no key or value is copied.

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
