"""Production's stored test predictions are reused only for the same data and the same split."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from src import registry
from src.data.split import PreparedData
from src.model_io import log_classifier, log_onnx
from src.promotion import champion_predictions, score_model, store_test_predictions
from tests.helpers.flows import TinyStore, tiny_model

NAME = "champion-predictions"


def make_prepared(dataset_path: Path, split_hash: str, data_md5: str) -> PreparedData:
    return PreparedData.from_file(dataset_path, data_md5=data_md5, split_hash=split_hash)


def _dataset(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, x_test=images, y_test=labels)
    return path


def test_a_pixel_only_fix_re_scores_production(tiny_store: TinyStore, tmp_path: Path) -> None:
    """Same rows, same labels, same split hash - only pixels changed (a data fix). The stored
    answers of Production were given on the old pixels: the gate must re-score it."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, size=400)
    old_pixels = rng.integers(0, 256, size=(400, 28, 28), dtype=np.uint8)
    new_pixels = (255 - old_pixels).astype(np.uint8)  # every image fixed, order unchanged
    old = make_prepared(_dataset(tmp_path / "old.npz", old_pixels, labels), "split-1", "md5-old")
    new = make_prepared(_dataset(tmp_path / "new.npz", new_pixels, labels), "split-1", "md5-new")

    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    client = registry.get_client(tiny_store.tracking_uri)
    with mlflow.start_run(experiment_id=tiny_store.experiment_id) as run:
        info = log_classifier(tiny_model(seed=5))
        log_onnx(client, run.info.run_id, tiny_model(seed=5))
    mv = registry.register_candidate(
        client,
        NAME,
        model_uri=info.model_uri,
        run_id=run.info.run_id,
        tags={"data_md5": old.data_md5, "split_hash": old.split_hash},
    )
    _, on_old = score_model(client, run.info.run_id, old.dataset_path)
    _, on_new = score_model(client, run.info.run_id, new.dataset_path)
    assert not np.array_equal(on_old, on_new)  # the fix changes Production's answers
    store_test_predictions(client, run.info.run_id, on_old)
    champion = client.get_model_version(NAME, str(mv.version))

    reused, source = champion_predictions(client, champion, old, len(labels))
    assert source == "stored predictions (same data md5 and split hash)"
    np.testing.assert_array_equal(reused, on_old)

    fresh, source = champion_predictions(client, champion, new, len(labels))
    assert source == "re-scored on this run's test split"
    np.testing.assert_array_equal(fresh, on_new)


@pytest.mark.parametrize("changed", ["split_hash", "data_md5"])
def test_either_hash_differing_means_re_scoring(
    tiny_store: TinyStore, tmp_path: Path, changed: str
) -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, size=50)
    dataset = _dataset(tmp_path / "d.npz", rng.integers(0, 256, (50, 28, 28), np.uint8), labels)
    client = registry.get_client(tiny_store.tracking_uri)
    tags = {"data_md5": "m", "split_hash": "s"}
    mv = registry.register_candidate(
        client, NAME + "-2", model_uri=tiny_store.model_uri, run_id=tiny_store.run_id, tags=tags
    )
    store_test_predictions(client, tiny_store.run_id, np.full(50, 9))  # not the model's answers
    prepared = make_prepared(dataset, **{**{"data_md5": "m", "split_hash": "s"}, changed: "other"})
    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    _, source = champion_predictions(client, mv, prepared, len(labels))
    assert source == "re-scored on this run's test split"
