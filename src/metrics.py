"""Classification scores, computed once (numpy) for evaluation, the gate and the model card."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    accuracy: float
    # Mean F1 over the classes present in the labels or the predictions.
    macro_f1: float
    per_class_f1: (
        np.ndarray
    )  # one value per class id 0..n-1 (0 for a class neither seen nor predicted)
    confusion: np.ndarray  # [true class, predicted class] counts


def check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as flat int64 arrays; refuses vectors of different lengths or negative class ids."""
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"Predictions cover {len(y_pred)} images but the test split has {len(y_true)}; "
            "score both models on the same prepared test split."
        )
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0):
        raise ValueError("Class ids must be non-negative integers.")
    return y_true, y_pred


def score_predictions(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None
) -> Scores:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix of ``y_pred`` against ``y_true``.

    ``num_classes`` defaults to the largest class id seen plus one.
    """
    y_true, y_pred = check_pair(y_true, y_pred)
    if len(y_true) == 0:
        raise ValueError("Cannot score an empty test split; check the prepared dataset.")
    n = int(max(y_true.max(), y_pred.max()) + 1) if num_classes is None else num_classes
    if max(y_true.max(), y_pred.max()) >= n:
        raise ValueError(f"Class ids must be below {n}, the number of classes.")
    confusion = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    tp = np.diag(confusion).astype(np.float64)
    denom = (confusion.sum(axis=1) + confusion.sum(axis=0)).astype(np.float64)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return Scores(
        accuracy=float(np.mean(y_true == y_pred)),
        macro_f1=float(f1[denom > 0].mean()),
        per_class_f1=f1,
        confusion=confusion,
    )


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None
) -> dict[str, float]:
    """``{"accuracy": ..., "macro_f1": ...}`` of :func:`score_predictions`."""
    scores = score_predictions(y_true, y_pred, num_classes)
    return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1}
