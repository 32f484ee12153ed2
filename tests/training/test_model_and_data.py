"""Model presets, batched augmentation, and train/serve preprocessing consistency."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.model import NETWORKS, build_model, count_macs, describe_model
from src.preprocessing import normalize, preprocess_image
from src.training.augment import BACKGROUND, augment_batch, random_crop, random_erasing
from src.training.data import FashionDataModule
from tests.helpers.config import train_config


@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("translate", [False, True])
def test_every_network_builds_and_gives_logits(network: str, translate: bool) -> None:
    cfg = train_config(network=network, widths=(8, 16), blocks_per_stage=1, translate_tta=translate)
    model = build_model(cfg)
    x = torch.randn(3, 1, 28, 28)
    model.train()
    assert model(x).shape == (3, 10)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (3, 10)
    shape = describe_model(model, cfg)
    assert shape["network"] == network and shape["widths"] == "8-16"
    assert shape["tta_views"] == (6 if translate else 2)
    assert shape["num_parameters"] == sum(p.numel() for p in model.parameters())


def test_unknown_network_names_the_choices() -> None:
    with pytest.raises(ValueError, match="convpool"):
        build_model(train_config(network="vgg"))


def test_macs_count_one_view() -> None:
    """ResNet-20's own count: 3x3 convs at 28x28/14x14/7x7 plus shortcuts and the head."""
    cfg = train_config(network="resnet", widths=(16, 32, 64), blocks_per_stage=3)
    macs = count_macs(build_model(cfg))
    stem = 28 * 28 * 16 * 9
    stage1 = 6 * 28 * 28 * 16 * 16 * 9
    stage2 = 14 * 14 * 32 * (16 * 9 + 5 * 32 * 9 + 16)
    stage3 = 7 * 7 * 64 * (32 * 9 + 5 * 64 * 9 + 32)
    assert macs == stem + stage1 + stage2 + stage3 + 64 * 10


def test_translate_tta_averages_shifted_views() -> None:
    cfg = train_config(network="convpool", widths=(8, 16), flip_tta=True, translate_tta=True)
    model = build_model(cfg).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():

        def mirror(v: torch.Tensor) -> torch.Tensor:
            return (model.forward_single(v) + model.forward_single(v.flip(3))) / 2

        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=BACKGROUND)
        up_left, down_right = padded[:, :, :28, :28], padded[:, :, 2:, 2:]
        expected = 0.5 * mirror(x) + 0.25 * (mirror(up_left) + mirror(down_right))
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_whitening_stem_whitens_patches() -> None:
    model = build_model(train_config(network="convpool", widths=(8,)))
    images = normalize(np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8))
    model.init_from_data(images)
    with torch.no_grad():
        out = model.whiten(images)[:, :4]  # the first half: one response per direction
    flat = out.permute(1, 0, 2, 3).reshape(4, -1)
    covariance = torch.cov(flat)
    torch.testing.assert_close(covariance, torch.eye(4), atol=0.05, rtol=0.05)


def test_flip_tta_averages_mirror_logits() -> None:
    model = build_model(train_config(flip_tta=True)).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = (model.forward_single(x) + model.forward_single(x.flip(3))) / 2
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
        # Mirror-invariant by construction.
        torch.testing.assert_close(model(x.flip(3)), model(x), rtol=1e-4, atol=1e-5)


def test_augmentation_keeps_shape_and_content() -> None:
    generator = torch.Generator().manual_seed(0)
    x = normalize(np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8))
    out = augment_batch(x, crop_padding=2, hflip=True, erasing_p=0.5, generator=generator)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(random_crop(x, 0), x)
    assert torch.equal(random_erasing(x, 0.0), x)
    # A crop shifts by at most `padding` pixels: the padded border is background.
    shifted = random_crop(x, 2, generator)
    assert (shifted == BACKGROUND).any()


def test_training_batch_path_equals_api_path(tmp_path: Path) -> None:
    """A 28x28 grayscale image gives the same tensor via the datamodule and the API's preprocessing."""
    rng = np.random.default_rng(1)
    garment = np.zeros((28, 28), dtype=np.uint8)
    garment[4:24, 6:22] = rng.integers(60, 256, (20, 16), dtype=np.uint8)
    images = np.stack([garment] * 4)
    labels = np.arange(4, dtype=np.int64)
    path = tmp_path / "one.npz"
    np.savez(
        path,
        **{
            f"{k}_{s}": v
            for s in ("train", "val", "test")
            for k, v in (("x", images), ("y", labels))
        },
    )
    datamodule = FashionDataModule(path, eval_batch_size=4)
    datamodule.setup()
    batch_images, _ = next(iter(datamodule.test_dataloader()))
    buffer = io.BytesIO()
    Image.fromarray(garment, mode="L").save(buffer, format="PNG")
    api_tensor = preprocess_image(buffer.getvalue())
    assert api_tensor.shape == (1, 28, 28)
    torch.testing.assert_close(batch_images[0], api_tensor, rtol=0, atol=0)
