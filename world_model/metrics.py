"""Video-prediction metrics of the iVideoGPT protocol: PSNR, SSIM, LPIPS, MSE, best-of-N and the Fréchet distance.

Frame metrics take float frames ``(N, 3, H, W)`` with values in [0, 1] (clamped here) and return one value per
frame ``(N,)``, computed in float32:

- ``mse``: mean squared error over channels and pixels.
- ``psnr``: ``-10 log10(mse + 1e-8)`` for a data range of 1.
- ``ssim``: the structural similarity with an 11-tap Gaussian window (sigma 1.5), population statistics,
  ``C1 = 0.01^2``, ``C2 = 0.03^2``, averaged over the pixels whose window lies inside the image and over the
  channels: the same number as scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=...)``.
- ``lpips``: the VGG LPIPS distance of ``world_model.lpips`` on frames scaled to [-1, 1].

``best_of_n`` takes the best sample per metric; ``FeatureStats`` and ``frechet_distance`` are the statistics
and the distance behind FVD (``world_model.fvd``).
"""
from __future__ import annotations

import numpy as np
import torch

from world_model.lpips import LPIPS

PSNR_EPS = 1e-8
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2
SSIM_CHUNK = 128  # frames per filtering pass


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"frames to compare differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}; pass equal shapes")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"frames must be (N, 3, H, W), got {tuple(x.shape)}; flatten batch and time first")
    if not (torch.is_floating_point(x) and torch.is_floating_point(y)):
        raise ValueError("frames must be float in [0, 1]; convert uint8 frames with frames.float() / 255")
    return x.float().clamp(0.0, 1.0), y.float().clamp(0.0, 1.0)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per frame.

    Args:
        x, y: (N, 3, H, W) float frames in [0, 1].

    Returns:
        (N,) float32.
    """
    x, y = _check_pair(x, y)
    return (x - y).pow(2).mean(dim=(1, 2, 3))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per frame for a data range of 1: ``-10 log10(mse + 1e-8)``.

    Args:
        x, y: (N, 3, H, W) float frames in [0, 1].

    Returns:
        (N,) float32.
    """
    return -10.0 * torch.log10(mse(x, y) + PSNR_EPS)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian taps ``(size,)`` (float64)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _band(size: int, taps: torch.Tensor) -> torch.Tensor:
    """(size, size - k + 1) matrix whose column j holds the taps at rows j..j+k-1 ('valid' filtering)."""
    k = taps.numel()
    out = size - k + 1
    rows = torch.arange(out, device=taps.device).unsqueeze(0) + torch.arange(k, device=taps.device).unsqueeze(1)
    band = torch.zeros(size, out, dtype=taps.dtype, device=taps.device)
    band.scatter_(0, rows, taps.unsqueeze(1).expand(k, out).contiguous())
    return band


def _blur(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of (M, H, W) images -> (M, H - k + 1, W - k + 1), as two products with
    banded matrices (much faster on a CPU than a single-channel convolution)."""
    h, w = images.shape[-2:]
    return _band(h, taps).T @ images @ _band(w, taps)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Structural similarity per frame (Gaussian window 11, sigma 1.5, data range 1), mean over channels.

    Args:
        x, y: (N, 3, H, W) float frames in [0, 1], H and W at least 11.

    Returns:
        (N,) float32 in [-1, 1].
    """
    x, y = _check_pair(x, y)
    n, c, h, w = x.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}; "
                         "score larger frames")
    taps = gaussian_window().to(device=x.device, dtype=torch.float32)
    out = []
    for start in range(0, n, SSIM_CHUNK):  # bounded memory: 5 filtered copies of a chunk at a time
        a = x[start:start + SSIM_CHUNK].reshape(-1, h, w)
        b = y[start:start + SSIM_CHUNK].reshape(-1, h, w)
        mu_a, mu_b, aa, bb, ab = _blur(torch.cat([a, b, a * a, b * b, a * b]), taps).chunk(5)
        var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
        numerator = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
        denominator = (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)
        out.append((numerator / denominator).view(-1, c, numerator[0].numel()).mean(dim=2).mean(dim=1))
    return torch.cat(out)


