"""Named model sizes: transformer widths and the tokenizer preset each one pairs with.

The vocabulary is never written here: it follows from the tokenizer's codebooks (see ``TokenLayout``).
"""
from __future__ import annotations

from dataclasses import dataclass

from world_model.llama import TransformerConfig


@dataclass(frozen=True)
class Preset:
    """Transformer widths plus the name of the tokenizer preset they go with."""

    tokenizer: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    attention_dropout: float
    max_position_embeddings: int = 1024

    def transformer_config(self, vocab_size: int) -> TransformerConfig:
        return TransformerConfig(
            vocab_size=vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings, attention_dropout=self.attention_dropout)


PRESETS: dict[str, Preset] = {
    # the paper's "GPT-2 size" model (138M with the 16386-id vocabulary); attention dropout 0.1 as trained
    "paper64": Preset("paper64", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, attention_dropout=0.1),
    # ivideogpt-oxe-64-act-free-medium (436M), same tokenizer
    "medium": Preset("paper64", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                     intermediate_size=4096, attention_dropout=0.1),
    # same architecture, widths small enough for a training step and a short rollout in seconds on a CPU;
    # no attention dropout: CPU attention has no fused dropout kernel, and with 0.1 a training step of this
    # model takes several times longer (see docs/imagination.md)
    "cpu": Preset("cpu", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=512, attention_dropout=0.0),
    # the size of the random-weight test checkpoint in the published layout (the tests' fixture)
    "tiny": Preset("tiny", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=128, attention_dropout=0.0),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown world-model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]
