"""Bounded memory and CPU per request and in total, transport limits, secrets and small fixes
(issue 9's findings, one regression test each)."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import src.serving.service as service
from src.preprocessing import ImageDecodeError, decode_image, to_model_image
from src.serving.inference import BadImages, ClientGone, ImageLimits, decode_all
from src.serving.limits import InflightBudget, RequestLimitsMiddleware, TransportLimits
from src.serving.multipart import MultipartError, parse_parts
from tests.helpers.api import (
    Registry,
    api_client_for,
    encode,
    make_config,
    sample_images,
    wait_until,
)
from tests.helpers.images import png_header_only

GOOD_PNG = encode(sample_images(1)[0])


@pytest.fixture
def client(registry: Registry) -> Iterator[TestClient]:
    registry.add_production("varied")
    test_client = api_client_for(
        registry, max_batch_pixels=3 * 100 * 100, max_header_bytes=8192, max_image_side=4096
    )
    yield test_client
    test_client.__exit__(None, None, None)


def _png(width: int, height: int, value: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), value).save(buffer, format="PNG")
    return buffer.getvalue()


# --- images: never allocate more than the decoded size ----------------------------------------
def test_a_long_thin_image_is_never_padded_to_a_huge_square(monkeypatch: Any) -> None:
    created: list[tuple[int, int]] = []
    original = Image.new

    def spy(mode: str, size: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        created.append(size)
        return original(mode, size, *args, **kwargs)

    monkeypatch.setattr(Image, "new", spy)
    thin = Image.fromarray(np.full((4, 6000), 200, dtype=np.uint8))
    array = to_model_image(thin)
    assert array.shape == (28, 28)
    assert all(w * h <= 6000 * 4 for w, h in created), created


def test_the_longest_side_is_capped_before_decoding() -> None:
    # The pixel data cannot be decoded: only a check made from the header says "longest side".
    with pytest.raises(ImageDecodeError, match="longest side"):
        decode_image(png_header_only(10_000, 1), max_pixels=10**8, max_side=8192)
    with pytest.raises(ImageDecodeError, match="damaged or truncated"):
        decode_image(png_header_only(10_000, 1), max_pixels=10**8, max_side=10_000)
    # The service's own decoding path checks the side from the header too.
    limits = ImageLimits(("PNG",), max_pixels=10**8, max_side=8192, max_batch_pixels=10**9)
    with pytest.raises(BadImages, match="longest side"):
        decode_all([png_header_only(10_000, 1)], [None], limits)


def test_jpegs_decode_at_reduced_scale() -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000), np.uint8))
    buffer = io.BytesIO()
    photo.convert("RGB").save(buffer, format="JPEG")
    image = decode_image(buffer.getvalue(), max_pixels=1_000_000)  # 12 MP on disk
    assert image.size[0] * image.size[1] <= 1_000_000


def test_a_batch_over_the_decoded_pixel_budget_is_refused(client: TestClient) -> None:
    files = [("files", (f"{i}.png", _png(100, 100), "image/png")) for i in range(4)]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "batch_too_large"
    assert client.post("/predict/batch", files=files[:3]).status_code == 200
    # Counted from the headers before any image is decoded: files whose pixel data cannot be
    # decoded are refused for their size all the same (decoding first would say "damaged").
    headers_only = [
        ("files", (f"{i}.png", png_header_only(100, 100), "image/png")) for i in range(4)
    ]
    response = client.post("/predict/batch", files=headers_only)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "batch_too_large"
    response = client.post("/predict/batch", files=headers_only[:3])
    assert response.status_code == 422 and response.json()["error"] == "bad_image", response.text


def test_exif_orientation_is_applied() -> None:
    array = np.zeros((28, 28), dtype=np.uint8)
    array[2:10, 4:24] = 220  # a bar at the top
    upright = to_model_image(Image.fromarray(array))
    sideways = Image.fromarray(np.rot90(array, k=1).copy())  # as a phone stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    buffer = io.BytesIO()
    sideways.save(buffer, format="PNG", exif=exif.tobytes())
    assert np.array_equal(to_model_image(decode_image(buffer.getvalue())), upright)


# --- work runs off the event loop and stops when the client has gone ---------------------------
def test_parsing_and_decoding_run_off_the_event_loop(client: TestClient, monkeypatch: Any) -> None:
    threads: list[str] = []
    original = service.parse_parts

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(service, "parse_parts", spy)
    loop_thread: list[str] = []

    async def name() -> None:
        loop_thread.append(threading.current_thread().name)

    client.portal.call(name)  # type: ignore[union-attr]
    assert client.post("/predict", files={"file": ("x.png", GOOD_PNG)}).status_code == 200
    assert threads and threads[0] != loop_thread[0]


def test_decoding_stops_once_the_client_has_gone() -> None:
    cancelled = threading.Event()
    cancelled.set()
    limits = ImageLimits(("PNG",), 10**6, 4096, 10**8)
    with pytest.raises(ClientGone):
        decode_all([GOOD_PNG] * 3, [None] * 3, limits, cancelled)


def test_a_huge_multipart_header_block_is_not_scanned() -> None:
    block = b"X-A: b\r\n" * 200_000  # 1.6 MB of short header lines
    body = b"--b\r\n" + block + b"\r\n\r\ndata\r\n--b--\r\n"
    with pytest.raises(MultipartError, match="within the first"):
        parse_parts(body, b"b", max_files=1, max_fields=1, max_file_bytes=10, max_field_bytes=10)


# --- transport limits --------------------------------------------------------------------------
def test_oversized_request_headers_get_431(client: TestClient) -> None:
    response = client.get("/health", headers={"X-Big": "a" * 10_000})
    assert response.status_code == 431 and response.json()["error"] == "headers_too_large"


async def _run(
    middleware: RequestLimitsMiddleware, receive: Any, length: int | None
) -> list[MutableMapping[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "path": "/predict", "headers": headers}
    await middleware(scope, receive, send)
    return sent


async def _body_app(_scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _middleware(budget: InflightBudget, timeout: float = 30.0) -> RequestLimitsMiddleware:
    limits = TransportLimits(lambda _p: 10**6, budget, 16_384, timeout)
    return RequestLimitsMiddleware(_body_app, limits)


def test_bodies_in_flight_share_one_budget_503_with_retry_after() -> None:
    budget = InflightBudget(300_000)
    middleware = _middleware(budget)
    release = anyio.Event()

    async def slow_receive() -> dict[str, Any]:
        await release.wait()
        return {"type": "http.request", "body": bytes(200_000), "more_body": False}

    async def fast_receive() -> dict[str, Any]:
        return {"type": "http.request", "body": bytes(200_000), "more_body": False}

    async def scenario() -> tuple[Any, Any, int]:
        async with anyio.create_task_group() as group:
            first: list[Any] = []

            async def hold() -> None:
                first.extend(await _run(middleware, slow_receive, 200_000))

            group.start_soon(hold)
            await anyio.sleep(0.05)
            second = await _run(middleware, fast_receive, 200_000)
            release.set()
        return first, second, budget.used

    first, second, left = anyio.run(scenario)
    assert second[0]["status"] == 503
    assert (b"retry-after", b"1") in second[0]["headers"]
    assert first[0]["status"] == 200 and left == 0  # released once the request is done


def test_a_stalled_body_gets_408_and_a_short_body_400() -> None:
    async def stalled() -> dict[str, Any]:
        await anyio.sleep(10)
        return {"type": "http.request", "body": b"", "more_body": False}

    sent = anyio.run(_run, _middleware(InflightBudget(10**7), timeout=0.2), stalled, 100)
    assert sent[0]["status"] == 408

    async def short() -> dict[str, Any]:
        return {"type": "http.request", "body": b"12345", "more_body": False}

    sent = anyio.run(_run, _middleware(InflightBudget(10**7)), short, 100)
    assert sent[0]["status"] == 400


@pytest.mark.integration  # a real server: server_factory
def test_a_body_shorter_than_its_content_length_is_answered_by_the_server(
    registry: Registry, server_factory: Any
) -> None:
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_BODY_TIMEOUT_S="1")
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b"
            b"\r\nContent-Length: 1000\r\n\r\n--b\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


# --- secrets -----------------------------------------------------------------------------------
def test_registry_credentials_never_reach_a_response_or_the_log(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    from src.api import create_app

    secret_uri = "http://alice:t0ps3cret@127.0.0.1:9/?token=abcdef123"
    with TestClient(create_app(make_config(secret_uri, registry.name))) as client:
        # The first check's outcome, not the "starting" reason shown until it has finished.
        ready = wait_until(
            lambda: "unreachable" in ((r := client.get("/ready")).json().get("reason") or "") and r
        )
        predict = client.post("/predict", files={"file": ("x.png", GOOD_PNG)})
        texts = [ready.text, predict.text, client.get("/metrics").text]
    texts.append(capsys.readouterr().err)
    assert "unreachable" in ready.json()["reason"]
    for text in texts:
        assert "t0ps3cret" not in text and "abcdef123" not in text and "alice" not in text


def test_a_non_ascii_api_key_matches_its_utf8_bytes(registry: Registry) -> None:
    key = "clé-secrète-0123456789"
    registry.add_production("tshirt")
    client = api_client_for(registry, api_key=key)
    try:
        files = {"file": ("x.png", GOOD_PNG)}
        good = client.post("/predict", files=files, headers={"X-API-Key": key.encode()})
        bad = client.post("/predict", files=files, headers={"X-API-Key": b"cl\xc3\xa9-wrong"})
    finally:
        client.__exit__(None, None, None)
    assert good.status_code == 200, good.text
    assert bad.status_code == 401


@pytest.mark.integration  # a real server: server_factory
def test_work_is_dropped_when_the_client_disconnects(
    registry: Registry, server_factory: Any
) -> None:
    """A batch that takes a while to decode, from a client that leaves right after sending it:
    the server stops instead of classifying it for nobody."""
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name)
    gradient = np.tile(np.arange(2048, dtype=np.uint8), (2048, 1))
    big = io.BytesIO()
    Image.fromarray(gradient).convert("RGBA").save(big, format="PNG")
    parts = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="%d.png"\r\n\r\n' % i
        + big.getvalue()
        + b"\r\n"
        for i in range(7)
    )
    body = parts + b"--b--\r\n"
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(
            b"POST /predict/batch HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
    # The request's log line is written once the server has finished with it.
    wait_until(lambda: any('"/predict/batch"' in line for line in server.log_lines()), timeout=60)
    line = next(line for line in server.log_lines() if '"/predict/batch"' in line)
    assert "client_disconnected" in line, line
    metrics = httpx.get(server.url + "/metrics", timeout=5).text
    assert "predictions_total{" not in metrics, "the batch was classified for a client that left"