@torch.no_grad()
def lpips(model: LPIPS, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """LPIPS (VGG) distance per frame on frames scaled to [-1, 1].

    Args:
        model: ``world_model.lpips.LPIPS`` with loaded weights (``build_perceptual``), on the frames' device.
        x, y: (N, 3, H, W) float frames in [0, 1].
        batch: frames per forward pass.

    Returns:
        (N,) float32.
    """
    x, y = _check_pair(x, y)
    out = [model(x[i:i + batch] * 2 - 1, y[i:i + batch] * 2 - 1).view(-1) for i in range(0, len(x), batch)]
    return torch.cat(out).float()


def best_of_n(scores: torch.Tensor | np.ndarray, higher_is_better: bool) -> torch.Tensor | np.ndarray:
    """The best score over samples (dim 0): max where higher is better (PSNR, SSIM), else min (LPIPS, MSE).

    Args:
        scores: (N_samples, ...) one score per sample (and per clip, ...).
        higher_is_better: which way is better.

    Returns:
        scores.shape[1:], same type as ``scores``.
    """
    if scores.shape[0] == 0:
        raise ValueError("best_of_n needs at least one sample along dim 0; pass (N_samples, ...) scores")
    if isinstance(scores, np.ndarray):
        return scores.max(axis=0) if higher_is_better else scores.min(axis=0)
    return scores.amax(dim=0) if higher_is_better else scores.amin(dim=0)


# ------------------------------------------------------------------------------------------------ FVD maths
class FeatureStats:
    """Streaming mean and biased covariance of feature vectors, accumulated in float64.

    Args:
        dim: feature size D.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"FeatureStats needs a feature size >= 1, got {dim}")
        self.dim = dim
        self.count = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        """Add a batch of features ``(N, D)``."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (N, {self.dim}), got {x.shape}")
        self.count += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's features to this one (returns self)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge feature stats of size {other.dim} into size {self.dim}")
        self.count += other.count
        self.total += other.total
        self.outer += other.outer
        return self

    def _need_data(self) -> None:
        if self.count == 0:
            raise ValueError("no features accumulated yet; call update() first")

    def mean(self) -> np.ndarray:
        """(D,) float64."""
        self._need_data()
        return self.total / self.count

    def covariance(self) -> np.ndarray:
        """(D, D) float64, biased: ``E[x x^T] - mu mu^T``."""
        mu = self.mean()
        return self.outer / self.count - np.outer(mu, mu)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` (real part), with ``scipy.linalg.sqrtm``."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"Fréchet distance needs means (D,) and covariances (D, D) of one size, got "
                         f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    try:
        import scipy.linalg  # only FVD needs scipy (the `report` extra)
    except ImportError as err:
        raise ImportError("the Fréchet distance needs scipy: pip install scipy (or the project's [report] extra)") \
            from err
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    value = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * root)
    return float(np.real(value))


def frechet_distance(real_features: np.ndarray | torch.Tensor, generated_features: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted (mean, biased covariance) to two feature sets.

    Args:
        real_features: (N1, D).
        generated_features: (N2, D).
    """
    stats = []
    for features in (real_features, generated_features):
        dim = features.shape[-1] if features.ndim == 2 else -1
        if dim < 1:
            raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
        s = FeatureStats(dim)
        s.update(features)
        stats.append(s)
    return frechet_distance_from_stats(stats[0].mean(), stats[0].covariance(),
                                       stats[1].mean(), stats[1].covariance())


def fvd_from_stats(real: FeatureStats, generated: FeatureStats) -> float:
    """FVD from two accumulated feature sets."""
    return frechet_distance_from_stats(real.mean(), real.covariance(), generated.mean(), generated.covariance())

