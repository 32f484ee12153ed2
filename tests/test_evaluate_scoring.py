"""evaluate_classifier scores what the model answers: a model whose answers depend on the image
(right on some, wrong on others) against hand-counted accuracy, F1 and confusion cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.evaluate import evaluate_classifier
from src.labels import CLASS_NAMES
from src.model_io import LoadedClassifier
from src.preprocessing import MEAN, STD

# Each image is filled with 20 x the class the model will answer for it.
LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 3, 9]
ANSWERS = [0, 0, 1, 1, 2, 2, 2, 0, 3, 8]


class ReadsTheAnswerOffThePixels(torch.nn.Module):
    """Answers round(raw pixel / 20): undoes the normalisation of the image's first pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = (x[:, 0, 0, 0] * STD + MEAN) * 255.0
        return torch.nn.functional.one_hot(torch.round(raw / 20).long(), 10).float()


def _split(tmp_path: Path) -> Path:
    images = np.stack([np.full((28, 28), 20 * a, dtype=np.uint8) for a in ANSWERS])
    labels = np.array(LABELS, dtype=np.int64)
    path = tmp_path / "split.npz"
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    np.savez(path, x_train=empty, y_train=labels[:0], x_val=images, y_val=labels)
    return path


def test_scores_are_those_of_the_models_answers(tmp_path: Path) -> None:
    classifier = LoadedClassifier(
        module=ReadsTheAnswerOffThePixels(), class_names=list(CLASS_NAMES)
    )
    result = evaluate_classifier(classifier, _split(tmp_path), "val", batch_size=3)
    assert result.predictions.tolist() == ANSWERS  # in order, across batches
    assert result.accuracy == pytest.approx(0.6)  # 6 of 10 right
    f1 = result.per_class_f1
    # class 0: 2 right, 1 answered wrongly as 0, 1 missed -> P = R = 2/3
    assert f1["T-shirt/top"] == pytest.approx(2 / 3)
    assert f1["Trouser"] == pytest.approx(0.5)  # 1 right, 1 false, 1 missed
    assert f1["Pullover"] == pytest.approx(2 / 3)
    assert f1["Dress"] == pytest.approx(1.0)
    assert f1["Bag"] == 0.0 and f1["Ankle boot"] == 0.0
    # macro-F1 over the classes in the labels or the answers (0, 1, 2, 3, 8, 9)
    assert result.macro_f1 == pytest.approx((2 / 3 + 0.5 + 2 / 3 + 1.0) / 6)
    confusion = result.confusion  # [true, answered]
    assert confusion[2, 0] == 1 and confusion[0, 2] == 0
    assert confusion[0, 1] == 1 and confusion[1, 2] == 1 and confusion[9, 8] == 1
    assert confusion.trace() == 6 and confusion.sum() == 10
    assert result.metrics()["val_f1_trouser"] == pytest.approx(0.5)
