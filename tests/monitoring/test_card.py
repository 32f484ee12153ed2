"""The model card's content on hand-made inputs (the gate's McNemar details included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from src.gate import evaluate_gate
from src.monitoring.card import CardInputs, build_card, dvc_revision, validation_summary
from tests.helpers.config import gate_config


def test_card_shows_data_gate_mcnemar_metrics_and_confusion(tmp_path: Path) -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2, 6, 6])
    candidate = np.array([0, 0, 1, 1, 2, 6, 6, 6])  # one Pullover called Shirt
    champion = np.array([0, 6, 1, 1, 2, 2, 0, 6])
    gate = evaluate_gate(
        y_true,
        candidate,
        gate_config(min_accuracy=0.5, min_macro_f1=0.5),
        champion_pred=champion,
        champion_version="3",
    )
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "abc.json").write_text(
        json.dumps(
            {
                "success": True,
                "n_rows": 60000,
                "outcomes": [
                    {"expectation": "expect_column_values_to_be_between", "success": True},
                    {"expectation": "expect_table_row_count_to_be_between", "success": True},
                ],
            }
        )
    )
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 1dc5c47b.dir\n  path: data\n")
    card = build_card(
        CardInputs(
            name="clothing-classifier",
            version="4",
            run_id="r1",
            data_md5="abc.dir",
            split_hash="s123",
            dvc=dvc_revision(tmp_path),
            validation=validation_summary(tmp_path, "abc.dir"),
            params={"lr": "0.1"},
            y_true=y_true,
            y_pred=candidate,
            gate_passed=gate.passed,
            gate_reasons=gate.reasons,
            gate_details=gate.details,
        )
    )
    assert card.startswith("# Model card: clothing-classifier v4")
    assert "data md5: `abc.dir`" in card and "`data.dvc` md5 `1dc5c47b.dir`" in card
    assert "split hash: `s123`" in card and "| lr | 0.1 |" in card
    assert "passed, 2/2 expectations on 60000 rows" in card
    # McNemar: candidate right where v3 wrong on 2 images (#1, #6), v3 right where candidate
    # wrong on 1 (#5); exact test, p = 1.0.
    assert "Production wrong **2**" in card and "candidate wrong **1**" in card
    assert "p-value **1**" in card and "Production v3" in card
    assert "accuracy **0.8750** on 8 images" in card
    assert "| Pullover | 1.0000 | 0.5000 | 0.6667 | 2 |" in card
    assert "| 2 Pullover | 0 | 0 | 1 | 0 | 0 | 0 | 1 | 0 | 0 | 0 |" in card
    assert all(reason in card for reason in gate.reasons)
