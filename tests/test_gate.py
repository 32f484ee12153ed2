"""The promotion gate on hand-made prediction vectors."""

from __future__ import annotations

import numpy as np
import pytest

from src.gate import evaluate_gate, mcnemar
from src.metrics import classification_metrics
from tests.helpers.config import gate_config


def _labels(n: int = 1000) -> np.ndarray:
    return np.arange(n) % 10


def _with_errors(y: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """A copy of ``y`` that is wrong exactly at the indices ``wrong``."""
    pred = y.copy()
    pred[wrong] = (y[wrong] + 1) % 10
    return pred


def test_metrics_match_hand_computation() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1: class0 2*1/(2+2)=0.5, class1 2*2/(2+3)=0.8, class2 2*1/(2+1)=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_first_run_uses_floors_only() -> None:
    y = _labels()
    good = _with_errors(y, np.arange(0, 50))  # 95 % right
    decision = evaluate_gate(y, good, gate_config())
    assert decision.passed
    assert any("floors only" in r for r in decision.reasons)
    assert decision.details["candidate_accuracy"] == pytest.approx(0.95)


def test_below_floor_fails_with_reason() -> None:
    y = _labels()
    bad = _with_errors(y, np.arange(0, 150))  # 85 %
    decision = evaluate_gate(y, bad, gate_config(min_accuracy=0.9, min_macro_f1=0.0))
    assert not decision.passed
    assert any("accuracy 0.8500 is below the floor 0.9000" in r for r in decision.reasons)


def test_significantly_worse_candidate_fails_mcnemar() -> None:
    y = _labels()
    champion = _with_errors(y, np.arange(0, 40))  # 96 %
    candidate = _with_errors(y, np.arange(500, 580))  # 92 %: 80 new errors, 40 fixed
    cfg = gate_config(min_accuracy=0.9, min_macro_f1=0.9)
    result = mcnemar(y, candidate, champion)
    assert (result.candidate_only_correct, result.champion_only_correct) == (40, 80)
    assert result.method == "chi2"
    # (|40-80|-1)^2 / 120 = 12.675 -> p ~ 3.7e-4
    assert result.statistic == pytest.approx(39**2 / 120)
    assert result.p_value == pytest.approx(3.7e-4, rel=0.05)
    decision = evaluate_gate(y, candidate, cfg, champion_pred=champion, champion_version="3")
    assert not decision.passed
    assert any("significantly worse than Production v3" in r for r in decision.reasons)
    assert decision.details["mcnemar_p_value"] < 0.05


def test_slightly_worse_but_not_significant_passes() -> None:
    y = _labels()
    champion = _with_errors(y, np.arange(0, 40))
    candidate = _with_errors(y, np.arange(0, 44))  # 4 more errors, all discordant the same way
    result = mcnemar(y, candidate, champion)
    assert result.method == "exact"
    assert (result.candidate_only_correct, result.champion_only_correct) == (0, 4)
    assert result.p_value == pytest.approx(0.125)  # 2 * 0.5**4
    decision = evaluate_gate(y, candidate, gate_config(), champion_pred=champion)
    assert decision.passed
    assert any("not significantly worse" in r for r in decision.reasons)


def test_significantly_better_candidate_passes() -> None:
    y = _labels()
    champion = _with_errors(y, np.arange(0, 90))
    candidate = _with_errors(y, np.arange(0, 30))
    decision = evaluate_gate(y, candidate, gate_config(), champion_pred=champion)
    assert decision.passed
    assert decision.details["mcnemar_p_value"] < 1e-6


def test_exact_test_on_few_discordant_pairs() -> None:
    y = _labels(100)
    champion = y.copy()
    candidate = _with_errors(y, np.arange(0, 7))  # 7 discordant, all against the candidate
    cfg = gate_config(min_accuracy=0.0, min_macro_f1=0.0)
    result = mcnemar(y, candidate, champion, method="exact")
    assert result.p_value == pytest.approx(2 * 0.5**7)
    assert not evaluate_gate(y, candidate, cfg, champion_pred=champion).passed


def test_margin_comparison() -> None:
    y = _labels()
    champion = _with_errors(y, np.arange(0, 40))  # 0.960
    within = _with_errors(y, np.arange(0, 44))  # 0.956
    beyond = _with_errors(y, np.arange(0, 50))  # 0.950
    cfg = gate_config(comparison="margin", margin=0.005)
    assert evaluate_gate(y, within, cfg, champion_pred=champion).passed
    decision = evaluate_gate(y, beyond, cfg, champion_pred=champion, champion_version="1")
    assert not decision.passed
    assert any("more than the margin" in r for r in decision.reasons)


def test_identical_models_pass() -> None:
    y = _labels()
    pred = _with_errors(y, np.arange(0, 60))
    decision = evaluate_gate(y, pred, gate_config(), champion_pred=pred.copy())
    assert decision.passed
    assert decision.details["mcnemar_p_value"] == 1.0


def test_mismatched_lengths_are_refused() -> None:
    y = _labels()
    with pytest.raises(ValueError, match="same prepared test split"):
        evaluate_gate(y, y[:10], gate_config())


def _one_class_missed() -> tuple[np.ndarray, np.ndarray]:
    """1000 balanced labels; class 9 always answered as class 0: accuracy 0.9, macro-F1 ~0.867."""
    y = _labels()
    pred = y.copy()
    pred[y == 9] = 0
    return y, pred


def test_the_macro_f1_floor_decides_alone() -> None:
    y, pred = _one_class_missed()
    decision = evaluate_gate(y, pred, gate_config(min_accuracy=0.85, min_macro_f1=0.9))
    assert not decision.passed
    assert any("accuracy 0.9000 meets the floor 0.8500" in r for r in decision.reasons)
    assert any("macro_f1 0.8667 is below the floor 0.9000" in r for r in decision.reasons)


def test_a_value_at_a_floor_meets_it() -> None:
    y, pred = _one_class_missed()
    f1 = classification_metrics(y, pred)["macro_f1"]
    assert evaluate_gate(y, pred, gate_config(min_accuracy=0.9, min_macro_f1=f1)).passed
    above = np.nextafter(0.9, 1.0)
    assert not evaluate_gate(y, pred, gate_config(min_accuracy=above, min_macro_f1=0.0)).passed
    above_f1 = np.nextafter(f1, 1.0)
    assert not evaluate_gate(y, pred, gate_config(min_accuracy=0.0, min_macro_f1=above_f1)).passed


def test_a_p_value_at_alpha_is_not_significant() -> None:
    y = _labels()
    champion = _with_errors(y, np.arange(0, 40))
    candidate = _with_errors(y, np.arange(500, 580))  # significantly worse (p ~ 3.7e-4)
    p_value = mcnemar(y, candidate, champion).p_value
    floors = {"min_accuracy": 0.0, "min_macro_f1": 0.0}
    at = evaluate_gate(y, candidate, gate_config(alpha=p_value, **floors), champion_pred=champion)
    assert at.passed, at.reasons
    above = gate_config(alpha=np.nextafter(p_value, 1.0), **floors)
    assert not evaluate_gate(y, candidate, above, champion_pred=champion).passed


def test_the_macro_f1_margin_decides_alone() -> None:
    """A rare class (10 of 1000) loses 4 answers: accuracy drops 0.004, within the 0.005
    margin; macro-F1 drops ~0.027, beyond it."""
    y = np.concatenate([np.arange(990) % 9, np.full(10, 9)])
    candidate = y.copy()
    candidate[990:994] = 0
    cfg = gate_config(comparison="margin", margin=0.005, min_accuracy=0.0, min_macro_f1=0.0)
    decision = evaluate_gate(y, candidate, cfg, champion_pred=y.copy(), champion_version="1")
    assert not decision.passed
    assert any(r.startswith("accuracy 0.9960 within the margin") for r in decision.reasons)
    assert any(r.startswith("macro_f1") and "more than the margin" in r for r in decision.reasons)


def test_a_drop_equal_to_the_margin_is_within_it() -> None:
    y = _labels()
    champion = _with_errors(y, np.arange(0, 40))
    candidate = _with_errors(y, np.arange(0, 45))
    champ, cand = classification_metrics(y, champion), classification_metrics(y, candidate)
    drop = max(champ[m] - cand[m] for m in ("accuracy", "macro_f1"))
    floors = {"min_accuracy": 0.0, "min_macro_f1": 0.0}
    at = gate_config(comparison="margin", margin=drop, **floors)
    assert evaluate_gate(y, candidate, at, champion_pred=champion).passed
    below = gate_config(comparison="margin", margin=np.nextafter(drop, 0.0), **floors)
    assert not evaluate_gate(y, candidate, below, champion_pred=champion).passed
