"""Fit training to the machine it runs on: device, precision and batch size, chosen by measurement.

bf16 autocast is much faster than fp32 on a CPU with AVX-512 BF16 and much slower on one without
(no native kernels; docs/results.md has the figures), and a batch that fills a GPU starves nothing
on a CPU. So ``precision: auto``
times a few training steps of the real model in each candidate and keeps the fastest; the
batch size grows only while doubling it pays. CPUID only says which candidates are worth timing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from src.config.train import TrainConfig
from src.labels import NUM_CLASSES
from src.preprocessing import IMAGE_SIZE

log = logging.getLogger(__name__)

FP32, BF16, FP16 = "32-true", "bf16-mixed", "16-mixed"
# A reduced precision must beat fp32 by this much to be chosen (it costs a little accuracy).
PRECISION_MARGIN = 1.10
# A doubled batch must train this much faster to be chosen (it takes fewer optimizer steps).
BATCH_MARGIN = 1.30


@dataclass(frozen=True)
class HardwarePlan:
    """What training runs on, what was measured to decide it, and why, in words."""

    accelerator: str  # "cpu" or "gpu"
    precision: str
    batch_size: int
    learning_rate: float
    rates: dict[str, float] = field(default_factory=dict)  # "<precision>@<batch>" -> images/s
    reason: str = ""

    @property
    def images_per_s(self) -> float:
        return self.rates.get(f"{self.precision}@{self.batch_size}", 0.0)

    def params(self) -> dict[str, object]:
        """For the MLflow run: the choice, every measured speed, the reason."""
        speeds = {
            f"probe_{k.replace('@', '_batch')}_img_s": round(v, 1) for k, v in self.rates.items()
        }
        return {
            "chosen_accelerator": self.accelerator,
            "chosen_precision": self.precision,
            "chosen_batch_size": self.batch_size,
            "chosen_learning_rate": self.learning_rate,
            "precision_reason": self.reason,
            **speeds,
        }


def resolve_accelerator(requested: str) -> str:
    """``gpu`` when asked for (``auto``, ``gpu``, ``cuda``) and CUDA is there, else ``cpu``."""
    if requested in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "gpu"
    if requested in ("gpu", "cuda"):
        raise RuntimeError(
            f"TRAIN_ACCELERATOR={requested} but torch sees no CUDA device; use TRAIN_ACCELERATOR=auto."
        )
    return "cpu"


def native_low_precision(accelerator: str) -> str | None:
    """The reduced precision this device runs natively (bf16 or fp16), or None."""
    if accelerator == "gpu":
        return BF16 if torch.cuda.is_bf16_supported() else FP16
    cpu = torch.cpu
    if cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported():
        return BF16
    return None


def time_training_steps(
    model: nn.Module, precision: str, batch_size: int, steps: int, device: torch.device
) -> float:
    """Images per second of ``steps`` SGD steps on random images (after one warm-up step)."""
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images = torch.randn(batch_size, 1, IMAGE_SIZE, IMAGE_SIZE, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    dtype = {BF16: torch.bfloat16, FP16: torch.float16}.get(precision)
    device_type = "cuda" if device.type == "cuda" else "cpu"

    def step() -> None:
        with torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / max(time.perf_counter() - started, 1e-9)


def choose_precision(rates: dict[str, float], low: str | None) -> tuple[str, str]:
    """fp32 unless ``low`` was measured at least PRECISION_MARGIN faster; returns (choice, reason)."""
    fp32 = rates[FP32]
    if low is None or low not in rates:
        return FP32, f"no native bf16/fp16 on this device: fp32 ({fp32:.0f} img/s)"
    if rates[low] >= PRECISION_MARGIN * fp32:
        return low, f"{low} {rates[low]:.0f} img/s vs fp32 {fp32:.0f} img/s: {low}"
    return FP32, f"{low} {rates[low]:.0f} img/s vs fp32 {fp32:.0f} img/s: fp32"


def plan_hardware(
    tcfg: TrainConfig, build: Callable[[], nn.Module], train_size: int
) -> HardwarePlan:
    """Decide accelerator, precision and batch size for ``tcfg`` by timing ``build()``'s model."""
    accelerator = resolve_accelerator(tcfg.accelerator)
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    steps = tcfg.precision_probe_steps
    rates: dict[str, float] = {}

    def measure(precision: str, batch: int) -> float:
        key = f"{precision}@{batch}"
        if key not in rates:
            rates[key] = time_training_steps(build(), precision, batch, steps, device)
        return rates[key]

    if tcfg.precision == "auto" and tcfg.mode == "reproducible":
        # Timings vary from run to run on a busy machine; the capability does not.
        precision = native_low_precision(accelerator) or FP32
        reason = f"reproducible mode: {precision}, what this device runs natively (not timed)"
    elif tcfg.precision == "auto":
        low = native_low_precision(accelerator)
        candidates = [FP32] + ([low] if low else [])
        by_precision = {p: measure(p, tcfg.batch_size) for p in candidates}
        precision, reason = choose_precision(by_precision, low)
    else:
        precision, reason = tcfg.precision, f"TRAIN_PRECISION={tcfg.precision} (set, not measured)"
    batch = tcfg.batch_size
    if tcfg.precision == "auto" and tcfg.mode == "time-fitted":
        # Time-fitted runs only: the reproducible mode keeps its batch whatever the machine.
        batch = grow_batch(tcfg, lambda b: measure(precision, b), train_size)
    if batch != tcfg.batch_size:
        reason += f"; batch {batch} trains faster than {tcfg.batch_size}"
    if tcfg.mode == "time-fitted":
        measure(precision, batch)  # the budget check needs the speed of what will run
    return HardwarePlan(
        accelerator=accelerator,
        precision=precision,
        batch_size=batch,
        learning_rate=tcfg.learning_rate * batch / tcfg.batch_size,
        rates=rates,
        reason=reason,
    )


