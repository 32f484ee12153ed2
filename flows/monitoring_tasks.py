"""The train-flow's monitoring step: reference profile, low-confidence threshold and model card
for the candidate version (:mod:`src.monitoring.attachments` does the work).

Runs after the gate and before promotion, so a version is never Production without them. A
failure here is logged and does not block the candidate: the version then serves without a
low-confidence flag or card, and the monitor says it has no reference to compare with.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from src import registry
from src.config import AppConfig
from src.data.split import PreparedData
from src.monitoring import attachments
from src.monitoring.card import build_card


def describe_version(
    prepared: PreparedData,
    trained: Any,
    evaluation: Any,
    version: str,
    outcome: Any,
    cfg: AppConfig,
) -> dict[str, Any]:
    """Profile, threshold and card onto ``version``. ``trained``/``evaluation``/``outcome``: what
    the train-flow's earlier tasks returned (data, training run, test predictions, gate outcome).
    The promote task calls it again when it gates a second time, so the card shows the verdict
    that decided the promotion."""
    logger = get_run_logger()
    client = registry.get_client(cfg.tracking_uri)
    try:
        reference = attachments.validation_profile(
            cfg, client, trained.run_id, prepared.dataset_path, trained.model_uri
        )
        with np.load(prepared.dataset_path) as data:
            y_true = np.asarray(data["y_test"], dtype=np.int64)
        inputs = attachments.card_inputs(
            cfg,
            client,
            version=version,
            run_id=trained.run_id,
            data_md5=prepared.data_md5,
            split_hash=prepared.split_hash,
            y_true=y_true,
            y_pred=np.load(evaluation.predictions_path),
            gate=outcome.decision,
            reference=reference,
        )
        card = build_card(inputs)
        attachments.attach_to_version(cfg, client, version, trained.run_id, reference, card)
    except Exception as exc:
        logger.warning(
            "Monitoring profile/model card for v%s failed (%s: %s); the version serves without "
            "a low-confidence threshold or card and cannot be monitored.",
            version,
            type(exc).__name__,
            exc,
        )
        return {"ok": False, "error": str(exc)}
    create_markdown_artifact(markdown=card, key="model-card", description=f"v{version}")
    logger.info(
        "v%s: low-confidence threshold %.4f (%.1f%% of validation answers flagged); card attached",
        version,
        reference.threshold.value,
        100 * reference.low_confidence_share,
    )
    return {"ok": True, "threshold": reference.threshold.value}


describe_version_task = task(
    name="monitoring-profile-and-card", cache_policy=NO_CACHE, persist_result=False
)(describe_version)
