"""Training throughput: the Lightning loop vs a bare PyTorch loop on the same model, batch, precision.

    python -m benchmarks.bench_training [--seconds 40] [--batch-size 128] [--preset resnet20]

Both loops run the configured recipe: batched augmentation on the device, bf16 autocast (if the
config says so), channels_last, SGD + per-step LR schedule, weight EMA. Each loop runs warm-up
steps, then is timed for about ``--seconds``. Acceptance: lightning/bare >= 0.9.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, WeightAveraging

from src.config import TrainConfig, load_config
from src.preprocessing import normalize
from src.training.augment import augment_batch
from src.training.data import FashionDataModule
from src.training.hardware import plan_hardware
from src.training.module import LitClassifier
from src.training.train import ema_update

WARMUP_STEPS = 10


def synthetic_npz(path: Path, n_train: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("val", 64), ("test", 64)):
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"y_{split}"] = rng.integers(0, 10, n).astype(np.int64)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def autocast(cfg: TrainConfig) -> contextlib.AbstractContextManager[Any]:
    if cfg.precision.startswith("bf16"):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bench_bare(cfg: TrainConfig, dataset: Path, steps: int) -> float:
    L.seed_everything(cfg.seed, verbose=False)
    with np.load(dataset) as data:
        images, labels = normalize(data["x_train"]), torch.as_tensor(data["y_train"])
    module = LitClassifier(cfg)  # same model construction (and channels_last) as Lightning
    model = module.model.train()
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=ema_update(cfg.ema_decay), use_buffers=True
    )
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(labels), generator=generator)
    batches_per_epoch = len(labels) // cfg.batch_size
    started = 0.0
    for step in range(steps + WARMUP_STEPS):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        i = step % batches_per_epoch
        index = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        x = augment_batch(
            images[index],
            crop_padding=cfg.crop_padding,
            hflip=cfg.hflip,
            erasing_p=cfg.random_erasing_p,
        )
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(cfg):
            loss = F.cross_entropy(model(x), labels[index], label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if cfg.ema_decay > 0:
            ema.update_parameters(model)
    return steps * cfg.batch_size / (time.perf_counter() - started)


class _Timer(Callback):
    def __init__(self) -> None:
        self.started = 0.0
        self.ended = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == WARMUP_STEPS:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.ended = time.perf_counter()


def bench_lightning(cfg: TrainConfig, dataset: Path, steps: int) -> float:
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = FashionDataModule(dataset, batch_size=cfg.batch_size, seed=cfg.seed)
    module = LitClassifier(cfg)
    timer = _Timer()
    callbacks: list[Callback] = [timer]
    if cfg.ema_decay > 0:
        callbacks.append(WeightAveraging(multi_avg_fn=ema_update(cfg.ema_decay)))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=cfg.precision,
        max_steps=steps + WARMUP_STEPS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=datamodule)
    return steps * cfg.batch_size / (timer.ended - timer.started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="target seconds per loop")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--network", default=None, help="a name in src.model.NETWORKS")
    parser.add_argument("--widths", default=None, help="e.g. 64,128,256")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the loops this many times")
    args = parser.parse_args(argv)
    import logging
    import warnings

    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    overrides: dict[str, Any] = {"mode": "reproducible", "max_epochs": 1}
    for key, value in (
        ("batch_size", args.batch_size),
        ("network", args.network),
        ("widths", [int(w) for w in args.widths.split(",")] if args.widths else None),
        ("precision", args.precision),
    ):
        if value is not None:
            overrides[key] = value
    cfg = load_config(overrides={"train": overrides}).train
    if cfg.precision == "auto":  # what training would choose on this machine
        plan = plan_hardware(cfg, lambda: LitClassifier(cfg).model, train_size=8192)
        cfg = cfg.model_copy(update={"precision": plan.precision})
    with tempfile.TemporaryDirectory() as tmp:
        dataset = synthetic_npz(Path(tmp) / "bench.npz", n_train=8192)
        # Size the runs: a short probe of the bare loop gives the step rate.
        probe = bench_bare(cfg, dataset, 10)
        steps = max(20, int(args.seconds * probe / cfg.batch_size))
        bare_runs, lightning_runs = [], []
        for _ in range(args.rounds):
            bare_runs.append(bench_bare(cfg, dataset, steps))
            lightning_runs.append(bench_lightning(cfg, dataset, steps))
    bare, lightning = max(bare_runs), max(lightning_runs)
    print(
        f"model {cfg.network} ({'-'.join(map(str, cfg.widths))} x{cfg.blocks_per_stage}), "
        f"batch {cfg.batch_size}, "
        f"precision {cfg.precision}, channels_last {cfg.channels_last}, ema {cfg.ema_decay}, "
        f"{steps} timed steps per loop, torch threads {torch.get_num_threads()}"
    )
    print(f"{'loop':<12}{'img/s':>10}")
    print(f"{'bare':<12}{bare:>10.0f}")
    print(f"{'lightning':<12}{lightning:>10.0f}")
    print(f"ratio lightning/bare: {lightning / bare:.3f} (acceptance >= 0.9)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
