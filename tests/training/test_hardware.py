"""Precision, batch size and strategy chosen by measurement: each branch of the decision, the
real probe on this CPU (never in a precision the CPU lacks), and the budget warning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.model import build_model
from src.training import hardware
from src.training.hardware import (
    BF16,
    FP16,
    FP32,
    HardwarePlan,
    budget_warning,
    choose_precision,
    grow_batch,
    plan_hardware,
    resolve_accelerator,
    resolve_strategy,
    time_training_steps,
)
from tests.helpers.config import train_config


def test_fp32_without_a_native_low_precision() -> None:
    choice, reason = choose_precision({FP32: 400.0}, None)
    assert choice == FP32 and "no native bf16" in reason


def test_bf16_when_measured_clearly_faster() -> None:
    choice, reason = choose_precision({FP32: 400.0, BF16: 1300.0}, BF16)
    assert choice == BF16 and "1300" in reason and "400" in reason


def test_fp32_when_bf16_is_native_but_measured_slower() -> None:
    """The emulated-AVX2 case: the CPU claims bf16, its kernels are slow, fp32 wins."""
    choice, _ = choose_precision({FP32: 400.0, BF16: 35.0}, BF16)
    assert choice == FP32
    # Within the margin, fp32 (the reduced precision must pay for its rounding).
    assert choose_precision({FP32: 400.0, BF16: 420.0}, BF16)[0] == FP32


def test_fp16_is_the_gpu_candidate_without_bf16() -> None:
    assert choose_precision({FP32: 1000.0, FP16: 3000.0}, FP16)[0] == FP16


def test_batch_doubles_only_while_it_pays() -> None:
    cfg = train_config(batch_size=128, batch_size_max=1024)
    gpu_like = {128: 1000.0, 256: 1900.0, 512: 3500.0, 1024: 3800.0}
    assert grow_batch(cfg, gpu_like.__getitem__, train_size=60_000) == 512
    cpu_like = {128: 374.0, 256: 420.0, 512: 470.0, 1024: 480.0}
    assert grow_batch(cfg, cpu_like.__getitem__, train_size=60_000) == 128
    # Never past a tenth of the data (tiny runs keep their batch) nor batch_size_max.
    assert grow_batch(cfg, gpu_like.__getitem__, train_size=2_000) == 128
    capped = train_config(batch_size=128, batch_size_max=256)
    assert grow_batch(capped, gpu_like.__getitem__, train_size=60_000) == 256


def cpu_low_precision_from_flags() -> str | None:
    """What this CPU runs natively, read from the kernel's CPU flags (not from the code under
    test): bf16 with AVX-512 BF16 or AMX tiles, else none (also where there is no /proc)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    return BF16 if flags & {"avx512_bf16", "amx_tile"} else None


def test_the_cpu_s_native_low_precision_is_what_its_flags_say() -> None:
    assert hardware.native_low_precision("cpu") == cpu_low_precision_from_flags()


def test_probe_times_real_steps_on_this_cpu() -> None:
    model = build_model(train_config(widths=(8, 16), blocks_per_stage=1))
    rate = time_training_steps(model, FP32, batch_size=8, steps=2, device=torch.device("cpu"))
    assert rate > 0


def test_auto_never_times_a_precision_the_cpu_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[str] = []
    real = hardware.time_training_steps

    def recording(model: torch.nn.Module, precision: str, *args: object, **kw: object) -> float:
        timed.append(precision)
        return real(model, precision, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(hardware, "time_training_steps", recording)
    cfg = train_config(
        widths=(8, 16), blocks_per_stage=1, batch_size=8, precision="auto", accelerator="cpu"
    )
    plan = plan_hardware(cfg, lambda: build_model(cfg), train_size=64)
    low = cpu_low_precision_from_flags()
    assert set(timed) == ({FP32} | ({low} if low else set()))
    assert plan.precision in (FP32, low)
    assert plan.params()["chosen_precision"] == plan.precision
    assert f"probe_{FP32}_batch8_img_s" in plan.params()


def test_auto_chooses_by_the_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU that claims bf16: the faster measured precision is chosen, either way round."""
    monkeypatch.setattr(hardware, "native_low_precision", lambda accelerator: BF16)
    cfg = train_config(widths=(8,), blocks_per_stage=1, batch_size=8, precision="auto")
    for bf16_rate, expected in ((35.0, FP32), (1300.0, BF16)):
        rates = {FP32: 400.0, BF16: bf16_rate}
        monkeypatch.setattr(hardware, "time_training_steps", lambda m, p, b, s, d, r=rates: r[p])
        plan = plan_hardware(cfg, lambda: build_model(cfg), train_size=64)
        assert plan.precision == expected, bf16_rate


def test_a_set_precision_is_not_measured_against_others(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[str] = []
    monkeypatch.setattr(
        hardware, "time_training_steps", lambda m, p, b, s, d: timed.append(p) or 100.0
    )
    cfg = train_config(
        widths=(8,), blocks_per_stage=1, precision="32-true", mode="reproducible", max_epochs=1
    )
    plan = plan_hardware(cfg, lambda: build_model(cfg), train_size=64)
    assert plan.precision == FP32 and timed == [] and "set, not measured" in plan.reason


def test_budget_warning_names_the_speed_and_the_fix() -> None:
    cfg = train_config(time_budget_minutes=27, min_epochs_warning=5)
    slow = HardwarePlan("cpu", BF16, 128, 0.1, rates={f"{BF16}@128": 35.0})
    message = budget_warning(slow, cfg, train_size=42_000)
    assert message is not None
    assert "35 img/s" in message and "TRAIN_TIME_BUDGET_MINUTES" in message and "\n" not in message
    fast = HardwarePlan("cpu", FP32, 128, 0.1, rates={f"{FP32}@128": 440.0})
    assert budget_warning(fast, cfg, train_size=42_000) is None
    reproducible = train_config(mode="reproducible", max_epochs=40)
    assert budget_warning(slow, reproducible, train_size=42_000) is None


def test_gpu_asked_for_without_one_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both branches on any host: torch's answer to "is there a GPU" is the test's.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_accelerator("auto") == "cpu" and resolve_accelerator("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="TRAIN_ACCELERATOR=auto"):
        resolve_accelerator("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_accelerator("auto") == "gpu" and resolve_accelerator("gpu") == "gpu"
    assert resolve_accelerator("cpu") == "cpu"


def test_several_cpu_processes_spawn() -> None:
    assert resolve_strategy(train_config(devices=2, strategy="auto"), "cpu") == "ddp_spawn"
    assert resolve_strategy(train_config(devices=1, strategy="auto"), "cpu") == "auto"
    assert resolve_strategy(train_config(devices=2, strategy="ddp"), "cpu") == "ddp"
