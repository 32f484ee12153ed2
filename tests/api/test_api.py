"""The API in process (FastAPI TestClient): predictions, bad input, API key, readiness, reload."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections.abc import Iterator, MutableMapping
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from src.api import create_app
from src.config import ConfigError, load_config
from src.preprocessing import normalize
from src.serving.limits import InflightBudget, RequestLimitsMiddleware, TransportLimits
from src.serving.workers import usable_cores
from tests.helpers.api import (
    ModelSources,
    Registry,
    api_client_for,
    encode,
    make_config,
    sample_images,
    wait_until,
)
from tests.helpers.serving import served_inputs

GOOD_PNG = encode(sample_images(1)[0])
KEY = "k3y-for-tests-0123456789abcdef"


def _client(registry: Registry, **serve: Any) -> TestClient:
    registry.add_production("varied")
    return api_client_for(
        registry,
        max_image_bytes=200_000,
        max_batch_bytes=1_000_000,
        max_batch_files=4,
        max_image_pixels=300 * 300,
        **serve,
    )


@pytest.fixture
def client(registry: Registry) -> Iterator[TestClient]:
    test_client = _client(registry)
    yield test_client
    test_client.__exit__(None, None, None)


# Both request paths: a lone process (forwards in worker threads) and a worker with one core
# (`make serve`'s default: small images decoded and forwarded on the event loop).
WORKER_SHAPES = {
    "threads": {"workers": 0, "inference_concurrency": 2},
    "one core": {"workers": usable_cores()},
}


@pytest.fixture(params=sorted(WORKER_SHAPES))
def any_path_client(registry: Registry, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    test_client = _client(registry, **WORKER_SHAPES[request.param])
    context = test_client.app.state.serving  # type: ignore[attr-defined]
    assert (context.inline_limits is None) == (request.param == "threads")
    yield test_client
    test_client.__exit__(None, None, None)


def _predict(client: TestClient, data: bytes, name: str = "x.png", **kwargs: Any) -> Any:
    return client.post("/predict", files={"file": (name, data, "image/png")}, **kwargs)


# --- predictions -----------------------------------------------------------------------------
def test_predict_answers_like_the_model_in_process(
    any_path_client: TestClient, registry: Registry
) -> None:
    client = any_path_client
    module = registry.sources.varied_module
    for array in sample_images(3, seed=5):
        data = encode(array)
        response = _predict(client, data)
        assert response.status_code == 200, response.text
        body = response.json()
        with torch.no_grad():
            # The training side: the uint8 array normalised, never decoded.
            expected = torch.softmax(module(normalize(array)), dim=1)[0]
        assert body["class_id"] == int(expected.argmax())
        assert body["label"] == body["top_k"][0]["label"]
        assert body["confidence"] == pytest.approx(float(expected.max()), rel=1e-4)
        assert len(body["top_k"]) == 3
        probabilities = [item["probability"] for item in body["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert body["model_version"] == "1"


@pytest.mark.parametrize(
    ("fmt", "mode", "size", "params"),
    [
        ("PNG", "RGBA", (60, 40), {}),
        ("JPEG", "RGB", (280, 200), {"quality": 90}),
        ("BMP", "RGB", (28, 28), {}),
        ("GIF", "P", (50, 50), {}),
        ("WEBP", "RGB", (64, 64), {}),
        ("PNG", "L", (299, 300), {}),  # big, but under the 90 000-pixel limit of this test
    ],
)
def test_accepts_every_allowed_format_in_any_mode_and_size(
    any_path_client: TestClient,
    fmt: str,
    mode: str,
    size: tuple[int, int],
    params: dict[str, Any],
) -> None:
    client = any_path_client
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
        mode
    )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    response = _predict(client, buffer.getvalue(), name=f"x.{fmt.lower()}")
    assert response.status_code == 200, response.text
    assert response.json()["label"]


def test_batch_keeps_order_and_matches_single_predictions(client: TestClient) -> None:
    blobs = [encode(a) for a in sample_images(4, seed=9)]
    response = client.post(
        "/predict/batch",
        files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)],
    )
    assert response.status_code == 200, response.text
    batch = response.json()
    assert len(batch) == 4
    for blob, item in zip(blobs, batch, strict=True):
        single = _predict(client, blob).json()
        assert item["class_id"] == single["class_id"]
        assert item["confidence"] == pytest.approx(single["confidence"], rel=1e-4)
        assert item["model_version"] == "1"


def test_model_endpoint_reports_version_metrics_and_data(client: TestClient) -> None:
    body = client.get("/model").json()
    assert body["version"] == "1"
    assert body["name"].startswith("clf-")
    assert body["metrics"]["test_accuracy"] == pytest.approx(0.91)
    assert body["data_md5"] == "md5-varied"
    assert body["validation_status"] == "passed"
    assert body["loaded_at"].endswith("+00:00")
    assert len(body["class_names"]) == 10


def test_metrics_endpoint_is_prometheus_text(client: TestClient) -> None:
    _predict(client, GOOD_PNG)
    _predict(client, b"")
    text = client.get("/metrics").text
    assert 'http_requests_total{method="POST",path="/predict",status="200"}' in text
    assert 'http_requests_total{method="POST",path="/predict",status="422"}' in text
    assert 'http_request_duration_seconds_bucket{le="0.015",method="POST",path="/predict"}' in text
    assert "predictions_total{label=" in text
    assert 'model_info{name="clf-' in text and 'version="1"} 1.0' in text
    assert "model_version 1.0" in text


def test_page_and_its_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200


# --- bad input: always a JSON 4xx, and the server keeps answering ------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
        + chunk(b"IEND", b"")
    )


def _noise(size: int, fmt: str) -> bytes:
    array = np.random.default_rng(3).integers(0, 255, (size, size), dtype=np.uint8)
    return encode(array, fmt)


BAD_FILES = {
    "empty": (b"", 422, "empty"),
    "text": (b"hello, I am not an image\n" * 4, 422, "not an image"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"/>', 422, "not an image"),
    "tiff (not allowed)": (encode(np.zeros((28, 28), np.uint8), "TIFF"), 422, "not an image"),
    "truncated png": (_noise(80, "PNG")[:3000], 422, "truncated"),
    "truncated jpeg": (_noise(80, "JPEG")[:800], 422, "truncated"),
    "png bomb header 60000x60000": (_png_claiming(60_000, 60_000), 422, "pixels"),
    "too many pixels (301x301)": (encode(np.zeros((301, 301), np.uint8)), 422, "pixels"),
    "file over max_image_bytes": (b"\x89PNG" + bytes(200_000), 413, None),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_get_a_clear_4xx(any_path_client: TestClient, case: str) -> None:
    client = any_path_client
    data, status, words = BAD_FILES[case]
    response = _predict(client, data)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and body["detail"]
    if words:
        assert words in body["detail"].lower()
    assert _predict(client, GOOD_PNG).status_code == 200  # still serving


def test_file_over_the_per_image_limit_inside_a_batch(client: TestClient) -> None:
    big = bytes(250_000)
    response = client.post(
        "/predict/batch",
        files=[
            ("files", ("ok.png", GOOD_PNG, "image/png")),
            ("files", ("big.png", big, "image/png")),
        ],
    )
    assert response.status_code == 413
    assert "#1 (big.png)" in response.json()["detail"]


def test_one_bad_file_in_a_batch_names_it(client: TestClient) -> None:
    response = client.post(
        "/predict/batch",
        files=[
            ("files", ("a.png", GOOD_PNG, "image/png")),
            ("files", ("b.txt", b"nope", "text/plain")),
        ],
    )
    assert response.status_code == 422
    body = response.json()
    assert body["problems"][0]["index"] == 1 and body["problems"][0]["filename"] == "b.txt"
    assert "1 of 2 files" in body["detail"]


def test_request_level_problems(client: TestClient) -> None:
    cases = [
        # (description, response, expected status)
        ("json body", client.post("/predict", json={"file": "x"}), 415),
        ("urlencoded", client.post("/predict", data={"file": "x"}), 415),
        ("no body", client.post("/predict"), 415),
        (
            "missing field",
            client.post("/predict", files={"image": ("x.png", GOOD_PNG, "image/png")}),
            422,
        ),
        (
            "text instead of file",
            client.post(
                "/predict",
                files={"other": ("o.png", GOOD_PNG, "image/png")},
                data={"file": "not a file"},
            ),
            422,
        ),
        (
            "two files to /predict",
            client.post(
                "/predict",
                files=[
                    ("file", ("a.png", GOOD_PNG, "image/png")),
                    ("file", ("b.png", GOOD_PNG, "image/png")),
                ],
            ),
            413,
        ),
        (
            "too many files",
            client.post(
                "/predict/batch",
                files=[("files", (f"{i}.png", GOOD_PNG, "image/png")) for i in range(5)],
            ),
            413,
        ),
        (
            "no boundary",
            client.post(
                "/predict", content=b"abc", headers={"content-type": "multipart/form-data"}
            ),
            400,
        ),
        (
            "garbage multipart",
            client.post(
                "/predict",
                content=b"--xyz\r\nnot headers at all",
                headers={"content-type": "multipart/form-data; boundary=xyz"},
            ),
            400,
        ),
        (
            "body cut before the closing boundary",
            client.post(
                "/predict",
                content=b'--xyz\r\nContent-Disposition: form-data; name="file"; '
                b'filename="a.png"\r\n\r\n' + GOOD_PNG,
                headers={"content-type": "multipart/form-data; boundary=xyz"},
            ),
            400,
        ),
        ("body over limit", client.post("/predict", files={"file": ("x", bytes(400_000))}), 413),
        ("unknown route", client.get("/nope"), 404),
        ("wrong method", client.get("/predict"), 405),
    ]
    for description, response, status in cases:
        assert response.status_code == status, (description, response.text)
        body = response.json()
        assert body["error"] and body["detail"], description
    assert _predict(client, GOOD_PNG).status_code == 200


def test_chunked_body_over_the_limit_is_cut_off(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield bytes(10_000)

    response = client.post(
        "/predict",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413
    assert "limit" in response.json()["detail"]


async def _collect_413(
    limit: int, chunks: list[bytes], content_length: int | None
) -> tuple[int, int]:
    """Run the middleware alone; return (status, number of receive() calls made)."""
    calls = 0
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        body = chunks[calls - 1] if calls <= len(chunks) else b""
        return {"type": "http.request", "body": body, "more_body": calls < len(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def app(scope: Any, receive_: Any, send_: Any) -> None:
        while (await receive_()).get("more_body"):
            pass
        await send_({"type": "http.response.start", "status": 200, "headers": []})
        await send_({"type": "http.response.body", "body": b"ok"})

    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    limits = TransportLimits(
        limit_for=lambda _path: limit,
        budget=InflightBudget(10**9),
        max_header_bytes=16_384,
        body_timeout_s=30.0,
    )
    middleware = RequestLimitsMiddleware(app, limits=limits)
    await middleware({"type": "http", "path": "/predict", "headers": headers}, receive, send)
    return int(sent[0]["status"]), calls


def test_size_limit_is_enforced_before_the_body_is_read() -> None:
    import anyio

    chunks = [bytes(1000)] * 100
    # Declared length over the limit: not one byte is read.
    assert anyio.run(_collect_413, 5000, chunks, 100_000) == (413, 0)
    # Streamed (no Content-Length): reading stops at the first chunk past the limit.
    assert anyio.run(_collect_413, 5000, chunks, None) == (413, 6)
    # Under the limit: passes through.
    assert anyio.run(_collect_413, 500_000, chunks, 100_000) == (200, 100)


# --- API key ---------------------------------------------------------------------------------
def test_api_key_protects_the_predict_endpoints(registry: Registry) -> None:
    registry.add_production()
    client = api_client_for(registry, api_key=KEY)
    try:
        assert _predict(client, GOOD_PNG).status_code == 401
        assert _predict(client, GOOD_PNG, headers={"X-API-Key": KEY[:-1] + "x"}).status_code == 401
        assert "Missing X-API-Key" in _predict(client, GOOD_PNG).json()["detail"]
        assert _predict(client, GOOD_PNG, headers={"X-API-Key": KEY}).status_code == 200
        batch = client.post("/predict/batch", files=[("files", ("a.png", GOOD_PNG, "image/png"))])
        assert batch.status_code == 401
        for path in ("/health", "/ready", "/model", "/metrics", "/"):
            assert client.get(path).status_code == 200, path
    finally:
        client.__exit__(None, None, None)


@pytest.mark.parametrize(
    "key", ["", "changeme", "your-api-key", "CHANGEME", "short-key", "xxxxxxxxxxxxxxxxxxxx"]
)
def test_placeholder_api_keys_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match="API key"):
        load_config(environ={"SERVE_API_KEY": key})


# --- readiness and hot reload ------------------------------------------------------------------
def test_ready_is_503_until_a_production_version_exists(registry: Registry) -> None:
    registry.add_version("tshirt")  # registered but not promoted
    client = api_client_for(registry, ready=False)
    try:
        assert client.get("/health").status_code == 200
        response = wait_until(
            lambda: (
                (r := client.get("/ready")).status_code == 503
                and "no Production version" in r.json()["reason"]
                and r
            )
        )
        assert "make train" in response.json()["reason"]
        assert _predict(client, GOOD_PNG).status_code == 503
        assert client.get("/model").status_code == 503
        registry.promote("1")
        wait_until(lambda: client.get("/ready").status_code == 200, timeout=120)
        assert _predict(client, GOOD_PNG).json()["label"] == "T-shirt/top"
    finally:
        client.__exit__(None, None, None)


def test_unreachable_registry_is_retried_without_dying(registry: Registry, tmp_path: Any) -> None:
    missing = f"sqlite:///{tmp_path}/no/such/dir/mlflow.db"
    app = create_app(make_config(missing, registry.name))
    with TestClient(app) as client:
        response = wait_until(
            lambda: (
                (r := client.get("/ready")).status_code == 503
                and "unreachable" in r.json()["reason"]
                and r
            )
        )
        assert response.json()["status"] == "not_ready"
        wait_until(lambda: app.state.serving.store.status.attempts >= 2)  # kept retrying
        assert client.get("/health").status_code == 200


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(registry: Registry) -> None:
    registry.add_production("tshirt")
    client = api_client_for(registry)
    try:
        registry.promote(registry.add_source("file:///nonexistent/model/dir", None, "broken"))
        wait_until(lambda: "registry_check_errors_total 1.0" in client.get("/metrics").text)
        assert client.get("/ready").json()["model_version"] == "1"
        assert _predict(client, GOOD_PNG).json()["model_version"] == "1"
        # Fixing Production (a rollback) is picked up.
        registry.promote(registry.add_version("sneaker"))
        wait_until(lambda: _predict(client, GOOD_PNG).json()["label"] == "Sneaker")
    finally:
        client.__exit__(None, None, None)


def test_hot_reload_swaps_atomically_under_concurrent_requests(registry: Registry) -> None:
    """Threads hammer /predict and /predict/batch while Production moves twice. Every answer
    is 200; the three versions answer three different labels, so which model *computed* an
    answer is read off its label (not off the stamped ``model_version``): one model per batch,
    stamped with its own version, and once a thread sees a new version it never sees an older
    one."""
    version_of_label = {"T-shirt/top": "1", "Sneaker": "2", "Bag": "3"}
    registry.add_production("tshirt")
    client = api_client_for(registry, poll_interval_s=0.05)
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def worker(use_batch: bool) -> None:
        last = 0
        while not stop.is_set():
            if use_batch:
                response = client.post(
                    "/predict/batch",
                    files=[("files", (f"{i}.png", GOOD_PNG, "image/png")) for i in range(3)],
                )
                answers = response.json() if response.status_code == 200 else []
            else:
                response = _predict(client, GOOD_PNG)
                answers = [response.json()] if response.status_code == 200 else []
            if response.status_code != 200:
                failures.append(f"{response.status_code}: {response.text}")
                continue
            computed_by = {version_of_label[a["label"]] for a in answers}
            if len(computed_by) != 1:
                failures.append(f"one batch answered by several versions: {computed_by}")
                continue
            version = computed_by.pop()
            if any(a["model_version"] != version for a in answers):
                failures.append(f"answers computed by v{version} stamped otherwise: {answers}")
            if int(version) < last:
                failures.append(f"went back from version {last} to {version}")
            last = int(version)
            with lock:
                seen[version] = seen.get(version, 0) + 1

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(6)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: seen.get("1", 0) >= 10)
        registry.promote(registry.add_version("sneaker"))
        wait_until(lambda: seen.get("2", 0) >= 10)
        registry.promote(registry.add_version("bag"))
        wait_until(lambda: seen.get("3", 0) >= 10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        client.__exit__(None, None, None)
    assert not failures, failures[:5]
    assert set(seen) == {"1", "2", "3"}


def test_normalisation_matches_training(model_sources: ModelSources) -> None:
    """The served path (a /predict/batch request: header check, decode, to_model_image, normalise) and
    the training path (normalize on the uint8 array) give the same tensor for 28×28 grayscale
    PNGs, bit for bit."""
    arrays = sample_images(3, seed=11)
    served = served_inputs(model_sources, [encode(array) for array in arrays])
    assert served.dtype == np.float32
    assert torch.equal(torch.from_numpy(served), normalize(np.stack(arrays)))
