"""The OpenAPI schema tells the truth: good and bad requests to every operation of a real server,
each answer checked against ``/openapi.json`` as a generated client would read it: its status is
listed for the operation, its content type is the documented one, its body validates against the
documented schema (jsonschema); and every status the schema lists (but 500) is seen answered."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from src.monitoring.card import MODEL_CARD_TAG
from tests.helpers.api import Registry, Server, encode, sample_images, wait_until

pytestmark = pytest.mark.integration

KEY = "contract-test-key-0123456789"
PNG = encode(sample_images(1)[0])
BATCH_BYTES = 100_000  # serve.max_batch_bytes, and the whole body budget
SETTINGS = {
    "SERVE_API_KEY": KEY,
    "SERVE_BODY_TIMEOUT_S": "1",
    "SERVE_MAX_BATCH_FILES": "3",
    "SERVE_MAX_IMAGE_BYTES": "20000",
    "SERVE_MAX_BATCH_BYTES": str(BATCH_BYTES),
    "SERVE_MAX_INFLIGHT_BYTES": str(BATCH_BYTES),
    "SERVE_MAX_HEADER_BYTES": "4096",
    "MONITOR_FEEDBACK_RATE_PER_MINUTE": "0.1",
    "MONITOR_FEEDBACK_BURST": "3",
}
OPERATIONS = (
    ("POST", "/feedback"),
    ("POST", "/predict"),
    ("POST", "/predict/batch"),
    ("GET", "/model"),
    ("GET", "/model/card"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
)
# Documented but not answerable on purpose: an unexpected failure.
UNREACHABLE = {"500"}


class Contract:
    """``/openapi.json`` of a server, and every (operation, status) checked against it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.seen: set[tuple[str, str, str]] = set()

    def check(self, method: str, path: str, response: httpx.Response) -> httpx.Response:
        status = str(response.status_code)
        where = f"{method} {path} -> {status} {response.text[:300]!r}"
        documented = self.spec["paths"][path][method.lower()]["responses"].get(status)
        assert documented is not None, f"status not in the schema: {where}"
        content = {
            media.split(";")[0].strip(): entry.get("schema", {})
            for media, entry in documented.get("content", {}).items()
        }
        media = response.headers.get("content-type", "").split(";")[0].strip()
        assert media in content, f"content type {media!r} not documented ({list(content)}): {where}"
        if media == "application/json":
            schema = {**content[media], "components": self.spec["components"]}
            problems = [
                e.message for e in Draft202012Validator(schema).iter_errors(response.json())
            ]
            assert not problems, f"body does not match the schema: {problems}: {where}"
        for header in documented.get("headers", {}):
            if status == "429" or (status == "503" and "busy" in response.text):
                assert header in response.headers, f"no {header} header: {where}"
        self.seen.add((method, path, status))
        return response

    def documented(self) -> set[tuple[str, str, str]]:
        return {
            (method, path, status)
            for method, path in OPERATIONS
            for status in self.spec["paths"][path][method.lower()]["responses"]
            if status not in UNREACHABLE
        }


def raw_response(data: bytes) -> httpx.Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(":", 1)) for line in lines[1:]]
    return httpx.Response(
        int(lines[0].split()[1]), headers=[(k.strip(), v.strip()) for k, v in headers], content=body
    )


def raw_exchange(url: str, request: bytes) -> httpx.Response:
    """Send ``request`` as it is on a fresh connection; the answer, read until the server closes."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return raw_response(b"".join(chunks))


def stalled_body(path: str, content_type: str) -> bytes:
    """Headers declaring 1000 bytes, then a few of them and silence (body_timeout_s is 1 s)."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 1000\r\n\r\n--b\r\n"
    ).encode()


@pytest.fixture
def served(registry: Registry, server_factory: Any, tmp_path: Path) -> Iterator[Server]:
    registry.add_production("varied")  # no model card
    yield server_factory(registry.tracking_uri, registry.name, **SETTINGS)


