"""Fixtures for the promotion tests (src/promotion.py): a throw-away MLflow store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.flows import TinyStore, open_tiny_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStore]:
    """A sqlite MLflow store in a temp dir holding one logged tiny model."""
    with open_tiny_store(tmp_path_factory.mktemp("mlflow")) as store:
        yield store
