"""Serialise the steps that must not interleave across flow runs: changes of Production and
swaps of ``data/``.

Two locks, both taken: a Prefect global concurrency limit of one slot (serialises every run that
talks to the same Prefect server, on any machine) and a file lock (serialises runs on this
machine that have no shared server, e.g. ``make train`` in two shells, each with its own
ephemeral Prefect API).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from src import registry
from src.config import AppConfig
from src.locking import file_lock

PROMOTION_LIMIT = "clothing-classifier-promotion"
DATA_LIMIT = "clothing-classifier-data"


def ensure_limit(name: str) -> None:
    """Create the one-slot global concurrency limit ``name`` unless it exists (``prefect gcl
    create NAME --limit 1`` does the same by hand)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run may create it first.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


@contextmanager
def serialised(limit: str, lock_path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """Hold the global concurrency limit ``limit`` and the file lock ``lock_path``."""
    ensure_limit(limit)
    with (
        concurrency(limit, occupy=1, strict=True, timeout_seconds=timeout_s),
        file_lock(lock_path, timeout_s, what),
    ):
        yield


def promotion_lock(cfg: AppConfig) -> AbstractContextManager[None]:
    """Held around every change of Production (reconcile, promotion, rollback)."""
    path = registry.registry_lock_path(cfg.tracking_uri, cfg.paths.outputs / "locks")
    return serialised(PROMOTION_LIMIT, path, cfg.flow.lock_timeout_s, "a change of Production")


def data_lock(cfg: AppConfig) -> AbstractContextManager[None]:
    """Held while ``data/`` is swapped and split, so no run reads a half-swapped folder."""
    # data/ belongs to one checkout, and so does outputs/: the lock lives there.
    path = cfg.paths.outputs / "locks" / "data.lock"
    return serialised(DATA_LIMIT, path, cfg.flow.lock_timeout_s, "a swap of data/")


def flow_actor() -> str:
    """Who changes Production from a flow, for the Production history: ``flow run <name> (<id>)``."""
    from prefect.runtime import flow_run

    if flow_run.id:
        return f"flow run {flow_run.name} ({flow_run.id})"
    return registry.default_actor()
