from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import src.data.split as split_module
from src.data.io import write_idx
from src.data.split import prepare_splits, split_hash, split_indices
from tests.helpers.config import data_config
from tests.helpers.data import make_images


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    images, labels = make_images(n_per_class=40)
    train, val, test = split_indices(images, labels)
    assert (len(train), len(val), len(test)) == (280, 60, 60)
    for part, per_class in ((train, 28), (val, 6), (test, 6)):
        assert np.bincount(labels[part], minlength=10).tolist() == [per_class] * 10
    assert len(np.unique(np.concatenate([train, val, test]))) == 400
    again = split_indices(images.copy(), labels.copy())
    assert split_hash(train, val, test) == split_hash(*again)
    other_seed = split_indices(images, labels, seed=7)
    assert split_hash(train, val, test) != split_hash(*other_seed)


def _images_without_numpy_rng(n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Images made by SHAKE-128 of their index: the same bytes whatever NumPy's version."""
    raw = b"".join(hashlib.shake_128(f"image {i}".encode()).digest(784) for i in range(n))
    images = np.frombuffer(raw, dtype=np.uint8).reshape(n, 28, 28).copy()
    return images, np.arange(n, dtype=np.int64) * 7 % 10


def test_split_hash_is_pinned() -> None:
    # Same data and seed must give the same split on every machine and NumPy version. The data
    # here owes nothing to NumPy's random streams either.
    images, labels = _images_without_numpy_rng()
    assert split_hash(*split_indices(images, labels)) == (
        "62547c4f508ea4744f9044eca514117b843bff36ab8160737d85d8941719df1f"
    )


def test_the_split_owes_nothing_to_numpy_random_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    """NumPy does not promise its random streams across versions. The split draws nothing from
    them when it runs, and the one thing made from a NumPy generator (at import: the multipliers
    of the hash that proposes duplicate groups) does not change it: with other multipliers, even
    all-zero ones that put every image in one proposed group, the split is the same."""
    images, labels = _images_without_numpy_rng()
    images = np.concatenate([images, images[:30]])  # 30 duplicated images, same labels
    labels = np.concatenate([labels, labels[:30]])
    expected = split_indices(images, labels)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the split used a NumPy random generator")

    monkeypatch.setattr(np.random, "default_rng", forbidden)
    monkeypatch.setattr(np.random, "permutation", forbidden)
    monkeypatch.setattr(np.random, "shuffle", forbidden)
    shape = split_module._HASH_MULTIPLIERS.shape
    for multipliers in (
        split_module._HASH_MULTIPLIERS,
        np.arange(1, 2 * shape[0] * shape[1], 2, dtype=np.uint64).reshape(shape),
        np.zeros(shape, dtype=np.uint64),
    ):
        monkeypatch.setattr(split_module, "_HASH_MULTIPLIERS", multipliers)
        for got, want in zip(split_indices(images, labels), expected, strict=True):
            np.testing.assert_array_equal(got, want)
    train, val, test = expected
    for row in range(30):  # each duplicate sits in the part of its original
        parts = [row in part for part in (train, val, test)]
        assert parts == [400 + row in part for part in (train, val, test)]


def test_order_within_a_class_follows_the_keyed_image_hash() -> None:
    """Each class's images are ranked by BLAKE2b(image bytes, key=seed): the first 70 % by that
    rank are train - computed here with hashlib alone, not with the code under test."""
    images, labels = _images_without_numpy_rng()
    train, val, test = split_indices(images, labels, seed=42)
    key = (42).to_bytes(8, "little", signed=True)
    for label in range(10):
        rows = np.flatnonzero(labels == label)
        rank = sorted(
            rows,
            key=lambda r: int.from_bytes(
                hashlib.blake2b(images[r].tobytes(), digest_size=8, key=key).digest(), "little"
            ),
        )
        assert sorted(rank[:28]) == sorted(set(train) & set(rows))
        assert sorted(rank[28:34]) == sorted(set(val) & set(rows))
        assert sorted(rank[34:]) == sorted(set(test) & set(rows))


def test_duplicates_stay_in_one_part() -> None:
    images, labels = make_images(n_per_class=40)
    # 30 groups of 3 identical images (same label): each group must land in a single part.
    groups = []
    for g in range(30):
        rows = np.flatnonzero(labels == g % 10)[3 * (g // 10) : 3 * (g // 10) + 3]
        images[rows] = images[rows[0]]
        groups.append(rows)
    parts = split_indices(images, labels)
    where = np.empty(len(labels), dtype=np.int64)
    for p, idx in enumerate(parts):
        where[idx] = p
    for rows in groups:
        assert len(set(where[rows].tolist())) == 1
    assert sum(len(p) for p in parts) == 400
    assert abs(len(parts[0]) - 280) <= 10 * 2  # stratified up to a group per class boundary


def test_prepare_splits_writes_npz_and_reuses(tmp_path: Path) -> None:
    images, labels = make_images(n_per_class=40)
    write_idx(tmp_path / "data", images, labels)
    cfg = data_config()
    prepared = prepare_splits(tmp_path / "data", "abc.dir", cfg, tmp_path / "prepared")
    assert prepared.dataset_path == tmp_path / "prepared" / "abc.dir" / "splits.npz"
    assert prepared.counts == {"train": 280, "val": 60, "test": 60}
    with np.load(prepared.dataset_path) as data:
        assert data["x_train"].dtype == np.uint8 and data["x_train"].shape == (280, 28, 28)
        assert data["y_test"].dtype == np.int64
        np.testing.assert_array_equal(data["x_val"], images[data["idx_val"]])
        assert (
            split_hash(data["idx_train"], data["idx_val"], data["idx_test"]) == prepared.split_hash
        )
    meta = json.loads((prepared.dataset_path.parent / "split.json").read_text())
    assert meta["split_hash"] == prepared.split_hash and meta["seed"] == 42
    mtime = prepared.dataset_path.stat().st_mtime_ns
    assert prepare_splits(tmp_path / "data", "abc.dir", cfg, tmp_path / "prepared") == prepared
    assert prepared.dataset_path.stat().st_mtime_ns == mtime  # reused, not rewritten


def test_image_groups_are_exact_even_when_the_hash_collides() -> None:
    import src.data.split as split_module

    images, _ = make_images(n_per_class=5)
    images[7] = images[3]
    expected = split_module.image_groups(images)
    assert expected[7] == expected[3] and len(set(expected.tolist())) == 49
    # Multipliers of zero hash every image to the same key: the byte check must still separate them.
    zeros = np.zeros_like(split_module._HASH_MULTIPLIERS)
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(split_module, "_HASH_MULTIPLIERS", zeros)
        collided = split_module.image_groups(images)
    assert collided[7] == collided[3] and len(set(collided.tolist())) == 49
