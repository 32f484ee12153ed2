"""Export labelled feedback as a dataset for the next training — explicitly, never mixed in.

    python -m src.monitoring.feedback --out outputs/feedback/2026-11-29
    python -m src.monitoring.feedback --out outputs/feedback/next --merge-with ../shared/fashion-mnist

writes ``feedback.csv`` (the labelled answers, up to ``monitor.max_labelled_rows``, each once with
its last label: id, time, version, predicted and true class, confidence) and, for the answers whose 28x28 input was kept (``MONITOR_STORE_IMAGES=true``), the
IDX files ``train-images-idx3-ubyte.gz`` / ``train-labels-idx1-ubyte.gz`` that the data-flow reads.
``--merge-with`` appends them to another IDX/CSV folder (e.g. the current training data), so the
result can be validated, versioned and trained on like any source: ``DATA_SOURCE=<out> make train``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.config import load_config
from src.errors import Refused
from src.labels import CLASS_NAMES
from src.monitoring.store import PredictionStore, redact_url, store_url
from src.preprocessing import IMAGE_SIZE

CSV_COLUMNS = (
    "prediction_id",
    "created_at",
    "labelled_at",
    "model_version",
    "class_id",
    "label",
    "true_class_id",
    "true_label",
    "confidence",
    "low_confidence",
)


@dataclass(frozen=True)
class Export:
    labelled: int
    with_images: int
    total_images: int
    files: list[Path]


def feedback_arrays(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and true labels of the rows that kept their model input."""
    kept = [r for r in rows if r.get("image") and len(r["image"]) == IMAGE_SIZE * IMAGE_SIZE]
    images = (
        np.stack(
            [
                np.frombuffer(r["image"], dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
                for r in kept
            ]
        )
        if kept
        else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    )
    return images, np.asarray([r["true_class_id"] for r in kept], dtype=np.int64)


def export_feedback(
    rows: list[dict[str, Any]], out: Path, merge_with: Path | None = None
) -> Export:
    from src.data.io import read_images, write_idx

    out.mkdir(parents=True, exist_ok=True)
    table = out / "feedback.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "true_label": CLASS_NAMES[int(row["true_class_id"])]})
    files = [table]
    images, labels = feedback_arrays(rows)
    with_images = len(labels)
    if merge_with is not None:
        base_images, base_labels = read_images(merge_with)
        images = np.concatenate([base_images, images])
        labels = np.concatenate([base_labels, labels])
    if len(labels):
        files += write_idx(out, images, labels)
    return Export(len(rows), with_images, len(labels), files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.monitoring.feedback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--merge-with", type=Path, help="IDX/CSV folder to append the images to")
    args = parser.parse_args(argv)
    cfg = load_config()
    try:
        store = PredictionStore(store_url(cfg))
    except Exception as exc:
        raise Refused(
            f"cannot open the prediction log at {redact_url(store_url(cfg))} "
            f"({type(exc).__name__}: {exc}); check MONITOR_STORE_URL."
        ) from exc
    limit = cfg.monitor.max_labelled_rows
    try:
        result = export_feedback(store.labelled(limit=limit), args.out, args.merge_with)
    finally:
        store.close()
    if result.labelled >= limit:
        print(
            f"feedback export: only the {limit} most recently labelled answers were exported "
            "(monitor.max_labelled_rows); raise MONITOR_MAX_LABELLED_ROWS to export more.",
            file=sys.stderr,
        )
    print(
        f"{result.labelled} labelled answers -> {args.out / 'feedback.csv'}; "
        f"{result.with_images} with their image"
        + (
            f"; {result.total_images} images written as IDX"
            if result.total_images
            else " (set MONITOR_STORE_IMAGES=true to keep images for export)"
        )
    )
    return 0


if __name__ == "__main__":
    from src.cli import call

    raise SystemExit(call("export-feedback", main))
