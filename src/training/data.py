"""LightningDataModule over the prepared ``.npz`` split (x_/y_ train, val, test)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from src.data.split import PARTS, load_split
from src.preprocessing import normalize


class BatchTensorDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Indexed by a list of indices: returns a whole batch with two tensor gathers (no collate loop)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that passes ``set_epoch`` on, so each epoch of a sharded run reshuffles."""

    def set_epoch(self, epoch: int) -> None:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)


def _subset(
    images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if limit is None or limit >= len(labels):
        return images, labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:limit])
    return images[keep], labels[keep]


class FashionDataModule(L.LightningDataModule):
    """Normalises the prepared splits once (via :func:`src.preprocessing.normalize`) and serves batches.

    Augmentation is not done here: it runs on whole batches on the device, in the LightningModule.
    """

    def __init__(
        self,
        dataset_path: Path | str,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        limit_train_samples: int | None = None,
        limit_eval_samples: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.dataset_path = Path(dataset_path)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.limit_train_samples = limit_train_samples
        self.limit_eval_samples = limit_eval_samples
        self.num_workers = num_workers
        self.seed = seed
        self.datasets: dict[str, BatchTensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        for split in PARTS:
            images, labels = load_split(self.dataset_path, split)
            limit = self.limit_train_samples if split == "train" else self.limit_eval_samples
            if split != "test":  # the test split is always used whole (the gate compares on it)
                images, labels = _subset(images, labels, limit, self.seed)
            self.datasets[split] = BatchTensorDataset(normalize(images), torch.as_tensor(labels))

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        world, rank = self._world()
        sampler: Sampler[int]
        if world > 1:
            # Each process a shard; the global batch stays batch_size.
            sampler = DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed
            )
            batch_size = max(1, batch_size // world)
        elif shuffle:
            generator = torch.Generator().manual_seed(self.seed)
            sampler = RandomSampler(dataset, generator=generator)
        else:
            sampler = SequentialSampler(dataset)
        drop_last = shuffle and len(dataset) > batch_size * world
        return DataLoader(
            dataset,
            sampler=EpochBatchSampler(sampler, batch_size=batch_size, drop_last=drop_last),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
