"""The product's main job: the Prefect flow ``train-flow``.

    reconcile registry → download → validate → version (DVC) → split      (flows/data_flow.py)
                       → train → evaluate → register (pending) → gate → promote
                                                                   (flows/training_tasks.py)

Validation runs on the staged download *before* DVC versioning, so data that fails the
expectations never reaches ``data/`` or the DVC remote, and the flow fails before any training.
Download, validation and split are cached across runs on the data md5 (the data tasks own that
policy); training, evaluation, gate and promotion always run and never retry.

``python -m flows.train_flow`` (what ``make train`` runs) executes it once on the embedded defaults:
an ephemeral Prefect API (no server to start), MLflow on ``sqlite:///mlflow.db``, the local DVC
remote. ``PROFILE=smoke make train`` or ``--profile smoke`` selects ``configs/profiles/smoke.yaml``.
As a deployment (``deployments/``) the same parameters arrive as the flow parameter ``params``.
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from flows import data_flow
from flows.monitoring_tasks import describe_version_task
from flows.training_tasks import (
    TrainResultLike,
    evaluate_task,
    gate_task,
    promote_task,
    reconcile_task,
    register_task,
    train_task,
)
from src.cli import call
from src.config import AppConfig, load_config
from src.data.split import PreparedData
from src.promotion import Evaluation
from src.serving.redact import redact_text


class TrainFlowParams(BaseModel):
    """The train-flow's parameters. ``None`` means "as configured" (``configs/``, the profile,
    then ``DATA_*``/``TRAIN_*``/``GATE_*`` environment variables); a value overrides that."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(
        default=None,
        description="A profile in configs/profiles/ (e.g. 'smoke'); default: $PROFILE, else none.",
    )
    data_source: str | None = Field(
        default=None, description="'kaggle', 'url' or a local folder (data.source)."
    )
    mode: Literal["time-fitted", "reproducible"] | None = Field(
        default=None, description="train.mode: who limits the run (the budget or max_epochs)"
    )
    budget_minutes: float | None = Field(
        default=None,
        gt=0,
        description="train.time_budget_minutes: the minutes a time-fitted run fills",
    )
    max_epochs: int | None = Field(
        default=None, ge=1, description="train.max_epochs (reproducible: the count; else a cap)"
    )
    limit_train_samples: int | None = Field(
        default=None, ge=1, description="train.limit_train_samples (cap on training images)"
    )
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="gate.min_accuracy (floor on the test split)"
    )
    min_macro_f1: float | None = Field(
        default=None, ge=0, le=1, description="gate.min_macro_f1 (floor on the test split)"
    )
    comparison: Literal["mcnemar", "margin"] | None = Field(
        default=None, description="gate.comparison with the Production model"
    )

    def overrides(self) -> dict[str, dict[str, Any]]:
        """The non-empty fields as ``load_config`` overrides."""
        placement = {
            "data_source": ("data", "source"),
            "mode": ("train", "mode"),
            "budget_minutes": ("train", "time_budget_minutes"),
            "max_epochs": ("train", "max_epochs"),
            "limit_train_samples": ("train", "limit_train_samples"),
            "min_accuracy": ("gate", "min_accuracy"),
            "min_macro_f1": ("gate", "min_macro_f1"),
            "comparison": ("gate", "comparison"),
        }
        overrides: dict[str, dict[str, Any]] = {}
        for field_name, (section, key) in placement.items():
            value = getattr(self, field_name)
            if value is not None:
                overrides.setdefault(section, {})[key] = value
        return overrides

    def load_config(self) -> AppConfig:
        return load_config(profile=self.profile, overrides=self.overrides())


def prepare_data(cfg: AppConfig) -> PreparedData:
    """download → validate → version (DVC) → split: the ``data-flow`` subflow."""
    return data_flow.prepare_data(cfg)


@flow(
    name="train-flow",
    description="Download, validate, version and split Fashion-MNIST; train, evaluate, gate and "
    "promote a classifier in the MLflow registry.",
    log_prints=True,
)
def train_flow(params: TrainFlowParams | None = None) -> dict[str, Any]:
    params = params or TrainFlowParams()
    cfg = params.load_config()
    print(run_banner(cfg))
    production_before = reconcile_task(cfg)
    prepared = prepare_data(cfg)
    trained = train_task(prepared, cfg)
    evaluation = evaluate_task(prepared, trained, cfg)
    version = register_task(prepared, trained, evaluation, cfg)
    outcome = gate_task(prepared, trained, evaluation, version, cfg)
    describe_version_task(prepared, trained, evaluation, version, outcome, cfg)  # monitoring
    promotion = promote_task(prepared, trained, evaluation, version, outcome, cfg)
    return flow_summary(cfg, prepared, trained, evaluation, version, promotion, production_before)


