"""Read and write Fashion-MNIST files: IDX (gzip or raw) and the Kaggle CSV.

Readers return ``uint8 (N, 28, 28)`` images with ``int64 (N,)`` labels, or the *raw table*
(a DataFrame with ``label, pixel1..pixel784`` exactly as parsed) that validation checks.
Anything unreadable raises :class:`DataFormatError` with a one-line message.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from src.preprocessing import IMAGE_SIZE

N_PIXELS = IMAGE_SIZE * IMAGE_SIZE
LABEL_COLUMN = "label"
PIXEL_COLUMNS: list[str] = [f"pixel{i}" for i in range(1, N_PIXELS + 1)]
COLUMNS: list[str] = [LABEL_COLUMN, *PIXEL_COLUMNS]

IDX_IMAGES = "train-images-idx3-ubyte"
IDX_LABELS = "train-labels-idx1-ubyte"
KAGGLE_CSV = "fashion-mnist_train.csv"
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension

FIX_HINT = "re-download it or point DATA_SOURCE=/path/to/folder at intact files"


class DataFormatError(ValueError):
    """A data file is missing, truncated, corrupt or not in the expected layout."""


# --- locating the files -------------------------------------------------------------------------


def find_idx_files(folder: Path) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files in ``folder`` (``.gz`` preferred over raw), or None."""
    found: list[Path] = []
    for stem in (IDX_IMAGES, IDX_LABELS):
        candidates = [folder / f"{stem}.gz", folder / stem]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def find_csv_file(folder: Path) -> Path | None:
    """The Kaggle CSV in ``folder`` (the exact name, else the only ``*.csv``), or None."""
    exact = folder / KAGGLE_CSV
    if exact.is_file():
        return exact
    csvs = sorted(p for p in folder.glob("*.csv") if p.is_file())
    return csvs[0] if len(csvs) == 1 else None


def data_files(folder: Path) -> list[Path]:
    """The data files in ``folder`` that make up the data set (IDX pair, else the CSV)."""
    idx = find_idx_files(folder)
    if idx is not None:
        return list(idx)
    csv = find_csv_file(folder)
    if csv is not None:
        return [csv]
    raise DataFormatError(
        f"{folder}: no Fashion-MNIST files ({IDX_IMAGES}[.gz] + {IDX_LABELS}[.gz], or "
        f"{KAGGLE_CSV}); point DATA_SOURCE=/path/to/folder at a folder holding them."
    )


# --- IDX ----------------------------------------------------------------------------------------


# More items than any Fashion-MNIST file (plus exported feedback) holds: a header claiming more is
# refused before anything after it is read or inflated.
MAX_IDX_ITEMS = 1_000_000


def _check_header(path: Path, header: bytes, magic: int, dims: int) -> tuple[int, ...]:
    """The shape an IDX header declares, refused when it is not a Fashion-MNIST file's."""
    if len(header) < 4 + 4 * dims:
        raise DataFormatError(
            f"{path}: only {len(header)} bytes, too short for an IDX header; {FIX_HINT}."
        )
    found_magic = struct.unpack(">I", header[:4])[0]
    if found_magic != magic:
        raise DataFormatError(
            f"{path}: wrong IDX magic number 0x{found_magic:08x} (expected 0x{magic:08x}); "
            f"not a Fashion-MNIST {'image' if dims == 3 else 'label'} file; {FIX_HINT}."
        )
    shape = struct.unpack(">" + "I" * dims, header[4:])
    if dims == 3 and shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataFormatError(
            f"{path}: images are {shape[1]}x{shape[2]}, expected 28x28; {FIX_HINT}."
        )
    if shape[0] > MAX_IDX_ITEMS:
        raise DataFormatError(
            f"{path}: header declares {shape[0]} items, more than the {MAX_IDX_ITEMS} any "
            f"training file here holds; {FIX_HINT}."
        )
    return shape


