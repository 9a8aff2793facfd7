"""LPIPS perceptual distance: weight loading from local files, the metric's basic properties."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from world_model.lpips import LPIPS, LPIPS_FILENAME, VGG_FILENAMES, VGG16Features, build_perceptual

# torchvision's vgg16 "features" indices that hold convolutions (the rest are ReLU / max-pool).
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights in the published file layouts: a torchvision vgg16 state dict and LPIPS' vgg.pth."""
    folder = tmp_path_factory.mktemp("lpips")
    generator = torch.Generator().manual_seed(0)
    vgg = {}
    channels = 3
    for index, width in zip(TORCHVISION_CONV_INDICES, (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)):
        vgg[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3, generator=generator) * (2 / (9 * channels)) ** 0.5
        vgg[f"features.{index}.bias"] = torch.zeros(width)
        channels = width
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too: ignored
    torch.save(vgg, folder / VGG_FILENAMES[-1])
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
            for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lins, folder / LPIPS_FILENAME)
    return folder


def test_vgg_parameter_names_follow_torchvision() -> None:
    names = {k.rsplit(".", 1)[0] for k in VGG16Features().state_dict()}
    assert names == {f"features.{i}" for i in TORCHVISION_CONV_INDICES}


def test_build_perceptual_loads_local_weights(weights_dir: Path) -> None:
    model = build_perceptual(weights_dir)
    assert isinstance(model, LPIPS)
    saved = torch.load(weights_dir / VGG_FILENAMES[-1], weights_only=True)
    assert torch.equal(model.net.features[28].weight, saved["features.28.weight"])
    saved_lin = torch.load(weights_dir / LPIPS_FILENAME, weights_only=True)
    assert torch.equal(model.lins[4].weight, saved_lin["lin4.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters())


def test_lpips_is_a_distance_with_input_gradients(weights_dir: Path) -> None:
    model = build_perceptual(weights_dir)
    model.train()  # a parent's train() must not change the metric
    assert not model.training
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    b = (a + 0.3 * torch.randn(2, 3, 16, 16, generator=generator)).clamp(-1, 1).requires_grad_(True)
    d_ab = model(a, b)
    assert d_ab.shape == (2, 1, 1, 1) and (d_ab > 0).all()
    assert torch.allclose(model(a, a), torch.zeros(2, 1, 1, 1), atol=1e-6)
    torch.testing.assert_close(model(b, a), d_ab)
    # Farther images are farther apart.
    c = (a + 0.9 * torch.randn(2, 3, 16, 16, generator=generator)).clamp(-1, 1)
    assert (model(a, c) > d_ab).all()
    d_ab.sum().backward()
    assert b.grad is not None and b.grad.abs().sum() > 0


def test_missing_weights_turn_the_term_off_with_one_warning(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="world_model.lpips"):
        assert build_perceptual(tmp_path) is None
        assert build_perceptual(None) is None
    assert len(caplog.records) == 2
    assert f"no weights found at {tmp_path}" in caplog.records[0].getMessage()
    assert "perceptual (LPIPS) loss term is off" in caplog.records[1].getMessage()


def test_bad_lpips_file_is_rejected(weights_dir: Path, tmp_path: Path) -> None:
    vgg = torch.load(weights_dir / VGG_FILENAMES[-1], weights_only=True)
    with pytest.raises(ValueError, match=r"lin0\.\.lin4\.model\.1\.weight"):
        LPIPS().load_weights(vgg, {"lin0.weight": torch.zeros(1, 64, 1, 1)})
