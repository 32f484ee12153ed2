from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.data.io import (
    COLUMNS,
    DataFormatError,
    read_images,
    read_table,
    write_csv,
    write_idx,
)


def test_idx_gz_raw_and_csv_round_trip(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = tiny
    write_idx(tmp_path / "gz", images, labels)
    write_idx(tmp_path / "raw", images, labels, compress=False)
    write_csv(tmp_path / "csv" / "fashion-mnist_train.csv", images, labels)
    for name in ("gz", "raw", "csv"):
        x, y = read_images(tmp_path / name)
        assert x.dtype == np.uint8 and x.shape == (200, 28, 28)
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(y, labels)
    table = read_table(tmp_path / "csv")
    assert list(table.columns) == COLUMNS and len(table) == 200


def test_truncated_gz(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images_path, _ = write_idx(tmp_path, *tiny)
    data = images_path.read_bytes()
    images_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip"):
        read_images(tmp_path)


def test_garbage_gz(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels_path = write_idx(tmp_path, *tiny)
    labels_path.write_bytes(b"not gzip at all")
    with pytest.raises(DataFormatError, match=r"train-labels-idx1-ubyte\.gz: corrupt"):
        read_images(tmp_path)


def test_wrong_magic_and_short_payload(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    images_path, labels_path = write_idx(tmp_path, *tiny)
    labels_path.write_bytes(images_path.read_bytes())  # an image file where labels belong
    with pytest.raises(DataFormatError, match="wrong IDX magic"):
        read_images(tmp_path)
    write_idx(tmp_path, *tiny)
    payload = gzip.decompress(images_path.read_bytes())
    images_path.write_bytes(gzip.compress(payload[:-100]))  # valid gzip, truncated IDX payload
    with pytest.raises(DataFormatError, match="truncated or padded"):
        read_images(tmp_path)


def test_csv_wrong_column_count(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    path = write_csv(tmp_path / "fashion-mnist_train.csv", *tiny)
    table = pd.read_csv(path).iloc[:, :-1]
    table.to_csv(path, index=False)
    with pytest.raises(DataFormatError, match="784 columns, expected 785"):
        read_table(tmp_path)


def test_csv_non_numeric_and_ragged(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    path = write_csv(tmp_path / "fashion-mnist_train.csv", *tiny)
    lines = path.read_text().splitlines()
    cells = lines[3].split(",")
    cells[10] = "oops"
    path.write_text("\n".join([*lines[:3], ",".join(cells), *lines[4:]]) + "\n")
    with pytest.raises(
        DataFormatError, match=r"non-numeric values in column\(s\) \['pixel10'\].*row 2: 'oops'"
    ):
        read_table(tmp_path)
    path.write_text("\n".join([*lines[:5], lines[5] + ",1,2"]) + "\n")
    with pytest.raises(DataFormatError, match="not a readable CSV"):
        read_table(tmp_path)


def test_truncated_csv_row(tmp_path: Path, tiny: tuple[np.ndarray, np.ndarray]) -> None:
    path = write_csv(tmp_path / "fashion-mnist_train.csv", *tiny)
    text = path.read_text()
    path.write_text(text[: len(text) - 500])  # cut in the middle of the last row
    table = read_table(tmp_path)  # parses: the short last row has NaNs...
    assert table.iloc[-1].isna().any()
    with pytest.raises(DataFormatError, match="missing or not integers"):
        read_images(tmp_path)  # ...which the array conversion refuses (validation reports it)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="DATA_SOURCE=/path/to/folder"):
        read_images(tmp_path)