def _parse_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """Header first, then exactly what it declares (one byte more reveals padding), so a small
    ``.gz`` that inflates to gigabytes is refused after a few bytes, not after inflating."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as stream:
            shape = _check_header(path, stream.read(4 + 4 * dims), magic, dims)
            expected = int(np.prod(shape))
            data = stream.read(expected + 1)
    except FileNotFoundError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc.strerror}); {FIX_HINT}.") from exc
    except (OSError, EOFError, zlib.error) as exc:
        if path.suffix != ".gz":
            raise DataFormatError(f"{path}: cannot read ({exc}); {FIX_HINT}.") from exc
        raise DataFormatError(f"{path}: corrupt or truncated gzip ({exc}); {FIX_HINT}.") from exc
    if len(data) != expected:
        follow = f"more than {expected}" if len(data) > expected else str(len(data))
        raise DataFormatError(
            f"{path}: header says shape {shape} ({expected} bytes) but {follow} bytes follow "
            f"(truncated or padded); {FIX_HINT}."
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def read_idx(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image/label pair (gzip or raw) into ``uint8 (N,28,28)`` and ``int64 (N,)``."""
    images = _parse_idx(images_path, _IMAGES_MAGIC, 3)
    labels = _parse_idx(labels_path, _LABELS_MAGIC, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(
            f"{images_path.name} holds {images.shape[0]} images but {labels_path.name} holds "
            f"{labels.shape[0]} labels; {FIX_HINT}."
        )
    return images, labels.astype(np.int64)


# --- Kaggle CSV ---------------------------------------------------------------------------------


def read_csv_table(path: Path) -> pd.DataFrame:
    """Read the Kaggle CSV (header ``label,pixel1..pixel784``) as parsed, not yet range-checked.

    Wrong column counts, ragged rows and non-numeric cells raise :class:`DataFormatError`;
    empty cells (NaN), fractions and out-of-range numbers are left for validation to report.
    """
    try:
        table = pd.read_csv(path, engine="c", low_memory=False)
    except FileNotFoundError as exc:
        raise DataFormatError(f"{path}: file not found; {FIX_HINT}.") from exc
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        EOFError,
        OSError,
    ) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataFormatError(f"{path}: not a readable CSV ({detail}); {FIX_HINT}.") from exc
    if table.shape[1] != len(COLUMNS):
        raise DataFormatError(
            f"{path}: {table.shape[1]} columns, expected {len(COLUMNS)} (label + 784 pixels); {FIX_HINT}."
        )
    bad = [str(c) for c, dtype in table.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if bad:
        column = bad[0]
        values = pd.to_numeric(table[column], errors="coerce")
        rows = np.flatnonzero(values.isna().to_numpy() & table[column].notna().to_numpy())[:5]
        examples = ", ".join(f"row {r}: {table[column].iloc[r]!r}" for r in rows)
        raise DataFormatError(
            f"{path}: non-numeric values in column(s) {bad[:5]} ({examples}); {FIX_HINT}."
        )
    return table


# --- tables and arrays --------------------------------------------------------------------------


def arrays_to_table(images: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """The ``label, pixel1..pixel784`` table of an image array (no copy of the pixels)."""
    flat = np.ascontiguousarray(images).reshape(len(images), N_PIXELS)
    table = pd.DataFrame(flat, columns=PIXEL_COLUMNS, copy=False)
    table.insert(0, LABEL_COLUMN, np.asarray(labels, dtype=np.int64))
    return table


def table_to_arrays(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Convert a *validated* table to ``uint8 (N,28,28)`` images and ``int64`` labels."""
    if table.shape[1] != len(COLUMNS):
        raise DataFormatError(f"table has {table.shape[1]} columns, expected {len(COLUMNS)}.")
    pixels = table.iloc[:, 1:].to_numpy()
    labels = table.iloc[:, 0].to_numpy()
    for name, values, high in (("pixel", pixels, 255), ("label", labels, 9)):
        as_float = values.astype(np.float64, copy=False)
        if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
            raise DataFormatError(
                f"{name} values are missing or not integers; validate the data first."
            )
        if values.size and (as_float.min() < 0 or as_float.max() > high):
            raise DataFormatError(f"{name} values outside 0..{high}; validate the data first.")
    images = pixels.astype(np.uint8).reshape(len(table), IMAGE_SIZE, IMAGE_SIZE)
    return images, labels.astype(np.int64)


def read_table(folder: Path) -> pd.DataFrame:
    """The raw ``label, pixel1..pixel784`` table of the data set in ``folder`` (IDX or CSV)."""
    idx = find_idx_files(folder)
    if idx is not None:
        return arrays_to_table(*read_idx(*idx))
    csv = find_csv_file(folder)
    if csv is not None:
        return read_csv_table(csv)
    data_files(folder)  # raises the "no files" error
    raise AssertionError("unreachable")


def read_images(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 (N,28,28)`` images and ``int64 (N,)`` labels from IDX gz/raw or the Kaggle CSV."""
    idx = find_idx_files(folder)
    if idx is not None:
        return read_idx(*idx)
    return table_to_arrays(read_table(folder))


# --- writers (tiny test data sets, conversions) -------------------------------------------------


def write_idx(
    folder: Path, images: np.ndarray, labels: np.ndarray, *, compress: bool = True
) -> list[Path]:
    """Write ``train-images/labels`` IDX files (gzip unless ``compress=False``); returns paths."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.asarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.uint8)
    payloads = {
        IDX_IMAGES: struct.pack(">IIII", _IMAGES_MAGIC, *images.shape) + images.tobytes(),
        IDX_LABELS: struct.pack(">II", _LABELS_MAGIC, len(labels)) + labels.tobytes(),
    }
    paths = []
    for stem, payload in payloads.items():
        path = folder / (f"{stem}.gz" if compress else stem)
        # mtime=0: identical content gives identical bytes (stable md5s).
        path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
        paths.append(path)
    return paths


def write_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write the Kaggle CSV layout (``label,pixel1..pixel784``) for the given images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays_to_table(images, labels).to_csv(path, index=False)
    return path
