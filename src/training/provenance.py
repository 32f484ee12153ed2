"""What a run's numbers depend on besides the code and the data: the commit and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from src.config.train import TrainConfig
from src.training.budget import REPRODUCIBLE, TIME_FITTED


def git_commit(root: Path) -> str:
    """The checked-out commit (``+dirty`` when tracked files changed), or ``unknown`` without git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def training_mode(tcfg: TrainConfig) -> str:
    """``train.mode``: ``time-fitted`` or ``reproducible`` (src.training.budget)."""
    return tcfg.mode


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_params(tcfg: TrainConfig) -> dict[str, Any]:
    """What the run's speed and numbers depend on besides the code and the data."""
    cuda = torch.cuda.is_available() and tcfg.accelerator in ("auto", "gpu", "cuda")
    return {
        "machine_cpu_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "machine_cpu": cpu_model(),
        "machine_cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "training_mode": tcfg.mode,
        "deterministic": tcfg.mode == REPRODUCIBLE,
        "wall_clock_cut_minutes": tcfg.max_time_minutes if tcfg.mode == TIME_FITTED else None,
    }
