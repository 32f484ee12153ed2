"""The Prefect flow ``data-flow``: download → validate → version (DVC) → split.

Tasks exchange paths and md5s, never DataFrames. Validation runs on the *staged* download,
before versioning, so data that fails never reaches ``data/`` or the DVC remote.

Caching (results persisted as JSON under ``<outputs>/prefect-results``, read back only as data:
:mod:`flows.results`):

* download: keyed on the source (a local folder's file names, sizes and mtimes; the published
  md5s for ``url``; the data set/file for ``kaggle``);
* validate and split: keyed on the data md5 (DVC's directory md5 of the staged files, which is what
  ``data.dvc`` records) plus the settings they depend on.

A cached result is only reused while the files it points to still exist (and, for the staging
folder, still have their md5s); otherwise the task runs again (``refresh_cache``). Only the
download task retries, and only on :class:`~src.data.sources.TransientDownloadError`.

Concurrent runs share ``data/``: versioning (which swaps its files) and the split that reads them
run under :func:`flows.locks.data_lock`, one run at a time.

``python -m flows.data_flow`` runs it once with the configured source (``DATA_SOURCE``).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

from flows.locks import data_lock
from flows.results import data_only_results
from src.config import AppConfig, load_config
from src.data.io import read_table
from src.data.sources import (
    KNOWN_MD5,
    FetchedData,
    TransientDownloadError,
    fetch_source,
    load_staged,
    resolve_source,
)
from src.data.split import DATASET_FILE, PreparedData, prepare_splits
from src.data.validation import DataValidationError, ValidationReport, validate
from src.data.versioning import DataVersion, listing_md5, version_data

ARTIFACT_KEY = "data-validation"


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :32
    ]


def source_fingerprint(cfg: AppConfig) -> dict[str, Any]:
    """What identifies the download's content before downloading it."""
    from src.data.io import data_files

    source = resolve_source(cfg.data.source, cfg.paths.root)
    if source == "url":
        return {"source": "url", "md5": KNOWN_MD5}
    if source == "kaggle":
        return {
            "source": "kaggle",
            "dataset": cfg.data.kaggle_dataset,
            "file": cfg.data.kaggle_file,
        }
    assert isinstance(source, Path)
    try:
        files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in data_files(source)]
    except (OSError, ValueError):
        files = []  # the task will report the problem
    return {"source": str(source), "files": files}


def staging_dir(cfg: AppConfig) -> Path:
    return cfg.paths.outputs / "staging" / _digest(source_fingerprint(cfg))


def validation_name(data_md5: str) -> str:
    return data_md5.removesuffix(".dir")


def _validation_settings(cfg: AppConfig) -> dict[str, Any]:
    keys = ("min_rows", "max_rows", "class_share_min", "class_share_max", "max_duplicate_fraction")
    return {k: getattr(cfg.data, k) for k in keys}


def _split_settings(cfg: AppConfig) -> dict[str, Any]:
    return {"seed": cfg.data.split_seed, "fractions": list(cfg.data.split_fractions)}


# --- cache keys (parameters: the task's bound arguments) ----------------------------------------


def _download_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return "data-download-" + Path(parameters["staging"]).name


def _validate_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    cfg: AppConfig = parameters["cfg"]
    return "data-validate-" + _digest([parameters["data_md5"], _validation_settings(cfg)])


def _split_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    cfg: AppConfig = parameters["cfg"]
    root = str(cfg.paths.outputs)
    return "data-split-" + _digest([parameters["data_md5"], _split_settings(cfg), root])


def _retry_transient_only(task: Any, task_run: TaskRun, state: State) -> bool:
    try:
        state.result()
    except TransientDownloadError:
        return True
    except Exception:
        return False
    return False


# --- tasks --------------------------------------------------------------------------------------


@task(
    name="download",
    persist_result=True,
    result_serializer="json",
    cache_key_fn=_download_key,
    retry_condition_fn=_retry_transient_only,
)
def download_task(cfg: AppConfig, staging: Path) -> FetchedData:
    """Stage the raw files of ``DATA_SOURCE`` (md5-checked, transient errors retried)."""
    logger = get_run_logger()
    logger.info("Fetching the training set from %s into %s", cfg.data.source, staging)
    fetched = fetch_source(cfg.data, staging, cfg.paths.root)
    for name, md5 in fetched.files.items():
        logger.info("staged %s (md5 %s)", name, md5)
    for note in fetched.notes:
        logger.info(note)
    return fetched


