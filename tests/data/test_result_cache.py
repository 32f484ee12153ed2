"""Nothing pickled is read from the data tasks' result cache (a folder any user of the checkout
can write): planted records are never deserialized, the tasks run again instead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.serializers import JSONSerializer, PickleSerializer
from prefect.testing.utilities import prefect_test_harness

from flows.data_flow import prepare_data
from flows.results import UnsafeResult, checked_record
from src.config import AppConfig
from src.data.io import write_idx
from src.data.sources import FetchedData
from tests.helpers.config import app_config
from tests.helpers.data import make_images, tiny_config


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def project(dvc_project: tuple[Path, Path], tmp_path: Path) -> AppConfig:
    root, _remote = dvc_project
    source = tmp_path / "source"
    write_idx(source, *make_images())
    return app_config(
        paths={"root": str(root)},
        data=tiny_config(source=str(source), task_retries=0, task_retry_delay_s=0).model_dump(),
    )


class Payload:
    """Unpickling it creates ``marker``: proof that a planted pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _record(result: Any, serializer: Any, key: str = "k") -> bytes:
    metadata = ResultRecordMetadata(serializer=serializer, storage_key=key)
    return ResultRecord(metadata=metadata, result=result).serialize()


@pytest.mark.integration  # a real server: prefect_api
def test_only_json_records_of_the_data_results_pass(tmp_path: Path) -> None:
    fetched = FetchedData(tmp_path, {"a.gz": "0" * 32}, "url", True, ["n"])
    good = _record(fetched, JSONSerializer())
    assert checked_record(good) == good
    assert ResultRecord.deserialize(good).result == fetched
    marker = tmp_path / "pwned"
    planted = [
        _record(Payload(marker), PickleSerializer()),
        _record({"__class__": "os.system", "data": "true"}, JSONSerializer()),
        good.replace(b'"jsonlib":"json"', b'"jsonlib":"pickle"'),
        b"\x80\x04K\x01.",  # a bare pickle
        b"{}",
    ]
    for content in planted:
        with pytest.raises(UnsafeResult):
            checked_record(content)
    assert not marker.exists()


@pytest.mark.integration  # a real server: prefect_api
def test_a_planted_pickle_in_the_result_cache_never_runs(
    project: AppConfig, tmp_path: Path
) -> None:
    prepared = prepare_data(project)
    results = project.paths.outputs / "prefect-results"
    keys = sorted(p.name for p in results.iterdir() if p.is_file())
    assert {k.split("-")[1] for k in keys} == {"download", "validate", "split"}
    for key in keys:  # what the tasks wrote: plain JSON
        assert json.loads((results / key).read_bytes())["metadata"]["serializer"]["type"] == "json"
    marker = tmp_path / "pwned"
    for key in keys:
        (results / key).write_bytes(_record(Payload(marker), PickleSerializer(), key))
    again = prepare_data(project)
    assert not marker.exists(), "a planted pickle was unpickled"
    assert again == prepared  # the tasks ran again and wrote their JSON back
    for key in keys:
        assert json.loads((results / key).read_bytes())["metadata"]["serializer"]["type"] == "json"
