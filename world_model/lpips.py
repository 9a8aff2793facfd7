"""LPIPS (VGG16) perceptual distance for the tokenizer loss, loaded from local weight files.

The VGG16 feature stack is written out here with torchvision's layer indices (``features.0.weight`` ...),
so torchvision's ``vgg16-397923af.pth`` loads as is without torchvision installed; the five 1x1 "linear"
layers load from the LPIPS v0.1 ``vgg.pth`` (keys ``lin{k}.model.1.weight``, as in the ``lpips`` package
and taming-transformers). Inputs are images in ``[-1, 1]``, as for the original LPIPS.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

VGG_FILENAMES = ("vgg16.pth", "vgg16-397923af.pth")
LPIPS_FILENAME = "vgg.pth"

# torchvision's vgg16 "features" config up to relu5_3: conv widths, "M" = 2x2 max pool.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Feature taps: after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (indices into ``features``).
_TAPS = (3, 8, 15, 22, 29)
_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS input normalisation (ImageNet statistics expressed for [-1, 1] inputs).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """VGG16 convolutional trunk up to relu5_3, with torchvision's ``features.<index>`` parameter names."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in _VGG16_LAYOUT:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(spec), 3, padding=1), nn.ReLU()]
                channels = int(spec)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                taps.append(x)
        return taps


class LPIPS(nn.Module):
    """Learned perceptual image distance; ``forward(a, b)`` -> ``(N, 1, 1, 1)`` per image pair.

    Frozen: all parameters have ``requires_grad=False`` (gradients still flow to the inputs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS])
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, vgg_state: Mapping[str, torch.Tensor], lpips_state: Mapping[str, torch.Tensor]) -> None:
        """Load torchvision's vgg16 state dict (``classifier.*`` ignored) and LPIPS' linear layers."""
        vgg = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
        self.net.load_state_dict(vgg, strict=True)
        lins = {f"{i}.weight": lpips_state[f"lin{i}.model.1.weight"] for i in range(len(_CHANNELS))
                if f"lin{i}.model.1.weight" in lpips_state}
        if len(lins) != len(_CHANNELS):
            raise ValueError(
                f"LPIPS weights need keys lin0..lin{len(_CHANNELS) - 1}.model.1.weight, got {sorted(lpips_state)[:8]}"
            )
        self.lins.load_state_dict(lins, strict=True)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance between image batches ``a``, ``b`` ``(N, 3, H, W)`` in [-1, 1] -> ``(N, 1, 1, 1)``."""
        n = a.shape[0]
        # One trunk pass over both batches.
        feats = self.net((torch.cat([a, b]) - self.shift) / self.scale)
        total = a.new_zeros(n, 1, 1, 1)
        for lin, f in zip(self.lins, feats):
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((f[:n] - f[n:]).pow(2)).mean(dim=(2, 3), keepdim=True)
        return total

    def train(self, mode: bool = True) -> LPIPS:
        # A fixed metric: never leave eval mode when a parent module calls train().
        return super().train(False)


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def build_perceptual(path: str | os.PathLike[str] | None) -> LPIPS | None:
    """LPIPS from a folder holding a torchvision VGG16 state dict (``vgg16.pth`` or ``vgg16-397923af.pth``)
    and the LPIPS v0.1 linear weights (``vgg.pth``); ``None`` (with one warning) when they are not there."""
    folder = Path(path) if path is not None else None
    vgg_file = _find(folder, VGG_FILENAMES) if folder is not None else None
    lpips_file = _find(folder, (LPIPS_FILENAME,)) if folder is not None else None
    if vgg_file is None or lpips_file is None:
        logger.warning(
            "perceptual (LPIPS) loss term is off: no weights found at %s (need %s and %s there)",
            path, " or ".join(VGG_FILENAMES), LPIPS_FILENAME,
        )
        return None
    model = LPIPS()
    model.load_weights(
        torch.load(vgg_file, map_location="cpu", weights_only=True),
        torch.load(lpips_file, map_location="cpu", weights_only=True),
    )
    return model
