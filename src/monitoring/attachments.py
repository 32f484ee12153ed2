"""At training time: attach to a registered version what monitoring needs — the reference
profile on the validation split, the calibrated low-confidence threshold and the model card.

Called once by train-flow (``flows/monitoring_tasks.py``) after the gate and before promotion,
so a version is never Production without them. The API reads the threshold and the card as
version tags (no MLflow import there); the monitor reads the profile from the training run.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from src.config import AppConfig
from src.monitoring.card import (
    CARD_ARTIFACT,
    MODEL_CARD_TAG,
    CardInputs,
    dvc_revision,
    validation_summary,
)
from src.monitoring.reference_profile import (
    PROFILE_ARTIFACT,
    THRESHOLD_TAG,
    ReferenceProfile,
    build_reference_profile,
)


def validation_profile(
    cfg: AppConfig, client: Any, run_id: str, dataset_path: Path, model_uri: str | None = None
) -> ReferenceProfile:
    """Score the served model (its ONNX graph, in ONNX Runtime: nothing unpickled) on the
    validation split and profile it. The model: ``model_uri``, else run ``run_id``'s model."""
    from src.data.split import load_split
    from src.model_io import MODEL_ARTIFACT_NAME, load_served_classifier
    from src.preprocessing import normalize_array

    images, labels = load_split(dataset_path, "val")
    uri = model_uri or f"runs:/{run_id}/{MODEL_ARTIFACT_NAME}"
    classifier = load_served_classifier(client, uri, run_id)
    probabilities = classifier.predict_proba_batched(normalize_array(images))
    return build_reference_profile(
        images,
        labels,
        probabilities,
        target_accuracy=cfg.monitor.low_confidence_target_accuracy,
        sample_size=cfg.monitor.reference_sample_size,
    )


def card_inputs(
    cfg: AppConfig,
    client: Any,
    *,
    version: str,
    run_id: str,
    data_md5: str,
    split_hash: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    gate: Any,
    reference: ReferenceProfile | None,
) -> CardInputs:
    """Everything the card shows; ``gate`` is a :class:`src.gate.GateDecision`."""
    params = dict(client.get_run(run_id).data.params)
    return CardInputs(
        name=cfg.mlflow.registered_model_name,
        version=version,
        run_id=run_id,
        data_md5=data_md5,
        split_hash=split_hash,
        dvc=dvc_revision(cfg.paths.root),
        validation=validation_summary(cfg.paths.outputs, data_md5),
        params=params,
        y_true=y_true,
        y_pred=y_pred,
        gate_passed=bool(gate.passed),
        gate_reasons=list(gate.reasons),
        gate_details=dict(gate.details),
        threshold=asdict(reference.threshold) if reference else {},
        val_accuracy=reference.accuracy if reference else None,
    )


def attach_to_version(
    cfg: AppConfig,
    client: Any,
    version: str,
    run_id: str,
    reference: ReferenceProfile | None,
    card: str | None,
) -> None:
    """Log the reference profile and card to the run; tag the version with the threshold and the card."""
    name = cfg.mlflow.registered_model_name
    if reference is not None:
        reference.model_version = version
        client.log_text(run_id, reference.to_json(), PROFILE_ARTIFACT)
        client.set_model_version_tag(
            name, version, THRESHOLD_TAG, f"{reference.threshold.value:.6f}"
        )
        client.set_model_version_tag(
            name, version, "reference_profile", f"runs:/{run_id}/{PROFILE_ARTIFACT}"
        )
    if card is not None:
        client.log_text(run_id, card, CARD_ARTIFACT)
        client.set_model_version_tag(name, version, MODEL_CARD_TAG, card)
        client.update_model_version(
            name,
            version,
            description=f"Model card: GET /model/card on the API, or artifact "
            f"runs:/{run_id}/{CARD_ARTIFACT}.\n\n" + card.split("\n## Parameters")[0][:4000],
        )
