"""iVideoGPT world model: compressive tokenizer, token layout, LLaMA transformer and the ``IVideoGPT`` facade."""
from world_model.layout import IGNORE_INDEX, TokenLayout
from world_model.model import Imaginer, IVideoGPT, symexp, symlog
from world_model.presets import PRESETS
from world_model.tokenizer import CompressiveTokenizer, ContextCache, TokenizerConfig
from world_model.transformer import KVCache, TransformerConfig, WorldModelTransformer

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "CompressiveTokenizer",
    "ContextCache",
    "IVideoGPT",
    "Imaginer",
    "KVCache",
    "TokenLayout",
    "TokenizerConfig",
    "TransformerConfig",
    "WorldModelTransformer",
    "symexp",
    "symlog",
]
