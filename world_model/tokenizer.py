"""iVideoGPT's compressive tokenizer: a conditional VQGAN, in plain PyTorch.

Context frames are tokenized on their own by a VQGAN (``encoder`` -> ``quant_conv`` -> ``quantize``,
``post_quant_conv`` -> ``decoder``): N = latent_size**2 tokens per frame. Future frames go through a
second encoder/decoder pair that cross-attends to the context encoder's (decoder's) feature maps; the
future latent map is cut into patch_size x patch_size patches, each projected (``quant_linear``) and
quantized with the dynamics codebook: n = (latent_size / patch_size)**2 tokens per frame.

Parameter names equal the published ``tokenizer/diffusion_pytorch_model.safetensors`` keys of the
``thuml/ivideogpt-*`` checkpoints, and ``config.json`` (``world_model.tokenizer_config``) round-trips with the
official loader. The encoders and decoders are ``world_model.encoder_decoder``.
Pixels are float ``[0, 1]`` in and out, exactly as the official MBRL code feeds its tokenizer
(``obs / 255``); decoded frames are not clamped.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from core.io import atomic_write, load_checked
from world_model.encoder_decoder import Decoder, Encoder
from world_model.tokenizer_config import CONFIG_NAME, WEIGHTS_NAME, TokenizerConfig
from world_model.vq import VectorQuantizer

KeyValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True)
class ContextCache:
    """What decoding future frames needs from the context, computed once per rollout.

    ``kv`` holds, for each cross-attention block of the conditional decoder, the attention keys and
    values of the context decoder's feature map at that block's resolution, each
    ``(B, heads, T0 * h * w, C / heads)``: the features already normalised and projected, so
    ``decode_future`` does no per-call work on the context at all.
    """

    kv: KeyValues = field(repr=False)

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ContextCache:
        return ContextCache(tuple((fn(k), fn(v)) for k, v in self.kv))

    def index_select(self, index: torch.Tensor) -> ContextCache:
        """Rows ``index`` ``(B',)`` of the batch."""
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

    def repeat_interleave(self, repeats: int) -> ContextCache:
        """Each row repeated ``repeats`` times in place: row i -> rows i*repeats ... i*repeats + repeats - 1."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def to(self, device: torch.device | str) -> ContextCache:
        return self._map(lambda t: t.to(device))


def inference_layout(x: torch.Tensor) -> torch.Tensor:
    """Feature maps ``(N, C, H, W)`` in the memory layout that runs inference fastest on their device.

    On CPU that is channels-last: oneDNN convolutions and group norm keep it end to end, and decoding future
    frames runs faster so (see ``docs/imagination.md``). CUDA's eager group norm returns channels-first, so there the
    layout is left as it is (``torch.compile`` picks its own).
    """
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def patchify(latent: torch.Tensor, patch: int) -> torch.Tensor:
    """``(N, C, h, w)`` -> ``(N, (h/p) * (w/p), p * p * C)``: row-major patches, each flattened (p_h, p_w, C)."""
    n, c, h, w = latent.shape
    x = latent.permute(0, 2, 3, 1).reshape(n, h // patch, patch, w // patch, patch, c)
    return x.transpose(2, 3).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def depatchify(tokens: torch.Tensor, patch: int, grid: int) -> torch.Tensor:
    """Inverse of ``patchify`` for a ``grid x grid`` layout of patches -> ``(N, C, grid*p, grid*p)``."""
    n = tokens.shape[0]
    x = tokens.reshape(n, grid, grid, patch, patch, -1)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, -1, grid * patch, grid * patch)


class CompressiveTokenizer(nn.Module):
    """Context frames -> N context codes each; future frames -> n dynamics codes each, given the context.

    Frames are ``(B, T, 3, H, W)`` float in ``[0, 1]``; codes are int64.
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        # Every encoder/decoder shares these; the conditional pair also cross-attends to the context and
        # always has mid-block attention (as in the official model).
        shared = {"block_out_channels": c.block_out_channels, "layers_per_block": c.layers_per_block,
                  "groups": c.norm_num_groups}
        conditioning = {"mid_attention": True, "max_att_resolution": c.max_att_resolution,
                        "context_frames": c.context_length}
        plain = {"mid_attention": c.mid_block_add_attention}
        patch_dim = c.latent_channels * c.patch_size**2
        # Registration order follows the official module so state dicts list keys in the same order.
        self.cond_encoder = Encoder(c.in_channels, c.latent_channels, resolution=c.resolution, **shared, **conditioning)
        self.encoder = Encoder(c.in_channels, c.latent_channels, resolution=c.resolution, **shared, **plain)
        self.quant_conv = nn.Conv2d(c.latent_channels, c.embed_dim, 1)
        self.quantize = VectorQuantizer(c.num_vq_embeddings, c.embed_dim, c.commitment_beta)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.latent_channels, 1)
        self.quant_linear = nn.Linear(patch_dim, c.embed_dim)
        self.dynamics_quantize = VectorQuantizer(c.num_dyn_embeddings, c.embed_dim, c.commitment_beta)
        self.post_quant_linear = nn.Linear(c.embed_dim, patch_dim)
        # The official code hard-codes 16 for the decoders' resolution: the latent size of every published config.
        self.cond_decoder = Decoder(c.latent_channels, c.out_channels, resolution=c.latent_size, **shared, **conditioning)
        self.decoder = Decoder(c.latent_channels, c.out_channels, resolution=c.latent_size, **shared, **plain)

    # ---- checks -------------------------------------------------------------------------------------
    def _check_frames(self, frames: torch.Tensor, name: str) -> None:
        c = self.config
        expected = (c.in_channels, c.resolution, c.resolution)
        if frames.dim() != 5 or tuple(frames.shape[2:]) != expected:
            raise ValueError(f"{name} must be (B, T, {', '.join(map(str, expected))}) floats in [0, 1], "
                             f"got shape {tuple(frames.shape)}")
        if not frames.is_floating_point():
            raise ValueError(f"{name} must be float in [0, 1] (divide uint8 frames by 255), got {frames.dtype}")

    def _check_context_length(self, t0: int) -> None:
        if t0 != self.config.context_length:
            raise ValueError(
                f"got {t0} context frames but this tokenizer was built for context_length="
                f"{self.config.context_length}; pass that many or call set_context_length()"
            )

    def _check_codes(self, codes: torch.Tensor, per_frame: int, name: str) -> None:
        if codes.dim() != 3 or codes.shape[2] != per_frame:
            raise ValueError(f"{name} must be (B, T, {per_frame}) integer codes, got shape {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError(f"{name} must be integer codes, got {codes.dtype}")

    # ---- encoding -----------------------------------------------------------------------------------
    @staticmethod
    def _key_values(blocks: nn.ModuleList, features: list[torch.Tensor], batch: int) -> KeyValues:
        """Cross-attention keys/values from context features ``(B * T0, C, h, w)``, one per block."""
        return tuple(
            block.context_kv(f.view(batch, -1, *f.shape[1:]))
            for block, f in zip(blocks, features, strict=True)
        )

    def _context_latents(self, frames: torch.Tensor) -> tuple[torch.Tensor, KeyValues]:
        """Context frames ``(B, T0, 3, H, W)`` -> pre-quantization latents ``(B*T0, D, h, w)`` and the
        conditional encoder's keys/values."""
        b = frames.shape[0]
        latent, features = self.encoder(frames.flatten(0, 1), feature_stages=self.cond_encoder.attention_stages)
        return self.quant_conv(latent), self._key_values(self.cond_encoder.cross_att_blocks, features, b)

    def _encoder_key_values(self, context: torch.Tensor) -> KeyValues:
        features = self.encoder.features(context.flatten(0, 1), self.cond_encoder.attention_stages)
        return self._key_values(self.cond_encoder.cross_att_blocks, features, context.shape[0])

    def _future_latents(self, frames: torch.Tensor, kv: KeyValues) -> torch.Tensor:
        """Future frames ``(B, K, 3, H, W)`` -> pre-quantization latents ``(B*K, n, D)``."""
        latent, _ = self.cond_encoder(frames.flatten(0, 1), kv)
        return self.quant_linear(patchify(latent, self.config.patch_size))

    @torch.no_grad()
    def encode_context(self, frames: torch.Tensor) -> torch.Tensor:
        """Context frames ``(B, T0, 3, H, W)`` in [0, 1] -> context codes ``(B, T0, N)``."""
        self._check_frames(frames, "context frames")
        b, t0 = frames.shape[:2]
        latent = self.quant_conv(self.encoder(inference_layout(frames.flatten(0, 1)))[0])
        return self.quantize.nearest(latent.permute(0, 2, 3, 1)).view(b, t0, -1)

    @torch.no_grad()
    def encode_future(self, frames: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Future frames ``(B, K, 3, H, W)`` given context frames ``(B, T0, 3, H, W)`` -> codes ``(B, K, n)``."""
        self._check_frames(frames, "future frames")
        self._check_frames(context, "context frames")
        self._check_context_length(context.shape[1])
        if frames.shape[0] != context.shape[0]:
            raise ValueError(f"batch sizes differ: {frames.shape[0]} future vs {context.shape[0]} context rows")
        latent = self._future_latents(frames, self._encoder_key_values(context))
        return self.dynamics_quantize.nearest(latent).view(*frames.shape[:2], -1)

    @torch.no_grad()
    def tokenize(self, frames: torch.Tensor, context_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment ``(B, T, 3, H, W)`` -> context codes ``(B, T0, N)`` and dynamics codes ``(B, T - T0, n)``."""
        self._check_frames(frames, "frames")
        self._check_context_length(context_frames)
        b, t = frames.shape[:2]
        if t <= context_frames:
            raise ValueError(f"a segment of {t} frames has no future frames after {context_frames} context frames")
        latent, kv = self._context_latents(frames[:, :context_frames])
        ctx_codes = self.quantize.nearest(latent.permute(0, 2, 3, 1)).view(b, context_frames, -1)
        dyn_latent = self._future_latents(frames[:, context_frames:], kv)
        return ctx_codes, self.dynamics_quantize.nearest(dyn_latent).view(b, t - context_frames, -1)

    # ---- decoding -----------------------------------------------------------------------------------
    def _embed_context(self, codes: torch.Tensor) -> torch.Tensor:
        """Context codes ``(B, T0, N)`` -> decoder input ``(B*T0, latent_channels, h, w)``."""
        s = self.config.latent_size
        z = self.quantize.lookup(codes.flatten(0, 1)).view(-1, s, s, self.config.embed_dim)
        return self.post_quant_conv(z.permute(0, 3, 1, 2))

    def _embed_future(self, codes: torch.Tensor) -> torch.Tensor:
        """Dynamics codes ``(B, K, n)`` -> conditional decoder input ``(B*K, latent_channels, h, w)``."""
        patches = self.post_quant_linear(self.dynamics_quantize.lookup(codes.flatten(0, 1)))
        return depatchify(patches, self.config.patch_size, self.config.future_grid_size)

    def _frames(self, images: torch.Tensor, batch: int) -> torch.Tensor:
        return images.view(batch, -1, *images.shape[1:])

    def context_cache(self, context_codes: torch.Tensor) -> ContextCache:
        """Context codes ``(B, T0, N)`` -> the ``ContextCache`` that ``decode_future`` needs."""
        self._check_codes(context_codes, self.config.tokens_per_context_frame, "context codes")
        self._check_context_length(context_codes.shape[1])
        features = self.decoder.features(inference_layout(self._embed_context(context_codes)),
                                         self.cond_decoder.attention_stages)
        return ContextCache(self._key_values(self.cond_decoder.cross_att_blocks, features, context_codes.shape[0]))

    def decode_context(self, codes: torch.Tensor) -> torch.Tensor:
        """Context codes ``(B, T0, N)`` -> frames ``(B, T0, 3, H, W)`` (about [0, 1], not clamped)."""
        self._check_codes(codes, self.config.tokens_per_context_frame, "context codes")
        return self._frames(self.decoder(self._embed_context(codes))[0], codes.shape[0])

    def decode_future(self, codes: torch.Tensor, cache: ContextCache) -> torch.Tensor:
        """Dynamics codes ``(B, K, n)`` + the context's cache (batch B) -> frames ``(B, K, 3, H, W)``."""
        self._check_codes(codes, self.config.tokens_per_future_frame, "dynamics codes")
        if codes.shape[0] != cache.batch_size:
            raise ValueError(
                f"dynamics codes have {codes.shape[0]} rows but the context cache has {cache.batch_size}; "
                "expand the cache with cache.repeat_interleave() / index_select()"
            )
        future = self.cond_decoder(inference_layout(self._embed_future(codes)), cache.kv)[0]
        return self._frames(future.contiguous(), codes.shape[0])

    def detokenize(self, context_codes: torch.Tensor, dynamics_codes: torch.Tensor) -> torch.Tensor:
        """Context ``(B, T0, N)`` and dynamics ``(B, K, n)`` codes -> frames ``(B, T0 + K, 3, H, W)``."""
        self._check_codes(context_codes, self.config.tokens_per_context_frame, "context codes")
        self._check_codes(dynamics_codes, self.config.tokens_per_future_frame, "dynamics codes")
        self._check_context_length(context_codes.shape[1])
        b = context_codes.shape[0]
        context, features = self.decoder(
            self._embed_context(context_codes), feature_stages=self.cond_decoder.attention_stages
        )
        kv = self._key_values(self.cond_decoder.cross_att_blocks, features, b)
        future = self.cond_decoder(self._embed_future(dynamics_codes), kv)[0]
        return torch.cat([self._frames(context, b), self._frames(future, b)], dim=1)

    # ---- training -----------------------------------------------------------------------------------
    def loss(
        self,
        frames: torch.Tensor,
        context_frames: int,
        max_target_frames: int | None = None,
        perceptual: nn.Module | None = None,
        generator: torch.Generator | None = None,
        perceptual_weight: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """VQGAN loss of a batch of segments, as the official MBRL ``update_tokenizer`` computes it.

        Context frames go through the plain path, (at most ``max_target_frames`` randomly chosen) future
        frames through the conditional path, conditioned on the *quantized* context's decoder features.
        Total = L1(future) + L1(context) + ``perceptual_weight`` * (LPIPS(future) + LPIPS(context))
        + commitment(context codebook) + commitment(dynamics codebook); straight-through gradients.

        Args:
            frames: ``(B, T, 3, H, W)`` in [0, 1].
            context_frames: T0 (must equal ``config.context_length``).
            max_target_frames: future frames reconstructed per segment; each segment draws its own random
                subset when it has more (the official code draws one subset for the whole batch).
            perceptual: module mapping two image batches in [-1, 1] to per-image distances (LPIPS), or None.
            generator: random source for the frame subset.
        Returns:
            total loss and its parts (``recon_l1``, ``ref_recon_l1``, ``commit``, ``dyn_commit`` and, with a
            perceptual module, ``perceptual``, ``ref_perceptual``).
        """
        self._check_frames(frames, "frames")
        self._check_context_length(context_frames)
        b, t = frames.shape[:2]
        k = t - context_frames
        if k < 1:
            raise ValueError(f"a segment of {t} frames has no future frames after {context_frames} context frames")
        context, future = frames[:, :context_frames], frames[:, context_frames:]
        if max_target_frames is not None and k > max_target_frames:
            device = generator.device if generator is not None else torch.device("cpu")
            pick = torch.rand(b, k, generator=generator, device=device).argsort(dim=1)[:, :max_target_frames]
            future = future[torch.arange(b, device=frames.device)[:, None], pick.to(frames.device)]

        latent, encoder_kv = self._context_latents(context)
        dyn_latent = self._future_latents(future, encoder_kv)
        quant, commit, _ = self.quantize(latent.permute(0, 2, 3, 1))
        dyn_quant, dyn_commit, _ = self.dynamics_quantize(dyn_latent)

        reference, features = self.decoder(
            self.post_quant_conv(quant.permute(0, 3, 1, 2)), feature_stages=self.cond_decoder.attention_stages
        )
        decoder_kv = self._key_values(self.cond_decoder.cross_att_blocks, features, b)
        grid = self.config.future_grid_size
        recon = self.cond_decoder(depatchify(self.post_quant_linear(dyn_quant), self.config.patch_size, grid),
                                  decoder_kv)[0]

        target, context_target = future.flatten(0, 1), context.flatten(0, 1)
        parts = {
            "recon_l1": F.l1_loss(recon, target),
            "ref_recon_l1": F.l1_loss(reference, context_target),
            "commit": commit,
            "dyn_commit": dyn_commit,
        }
        if perceptual is not None:
            parts["perceptual"] = perceptual(target * 2 - 1, recon * 2 - 1).mean()
            parts["ref_perceptual"] = perceptual(context_target * 2 - 1, reference * 2 - 1).mean()
        total = parts["recon_l1"] + parts["ref_recon_l1"] + commit + dyn_commit
        if perceptual is not None:
            total = total + perceptual_weight * (parts["perceptual"] + parts["ref_perceptual"])
        return total, parts

    def freeze_codebooks(self, frozen: bool = True) -> None:
        """Stop (or resume) training both codebooks: they get no gradients at all while frozen."""
        for quantizer in (self.quantize, self.dynamics_quantize):
            quantizer.embedding.weight.requires_grad_(not frozen)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that currently require gradients (everything but frozen codebooks)."""
        return (p for p in self.parameters() if p.requires_grad)

    # ---- context length -----------------------------------------------------------------------------
    def set_context_length(self, context_length: int) -> None:
        """Use fewer context frames, keeping the last frames' key position embeddings (official behaviour)."""
        if context_length > self.config.context_length:
            raise ValueError(
                f"cannot grow context_length from {self.config.context_length} to {context_length}: "
                "the extra key position embeddings would be untrained"
            )
        for block in (*self.cond_encoder.cross_att_blocks, *self.cond_decoder.cross_att_blocks):
            rows = block.kv_pos_emb.shape[0] // self.config.context_length * context_length
            block.kv_pos_emb = nn.Parameter(block.kv_pos_emb.detach()[-rows:].clone())
        self.config = replace(self.config, context_length=context_length)

    # ---- published checkpoint layout ----------------------------------------------------------------
    def load_published_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a published tokenizer state dict, checking every key and shape first."""
        load_checked(self, state_dict, "tokenizer")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> CompressiveTokenizer:
        """Load a published ``tokenizer/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

        Returned in eval mode, like the official loader.
        """
        folder = Path(path)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for p in (config_path, weights_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found; point the tokenizer path at a published tokenizer/ folder")
        config = TokenizerConfig.from_json_dict(json.loads(config_path.read_text()))
        model = cls(config)
        model.load_published_state_dict(load_file(str(weights_path), device=str(map_location)))
        return model.to(map_location).eval()

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` (the published layout), atomically."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        text = json.dumps(self.config.to_json_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