def grow_batch(tcfg: TrainConfig, rate: Callable[[int], float], train_size: int) -> int:
    """Double the batch (up to ``batch_size_max`` and a tenth of the data) while it pays BATCH_MARGIN."""
    batch = tcfg.batch_size
    limit = min(tcfg.batch_size_max, max(tcfg.batch_size, train_size // 10))
    while batch * 2 <= limit and rate(batch * 2) >= BATCH_MARGIN * rate(batch):
        batch *= 2
    return batch


def epochs_that_fit(plan: HardwarePlan, tcfg: TrainConfig, train_size: int) -> float | None:
    """The probe's estimate of the epochs that fit into the time budget (validation counted at
    ~15 %), or None: the warning's figure and the plan until the first epoch is measured."""
    if tcfg.mode != "time-fitted" or tcfg.time_budget_minutes is None or plan.images_per_s <= 0:
        return None
    epoch_s = 1.15 * train_size / plan.images_per_s
    return tcfg.time_budget_minutes * 60.0 / epoch_s


def budget_warning(plan: HardwarePlan, tcfg: TrainConfig, train_size: int) -> str | None:
    """One line when the budget fits fewer than ``min_epochs_warning`` epochs, else None."""
    fits = epochs_that_fit(plan, tcfg, train_size)
    if fits is None or fits >= tcfg.min_epochs_warning:
        return None
    return (
        f"Measured {plan.images_per_s:.0f} img/s ({plan.precision}, batch {plan.batch_size}) on this "
        f"machine: only ~{fits:.1f} epochs fit in time_budget_minutes={tcfg.time_budget_minutes:g} "
        f"(floor {tcfg.min_epochs_warning}); the model will be weak. Raise TRAIN_TIME_BUDGET_MINUTES, "
        f"use TRAIN_PRECISION=auto, or choose a smaller network (TRAIN_WIDTHS)."
    )


def resolve_strategy(tcfg: TrainConfig, accelerator: str) -> str:
    """``ddp_spawn`` for several CPU processes under ``auto``: it works from any entry point (a
    flow, a test, a notebook), where ``ddp`` would re-run the calling command in each process."""
    several = isinstance(tcfg.devices, int) and tcfg.devices > 1
    if tcfg.strategy == "auto" and several and accelerator == "cpu":
        return "ddp_spawn"
    return tcfg.strategy
