"""The weight EMA's update rule, for Lightning's ``WeightAveraging`` callback."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def ema_update(
    decay: float,
) -> Callable[[Sequence[Tensor], Sequence[Tensor], Tensor | int], None]:
    """EMA for ``AveragedModel`` with the usual warmup: decay min(decay, (1+n)/(10+n)) at update n.

    Without the warmup the average is dominated by the random initial weights for the first
    thousands of steps (and forever in a short run).
    """

    @torch.no_grad()
    def update(
        averaged: Sequence[Tensor], current: Sequence[Tensor], num_averaged: Tensor | int
    ) -> None:
        n = float(num_averaged)
        effective = min(decay, (1.0 + n) / (10.0 + n))
        floating = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floating:
            avg, cur = zip(*floating, strict=True)
            torch._foreach_lerp_(list(avg), list(cur), 1.0 - effective)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)

    return update
