"""The reference profile of a model version: what its answers and inputs look like on the
validation split, and the low-confidence threshold calibrated there.

Built at training time from the same statistics the API logs (predicted class, confidence, top-2
margin, 28x28 input mean and std), so the monitor compares like with like.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from src.monitoring.inputs import pixel_stats

PROFILE_ARTIFACT = "monitoring/reference_profile.json"
THRESHOLD_TAG = "low_confidence_threshold"  # version tag the API reads
# The statistics the API logs per answer and the profile samples on validation, named once here
# (the prediction log's columns, the profile's samples, the drift tests and the report use them).
SAMPLED_STATS = ("confidence", "margin", "input_mean", "input_std")
# Those whose distribution a drift test compares with validation's (KS): margin moves with
# confidence, so it is kept for the report, not tested twice.
KS_TESTED_STATS = ("confidence", "input_mean", "input_std")


@dataclass(frozen=True)
class Threshold:
    """Answers with confidence >= ``value`` reached ``accepted_accuracy`` on validation
    (``coverage`` of them); the rest are flagged low-confidence."""

    value: float
    target_accuracy: float
    accepted_accuracy: float
    coverage: float


@dataclass
class ReferenceProfile:
    n: int
    accuracy: float
    class_shares: list[float]  # predicted-class shares
    low_confidence_share: float
    threshold: Threshold
    samples: dict[str, list[float]] = field(default_factory=dict)  # SAMPLED_STATS
    model_version: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ReferenceProfile:
        data = dict(payload)
        data["threshold"] = Threshold(**data["threshold"])
        return cls(**data)


def calibrate_threshold(
    confidence: np.ndarray, correct: np.ndarray, target_accuracy: float
) -> Threshold:
    """The lowest confidence ``t`` such that answers with confidence >= ``t`` are at least
    ``target_accuracy`` right: the widest set of answers that is still that reliable. When even
    the most confident answer misses the target, every answer is flagged (``t`` = 1)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if len(confidence) == 0:
        raise ValueError("Cannot calibrate a threshold on an empty validation split.")
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    # Accept whole groups of tied confidences: a cut inside a tie cannot be applied.
    last_of_tie = np.append(sorted_conf[1:] != sorted_conf[:-1], True)
    ok = np.flatnonzero((running >= target_accuracy) & last_of_tie)
    if len(ok) == 0:
        return Threshold(1.0, target_accuracy, float("nan"), 0.0)
    k = int(ok[-1])
    return Threshold(
        value=float(sorted_conf[k]),
        target_accuracy=target_accuracy,
        accepted_accuracy=float(running[k]),
        coverage=float((k + 1) / len(order)),
    )


def answer_stats(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted class, confidence and top-2 margin per row of class probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top2 = -np.sort(-probabilities, axis=1)[:, :2]
    return {
        "class_id": probabilities.argmax(axis=1),
        "confidence": top2[:, 0],
        "margin": top2[:, 0] - top2[:, 1] if probabilities.shape[1] > 1 else top2[:, 0],
    }


def build_reference_profile(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    target_accuracy: float,
    sample_size: int,
    seed: int = 0,
) -> ReferenceProfile:
    """The profile of one model on the validation split (``uint8`` images shaped (N, 28, 28))."""
    answers = answer_stats(probabilities)
    correct = answers["class_id"] == np.asarray(labels)
    threshold = calibrate_threshold(answers["confidence"], correct, target_accuracy)
    means, stds = pixel_stats(images)
    n_classes = probabilities.shape[1]
    shares = np.bincount(answers["class_id"], minlength=n_classes) / len(labels)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.permutation(len(labels))[: min(sample_size, len(labels))])
    values = {**answers, "input_mean": means, "input_std": stds}
    return ReferenceProfile(
        n=len(labels),
        accuracy=float(correct.mean()),
        class_shares=[float(s) for s in shares],
        low_confidence_share=float(np.mean(answers["confidence"] < threshold.value)),
        threshold=threshold,
        samples={k: [round(float(x), 6) for x in values[k][picks]] for k in SAMPLED_STATS},
    )
