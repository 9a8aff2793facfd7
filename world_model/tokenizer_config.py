"""The compressive tokenizer's configuration: the official ``CompressiveVQModel`` ``config.json``.

Field names equal the published ``tokenizer/config.json`` keys, which round-trip with the official loader;
the presets (``paper64``, ``tiny``, ``cpu``) build a tokenizer from scratch.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_OFFICIAL_CLASS_NAME = "CompressiveVQModel"
_DIFFUSERS_VERSION = "0.27.0"
_SUPPORTED_DOWN = "DownEncoderBlock2D"
_SUPPORTED_UP = "UpDecoderBlock2D"


# The smaller presets: the published 64x64 tokenizer with these fields changed.
_NARROW: dict[str, dict[str, Any]] = {
    "tiny": {"block_out_channels": (32, 32, 64), "layers_per_block": 1, "latent_channels": 32,
             "num_vq_embeddings": 256, "num_dyn_embeddings": 256},
    "cpu": {"block_out_channels": (32, 64, 128), "layers_per_block": 1, "num_vq_embeddings": 1024,
            "num_dyn_embeddings": 1024},
}


@dataclass(frozen=True)
class TokenizerConfig:
    """The official ``CompressiveVQModel`` config (field names = ``config.json`` keys).

    Defaults are the official constructor's defaults, so that a ``config.json`` with keys left out
    (the published 64x64 one has no ``patch_size``) means the same here as for the official loader.
    Use the presets (``paper64``, ``tiny``, ``cpu``) to build a model from scratch.
    """

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (_SUPPORTED_DOWN,)
    up_block_types: tuple[str, ...] = (_SUPPORTED_UP,)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int = 32
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False
    num_dyn_embeddings: int = 256
    context_length: int = 1
    max_att_resolution: int = 32
    resolution: int = 256
    patch_size: int = 4
    # Not an official config key (hard-coded 1.0 there); written to config.json only when changed.
    commitment_beta: float = 1.0

    # Keys diffusers adds to config.json that carry no model setting.
    _BOOKKEEPING_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"_class_name", "_diffusers_version", "_use_default_values", "_name_or_path", "_commit_hash"}
    )

    def __post_init__(self) -> None:
        for name in ("down_block_types", "up_block_types", "block_out_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"down_block_types ({len(self.down_block_types)}), up_block_types ({len(self.up_block_types)}) "
                f"and block_out_channels ({n}) must have the same length"
            )
        unsupported = {t for t in self.down_block_types if t != _SUPPORTED_DOWN}
        unsupported |= {t for t in self.up_block_types if t != _SUPPORTED_UP}
        if unsupported:
            raise ValueError(
                f"unsupported block types {sorted(unsupported)}: only {_SUPPORTED_DOWN}/{_SUPPORTED_UP} are implemented"
            )
        if self.act_fn != "silu" or self.norm_type != "group":
            raise ValueError(
                f"act_fn={self.act_fn!r}, norm_type={self.norm_type!r} are not implemented; use 'silu' and 'group'"
            )
        if self.resolution % 2 ** (n - 1):
            raise ValueError(f"resolution {self.resolution} is not divisible by 2**{n - 1} (one per down block)")
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent size {self.latent_size} is not divisible by patch_size {self.patch_size}")
        if self.context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {self.context_length}")

    # ---- derived quantities -------------------------------------------------------------------------
    @property
    def latent_size(self) -> int:
        """Side of the latent map: one halving per down block except the last."""
        return self.resolution // 2 ** (len(self.block_out_channels) - 1)

    @property
    def tokens_per_context_frame(self) -> int:
        return self.latent_size**2

    @property
    def future_grid_size(self) -> int:
        """Side of the grid of patches a future frame's latent map is cut into."""
        return self.latent_size // self.patch_size

    @property
    def tokens_per_future_frame(self) -> int:
        return self.future_grid_size**2

    @property
    def embed_dim(self) -> int:
        """Code dimension of both codebooks."""
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels

    # ---- config.json --------------------------------------------------------------------------------
    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> TokenizerConfig:
        """Build from a published ``config.json`` dict (diffusers' ``_*`` bookkeeping keys are ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in known and k not in cls._BOOKKEEPING_KEYS)
        if unknown:
            raise ValueError(f"unknown tokenizer config keys {unknown}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents: the official keys (loadable by ``CompressiveVQModel``)."""
        d: dict[str, Any] = {"_class_name": _OFFICIAL_CLASS_NAME, "_diffusers_version": _DIFFUSERS_VERSION}
        for key, value in asdict(self).items():
            d[key] = list(value) if isinstance(value, tuple) else value
        if self.commitment_beta == TokenizerConfig.commitment_beta:
            del d["commitment_beta"]
        return d

    # ---- presets ------------------------------------------------------------------------------------
    @classmethod
    def paper64(cls) -> TokenizerConfig:
        """The published 64x64 tokenizer (``thuml/ivideogpt-oxe-64-act-free``): 114M parameters."""
        return cls(
            down_block_types=(_SUPPORTED_DOWN,) * 3,
            up_block_types=(_SUPPORTED_UP,) * 3,
            block_out_channels=(128, 256, 512),
            layers_per_block=2,
            latent_channels=64,
            num_vq_embeddings=8192,
            num_dyn_embeddings=8192,
            mid_block_add_attention=False,
            lookup_from_codebook=True,
            force_upcast=True,
            context_length=2,
            max_att_resolution=16,
            resolution=64,
        )

    @classmethod
    def tiny(cls) -> TokenizerConfig:
        """The random-weight test fixture's config (1.7M parameters, 256-entry codebooks)."""
        return replace(cls.paper64(), **_NARROW["tiny"])

    @classmethod
    def cpu(cls) -> TokenizerConfig:
        """Paper architecture, token counts and code width with narrow layers (6.2M parameters) and
        1024-entry codebooks, for runs on a few CPU cores."""
        return replace(cls.paper64(), **_NARROW["cpu"])

    @classmethod
    def preset(cls, name: str) -> TokenizerConfig:
        presets: dict[str, Callable[[], TokenizerConfig]] = {"paper64": cls.paper64, "tiny": cls.tiny, "cpu": cls.cpu}
        if name not in presets:
            raise ValueError(f"unknown tokenizer preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()