def test_every_answer_of_every_operation_is_in_the_schema(
    served: Server, registry: Registry, server_factory: Any
) -> None:
    url = served.url
    spec = httpx.get(url + "/openapi.json").json()
    contract = Contract(spec)
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # not what the API sends
    key = {"X-API-Key": KEY}
    with httpx.Client(base_url=url, timeout=30) as client:
        call = _caller(client, contract)
        # Good requests.
        for path in ("/health", "/ready", "/metrics", "/model", "/model/card"):  # card: 404
            call("GET", path)
        answer = call("POST", "/predict", files={"file": ("a.png", PNG)}, headers=key)
        prediction_id = answer.json()["prediction_id"]
        many = [("files", (f"{i}.png", PNG)) for i in range(3)]
        call("POST", "/predict/batch", files=many, headers=key)
        call("POST", "/feedback", json={"prediction_id": prediction_id, "label": 3}, headers=key)
        # Bad requests to the operations that take input.
        for path, field in (("/predict", "file"), ("/predict/batch", "files")):
            call("POST", path, files={field: ("a.png", PNG)})  # no key: 401
            call("POST", path, content=b"{}", headers={**key, "Content-Type": "text/plain"})
            call("POST", path, files={"other": ("a.png", PNG)}, headers=key)  # 422 no field
            call("POST", path, files={field: ("a.png", b"not an image")}, headers=key)
            call("POST", path, files=[(field, ("a.png", PNG))] * 4, headers=key)  # 413 files
            malformed = {**key, "Content-Type": "multipart/form-data; boundary=b"}
            call("POST", path, content=b"--x\r\nnothing\r\n", headers=malformed)  # 400
            stalled = stalled_body(path, malformed["Content-Type"])
            contract.check("POST", path, raw_exchange(url, stalled))  # 408
        stalled = stalled_body("/feedback", "application/json")
        contract.check("POST", "/feedback", raw_exchange(url, stalled))  # 408
        feedback = {"prediction_id": prediction_id, "label": 3}
        call("POST", "/feedback", json=feedback)  # 401
        call("POST", "/feedback", json={"label": 3}, headers=key)  # 422 (validation)
        as_json = {**key, "Content-Type": "application/json"}
        call("POST", "/feedback", content=b"{not json", headers=as_json)
        call("POST", "/feedback", content=b"\xff\xfe\xfa", headers=as_json)
        call("POST", "/feedback", json={"prediction_id": "0" * 32, "label": 3}, headers=key)  # 404
        call("POST", "/feedback", json={**feedback, "label": "Cape"}, headers=key)  # 422
        call("POST", "/feedback", json=feedback, headers=key)  # the burst is spent: 429
        # Transport limits, on every operation.
        for method, path in OPERATIONS:
            call(method, path, headers={**key, "X-Padding": "x" * 5000})  # 431
            call(method, path, content=b"x" * (BATCH_BYTES + 1), headers=key)  # 413
        with held_budget(url):  # another upload holds nearly the whole body budget
            for method, path in OPERATIONS:
                call(method, path, content=b"x" * 20_000, headers=key)  # 503 busy
        # The model card of a version that has one.
        registry.promote(registry.add_version("tshirt", **{MODEL_CARD_TAG: "# Card\n"}))
        wait_until(lambda: client.get("/model/card").status_code == 200)
        call("GET", "/model/card")
    # Not ready: an empty registry, and no prediction log.
    not_ready = server_factory(
        registry.tracking_uri,
        registry.name + "-empty",
        wait_ready=False,
        MONITOR_LOG_PREDICTIONS="false",
    )
    with httpx.Client(base_url=not_ready.url, timeout=30) as client:
        call = _caller(client, contract)
        for path in ("/ready", "/model", "/model/card"):
            call("GET", path)
        call("POST", "/predict", files={"file": ("a.png", PNG)})
        call("POST", "/predict/batch", files={"files": ("a.png", PNG)})
        call("POST", "/feedback", json={"prediction_id": "0" * 32, "label": 3})
    missing = contract.documented() - contract.seen
    assert not missing, f"documented but never answered: {sorted(missing)}"


def _caller(client: httpx.Client, contract: Contract) -> Any:
    def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
        return contract.check(method, path, client.request(method, path, **kwargs))

    return call


class held_budget:
    """A connection that declares a body of nearly the whole budget and trickles it a byte at a
    time (never stalling for body_timeout_s), so that other bodies are refused (503 busy)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()

    def __enter__(self) -> None:
        port = int(self.url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(
            f"POST /predict/batch HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Type: "
            f"multipart/form-data; boundary=b\r\nContent-Length: {BATCH_BYTES - 10_000}\r\n\r\n"
            "--b\r\n".encode()
        )
        self.trickle = threading.Thread(target=self._trickle)
        self.trickle.start()
        wait_until(lambda: _busy(self.url))

    def _trickle(self) -> None:
        while not self.stop.wait(0.2):
            self.sock.sendall(b"x")

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.trickle.join(timeout=10)
        self.sock.close()


def _busy(url: str) -> bool:
    return httpx.request("GET", url + "/health", content=b"x" * 20_000).status_code == 503
