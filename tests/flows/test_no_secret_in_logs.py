"""The tracking URI's password never reaches train-flow's log lines or its result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.train_flow import flow_summary, run_banner, where_to_look
from src.data.split import PreparedData
from src.promotion import Evaluation
from tests.helpers.config import app_config

URI = "http://alice:s3cret-pw@mlflow.internal:5000/?token=tok-123"


def test_the_first_log_line_names_the_tracking_server_without_its_secrets() -> None:
    banner = run_banner(app_config(mlflow={"tracking_uri": URI}))
    assert "s3cret-pw" not in banner and "tok-123" not in banner and "alice" not in banner
    assert "tracking=http://***@mlflow.internal:5000/" in banner


@dataclass
class Trained:
    run_id: str


def test_the_flow_s_result_names_the_tracking_server_without_its_secrets() -> None:
    cfg = app_config(mlflow={"tracking_uri": URI})
    prepared = PreparedData(Path("splits.npz"), split_hash="s", data_md5="d", counts={})
    promotion = {
        "gate_passed": True,
        "gate_reasons": [],
        "champion_version": None,
        "regated": False,
        "promoted": True,
        "production_version": "1",
    }
    summary = flow_summary(
        cfg,
        prepared,
        Trained("r"),
        Evaluation(0.9, 0.9, {}, 10, Path("p.npy")),
        "1",
        promotion,
        None,
    )
    shown = str(summary)
    assert "s3cret-pw" not in shown and "tok-123" not in shown and "alice" not in shown
    assert summary["tracking_uri"].startswith("http://***@mlflow.internal:5000/")
    assert "s3cret-pw" not in where_to_look(summary)


def test_a_sqlite_uri_is_shown_as_it_is() -> None:
    cfg = app_config(mlflow={"tracking_uri": "sqlite:////repo/mlflow.db"})
    assert "tracking=sqlite:////repo/mlflow.db " in run_banner(cfg)
    text = where_to_look(
        {
            "tracking_uri": "sqlite:////repo/mlflow.db",
            "registered_model_name": "m",
            "candidate_version": "1",
            "run_id": "r",
            "promoted": False,
            "production_version": None,
            "test_accuracy": 0.5,
            "test_macro_f1": 0.5,
            "per_class_f1": {},
            "gate_reasons": [],
            "data_md5": "d",
            "split_hash": "s",
        }
    )
    assert "--backend-store-uri sqlite:////repo/mlflow.db" in text
