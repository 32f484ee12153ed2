"""Drift tests: a window of logged predictions against the served version's reference profile.

The tests are a registry, :data:`DRIFT_TESTS` (name -> test), each with its own threshold in
``configs/monitor.yaml`` (``drift_tests.<name>.min_effect``). A test flags drift when its p-value
is below ``alpha`` AND its effect size reaches its ``min_effect`` (large windows make negligible
shifts significant).

Decision rule: ``drift_detected`` when at least ``drift_min_flagged`` tests flag drift. It counts
tests, not a share of them, so adding a test never changes the decision the other tests reach
on their own. ``drift_share`` (the share of tests that flag) is reported, not decided on.

A window where a few identical inputs make up most answers (one picture uploaded again and again)
gets no decision: it says nothing about what users in general send, and retraining on it would
not change it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from src.config.monitor import DriftTestConfig, MonitorConfig
from src.labels import CLASS_NAMES
from src.monitoring.reference_profile import KS_TESTED_STATS, SAMPLED_STATS, ReferenceProfile

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
    return {
        c: np.asarray([np.nan if r[c] is None else r[c] for r in rows], dtype=np.float64)
        for c in ("class_id", *SAMPLED_STATS)
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


@dataclass(frozen=True)
class Window:
    """What the tests read: the window's logged columns and, per labelled answer, whether the
    model was right."""

    columns: dict[str, np.ndarray]
    correct: np.ndarray


@dataclass(frozen=True)
class Criterion:
    """When one test flags drift: p below ``alpha`` and an effect of at least ``min_effect``."""

    alpha: float
    min_effect: float

    def flags(self, p_value: float, effect: float) -> bool:
        return p_value < self.alpha and effect >= self.min_effect


# A drift test: the window against the profile -> its result, or None when it cannot run on this
# window (live accuracy before enough feedback).
DriftTestFn = Callable[[Window, ReferenceProfile, MonitorConfig, Criterion], "DriftTest | None"]


def ks_test(column: str) -> DriftTestFn:
    """Two-sample KS test of ``column`` against its validation sample in the profile."""

    def run(
        window: Window, profile: ReferenceProfile, _cfg: MonitorConfig, criterion: Criterion
    ) -> DriftTest:
        current = window.columns[column]
        current = current[np.isfinite(current)]
        reference = profile.samples[column]
        result = stats.ks_2samp(current, np.asarray(reference, dtype=np.float64))
        d, p = float(result.statistic), float(result.pvalue)
        return DriftTest(
            column,
            "ks",
            d,
            p,
            d,
            criterion.flags(p, d),
            f"KS D={d:.3f}, p={p:.3g}; median now {np.median(current):.3f} vs "
            f"{np.median(reference):.3f} on validation",
        )

    return run


def class_share_test(
    window: Window, profile: ReferenceProfile, _cfg: MonitorConfig, criterion: Criterion
) -> DriftTest:
    class_ids = window.columns["class_id"]
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
        criterion.flags(float(result.pvalue), tvd),
        f"chi2={float(result.statistic):.1f}, p={float(result.pvalue):.3g}, total variation "
        f"{tvd:.3f}; largest change {name}: {shares[biggest]:.1%} vs {reference[biggest]:.1%}",
    )


def low_confidence_test(
    window: Window, profile: ReferenceProfile, _cfg: MonitorConfig, criterion: Criterion
) -> DriftTest:
    confidence = window.columns["confidence"]
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
        criterion.flags(float(result.pvalue), gap),
        f"{low / n:.1%} low-confidence answers vs {profile.low_confidence_share:.1%} on "
        f"validation (threshold {profile.threshold.value:.3f}), p={float(result.pvalue):.3g}",
    )


def live_accuracy_test(
    window: Window, profile: ReferenceProfile, cfg: MonitorConfig, criterion: Criterion
) -> DriftTest | None:
    """Accuracy on the labelled feedback; runs once there are ``min_feedback`` labels."""
    correct = window.correct
    if len(correct) < cfg.min_feedback:
        return None
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
        criterion.flags(float(result.pvalue), gap),
        f"accuracy on {n} labelled answers {right / n:.1%} vs {profile.accuracy:.1%} on "
        f"validation, p={float(result.pvalue):.3g}",
    )


# Every drift test by name, in report order; each needs a drift_tests.<name> entry in
# configs/monitor.yaml (its min_effect).
DRIFT_TESTS: dict[str, DriftTestFn] = {
    "class_shares": class_share_test,
    **{stat: ks_test(stat) for stat in KS_TESTED_STATS},
    "low_confidence_share": low_confidence_test,
    "live_accuracy": live_accuracy_test,
}


def check_drift_tests(
    configured: dict[str, DriftTestConfig], registry: dict[str, DriftTestFn] = DRIFT_TESTS
) -> None:
    """``ValueError`` unless every registered test has settings and every setting a test."""
    missing, unknown = registry.keys() - configured.keys(), configured.keys() - registry.keys()
    if missing or unknown:
        raise ValueError(
            f"monitor.drift_tests must name each drift test once: missing {sorted(missing)}, "
            f"unknown {sorted(unknown)}; the tests are {list(registry)}."
        )


def run_tests(
    window: Window,
    profile: ReferenceProfile,
    cfg: MonitorConfig,
    registry: dict[str, DriftTestFn] = DRIFT_TESTS,
) -> list[DriftTest]:
    """Each registered test with its own threshold (those that cannot run on the window left out)."""
    check_drift_tests(cfg.drift_tests, registry)
    results = []
    for name, test in registry.items():
        criterion = Criterion(cfg.alpha, cfg.drift_tests[name].min_effect)
        result = test(window, profile, cfg, criterion)
        if result is not None:
            results.append(result)
    return results


def no_decision(rows: Sequence[dict[str, Any]], cfg: MonitorConfig) -> tuple[Status, str] | None:
    """Why the window gets no drift decision (too few answers, a repeated upload), if it does not."""
    if len(rows) < cfg.min_predictions:
        return "not_enough_data", (
            f"only {len(rows)} predictions in the window (need {cfg.min_predictions}); "
            "no drift decision"
        )
    copies, distinct = repeated_inputs(rows, cfg.identical_inputs_top_k)
    if copies >= cfg.identical_inputs_max_share * len(rows):
        return "identical_inputs", (
            f"{copies} of {len(rows)} answers ({copies / len(rows):.0%}) are copies of "
            f"{min(cfg.identical_inputs_top_k, distinct)} identical input(s): a repeated upload, "
            "not a change in what users send; no drift decision (identical_inputs_max_share "
            f"{cfg.identical_inputs_max_share:.0%})"
        )
    return None


def decide(
    rows: Sequence[dict[str, Any]],
    profile: ReferenceProfile,
    cfg: MonitorConfig,
    labelled: Sequence[dict[str, Any]] = (),
    model_version: str | None = None,
    registry: dict[str, DriftTestFn] = DRIFT_TESTS,
) -> DriftDecision:
    """Run every test on the window ``rows`` (and its labelled feedback) and decide (the rule is
    in the module docstring)."""
    correct = np.asarray([r["class_id"] == r["true_class_id"] for r in labelled], dtype=bool)
    decision = DriftDecision(
        status="ok",
        model_version=model_version,
        n_predictions=len(rows),
        n_feedback=len(correct),
        live_accuracy=float(correct.mean()) if len(correct) else None,
    )
    skipped = no_decision(rows, cfg)
    if skipped is not None:
        decision.status, reason = skipped
        decision.reasons.append(reason)
        return decision
    tests = run_tests(Window(window_arrays(rows), correct), profile, cfg, registry)
    flagged = [t.name for t in tests if t.drifted]
    decision.tests = tests
    decision.drift_share = len(flagged) / len(tests)
    decision.drift_detected = len(flagged) >= cfg.drift_min_flagged
    verdict = "DRIFT" if decision.drift_detected else "no drift"
    decision.reasons.append(
        f"{verdict}: {len(flagged)} of {len(tests)} tests flag drift "
        f"({', '.join(flagged) or 'none'}); drift needs {cfg.drift_min_flagged}"
    )
    return decision
