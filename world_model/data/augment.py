"""Frame preparation of pre-training segments: resizing and iVideoGPT's augmentation.

With augmentation every segment gets one random resized crop (area 0.8-1 of the frame, aspect ratio 0.9-1.1,
then resized to the output size) and one colour jitter (brightness, contrast and saturation factors in 0.9-1.1,
hue shifted by up to +-0.05 of the colour circle, applied in a random order), the same for all its frames so the
motion stays intact. Without it (the ``no_aug`` setting) a frame that is not already the output size is
centre-cropped to a square, then resized. Every random number comes from the caller's ``numpy`` generator, so a
seeded generator gives the same segment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # top, left, height, width


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the per-segment augmentation (the defaults are iVideoGPT's pre-training ones)."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    brightness: tuple[float, float] = (0.9, 1.1)
    contrast: tuple[float, float] = (0.9, 1.1)
    saturation: tuple[float, float] = (0.9, 1.1)
    hue: float = 0.05

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "brightness", "contrast", "saturation"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"augmentation {name}={(low, high)} must satisfy 0 < low <= high")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"augmentation hue={self.hue} must be in [0, 0.5]")


def random_crop_box(height: int, width: int, aug: Augmentation, rng: np.random.Generator) -> Box:
    """A crop of ``crop_scale`` of the frame's area with an aspect ratio (w / h) in ``crop_ratio``, placed
    uniformly; after 10 draws that do not fit, the largest centred crop with a ratio in range."""
    area = height * width
    log_low, log_high = math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*aug.crop_scale)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = min(max(width / height, aug.crop_ratio[0]), aug.crop_ratio[1])
    w, h = (width, round(width / ratio)) if width / height < ratio else (round(height * ratio), height)
    w, h = min(w, width), min(h, height)
    return (height - h) // 2, (width - w) // 2, h, w


def centre_square_box(height: int, width: int) -> Box:
    """The largest centred square."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    value, _ = x.max(dim=-3)
    delta = value - x.min(dim=-3).values
    sat = torch.where(value > 0, delta / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = delta.clamp_min(1e-12)
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, sat, value], dim=-3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    hue, sat, value = x.unbind(dim=-3)
    sector = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    sector = sector.long() % 6
    p, q, t = value * (1 - sat), value * (1 - sat * frac), value * (1 - sat * (1 - frac))
    # (r, g, b) for sectors 0..5
    table = torch.stack([torch.stack(c, dim=0) for c in (
        (value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q))], dim=0)
    index = sector.unsqueeze(0).unsqueeze(0).expand(1, 3, *sector.shape)
    return table.gather(0, index).squeeze(0).movedim(0, -3)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) of (..., 3, H, W) -> (..., 1, H, W)."""
    return (0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :])


def colour_jitter(video: torch.Tensor, aug: Augmentation, rng: np.random.Generator) -> torch.Tensor:
    """One brightness / contrast / saturation / hue change, in a random order, for all frames of a segment.

    Args:
        video: float (T, 3, H, W) in [0, 1].

    Returns:
        float (T, 3, H, W) in [0, 1].
    """
    factors = {name: float(rng.uniform(*getattr(aug, name))) for name in ("brightness", "contrast", "saturation")}
    shift = float(rng.uniform(-aug.hue, aug.hue))
    for op in rng.permutation(4):
        if op == 0:
            video = (video * factors["brightness"]).clamp(0.0, 1.0)
        elif op == 1:
            mean = _grey(video).mean(dim=(-3, -2, -1), keepdim=True)
            video = (mean + factors["contrast"] * (video - mean)).clamp(0.0, 1.0)
        elif op == 2:
            grey = _grey(video)
            video = (grey + factors["saturation"] * (video - grey)).clamp(0.0, 1.0)
        elif shift != 0.0:
            hsv = _rgb_to_hsv(video)
            hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], dim=1)
            video = _hsv_to_rgb(hsv).clamp(0.0, 1.0)
    return video


def _crop_resize(video: torch.Tensor, box: Box, size: tuple[int, int]) -> torch.Tensor:
    top, left, h, w = box
    video = video[:, :, top:top + h, left:left + w]
    if tuple(video.shape[-2:]) != size:
        video = F.interpolate(video, size=size, mode="bilinear", antialias=True, align_corners=False)
    return video


def prepare_segment(frames: np.ndarray, size: tuple[int, int] | None, augment: Augmentation | None,
                    rng: np.random.Generator) -> torch.Tensor:
    """Frames of one segment, channels first, at the output size, augmented or not.

    Args:
        frames: uint8 (T, H, W, 3).
        size: output (height, width); None keeps the frames' size.
        augment: the augmentation ranges, or None for the ``no_aug`` centre-crop-and-resize.
        rng: source of the crop and jitter parameters.

    Returns:
        uint8 (T, 3, h, w).
    """
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    height, width = video.shape[-2:]
    out = (height, width) if size is None else size
    if augment is None and (height, width) == out:
        return video.contiguous()
    video = video.float() / 255.0
    if augment is None:
        video = _crop_resize(video, centre_square_box(height, width), out)
    else:
        video = _crop_resize(video, random_crop_box(height, width, augment, rng), out)
        video = colour_jitter(video, augment, rng)
    return (video.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
