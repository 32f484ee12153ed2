"""The drift report: a markdown summary (Prefect artifact) and an HTML page with plots (MLflow
artifact), comparing the window with the reference profile."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from src.labels import CLASS_NAMES
from src.monitoring.drift import DriftDecision, window_arrays
from src.monitoring.reference_profile import KS_TESTED_STATS, ReferenceProfile


def markdown_summary(decision: DriftDecision, window_hours: float) -> str:
    verdict = {True: "DRIFT DETECTED", False: "no drift"}[decision.drift_detected]
    if decision.status == "not_enough_data":
        verdict = "no decision (not enough data)"
    elif decision.status == "identical_inputs":
        verdict = "no decision (repeated identical inputs)"
    lines = [
        f"## Monitoring: {verdict}",
        "",
        f"Model version {decision.model_version or '-'}; last {window_hours:g} h: "
        f"{decision.n_predictions} predictions, {decision.n_feedback} labelled"
        + (
            f" (live accuracy {decision.live_accuracy:.1%})"
            if decision.live_accuracy is not None
            else ""
        )
        + ".",
        "",
    ]
    lines += [f"- {reason}" for reason in decision.reasons]
    if decision.tests:
        lines += ["", "| test | method | statistic | p-value | effect | drift | detail |"]
        lines += ["|---|---|---|---|---|---|---|"]
        lines += [
            f"| {t.name} | {t.method} | {t.statistic:.4g} | {t.p_value:.3g} | {t.effect:.3f} "
            f"| {'yes' if t.drifted else 'no'} | {t.detail} |"
            for t in decision.tests
        ]
    return "\n".join(lines) + "\n"


def _figure(rows: list[dict[str, Any]], profile: ReferenceProfile) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = window_arrays(rows)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    n_classes = len(profile.class_shares)
    now = np.bincount(window["class_id"].astype(np.int64), minlength=n_classes)[:n_classes]
    x = np.arange(n_classes)
    ax = axes[0, 0]
    ax.bar(x - 0.2, profile.class_shares, 0.4, label="validation")
    ax.bar(x + 0.2, now / max(now.sum(), 1), 0.4, label="window")
    ax.set_xticks(x, [CLASS_NAMES[i] if i < len(CLASS_NAMES) else str(i) for i in x], rotation=45)
    ax.set_title("predicted class shares")
    ax.legend()
    for ax, key in zip(axes.ravel()[1:], KS_TESTED_STATS, strict=True):
        reference = np.asarray(profile.samples[key])
        current = window[key][np.isfinite(window[key])]
        bins = np.linspace(
            min(reference.min(), current.min()), max(reference.max(), current.max()), 30
        )
        ax.hist(reference, bins=bins, density=True, alpha=0.5, label="validation")
        ax.hist(current, bins=bins, density=True, alpha=0.5, label="window")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def write_report(
    folder: Path,
    decision: DriftDecision,
    rows: list[dict[str, Any]],
    profile: ReferenceProfile,
    window_hours: float,
) -> Path:
    """Write ``report.md``, ``distributions.png`` (when there is data) and ``report.html``."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = markdown_summary(decision, window_hours)
    (folder / "report.md").write_text(summary)
    image = ""
    if rows:
        png = _figure(rows, profile)
        (folder / "distributions.png").write_bytes(png)
        image = f'<img alt="distributions" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    page = (
        "<!doctype html><meta charset='utf-8'><title>Monitoring report</title>"
        f"<pre>{html.escape(summary)}</pre>{image}"
    )
    path = folder / "report.html"
    path.write_text(page)
    return path
