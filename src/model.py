"""A ResNet for 1x28x28 Fashion-MNIST images, built from torchvision's ``BasicBlock``.

CIFAR-style layout: a 3x3 stem at full resolution (no 7x7 stride-2 stem or max-pool, which
would throw away most of a 28x28 image), then stages of residual blocks, each later stage halving
the resolution and widening; global average pooling and a linear classifier give logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from src.config.train import TrainConfig
from src.labels import NUM_CLASSES


class ResNet(nn.Module):
    """ResNet on (N, 1, 28, 28) normalised images → (N, num_classes) logits."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks_per_stage: int = 3,
        num_classes: int = NUM_CLASSES,
        in_channels: int = 1,
        flip_tta: bool = False,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must name at least one stage, e.g. (16, 32, 64).")
        self.flip_tta = flip_tta
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        inplanes = widths[0]
        for index, planes in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = []
            for block_index in range(blocks_per_stage):
                block_stride = stride if block_index == 0 else 1
                downsample = None
                if block_stride != 1 or inplanes != planes:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes, 1, stride=block_stride, bias=False),
                        nn.BatchNorm2d(planes),
                    )
                blocks.append(BasicBlock(inplanes, planes, block_stride, downsample))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta and not self.training:
            # Mirror-image test-time augmentation, part of the model so serving gets it too.
            both = self.forward_single(torch.cat([x, torch.flip(x, dims=[3])]))
            original, mirrored = both.chunk(2)
            return (original + mirrored) / 2
        return self.forward_single(x)


def build_model(cfg: TrainConfig) -> ResNet:
    """Build the ResNet described by ``cfg`` (preset or custom widths/blocks)."""
    widths, blocks = cfg.resolved_shape()
    return ResNet(widths=widths, blocks_per_stage=blocks, flip_tta=cfg.flip_tta)
