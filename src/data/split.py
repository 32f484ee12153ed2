"""Deterministic 70/15/15 split, stratified by label, with duplicate images kept together.

Identical on every run, machine and library version: image groups come from ``np.unique`` over
the raw pixel bytes (exact, no ``hash()``), and within each class the groups are ordered by a
keyed hash of their image's bytes, BLAKE2b keyed with the seed (ties, impossible in practice,
by first row). NumPy's random streams, which NumPy does not promise to keep across versions, play
no part. Every copy of an image lands in the same part, so no image (nor a duplicate of it) is in
two parts. The split hash is the sha256 of the three sorted index arrays (int64 little-endian).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.config.data import DataConfig
from src.data.io import read_images
from src.hashing import file_md5
from src.labels import NUM_CLASSES

PARTS = ("train", "val", "test")
DATASET_FILE = "splits.npz"
META_FILE = "split.json"


class DatasetFileError(ValueError):
    """The prepared dataset file is missing or lacks the expected arrays."""


def load_split(path: Path | str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (uint8 images N×28×28, int64 labels N) of ``split`` from the prepared ``.npz``."""
    path = Path(path)
    if split not in PARTS:
        raise DatasetFileError(f"Unknown split {split!r}; choose one of {list(PARTS)}.")
    if not path.is_file():
        raise DatasetFileError(
            f"Prepared dataset {path} not found; run the data flow (make train) or pass --dataset."
        )
    with np.load(path) as data:
        keys = (f"x_{split}", f"y_{split}")
        missing = [key for key in keys if key not in data.files]
        if missing:
            raise DatasetFileError(
                f"{path} lacks {missing}; regenerate it with the data flow (prepare_splits)."
            )
        return np.asarray(data[keys[0]], dtype=np.uint8), np.asarray(data[keys[1]], dtype=np.int64)


@dataclass(frozen=True)
class PreparedData:
    """What training receives: the split ``.npz`` plus the hashes it records."""

    dataset_path: Path
    split_hash: str
    data_md5: str
    counts: dict[str, int]

    @classmethod
    def from_file(
        cls, dataset_path: Path, data_md5: str = "", split_hash: str = ""
    ) -> PreparedData:
        """A split ``.npz`` made elsewhere; a hash not given is the file's md5."""
        with np.load(dataset_path) as arrays:
            counts = {p: len(arrays[f"y_{p}"]) for p in PARTS if f"y_{p}" in arrays.files}
        npz_md5 = file_md5(dataset_path) if not (data_md5 and split_hash) else ""
        return cls(dataset_path, split_hash or npz_md5, data_md5 or npz_md5, counts)


# Fixed odd multipliers for the 2 x 64-bit linear hash below (a constant, not hash()).
_HASH_MULTIPLIERS = np.random.default_rng(20250101).integers(
    1, 2**63, size=(2, 128), dtype=np.uint64
) | np.uint64(1)


def _exact_groups(rows: np.ndarray) -> np.ndarray:
    void = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1] * rows.itemsize)))
    _, inverse = np.unique(void.ravel(), return_inverse=True)
    return inverse.ravel().astype(np.int64)


def image_groups(images: np.ndarray) -> np.ndarray:
    """A group id per image; byte-identical images, and only those, share an id.

    A vectorised 128-bit linear hash over the pixel bytes proposes the groups (much faster
    than sorting 784-byte rows); every multi-member group is then checked byte by byte and split
    if the hash ever collided, so the grouping is exact.
    """
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    n, width = flat.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    padded = flat if width % 8 == 0 else np.pad(flat, ((0, 0), (0, 8 - width % 8)))
    words = np.ascontiguousarray(padded).view("<u8")
    mult = _HASH_MULTIPLIERS[:, : words.shape[1]]
    if words.shape[1] > mult.shape[1]:
        return _exact_groups(flat)
    keys = np.stack([(words * mult[0]).sum(axis=1), (words * mult[1]).sum(axis=1)], axis=1)
    groups = _exact_groups(keys)
    sizes = np.bincount(groups)
    next_id = len(sizes)
    for group in np.flatnonzero(sizes > 1):
        members = np.flatnonzero(groups == group)
        sub = _exact_groups(flat[members])
        if sub.max() > 0:  # a hash collision: give the other images their own ids
            for k in range(1, int(sub.max()) + 1):
                groups[members[sub == k]] = next_id
                next_id += 1
    return groups


