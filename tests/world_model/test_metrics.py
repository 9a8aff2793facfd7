"""world_model.metrics: PSNR / SSIM against scikit-image, LPIPS hook, best-of-N, streaming feature statistics and
the Fréchet distance against closed forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from world_model import metrics
from world_model.lpips import LPIPS, build_perceptual

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is needed as the SSIM/PSNR reference "
                                      "(pip install scikit-image)")


def frame_pairs(n: int = 3, h: int = 32, w: int = 40, noise: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    y = (x + noise * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    return x, y


def hwc(frame: torch.Tensor) -> np.ndarray:
    return frame.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("shape,noise", [((32, 40), 0.1), ((64, 64), 0.02), ((11, 16), 0.3)])
def test_ssim_matches_scikit_image(shape, noise):
    x, y = frame_pairs(h=shape[0], w=shape[1], noise=noise)
    ours = metrics.ssim(x, y)
    for i in range(len(x)):
        ref = skimage_metrics.structural_similarity(hwc(x[i]), hwc(y[i]), gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False, data_range=1, channel_axis=-1)
        assert abs(float(ours[i]) - ref) < 1e-5
    assert torch.allclose(metrics.ssim(x, x), torch.ones(len(x)), atol=1e-6)


def test_psnr_and_mse_match_scikit_image():
    x, y = frame_pairs(noise=0.1)
    ours_psnr, ours_mse = metrics.psnr(x, y), metrics.mse(x, y)
    for i in range(len(x)):
        ref_mse = skimage_metrics.mean_squared_error(hwc(x[i]), hwc(y[i]))
        assert abs(float(ours_mse[i]) - ref_mse) < 1e-7
        # the protocol's epsilon: -10 log10(mse + 1e-8) for data range 1
        assert abs(float(ours_psnr[i]) - (-10 * np.log10(ref_mse + 1e-8))) < 1e-5
        # scikit-image has no epsilon: at this error level it moves PSNR by ~4e-6 dB
        ref_psnr = skimage_metrics.peak_signal_noise_ratio(hwc(x[i]), hwc(y[i]), data_range=1)
        assert abs(float(ours_psnr[i]) - ref_psnr) < 1e-5
    assert torch.allclose(metrics.psnr(x, x), torch.full((len(x),), 80.0))


def test_frame_metrics_clamp_and_reject_bad_input():
    x, y = frame_pairs()
    assert torch.equal(metrics.mse(x * 3 - 1, y), metrics.mse((x * 3 - 1).clamp(0, 1), y))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(x, y[:2])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        metrics.ssim(x[:, :1], y[:, :1])
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(x[..., :8, :8], y[..., :8, :8])
    with pytest.raises(ValueError, match="float"):
        metrics.mse((x * 255).to(torch.uint8), (y * 255).to(torch.uint8))


def test_lpips_hook_scales_frames_to_minus_one_one(tmp_path):
    torch.manual_seed(0)
    reference = LPIPS()
    for p in reference.parameters():
        p.data.normal_(0, 0.05).abs_()
    torch.save({f"features.{k}": v for k, v in reference.net.features.state_dict().items()}, tmp_path / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": lin.weight for i, lin in enumerate(reference.lins)}, tmp_path / "vgg.pth")
    model = build_perceptual(tmp_path)
    x, y = frame_pairs(n=2, h=32, w=32)
    ours = metrics.lpips(model, x, y, batch=1)
    assert ours.shape == (2,)
    assert torch.allclose(ours, reference(x * 2 - 1, y * 2 - 1).view(-1), rtol=1e-5, atol=1e-7)
    assert torch.allclose(metrics.lpips(model, x, x), torch.zeros(2), atol=1e-7)


def test_best_of_n_equals_a_reference_loop():
    scores = np.random.default_rng(0).normal(size=(7, 4, 3))
    for higher in (True, False):
        ref = np.empty((4, 3))
        for clip in range(4):
            for m in range(3):
                column = [scores[s, clip, m] for s in range(7)]
                ref[clip, m] = max(column) if higher else min(column)
        assert np.array_equal(metrics.best_of_n(scores, higher), ref)
        assert torch.equal(metrics.best_of_n(torch.from_numpy(scores), higher), torch.from_numpy(ref))
    with pytest.raises(ValueError, match="at least one sample"):
        metrics.best_of_n(np.zeros((0, 3)), True)


def test_feature_stats_stream_equals_numpy():
    x = np.random.default_rng(1).normal(size=(50, 6)).astype(np.float32) * 3 + 1
    a, b = metrics.FeatureStats(6), metrics.FeatureStats(6)
    for chunk in np.array_split(x[:30], 4):
        a.update(chunk)
    b.update(torch.from_numpy(x[30:]))
    a.merge(b)
    x64 = x.astype(np.float64)
    assert a.count == 50
    np.testing.assert_allclose(a.mean(), x64.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.covariance(), np.cov(x64, rowvar=False, bias=True), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        a.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="no features"):
        metrics.FeatureStats(3).mean()


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = metrics.frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(closed, rel=1e-10)


def test_frechet_distance_of_feature_sets():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(400, 4)) * np.array([1.0, 2.0, 0.5, 1.5])
    fake = real * np.array([1.2, 0.5, 1.0, 1.0]) + np.array([0.3, 0.0, -0.2, 0.0])
    # each set, and so its biased covariance, is diagonal up to sampling: compare with the closed form of the
    # exact diagonal transform (fake covariance = D real_cov D)
    cov = np.cov(real, rowvar=False, bias=True)
    scale = np.diag([1.2, 0.5, 1.0, 1.0])
    expected = metrics.frechet_distance_from_stats(real.mean(0), cov, fake.mean(0), scale @ cov @ scale)
    assert metrics.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-8)
    assert metrics.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="one size"):
        metrics.frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
