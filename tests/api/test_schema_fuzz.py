"""Schemathesis over the OpenAPI schema: generated requests (valid and invalid) never get a 5xx,
and every answer conforms to the schema (status listed, content type, body, headers).

Bounded: a few examples per operation, in process (ASGI), a few seconds in all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from mlflow.tracking import MlflowClient
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi

from src.api import create_app
from tests.helpers.api import ModelSources, Registry, make_config, wait_until

MAX_EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def api_schema(model_sources: ModelSources) -> Iterator[Any]:
    uri = model_sources.tracking_uri
    registry = Registry(uri, "clf-fuzz", MlflowClient(uri, uri), model_sources)
    registry.add_production("varied")
    # Small limits so that generated bodies also exercise the 413 paths.
    app = create_app(make_config(uri, registry.name, max_batch_files=8, max_image_bytes=50_000))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)  # starts the lifespan
    wait_until(lambda: app.state.serving.store.ready)
    yield schema
    asgi.shutdown_lifespans()  # stop the poller, restore torch threads / PIL limits


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(api_schema: Any, mode: GenerationMode) -> None:
    """Every operation, with schema-conforming (positive) and schema-violating (negative)
    requests. (Schemathesis' lazy pytest integration does not run under pytest 9, so the
    operations are driven through their Hypothesis strategies directly.)"""
    calls: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call()
            calls.append(f"{case.method} {case.path} -> {response.status_code}")
            case.validate_response(response, checks=CHECKS)
            assert response.status_code < 500, response.text
            content_type = (response.headers.get("content-type") or [""])[0]
            assert content_type.startswith(("application/json", "text/plain", "text/html"))

        try:
            check()
        except Unsatisfiable:
            # Operations with no inputs (GET /health, ...) have nothing to violate.
            assert mode is GenerationMode.NEGATIVE, operation.label
    operations = {c.split(" ->")[0] for c in calls}
    # Every operation was exercised (negative mode: at least the two that take input).
    assert len(operations) >= (6 if mode is GenerationMode.POSITIVE else 2), operations
