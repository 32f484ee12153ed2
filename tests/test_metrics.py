"""src.metrics against an independent implementation (torchmetrics) and hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)

from src.metrics import classification_metrics, score_predictions


@pytest.mark.parametrize("seed", range(50))
def test_scores_match_torchmetrics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 80))
    # Fewer classes in play than exist, so absent classes are exercised too.
    y_true = rng.integers(0, int(rng.integers(1, 11)), size)
    y_pred = rng.integers(0, int(rng.integers(1, 11)), size)
    scores = score_predictions(y_true, y_pred, 10)
    preds, target = torch.as_tensor(y_pred), torch.as_tensor(y_true)
    assert scores.accuracy == pytest.approx(
        float(multiclass_accuracy(preds, target, 10, average="micro")), abs=1e-6
    )
    assert scores.macro_f1 == pytest.approx(
        float(multiclass_f1_score(preds, target, 10, average="macro")), abs=1e-6
    )
    np.testing.assert_allclose(
        scores.per_class_f1, multiclass_f1_score(preds, target, 10, average="none"), atol=1e-6
    )
    np.testing.assert_array_equal(
        scores.confusion, multiclass_confusion_matrix(preds, target, 10).numpy()
    )


def test_hand_made_case() -> None:
    # class 0: tp 1, fp 1, fn 1 -> F1 0.5; class 1: tp 1, fp 1, fn 1 -> 0.5; class 2 unseen.
    scores = score_predictions(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]), 3)
    assert scores.accuracy == 0.5
    assert scores.macro_f1 == 0.5  # class 2 is neither present nor predicted: left out
    np.testing.assert_allclose(scores.per_class_f1, [0.5, 0.5, 0.0])
    assert classification_metrics(np.array([2, 2]), np.array([2, 2])) == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
    }


def test_refuses_mismatched_or_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="same prepared test split"):
        score_predictions(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="below 3"):
        score_predictions(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="empty"):
        score_predictions(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
