"""iVideoGPT world model: compressive tokenizer, token layout, LLaMA transformer and the ``IVideoGPT`` facade.

The names below load on first use (PEP 562), so that importing one submodule, or a package that needs only
``core``, never pulls in the whole model stack.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImaginationConfig": "world_model.imagination_config",
    "Imaginer": "world_model.imagination",
    "IGNORE_INDEX": "world_model.layout",
    "TokenLayout": "world_model.layout",
    "TransformerConfig": "world_model.llama",
    "IVideoGPT": "world_model.model",
    "PRESETS": "world_model.presets",
    "symexp": "world_model.sampling",
    "symlog": "world_model.sampling",
    "CompressiveTokenizer": "world_model.tokenizer",
    "ContextCache": "world_model.tokenizer",
    "TokenizerConfig": "world_model.tokenizer_config",
    "KVCache": "world_model.transformer",
    "WorldModelTransformer": "world_model.transformer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'world_model' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
