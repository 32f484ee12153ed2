"""Batched augmentation on normalised image tensors (N, 1, H, W), done on the training device.

Per-image random choices, but a handful of tensor operations per batch instead of a Python loop
over images, so augmentation costs almost nothing next to the forward/backward pass.
"""

from __future__ import annotations

import math

import torch

from src.preprocessing import MEAN, STD

# The normalised value of a black (0) pixel: Fashion-MNIST's background.
BACKGROUND = (0.0 - MEAN) / STD


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pad each image by ``padding`` background pixels and cut a random H×W window back out."""
    if padding <= 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4, value=BACKGROUND)
    dy = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=images.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_erasing(
    images: torch.Tensor,
    p: float,
    scale: tuple[float, float] = (0.02, 0.2),
    ratio: tuple[float, float] = (0.3, 3.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Blank a random rectangle (to the mean, 0 after normalisation) in each image with probability ``p``."""
    if p <= 0:
        return images
    n, _, h, w = images.shape
    device = images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, device=device, generator=generator)

    area = uniform(*scale) * h * w
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    y0 = (uniform(0.0, 1.0) * (h - eh + 1)).floor()
    x0 = (uniform(0.0, 1.0) * (w - ew + 1)).floor()
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    inside = (
        (rows >= y0[:, None, None])
        & (rows < (y0 + eh)[:, None, None])
        & (cols >= x0[:, None, None])
        & (cols < (x0 + ew)[:, None, None])
    )
    chosen = torch.rand(n, device=device, generator=generator) < p
    mask = (inside & chosen[:, None, None]).unsqueeze(1)
    return images.masked_fill(mask, 0.0)


def augment_batch(
    images: torch.Tensor,
    *,
    crop_padding: int,
    hflip: bool,
    erasing_p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    images = random_crop(images, crop_padding, generator)
    if hflip:
        images = random_hflip(images, generator)
    return random_erasing(images, erasing_p, generator=generator)
