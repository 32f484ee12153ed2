"""Prefect's result cache for the data tasks, read as data only.

Prefect deserializes a result file with whatever serializer the file itself names, pickle
included (and falls back to the task's serializer for a file that is no record at all), so
whoever can write ``outputs/prefect-results`` could make the next run unpickle their file. The
tasks write JSON (``result_serializer="json"``), and this storage hands Prefect a file only when
it is a JSON record of Prefect's own JSON serializer whose objects are the data tasks' result
types; anything else reads as missing, so the task runs again and overwrites it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem

# What the data tasks return: the only objects a cached result may hold.
RESULT_TYPES = frozenset(
    {
        "src.data.sources.FetchedData",
        "src.data.validation.ValidationReport",
        "src.data.split.PreparedData",
    }
)
JSON_SERIALIZER = {
    "type": "json",
    "jsonlib": "json",
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
    "dumps_kwargs": {},
    "loads_kwargs": {},
}
MAX_RECORD_BYTES = 16 << 20  # a cached record is a few kB of paths, md5s and counts


class UnsafeResult(ValueError):
    """A file in the result cache that is not a plain JSON record of an expected type."""


def checked_record(content: bytes) -> bytes:
    """``content`` unchanged if it is a JSON result record of :data:`RESULT_TYPES` written by
    Prefect's default JSON serializer; :class:`UnsafeResult` otherwise."""
    try:
        record = json.loads(content)
        serializer = record["metadata"]["serializer"]
        payload = json.loads(record["result"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UnsafeResult(f"not a JSON result record ({type(exc).__name__})") from None
    if serializer != JSON_SERIALIZER:
        raise UnsafeResult(f"written with serializer {str(serializer)[:80]!r}, not plain JSON")
    _check_objects(payload)
    return content


def _check_objects(value: Any) -> None:
    if isinstance(value, dict):
        if "__exc_type__" in value:
            raise UnsafeResult("holds an exception, not a result")
        if "__class__" in value and value["__class__"] not in RESULT_TYPES:
            raise UnsafeResult(f"holds a {str(value['__class__'])[:80]!r}")
        for item in value.values():
            _check_objects(item)
    elif isinstance(value, list):
        for item in value:
            _check_objects(item)


def _read_regular_file(path: Path) -> bytes:
    """The file's bytes; never through a symlink, never more than :data:`MAX_RECORD_BYTES`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"Path {path} cannot be read as a result ({exc.strerror}).") from None
    with os.fdopen(fd, "rb") as handle:
        content = handle.read(MAX_RECORD_BYTES + 1)
    if len(content) > MAX_RECORD_BYTES:
        raise UnsafeResult(f"larger than {MAX_RECORD_BYTES} bytes")
    return content


class DataOnlyResultStorage(LocalFileSystem):
    """``LocalFileSystem`` whose reads return only checked result records (see the module)."""

    _block_type_name = "Clothing Classifier Data-Only Results"
    _block_type_slug = "clothing-classifier-data-only-results"

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        return checked_record(_read_regular_file(self._resolve_path(path)))

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)


def data_only_results(folder: Path) -> DataOnlyResultStorage:
    """The storage for ``folder``, saved on the Prefect API (Prefect takes only saved blocks as
    a task's result storage); one block document per folder, overwritten on every run."""
    storage = DataOnlyResultStorage(basepath=str(folder))
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    storage.save(f"data-results-{digest}", overwrite=True)
    return storage