@task(name="validate", persist_result=True, result_serializer="json", cache_key_fn=_validate_key)
def validate_task(cfg: AppConfig, staged_dir: Path, data_md5: str) -> ValidationReport:
    """Great Expectations on the staged files; the summary becomes a Prefect artifact."""
    logger = get_run_logger()
    table = read_table(staged_dir)
    logger.info("Validating %d rows (%s)", len(table), data_md5)
    output_dir = cfg.paths.outputs / "validation"
    try:
        report = validate(
            table, cfg.data, output_dir=output_dir, result_name=validation_name(data_md5)
        )
    except DataValidationError as exc:
        _publish(exc.report, data_md5)
        logger.error("%s", exc)
        raise
    _publish(report, data_md5)
    logger.info(
        "Validation passed: %d expectations in %.2f s (%s)",
        len(report.results),
        report.elapsed_s,
        report.json_path,
    )
    return report


def _publish(report: ValidationReport, data_md5: str) -> None:
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=report.markdown + f"\nData md5: `{data_md5}`; full result: `{report.json_path}`\n",
        description="Great Expectations validation of the training set",
    )
    create_table_artifact(
        key=ARTIFACT_KEY + "-table",
        table=[
            {
                "expectation": r.expectation,
                "target": r.target,
                "success": r.success,
                "observed": r.observed,
                "examples": "; ".join(r.examples[:3]),
            }
            for r in report.results
        ],
        description="Expectation results",
    )


@task(name="version", cache_policy=NO_CACHE, persist_result=False)
def version_task(cfg: AppConfig, staged_dir: Path) -> DataVersion:
    """Move the validated files into ``data/``; ``dvc add`` + ``dvc push`` when they changed."""
    logger = get_run_logger()
    version = version_data(staged_dir, cfg.paths.root, cfg.paths.data, cfg.data)
    logger.info(
        "Data md5 %s (%s)",
        version.md5,
        "changed: dvc add + push"
        if version.changed
        else ("unchanged; pushed" if version.pushed else "unchanged"),
    )
    return version


@task(name="split", persist_result=True, result_serializer="json", cache_key_fn=_split_key)
def split_task(cfg: AppConfig, data_dir: Path, data_md5: str) -> PreparedData:
    """70/15/15 stratified split (seed 42, duplicates kept together) written as an ``.npz``."""
    logger = get_run_logger()
    prepared = prepare_splits(data_dir, data_md5, cfg.data, cfg.paths.outputs / "prepared")
    logger.info(
        "Split %s -> %s (hash %s)", prepared.counts, prepared.dataset_path, prepared.split_hash
    )
    return prepared


# --- the flow -----------------------------------------------------------------------------------


@flow(name="data-flow", description="Download, validate, version (DVC) and split Fashion-MNIST.")
def data_flow(cfg: AppConfig | None = None) -> PreparedData:
    cfg = cfg or load_config()
    logger = get_run_logger()
    results = data_only_results(cfg.paths.outputs / "prefect-results")
    staging = staging_dir(cfg)
    fetched = download_task.with_options(
        result_storage=results,
        retries=cfg.data.task_retries,
        retry_delay_seconds=cfg.data.task_retry_delay_s,
        refresh_cache=load_staged(staging) is None,
    )(cfg, staging)
    data_md5 = listing_md5(fetched.files)  # = what data.dvc will record
    report_path = cfg.paths.outputs / "validation" / f"{validation_name(data_md5)}.json"
    validate_task.with_options(result_storage=results, refresh_cache=not report_path.is_file())(
        cfg, fetched.folder, data_md5
    )
    # Another run may be swapping data/ to other files: swap and split read it one at a time.
    with data_lock(cfg):
        version = version_task(cfg, fetched.folder)
        dataset = cfg.paths.outputs / "prepared" / version.md5 / DATASET_FILE
        prepared = split_task.with_options(
            result_storage=results, refresh_cache=not dataset.is_file()
        )(cfg, version.data_dir, version.md5)
    logger.info(
        "data-flow done: data md5 %s, split hash %s", prepared.data_md5, prepared.split_hash
    )
    return prepared


def prepare_data(cfg: AppConfig) -> PreparedData:
    """Run ``data-flow`` (a subflow when called from another flow) and return the split."""
    return data_flow(cfg)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args(argv)
    prepared = prepare_data(load_config(profile=args.profile))
    print(json.dumps({**prepared.__dict__, "dataset_path": str(prepared.dataset_path)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
