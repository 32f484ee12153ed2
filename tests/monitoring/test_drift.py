"""Threshold calibration, the reference profile and the drift decision on hand-made data."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from src.monitoring.drift import (
    DRIFT_TESTS,
    DriftTest,
    check_drift_tests,
    decide,
)
from src.monitoring.reference_profile import (
    ReferenceProfile,
    Threshold,
    build_reference_profile,
    calibrate_threshold,
)
from tests.helpers.config import monitor_config


def test_threshold_is_the_widest_set_of_answers_that_reaches_the_target() -> None:
    confidence = np.array([0.5, 0.9, 0.6, 0.8, 0.7])
    correct = np.array([False, True, False, True, True])
    # Sorted: 0.9 T, 0.8 T, 0.7 T, 0.6 F, 0.5 F -> running accuracy 1, 1, 1, 3/4, 3/5.
    t = calibrate_threshold(confidence, correct, 0.75)
    assert (t.value, t.coverage, t.accepted_accuracy) == (0.6, 0.8, 0.75)
    assert calibrate_threshold(confidence, correct, 1.0).value == 0.7
    assert calibrate_threshold(confidence, correct, 0.5).value == 0.5
    # Never reachable: everything is flagged.
    never = calibrate_threshold(confidence, ~np.ones(5, dtype=bool), 0.9)
    assert never.value == 1.0 and never.coverage == 0.0


def test_a_tie_is_accepted_or_flagged_as_a_whole() -> None:
    # 0.9 T, then two answers at 0.8 (one wrong): cutting between them is impossible.
    t = calibrate_threshold(np.array([0.9, 0.8, 0.8]), np.array([True, True, False]), 0.9)
    assert t.value == 0.9 and t.coverage == pytest.approx(1 / 3)


def test_profile_records_the_logged_statistics() -> None:
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    images[1] = 255
    images[2, :14] = 255
    probabilities = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.4, 0.5, 0.1], [0.2, 0.2, 0.6]], dtype=np.float64
    )
    profile = build_reference_profile(
        images, np.array([0, 1, 0, 2]), probabilities, target_accuracy=0.99, sample_size=100
    )
    assert profile.n == 4 and profile.accuracy == 0.75
    assert profile.class_shares == [0.25, 0.5, 0.25]
    assert sorted(profile.samples["input_mean"]) == [0.0, 0.0, 0.5, 1.0]
    assert sorted(profile.samples["input_std"]) == [0.0, 0.0, 0.0, 0.5]
    assert sorted(profile.samples["margin"]) == pytest.approx([0.1, 0.3, 0.4, 0.5])
    # Sorted by confidence: 0.7 T, 0.6 T, 0.6 T, 0.5 F -> the wrong answer is flagged.
    assert profile.threshold.value == 0.6 and profile.low_confidence_share == 0.25
    again = ReferenceProfile.from_dict(json.loads(profile.to_json()))
    assert again == profile


def _reference(rng: np.random.Generator, n: int = 3000) -> ReferenceProfile:
    return ReferenceProfile(
        n=n,
        accuracy=0.9,
        class_shares=[0.1] * 10,
        low_confidence_share=0.1,
        threshold=Threshold(0.6, 0.98, 0.98, 0.9),
        samples={
            "confidence": list(np.clip(rng.normal(0.8, 0.1, n), 0, 1)),
            "margin": list(rng.uniform(0, 1, n)),
            "input_mean": list(rng.normal(0.29, 0.08, n)),
            "input_std": list(rng.normal(0.33, 0.05, n)),
        },
    )


def _window(
    rng: np.random.Generator,
    n: int,
    *,
    conf: float = 0.8,
    mean: float = 0.29,
    one_class: bool = False,
) -> list[dict[str, Any]]:
    classes = np.zeros(n, dtype=int) if one_class else rng.integers(0, 10, n)
    return [
        {
            "class_id": int(c),
            "confidence": float(np.clip(rng.normal(conf, 0.1), 0, 1)),
            "margin": 0.5,
            "input_mean": float(rng.normal(mean, 0.08)),
            "input_std": float(rng.normal(0.33, 0.05)),
        }
        for c in classes
    ]


def test_same_distribution_is_not_drift_and_a_shift_is() -> None:
    rng = np.random.default_rng(0)
    reference = _reference(rng)
    cfg = monitor_config(min_predictions=100)
    clean = decide(_window(rng, 500), reference, cfg)
    assert clean.status == "ok" and not clean.drift_detected
    assert not any(t.drifted for t in clean.tests)
    # Less confident, darker images: confidence, low-confidence share and input mean move.
    shifted = decide(_window(rng, 500, conf=0.55, mean=0.15), reference, cfg)
    assert shifted.drift_detected
    assert {t.name for t in shifted.tests if t.drifted} == {
        "confidence",
        "input_mean",
        "low_confidence_share",
    }
    assert shifted.drift_share == pytest.approx(3 / 5)
    metrics = shifted.metrics()
    assert metrics["drift_detected"] == 1.0 and metrics["n_predictions"] == 500
    assert math.isfinite(metrics["class_shares_p_value"])


def test_one_class_only_moves_the_class_shares() -> None:
    rng = np.random.default_rng(1)
    decision = decide(
        _window(rng, 300, one_class=True), _reference(rng), monitor_config(min_predictions=100)
    )
    [flagged] = [t for t in decision.tests if t.drifted]
    assert flagged.name == "class_shares" and flagged.effect == pytest.approx(0.9)
    assert not decision.drift_detected  # one test flagging is under the default 3
    assert decide(
        _window(rng, 300, one_class=True),
        _reference(rng),
        monitor_config(min_predictions=100, drift_min_flagged=1),
    ).drift_detected


def test_too_few_predictions_give_no_decision() -> None:
    rng = np.random.default_rng(2)
    decision = decide(_window(rng, 50), _reference(rng), monitor_config(min_predictions=200))
    assert decision.status == "not_enough_data" and not decision.drift_detected
    assert "only 50 predictions" in decision.reasons[0]


def test_live_accuracy_counts_once_there_is_enough_feedback() -> None:
    rng = np.random.default_rng(3)
    cfg = monitor_config(min_predictions=100, min_feedback=30)
    rows = _window(rng, 300)
    wrong = [{"class_id": 1, "true_class_id": 2}] * 20 + [{"class_id": 1, "true_class_id": 1}] * 20
    decision = decide(rows, _reference(rng), cfg, labelled=wrong)
    [live] = [t for t in decision.tests if t.name == "live_accuracy"]
    assert decision.live_accuracy == 0.5 and live.drifted and decision.n_feedback == 40
    few = decide(rows, _reference(rng), cfg, labelled=wrong[:10])
    assert [t for t in few.tests if t.name == "live_accuracy"] == []


def _always(flags: bool) -> Any:
    """A drift test that flags (or never flags) whatever the window."""

    def run(*_args: Any) -> DriftTest:
        return DriftTest("extra", "fixed", 0.0, 0.0 if flags else 1.0, 1.0, flags, "fixed")

    return run


@pytest.mark.parametrize(
    "flagging",
    [
        (),
        ("class_shares",),
        ("confidence", "input_mean"),
        ("confidence", "input_mean", "input_std"),
    ],
)
def test_adding_a_test_that_does_not_flag_leaves_the_decision_alone(
    flagging: tuple[str, ...],
) -> None:
    """Under the former share rule (half the tests), 3 of 6 flagging was drift and adding a
    seventh that does not flag made it 3 of 7, no drift; a count of flagging tests never moves."""
    rng = np.random.default_rng(4)
    rows, reference = _window(rng, 400), _reference(rng)
    rule: dict[str, Any] = {"min_predictions": 100, "drift_min_flagged": len(flagging) or 1}
    forced = {name: (_always(True) if name in flagging else _always(False)) for name in DRIFT_TESTS}
    before = decide(rows, reference, monitor_config(**rule), registry=forced)
    with_extra = monitor_config(**rule, drift_tests={"extra": {"min_effect": 0.1}})
    after = decide(rows, reference, with_extra, registry={**forced, "extra": _always(False)})
    assert before.drift_detected == after.drift_detected == bool(flagging)
    assert len(after.tests) == len(before.tests) + 1


def test_each_test_flags_against_its_own_threshold() -> None:
    rng = np.random.default_rng(1)
    rows, reference = _window(rng, 300, one_class=True), _reference(rng)
    default = decide(rows, reference, monitor_config(min_predictions=100))
    assert [t.name for t in default.tests if t.drifted] == ["class_shares"]
    # Total variation 0.9: a class_shares threshold above it un-flags that test alone.
    raised = monitor_config(min_predictions=100, drift_tests={"class_shares": {"min_effect": 0.95}})
    assert not any(t.drifted for t in decide(rows, reference, raised).tests)


def test_the_config_names_every_registered_test_once() -> None:
    cfg = monitor_config()
    check_drift_tests(cfg.drift_tests)  # configs/monitor.yaml as shipped
    with pytest.raises(ValueError, match="missing \\['live_accuracy'\\]"):
        check_drift_tests({k: v for k, v in cfg.drift_tests.items() if k != "live_accuracy"})
    with pytest.raises(ValueError, match="unknown \\['extra'\\]"):
        check_drift_tests({**cfg.drift_tests, "extra": cfg.drift_tests["confidence"]})
