"""The model card of a registered version (markdown): where its data came from, how it was
validated, trained and scored, and why the gate let it through (or not)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from src.labels import CLASS_NAMES
from src.metrics import score_predictions

CARD_ARTIFACT = "model_card.md"
MODEL_CARD_TAG = "model_card"  # version tag the API serves at GET /model/card


@dataclass
class CardInputs:
    name: str
    version: str
    run_id: str
    data_md5: str
    split_hash: str
    dvc: dict[str, str | None]
    validation: dict[str, Any] | None
    params: dict[str, str]
    y_true: np.ndarray
    y_pred: np.ndarray
    gate_passed: bool
    gate_reasons: list[str]
    gate_details: dict[str, Any]
    threshold: dict[str, float] = field(default_factory=dict)
    val_accuracy: float | None = None


def dvc_revision(root: Path) -> dict[str, str | None]:
    """The ``data.dvc`` pointer's md5 and the git commit that last changed it (if any)."""
    pointer = root / "data.dvc"
    md5 = None
    if pointer.is_file():
        outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or [{}]
        md5 = outs[0].get("md5")
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "log", "-1", "--format=%H", "--", "data.dvc"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"data_dvc_md5": md5, "git_commit_of_data_dvc": commit or None}


def validation_summary(outputs: Path, data_md5: str) -> dict[str, Any] | None:
    """The data-flow's Great Expectations result for ``data_md5``, summarised."""
    path = outputs / "validation" / f"{data_md5.removesuffix('.dir')}.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    outcomes = payload.get("outcomes", [])
    return {
        "success": payload.get("success"),
        "n_rows": payload.get("n_rows"),
        "passed": sum(1 for o in outcomes if o.get("success")),
        "expectations": len(outcomes),
        "checked": sorted({str(o.get("expectation")) for o in outcomes}),
    }


def per_class_table(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, list[str]]:
    n = len(CLASS_NAMES)
    if len(y_true):
        scores = score_predictions(y_true, y_pred, n)
        confusion, f1s = scores.confusion, scores.per_class_f1
    else:
        confusion, f1s = np.zeros((n, n), dtype=np.int64), np.zeros(n)
    rows = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for i, name in enumerate(CLASS_NAMES):
        tp = confusion[i, i]
        precision = tp / max(confusion[:, i].sum(), 1)
        recall = tp / max(confusion[i].sum(), 1)
        f1 = f1s[i]
        rows.append(
            f"| {name} | {precision:.4f} | {recall:.4f} | {f1:.4f} | {confusion[i].sum()} |"
        )
    return confusion, rows


def _gate_lines(inputs: CardInputs) -> list[str]:
    d = inputs.gate_details
    lines = [f"**{'PASSED' if inputs.gate_passed else 'FAILED'}**", ""]
    lines += [f"- {reason}" for reason in inputs.gate_reasons]
    if "mcnemar_p_value" in d:
        lines += [
            "",
            f"McNemar ({d.get('mcnemar_method')}) against Production v{d.get('champion_version')}: "
            f"candidate right where Production wrong **{d.get('candidate_only_correct')}**, "
            f"Production right where candidate wrong **{d.get('champion_only_correct')}**, "
            f"statistic {float(d['mcnemar_statistic']):.4g}, p-value **{float(d['mcnemar_p_value']):.4g}** "
            f"(alpha {d.get('alpha')}).",
        ]
    elif d.get("champion_version") is None:
        lines += ["", "No Production version to compare with: floors only (no McNemar test)."]
    return lines


def build_card(inputs: CardInputs) -> str:
    """The card as markdown."""
    y_true = np.asarray(inputs.y_true, dtype=np.int64)
    y_pred = np.asarray(inputs.y_pred, dtype=np.int64)
    confusion, class_rows = per_class_table(y_true, y_pred)
    accuracy = float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")
    val = inputs.validation
    lines = [
        f"# Model card: {inputs.name} v{inputs.version}",
        "",
        f"Fashion-MNIST garment classifier; MLflow run `{inputs.run_id}`.",
        "",
        "## Data",
        f"- data md5: `{inputs.data_md5}`",
        f"- DVC: `data.dvc` md5 `{inputs.dvc.get('data_dvc_md5')}`, git commit "
        f"`{inputs.dvc.get('git_commit_of_data_dvc') or 'not in git'}`",
        f"- split hash: `{inputs.split_hash}`",
        "- validation (Great Expectations): "
        + (
            f"{'passed' if val['success'] else 'FAILED'}, {val['passed']}/{val['expectations']} "
            f"expectations on {val['n_rows']} rows ({', '.join(val['checked'])})"
            if val
            else "no validation result found beside this run"
        ),
        "",
        "## Test split",
        f"accuracy **{accuracy:.4f}** on {len(y_true)} images"
        + (f"; validation accuracy {inputs.val_accuracy:.4f}" if inputs.val_accuracy else ""),
        "",
        *class_rows,
        "",
        "Confusion matrix (rows: true, columns: predicted):",
        "",
        "| true \\ predicted | " + " | ".join(str(i) for i in range(len(CLASS_NAMES))) + " |",
        "|---" * (len(CLASS_NAMES) + 1) + "|",
        *[
            f"| {i} {name} | " + " | ".join(str(int(x)) for x in confusion[i]) + " |"
            for i, name in enumerate(CLASS_NAMES)
        ],
        "",
        "## Gate",
        *_gate_lines(inputs),
        "",
        "## Low-confidence threshold",
        (
            f"`low_confidence: true` below confidence {inputs.threshold['value']:.4f}: answers at "
            f"or above it were {inputs.threshold['accepted_accuracy']:.2%} right on validation "
            f"(target {inputs.threshold['target_accuracy']:.0%}, {inputs.threshold['coverage']:.1%} "
            "of answers)."
            if inputs.threshold
            else "not calibrated"
        ),
        "",
        "## Parameters",
        "| parameter | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(inputs.params.items())],
    ]
    return "\n".join(lines) + "\n"