def flow_summary(
    cfg: AppConfig,
    prepared: PreparedData,
    trained: TrainResultLike,
    evaluation: Evaluation,
    version: str,
    promotion: dict[str, Any],
    production_before: str | None,
) -> dict[str, Any]:
    """train-flow's result (shown, logged and kept by Prefect)."""
    return {
        "profile": cfg.profile,
        # Shown, logged and kept as the flow's result: without the URI's password or token.
        "tracking_uri": redact_text(cfg.tracking_uri),
        "registered_model_name": cfg.mlflow.registered_model_name,
        "data_md5": prepared.data_md5,
        "split_hash": prepared.split_hash,
        "dataset_path": str(prepared.dataset_path),
        "run_id": trained.run_id,
        "candidate_version": version,
        "test_accuracy": evaluation.accuracy,
        "test_macro_f1": evaluation.macro_f1,
        "per_class_f1": evaluation.per_class_f1,
        # After a re-gate (Production moved during training) these are the second verdict's.
        "gate_passed": promotion["gate_passed"],
        "gate_reasons": promotion["gate_reasons"],
        "champion_version": promotion["champion_version"],
        "regated": promotion["regated"],
        "promoted": promotion["promoted"],
        "production_before": production_before,
        "production_version": promotion["production_version"],
    }


def run_banner(cfg: AppConfig) -> str:
    """The flow's first log line (Prefect keeps it): the tracking URI without its secrets."""
    return (
        f"train-flow: profile={cfg.profile} data.source={cfg.data.source} "
        f"tracking={redact_text(cfg.tracking_uri)} model={cfg.mlflow.registered_model_name}"
    )


def where_to_look(summary: dict[str, Any]) -> str:
    """The text ``make train`` ends with."""
    uri = str(summary["tracking_uri"])
    name = summary["registered_model_name"]
    production = summary["production_version"]
    verdict = "promoted to Production" if summary["promoted"] else "NOT promoted"
    lines = [
        "",
        f"Candidate {name} v{summary['candidate_version']} (run {summary['run_id']}): {verdict}.",
        f"  test accuracy {summary['test_accuracy']:.4f}, macro-F1 {summary['test_macro_f1']:.4f}",
    ]
    lines += [f"  F1 {label:<12} {value:.4f}" for label, value in summary["per_class_f1"].items()]
    lines += [f"  gate: {reason}" for reason in summary["gate_reasons"]]
    lines += [
        f"Production: {name} v{production} (models:/{name}@production)"
        if production
        else "Production: none yet",
        f"Data md5 {summary['data_md5']}, split hash {summary['split_hash']}.",
        "Browse runs and the registry:",
        f"  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   "
        "(or `make mlflow-ui`), then http://127.0.0.1:5000",
        "Serve the Production model: make serve",
        "Prefect runs and artifacts persist only with a server: `prefect server start`, "
        "then http://127.0.0.1:4200 (see README, Deployments).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.train_flow", description="Run the train-flow once, locally."
    )
    parser.add_argument("--profile", help="configs/profiles/<name>.yaml (default: $PROFILE)")
    parser.add_argument("--data-source", help="kaggle | url | /path/to/folder")
    parser.add_argument("--mode", choices=["time-fitted", "reproducible"])
    parser.add_argument("--budget-minutes", type=float, help="minutes a time-fitted run fills")
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--limit-train-samples", type=int)
    args = parser.parse_args(argv)
    params = TrainFlowParams(
        profile=args.profile,
        data_source=args.data_source,
        mode=args.mode,
        budget_minutes=args.budget_minutes,
        max_epochs=args.max_epochs,
        limit_train_samples=args.limit_train_samples,
    )
    params.load_config()  # fail fast on a bad profile or setting, before Prefect starts
    print(where_to_look(train_flow(params)))
    return 0


if __name__ == "__main__":
    raise SystemExit(call("train", main))
