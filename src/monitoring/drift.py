"""Drift tests: a window of logged predictions against the served version's reference profile.

Each test flags drift when its p-value is below ``alpha`` AND its effect size reaches
``min_effect`` (large windows make negligible shifts significant). ``drift_share`` is the share
of tests that flag drift; ``drift_detected`` when it reaches ``drift_share_threshold``.

A window where a few identical inputs make up most answers (one picture uploaded again and again)
gets no decision: it says nothing about what users in general send, and retraining on it would
not change it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from src.config.monitor import MonitorConfig
from src.labels import CLASS_NAMES
from src.monitoring.profile import ReferenceProfile

Status = Literal["ok", "not_enough_data", "identical_inputs"]


@dataclass(frozen=True)
class DriftTest:
    name: str
    method: str
    statistic: float
    p_value: float
    effect: float  # KS D, total variation distance, or a share/accuracy gap
    drifted: bool
    detail: str


@dataclass
class DriftDecision:
    status: Status
    model_version: str | None
    n_predictions: int
    tests: list[DriftTest] = field(default_factory=list)
    drift_share: float = 0.0
    drift_detected: bool = False
    live_accuracy: float | None = None
    n_feedback: int = 0
    reasons: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: the decision plus each test's statistic, p-value and effect."""
        flat: dict[str, float] = {
            "drift_detected": float(self.drift_detected),
            "drift_share": self.drift_share,
            "n_predictions": float(self.n_predictions),
            "n_feedback": float(self.n_feedback),
        }
        if self.live_accuracy is not None:
            flat["live_accuracy"] = self.live_accuracy
        for test in self.tests:
            flat[f"{test.name}_statistic"] = test.statistic
            flat[f"{test.name}_p_value"] = test.p_value
            flat[f"{test.name}_effect"] = test.effect
            flat[f"{test.name}_drifted"] = float(test.drifted)
        return flat


