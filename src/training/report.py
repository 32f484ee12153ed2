"""Figures logged with each training run: confusion matrix, learning curves, misclassified images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 7))
    totals = confusion.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(confusion / totals, cmap="Blues", vmin=0, vmax=1)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            share = confusion[i, j] / totals[i, 0]
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(history: list[dict[str, float]], path: Path) -> Path:
    fig, (loss_ax, score_ax, lr_ax) = plt.subplots(1, 3, figsize=(15, 4))
    epochs = [row["epoch"] for row in history]
    for key, ax in (
        ("train_loss", loss_ax),
        ("val_loss", loss_ax),
        ("val_accuracy", score_ax),
        ("val_macro_f1", score_ax),
        ("lr", lr_ax),
    ):
        points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if key in row]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=".", label=key)
    loss_ax.set_title("loss (train: label-smoothed, augmented)")
    score_ax.set_title("validation")
    lr_ax.set_title("learning rate (end of epoch)")
    for ax in (loss_ax, score_ax, lr_ax):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    probabilities: np.ndarray | None,
    class_names: Sequence[str],
    path: Path,
    limit: int = 36,
) -> Path:
    wrong = np.flatnonzero(predictions != labels)
    if probabilities is not None and len(wrong):
        # Most confident mistakes first: the most instructive ones.
        wrong = wrong[np.argsort(-probabilities[wrong, predictions[wrong]])]
    wrong = wrong[:limit]
    columns = 6
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.0, rows * 2.3))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, index in zip(np.atleast_1d(axes).ravel(), wrong, strict=False):
        ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        confidence = (
            f" {probabilities[index, predictions[index]]:.2f}" if probabilities is not None else ""
        )
        ax.set_title(
            f"true {class_names[labels[index]]}\npred {class_names[predictions[index]]}{confidence}",
            fontsize=7,
        )
    fig.suptitle(f"Misclassified test images ({len(wrong)} shown)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
