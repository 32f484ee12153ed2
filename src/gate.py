"""The promotion gate: may a freshly trained candidate replace the Production model?

Two checks, both on the frozen test split:

1. **Absolute floors** — accuracy and macro-F1 must reach ``cfg.min_accuracy`` / ``cfg.min_macro_f1``.
2. **Champion/challenger** — when a Production version exists, the candidate must not be
   *significantly worse* than it, both scored on the same images (the same split hash; the caller
   re-scores Production on the candidate's split when the hashes differ).
   ``comparison="mcnemar"``: McNemar's test on the paired correct/incorrect outcomes; the candidate
   fails when the two-sided p-value is below ``alpha`` *and* Production is the better one.
   The exact binomial form is used when the discordant pairs are few (< 25), the chi-square form
   with continuity correction otherwise (``mcnemar_method`` forces one).
   ``comparison="margin"``: the candidate fails when its accuracy or macro-F1 is more than
   ``margin`` below Production's.

On the first run (no Production version) only the floors apply. Everything here is pure: plain
arrays in, a :class:`GateDecision` out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from src.config.gate import GateConfig
from src.metrics import check_pair, classification_metrics

# Below this many discordant pairs the chi-square approximation is poor; use the exact test.
EXACT_TEST_BELOW = 25


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return f"{verdict}: " + "; ".join(self.reasons)


@dataclass(frozen=True)
class McNemarResult:
    # b: the candidate is right where Production is wrong; c: the other way round.
    candidate_only_correct: int
    champion_only_correct: int
    statistic: float
    p_value: float
    method: str


def mcnemar(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    champion_pred: np.ndarray,
    method: str = "auto",
) -> McNemarResult:
    """McNemar's test on two prediction vectors for the same labelled images."""
    y_true, candidate_pred = check_pair(y_true, candidate_pred)
    _, champion_pred = check_pair(y_true, champion_pred)
    cand_ok = candidate_pred == y_true
    champ_ok = champion_pred == y_true
    b = int(np.sum(cand_ok & ~champ_ok))
    c = int(np.sum(~cand_ok & champ_ok))
    n = b + c
    if method == "auto":
        method = "exact" if n < EXACT_TEST_BELOW else "chi2"
    if n == 0:
        return McNemarResult(b, c, 0.0, 1.0, method)
    if method == "exact":
        p_value = float(stats.binomtest(min(b, c), n, 0.5, alternative="two-sided").pvalue)
        statistic = float(min(b, c))
    elif method == "chi2":
        statistic = float((abs(b - c) - 1) ** 2 / n)
        p_value = float(stats.chi2.sf(statistic, df=1))
    else:
        raise ValueError(f"Unknown McNemar method {method!r}; use 'auto', 'exact' or 'chi2'.")
    return McNemarResult(b, c, statistic, min(1.0, p_value), method)


def evaluate_gate(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    cfg: GateConfig,
    champion_pred: np.ndarray | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """Decide whether the candidate may be promoted (see the module docstring)."""
    reasons: list[str] = []
    failed = False
    cand = classification_metrics(y_true, candidate_pred)
    details: dict[str, Any] = {
        "n_test": len(y_true),
        "candidate_accuracy": cand["accuracy"],
        "candidate_macro_f1": cand["macro_f1"],
        "min_accuracy": cfg.min_accuracy,
        "min_macro_f1": cfg.min_macro_f1,
        "comparison": cfg.comparison,
        "champion_version": champion_version,
    }
    for metric, floor in (("accuracy", cfg.min_accuracy), ("macro_f1", cfg.min_macro_f1)):
        value = cand[metric]
        if value < floor:
            failed = True
            reasons.append(f"{metric} {value:.4f} is below the floor {floor:.4f}")
        else:
            reasons.append(f"{metric} {value:.4f} meets the floor {floor:.4f}")

    if champion_pred is None:
        reasons.append("no Production version yet: floors only")
        return GateDecision(passed=not failed, reasons=reasons, details=details)

    champ = classification_metrics(y_true, champion_pred)
    details["champion_accuracy"] = champ["accuracy"]
    details["champion_macro_f1"] = champ["macro_f1"]
    who = f"Production v{champion_version}" if champion_version else "Production"
    if cfg.comparison == "mcnemar":
        result = mcnemar(y_true, candidate_pred, champion_pred, cfg.mcnemar_method)
        details.update(
            mcnemar_method=result.method,
            mcnemar_statistic=result.statistic,
            mcnemar_p_value=result.p_value,
            candidate_only_correct=result.candidate_only_correct,
            champion_only_correct=result.champion_only_correct,
            alpha=cfg.alpha,
        )
        worse = result.champion_only_correct > result.candidate_only_correct
        comparison = (
            f"accuracy {cand['accuracy']:.4f} vs {who} {champ['accuracy']:.4f}, McNemar "
            f"({result.method}) p={result.p_value:.4g}, discordant "
            f"{result.candidate_only_correct}/{result.champion_only_correct}"
        )
        if worse and result.p_value < cfg.alpha:
            failed = True
            reasons.append(f"significantly worse than {who}: {comparison} < alpha {cfg.alpha}")
        else:
            reasons.append(f"not significantly worse than {who}: {comparison}")
    else:
        details["margin"] = cfg.margin
        for metric in ("accuracy", "macro_f1"):
            drop = champ[metric] - cand[metric]
            if drop > cfg.margin:
                failed = True
                reasons.append(
                    f"{metric} {cand[metric]:.4f} is {drop:.4f} below {who} "
                    f"({champ[metric]:.4f}), more than the margin {cfg.margin:.4f}"
                )
            else:
                reasons.append(
                    f"{metric} {cand[metric]:.4f} within the margin {cfg.margin:.4f} of {who} "
                    f"({champ[metric]:.4f})"
                )
    return GateDecision(passed=not failed, reasons=reasons, details=details)
