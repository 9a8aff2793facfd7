"""FVD features from the StyleGAN-V TorchScript I3D detector, loaded from a local file.

The detector (``i3d_torchscript.pt``, 400-d logits-layer features) is called as
``detector(videos, rescale=True, resize=True, return_features=True)`` on float videos ``(B, 3, T, H, W)`` with
values in [0, 255]; it rescales them to [-1, 1] and resizes them to 224x224 itself. The features of the real
clips and of every generated sample go into two ``world_model.metrics.FeatureStats``; FVD is the Fréchet
distance between them (``world_model.metrics.fvd_from_stats``).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

MAX_PIXEL = 255.0


class I3DFeatures:
    """The I3D feature extractor of a TorchScript file.

    Args:
        path: the TorchScript file (StyleGAN-V's ``i3d_torchscript.pt``).
        device: where it runs.
        batch: videos per detector call.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", batch: int = 16) -> None:
        self.path, self.device, self.batch = Path(path), torch.device(device), int(batch)
        if self.batch < 1:
            raise ValueError(f"I3D batch must be >= 1, got {batch}")
        self.detector = load_detector(self.path, self.device)

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        """Features of videos.

        Args:
            videos: (B, T, 3, H, W) float frames in [0, 1] (the project's layout; transposed and scaled here).

        Returns:
            (B, D) float32 features on the CPU.
        """
        if videos.dim() != 5 or videos.shape[2] != 3:
            raise ValueError(f"videos must be (B, T, 3, H, W), got {tuple(videos.shape)}")
        out = []
        for start in range(0, videos.shape[0], self.batch):
            chunk = videos[start:start + self.batch].to(self.device, torch.float32).clamp(0.0, 1.0)
            chunk = (chunk * MAX_PIXEL).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, H, W) in [0, 255]
            features = self.detector(chunk, rescale=True, resize=True, return_features=True)
            out.append(features.float().reshape(chunk.shape[0], -1).cpu())
        return torch.cat(out)


def load_detector(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` of an I3D TorchScript file, in eval mode (one-line errors for a missing or
    non-TorchScript file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D detector {path} not found; download StyleGAN-V's i3d_torchscript.pt and pass "
                                "fvd.i3d=PATH (or leave fvd.i3d out to skip FVD)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a TorchScript file (not a torch zip archive); pass StyleGAN-V's "
                         "i3d_torchscript.pt as fvd.i3d")
    try:
        detector = torch.jit.load(str(path), map_location=torch.device(device))
    except RuntimeError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise ValueError(f"{path} is not a TorchScript file ({first}); pass StyleGAN-V's i3d_torchscript.pt "
                         "as fvd.i3d") from err
    return detector.eval()