def window_arrays(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Columns of the logged rows as arrays."""
    columns = ("class_id", "confidence", "margin", "input_mean", "input_std")
    return {
        c: np.asarray([np.nan if r[c] is None else r[c] for r in rows], dtype=np.float64)
        for c in columns
    }


# What the log records of an input, as the model saw it: identical uploads give identical keys
# (the same preprocessing, the same model), different pictures practically never do.
INPUT_KEY = ("width", "height", "mode", "input_mean", "input_std", "class_id", "confidence")


def repeated_inputs(rows: Sequence[dict[str, Any]], top_k: int) -> tuple[int, int]:
    """Answers covered by the ``top_k`` most repeated inputs of the window, and how many
    distinct inputs it holds."""
    counts = Counter(
        tuple(round(v, 6) if isinstance(v, float) else v for v in (r.get(k) for k in INPUT_KEY))
        for r in rows
    )
    return sum(n for _, n in counts.most_common(top_k)), len(counts)


def _ks(
    name: str, current: np.ndarray, reference: Sequence[float], cfg: MonitorConfig
) -> DriftTest:
    current = current[np.isfinite(current)]
    result = stats.ks_2samp(current, np.asarray(reference, dtype=np.float64))
    d, p = float(result.statistic), float(result.pvalue)
    drifted = p < cfg.alpha and d >= cfg.min_effect
    return DriftTest(
        name,
        "ks",
        d,
        p,
        d,
        drifted,
        f"KS D={d:.3f}, p={p:.3g}; median now {np.median(current):.3f} vs "
        f"{np.median(reference):.3f} on validation",
    )


def class_share_test(
    class_ids: np.ndarray, profile: ReferenceProfile, cfg: MonitorConfig
) -> DriftTest:
    n_classes = len(profile.class_shares)
    observed = np.bincount(class_ids.astype(np.int64), minlength=n_classes)[:n_classes]
    # A class never predicted on validation still gets a sliver of expected share, so one
    # appearing now is measurable instead of an infinite statistic.
    reference = np.asarray(profile.class_shares, dtype=np.float64) + 0.5 / max(profile.n, 1)
    reference /= reference.sum()
    n = int(observed.sum())
    result = stats.chisquare(observed, reference * n)
    shares = observed / max(n, 1)
    tvd = float(0.5 * np.abs(shares - np.asarray(profile.class_shares)).sum())
    biggest = int(np.argmax(np.abs(shares - reference)))
    name = CLASS_NAMES[biggest] if biggest < len(CLASS_NAMES) else str(biggest)
    return DriftTest(
        "class_shares",
        "chi2",
        float(result.statistic),
        float(result.pvalue),
        tvd,
        float(result.pvalue) < cfg.alpha and tvd >= cfg.min_effect,
        f"chi2={float(result.statistic):.1f}, p={float(result.pvalue):.3g}, total variation "
        f"{tvd:.3f}; largest change {name}: {shares[biggest]:.1%} vs {reference[biggest]:.1%}",
    )


def low_confidence_test(
    confidence: np.ndarray, profile: ReferenceProfile, cfg: MonitorConfig
) -> DriftTest:
    low = int(np.sum(confidence < profile.threshold.value))
    n = len(confidence)
    expected = min(max(profile.low_confidence_share, 1e-6), 1 - 1e-6)
    result = stats.binomtest(low, n, expected, alternative="greater")
    gap = low / n - profile.low_confidence_share
    return DriftTest(
        "low_confidence_share",
        "binomial",
        low / n,
        float(result.pvalue),
        gap,
        float(result.pvalue) < cfg.alpha and gap >= cfg.min_effect,
        f"{low / n:.1%} low-confidence answers vs {profile.low_confidence_share:.1%} on "
        f"validation (threshold {profile.threshold.value:.3f}), p={float(result.pvalue):.3g}",
    )


def live_accuracy_test(
    correct: np.ndarray, profile: ReferenceProfile, cfg: MonitorConfig
) -> DriftTest:
    n, right = len(correct), int(np.sum(correct))
    expected = min(max(profile.accuracy, 1e-6), 1 - 1e-6)
    result = stats.binomtest(right, n, expected, alternative="less")
    gap = profile.accuracy - right / n
    return DriftTest(
        "live_accuracy",
        "binomial",
        right / n,
        float(result.pvalue),
        gap,
        float(result.pvalue) < cfg.alpha and gap >= cfg.min_effect,
        f"accuracy on {n} labelled answers {right / n:.1%} vs {profile.accuracy:.1%} on "
        f"validation, p={float(result.pvalue):.3g}",
    )


def decide(
    rows: Sequence[dict[str, Any]],
    profile: ReferenceProfile,
    cfg: MonitorConfig,
    labelled: Sequence[dict[str, Any]] = (),
    model_version: str | None = None,
) -> DriftDecision:
    """Run every test on the window ``rows`` (and its labelled feedback) and decide."""
    correct = np.asarray([r["class_id"] == r["true_class_id"] for r in labelled], dtype=bool)
    decision = DriftDecision(
        status="ok",
        model_version=model_version,
        n_predictions=len(rows),
        n_feedback=len(correct),
        live_accuracy=float(correct.mean()) if len(correct) else None,
    )
    if len(rows) < cfg.min_predictions:
        decision.status = "not_enough_data"
        decision.reasons.append(
            f"only {len(rows)} predictions in the window (need {cfg.min_predictions}); "
            "no drift decision"
        )
        return decision
    copies, distinct = repeated_inputs(rows, cfg.identical_inputs_top_k)
    if copies >= cfg.identical_inputs_max_share * len(rows):
        decision.status = "identical_inputs"
        decision.reasons.append(
            f"{copies} of {len(rows)} answers ({copies / len(rows):.0%}) are copies of "
            f"{min(cfg.identical_inputs_top_k, distinct)} identical input(s): a repeated upload, "
            "not a change in what users send; no drift decision (identical_inputs_max_share "
            f"{cfg.identical_inputs_max_share:.0%})"
        )
        return decision
    window = window_arrays(rows)
    tests = [
        class_share_test(window["class_id"], profile, cfg),
        _ks("confidence", window["confidence"], profile.samples["confidence"], cfg),
        _ks("input_mean", window["input_mean"], profile.samples["input_mean"], cfg),
        _ks("input_std", window["input_std"], profile.samples["input_std"], cfg),
        low_confidence_test(window["confidence"], profile, cfg),
    ]
    if len(correct) >= cfg.min_feedback:
        tests.append(live_accuracy_test(correct, profile, cfg))
    decision.tests = tests
    decision.drift_share = sum(t.drifted for t in tests) / len(tests)
    decision.drift_detected = decision.drift_share >= cfg.drift_share_threshold
    verdict = "DRIFT" if decision.drift_detected else "no drift"
    flagged = [t.name for t in tests if t.drifted]
    decision.reasons.append(
        f"{verdict}: {len(flagged)} of {len(tests)} tests flag drift "
        f"({', '.join(flagged) or 'none'}); threshold {cfg.drift_share_threshold:.0%}"
    )
    return decision
