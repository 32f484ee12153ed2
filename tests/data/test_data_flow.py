"""The Prefect data flow on tiny data in a throw-away project (git + DVC + local remote)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness

import flows.data_flow as data_flow_module
from flows.data_flow import ARTIFACT_KEY, download_task, prepare_data
from src.config import AppConfig
from src.data.io import DataFormatError, write_csv, write_idx
from src.data.sources import DownloadError, TransientDownloadError
from src.data.validation import DataValidationError
from src.data.versioning import read_dvc_md5
from tests.helpers.config import app_config
from tests.helpers.data import make_dvc_project, make_images, tiny_config, tree_snapshot


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def project(dvc_project: tuple[Path, Path], tmp_path: Path) -> tuple[AppConfig, Path]:
    root, remote = dvc_project
    source = tmp_path / "source"
    write_idx(source, *make_images())
    cfg = app_config(
        paths={"root": str(root)},
        data=tiny_config(source=str(source), task_retries=2, task_retry_delay_s=0).model_dump(),
    )
    return cfg, remote


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    original: Callable[..., Any] = getattr(data_flow_module, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(data_flow_module, name, counting)
    return calls


@pytest.mark.integration  # a real server: prefect_api
def test_flow_versions_validates_splits_and_caches(
    project: tuple[AppConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, remote = project
    fetches = _count_calls(monkeypatch, "fetch_source")
    validations = _count_calls(monkeypatch, "validate")
    splits = _count_calls(monkeypatch, "prepare_splits")

    prepared = prepare_data(cfg)
    root = cfg.paths.root
    assert prepared.data_md5 == read_dvc_md5(root / "data.dvc")
    assert prepared.counts == {"train": 140, "val": 30, "test": 30}
    assert (
        prepared.dataset_path == cfg.paths.outputs / "prepared" / prepared.data_md5 / "splits.npz"
    )
    with np.load(prepared.dataset_path) as data:
        assert data["x_train"].shape == (140, 28, 28)
    assert tree_snapshot(remote)  # pushed
    assert (cfg.paths.outputs / "validation" / f"{prepared.data_md5[:-4]}.json").is_file()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY]))
        )
    assert any("Data validation PASSED" in str(a.data) for a in artifacts)
    assert (len(fetches), len(validations), len(splits)) == (1, 1, 1)

    # Unchanged data: download, validation and split come from the cache.
    again = prepare_data(cfg)
    assert again == prepared
    assert (len(fetches), len(validations), len(splits)) == (1, 1, 1)

    # A cached result whose files are gone is not reused.
    import shutil

    shutil.rmtree(cfg.paths.outputs / "staging")
    prepared.dataset_path.unlink()
    third = prepare_data(cfg)
    assert third.split_hash == prepared.split_hash and third.dataset_path.is_file()
    assert (len(fetches), len(validations), len(splits)) == (2, 1, 2)


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[AppConfig, Path]:
    """A project whose data/ and remote already hold a good version (shared by the bad inputs)."""
    base = tmp_path_factory.mktemp("versioned")
    root, remote = make_dvc_project(base)
    write_idx(base / "source", *make_images())
    cfg = app_config(
        paths={"root": str(root)},
        data=tiny_config(source=str(base / "source"), task_retries=0).model_dump(),
    )
    prepare_data(cfg)
    return cfg, remote


def _truncate_gz(source: Path) -> None:
    write_idx(source, *make_images(seed=5))
    path = source / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])


def _csv(source: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    images, labels = make_images(seed=5)
    path = write_csv(source / "fashion-mnist_train.csv", images, labels)
    edit(pd.read_csv(path)).to_csv(path, index=False)


def _label_out_of_range(source: Path) -> None:
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[7, "label"] = 11
        return table

    _csv(source, edit)


def _wrong_columns(source: Path) -> None:
    _csv(source, lambda table: table.drop(columns=["pixel784"]))


def _corrupt_csv(source: Path) -> None:
    _csv(source, lambda table: table)
    path = source / "fashion-mnist_train.csv"
    path.write_bytes(path.read_bytes()[:3000] + b"\x00\xff garbage \x89PNG")


BAD_INPUTS = [
    ("truncated gz", _truncate_gz, DataFormatError, "corrupt or truncated gzip"),
    ("label out of range", _label_out_of_range, DataValidationError, "row 7: label=11"),
    ("wrong column count", _wrong_columns, DataFormatError, "784 columns, expected 785"),
    ("corrupt csv", _corrupt_csv, DataFormatError, "fashion-mnist_train.csv"),
]


@pytest.mark.integration  # a real server: prefect_api
@pytest.mark.parametrize(
    ("case", "damage", "error", "needle"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_leaves_data_and_remote_untouched(
    versioned: tuple[AppConfig, Path],
    tmp_path: Path,
    case: str,
    damage: Callable[[Path], None],
    error: type[Exception],
    needle: str,
) -> None:
    good, remote = versioned
    root = good.paths.root
    before = (tree_snapshot(root / "data"), tree_snapshot(remote), (root / "data.dvc").read_text())
    assert before[0] and before[1]
    damage(tmp_path / "bad")
    cfg = good.model_copy(
        update={"data": good.data.model_copy(update={"source": str(tmp_path / "bad")})}
    )
    with pytest.raises(error, match=needle):
        prepare_data(cfg)
    after = (tree_snapshot(root / "data"), tree_snapshot(remote), (root / "data.dvc").read_text())
    assert after == before
    if error is DataValidationError:  # the failed validation is published as an artifact
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY]))
            )
        assert any(
            "Data validation FAILED" in str(a.data) and needle in str(a.data) for a in artifacts
        )


@pytest.mark.integration  # a real server: prefect_api
def test_download_retries_transient_errors_only(
    project: tuple[AppConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = project
    real = data_flow_module.fetch_source
    attempts: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        attempts.append("x")
        if len(attempts) == 1:
            raise TransientDownloadError("connection reset")
        return real(*args, **kwargs)

    monkeypatch.setattr(data_flow_module, "fetch_source", flaky)
    assert prepare_data(cfg).counts["train"] == 140
    assert len(attempts) == 2  # retried once

    attempts.clear()

    def broken(*args: Any, **kwargs: Any) -> Any:
        attempts.append("x")
        raise DownloadError("md5 mismatch")

    monkeypatch.setattr(data_flow_module, "fetch_source", broken)
    from prefect import flow

    @flow
    def only_download() -> Any:
        return download_task.with_options(retries=2, retry_delay_seconds=0, refresh_cache=True)(
            cfg, cfg.paths.outputs / "staging" / "x"
        )

    with pytest.raises(DownloadError, match="md5 mismatch"):
        only_download()
    assert len(attempts) == 1  # a permanent error is not retried


@pytest.mark.integration  # a real server: prefect_api
def test_swapping_and_splitting_data_hold_the_data_lock(
    project: tuple[AppConfig, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run swaps data/ and splits it, another run can take neither the file lock nor
    the Prefect global concurrency limit: they wait their turn."""
    from prefect.concurrency.sync import concurrency

    from flows.locks import DATA_LIMIT
    from src.locking import LockTimeout, file_lock

    cfg, _ = project
    lock_path = cfg.paths.outputs / "locks" / "data.lock"
    seen: list[str] = []

    def check_held(step: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with pytest.raises(LockTimeout), file_lock(lock_path, timeout_s=0.2):
                pass
            with pytest.raises(TimeoutError), concurrency(DATA_LIMIT, timeout_seconds=1):
                pass
            seen.append(step)
            return original(*args, **kwargs)

        return wrapped

    for step in ("version_data", "prepare_splits"):
        monkeypatch.setattr(
            data_flow_module, step, check_held(step, getattr(data_flow_module, step))
        )
    prepare_data(cfg)
    assert seen == ["version_data", "prepare_splits"]
    with file_lock(lock_path, timeout_s=0.2):  # released after the run
        pass