def keyed_image_hash(image: np.ndarray, seed: int) -> int:
    """A 64-bit BLAKE2b of the image's bytes, keyed with ``seed``: the split order of an image."""
    key = int(seed).to_bytes(8, "little", signed=True)
    raw = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8, key=key).digest(), "little")


def split_indices(
    images: np.ndarray,
    labels: np.ndarray,
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    seed: int = 42,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted row indices of (train, val, test); stratified by label, duplicates grouped."""
    labels = np.asarray(labels, dtype=np.int64)
    groups = image_groups(images)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    first_row = np.full(n_groups, len(groups), dtype=np.int64)
    np.minimum.at(first_row, groups, np.arange(len(groups)))
    group_size = np.bincount(groups, minlength=n_groups)
    group_label = labels[first_row] if n_groups else np.zeros(0, dtype=np.int64)
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(groups), -1)
    keyed = np.array([keyed_image_hash(flat[row], seed) for row in first_row], dtype=np.uint64)
    order = np.lexsort((first_row, keyed))  # by keyed hash, ties by first row
    part_of_group = np.zeros(n_groups, dtype=np.int64)
    for label in np.unique(group_label):
        members = order[group_label[order] == label]
        sizes = group_size[members]
        total = int(sizes.sum())
        bounds = np.round(np.cumsum(fractions)[:2] * total)
        starts = np.cumsum(sizes) - sizes
        part_of_group[members] = np.searchsorted(bounds, starts, side="right")
    part_of_row = part_of_group[groups]
    train, val, test = (np.flatnonzero(part_of_row == p).astype(np.int64) for p in range(3))
    return train, val, test


def split_hash(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> str:
    digest = hashlib.sha256()
    for name, idx in zip(PARTS, (train, val, test), strict=True):
        digest.update(name.encode())
        digest.update(np.asarray(idx, dtype="<i8").tobytes())
    return digest.hexdigest()


def _load_existing(folder: Path, data_md5: str, cfg: DataConfig) -> PreparedData | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    dataset = folder / DATASET_FILE
    same = (
        meta.get("data_md5") == data_md5
        and meta.get("seed") == cfg.split_seed
        and meta.get("fractions") == list(cfg.split_fractions)
        and dataset.is_file()
        and dataset.stat().st_size == meta.get("bytes")
    )
    if not same:
        return None
    return PreparedData(dataset, str(meta["split_hash"]), data_md5, dict(meta["counts"]))


def prepare_splits(
    data_dir: Path, data_md5: str, cfg: DataConfig, output_root: Path, *, reuse: bool = True
) -> PreparedData:
    """Split the data set in ``data_dir`` and write ``output_root/<data_md5>/splits.npz``.

    The ``.npz`` holds ``x_/y_train``, ``x_/y_val``, ``x_/y_test`` (uint8 N×28×28, int64 N) and the
    row indices ``idx_train/val/test``; ``split.json`` beside it records the split hash, seed,
    fractions and counts. An existing split for the same md5, seed and fractions is reused.
    """
    folder = output_root / data_md5
    if reuse and (existing := _load_existing(folder, data_md5, cfg)) is not None:
        return existing
    images, labels = read_images(data_dir)
    train, val, test = split_indices(images, labels, cfg.split_fractions, cfg.split_seed)
    digest = split_hash(train, val, test)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name, idx in zip(PARTS, (train, val, test), strict=True):
        arrays[f"x_{name}"] = images[idx]
        arrays[f"y_{name}"] = labels[idx]
        arrays[f"idx_{name}"] = idx
    dataset = folder / DATASET_FILE
    tmp = folder / f".{DATASET_FILE}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(dataset)
    counts = {name: len(idx) for name, idx in zip(PARTS, (train, val, test), strict=True)}
    meta = {
        "data_md5": data_md5,
        "split_hash": digest,
        "seed": cfg.split_seed,
        "fractions": list(cfg.split_fractions),
        "counts": counts,
        "class_counts": {
            name: np.bincount(labels[idx], minlength=NUM_CLASSES).tolist()
            for name, idx in zip(PARTS, (train, val, test), strict=True)
        },
        "bytes": dataset.stat().st_size,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))
    return PreparedData(dataset, digest, data_md5, counts)
