"""The networks for 1x28x28 Fashion-MNIST images, chosen by name from :data:`NETWORKS`.

Two families, both with test-time augmentation inside the model (so the exported and served
model gives exactly the evaluated answer):

- ``ResNet``: CIFAR-style ResNet from torchvision's ``BasicBlock`` (3x3 stem at full resolution,
  stages that halve the resolution and widen, global average pool).
- ``ConvPoolNet``: the airbench layout (KellerJordan/cifar10-airbench): a frozen 2x2 patch-
  whitening stem, then conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU groups, a global
  max-pool and a scaled linear head. Fewer, wider layers: more accuracy per FLOP on a CPU.

Add a network: write a builder ``TrainConfig -> nn.Module`` and give it a name in ``NETWORKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from src.config.train import TrainConfig
from src.labels import NUM_CLASSES
from src.preprocessing import IMAGE_SIZE

# The normalised value of a black pixel (Fashion-MNIST's background), for translated TTA views.
_BACKGROUND = (0.0 - 0.2860) / 0.3530


class TTAMixin(nn.Module):
    """Eval-mode test-time augmentation around ``forward_single``: mirror and/or 1-pixel shifts."""

    flip_tta: bool  # set by the network's constructor, from train.flip_tta / translate_tta
    translate_tta: bool

    def forward_single(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _mirror(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip_tta:
            return self.forward_single(x)
        both = self.forward_single(torch.cat([x, torch.flip(x, dims=[3])]))
        original, mirrored = both.chunk(2)
        return (original + mirrored) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.forward_single(x)
        logits = self._mirror(x)
        if not self.translate_tta:
            return logits
        # airbench's translate TTA: the image shifted one pixel up-left and down-right.
        h, w = x.shape[2], x.shape[3]
        padded = F.pad(x, (1, 1, 1, 1), value=_BACKGROUND)
        shifted = torch.cat([padded[:, :, :h, :w], padded[:, :, 2 : h + 2, 2 : w + 2]])
        translated = self._mirror(shifted).reshape(2, x.shape[0], -1).mean(0)
        return 0.5 * logits + 0.5 * translated


class ResNet(TTAMixin):
    """ResNet on (N, 1, 28, 28) normalised images -> (N, num_classes) logits."""

    def __init__(
        self,
        widths: tuple[int, ...],
        blocks_per_stage: int,
        *,
        flip_tta: bool,
        translate_tta: bool,
        num_classes: int = NUM_CLASSES,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage, e.g. (16, 32, 64).")
        self.flip_tta, self.translate_tta = flip_tta, translate_tta
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        inplanes = widths[0]
        for index, planes in enumerate(widths):
            stages.append(_resnet_stage(inplanes, planes, blocks_per_stage, 1 if index == 0 else 2))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Zero-init the last BN of each residual branch: every block starts as the identity.
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)

    def forward_single(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _resnet_stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(blocks):
        block_stride = stride if index == 0 else 1
        downsample = None
        if block_stride != 1 or inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=block_stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers.append(BasicBlock(inplanes, planes, block_stride, downsample))
        inplanes = planes
    return nn.Sequential(*layers)


def _frozen_scale_norm(channels: int) -> nn.BatchNorm2d:
    # airbench's BN: scale fixed at 1 (only the shift learns), fast-moving running statistics.
    norm = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    norm.weight.requires_grad_(False)
    return norm


def _dirac_conv(channels_in: int, channels_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False)
    # Part identity at init (as airbench): the first filters pass their input channel through.
    nn.init.dirac_(conv.weight.data[: min(channels_in, channels_out)])
    return conv


class ConvGroup(nn.Sequential):
    """conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench's block)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(
            _dirac_conv(channels_in, channels_out),
            nn.MaxPool2d(2),
            _frozen_scale_norm(channels_out),
            nn.GELU(),
            _dirac_conv(channels_out, channels_out),
            _frozen_scale_norm(channels_out),
            nn.GELU(),
        )


class ConvPoolNet(TTAMixin):
    """airbench-style net: frozen 2x2 whitening stem, conv-pool groups, max-pool, scaled head."""

    def __init__(
        self,
        widths: tuple[int, ...],
        *,
        flip_tta: bool,
        translate_tta: bool,
        num_classes: int = NUM_CLASSES,
        in_channels: int = 1,
        head_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one group, e.g. (64, 128, 256).")
        self.flip_tta, self.translate_tta = flip_tta, translate_tta
        self.head_scale = head_scale
        patch = in_channels * 2 * 2
        # Each whitened direction and its negative: GELU then keeps both signs' information.
        self.whiten = nn.Conv2d(in_channels, 2 * patch, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        groups: list[nn.Module] = []
        channels = 2 * patch
        for width in widths:
            groups.append(ConvGroup(channels, width))
            channels = width
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(channels, num_classes, bias=False)

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the stem to whiten 2x2 patches of ``images`` (N, C, H, W): eigenvectors / sqrt(eigenvalues)."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N, C, H-1, W-1, 2, 2
        patches = patches.transpose(1, 3).reshape(-1, images.shape[1] * 4)
        patches = patches - patches.mean(0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).reshape(
            -1, images.shape[1], 2, 2
        )
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        assert self.whiten.bias is not None
        self.whiten.bias.zero_()

    def forward_single(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.whiten(x))
        x = self.groups(x)
        x = torch.amax(x, dim=(2, 3))
        return self.head(x) * self.head_scale


def build_resnet(cfg: TrainConfig) -> nn.Module:
    return ResNet(
        widths=cfg.widths,
        blocks_per_stage=cfg.blocks_per_stage,
        flip_tta=cfg.flip_tta,
        translate_tta=cfg.translate_tta,
    )


def build_convpool(cfg: TrainConfig) -> nn.Module:
    return ConvPoolNet(widths=cfg.widths, flip_tta=cfg.flip_tta, translate_tta=cfg.translate_tta)


# The one table of architectures: ``train.network`` names the builder, ``train.widths`` (and, for
# ResNets, ``train.blocks_per_stage``) its shape; configs/train.yaml documents the tried shapes.
NETWORKS: dict[str, Callable[[TrainConfig], nn.Module]] = {
    "resnet": build_resnet,
    "convpool": build_convpool,
}


def build_model(cfg: TrainConfig) -> nn.Module:
    """Build the network ``cfg.network`` with ``cfg``'s shape and test-time augmentation."""
    try:
        builder = NETWORKS[cfg.network]
    except KeyError:
        raise ValueError(
            f"Unknown network {cfg.network!r}; choose one of {sorted(NETWORKS)} (TRAIN_NETWORK)."
        ) from None
    return builder(cfg)


def describe_model(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """The model's own shape, for the run's parameters: name, widths, size, cost of one image."""
    macs = count_macs(model)
    return {
        "network": cfg.network,
        "widths": "-".join(str(w) for w in cfg.widths),
        "blocks_per_stage": cfg.blocks_per_stage if cfg.network == "resnet" else "n/a",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "mmacs_per_view": round(macs / 1e6, 2),
        "tta_views": (2 if cfg.flip_tta else 1) * (3 if cfg.translate_tta else 1),
    }


def count_macs(model: nn.Module) -> int:
    """Multiply-accumulates of one view of one image (convolutions and linears, no TTA)."""
    total = 0

    def hook(module: nn.Module, _: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = (
                module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
            total += output.numel() * per_output
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    forward_single = getattr(model, "forward_single", model)
    was_training = model.training
    try:
        model.eval()  # no BN statistics updated
        with torch.no_grad():
            model_device = next(model.parameters()).device
            forward_single(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=model_device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
