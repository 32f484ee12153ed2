"""One router per resource, each route carrying its own body limit (src/serving/routers)."""

from __future__ import annotations

from fastapi import APIRouter

from src.config.serve import MULTIPART_OVERHEAD
from src.serving.routers import SMALL_BODY_LIMIT, body_limit, body_limits_of
from tests.helpers.api import Registry, api_client_for


def test_a_new_router_brings_its_own_body_limit() -> None:
    router = APIRouter()

    @router.post("/upload")
    @body_limit(5_000_000)
    async def upload() -> None: ...

    @router.get("/status")
    async def status() -> None: ...

    assert body_limits_of([router]) == {"/upload": 5_000_000, "/status": SMALL_BODY_LIMIT}


def test_each_endpoint_gets_the_body_limit_its_route_declares(registry: Registry) -> None:
    max_image, max_batch = 200_000, 1_000_000
    client = api_client_for(
        registry, ready=False, max_image_bytes=max_image, max_batch_bytes=max_batch
    )
    try:
        # Declared sizes only: the limits middleware answers before any body is read.
        def status(path: str, size: int) -> int:
            headers = {"content-length": str(size), "content-type": "application/octet-stream"}
            return client.post(path, content=b"", headers=headers).status_code

        assert status("/predict", max_image + MULTIPART_OVERHEAD + 1) == 413
        assert status("/predict", max_image + MULTIPART_OVERHEAD) != 413
        assert status("/predict/batch", max_batch + 1) == 413
        assert status("/predict/batch", max_batch) != 413
        assert status("/feedback", SMALL_BODY_LIMIT + 1) == 413
        assert status("/nowhere", SMALL_BODY_LIMIT + 1) == 413
    finally:
        client.__exit__(None, None, None)


def test_a_request_refused_before_routing_keeps_its_route_label(registry: Registry) -> None:
    client = api_client_for(registry, ready=False, max_image_bytes=1000)
    try:
        assert client.post("/predict", files={"file": ("x.png", bytes(200_000))}).status_code == 413
        metrics = client.get("/metrics").text
        assert 'http_requests_total{method="POST",path="/predict",status="413"}' in metrics
    finally:
        client.__exit__(None, None, None)
