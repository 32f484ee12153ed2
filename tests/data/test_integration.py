"""The real Fashion-MNIST training files (``../shared/fashion-mnist``): read, validate, split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src.data.io import read_images, read_table
from src.data.sources import KNOWN_CONTENT_MD5, KNOWN_MD5, content_md5
from src.data.split import split_hash, split_indices
from src.data.validation import validate
from src.hashing import file_md5
from tests.helpers.config import data_config

# sha256 of the (train, val, test) index arrays for seed 42; changes only if the split changes.
# (It changed once, when the order within a class moved from NumPy's permutation stream to a keyed
# hash of the image bytes; the README's Split paragraph says so.)
REAL_SPLIT_HASH = "8802425966594d6bb2e3d37e5713ff2efdc53b9894a3c5a23252b7fd5f0b2a21"


@pytest.mark.integration
def test_real_data_reads_validates_and_splits(shared_data_dir: Path, tmp_path: Path) -> None:
    for name, md5 in KNOWN_MD5.items():
        assert file_md5(shared_data_dir / name) == md5
    table = read_table(shared_data_dir)
    report = validate(table, data_config(), output_dir=tmp_path)
    assert report.success, report.failure_message()
    # How fast it validates is benchmarks/bench_validation.py's business, not this test's.
    assert report.stats["duplicate_rows"] == 0  # no byte-identical images in the training set
    assert report.stats["class_counts"] == dict.fromkeys(range(10), 6000)

    images, labels = read_images(shared_data_dir)
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert content_md5(images, labels) == KNOWN_CONTENT_MD5  # what a Kaggle CSV must match
    train, val, test = split_indices(images, labels, seed=42)
    assert (len(train), len(val), len(test)) == (42_000, 9_000, 9_000)
    for part, per_class in ((train, 4200), (val, 900), (test, 900)):
        assert np.bincount(labels[part], minlength=10).tolist() == [per_class] * 10
    assert split_hash(train, val, test) == REAL_SPLIT_HASH
